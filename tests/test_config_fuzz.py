"""Property-based tests of config validation: valid values pass, every invalid one names its key.

The strategies are derived from the schema itself (``ats/schemas/config.schema.yaml``), so a
key added there is fuzzed without touching this file; keys whose grammar lives in
:mod:`ats.config` (policies, defences, architectures, files) get hand-written strategies. Each
config goes through the same two steps as ``workflow/rules/common.smk``: Snakemake's schema
validation, then :func:`ats.config.check_config`. This runs in-process, so hundreds of configs
cost less than a few ``snakemake --dry-run`` calls, each of which builds the whole DAG;
``tests/test_config_validation.py`` checks through the real command line that both steps run
before any job.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from snakemake.exceptions import WorkflowError
from snakemake.utils import validate
from workflow_helpers import TEST_CONFIG

from ats.config import CONFIG_SCHEMA_PATH, MAX_SEED, ConfigError, check_config, describe_schema_error
from ats.policies import DISTINCT_CANDIDATES, NUM_OPERATIONS, PolicyError, format_policy, parse_policy

SCHEMA_PATH = CONFIG_SCHEMA_PATH
FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class ConfigRejected(Exception):
    """A config refused by either validation step, with the message the user would see."""


def validate_like_the_workflow(config: dict[str, Any]) -> None:
    """The checks of ``common.smk::_validate_config``: schema (filling defaults), then semantics."""
    try:
        validate(config, schema=str(SCHEMA_PATH))
    except WorkflowError as error:
        if not isinstance(error.__context__, jsonschema.ValidationError):
            raise
        raise ConfigRejected(describe_schema_error(error.__context__)) from None
    try:
        check_config(config)
    except ConfigError as error:
        raise ConfigRejected(str(error)) from None


# ---------------------------------------------------------------------------------------------
# The schema's keys


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _objects(node: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    yield prefix, node
    for name, child in node.get("properties", {}).items():
        if _is_section(child):
            yield from _objects(child, f"{prefix}.{name}" if prefix else name)


def _is_section(node: dict[str, Any]) -> bool:
    """An object of named keys; a free-form mapping such as ``model.kwargs`` is a value."""
    return node.get("type") == "object" and "properties" in node


def object_keys() -> dict[str, dict[str, Any]]:
    """Every object of the config by dotted key (``""`` is the top level)."""
    return dict(_objects(schema()))


def leaf_keys() -> dict[str, dict[str, Any]]:
    """Every settable value of the config by dotted key, with its schema."""
    leaves = {}
    for prefix, node in object_keys().items():
        for name, child in node.get("properties", {}).items():
            if not _is_section(child):
                leaves[f"{prefix}.{name}" if prefix else name] = child
    return leaves


def set_key(config: dict[str, Any], dotted_key: str, value: Any) -> None:
    *parents, name = dotted_key.split(".")
    for parent in parents:
        config = config.setdefault(parent, {})
    config[name] = value


def get_key(config: dict[str, Any], dotted_key: str) -> Any:
    for part in dotted_key.split("."):
        config = config[part]
    return config


# ---------------------------------------------------------------------------------------------
# Values: the grammar of policies and defences, then one valid and one invalid strategy per key

op_indices = st.integers(0, NUM_OPERATIONS - 1)
policies = st.lists(st.lists(op_indices, min_size=1, max_size=3).map(tuple), min_size=1, max_size=3).map(
    lambda subs: format_policy(tuple(subs))
)


def _is_policy(text: str) -> bool:
    try:
        parse_policy(text)
    except PolicyError:
        return False
    return text != ""


# The schema's pattern lets some of these through; ats.config must catch the rest.
bad_policies = st.one_of(
    st.sampled_from(["3--1", "1-2+", "+1", "3-50-7", "007", "1 2", "-3", "3-1-7+", "50", "1e3"]),
    st.text(alphabet="0123456789-+ e", min_size=1, max_size=12).filter(lambda text: not _is_policy(text)),
)
finite = {"allow_nan": False, "allow_infinity": False}
gradient_defences = st.one_of(
    st.floats(0, 99.9, **finite).map(lambda p: f"prune-{p!r}"),
    st.floats(0, 10, **finite).map(lambda s: f"gauss-{s!r}"),
    st.floats(0, 10, **finite).map(lambda s: f"laplace-{s!r}"),
)
bad_gradient_defences = st.one_of(
    st.floats(100, 1e6, **finite).map(lambda p: f"prune-{p!r}"),  # a percentage in [0, 100)
    st.sampled_from(["gauss--1", "laplace--0.5", "prune-1e400", "gauss-", "noise-1", "crop", "none", "3-1-7"]),
)
defences = st.one_of(st.sampled_from(["none", "crop"]), policies, gradient_defences)
bad_defences = st.one_of(bad_policies, st.sampled_from(["prune-150", "gauss--1", "Crop", "", "none "]))
architectures = st.one_of(
    st.builds(lambda n, width: f"ResNet{6 * n + 2}" + (f"-{width}" if width else ""),
              st.integers(1, 30), st.integers(0, 8)),
    st.sampled_from(["ConvNet", "ConvNet8", "ConvNet16", "ConvNet32", "ConvNet64"]),
)
bad_architectures = st.one_of(
    st.integers(0, 200).filter(lambda depth: depth < 8 or (depth - 2) % 6).map(lambda depth: f"ResNet{depth}"),
    st.sampled_from(["ResNet20-0", "ConvNet12", "VGG16", "resnet20", "ResNet", "ConvNet-8", ""]),
)
wrong_type_values = st.one_of(
    st.text(max_size=5), st.booleans(), st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=1),
)
attack_names = st.sampled_from(schema()["properties"]["attack"]["properties"]["attacks"]["items"]["enum"])


def unique_lists(elements: st.SearchStrategy[str], min_size: int = 0) -> st.SearchStrategy[list[str]]:
    return st.lists(elements, min_size=min_size, max_size=3, unique=True)


def lists_with_one_bad(good: st.SearchStrategy[str], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    """A list of valid items with one bad item somewhere, or a non-list."""
    return st.one_of(
        st.tuples(unique_lists(good), bad, st.integers(0, 3)).map(
            lambda case: case[0][: case[2]] + [case[1]] + case[0][case[2]:]
        ),
        good.map(lambda item: [item, item]),  # duplicates
        st.one_of(good, st.integers(), st.booleans()),  # not a list
    )


# Keys whose values follow a grammar that ats.config checks (the schema only sketches it).
SEMANTIC_KEYS: dict[str, tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]] = {
    "search.pinned_policies": (unique_lists(policies), lists_with_one_bad(policies, bad_policies)),
    "search.candidates.extra": (unique_lists(policies), lists_with_one_bad(policies, bad_policies)),
    "training.validation_policies": (unique_lists(policies), lists_with_one_bad(policies, bad_policies)),
    "training.baselines": (unique_lists(defences), lists_with_one_bad(defences, bad_defences)),
    "training.gradient_defences": (
        unique_lists(gradient_defences), lists_with_one_bad(gradient_defences, bad_gradient_defences)
    ),
    "model.arch": (architectures, st.one_of(bad_architectures, st.integers(), st.none())),
    # A user's class (tests/custom_models.py); its kwargs must fit it, and need a class at all.
    "model.class": (
        st.sampled_from([None, "tests.custom_models:TinyNet"]),
        st.sampled_from(["TinyNet", "tests.no_such_module:Net", "tests.custom_models:Missing",
                         "tests.custom_models:NOT_A_MODULE"]) | st.integers(),
    ),
    "model.kwargs": (st.just({}), st.just({"num_classes": 3}) | st.integers()),
    # Any existing file will do; the schema file certainly exists.
    "search.pretrain.checkpoint": (
        st.sampled_from([None, str(SCHEMA_PATH)]),
        st.one_of(st.just("/nonexistent/100.pth"), st.integers(), st.booleans()),
    ),
    # A missing LPIPS backbone only skips LPIPS (the summarize log and the findings say so).
    "report.lpips_backbone": (
        st.sampled_from([None, str(SCHEMA_PATH), "/nonexistent/alexnet-owt-7be5be79.pth"]),
        st.one_of(st.integers(), st.booleans(), st.just(["alexnet.pth"])),
    ),
    # A source_dir must hold the data set (tests/test_config_validation.py gives one that does not).
    "dataset.source_dir": (st.none(), st.one_of(st.just("/nonexistent"), st.integers(), st.booleans())),
    "attack.attacks": (
        unique_lists(attack_names, min_size=1),
        st.one_of(st.just([]), lists_with_one_bad(attack_names, st.sampled_from(["dlg", "Inversed", ""]))),
    ),
    # Training stages must be distinct points inside the run, whose length other fuzzed keys change:
    # only the two ends are valid for every run (tests/test_training_stages.py checks the rest).
    "attack.stages": (
        unique_lists(st.sampled_from(["init", "final"]), min_size=1),
        st.one_of(st.just([]), lists_with_one_bad(
            st.sampled_from(["init", "final", "step-1"]),
            st.sampled_from(["middle", "step-0", "epoch-01", "Final", "step-1000000", "epoch-2", "", 3]))),
    ),
    # The candidate sampler draws distinct policies; there are only so many. 0 is valid only with
    # extras, which other fuzzed keys may empty (tests/test_config_validation.py covers it).
    "search.candidates.count": (
        st.integers(1, DISTINCT_CANDIDATES),
        st.one_of(st.integers(max_value=-1), st.integers(DISTINCT_CANDIDATES + 1), st.integers(0, 10).map(float)),
    ),
    # torch.manual_seed takes 64-bit seeds.
    "seed": (
        st.integers(0, MAX_SEED),
        st.one_of(st.integers(max_value=-1), st.integers(MAX_SEED + 1), st.just(7.0), wrong_type_values),
    ),
}


def _types(leaf: dict[str, Any]) -> list[str]:
    kind = leaf["type"]
    return kind if isinstance(kind, list) else [kind]


def valid_values(leaf: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values the schema and ats.config must accept, from the leaf's type, bounds and enum."""
    options = []
    types = _types(leaf)
    if "null" in types:
        options.append(st.none())
    if "enum" in leaf:
        options.append(st.sampled_from(leaf["enum"]))
    elif "integer" in types:
        options.append(st.integers(leaf.get("minimum", -10**6), leaf.get("maximum", 10**6)))
    elif "number" in types:
        options.append(st.floats(
            leaf.get("exclusiveMinimum", leaf.get("minimum", -1e6)), leaf.get("maximum", 1e6),
            exclude_min="exclusiveMinimum" in leaf, **finite,
        ))
    elif "boolean" in types:
        options.append(st.booleans())
    return st.one_of(options)


def invalid_values(leaf: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values of the wrong type, outside the bounds, or outside the enum."""
    types = _types(leaf)
    options: list[st.SearchStrategy[Any]] = []
    if "enum" in leaf:
        options += [st.text(max_size=10).filter(lambda text: text not in leaf["enum"]), st.integers(), st.booleans()]
    elif "integer" in types:
        # 5.0 satisfies JSON Schema's "integer" but breaks range(), slicing and seeds downstream.
        options += [st.floats(allow_nan=False).filter(lambda x: x != int(x) if math.isfinite(x) else True),
                    st.integers(-10**6, 10**6).map(float), st.text(max_size=5), st.booleans()]
        if "minimum" in leaf:
            options.append(st.integers(max_value=leaf["minimum"] - 1))
    elif "number" in types:
        options += [st.just(math.nan), st.sampled_from([math.inf, -math.inf]), st.text(max_size=5), st.booleans()]
        if "minimum" in leaf:
            options.append(st.floats(max_value=leaf["minimum"], exclude_max=True, **finite))
        if "exclusiveMinimum" in leaf:
            options.append(st.floats(max_value=leaf["exclusiveMinimum"], **finite))
        if "maximum" in leaf:
            options.append(st.floats(min_value=leaf["maximum"], exclude_min=True, **finite))
    elif "boolean" in types:
        options += [st.integers(0, 1), st.sampled_from(["yes", "true", "on"]), st.none()]
    return st.one_of(options)


def fitting(key: str, low: int | float, high: int | float, too_large: st.SearchStrategy[Any] | None = None
            ) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    """Valid values of ``key`` kept within [low, high], where they fit every data set together with
    the other fuzzed keys' values; invalid ones add ``too_large``, which fit no data set at all."""
    leaf = leaf_keys()[key]
    numbers = st.integers(low, high) if "integer" in _types(leaf) else st.floats(low, high, **finite)
    valid = st.one_of(st.none(), numbers) if "null" in _types(leaf) else numbers
    invalid = invalid_values(leaf)
    return valid, invalid if too_large is None else st.one_of(invalid, too_large)


# Settings that index into the data sets' splits (smallest: 50 000 training and 10 000 test images,
# 100 test images of each CIFAR-100 class), and fractions of the training split that must fill a batch.
SEMANTIC_KEYS.update({
    "attack.first_target": fitting("attack.first_target", 0, 5000, st.integers(10_000, 10**6)),
    "attack.num_targets": fitting("attack.num_targets", 1, 5000, st.integers(10_001, 10**6)),
    "training.test_images": fitting("training.test_images", 1, 10_000, st.integers(10_001, 10**6)),
    "training.batch_size": fitting("training.batch_size", 1, 128),
    "training.train_fraction": fitting("training.train_fraction", 0.003, 1.0, st.floats(0, 8e-6, exclude_min=True)),
    "search.pretrain.batch_size": fitting("search.pretrain.batch_size", 1, 128),
    "search.pretrain.fraction": fitting("search.pretrain.fraction", 0.003, 1.0, st.floats(0, 8e-6, exclude_min=True)),
    "search.privacy.num_samples": fitting("search.privacy.num_samples", 1, 100),
    "search.accuracy.start": fitting("search.accuracy.start", 0, 4000, st.integers(10_000, 10**6)),
    "search.accuracy.runs": fitting("search.accuracy.runs", 1, 20),
    "search.accuracy.window": fitting("search.accuracy.window", 2, 300),
    # A threshold no policy can pass: S_acc never exceeds -1.
    "search.selection.accuracy_threshold": fitting("search.selection.accuracy_threshold", -1e6, -1.0,
                                                   st.floats(-1.0, 1e6, exclude_min=True, **finite)),
})


def strategies_for(key: str) -> tuple[st.SearchStrategy[Any], st.SearchStrategy[Any]]:
    if key in SEMANTIC_KEYS:
        return SEMANTIC_KEYS[key]
    leaf = leaf_keys()[key]
    return valid_values(leaf), invalid_values(leaf)


def base_config() -> dict[str, Any]:
    """The tests' tiny config: a realistic starting point that is itself valid."""
    return yaml.safe_load(TEST_CONFIG.read_text())


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    config = base_config()
    for key in draw(st.lists(st.sampled_from(sorted(leaf_keys())), max_size=8, unique=True)):
        set_key(config, key, draw(strategies_for(key)[0]))
    return config


# ---------------------------------------------------------------------------------------------
# Properties


def test_every_schema_key_has_valid_and_invalid_values() -> None:
    """Guards the derivation: a new leaf of an unhandled kind would otherwise be fuzzed with nothing."""
    for key in leaf_keys():
        valid, invalid = strategies_for(key)
        assert not valid.is_empty and not invalid.is_empty, key
    assert {"seed", "search.selection.top_k", "attack.iterations", "report.grid_images"} <= leaf_keys().keys()


@pytest.mark.slow
@FUZZ
@given(valid_configs())
def test_valid_configs_pass_and_keep_their_values(config: dict[str, Any]) -> None:
    given_config = copy.deepcopy(config)
    validate_like_the_workflow(config)
    for key in leaf_keys():
        try:
            expected = get_key(given_config, key)
        except KeyError:
            continue  # left out: the schema filled in its default
        assert get_key(config, key) == expected


@pytest.mark.parametrize("key", sorted(leaf_keys()))
@settings(max_examples=8, deadline=None)
@given(data=st.data())
def test_an_invalid_value_is_rejected_naming_its_key(key: str, data: st.DataObject) -> None:
    """One bad value among valid ones; the message names the key, and the allowed values of an enum."""
    config = data.draw(valid_configs())
    value = data.draw(strategies_for(key)[1], label=key)
    set_key(config, key, value)
    with pytest.raises(ConfigRejected) as rejected:
        validate_like_the_workflow(config)
    message = str(rejected.value)
    assert f"Invalid config key '{key}" in message, message
    enum = leaf_keys()[key].get("enum")
    if enum and not isinstance(value, (list, dict)):
        assert all(str(allowed) in message for allowed in enum), message


@FUZZ
@given(
    st.sampled_from(sorted(object_keys())),
    st.from_regex(r"[a-z][a-z_]{0,11}", fullmatch=True),
    st.integers() | st.text(max_size=4),
)
@pytest.mark.slow
def test_an_unknown_key_is_rejected_naming_it_and_its_parent(parent: str, name: str, value: Any) -> None:
    if name in object_keys()[parent].get("properties", {}):
        return
    config = base_config()
    set_key(config, f"{parent}.{name}" if parent else name, value)
    with pytest.raises(ConfigRejected) as rejected:
        validate_like_the_workflow(config)
    message = str(rejected.value)
    assert f"Invalid config key '{parent or '(top level)'}'" in message and repr(name) in message, message

"""Checks of a workflow config beyond its JSON schema, and readable messages for schema errors.

The schema (``ats/schemas/config.schema.yaml``, :data:`CONFIG_SCHEMA_PATH`) checks keys, types and ranges and fills in
defaults; what it cannot express (the policy grammar, defence names, ResNet depths, users' model
classes, files that must exist) is checked here. Both run when the workflow is parsed, before any
job starts, and every message names the offending key. Torch-free: ``common.smk`` imports this on
every job start (only a config naming a ``model.class`` imports torch, with the user's module).
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from ats.case.architectures import model_choice, parse_arch
from ats.case.normalisation import dataset_spec
from ats.defence.names import DefenceError, parse_defence
from ats.policies import DISTINCT_CANDIDATES, PolicyError, parse_policy
from ats.training.stages import StageError, check_stages, training_images

CONFIG_SCHEMA_PATH = Path(__file__).resolve().parent / "schemas" / "config.schema.yaml"
"""The config schema, shipped inside the package so that the library works outside a checkout."""
MAX_SEED = 2**64 - 1
"""``torch.manual_seed`` takes seeds up to 2**64 - 1; a larger one would only fail inside a job."""


MAX_ACCURACY_SCORE = -1.0
"""The largest S_acc any policy can reach, so the highest ``accuracy_threshold`` that can be passed.

S_acc of a batch of K images is −Σ_j f(λ_j + k) over the K eigenvalues of a correlation matrix, with
f(x) = log x + 1/x ≥ 1 (``ats.search.accuracy``); so S_acc ≤ −K ≤ −1, since a batch holds at least
one image. A higher threshold would leave every policy ineligible and the search with nothing to
choose.
"""


class ConfigFileError(ValueError):
    """A config file that is unreadable, not YAML, empty, not a mapping, or gives a key twice."""


class _DuplicateKeyError(yaml.YAMLError):
    pass


class _DistinctKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, but a key given twice in one mapping is an error, not "last one wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        first_lines: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, Hashable):
                continue
            line = key_node.start_mark.line + 1
            if key in first_lines:
                raise _DuplicateKeyError(f"key {key!r} given twice, on lines {first_lines[key]} and {line}")
            first_lines[key] = line
        return super().construct_mapping(node, deep)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file strictly; raise :class:`ConfigFileError` naming ``path``.

    Snakemake's own reader keeps the last of two equal keys, so a key given twice would silently
    override the first; and its errors for broken, empty or list-valued files do not name the file.
    """
    try:
        with open(path, encoding="utf-8") as handle:
            content = yaml.load(handle, Loader=_DistinctKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigFileError(f"config file {path}: cannot be read ({error})") from None
    except _DuplicateKeyError as error:
        raise ConfigFileError(f"config file {path}: {error}; give each key once") from None
    except yaml.YAMLError as error:
        raise ConfigFileError(f"config file {path}: not valid YAML:\n{error}") from None
    if content is None:
        raise ConfigFileError(f"config file {path} is empty; it must map config keys to values "
                              "(config/README.md)")
    if not isinstance(content, dict):
        raise ConfigFileError(f"config file {path} holds a {type(content).__name__}, not a mapping of "
                              "config keys to values (config/README.md)")
    return content


class ConfigError(ValueError):
    """An invalid config value; the message starts with the dotted key."""

    def __init__(self, key: str, message: str):
        super().__init__(f"Invalid config key '{key}': {message}")
        self.key = key


def describe_schema_error(error: Any) -> str:
    """Turn a ``jsonschema.ValidationError`` into one message naming the key and allowed values."""
    key = ".".join(str(part) for part in error.absolute_path) or "(top level)"
    allowed = error.schema.get("enum") or error.schema.get("pattern")
    hint = f" Allowed: {allowed}." if allowed is not None else ""
    description = " ".join(error.schema.get("description", "").split())
    return f"Invalid config key '{key}': {error.message}.{hint}" + (
        f"\n  {key}: {description}" if description else ""
    )


@lru_cache(maxsize=1)
def _config_schema() -> dict[str, Any]:
    return yaml.safe_load(CONFIG_SCHEMA_PATH.read_text())


def check_number(key: str, value: Any, schema: Mapping[str, Any]) -> None:
    """Reject the numbers that JSON Schema lets through; ``schema`` is the key's own node.

    NaN passes every bound (all comparisons with NaN are false) and ±inf passes one-sided ones, so
    ``fraction: .nan`` would only fail inside a job. JSON Schema counts ``5.0`` as an integer, but
    ``range()`` and slicing do not (``epochs: 5.0`` fails in the training job), and ``seed: 7.0``
    silently derives other random numbers than ``seed: 7``.
    """
    if not isinstance(value, float):
        return
    if not math.isfinite(value):
        raise ConfigError(key, f"must be a finite number, got {value}")
    types = schema.get("type", [])
    if "integer" in ([types] if isinstance(types, str) else types):
        raise ConfigError(key, f"must be an integer, got {value!r} (write {int(value)})")


def _check_numbers(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    """:func:`check_number` on every value of ``config``, against the schema's node for it."""
    properties = schema.get("properties", {})
    for name, value in config.items():
        key, child = f"{prefix}{name}", properties.get(name, {})
        if isinstance(value, Mapping):
            _check_numbers(value, child, f"{key}.")
        else:
            check_number(key, value, child)


def check_config(config: Mapping[str, Any]) -> None:
    """Check a schema-validated config (defaults filled in); raise :class:`ConfigError`."""
    _check_numbers(config, _config_schema())
    if config["seed"] > MAX_SEED:
        raise ConfigError("seed", f"{config['seed']} is larger than {MAX_SEED}, the largest seed torch takes")
    count = config["search"]["candidates"]["count"]
    if count > DISTINCT_CANDIDATES:
        raise ConfigError("search.candidates.count", f"{count} is more than the {DISTINCT_CANDIDATES} distinct "
                          "candidate policies there are (3 draws from no-op and the 50 ops)")
    policy_lists = {
        "search.pinned_policies": config["search"]["pinned_policies"],
        "search.candidates.extra": config["search"]["candidates"]["extra"],
        "training.validation_policies": config["training"]["validation_policies"],
    }
    for key, policies in policy_lists.items():
        for policy in policies:
            try:
                parse_policy(policy)
            except PolicyError as error:
                raise ConfigError(key, str(error)) from None
    for key in ("baselines", "gradient_defences"):
        for name in config["training"][key]:
            try:
                spec = parse_defence(name)
            except DefenceError as error:
                raise ConfigError(f"training.{key}", str(error)) from None
            if key == "gradient_defences" and not spec.acts_on_gradient:
                raise ConfigError(
                    "training.gradient_defences",
                    f"{name!r} is not a gradient defence "
                    "(allowed: prune-<percent>, gauss-<sigma>, laplace-<scale>)",
                )
    _check_model(config)
    _check_training_stages(config)
    _check_dataset_ranges(config)
    _check_something_to_choose(config)
    _check_source_dir(config)
    checkpoint_path = config["search"]["pretrain"]["checkpoint"]
    if checkpoint_path and not os.path.exists(checkpoint_path):
        raise ConfigError("search.pretrain.checkpoint", f"{checkpoint_path!r} does not exist")


def _check_model(config: Mapping[str, Any]) -> None:
    """``model.arch`` must parse, or ``model.class`` import as a ``torch.nn.Module`` that takes ``model.kwargs``."""
    model = config["model"]
    try:
        parse_arch(model["arch"])
    except ValueError as error:
        raise ConfigError("model.arch", str(error)) from None
    if not model.get("class"):
        if model.get("kwargs"):
            raise ConfigError("model.kwargs", "applies to model.class only; our architectures (model.arch) take none")
        return
    from ats.case.models import custom_model_arguments, resolve_model_class

    try:
        resolve_model_class(model["class"])
    except ValueError as error:
        raise ConfigError("model.class", str(error)) from None
    spec = dataset_spec(config["dataset"]["name"])
    try:
        custom_model_arguments(model_choice(model), spec.num_classes, spec.channels)
    except ValueError as error:
        raise ConfigError("model.kwargs", str(error)) from None


def schema_node(key: str) -> Mapping[str, Any]:
    """The schema of the dotted ``key`` (``"attack.batch_size"``): its type, bounds and default."""
    node: Mapping[str, Any] = _config_schema()
    for part in key.split("."):
        node = node["properties"][part]
    return node


def schema_default(key: str) -> Any:
    """The schema's default of the dotted ``key`` (``"seed"``), for entry points besides the workflow."""
    return schema_node(key)["default"]


def _check_training_stages(config: Mapping[str, Any]) -> None:
    """Each attacked training stage must lie inside the training run the config describes."""
    training = config["training"]
    train_size = dataset_spec(config["dataset"]["name"]).train_size
    try:
        check_stages(config["attack"]["stages"], epochs=training["epochs"], batch_size=training["batch_size"],
                     train_images=max(1, training_images(train_size, training["train_fraction"])))
    except StageError as error:
        raise ConfigError("attack.stages", str(error)) from None


def _check_dataset_ranges(config: Mapping[str, Any]) -> None:
    """Settings that index into the data set must fit its official split sizes (``DatasetSpec``).

    Each of them used to fail (or be clipped) only inside a job, after hours of earlier stages.
    """
    spec = dataset_spec(config["dataset"]["name"])
    tests = f"the {spec.test_size} test images of {spec.name} (indices 0..{spec.test_size - 1})"
    attack = config["attack"]
    last_target = attack["first_target"] + attack["num_targets"] - 1
    if last_target >= spec.test_size:
        key = "attack.num_targets" if attack["num_targets"] > spec.test_size else "attack.first_target"
        raise ConfigError(key, f"the attacked images {attack['first_target']}..{last_target} "
                          f"(attack.first_target + attack.num_targets - 1) go beyond {tests}")
    test_images = config["training"]["test_images"]
    if test_images is not None and test_images > spec.test_size:
        raise ConfigError("training.test_images", f"{test_images} is more than {tests}; null uses all of them")
    for prefix, fraction_key in (("training", "train_fraction"), ("search.pretrain", "fraction")):
        section = config["training"] if prefix == "training" else config["search"]["pretrain"]
        images = training_images(spec.train_size, section[fraction_key])
        if images < section["batch_size"]:
            raise ConfigError(f"{prefix}.{fraction_key}", f"{section[fraction_key]} of the {spec.train_size} "
                              f"training images of {spec.name} keeps {images}, fewer than one batch of "
                              f"{prefix}.batch_size {section['batch_size']}")
    privacy = config["search"]["privacy"]
    if privacy["images"] == "per_class" and privacy["num_samples"] > spec.test_per_class:
        raise ConfigError("search.privacy.num_samples", f"{privacy['num_samples']} images per class, but each "
                          f"class of {spec.name} has {spec.test_per_class} test images")
    accuracy = config["search"]["accuracy"]
    end = accuracy["start"] + accuracy["runs"] * accuracy["window"]
    if end > spec.test_size:
        raise ConfigError("search.accuracy.start", f"the S_acc windows cover test indices {accuracy['start']}.."
                          f"{end - 1} (start + runs × window - 1), beyond {tests}")


def _check_something_to_choose(config: Mapping[str, Any]) -> None:
    """A search must be able to choose a policy, unless ``search.selection.allow_empty`` says otherwise."""
    search = config["search"]
    threshold = search["selection"]["accuracy_threshold"]
    if threshold is not None and threshold > MAX_ACCURACY_SCORE:
        raise ConfigError("search.selection.accuracy_threshold", f"{threshold} is above {MAX_ACCURACY_SCORE}, "
                          "the largest S_acc any policy can reach, so no policy could ever pass it")
    if search["pinned_policies"] or search["selection"]["allow_empty"]:
        return
    remedy = "; or set search.selection.allow_empty: true to train only the baselines"
    candidates = search["candidates"]
    if not (candidates["count"] or candidates["extra"] or candidates["single_ops"]
            or config["training"]["validation_policies"]):
        raise ConfigError("search.candidates.count", "0 random candidates and no search.candidates.extra, "
                          "single_ops or training.validation_policies leave the search nothing to choose "
                          "(the no-transform reference is never chosen); score some candidates or set "
                          "search.pinned_policies" + remedy)


def _check_source_dir(config: Mapping[str, Any]) -> None:
    """A ``dataset.source_dir`` that is set must hold the data set: no silent fallback to another copy."""
    source_dir = config["dataset"]["source_dir"]
    if source_dir is None:
        return
    from ats.case.datasets import DatasetNotFoundError, find_in_source_dir  # numpy and h5py, no torch

    try:
        find_in_source_dir(config["dataset"]["name"], source_dir)
    except DatasetNotFoundError as error:
        raise ConfigError("dataset.source_dir", str(error)) from None

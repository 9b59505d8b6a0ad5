"""One settings object per stage, read from its config section, and the fingerprints of each run.

A stage's settings are a frozen dataclass whose fields are keys of one config section.
``from_config(section)`` takes those keys from the section (ignoring its other keys), fills the
missing ones from the schema's defaults, so that defaults live only in the schema, and checks
each value against the schema, naming the key. Fields that change only the speed of a stage, not
its results, are marked with :func:`speed_only` and left out of its fingerprint.

Each kind of run (pretraining, training of one defence, a snapshot, an attack, a score shard, the
selection) has one fingerprint function here, computed from the settings objects. ``common.smk``
calls it once per artefact, both for the fingerprint a job writes (its ``fingerprint`` param, which
also makes Snakemake rerun the job when a setting that matters changes) and for the fingerprints
that readers expect of upstream outputs, so the two cannot drift apart. Torch-free: ``common.smk``
imports this on every job start.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ats.case.architectures import ModelChoice, model_choice, model_settings
from ats.config import ConfigError, check_number, schema_node
from ats.runtime.fingerprint import fingerprint
from ats.training.stages import FINAL

_SPEED_ONLY = "speed_only"
_KEY = "key"

SettingsT = TypeVar("SettingsT", bound="_Settings")


def speed_only() -> Any:
    """A field that changes only how fast a stage runs, not its results: left out of fingerprints."""
    return dataclasses.field(metadata={_SPEED_ONLY: True})


def nested(key: str) -> Any:
    """A field read from ``key``, a dotted path inside the section (``"privacy.bins"``)."""
    return dataclasses.field(metadata={_KEY: key})


class _Settings:
    """Reading a dataclass of settings from its config section (module docstring)."""

    SECTION: ClassVar[str]
    """The dotted key of the config section, e.g. ``"search.pretrain"``."""

    @classmethod
    def from_config(cls: type[SettingsT], section: Mapping[str, Any] | None = None) -> SettingsT:
        """The settings of ``section`` (a config section, defaults filled in or not), checked."""
        values = {}
        for field in dataclasses.fields(cls):  # type: ignore[arg-type]
            path = field.metadata.get(_KEY, field.name)
            key = f"{cls.SECTION}.{path}"
            schema = schema_node(key)
            value = _lookup(section or {}, path, schema["default"])
            _check_value(key, value, schema)
            values[field.name] = value
        return cls(**values)

    def as_section(self) -> dict[str, Any]:
        """The settings in their config section's layout, which :meth:`from_config` reads back.

        Rules pass this, not the whole section, as a param: Snakemake reruns a job whose params
        changed, and keys of the section that the stage does not read (``training.baselines``)
        must not rerun it.
        """
        section: dict[str, Any] = {}
        for field in dataclasses.fields(self):  # type: ignore[arg-type]
            *parents, name = field.metadata.get(_KEY, field.name).split(".")
            node = section
            for parent in parents:
                node = node.setdefault(parent, {})
            node[name] = getattr(self, field.name)
        return section

    def fingerprint_fields(self) -> dict[str, Any]:
        """The fields that determine a stage's results, by their name, as fingerprints take them."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)  # type: ignore[arg-type]
                if not field.metadata.get(_SPEED_ONLY)}


def _lookup(section: Mapping[str, Any], path: str, default: Any) -> Any:
    """The value at the dotted ``path`` inside ``section``, or ``default`` when it is not there."""
    node: Any = section
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


_JSON_TYPES = {
    "integer": lambda value: isinstance(value, int) and not isinstance(value, bool),
    "number": lambda value: isinstance(value, int | float) and not isinstance(value, bool),
    "boolean": lambda value: isinstance(value, bool),
    "string": lambda value: isinstance(value, str),
    "null": lambda value: value is None,
}


def _check_value(key: str, value: Any, schema: Mapping[str, Any]) -> None:
    """Check one value against its schema's type, enum and bounds; raise :class:`ConfigError` naming ``key``.

    Settings made outside the workflow (:mod:`ats.api`, :mod:`ats.cli`, tests) are not validated by
    Snakemake, so each stage's settings check themselves.
    """
    check_number(key, value, schema)
    types = schema.get("type", [])
    types = [types] if isinstance(types, str) else list(types)
    if types and not any(_JSON_TYPES[kind](value) for kind in types):
        raise ConfigError(key, f"must be of type {' or '.join(types)}, got {value!r}")
    if "enum" in schema and value not in schema["enum"]:
        raise ConfigError(key, f"must be one of {schema['enum']}, got {value!r}")
    if value is None or isinstance(value, bool | str):
        return
    if "minimum" in schema and value < schema["minimum"]:
        raise ConfigError(key, f"must be at least {schema['minimum']}, got {value!r}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        raise ConfigError(key, f"must be greater than {schema['exclusiveMinimum']}, got {value!r}")
    if "maximum" in schema and value > schema["maximum"]:
        raise ConfigError(key, f"must be at most {schema['maximum']}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# The settings of each stage.


@dataclass(frozen=True)
class Experiment:
    """What every run of one config shares: the data set, its normalisation, the model and the master seed."""

    dataset: str
    normalisation: str
    model: ModelChoice
    seed: int

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Experiment:
        """From a whole (schema-validated) config."""
        return cls(dataset=config["dataset"]["name"], normalisation=config["dataset"]["normalisation"],
                   model=model_choice(config["model"]), seed=config["seed"])

    def fingerprint_fields(self) -> dict[str, Any]:
        """The part of every model's fingerprint that these settings make up."""
        return {"dataset": self.dataset, "normalisation": self.normalisation, **model_settings(self.model),
                "seed": self.seed}


@dataclass(frozen=True)
class TrainingSettings(_Settings):
    """The training recipe of every defence (config section ``training``)."""

    SECTION: ClassVar[str] = "training"

    epochs: int
    batch_size: int
    train_fraction: float
    eval_every: int
    test_images: int | None
    amp: bool
    compile: bool


PRETRAIN_EVAL_EVERY = 10
"""The search model is evaluated every 10 epochs, as the original did."""


@dataclass(frozen=True)
class PretrainSettings(_Settings):
    """The tiny-data search model (config section ``search.pretrain``)."""

    SECTION: ClassVar[str] = "search.pretrain"

    fraction: float
    epochs: int
    batch_size: int
    checkpoint: str | None

    def training(self, test_images: int | None) -> TrainingSettings:
        """The training run that pretrains the search model: the crop defence's recipe on ``fraction``
        of the data, in fp32 and uncompiled, tested on ``test_images`` (``training.test_images``)."""
        return TrainingSettings(epochs=self.epochs, batch_size=self.batch_size, train_fraction=self.fraction,
                                eval_every=PRETRAIN_EVAL_EVERY, test_images=test_images, amp=False, compile=False)


@dataclass(frozen=True)
class ScoringSettings(_Settings):
    """How a score shard is computed (config section ``search``).

    ``bins`` is part of the evaluation set's fingerprint (the whole ``search.privacy`` section), so
    it reaches the shard's fingerprint through that one.
    """

    SECTION: ClassVar[str] = "search"

    bins: int = nested("privacy.bins")
    chunk_size: int = speed_only()


@dataclass(frozen=True)
class SelectionSettings(_Settings):
    """How the scored policies are ranked and chosen (config section ``search.selection``)."""

    SECTION: ClassVar[str] = "search.selection"

    rule: str
    alpha: float
    accuracy_threshold: float | None
    top_k: int
    allow_empty: bool


@dataclass(frozen=True)
class AttackSettings(_Settings):
    """The attack of every defence, training stage and attack config (config section ``attack``)."""

    SECTION: ClassVar[str] = "attack"

    first_target: int
    num_targets: int
    iterations: int | None
    batch_size: int = speed_only()
    transformed_target: bool
    defend_observed_gradient: bool
    label_recovery: bool

    @property
    def target_indices(self) -> range:
        """The attacked test images: ``first_target … first_target + num_targets − 1``."""
        return range(self.first_target, self.first_target + self.num_targets)


# ---------------------------------------------------------------------------------------------
# The fingerprint of each kind of run.


def pretrain_fingerprint(experiment: Experiment, pretrain: PretrainSettings, test_images: int | None) -> str:
    """The search model (pretrained or imported): ``search.pretrain`` and the test images it is scored on."""
    return fingerprint({**experiment.fingerprint_fields(), "pretrain": pretrain.fingerprint_fields(),
                        "test_images": test_images})


def train_fingerprint(experiment: Experiment, defence: str, training: TrainingSettings) -> str:
    """The model trained under ``defence``, with its history and metrics."""
    return fingerprint({**experiment.fingerprint_fields(), "defence": defence,
                        "training": training.fingerprint_fields()})


def model_fingerprint(train: str, stage: str) -> str:
    """The model of training stage ``stage`` of the training whose fingerprint is ``train``: the
    trained model itself for ``final``, else its snapshot."""
    return train if stage == FINAL else fingerprint({"train": train, "stage": stage})


def attack_fingerprint(model: str, attack: str, settings: AttackSettings) -> str:
    """One attack file: the attacked model's fingerprint, the attack config's name and the settings."""
    return fingerprint({"model": model, "attack": attack, "settings": settings.fingerprint_fields()})


def shard_fingerprint(model: str, eval_set: str, policies: Sequence[str], repeat: int) -> str:
    """One score shard: the search model's and evaluation set's fingerprints, its policies and repeat."""
    return fingerprint({"pretrain": model, "eval_set": eval_set, "policies": list(policies), "repeat": repeat})


def selection_fingerprint(shards: Sequence[str], selection: SelectionSettings, num_classes: int, seed: int) -> str:
    """``ranking.tsv`` and ``selection.json``: the shards they rank and the selection settings."""
    return fingerprint({"shards": list(shards), "selection": selection.fingerprint_fields(),
                        "num_classes": num_classes, "seed": seed})

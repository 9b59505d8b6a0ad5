"""Checks of a workflow config beyond its JSON schema, and readable messages for schema errors.

The schema (``workflow/schemas/config.schema.yaml``) checks keys, types and ranges and fills in
defaults; what it cannot express (the policy grammar, defence names, ResNet depths, files that must
exist) is checked here. Both run when the workflow is parsed, before any job starts, and every
message names the offending key. Torch-free: ``common.smk`` imports this on every job start.
"""

from __future__ import annotations

import math
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, Mapping

import yaml

from ats.case.architectures import parse_arch
from ats.case.normalisation import dataset_spec
from ats.defence.names import DefenceError, parse_defence
from ats.policies import DISTINCT_CANDIDATES, PolicyError, parse_policy
from ats.training.stages import StageError, check_stages

CONFIG_SCHEMA_PATH = Path(__file__).resolve().parent.parent / "workflow" / "schemas" / "config.schema.yaml"
MAX_SEED = 2**64 - 1
"""``torch.manual_seed`` takes seeds up to 2**64 - 1; a larger one would only fail inside a job."""


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


def _check_numbers(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str = "") -> None:
    """Reject the numbers that JSON Schema lets through.

    NaN passes every bound (all comparisons with NaN are false) and ±inf passes one-sided ones, so
    ``fraction: .nan`` would only fail inside a job. JSON Schema counts ``5.0`` as an integer, but
    ``range()`` and slicing do not (``epochs: 5.0`` fails in the training job), and ``seed: 7.0``
    silently derives other random numbers than ``seed: 7``.
    """
    properties = schema.get("properties", {})
    for name, value in config.items():
        key, child = f"{prefix}{name}", properties.get(name, {})
        if isinstance(value, Mapping):
            _check_numbers(value, child, f"{key}.")
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise ConfigError(key, f"must be a finite number, got {value}")
            types = child.get("type", [])
            if "integer" in ([types] if isinstance(types, str) else types):
                raise ConfigError(key, f"must be an integer, got {value!r} (write {int(value)})")


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
    try:
        parse_arch(config["model"]["arch"])
    except ValueError as error:
        raise ConfigError("model.arch", str(error)) from None
    _check_training_stages(config)
    checkpoint_path = config["search"]["pretrain"]["checkpoint"]
    if checkpoint_path and not os.path.exists(checkpoint_path):
        raise ConfigError("search.pretrain.checkpoint", f"{checkpoint_path!r} does not exist")


def _check_training_stages(config: Mapping[str, Any]) -> None:
    """Each attacked training stage must lie inside the training run the config describes."""
    training = config["training"]
    train_size = dataset_spec(config["dataset"]["name"]).train_size
    try:
        check_stages(config["attack"]["stages"], epochs=training["epochs"], batch_size=training["batch_size"],
                     train_images=max(1, round(training["train_fraction"] * train_size)))
    except StageError as error:
        raise ConfigError("attack.stages", str(error)) from None

"""The documentation stays true: every config key is explained, every default matches the schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())


def _leaf_keys(properties: dict, prefix: str = ""):
    for key, schema in properties.items():
        if schema.get("type") == "object" and "properties" in schema:
            yield from _leaf_keys(schema["properties"], f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", schema


def test_every_schema_key_has_a_description_and_a_default():
    for key, schema in _leaf_keys(SCHEMA["properties"]):
        assert schema.get("description"), key
        assert "default" in schema, key


def test_config_readme_explains_every_key_with_its_default():
    readme = (REPO / "config" / "README.md").read_text()
    rows = {line.split("|")[1].strip().strip("`"): line for line in readme.splitlines() if line.startswith("| `")}
    for key, schema in _leaf_keys(SCHEMA["properties"]):
        assert key in rows, f"config/README.md does not explain {key}"
        default = yaml.safe_dump(schema["default"], default_flow_style=True).strip().removesuffix("...").strip()
        assert f"`{default}`" in rows[key], f"config/README.md gives another default for {key}"


def test_readme_names_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert "make run" in readme and "make test" in readme


def _set_values(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from _set_values(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("path", [REPO / "config" / "config.yaml", *sorted((REPO / "config" / "paper").glob("*.yaml"))],
                         ids=lambda path: path.stem)
def test_shipped_configs_hold_only_what_differs_from_the_defaults(path):
    """The defaults live in the schema alone: a shipped config that repeated one would keep a
    second copy of it, which a change of the default would silently leave behind."""
    defaults = dict(_leaf_keys(SCHEMA["properties"]))
    for key, value in _set_values(yaml.safe_load(path.read_text())):
        assert key in defaults, f"{path.name} sets {key}, which the schema does not know"
        assert value != defaults[key]["default"], f"{path.name} repeats the default of {key}"

"""The documentation stays true: every config key is explained, every default matches the schema."""

from __future__ import annotations

from pathlib import Path

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


def _set_keys(config: dict, prefix: str = ""):
    for key, value in config.items():
        if isinstance(value, dict) and value:
            yield from _set_keys(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_paper_configs_set_every_key_the_demo_sets():
    """Snakemake merges --configfile over config/config.yaml: a key a paper config left out would
    silently keep the demo's value (its 24 candidates, its validation policies, ...)."""
    demo = set(_set_keys(yaml.safe_load((REPO / "config" / "config.yaml").read_text())))
    for path in sorted((REPO / "config" / "paper").glob("*.yaml")):
        missing = demo - set(_set_keys(yaml.safe_load(path.read_text())))
        assert not missing, f"{path.name} leaves {sorted(missing)} to the demo config"

"""The documentation stays true: every config key is explained, every default matches the schema."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from ats.config import CONFIG_SCHEMA_PATH

REPO = Path(__file__).resolve().parent.parent
SCHEMA = yaml.safe_load(CONFIG_SCHEMA_PATH.read_text())


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


# Section references ("<section sign>3.2", "docs/original-code.md <section sign>3.2, <section sign>5.1"). The sign is
# spelled as an escape here so that this file holds no reference of its own.
SECTION = "\u00a7"
_NUMBER = r"\d+(?:\.\d+)*"
_REFERENCE = re.compile(rf"(?:(?P<document>[\w./-]+\.md)\s+)?(?P<numbers>{SECTION}{_NUMBER}"
                        rf"(?:(?:\s*,\s*|\s+and\s+){SECTION}{_NUMBER})*)")
_HEADING = re.compile(rf"^#+\s+(?P<number>{_NUMBER})\.?\s", re.MULTILINE)
_SCANNED = ("ats", "workflow", "docs", "tests", "benchmarks", "config", "profiles")
_TEXT_SUFFIXES = {".py", ".smk", ".md", ".rst", ".yaml", ".yml", ".txt"}


def _scanned_files():
    for top in ("README.md", "Snakefile", "Makefile"):
        yield REPO / top
    for folder in _SCANNED:
        for path in sorted((REPO / folder).rglob("*")):
            if path.is_file() and path.suffix in _TEXT_SUFFIXES and path != Path(__file__).resolve():
                yield path


def _section_numbers(markdown: Path) -> set[str]:
    return {match["number"] for match in _HEADING.finditer(markdown.read_text())}


def _cited_document(citing: Path, name: str | None) -> Path | None:
    """The Markdown file a reference names (relative to the repository or to the citing file), or
    the citing file itself when it is Markdown and names none."""
    if name is None:
        return citing if citing.suffix == ".md" else None
    for base in (REPO, citing.parent):
        if (base / name).is_file():
            return (base / name).resolve()
    return None


def test_every_section_reference_resolves():
    """A reference names the document it points into and a section heading that exists there, so a
    reader can follow it; the original code is described in docs/original-code.md."""
    unresolved = []
    for path in _scanned_files():
        text = path.read_text()
        where = path.relative_to(REPO)
        matched = 0
        for reference in _REFERENCE.finditer(text):
            numbers = re.findall(_NUMBER, reference["numbers"])
            matched += len(numbers)
            document = _cited_document(path, reference["document"])
            if document is None:
                unresolved.append(f"{where}: {reference[0]!r} names no document of this repository")
                continue
            missing = set(numbers) - _section_numbers(document)
            if missing:
                unresolved.append(f"{where}: {reference[0]!r} has no section {sorted(missing)} in {document.name}")
        if text.count(SECTION) != matched:
            unresolved.append(f"{where}: a section sign without a section number")
        if re.search(rf"\bspec\s+{SECTION}", text):
            unresolved.append(f"{where}: refers to a specification outside the repository")
    assert not unresolved, "\n".join(unresolved)


def test_original_code_sections_are_numbered_in_order():
    """Stable anchors: chapters 1, 2, ... and within chapter N the sections N.1, N.2, ...; no gaps,
    no duplicates, so a reference cannot silently land on the wrong section after an edit."""
    numbers = [match["number"] for match in _HEADING.finditer((REPO / "docs" / "original-code.md").read_text())]
    chapter, section = 0, 0
    for number in numbers:
        parts = [int(part) for part in number.split(".")]
        if len(parts) == 1:
            chapter, section = chapter + 1, 0
            assert parts == [chapter], f"chapter {number} follows chapter {chapter - 1}"
        else:
            section += 1
            assert parts == [chapter, section], f"section {number} where {chapter}.{section} was expected"

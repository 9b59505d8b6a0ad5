"""LICENSE, CITATION.cff and pyproject.toml agree, so the package metadata, GitHub's citation
widget and the license text never tell users different things."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# The keys CFF 1.2.0 requires at the top level and in every reference.
CFF_REQUIRED = {"cff-version", "message", "authors", "title"}
REFERENCE_REQUIRED = {"type", "title", "authors"}


def load_citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_citation_has_the_required_cff_keys():
    citation = load_citation()
    assert citation.keys() >= CFF_REQUIRED
    assert citation["cff-version"] == "1.2.0"
    assert citation["authors"] and all(
        "name" in author or "family-names" in author for author in citation["authors"]
    )
    for reference in citation.get("references", []):
        assert reference.keys() >= REFERENCE_REQUIRED, reference.get("title")


def test_citation_names_the_ats_paper():
    papers = [reference for reference in load_citation()["references"]
              if reference["type"] == "conference-paper"]
    assert [paper["title"] for paper in papers] == [
        "Privacy-preserving Collaborative Learning with Automatic Transformation Search"
    ]
    paper = papers[0]
    assert paper["year"] == 2021
    assert [author["family-names"] for author in paper["authors"]] == [
        "Gao", "Guo", "Zhang", "Qiu", "Wen", "Liu"
    ]
    assert any("2011.12505" in identifier["value"] for identifier in paper["identifiers"])


def test_license_is_mit_everywhere():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert project["license"] == "MIT"
    assert project["license-files"] == ["LICENSE"]
    assert load_citation()["license"] == project["license"]
    assert license_text.startswith("MIT License\n")
    assert "Permission is hereby granted, free of charge" in license_text


def test_license_keeps_the_original_copyright_notices():
    license_text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Copyright (c) 2020 GAO WEI" in license_text  # gaow0007/ATSPrivacy: ops and policies
    assert "Copyright (c) 2021 Jonas Geiping" in license_text  # inversefed, which ATSPrivacy embeds

"""The three places that pin dependencies stay in step with requirements.txt, the source of truth:
environment.yml (the conda route), the Makefile's separate torch install and pyproject.toml's
declared dependencies. A pin changed in one place only would give the two install routes
different packages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def requirement_lines() -> list[str]:
    lines = (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.split("#", 1)[0].strip()]


def pinned_versions(lines: list[str]) -> dict[str, str]:
    """Package name -> the exact version that ``name==version`` pins."""
    pins: dict[str, str] = {}
    for line in lines:
        specifiers = list(Requirement(line).specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"not pinned: {line}"
        pins[canonicalize_name(Requirement(line).name)] = specifiers[0].version
    return pins


def conda_environment() -> dict:
    return yaml.safe_load((ROOT / "environment.yml").read_text(encoding="utf-8"))


def environment_pip_lines() -> list[str]:
    pip_sections = [entry["pip"] for entry in conda_environment()["dependencies"]
                    if isinstance(entry, dict) and "pip" in entry]
    assert len(pip_sections) == 1
    return pip_sections[0]


def test_every_requirement_is_pinned_exactly():
    pins = pinned_versions(requirement_lines())
    for package in ("scikit-image", "ruff", "tqdm", "pyyaml", "pytest", "hypothesis"):
        assert package in pins


def test_environment_yml_installs_exactly_the_requirements():
    # Not the ats package itself: the rules' conda environments are built from a copy of this file
    # elsewhere, where "-e ." would name another folder; the workflow shares its checkout instead.
    assert environment_pip_lines() == requirement_lines()


def test_environment_yml_leaves_every_package_to_pip():
    """A conda package next to a pip pin of the same name would be overwritten or conflict."""
    conda_packages = [entry for entry in conda_environment()["dependencies"]
                      if isinstance(entry, str)]
    assert sorted(re.split(r"[=<>]", entry)[0] for entry in conda_packages) == ["pip", "python"]


def test_environment_python_satisfies_requires_python():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    python = next(entry for entry in conda_environment()["dependencies"]
                  if isinstance(entry, str) and entry.startswith("python="))
    version = python.split("=", 1)[1]
    assert Requirement(f"python{project['requires-python']}").specifier.contains(version)


def test_makefile_installs_the_pinned_torch():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    install_line = next(line for line in makefile.splitlines() if "pip install" in line
                        and "torch==" in line)
    pins = pinned_versions(requirement_lines())
    assert pinned_versions(re.findall(r"\S+==\S+", install_line)) == {
        package: pins[package] for package in ("torch", "torchvision")
    }


def test_pins_satisfy_pyproject_dependencies():
    """Every dependency pyproject.toml declares is pinned, and the pin meets its range."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    declared = project["dependencies"] + [
        requirement for extra in project["optional-dependencies"].values()
        for requirement in extra
    ]
    pins = pinned_versions(requirement_lines())
    for line in declared:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{line} is declared in pyproject.toml but not pinned"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} breaks {line}"


def test_jobs_import_the_checkout_that_planned_them(monkeypatch):
    """The Snakefile puts its checkout first on the jobs' PYTHONPATH, once however often it is parsed."""
    import os

    from ats.runtime.job_environment import share_package_with_jobs

    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["/elsewhere", "/repo"]))
    share_package_with_jobs("/repo")
    share_package_with_jobs("/repo")
    assert os.environ["PYTHONPATH"] == os.pathsep.join(["/repo", "/elsewhere"])


def test_every_rule_runs_in_the_conda_environment():
    """`snakemake --lint` asks every rule for a software environment; they all share environment.yml."""
    rules = (ROOT / "workflow" / "rules").glob("*.smk")
    text = "\n".join(path.read_text(encoding="utf-8") for path in rules)
    assert text.count("script:") == text.count("conda:\n") > 20
    assert re.search(r'^CONDA_ENVIRONMENT = "\.\./\.\./environment\.yml"$', text, re.MULTILINE)

"""Run the Snakemake workflow from tests, in a scratch directory, with the repository's venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from ats.config import CONFIG_SCHEMA_PATH

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TEST_CONFIG = REPO / "tests" / "config" / "test.yaml"
SCHEMA = CONFIG_SCHEMA_PATH


def effective_config(*configfiles: Path) -> dict:
    """The config a workflow run sees with these ``--configfile``s: merged in order over the
    schema's defaults, exactly as Snakemake loads and validates it."""
    from snakemake.utils import update_config, validate

    config: dict = {}
    for path in configfiles:
        update_config(config, yaml.safe_load(Path(path).read_text()) or {})
    validate(config, str(SCHEMA))
    return config


def snakemake(workdir: Path, *args: str, config: dict | None = None, timeout: int = 900,
              configfile: Path | None = TEST_CONFIG) -> subprocess.CompletedProcess:
    """Run snakemake on the repository's Snakefile inside ``workdir``; never raises on failure.

    ``config`` is written to an extra config file merged over ``configfile``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    command = [str(SNAKEMAKE), "--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir)]
    configfiles = [str(configfile)] if configfile else []
    if config is not None:
        override = workdir / "override.yaml"
        override.write_text(yaml.safe_dump(config))
        configfiles.append(str(override))
    if configfiles:
        command += ["--configfile", *configfiles]
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        command + list(args), capture_output=True, text=True, timeout=timeout, env=env, cwd=workdir
    )

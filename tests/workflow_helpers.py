"""Run the Snakemake workflow from tests, in a scratch directory, with the repository's venv."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = Path(sys.executable).parent / "snakemake"
TEST_CONFIG = REPO / "tests" / "config" / "test.yaml"


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

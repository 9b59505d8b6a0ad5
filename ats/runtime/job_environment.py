"""What the workflow passes on to its jobs through their environment. Torch-free: the Snakefile
calls it on every parse."""

from __future__ import annotations

import os


def share_package_with_jobs(root: str) -> None:
    """Put ``root`` (the checkout holding the ``ats`` package) first on the jobs' ``PYTHONPATH``.

    A rule's conda environment does not install ``ats``, and a job should never run another copy of
    it than the workflow that planned the job. Idempotent: every job parses the Snakefile again.
    """
    entries = [entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry]
    os.environ["PYTHONPATH"] = os.pathsep.join(dict.fromkeys([root, *entries]))

"""Logging into the rule's ``log:`` file, with tqdm progress bars.

Snakemake does not redirect a script's output; each adapter script calls :func:`configure` with the
rule's log path so that library code can simply use ``logging.getLogger(__name__)`` and
:func:`progress`. An exception that ends the job is written to that log with its traceback, since
Snakemake's error message sends the user there.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from types import TracebackType
from typing import TextIO, TypeVar

from tqdm import tqdm

from ats.runtime.device import log_runtime

T = TypeVar("T")

_progress_stream: TextIO = sys.stderr


def configure(log_path: str | os.PathLike | None = None, level: int = logging.INFO) -> None:
    """Send log records and progress bars to ``log_path`` (append mode), or to stderr."""
    global _progress_stream
    stream: TextIO = open(log_path, "a", buffering=1) if log_path else sys.stderr  # noqa: SIM115
    _progress_stream = stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught_exception
    log_runtime()  # host, SLURM_JOB_ID, CUDA_VISIBLE_DEVICES and threads in every job's log


def _log_uncaught_exception(kind: type[BaseException], error: BaseException, trace: TracebackType | None) -> None:
    """Log the exception that ends the process, with its traceback, then report it as Python would."""
    logging.getLogger("ats").critical("the job failed with %s", kind.__name__, exc_info=(kind, error, trace))
    sys.__excepthook__(kind, error, trace)


def progress(iterable: Iterable[T], desc: str, total: int | None = None) -> Iterator[T]:
    """Wrap ``iterable`` in a tqdm bar that writes to the configured log.

    Bars update at most every few seconds in log files, so logs stay readable.
    """
    interactive = getattr(_progress_stream, "isatty", lambda: False)()
    return iter(
        tqdm(
            iterable,
            desc=desc,
            total=total,
            file=_progress_stream,
            mininterval=0.5 if interactive else 5.0,
            dynamic_ncols=interactive,
            ascii=not interactive,
        )
    )

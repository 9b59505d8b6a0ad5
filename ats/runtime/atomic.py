"""Atomic output files.

A job that is killed (SIGKILL, a Slurm time limit, a power cut) must never leave a file behind that
looks complete, because Snakemake and our own caches trust existing files. Every writer therefore
writes to a temporary file in the destination folder and renames it into place; ``os.replace`` is
atomic on POSIX file systems when source and destination share a folder.

A killed writer cannot remove its temporary file, so the name records the host and process that
own it (``.{name}.{host}.{pid}.{random}.tmp``); the next writer of the same output deletes those
whose process is gone. Files of other hosts (a shared cluster file system) are left alone, since
their processes cannot be checked from here.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``final_path``; rename it into place on success.

    On any exception the temporary file is removed and ``final_path`` is left untouched, so an
    earlier complete result survives a failed rewrite. A full disk is reported naming ``final_path``
    rather than the hidden temporary file.
    """
    final = Path(final_path)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_orphaned_temporaries(final)
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(final, os.getpid()), suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    # mkstemp creates owner-only files; outputs should get the usual umask-based permissions.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename != str(final):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(final)) from error
        raise


def _temporary_prefix(final: Path, pid: int) -> str:
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname())  # no dots: they separate the fields
    return f".{final.name}.{host}.{pid}."


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def _remove_orphaned_temporaries(final: Path) -> None:
    """Delete temporary files of ``final`` left by killed writers on this host."""
    this_host = _temporary_prefix(final, 0)[: -len("0.")]
    for candidate in final.parent.glob(f"{glob.escape(this_host)}*.tmp"):
        pid_text = candidate.name[len(this_host):].split(".", 1)[0]
        if pid_text.isdigit() and not _process_exists(int(pid_text)):
            candidate.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON, atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_tsv(path: str | os.PathLike, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Write a tab-separated table atomically; floats keep full precision via ``repr``."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return repr(value)
        return str(value)

    lines = ["\t".join(header)] + ["\t".join(cell(v) for v in row) for row in rows]
    write_text(path, "\n".join(lines) + "\n")


def read_tsv(path: str | os.PathLike) -> list[dict[str, str]]:
    """Read a table written by :func:`write_tsv` as a list of ``{column: text}`` rows."""
    return parse_tsv(Path(path).read_text())


def parse_tsv(text: str) -> list[dict[str, str]]:
    """The rows of a table written by :func:`write_tsv`, from its text."""
    lines = text.splitlines()
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:] if line]

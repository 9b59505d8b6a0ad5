"""Fingerprint and checksum of text results (tables, JSON), kept in a file beside each of them.

HDF5 caches and checkpoints carry their fingerprint and checksum inside. A table or JSON file that
people and other programs read cannot, so :func:`write_with_provenance` writes
``<name>.provenance.json`` next to it (``{"file", "fingerprint", "sha256"}``) after the file itself,
and :func:`read_verified_text` refuses the file, with :class:`ats.runtime.hdf5.CacheError`, when the
record is missing, was made under another configuration, or its checksum does not match the bytes
(an edited, truncated or swapped file). Both writes are atomic; a kill between them leaves a file
that fails the check and is recomputed, never one that passes with the wrong record.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ats.runtime.atomic import parse_tsv, write_json
from ats.runtime.hdf5 import CacheError


def provenance_path(path: str | os.PathLike) -> Path:
    path = Path(path)
    return path.with_name(path.name + ".provenance.json")


def write_with_provenance(path: str | os.PathLike, write: Callable[[Path], None], *, fingerprint: str) -> None:
    """Call ``write(path)`` (an atomic writer), then record the file's fingerprint and checksum."""
    path = Path(path)
    write(path)
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    write_json(provenance_path(path), {"file": path.name, "fingerprint": fingerprint, "sha256": sha256})


def read_verified_text(path: str | os.PathLike, *, expected_fingerprint: str) -> str:
    """The text of ``path`` once checked against its provenance record; ``CacheError`` otherwise."""
    path, record_path = Path(path), provenance_path(path)
    if not path.exists():
        raise CacheError(path, "file does not exist")
    try:
        record = json.loads(record_path.read_text())
        recorded_fingerprint, recorded_sha256 = record["fingerprint"], record["sha256"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CacheError(path, f"no readable provenance record {record_path.name} ({error}), so its origin "
                               "is unknown") from error
    if recorded_fingerprint != expected_fingerprint:
        raise CacheError(path, f"made under a different configuration (fingerprint {recorded_fingerprint!r}, "
                               f"expected {expected_fingerprint!r})")
    content = path.read_bytes()
    if hashlib.sha256(content).hexdigest() != recorded_sha256:
        raise CacheError(path, "content checksum mismatch (edited or corrupted file)")
    return content.decode()


def read_verified_json(path: str | os.PathLike, *, expected_fingerprint: str) -> Any:
    return json.loads(read_verified_text(path, expected_fingerprint=expected_fingerprint))


def read_verified_tsv(path: str | os.PathLike, *, expected_fingerprint: str) -> list[dict[str, str]]:
    """:func:`ats.runtime.atomic.read_tsv`, of a verified file."""
    return parse_tsv(read_verified_text(path, expected_fingerprint=expected_fingerprint))

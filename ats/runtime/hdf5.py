"""Verified HDF5 caches.

Every intermediate tensor of the workflow lives in an HDF5 file written by :func:`write_h5`. Besides
the arrays, each file records

* ``schema_version``: the layout version of this module, bumped when a layout changes;
* ``fingerprint``: the fingerprint of the configuration values that produced it
  (:func:`ats.runtime.fingerprint.fingerprint`);
* ``content_sha256``: a digest of every array's name, dtype, shape and bytes.

:func:`read_h5` checks all three, so a truncated or corrupted file, or one made under another
configuration, is reported (naming the file) instead of being used silently.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ats.runtime.atomic import atomic_path

SCHEMA_VERSION = 1


class CacheError(RuntimeError):
    """A result file is missing, unreadable, corrupted, or was made under a different config.

    The message names the file, the problem and the command that recomputes the file
    (:func:`recovery_command`); ``path`` and ``problem`` keep the parts.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}; recompute it with: {recovery_command(path)}")


def recovery_command(path: str | os.PathLike) -> str:
    """The command that recomputes ``path`` and everything made from it, whatever exists downstream.

    Deleting a refused file is not enough: once the jobs that read it have finished (or failed and
    had their outputs deleted, such as the selection checkpoint's), Snakemake may find nothing to do.
    ``--forcerun <file>`` reruns the job that writes the file and every job downstream of it.
    """
    return f"snakemake --forcerun {path} <your usual options>"


def content_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the arrays' names, dtypes, shapes and bytes, in sorted name order."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        if array.dtype.kind in "OSU":
            digest.update(json.dumps(array.tolist()).encode())
        else:
            digest.update(array.tobytes())
    return digest.hexdigest()


def _attr_value(value: Any) -> Any:
    """HDF5 attributes hold scalars, strings and arrays; everything else is stored as JSON."""
    if isinstance(value, (str, int, float, bool, np.integer, np.floating, np.ndarray)):
        return value
    return "json:" + json.dumps(value, sort_keys=True)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    if isinstance(value, np.generic):
        return value.item()
    return value


def write_h5(
    path: str | os.PathLike,
    arrays: Mapping[str, np.ndarray],
    attrs: Mapping[str, Any] | None = None,
    *,
    fingerprint: str,
    compression: str | None = None,
) -> None:
    """Write ``arrays`` (names may contain ``/`` to form groups) and ``attrs`` atomically.

    String arrays are stored as UTF-8 variable-length strings. ``compression`` (e.g. ``"gzip"``)
    is applied to numeric arrays larger than 1 MiB.
    """
    arrays = {name: np.asarray(value) for name, value in arrays.items()}
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as handle:
        for name, array in arrays.items():
            if array.dtype.kind in "OU":
                handle.create_dataset(
                    name, data=np.array([str(v) for v in array.ravel()], dtype=object).reshape(array.shape),
                    dtype=h5py.string_dtype(),
                )
            else:
                big = array.nbytes > (1 << 20)
                handle.create_dataset(
                    name, data=array, compression=compression if big else None
                )
        for key, value in (attrs or {}).items():
            handle.attrs[key] = _attr_value(value)
        handle.attrs["schema_version"] = SCHEMA_VERSION
        handle.attrs["fingerprint"] = fingerprint
        handle.attrs["content_sha256"] = content_digest(
            {n: _normalise_strings(a) for n, a in arrays.items()}
        )


def _normalise_strings(array: np.ndarray) -> np.ndarray:
    if array.dtype.kind in "OUS":
        return np.array([v.decode() if isinstance(v, bytes) else str(v) for v in array.ravel()],
                        dtype=object).reshape(array.shape)
    return array


def _collect(handle: h5py.Group, prefix: str = "") -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for key, item in handle.items():
        name = f"{prefix}{key}"
        if isinstance(item, h5py.Group):
            arrays.update(_collect(item, name + "/"))
        else:
            arrays[name] = _normalise_strings(item[()]) if item.dtype.kind in "OS" else item[()]
    return arrays


def read_h5(
    path: str | os.PathLike,
    *,
    expected_fingerprint: str | None = None,
    verify_content: bool = True,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Read every array and attribute of a file written by :func:`write_h5`, verifying it.

    Raises :class:`CacheError` naming ``path`` when the file is missing or unreadable, has another
    schema version, was made under another configuration (``expected_fingerprint``), or its
    content does not match its digest.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(path, "cache file does not exist")
    try:
        with h5py.File(path, "r") as handle:
            attrs = {key: _decode_attr(value) for key, value in handle.attrs.items()}
            arrays = _collect(handle)
    except (OSError, KeyError, ValueError) as error:
        raise CacheError(path, f"unreadable or truncated HDF5 file ({error})") from error
    version = attrs.get("schema_version")
    if version != SCHEMA_VERSION:
        raise CacheError(path, f"schema version {version!r}, expected {SCHEMA_VERSION}")
    if expected_fingerprint is not None and attrs.get("fingerprint") != expected_fingerprint:
        raise CacheError(path, f"made under a different configuration (fingerprint {attrs.get('fingerprint')!r}, "
                               f"expected {expected_fingerprint!r})")
    if verify_content and content_digest(arrays) != attrs.get("content_sha256"):
        raise CacheError(path, "content checksum mismatch (corrupted file)")
    return arrays, attrs

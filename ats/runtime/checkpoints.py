"""Model checkpoints with integrity checks, compatible with the original code's files.

Our checkpoints are ``torch.save`` dictionaries ``{"format": "ats-checkpoint", "schema_version",
"fingerprint", "state_dict_sha256", "meta", "state_dict"}``. :func:`load_state_dict` also accepts
a plain ``state_dict`` or ``{"state_dict": ...}``/``{"model_state_dict": ...}`` as written by the
original ATS code (for example the authors' released tiny-data ``100.pth``); such files carry no
checksum, so they are only checked for loadability and key compatibility by the caller, and only
where no fingerprint is expected (``search.pretrain.checkpoint``, imported once into our format).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ats.runtime.atomic import atomic_path
from ats.runtime.hdf5 import CacheError

CHECKPOINT_FORMAT = "ats-checkpoint"
CHECKPOINT_SCHEMA_VERSION = 1


def state_dict_digest(state_dict: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over every tensor's name, dtype, shape and bytes, in sorted key order."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    *,
    fingerprint: str,
    meta: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Atomically save a model ``state_dict`` with its checksum, fingerprint and ``meta``.

    ``extra`` holds further objects to keep (optimizer and scheduler state for resuming). The file is
    serialised in memory first and written by Python: torch's own file writer reports a full disk
    as ``basic_ios::clear: iostream error``, Python as "No space left on device" with the path.
    """
    cpu_state = {k: v.detach().cpu().clone() for k, v in state_dict.items()}
    payload = {
        "format": CHECKPOINT_FORMAT,
        "schema_version": CHECKPOINT_SCHEMA_VERSION,
        "fingerprint": fingerprint,
        "state_dict_sha256": state_dict_digest(cpu_state),
        "meta": dict(meta or {}),
        "state_dict": cpu_state,
        **dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        serialised = io.BytesIO()
        torch.save(payload, serialised)
        tmp.write_bytes(serialised.getbuffer())


def load_checkpoint(path: str | os.PathLike, *, expected_fingerprint: str | None = None) -> dict[str, Any]:
    """Load and verify a checkpoint made under ``expected_fingerprint``.

    Raises :class:`CacheError` naming ``path`` for missing, truncated, corrupted or foreign files. A
    plain ``state_dict`` carries no fingerprint, so it is refused whenever one is expected; only
    ``expected_fingerprint=None`` (importing a user's model, inspecting a file) wraps it, unchecked.
    """
    path = Path(path)
    if not path.exists():
        raise CacheError(path, "checkpoint does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for truncated/corrupt archives
        raise CacheError(path, f"unreadable or truncated checkpoint ({error})") from error
    if isinstance(payload, Mapping) and payload.get("format") == CHECKPOINT_FORMAT:
        if payload.get("schema_version") != CHECKPOINT_SCHEMA_VERSION:
            raise CacheError(path, f"checkpoint schema version {payload.get('schema_version')!r}, "
                                   f"expected {CHECKPOINT_SCHEMA_VERSION}")
        if state_dict_digest(payload["state_dict"]) != payload["state_dict_sha256"]:
            raise CacheError(path, "checkpoint checksum mismatch (corrupted file)")
        if expected_fingerprint is not None and payload["fingerprint"] != expected_fingerprint:
            raise CacheError(path, f"checkpoint made under a different configuration "
                                   f"(fingerprint {payload['fingerprint']!r}, expected {expected_fingerprint!r})")
        return dict(payload)
    for key in ("state_dict", "model_state_dict"):
        if isinstance(payload, Mapping) and isinstance(payload.get(key), Mapping):
            payload = payload[key]
            break
    if not isinstance(payload, Mapping) or not all(isinstance(v, torch.Tensor) for v in payload.values()):
        raise CacheError(path, "not a model state_dict or an ATS checkpoint")
    if expected_fingerprint is not None:
        raise CacheError(path, f"a plain state_dict, not a checkpoint of this workflow: it has no fingerprint "
                               f"(expected {expected_fingerprint!r}) or checksum, so its origin is unknown")
    state = {k.removeprefix("module."): v for k, v in payload.items()}
    return {"format": "state_dict", "fingerprint": None, "meta": {}, "state_dict": state}

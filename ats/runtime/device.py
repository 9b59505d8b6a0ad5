"""Which device a stage runs on, and GPU slot leases for multi-GPU workstations.

Snakemake never assigns GPU ids: ``--resources gpu=K`` only caps how many GPU jobs run at once
(snakemake issue #281). On a workstation with several GPUs each job must therefore pick a free GPU
itself. It does so with one lock file per visible GPU: the job takes a non-blocking ``flock`` on the
first free one and keeps the file open for the rest of its life. The kernel drops the lock when the
process ends, however it ends, so a killed job never leaves a GPU reserved.

Under Slurm the scheduler has already chosen: it sets ``CUDA_VISIBLE_DEVICES`` for the allocation.
Leases only ever pick among the visible devices, so with one visible GPU there is nothing to lease.

torch is imported inside the functions: the workflow imports :mod:`ats` while it parses the
Snakefile in every job, and that must stay fast.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

_log = logging.getLogger(__name__)

DEVICE_SPECS = ("auto", "cpu", "cuda")
LOCK_DIR_ENV = "ATS_GPU_LOCK_DIR"
LEASE_TIMEOUT_ENV = "ATS_GPU_LEASE_TIMEOUT_S"
# Long enough to wait for a GPU job that started just before us; short enough that a workflow run
# with more concurrent GPU jobs than GPUs (`--resources gpu=K` with K too large) fails visibly.
DEFAULT_LEASE_TIMEOUT_S = 600.0
LEASE_POLL_INTERVAL_S = 1.0


@dataclass
class GpuLease:
    """One GPU slot held by this process.

    ``index`` is the position of the GPU among the visible devices, i.e. ``cuda:<index>`` in torch;
    ``device_id`` is its name in ``CUDA_VISIBLE_DEVICES`` (``"5"``, ``"GPU-1f2e…"``, ``"MIG-…"``).
    """

    index: int
    device_id: str
    lock_file: Path
    _fd: int | None = field(default=None, repr=False)

    def release(self) -> None:
        """Free the slot now instead of at process exit (closing the file drops the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


# The lease of this process, kept here so that its lock file stays open (and locked) until exit,
# and so that a second resolve_device() in this process reuses that GPU instead of taking another.
_process_lease: GpuLease | None = None


def default_lock_dir() -> Path:
    """``$ATS_GPU_LOCK_DIR``, else a per-user folder in ``/tmp`` (node-local: flock needs that).

    Inside a Slurm job the folder is per job: device ids are numbered per allocation there, so two
    jobs that both see GPU ``0`` may hold different GPUs and must not contend for one lock.
    """
    configured = os.environ.get(LOCK_DIR_ENV)
    if configured:
        return Path(configured)
    base = Path(f"/tmp/ats-gpu-locks-{os.getuid()}")
    slurm_job_id = os.environ.get("SLURM_JOB_ID")
    return base / f"slurm-job-{slurm_job_id}" if slurm_job_id else base


def visible_device_ids(device_count: int) -> list[str]:
    """Ids of the ``device_count`` GPUs CUDA enumerates, in CUDA's order.

    These are the entries of ``CUDA_VISIBLE_DEVICES`` when it is set (CUDA ignores entries past the
    first invalid one, hence the cut at ``device_count``), else ``"0" … "device_count-1"``.
    """
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return [str(index) for index in range(device_count)]
    return [entry.strip() for entry in raw.split(",") if entry.strip()][:device_count]


def lease_gpu_slot(
    visible_devices: Sequence[str],
    lock_dir: str | os.PathLike,
    timeout_s: float,
    *,
    poll_interval_s: float = LEASE_POLL_INTERVAL_S,
) -> GpuLease:
    """Lock the first free GPU among ``visible_devices``, waiting up to ``timeout_s`` seconds.

    Lock files are named after the device id, not the index, so processes that see different
    ``CUDA_VISIBLE_DEVICES`` lists still agree on which physical GPU a lock stands for. The
    returned lease holds the lock until :meth:`GpuLease.release` or the end of the process;
    dropping the lease object does not release it. Needs no GPU: it only touches files.
    """
    devices = list(visible_devices)
    if not devices:
        raise ValueError("lease_gpu_slot: visible_devices is empty; there is no GPU to lease")
    duplicates = sorted({device for device in devices if devices.count(device) > 1})
    if duplicates:
        raise ValueError(f"lease_gpu_slot: visible_devices lists {duplicates} more than once")
    if timeout_s < 0:
        raise ValueError(f"lease_gpu_slot: timeout_s must be >= 0, got {timeout_s}")
    folder = Path(lock_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OSError(
            f"cannot create the GPU lock folder {folder} ({error}); "
            f"set {LOCK_DIR_ENV} to a writable node-local folder"
        ) from error

    deadline = time.monotonic() + timeout_s
    announced_wait = False
    while True:
        for index, device_id in enumerate(devices):
            lease = _try_lock(index, device_id, folder)
            if lease is not None:
                return lease
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(
                f"all {len(devices)} GPU slots ({','.join(devices)}) stayed busy for "
                f"{timeout_s:g} s (lock files in {folder}). Run fewer GPU jobs at once "
                f"(snakemake --resources gpu=K with K at most the number of GPUs) or raise "
                f"{LEASE_TIMEOUT_ENV}."
            )
        if not announced_wait:
            _log.info(
                "all %d GPU slots (%s) are busy; waiting up to %g s for one to free up",
                len(devices), ",".join(devices), timeout_s,
            )
            announced_wait = True
        time.sleep(min(poll_interval_s, remaining))


def _lock_file_name(device_id: str) -> str:
    """A file name for any CUDA device id (UUIDs and MIG ids contain ``/`` or ``:``)."""
    return "gpu-" + re.sub(r"[^A-Za-z0-9._-]", "_", device_id) + ".lock"


def _try_lock(index: int, device_id: str, folder: Path) -> GpuLease | None:
    """The lease of ``device_id`` if its lock is free now, else ``None`` (never blocks)."""
    lock_file = folder / _lock_file_name(device_id)
    try:
        fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise OSError(
            f"cannot open the GPU lock file {lock_file} ({error}); "
            f"set {LOCK_DIR_ENV} to a writable node-local folder"
        ) from error
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    # Who holds the slot, for a person looking at a busy lock file.
    os.ftruncate(fd, 0)
    slurm_job_id = os.environ.get("SLURM_JOB_ID", "unset")
    holder = f"pid={os.getpid()} host={socket.gethostname()} SLURM_JOB_ID={slurm_job_id}\n"
    os.write(fd, holder.encode())
    return GpuLease(index=index, device_id=device_id, lock_file=lock_file, _fd=fd)


def _lease_timeout_from_env() -> float:
    raw = os.environ.get(LEASE_TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_LEASE_TIMEOUT_S
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{LEASE_TIMEOUT_ENV} must be a number of seconds, got {raw!r}") from None


def resolve_device(
    spec: str = "auto",
    *,
    lock_dir: str | os.PathLike | None = None,
    lease_timeout_s: float | None = None,
) -> torch.device:
    """The torch device for ``spec`` (``auto``, ``cpu`` or ``cuda``), logged with its context.

    ``auto`` uses CUDA when a device exists and otherwise falls back to the CPU with a warning;
    ``cuda`` raises instead. With several visible GPUs this process leases one slot (see the
    module docstring), waiting up to ``lease_timeout_s`` (default ``$ATS_GPU_LEASE_TIMEOUT_S`` or
    600 s) in ``lock_dir`` (default :func:`default_lock_dir`) and makes it torch's current device.
    """
    global _process_lease
    if spec not in DEVICE_SPECS:
        raise ValueError(f"device must be one of {', '.join(DEVICE_SPECS)}; got {spec!r}")
    import torch

    if spec == "cpu":
        device = torch.device("cpu")
    elif not torch.cuda.is_available() or torch.cuda.device_count() == 0:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "unset")
        if spec == "cuda":
            raise RuntimeError(
                f"device 'cuda' was requested but torch {torch.__version__} finds no CUDA device "
                f"(CUDA_VISIBLE_DEVICES={visible}); use device 'auto' to fall back to the CPU"
            )
        _log.warning(
            "no CUDA device found; falling back to the CPU (torch %s, CUDA_VISIBLE_DEVICES=%s)",
            torch.__version__, visible,
        )
        device = torch.device("cpu")
    else:
        visible_ids = visible_device_ids(torch.cuda.device_count())
        if len(visible_ids) == 1:
            index = 0  # the scheduler or the user already chose this GPU
        else:
            if _process_lease is None:
                _process_lease = lease_gpu_slot(
                    visible_ids,
                    lock_dir if lock_dir is not None else default_lock_dir(),
                    lease_timeout_s if lease_timeout_s is not None else _lease_timeout_from_env(),
                )
                _log.info(
                    "leased GPU slot %d of %d (device id %s) with lock file %s",
                    _process_lease.index, len(visible_ids), _process_lease.device_id,
                    _process_lease.lock_file,
                )
            index = _process_lease.index
        torch.cuda.set_device(index)
        device = torch.device("cuda", index)
    log_runtime(device)
    return device


def describe_runtime(device: torch.device | str | None = None) -> dict[str, Any]:
    """Where and how this job runs, for its log: host, Slurm job, visible GPUs, torch, threads.

    torch is only asked (for its build and thread count) when the job has already imported it, so
    torch-free jobs can log this without paying seconds for the import.
    """
    torch = sys.modules.get("torch")
    return {
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "SLURM_JOB_ID": os.environ.get("SLURM_JOB_ID"),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
        "torch": torch.__version__ if torch is not None else _installed_version("torch"),
        "device": None if device is None else str(device),
        "device_name": None if device is None else _device_name(str(device)),
        "cpus": len(os.sched_getaffinity(0)),
        "threads": torch.get_num_threads() if torch is not None else None,
    }


def _installed_version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    return "cpu"


def format_runtime(info: dict[str, Any]) -> str:
    """``key=value`` pairs on one line, easy to grep; values shell-quoted, ``None`` as ``unset``."""
    return " ".join(
        f"{key}={shlex.quote('unset' if value is None else str(value))}"
        for key, value in info.items()
    )


def log_runtime(device: torch.device | str | None = None) -> None:
    """Log :func:`describe_runtime` as one ``runtime key=value ...`` line.

    The Slurm test reads ``SLURM_JOB_ID`` and ``CUDA_VISIBLE_DEVICES`` from this line in job logs.
    """
    _log.info("runtime %s", format_runtime(describe_runtime(device)))

"""What the numbers were measured on, and whether other processes competed for the CPU."""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

import torch


def _cpu_info() -> tuple[str, list[str]]:
    """The CPU model name and its vector extensions (AVX2, AVX-512, AMX decide CPU conv speed)."""
    model, flags = platform.processor() or "unknown", []
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = sorted(flag for flag in line.split(":", 1)[1].split()
                               if flag in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile"))
                break
    return model, flags


def machine_description(device: torch.device) -> dict[str, Any]:
    """What the numbers were measured on; the load average flags a machine shared with other work."""
    cpu_model, cpu_flags = _cpu_info()
    description: dict[str, Any] = {
        "hostname": platform.node(),
        "platform": platform.platform(),
        "cpu": cpu_model,
        "cpu_flags": cpu_flags,
        "cpu_cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        description["gpu"] = properties.name
        description["gpu_memory_gib"] = round(properties.total_memory / 2**30, 1)
    return description


def contention_warning(record: dict[str, Any]) -> str | None:
    """A warning when other processes competed for the cores this run used, else ``None``.

    With more runnable threads than cores, OpenMP threads that spin-wait for a descheduled
    partner make multi-threaded runs of small operations (the batch-1 references, the batched
    augmentation) several times slower, erratically, so the ratios of such a run are unreliable.
    """
    cores = record["machine"]["cpu_cores_usable"]
    load = max(record["load_average_start"][0], record["load_average_end"][0])
    if record["device"] != "cpu" or load <= cores + 1:  # this run alone keeps `threads` (+ workers) busy
        return None
    threads = record["machine"]["torch_threads"]
    advice = "" if threads == 1 else " Rerun when the machine is idle, or compare with --threads 1."
    return (f"the 1-minute load average reached {load:.1f} on {cores} usable cores: other processes competed "
            f"for the CPU, so timings are noisy{' and multi-threaded ratios unreliable' if threads > 1 else ''}."
            f"{advice}")

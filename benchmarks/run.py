"""``make bench``: time the library's fast paths against the straightforward references.

Every figure is a ratio measured in one run, on the same inputs, against a reference in
:mod:`benchmarks.reference` that follows the original code's structure. Each benchmark times the
library and the reference in alternating rounds (after a warm-up), so that load from other
processes on a shared machine hits both sides alike, and reports the median of the rounds.

The table goes to stdout and everything (machine, device, versions, date, load average, sizes,
every round's wall and CPU time, targets and whether they are met) to
``results/benchmarks/bench.json``.

Usage::

    python -m benchmarks.run [--device cpu|cuda] [--quick] [--only spri attack ...] [--output PATH]
                             [--threads N]

The benchmarks live by subject in :mod:`benchmarks.search` (S_pri per architecture, one policy's
scoring), :mod:`benchmarks.attack` and :mod:`benchmarks.augment`; what they share (seeded inputs and
sizes, alternating timing, the machine's description) in :mod:`benchmarks.inputs`,
:mod:`benchmarks.timing` and :mod:`benchmarks.machine`. This module runs them and judges the targets.

``--quick`` runs every benchmark on tiny sizes with one thread in a few seconds; the smoke test
uses it to check the keys and the agreement with the references. Its timings mean nothing.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ats.runtime.atomic import write_json
from ats.runtime.memory import retain_freed_host_memory
from benchmarks.attack import bench_attack
from benchmarks.augment import bench_augment
from benchmarks.inputs import SIZES, Sizes
from benchmarks.machine import contention_warning, machine_description
from benchmarks.search import bench_policy, bench_spri
from benchmarks.timing import torch_threads

DEFAULT_OUTPUT = Path("results/benchmarks/bench.json")
BENCHMARKS = ("spri", "attack", "augment", "policy")

# Targets of the issue, per device kind: (key, comparison, bound).
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "cpu": [
        ("spri_speedup_resnet20", ">=", 2.5),
        ("spri_speedup_resnet20_4", ">=", 1.4),
        ("spri_floor_ratio", "<=", 1.3),
        ("attack_speedup", ">=", 1.1),
        ("augment_speedup", ">=", 2.0),
        ("spri_max_abs_diff_same_choices", "<=", 1e-4),
        ("spri_float32_arithmetic_error", "<=", 2e-5),
        ("attack_max_abs_diff", "<=", 1e-4),
    ],
    "cuda": [
        ("spri_speedup_resnet20", ">=", 30.0),
        ("spri_speedup_resnet20_4", ">=", 30.0),
        ("spri_floor_ratio", "<=", 2.0),
        ("attack_speedup", ">=", 20.0),
        ("augment_speedup", ">=", 10.0),
        ("spri_max_abs_diff_same_choices", "<=", 1e-4),
        ("spri_float32_arithmetic_error", "<=", 2e-5),
        ("attack_max_abs_diff", "<=", 1e-4),
        ("search_1600_policies_hours", "<=", 1.0),
    ],
}

RUNNERS: dict[str, Callable[[Sizes, torch.device], dict[str, Any]]] = {
    "spri": bench_spri, "attack": bench_attack, "augment": bench_augment, "policy": bench_policy,
}


def evaluate_targets(record: dict[str, Any], device_kind: str) -> dict[str, dict[str, Any]]:
    """Each target of the issue that this run measured: the bound, the value and whether it is met."""
    checks = {}
    for key, comparison, bound in TARGETS[device_kind]:
        if key in record:
            value = record[key]
            met = value >= bound if comparison == ">=" else value <= bound
            checks[key] = {"target": f"{comparison} {bound:g}", "value": value, "met": bool(met)}
    return checks


def format_table(record: dict[str, Any]) -> str:
    """Every numeric result with its target, if it has one, as an aligned text table."""
    targets = record.get("targets", {})
    rows = [("key", "value", "target", "met")]
    for key in sorted(record):
        value = record[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        target = targets.get(key)
        rows.append((key, f"{value:.3g}" if abs(value) < 1e-2 else f"{value:.3f}",
                     target["target"] if target else "", ("yes" if target["met"] else "NO") if target else ""))
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def parse_arguments(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, timings meaningless")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS), metavar="NAME",
                        help=f"run only these benchmarks ({', '.join(BENCHMARKS)})")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default: torch's own choice, one per core; 1 with --quick)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmarks, print the table, write the JSON and return its content."""
    arguments = parse_arguments(argv)
    if arguments.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda was asked for, but torch sees no CUDA device")
    threads = arguments.threads if arguments.threads is not None else (1 if arguments.quick else None)
    # As in the workflow's stages, for every side of every ratio alike.
    retain_freed_host_memory()
    with torch_threads(threads):
        return _run(arguments, torch.device(arguments.device))


def _run(arguments: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    sizes = SIZES["quick" if arguments.quick else device.type]
    record: dict[str, Any] = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": str(device) if device.type == "cpu" else f"{device} ({torch.cuda.get_device_name(device)})",
        "torch_version": torch.__version__,
        "machine": machine_description(device),
        "quick": arguments.quick,
        "benchmarks": [name for name in BENCHMARKS if name in arguments.only],
        "sizes": asdict(sizes),
        "load_average_start": os.getloadavg(),
        "timings": {},
    }
    started = time.perf_counter()
    for name in record["benchmarks"]:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        benchmark_started = time.perf_counter()
        results = RUNNERS[name](sizes, device)
        record["timings"].update(results.pop("timings"))
        record["timings"][f"{name}_wall_seconds"] = time.perf_counter() - benchmark_started
        record.update(results)
        print(f"[bench] {name} done, load average {os.getloadavg()[0]:.1f}", file=sys.stderr, flush=True)
    record["timings"]["total_wall_seconds"] = time.perf_counter() - started
    record["load_average_end"] = os.getloadavg()
    record["targets"] = evaluate_targets(record, device.type)
    warning = contention_warning(record)
    if warning:
        record["warning"] = warning
    write_json(arguments.output, record)
    print(format_table(record))
    if warning:
        print(f"\nWARNING: {warning}")
    print(f"\nwritten to {arguments.output}")
    return record


if __name__ == "__main__":
    main()

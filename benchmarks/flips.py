"""How often float32 S_pri takes another ReLU or max-pool branch than float64, over independent cases.

``make bench`` measures one seeded case per architecture, so whether the library's raw float32
error lies above or below the batch-1 loop's there is one draw. This survey draws ``--cases``
independent models (fresh weights and BatchNorm statistics) and image sets per architecture, and
for each reports, for the library and for the loop (the original's method), how many choices
differ from the float64 pass's and the largest |S_pri in float32 − S_pri in float64|::

    python -m benchmarks.flips                                  # the table in docs/benchmarks.md
    python -m benchmarks.flips --cases 4 --models ConvNet32     # a subset

The library's pass folds conv–BatchNorm pairs and runs the points in batches; the loop does
neither, as in the original. So the comparison says whether the engine as a whole flips more often,
or lands further from float64, than the original's method.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ats.runtime.atomic import write_json
from ats.runtime.seeding import derive_seed
from ats.search.privacy import default_chunk_size, privacy_curves
from ats.stats import paired_difference
from benchmarks import reference
from benchmarks.decisions import decision_count, differing_decisions, recorded_decisions
from benchmarks.inputs import SEED, SIZES
from benchmarks.search import SPRI_MODELS, loop_order, spri_case

BINS = SIZES["cpu"].bins
CALIBRATION_IMAGES = SIZES["cpu"].spri_calibration_images


def survey_case(arch: str, images: int, case_index: int, device: torch.device) -> dict[str, Any]:
    """One independent case of ``arch``: choices and float32 errors of the library and of the loop."""
    case = spri_case(arch, images, CALIBRATION_IMAGES, device, variant=f"flips-{case_index}")
    model = case.model
    chunk_size = default_chunk_size(model, case.images.shape[1:])
    with recorded_decisions() as float64_choices:
        exact, _ = privacy_curves(model.double(), case.images.double(), case.labels, case.noise.double(), bins=BINS,
                                  chunk_size=chunk_size)
    model.float()
    with recorded_decisions() as library_choices:
        library, _ = privacy_curves(model, case.images, case.labels, case.noise, bins=BINS, chunk_size=chunk_size)
    with recorded_decisions() as loop_choices:
        loop, _ = reference.privacy_scores(model, case.images, case.labels, case.noise, bins=BINS)
    exact = exact.cpu()
    return {
        "model": arch, "case": case_index, "images": images, "decisions": decision_count(float64_choices),
        "library_flips": differing_decisions(library_choices, float64_choices),
        "loop_flips": differing_decisions(loop_choices, loop_order(float64_choices, images, BINS)),
        "library_error": float((library.double().cpu() - exact).abs().max()),
        "loop_error": float((loop - exact).abs().max()),
    }


def summarise(rows: Sequence[dict[str, Any]], bound: float = 2e-5) -> dict[str, dict[str, Any]]:
    """Per model, and over all cases where there are several models (``"all"``): total flips of
    each side, the largest error, in how many cases it exceeds ``bound``, and the paired comparison
    over the cases (library − loop, with its bootstrap interval) of the flip counts and of log10 of
    the errors (errors span decades, so their ratio is compared).
    """
    models = list(dict.fromkeys(row["model"] for row in rows))
    groups = {arch: [row for row in rows if row["model"] == arch] for arch in models}
    if len(models) > 1:
        groups["all"] = list(rows)
    return {name: _summary_of(group, bound, name) for name, group in groups.items()}


def _summary_of(rows: Sequence[dict[str, Any]], bound: float, name: str) -> dict[str, Any]:
    figures: dict[str, Any] = {"cases": len(rows), "bound": bound}
    for side in ("library", "loop"):
        errors = [row[f"{side}_error"] for row in rows]
        figures |= {f"{side}_flips": sum(row[f"{side}_flips"] for row in rows),
                    f"{side}_largest_error": max(errors),
                    f"{side}_cases_over_bound": sum(error > bound for error in errors)}
    for figure, values in (("flips", lambda side: [row[f"{side}_flips"] for row in rows]),
                           ("log10_error", lambda side: np.log10([row[f"{side}_error"] for row in rows]))):
        difference = paired_difference(values("library"), values("loop"), seed=derive_seed(SEED, "flips", name))
        figures[f"{figure}_difference"] = asdict(difference) | {"excludes_zero": difference.excludes_zero}
    return figures


def _difference(estimate: dict[str, Any], digits: int) -> str:
    verdict = "" if estimate["excludes_zero"] else ", cannot be told from 0"
    return f"{estimate['mean']:+.{digits}f} [{estimate['low']:+.{digits}f}, {estimate['high']:+.{digits}f}]{verdict}"


def format_summary(summary: dict[str, dict[str, Any]]) -> str:
    """The summary as a Markdown table (differences: mean per case [95 % bootstrap interval])."""
    lines = ["| model | cases | flips: library / loop | library − loop, flips per case | largest error: library / "
             "loop | library − loop, log10 error per case | cases over the bound: library / loop |",
             "|---|---|---|---|---|---|---|"]
    for arch, figures in summary.items():
        lines.append(f"| {arch} | {figures['cases']} | {figures['library_flips']} / {figures['loop_flips']} | "
                     f"{_difference(figures['flips_difference'], 1)} | "
                     f"{figures['library_largest_error']:.1e} / {figures['loop_largest_error']:.1e} | "
                     f"{_difference(figures['log10_error_difference'], 2)} | "
                     f"{figures['library_cases_over_bound']} / {figures['loop_cases_over_bound']} "
                     f"(> {figures['bound']:g}) |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flips", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(SPRI_MODELS), default=list(SPRI_MODELS))
    parser.add_argument("--cases", type=int, default=8, help="independent cases per model (default 8)")
    parser.add_argument("--images", type=int, default=2, help="images per case (default 2)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--output", type=Path, help="also write the rows and the summary to this JSON file")
    arguments = parser.parse_args(argv)
    device = torch.device(arguments.device)
    rows = []
    for arch in arguments.models:
        for case_index in range(arguments.cases):
            rows.append(survey_case(arch, arguments.images, case_index, device))
            print(json.dumps(rows[-1]), flush=True)
    record = {"rows": rows, "summary": summarise(rows)}
    print(format_summary(record["summary"]))
    if arguments.output:
        write_json(arguments.output, record)
    return record


if __name__ == "__main__":
    main()

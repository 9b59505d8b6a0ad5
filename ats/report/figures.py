"""The figures of the report: one function per figure, each writing one file atomically.

The captions in ``workflow/report/*.rst`` say what each figure shows; the functions here draw
exactly that. Shared conventions, so that the report reads as one document:

* **Style.** One rc style (:data:`STYLE`) and the Okabe–Ito palette, which stays distinguishable
  under every common colour-vision deficiency. More series than colours also change line style or
  marker, so a 12-defence figure never reuses a look.
* **No pyplot.** Figures are built as :class:`matplotlib.figure.Figure` objects, which need no GUI
  backend and no global figure registry, so the functions work headless (Agg) and leak nothing.
* **Honest edge cases.** Demo runs have 2 images and 3 defences, paper runs 1600 policies and 100
  images, and some runs skip the search. Instead of crashing or silently drawing an empty plot, a
  figure with nothing to show says so in the plot, and a figure that leaves something out (non-
  finite values, unscored policies) says what in a footnote.
* **Atomic, reproducible files.** Output goes through :func:`ats.runtime.atomic.atomic_path`; SVGs
  keep text as text (searchable, and testable) and carry no date, so unchanged data gives
  identical bytes.
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ParamSpec

import matplotlib
import numpy as np
from matplotlib import cycler
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text
from matplotlib.transforms import Bbox, offset_copy

from ats.report.summary import MIN_CORRELATION_POINTS, correlations
from ats.runtime.atomic import atomic_path

P = ParamSpec("P")
PathLike = str | os.PathLike

SERIES_COLOURS: tuple[str, ...] = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442")
"""Okabe–Ito colours for data series, the strongest contrasts first (yellow last: faint on white)."""
REFERENCE_COLOUR = "#000000"
"""Okabe–Ito black, kept for the no-transform reference so it never looks like a candidate."""
MUTED_COLOUR = "#999999"
HIGHLIGHT_COLOUR = "#D55E00"
NOTE_COLOURS = {"facecolor": "#FFF4D6", "edgecolor": "#E69F00"}
LINE_STYLES: tuple[str, ...] = ("-", "--", ":", "-.")
MARKERS: tuple[str, ...] = ("o", "s", "^", "D", "v", "P", "X")

SPRI_SOURCE_STYLES: dict[str, dict[str, str]] = {
    "search": {"marker": "o", "colour": SERIES_COLOURS[0], "label": "policy scored by the search"},
    "none": {"marker": "*", "colour": "#000000", "label": "none (the empty policy)"},
    "sub-policies": {"marker": "D", "colour": "#D55E00", "label": "S_pri: mean of its sub-policies' scores"},
}
"""How the S_pri-PSNR figure draws a point, by where its S_pri comes from (``none``: the empty policy)."""
NO_TRANSFORM_LABEL = "no transform"
"""How the empty policy ``""`` (the no-transform reference) is labelled in every figure."""

MAX_POINTS_FOR_MARKERS = 30
"""Lines with at most this many points get markers, so that one- or two-epoch demo runs stay visible."""
MAX_POINTS_FOR_JITTER = 50
"""Box plots also show every value as a jittered dot up to this many values per box."""
MOSAIC_GAP_PIXELS = 2
"""White pixels between the tiles of a reconstruction-grid row."""
FOOTNOTE_GAP_POINTS = 8.0
"""Room between the figure's lower edge (where the x-axis label ends) and the top of the note text."""
LABEL_RADII_POINTS: tuple[float, ...] = tuple(range(6, 121, 6))
"""Distances from its point at which a point label is tried, nearest first."""
MARKER_CLEARANCE_POINTS = 4.0
"""Half the side of the square around each point that no label may cover."""
LABEL_DIRECTIONS: tuple[tuple[float, float], ...] = (
    (1.0, 1.0), (1.0, -1.0), (-1.0, 1.0), (-1.0, -1.0), (1.0, 0.0), (-1.0, 0.0), (0.0, 1.0), (0.0, -1.0))
"""Directions in which a point label is tried at each distance: the diagonals first, which keep the
label off the point's error bar."""

STYLE: dict[str, Any] = {
    "svg.fonttype": "none",  # text stays <text>: searchable in the report, smaller files
    "svg.hashsalt": "ats-report",  # stable element ids, so identical figures give identical bytes
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "axes.prop_cycle": cycler(color=SERIES_COLOURS),
    "legend.frameon": False,
    "savefig.dpi": 150,
}


# ---------------------------------------------------------------------------------------------
# Shared helpers


def _styled(function: Callable[P, None]) -> Callable[P, None]:
    """Run a figure function under :data:`STYLE`, whose rcParams are read both when artists are
    created and when the file is saved, so the whole function body must be inside the context."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> None:
        with matplotlib.rc_context(STYLE):
            function(*args, **kwargs)

    return wrapper


def _figure(width: float, height: float) -> Figure:
    """A constrained-layout figure on an Agg canvas, whose renderer measures text for label placement."""
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: PathLike) -> None:
    """Write ``figure`` atomically in the format named by the suffix of ``path``.

    The temporary file ends in ``.tmp``, from which matplotlib cannot infer a format, so the format
    is passed explicitly; an unknown suffix fails before anything is written.
    """
    file_format = Path(path).suffix.lstrip(".").lower()
    if file_format not in figure.canvas.get_supported_filetypes():
        raise ValueError(f"{path}: cannot infer a figure format from the suffix {Path(path).suffix!r}")
    metadata = {"Date": None} if file_format == "svg" else None
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format=file_format, metadata=metadata, bbox_inches="tight", pad_inches=0.1)


def _show_empty(ax: Axes, message: str) -> None:
    """Replace the plot area of ``ax`` by ``message``: the figure exists, and says why it is empty."""
    ax.set_axis_off()
    ax.text(0.5, 0.5, textwrap.fill(message, 60), transform=ax.transAxes, ha="center", va="center",
            fontsize=10, bbox={"boxstyle": "round,pad=0.6", **NOTE_COLOURS})


def _add_footnote(figure: Figure, notes: Sequence[str]) -> None:
    """Print ``notes`` in a box below the figure, for what the plot above leaves out or cannot say."""
    if not notes:
        return
    text = "\n".join(textwrap.fill(f"Note: {note}", 110) for note in notes)
    # The box's padding reaches above its text; starting the text FOOTNOTE_GAP_POINTS below the
    # figure's edge keeps the box off the x-axis label, which constrained layout puts at that edge.
    below_edge = offset_copy(figure.transFigure, fig=figure, y=-FOOTNOTE_GAP_POINTS, units="points")
    figure.text(0.0, 0.0, text, ha="left", va="top", fontsize=8, transform=below_edge,
                bbox={"boxstyle": "round,pad=0.4", **NOTE_COLOURS})


def _series_style(index: int) -> dict[str, Any]:
    """Colour and line style of the ``index``-th series; the style changes once colours run out."""
    return {
        "color": SERIES_COLOURS[index % len(SERIES_COLOURS)],
        "linestyle": LINE_STYLES[(index // len(SERIES_COLOURS)) % len(LINE_STYLES)],
    }


def _line_marker(num_points: int) -> str | None:
    return "o" if num_points <= MAX_POINTS_FOR_MARKERS else None


def _scatter_size(num_points: int) -> float:
    """Marker area (pt²) that keeps a handful of points visible and 1600 points from merging."""
    return float(np.clip(2000.0 / max(num_points, 1), 8.0, 45.0))


def _format_number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "n/a"


def _policy_label(policy: str) -> str:
    return policy if policy else NO_TRANSFORM_LABEL


def _as_float(value: Any) -> float:
    """A number from a table cell, which may be a float or, straight from a TSV, text; else NaN."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _as_bool(value: Any) -> bool:
    """A flag from a table cell: a bool, or the text ``True``/``False`` that a TSV round trip gives."""
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _finite_values(values: Any) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def _not_shown_note(what: str, names: Sequence[str]) -> list[str]:
    """A one-item footnote list naming what was left out, or an empty list when nothing was."""
    if not names:
        return []
    listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return [f"not shown ({what}): {listed}."]


def _freeze_layout(figure: Figure) -> None:
    """Run the constrained layout once and keep it, so that what is measured in display space now
    (for :func:`_place_labels`) is where the artists end up in the file."""
    figure.draw_without_rendering()
    figure.set_layout_engine("none")


def _place_labels(ax: Axes, labels: Sequence[tuple[str, float, float]],
                  obstacles: Sequence[tuple[float, float]] = (),
                  clearance_points: float = MARKER_CLEARANCE_POINTS, **text_style: Any) -> None:
    """Write each ``(text, x, y)`` label near its point so that no two labels overlap and no label
    covers a point of ``labels`` or ``obstacles`` (data coordinates), nor the square of half side
    ``clearance_points`` around it (its marker), nor a text already in the axes.

    A deterministic greedy search: each label in turn takes the first free position, nearest
    first (:data:`LABEL_RADII_POINTS`, then :data:`LABEL_DIRECTIONS`), that lies inside the axes;
    if no position inside is free, the nearest free one outside. A label that had to move further
    than the second distance gets a thin leader line to its point. Positions are measured in
    display space, so the figure's layout must be frozen first (:func:`_freeze_layout`).
    """
    figure = ax.get_figure(root=True)
    renderer = figure.canvas.get_renderer()
    pixels_per_point = figure.dpi / 72.0
    clearance, margin = clearance_points * pixels_per_point, 1.5 * pixels_per_point
    anchors = [ax.transData.transform((x, y)) for _, x, y in labels]
    blocked = [Bbox.from_bounds(px - clearance, py - clearance, 2 * clearance, 2 * clearance)
               for px, py in [*anchors, *(ax.transData.transform(point) for point in obstacles)]
               if math.isfinite(px) and math.isfinite(py)]
    blocked += [Text.get_window_extent(text, renderer) for text in ax.texts if text.get_text()]
    axes_box = ax.get_window_extent(renderer)
    placed: list[Bbox] = []
    for (text, x, y), (px, py) in zip(labels, anchors):
        probe = ax.text(0.0, 0.0, text, **text_style)
        size = probe.get_window_extent(renderer)
        probe.remove()
        width, height = size.width + 2 * margin, size.height + 2 * margin

        def box_at(radius: float, dx: float, dy: float) -> Bbox:
            left = px + dx * radius * pixels_per_point - width * (1 - dx) / 2
            bottom = py + dy * radius * pixels_per_point - height * (1 - dy) / 2
            return Bbox.from_bounds(left, bottom, width, height)

        inside, outside = None, None
        for radius in LABEL_RADII_POINTS:
            for dx, dy in LABEL_DIRECTIONS:
                box = box_at(radius, dx, dy)
                if any(box.overlaps(other) for other in (*placed, *blocked)):
                    continue
                candidate = (box, radius, dx, dy)
                if axes_box.containsx(box.x0) and axes_box.containsx(box.x1) and \
                        axes_box.containsy(box.y0) and axes_box.containsy(box.y1):
                    inside = candidate
                    break
                outside = outside or candidate
            if inside:
                break
        farthest = (box_at(LABEL_RADII_POINTS[-1], 1.0, 1.0), LABEL_RADII_POINTS[-1], 1.0, 1.0)
        box, radius, dx, dy = inside or outside or farthest
        placed.append(box)
        leader = ({"arrowstyle": "-", "color": text_style.get("color", MUTED_COLOUR), "linewidth": 0.5,
                   "shrinkA": 0, "shrinkB": clearance / pixels_per_point}
                  if radius > LABEL_RADII_POINTS[1] else None)
        ax.annotate(text, (x, y), xytext=(dx * radius, dy * radius), textcoords="offset points",
                    ha={1.0: "left", 0.0: "center", -1.0: "right"}[dx],
                    va={1.0: "bottom", 0.0: "center", -1.0: "top"}[dy],
                    arrowprops=leader, in_layout=False, **text_style)


# ---------------------------------------------------------------------------------------------
# Search


@_styled
def plot_spri_vs_sacc(
    path: PathLike,
    ranking_rows: Sequence[Mapping[str, Any]],
    chosen: Sequence[str],
    hybrid: str | None,
    threshold: float,
    uncertainty: Sequence[str] = (),
) -> None:
    """Scatter of every scored candidate: S_pri (x) against S_acc (y), with the S_acc threshold.

    ``ranking_rows`` are rows of ``ranking.tsv`` (keys ``policy``, ``s_pri_mean``, ``s_acc_mean``,
    ``passed_threshold``, ``status``, ``rank``, and the interval ``s_pri_ci_low``/``s_pri_ci_high``
    where known; values may still be text). Candidates that failed the threshold are grey, so the
    eye goes to the eligible ones; each point's horizontal bar is its S_pri interval, so two policies
    whose bars overlap are not told apart by the search; ``chosen`` policies are ringed and labelled
    with their rank, the ``hybrid`` gets a diamond, and the empty policy a black star as the
    no-transform reference. Rows with status ``nonfinite`` or non-finite scores cannot be placed and
    are counted in a footnote, as are chosen policies that were never scored. ``uncertainty`` are
    sentences about how certain the ranking is (:func:`ats.search.selection.describe_uncertainty`),
    printed under the plot.
    """
    figure = _figure(7.5, 5.0)
    ax = figure.add_subplot()
    by_policy = {str(row["policy"]): row for row in ranking_rows}
    s_pri = {policy: _as_float(row["s_pri_mean"]) for policy, row in by_policy.items()}
    s_acc = {policy: _as_float(row["s_acc_mean"]) for policy, row in by_policy.items()}
    s_pri_bounds = {policy: (_as_float(row.get("s_pri_ci_low")), _as_float(row.get("s_pri_ci_high")))
                    for policy, row in by_policy.items()}
    placeable = [
        policy for policy, row in by_policy.items()
        if str(row.get("status", "")) != "nonfinite" and math.isfinite(s_pri[policy]) and math.isfinite(s_acc[policy])
    ]
    ax.set_title(f"Candidate policies: privacy against trainability ({len(placeable)} of {len(by_policy)} placed)")
    if not placeable:
        _show_empty(ax, "No candidate policy has finite S_pri and S_acc scores."
                    if by_policy else "No candidate policies were scored.")
        _save(figure, path)
        return

    size = _scatter_size(len(placeable))
    candidates = [policy for policy in placeable if policy != ""]  # the reference gets its own marker
    passed = [policy for policy in candidates if _as_bool(by_policy[policy]["passed_threshold"])]
    failed = sorted(set(candidates) - set(passed), key=candidates.index)
    reference = [""] if "" in placeable else []
    for group, colour in ((failed, MUTED_COLOUR), (passed, SERIES_COLOURS[0]), (reference, REFERENCE_COLOUR)):
        with_interval = [p for p in group if all(map(math.isfinite, s_pri_bounds[p]))]
        if with_interval:
            ax.errorbar([s_pri[p] for p in with_interval], [s_acc[p] for p in with_interval], fmt="none",
                        xerr=[[s_pri[p] - s_pri_bounds[p][0] for p in with_interval],
                              [s_pri_bounds[p][1] - s_pri[p] for p in with_interval]],
                        ecolor=colour, elinewidth=0.8, alpha=0.5, zorder=1)
    for group, colour, label in ((failed, MUTED_COLOUR, "below the S_acc threshold"),
                                 (passed, SERIES_COLOURS[0], "passed the S_acc threshold")):
        if group:
            ax.scatter([s_pri[p] for p in group], [s_acc[p] for p in group], s=size, color=colour,
                       alpha=0.7, linewidths=0, label=f"{label} ({len(group)})")
    threshold = _as_float(threshold)
    if math.isfinite(threshold):
        ax.axhline(threshold, color=REFERENCE_COLOUR, linestyle="--", linewidth=1,
                   label=f"S_acc threshold ({threshold:g})")
    if "" in placeable:
        ax.scatter([s_pri[""]], [s_acc[""]], s=size * 3 + 60, marker="*", color=REFERENCE_COLOUR,
                   zorder=4, label=NO_TRANSFORM_LABEL)

    picked = [policy for policy in dict.fromkeys(chosen) if policy != hybrid]
    shown_picks = [policy for policy in picked if policy in placeable]
    if shown_picks:
        ax.scatter([s_pri[p] for p in shown_picks], [s_acc[p] for p in shown_picks], s=size * 3 + 60,
                   facecolors="none", edgecolors=HIGHLIGHT_COLOUR, linewidths=1.5, zorder=5, label="chosen")
    shown_hybrid = [hybrid] if hybrid and hybrid in placeable else []
    if shown_hybrid:
        ax.scatter([s_pri[hybrid]], [s_acc[hybrid]], s=size * 3 + 60, marker="D", color=HIGHLIGHT_COLOUR,
                   zorder=5, label="hybrid of the chosen")
    labels = []
    for policy in shown_picks + shown_hybrid:
        rank = by_policy[policy].get("rank", "")
        text = f"#{rank} {_policy_label(policy)}" if str(rank).strip() else _policy_label(policy)
        labels.append((text, s_pri[policy], s_acc[policy]))

    ax.set_xlabel("S_pri, mean over evaluation images with its interval (lower is more private)")
    ax.set_ylabel("S_acc, mean over windows (higher predicts better accuracy)")
    figure.legend(loc="outside right upper")
    notes = []
    if not picked and not hybrid:
        notes.append("no policy was chosen by the selection, so none is highlighted.")
    notes += _not_shown_note("chosen but never scored in the search",
                             [_policy_label(p) for p in picked + ([hybrid] if hybrid else []) if p not in by_policy])
    unplaceable = len(by_policy) - len(placeable)
    if unplaceable:
        notes.append(f"{unplaceable} candidate(s) with non-finite scores (status 'nonfinite') are not shown.")
    _add_footnote(figure, [*uncertainty, *notes])
    _freeze_layout(figure)
    ring_radius = math.sqrt(size * 3 + 60) / 2 + 1.0  # the rings' marker area is (diameter in points)²
    _place_labels(ax, labels, obstacles=[(s_pri[""], s_acc[""])] if reference else [],
                  clearance_points=ring_radius, fontsize=8, color=HIGHLIGHT_COLOUR)
    _save(figure, path)


@_styled
def plot_gradsim_curves(path: PathLike, curves: Mapping[str, np.ndarray]) -> None:
    """Mean ± std (over images) gradient similarity along the path from noise (t=0) to the image (t=1).

    ``curves[label]`` is an ``N_images × (bins+1)`` array sampled at evenly spaced t; a label equal
    to :data:`NO_TRANSFORM_LABEL` is drawn as the black dashed reference. The legend gives the area
    under each mean curve (trapezoid rule), which is what S_pri measures, and the images averaged.
    """
    figure = _figure(7.5, 4.5)
    ax = figure.add_subplot()
    ax.set_title("Gradient similarity along the straight path from noise to the image")
    notes: list[str] = []
    drawn = 0
    for label, similarities in curves.items():
        similarities = np.atleast_2d(np.asarray(similarities, dtype=np.float64))
        images = similarities[np.isfinite(similarities).any(axis=1)]
        if not images.size:
            notes.append(f"'{label}' has no finite similarities and is not shown.")
            continue
        t = np.linspace(0.0, 1.0, images.shape[1])
        with np.errstate(invalid="ignore"):
            mean = np.nanmean(images, axis=0)
            spread = np.nanstd(images, axis=0)
        area = float(np.sum((mean[1:] + mean[:-1]) / 2 * np.diff(t)))
        style = ({"color": REFERENCE_COLOUR, "linestyle": "--"} if label == NO_TRANSFORM_LABEL
                 else _series_style(drawn))
        drawn += label != NO_TRANSFORM_LABEL
        ax.plot(t, mean, marker=_line_marker(t.size), markersize=3, linewidth=1.5, **style,
                label=f"{label} (area {_format_number(area, 3)}, {len(images)} image{'s' * (len(images) != 1)})")
        ax.fill_between(t, mean - spread, mean + spread, color=style["color"], alpha=0.15, linewidth=0)
    if not ax.lines:
        _show_empty(ax, "No gradient-similarity curves to show." if not notes else
                    "No curve has finite gradient similarities.")
    else:
        ax.set_xlim(0.0, 1.0)
        ax.set_xlabel("t along the path (0 = random noise, 1 = the image)")
        ax.set_ylabel("gradient similarity (mean per-layer cosine)")
        figure.legend(loc="outside right upper", title="mean ± std over images")
    _add_footnote(figure, notes)
    _save(figure, path)


@_styled
def plot_per_op_spri(
    path: PathLike,
    per_op: Mapping[int, float],
    op_names: Mapping[int, str],
    *,
    reference: float | None = None,
) -> None:
    """Horizontal bars of the mean S_pri of every single op, lowest (most private) at the top.

    Bars rather than columns, so that 50 op names stay readable. Each bar carries its value, since
    functional duplicates (the nine equalize entries) differ only in the third decimal. An op with
    a non-finite score is listed last with ``n/a``. ``reference``, the no-transform S_pri, is drawn
    as a vertical line: ops left of it make the attacker's guidance weaker than no transform does.
    """
    scores = {int(op): _as_float(value) for op, value in per_op.items()}
    finite_first = {op: (0, score) if math.isfinite(score) else (1, 0.0) for op, score in scores.items()}
    ordered = sorted(scores, key=lambda op: (*finite_first[op], op))
    figure = _figure(6.5, max(2.5, 0.8 + 0.2 * len(ordered)))
    ax = figure.add_subplot()
    ax.set_title("Mean S_pri of each single op, most private first")
    if not ordered:
        _show_empty(ax, "No single-op scores to show.")
        _save(figure, path)
        return
    values = [scores[op] for op in ordered]
    bars = ax.barh(np.arange(len(ordered)), np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0),
                   color=SERIES_COLOURS[0], height=0.7)
    ax.bar_label(bars, labels=[_format_number(value, 3) for value in values], padding=2, fontsize=7)
    ax.set_yticks(np.arange(len(ordered)), [f"{op}: {op_names.get(op, f'op {op}')}" for op in ordered])
    ax.invert_yaxis()
    ax.grid(axis="y", visible=False)
    if reference is not None and math.isfinite(reference):
        ax.axvline(reference, color=REFERENCE_COLOUR, linestyle="--", linewidth=1,
                   label=f"{NO_TRANSFORM_LABEL} ({reference:.3f})")
        ax.legend(loc="lower right")
    ax.set_xlabel("mean S_pri over evaluation images (lower is more private)")
    ax.margins(x=0.12)
    _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Training


@_styled
def plot_training_curves(path: PathLike, histories: Mapping[str, Mapping[str, np.ndarray]]) -> None:
    """Training loss (left) and test accuracy in percent (right) per epoch, one series per defence.

    ``histories[defence]`` holds the columns of ``history.tsv``; ``test_*`` are NaN on epochs
    without an evaluation, so only finite points are drawn, joined into a line. The legend gives
    each defence's last measured test accuracy. The loss axis turns logarithmic when the loss
    spans more than a decade, as in long runs, where a linear axis flattens the informative tail.
    """
    figure = _figure(10.0, 4.0)
    if not histories:
        _show_empty(figure.add_subplot(), "No training histories to show.")
        _save(figure, path)
        return
    loss_ax, accuracy_ax = figure.subplots(1, 2)
    notes = []
    all_losses = []
    for index, (defence, history) in enumerate(histories.items()):
        style = _series_style(index)
        epochs = np.asarray(history["epoch"], dtype=np.float64)
        loss = np.asarray(history["train_loss"], dtype=np.float64)
        accuracy = 100.0 * np.asarray(history["test_accuracy"], dtype=np.float64)
        has_loss = np.isfinite(epochs) & np.isfinite(loss)
        has_accuracy = np.isfinite(epochs) & np.isfinite(accuracy)
        final = accuracy[has_accuracy][-1] if has_accuracy.any() else math.nan
        label = f"{defence} (test {_format_number(final, 1)} %)"
        loss_ax.plot(epochs[has_loss], loss[has_loss], marker=_line_marker(int(has_loss.sum())), markersize=3,
                     label=label, **style)
        accuracy_ax.plot(epochs[has_accuracy], accuracy[has_accuracy], marker="o", markersize=3, **style)
        all_losses.append(loss[has_loss])
        if not has_accuracy.any():
            notes.append(f"'{defence}' has no test evaluation yet.")
    losses = np.concatenate(all_losses)
    if losses.size and losses.min() > 0 and losses.max() > 10 * losses.min():
        loss_ax.set_yscale("log")
    loss_ax.set(title="Training loss", xlabel="epoch", ylabel="training loss (0.5 × cross-entropy)")
    accuracy_ax.set(title="Test accuracy", xlabel="epoch", ylabel="test accuracy (%)")
    figure.suptitle("Training of every defence: check convergence before trusting the attacks")
    figure.legend(loc="outside right upper", title="defence")
    _add_footnote(figure, notes)
    _save(figure, path)


# ---------------------------------------------------------------------------------------------
# Attacks


@_styled
def plot_reconstruction_grid(
    path: PathLike,
    blocks: Sequence[tuple[str, np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """A grid of image pairs: per block (defence and attack), the shared images above their
    reconstructions, with each reconstruction's PSNR below it.

    ``blocks`` are ``(label, truth, reconstruction, psnr)`` with images ``N×C×H×W`` in [0, 1]
    (C = 1 is drawn in grey) and ``psnr`` of length N. Blocks may hold different numbers of images.
    A reconstruction with non-finite pixels (a diverged attack) is drawn as a labelled grey tile.

    This figure is a PNG: hundreds of tiny raster images make SVGs large and slow to render. Each
    row is one mosaic image in one axes, placed in inches: 12 blocks of 8 images take 24 axes
    instead of 192, far fewer for matplotlib to lay out and draw, and the tiles stay square and
    evenly spaced.
    """
    for label, truth, reconstruction, psnr in blocks:
        if np.shape(truth) != np.shape(reconstruction) or np.ndim(truth) != 4 or np.shape(truth)[1] not in (1, 3):
            raise ValueError(f"block {label!r}: truth {np.shape(truth)} and reconstruction "
                             f"{np.shape(reconstruction)} must be equal N×C×H×W arrays with C = 1 or 3")
        if np.size(psnr) != np.shape(truth)[0]:
            raise ValueError(f"block {label!r}: {np.size(psnr)} PSNR values for {np.shape(truth)[0]} images")
    title = "Shared images (top of each block) and the attacker's reconstructions (bottom), with PSNR"
    if not blocks:
        figure = _figure(6.0, 2.0)
        figure.suptitle(title)
        _show_empty(figure.add_subplot(), "No attacked images to show.")
        _save(figure, path)
        return

    tile, psnr_room, block_gap = 0.9, 0.22, 0.3  # inches
    columns = max(max(len(truth) for _, truth, _, _ in blocks), 1)
    tile_pixels = max(np.shape(truth)[3] for _, truth, _, _ in blocks)
    row_gap = tile * MOSAIC_GAP_PIXELS / tile_pixels  # the gap between two tiles of a row, in inches
    width = columns * tile + (columns - 1) * row_gap
    title = textwrap.fill(title, max(40, int(12 * (width + 1.5))))  # the row labels widen the figure
    title_room = 0.2 + 0.2 * (title.count("\n") + 1)
    block_height = 2 * tile + row_gap + psnr_room
    height = title_room + len(blocks) * block_height + (len(blocks) - 1) * block_gap
    figure = Figure(figsize=(width, height))
    figure.suptitle(title, y=1.0 - 0.1 / height, va="top", fontsize=10)

    for block, (label, truth, reconstruction, psnr) in enumerate(blocks):
        truth_bottom = height - title_room - block * (block_height + block_gap) - tile
        truth_ax = figure.add_axes((0.0, truth_bottom / height, 1.0, tile / height))
        reconstruction_ax = figure.add_axes((0.0, (truth_bottom - row_gap - tile) / height, 1.0, tile / height))
        if len(truth) == 0:
            truth_ax.set_axis_off()
            reconstruction_ax.set_axis_off()
            truth_ax.text(0.0, 0.5, f"{label}: no attacked images", va="center", fontsize=8,
                          transform=truth_ax.transAxes)
            continue
        _show_mosaic(truth_ax, np.asarray(truth), columns)
        tile_centres = _show_mosaic(reconstruction_ax, np.asarray(reconstruction), columns)
        for centre, value in zip(tile_centres, np.asarray(psnr, dtype=np.float64).ravel()):
            reconstruction_ax.text(centre, -0.03, f"{value:.1f} dB" if math.isfinite(value) else "PSNR n/a",
                                   transform=reconstruction_ax.get_xaxis_transform(), ha="center", va="top",
                                   fontsize=8)
        truth_ax.set_ylabel(f"{label}\nshared", rotation=0, ha="right", va="center", fontsize=8)
        reconstruction_ax.set_ylabel("reconstruction", rotation=0, ha="right", va="center", fontsize=8)
    _save(figure, path)


def _show_mosaic(ax: Axes, images: np.ndarray, columns: int) -> list[float]:
    """Draw ``N×C×H×W`` images in [0, 1] side by side, padded with white to ``columns`` tiles.

    A tile with non-finite pixels (a diverged attack) becomes grey and says "diverged". Returns
    the x (data coordinates) of each tile's centre, for the labels under it.
    """
    count, channels, tile_height, tile_width = images.shape
    stride = tile_width + MOSAIC_GAP_PIXELS
    mosaic = np.ones((tile_height, columns * stride - MOSAIC_GAP_PIXELS, 3))
    centres = []
    for index in range(count):
        pixels = np.asarray(images[index], dtype=np.float64).transpose(1, 2, 0)
        left = index * stride
        centres.append(left + (tile_width - 1) / 2)
        if np.isfinite(pixels).all():
            mosaic[:, left:left + tile_width] = np.clip(pixels, 0.0, 1.0)  # one channel broadcasts to grey
        else:
            mosaic[:, left:left + tile_width] = 0.5
            ax.text(centres[-1], (tile_height - 1) / 2, "diverged", ha="center", va="center", fontsize=7)
    ax.imshow(mosaic, interpolation="nearest", aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return centres


@_styled
def plot_psnr_distributions(path: PathLike, psnr: Mapping[str, np.ndarray],
                            chance: Mapping[str, float] | None = None) -> None:
    """One horizontal box of per-image PSNR per label (defence, stage and attack), in the given order.

    Boxes show median and quartiles; with few images (≤ :data:`MAX_POINTS_FOR_JITTER`) every image
    is also a dot, jittered vertically with a fixed seed, since a box of three values hides more
    than it shows. Non-finite values (diverged attacks) are dropped and counted in the tick label.
    ``chance[label]``, the best uninformed guess's mean PSNR on the same targets, is drawn as a
    vertical bar across the label's box: a box around its bar is an attack that learnt nothing.
    """
    labels = list(psnr)
    figure = _figure(7.5, max(2.5, 1.0 + 0.35 * len(labels)))
    ax = figure.add_subplot()
    ax.set_title("Per-image PSNR of the reconstructions (lower is more private)")
    if not labels:
        _show_empty(ax, "No attack results to show.")
        _save(figure, path)
        return
    values = [_finite_values(psnr[label]) for label in labels]
    with_values = [index for index, finite in enumerate(values) if finite.size]
    few = all(values[index].size <= MAX_POINTS_FOR_JITTER for index in with_values)
    if with_values:
        ax.boxplot([values[index] for index in with_values], positions=with_values, orientation="horizontal",
                   widths=0.6, showfliers=not few, patch_artist=True,
                   boxprops={"facecolor": "#DCEAF5", "edgecolor": SERIES_COLOURS[0]},
                   medianprops={"color": HIGHLIGHT_COLOUR, "linewidth": 1.5},
                   whiskerprops={"color": SERIES_COLOURS[0]}, capprops={"color": SERIES_COLOURS[0]},
                   flierprops={"markersize": 3, "markeredgecolor": SERIES_COLOURS[0]})
    if few:
        jitter = np.random.default_rng(0)
        for index in with_values:
            ax.scatter(values[index], index + jitter.uniform(-0.18, 0.18, values[index].size), s=10,
                       color=REFERENCE_COLOUR, alpha=0.6, linewidths=0, zorder=3)
    chance_drawn = False
    for index, label in enumerate(labels):
        level = _as_float((chance or {}).get(label, math.nan))
        if math.isfinite(level):
            ax.plot([level, level], [index - 0.4, index + 0.4], color=REFERENCE_COLOUR, linewidth=2, zorder=4,
                    label=None if chance_drawn else "chance level (best uninformed guess)")
            chance_drawn = True
    if chance_drawn:
        ax.legend(loc="best")
    for index, finite in enumerate(values):
        if not finite.size:
            ax.text(0.5, index, "no finite PSNR (every attack diverged)", transform=ax.get_yaxis_transform(),
                    ha="center", va="center", fontsize=8, bbox={"boxstyle": "round", **NOTE_COLOURS})
    ax.set_yticks(range(len(labels)), [_count_label(label, np.size(psnr[label]), values[i].size)
                                       for i, label in enumerate(labels)])
    ax.set_ylim(len(labels) - 0.5, -0.5)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel("PSNR of the reconstruction (dB)")
    _save(figure, path)


def _count_label(label: str, total: int, finite: int) -> str:
    dropped = f", {total - finite} non-finite" if total > finite else ""
    return f"{label} (n = {finite}{dropped})"


# ---------------------------------------------------------------------------------------------
# Summary


@_styled
def plot_privacy_utility(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """One point per defence (and attack): test accuracy in percent (x) against mean PSNR (y).

    ``rows`` are summary rows (:func:`ats.report.summary.summary_rows` or ``read_summary``); each
    training stage gets its own panel, in the order the rows give. Error bars are the bootstrap 95 %
    interval of the mean PSNR; a short black dash at the same accuracy marks the chance level of
    that defence's targets, so a point on its dash is an attack that learnt nothing. With several
    attacks, colour and marker tell them apart; with one, the title names it. Rows without a finite
    accuracy or PSNR (untrained model, every attack diverged) are footnoted.
    """
    stages = list(dict.fromkeys(str(row.get("stage", "final")) for row in rows)) or ["final"]
    figure = _figure(4.2 * len(stages) + 1.5, 5.0)
    axes = figure.subplots(1, len(stages), squeeze=False, sharey=True)[0]
    attacks = list(dict.fromkeys(str(row["attack"]) for row in rows))
    figure.suptitle("Privacy against utility" + (f" (attack: {attacks[0]})" if len(attacks) == 1 else ""))
    placeable = [row for row in rows if _has_position(row)]
    if not placeable:
        _show_empty(axes[0], "No defence has both a finite test accuracy and a finite attack PSNR."
                    if rows else "No summary rows to show.")
        _save(figure, path)
        return
    for ax, stage in zip(axes, stages):
        ax.set_title(f"attacked at stage: {stage}")
        in_stage = [row for row in placeable if str(row.get("stage", "final")) == stage]
        for index, attack in enumerate(attacks):
            points = [row for row in in_stage if row["attack"] == attack]
            if not points:
                continue
            x = np.array([100.0 * _as_float(row["accuracy"]) for row in points])
            y = np.array([_as_float(row["psnr_mean"]) for row in points])
            ax.errorbar(x, y, yerr=_interval_bars(points, "psnr_mean", "psnr"), fmt=MARKERS[index % len(MARKERS)],
                        color=_series_style(index)["color"], markersize=6, capsize=3, elinewidth=1,
                        label=attack if stage == stages[0] else None)
            chance = np.array([_as_float(row.get("psnr_chance", math.nan)) for row in points])
            if np.isfinite(chance).any():
                ax.scatter(x, chance, marker="_", s=200, color=REFERENCE_COLOUR, linewidths=2, zorder=4,
                           label="chance level" if stage == stages[0] and index == 0 else None)
        ax.set_xlabel("test accuracy of the trained model (%)")
        ax.margins(0.15)
    axes[0].set_ylabel("mean PSNR of the attack (dB; lower is more private)")
    axes[-1].text(0.99, 0.01, "better: accurate and hard to invert ↘", transform=axes[-1].transAxes, ha="right",
                  va="bottom", fontsize=8, color="#555555", style="italic")
    figure.legend(loc="outside right upper")
    _add_footnote(figure, _not_shown_note(
        "no finite accuracy or PSNR",
        [f"{row['defence']} / {row['attack']}" for row in rows if not _has_position(row)]))
    _freeze_layout(figure)
    for ax, stage in zip(axes, stages):
        _label_defences(ax, [row for row in placeable if str(row.get("stage", "final")) == stage])
    _save(figure, path)


def _interval_bars(rows: Sequence[Mapping[str, Any]], column: str, interval: str) -> np.ndarray:
    """The ``(2, N)`` distances from each row's ``column`` down and up to its ``{interval}_ci_low``
    and ``{interval}_ci_high`` (0 where there is no interval)."""
    mean = np.array([_as_float(row[column]) for row in rows])
    low = np.array([_as_float(row.get(f"{interval}_ci_low", math.nan)) for row in rows])
    high = np.array([_as_float(row.get(f"{interval}_ci_high", math.nan)) for row in rows])
    return np.nan_to_num(np.vstack([mean - low, high - mean]), nan=0.0).clip(min=0.0)


def _label_defences(ax: Axes, rows: Sequence[Mapping[str, Any]]) -> None:
    """Label each defence once, at its highest point, clear of every other label and point."""
    points = [(100.0 * _as_float(row["accuracy"]), _as_float(row["psnr_mean"])) for row in rows]
    highest: dict[str, tuple[float, float]] = {}
    for row, point in zip(rows, points):
        if str(row["defence"]) not in highest or point[1] > highest[str(row["defence"])][1]:
            highest[str(row["defence"])] = point
    _place_labels(ax, [(defence, x, y) for defence, (x, y) in highest.items()], obstacles=points, fontsize=8,
                  bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.7})


@_styled
def plot_leak_across_training(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """PSNR (top) and its gain over chance (bottom) against the attacked model's training step.

    One line per defence (and attack: line style), through its stages in training order, with the
    bootstrap 95 % intervals as bars. The top panel also draws each defence's chance level as a
    thin dotted line of its colour; the bottom panel's zero line is chance itself, so a bar that
    crosses it is a stage where the attack cannot be told from an uninformed guess. The x axis is
    symmetric-logarithmic, so that the untrained model (step 0) and the first steps stay apart
    from the end of training.
    """
    figure = _figure(8.0, 7.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    figure.suptitle("Does the attack leak, and when in training? (bars: 95 % bootstrap intervals)")
    usable = [row for row in rows if math.isfinite(_as_float(row["psnr_mean"]))
              and _as_float(row.get("training_step", -1)) >= 0]
    if not usable:
        _show_empty(top, "No attack has a finite PSNR at a known training step.")
        bottom.set_axis_off()
        _save(figure, path)
        return
    attacks = list(dict.fromkeys(str(row["attack"]) for row in usable))
    defences = list(dict.fromkeys(str(row["defence"]) for row in usable))
    for index, defence in enumerate(defences):
        colour = REFERENCE_COLOUR if defence == "none" else SERIES_COLOURS[index % len(SERIES_COLOURS)]
        for attack_index, attack in enumerate(attacks):
            points = sorted((row for row in usable if row["defence"] == defence and row["attack"] == attack),
                            key=lambda row: _as_float(row["training_step"]))
            if not points:
                continue
            steps = np.array([_as_float(row["training_step"]) for row in points])
            style = {"color": colour, "linestyle": LINE_STYLES[attack_index % len(LINE_STYLES)],
                     "marker": MARKERS[index % len(MARKERS)], "markersize": 5, "capsize": 3, "elinewidth": 1}
            label = defence if len(attacks) == 1 else f"{defence} / {attack}"
            top.errorbar(steps, [_as_float(row["psnr_mean"]) for row in points],
                         yerr=_interval_bars(points, "psnr_mean", "psnr"), label=label, **style)
            top.plot(steps, [_as_float(row.get("psnr_chance", math.nan)) for row in points], color=colour,
                     linestyle=":", linewidth=1)
            bottom.errorbar(steps, [_as_float(row["psnr_gain"]) for row in points],
                            yerr=_interval_bars(points, "psnr_gain", "psnr_gain"), **style)
    bottom.axhline(0.0, color=MUTED_COLOUR, linewidth=1, linestyle="--")
    bottom.text(0.01, 0.02, "0 dB: chance (the best uninformed guess)", transform=bottom.transAxes, fontsize=8,
                color="#555555", style="italic")
    top.set_ylabel("mean PSNR (dB); dotted: chance level")
    bottom.set_ylabel("PSNR gain over chance (dB)")
    bottom.set_xlabel("optimizer steps of training when attacked (0: untrained)")
    bottom.set_xscale("symlog", linthresh=1.0)
    figure.legend(loc="outside right upper", title="defence")
    _save(figure, path)


def _has_position(row: Mapping[str, Any]) -> bool:
    """Whether a summary row can be placed on the privacy-utility plane."""
    return math.isfinite(_as_float(row["accuracy"])) and math.isfinite(_as_float(row["psnr_mean"]))


@_styled
def plot_spri_vs_psnr(path: PathLike, points: Sequence[Mapping[str, Any]], note: str | None = None) -> None:
    """Does S_pri predict privacy? S_pri from the search (x) against the mean attack PSNR (y).

    ``points`` are the entries of :func:`ats.report.loaders.spri_psnr_points`: one per policy
    defence, ``none`` and ``crop`` and per attack and stage. Each attack and stage gets its own
    panel (rows: stages, columns: attacks), whose title gives Pearson r, Spearman ρ and the number
    of points n, NaN shown as ``n/a``, so a small or degenerate run is visibly inconclusive instead
    of looking like evidence; a least-squares line is drawn only when r is defined. Policies scored
    by the search are blue circles, ``none`` (the empty policy) a black star, and policies whose
    S_pri is the mean of their sub-policies' scores (the hybrid) vermilion diamonds; all carry the
    PSNR's 95 % interval. ``crop`` has no S_pri, so its PSNR is a dashed horizontal line, and the
    mean chance level of the panel's defences a dotted one: points near it are attacks that failed,
    whose PSNR says nothing about S_pri. ``note`` (for example "the search was skipped") is shown
    in the plot when nothing can be drawn, else as a footnote.
    """
    stages = list(dict.fromkeys(str(point["stage"]) for point in points)) or ["final"]
    attacks = list(dict.fromkeys(str(point["attack"]) for point in points)) or [""]
    figure = _figure(max(4.4 * len(attacks), 7.0), 3.6 * len(stages) + 1.4)
    axes = figure.subplots(len(stages), len(attacks), squeeze=False)
    plotted = [point for point in points
               if math.isfinite(_as_float(point["s_pri"])) and math.isfinite(_as_float(point["psnr_mean"]))]
    plotted_ids = {id(point) for point in plotted}
    if not plotted:
        _show_empty(axes[0][0], note or "No trained policy has both an S_pri from the search and a finite attack PSNR.")
        for ax in axes.ravel()[1:]:
            ax.set_axis_off()
        _save(figure, path)
        return
    notes = [note] if note else []
    if any(point["s_pri_from"] == "sub-policies" for point in plotted):
        notes.append("diamonds are policies the search did not score (such as the hybrid); their S_pri is the "
                     "mean of their sub-policies' scores, since each image gets one sub-policy, drawn uniformly.")
    labels: dict[int, list[tuple[str, float, float]]] = {}
    for ax, (stage, attack) in zip(axes.ravel(), [(stage, attack) for stage in stages for attack in attacks]):
        panel = [point for point in points if point["stage"] == stage and point["attack"] == attack]
        shown = [point for point in panel if id(point) in plotted_ids]
        s_pri = np.array([_as_float(point["s_pri"]) for point in shown])
        psnr = np.array([_as_float(point["psnr_mean"]) for point in shown])
        statistics = correlations(s_pri, psnr)
        ax.set_title(f"Does S_pri predict {attack} at stage {stage}?\n"
                     f"Pearson r = {_format_number(statistics['pearson'], 2)}, "
                     f"Spearman ρ = {_format_number(statistics['spearman'], 2)} (n = {statistics['n']})")
        if not shown:
            _show_empty(ax, "No policy has both an S_pri and a finite PSNR here.")
            continue
        for kind, style in SPRI_SOURCE_STYLES.items():
            group = [point for point in shown
                     if ("none" if point["defence"] == "none" else point["s_pri_from"]) == kind]
            if group:
                ax.errorbar([_as_float(point["s_pri"]) for point in group],
                            [_as_float(point["psnr_mean"]) for point in group],
                            yerr=_interval_bars(group, "psnr_mean", "psnr"), fmt=style["marker"],
                            color=style["colour"], markersize=6, capsize=3, elinewidth=1, zorder=3,
                            label=style["label"] if ax is axes.ravel()[0] else None)
        for point in panel:
            if point["defence"] == "crop" and math.isfinite(_as_float(point["psnr_mean"])):
                ax.axhline(_as_float(point["psnr_mean"]), color=SERIES_COLOURS[2], linestyle="--", linewidth=1.2,
                           label="crop (no S_pri: drawn at its PSNR)"
                           if ax is axes.ravel()[0] else None)
        chance = _finite_values([point["psnr_chance"] for point in shown])
        if chance.size:
            ax.axhline(float(chance.mean()), color=REFERENCE_COLOUR, linestyle=":", linewidth=1.2,
                       label="chance level (mean over the panel's policies)" if ax is axes.ravel()[0] else None)
        if math.isfinite(statistics["pearson"]):
            slope, intercept = np.polyfit(s_pri, psnr, 1)
            line_x = np.array([s_pri.min(), s_pri.max()])
            ax.plot(line_x, slope * line_x + intercept, color=MUTED_COLOUR, linestyle="--", linewidth=1,
                    label="least-squares line" if ax is axes.ravel()[0] else None)
        elif statistics["n"] < MIN_CORRELATION_POINTS:
            notes.append(f"{attack} at stage {stage}: at least {MIN_CORRELATION_POINTS} points are needed for a "
                         f"correlation; there are {statistics['n']}.")
        else:
            notes.append(f"{attack} at stage {stage}: the correlation is undefined because all S_pri or all PSNR "
                         "values are equal.")
        labels[id(ax)] = [("none (no transform)" if point["defence"] == "none" else str(point["defence"]),
                           _as_float(point["s_pri"]), _as_float(point["psnr_mean"])) for point in shown]
        ax.set_xlabel("S_pri from the search (lower is more private)")
        ax.set_ylabel("mean PSNR of the attack (dB)")
        ax.margins(0.15)
    notes += _not_shown_note("no S_pri or no finite PSNR", list(dict.fromkeys(
        str(point["defence"]) for point in points if id(point) not in plotted_ids and point["defence"] != "crop")))
    if any(ax.get_legend_handles_labels()[0] for ax in axes.ravel()):
        figure.legend(loc="outside upper center", ncols=3)
    _add_footnote(figure, notes)
    _freeze_layout(figure)
    for ax in axes.ravel():
        _place_labels(ax, labels.get(id(ax), []), fontsize=8)
    _save(figure, path)


@_styled
def plot_against_original(path: PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """PSNR against the untransformed image, per defence (x) and attack (marker), one panel per stage.

    The client's secret is the untransformed image; each attack's reconstruction is scored against
    it at the best alignment (``psnr_original``), with bootstrap 95 % intervals, and the black dash
    is the chance level of the same scoring. An attacker who knows the policy (``inversed-aware``)
    beside the oblivious one shows whether a policy's protection survives that knowledge.
    """
    usable = [row for row in rows if math.isfinite(_as_float(row.get("psnr_original", math.nan)))]
    stages = list(dict.fromkeys(str(row["stage"]) for row in usable)) or ["final"]
    defences = list(dict.fromkeys(str(row["defence"]) for row in usable))
    attacks = list(dict.fromkeys(str(row["attack"]) for row in usable))
    figure = _figure(max(6.0, 1.0 + 0.9 * len(defences)) + 1.5, 3.2 * len(stages) + 0.8)
    axes = figure.subplots(len(stages), 1, squeeze=False, sharex=True)[:, 0]
    figure.suptitle("PSNR against the untransformed image, at the best alignment")
    if not usable:
        _show_empty(axes[0], "No attack was scored against the untransformed images.")
        _save(figure, path)
        return
    width = 0.7 / max(len(attacks), 1)
    for ax, stage in zip(axes, stages):
        ax.set_title(f"attacked at stage: {stage}")
        for index, attack in enumerate(attacks):
            points = [row for row in usable if row["stage"] == stage and row["attack"] == attack]
            x = np.array([defences.index(str(row["defence"])) for row in points], dtype=np.float64)
            x += (index - (len(attacks) - 1) / 2) * width
            ax.errorbar(x, [_as_float(row["psnr_original"]) for row in points],
                        yerr=_interval_bars(points, "psnr_original", "psnr_original"),
                        fmt=MARKERS[index % len(MARKERS)], color=_series_style(index)["color"], capsize=3,
                        markersize=6, label=attack if stage == stages[0] else None)
            ax.scatter(x, [_as_float(row["psnr_original_chance"]) for row in points], marker="_", s=150,
                       color=REFERENCE_COLOUR, linewidths=2, zorder=4,
                       label="chance level" if stage == stages[0] and index == 0 else None)
        ax.set_ylabel("PSNR (dB)")
    axes[-1].set_xticks(range(len(defences)), [_policy_label(name) for name in defences], rotation=30, ha="right")
    figure.legend(loc="outside right upper", title="attack")
    _save(figure, path)

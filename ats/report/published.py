"""Published figures beside a run's own: the data of ``published_results.yaml`` and the comparison table.

A run of one of the paper's four settings (``config/paper/``) can only be judged next to what the
paper and its two replications reported for the same setting. Those figures ship in this package as
data with their sources (``published_results.yaml``, read through :mod:`importlib.resources`), so a
report never depends on a file outside the project. Loading validates every entry and names the bad
one: a misspelt defence or attack would otherwise leave a published row silently unmatched.

The comparison is a pure function over the run's summary rows, so tests can build any case from
literals. The published numbers come from other attack budgets, image sets and training lengths:
the table is for comparing orderings and gains over chance, not absolute dB.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import Any

import yaml

from ats.attack.configs import ATTACKS
from ats.case.architectures import parse_arch
from ats.case.normalisation import DATASETS
from ats.defence.names import DefenceError, parse_defence
from ats.runtime.atomic import write_tsv

DATA_FILE = "published_results.yaml"
STATISTICS: tuple[str, ...] = ("pearson", "spearman")
"""The S_pri–PSNR correlation coefficients a run computes (:func:`ats.report.summary.correlations`)."""

FINAL_STAGE = "final"
"""Published models were attacked after training, so only the run's final-stage rows compare."""

PSNR_DIGITS = 2
CORRELATION_DIGITS = 3
"""The run's numbers are rounded like the published ones (two decimals of dB or percent)."""

COMPARISON_COLUMNS: tuple[str, ...] = (
    "quantity",
    "defence",
    "attack",
    "source",
    "published_as",
    "published",
    "published_std",
    "published_n",
    "published_accuracy_pct",
    "run",
    "run_ci_low",
    "run_ci_high",
    "run_chance",
    "run_gain",
    "run_accuracy_pct",
    "run_n",
    "note",
)
"""The columns of ``published_comparison.tsv``; ``docs/report.md`` explains each one."""


class PublishedDataError(ValueError):
    """An entry of the published-results data that does not follow its format; names the entry."""


@dataclass(frozen=True)
class Source:
    """A publication the figures come from."""

    key: str
    name: str
    citation: str
    setup: str


@dataclass(frozen=True)
class PublishedPsnr:
    """One published PSNR (dB) of an attack on a defence, with the model's accuracy where given."""

    source: str
    quoted_by: str | None
    label: str
    defence: str
    attack: str
    psnr_mean: float
    psnr_std: float | None
    accuracy_percent: float | None
    images: int | None
    note: str


@dataclass(frozen=True)
class PublishedCorrelation:
    """One published correlation between S_pri and the attack's PSNR."""

    source: str
    quoted_by: str | None
    statistic: str
    value: float
    images: int | None
    note: str


@dataclass(frozen=True)
class PublishedSetting:
    """The published figures of one data set and architecture."""

    name: str
    dataset: str
    arch: str
    psnr: tuple[PublishedPsnr, ...]
    correlation: tuple[PublishedCorrelation, ...]


@dataclass(frozen=True)
class PublishedResults:
    sources: Mapping[str, Source]
    settings: Mapping[str, PublishedSetting]


# ---------------------------------------------------------------------------------------------
# Loading and validation


@lru_cache(maxsize=1)
def load_published() -> PublishedResults:
    """The validated figures shipped with the package."""
    text = resources.files("ats.report").joinpath(DATA_FILE).read_text(encoding="utf-8")
    return parse_published(yaml.safe_load(text))


def published_settings() -> tuple[str, ...]:
    """The names ``report.published_setting`` may take (besides null)."""
    return tuple(load_published().settings)


def parse_published(data: Any) -> PublishedResults:
    """Validate the parsed YAML document; raise :class:`PublishedDataError` naming the bad entry."""
    top = _fields(data, DATA_FILE, required=("sources", "settings"))
    sources_data = _mapping(top["sources"], f"{DATA_FILE}: sources")
    sources = {}
    for key, entry in sources_data.items():
        where = f"{DATA_FILE}: sources.{key}"
        fields = _fields(entry, where, required=("name", "citation", "setup"))
        sources[key] = Source(key, *(_text(fields[name], where, name) for name in ("name", "citation", "setup")))
    settings_data = _mapping(top["settings"], f"{DATA_FILE}: settings")
    settings = {name: _parse_setting(name, entry, sources) for name, entry in settings_data.items()}
    return PublishedResults(sources=sources, settings=settings)


def _parse_setting(name: str, data: Any, sources: Mapping[str, Source]) -> PublishedSetting:
    where = f"{DATA_FILE}: settings.{name}"
    fields = _fields(data, where, required=("dataset", "arch", "psnr", "correlation"))
    dataset = _text(fields["dataset"], where, "dataset")
    if dataset not in DATASETS:
        raise PublishedDataError(f"{where}: unknown dataset {dataset!r}; known: {', '.join(DATASETS)}")
    arch = _text(fields["arch"], where, "arch")
    try:
        parse_arch(arch)
    except ValueError as error:
        raise PublishedDataError(f"{where}: arch {arch!r}: {error}") from None
    psnr = tuple(
        _parse_psnr(entry, f"{where}.psnr[{index}]", sources)
        for index, entry in enumerate(_list(fields["psnr"], where, "psnr"))
    )
    correlation = tuple(
        _parse_correlation(entry, f"{where}.correlation[{index}]", sources)
        for index, entry in enumerate(_list(fields["correlation"], where, "correlation"))
    )
    _reject_duplicates(((e.source, defence_key(e.defence), e.attack) for e in psnr), f"{where}.psnr")
    _reject_duplicates(((e.source, e.statistic) for e in correlation), f"{where}.correlation")
    return PublishedSetting(name, dataset, arch, psnr, correlation)


def _parse_psnr(data: Any, where: str, sources: Mapping[str, Source]) -> PublishedPsnr:
    fields = _fields(
        data, where,
        required=("source", "label", "defence", "attack", "psnr_mean"),
        optional=("quoted_by", "psnr_std", "accuracy_percent", "images", "note"),
    )
    where = f"{where} ({fields.get('source')}, {fields.get('defence')}, {fields.get('attack')})"
    source, quoted_by = _source_keys(fields, where, sources)
    defence = _text(fields["defence"], where, "defence")
    try:
        parse_defence(defence)
    except DefenceError as error:
        raise PublishedDataError(f"{where}: {error}") from None
    attack = _text(fields["attack"], where, "attack")
    if attack not in ATTACKS:
        raise PublishedDataError(f"{where}: unknown attack {attack!r}; known: {', '.join(ATTACKS)}")
    return PublishedPsnr(
        source=source,
        quoted_by=quoted_by,
        label=_text(fields["label"], where, "label"),
        defence=defence,
        attack=attack,
        psnr_mean=_number(fields["psnr_mean"], where, "psnr_mean", low=0.0),
        psnr_std=_optional(fields, "psnr_std", lambda value: _number(value, where, "psnr_std", low=0.0)),
        accuracy_percent=_optional(
            fields, "accuracy_percent", lambda value: _number(value, where, "accuracy_percent", 0.0, 100.0)
        ),
        images=_optional(fields, "images", lambda value: _count(value, where, "images")),
        note=_optional(fields, "note", lambda value: _text(value, where, "note")) or "",
    )


def _parse_correlation(data: Any, where: str, sources: Mapping[str, Source]) -> PublishedCorrelation:
    fields = _fields(
        data, where, required=("source", "statistic", "value"), optional=("quoted_by", "images", "note")
    )
    where = f"{where} ({fields.get('source')}, {fields.get('statistic')})"
    source, quoted_by = _source_keys(fields, where, sources)
    statistic = _text(fields["statistic"], where, "statistic")
    if statistic not in STATISTICS:
        raise PublishedDataError(f"{where}: statistic must be one of {', '.join(STATISTICS)}, got {statistic!r}")
    return PublishedCorrelation(
        source=source,
        quoted_by=quoted_by,
        statistic=statistic,
        value=_number(fields["value"], where, "value", -1.0, 1.0),
        images=_optional(fields, "images", lambda value: _count(value, where, "images")),
        note=_optional(fields, "note", lambda value: _text(value, where, "note")) or "",
    )


def _source_keys(fields: Mapping[str, Any], where: str, sources: Mapping[str, Source]) -> tuple[str, str | None]:
    keys = []
    for name in ("source", "quoted_by"):
        if name not in fields:
            keys.append(None)
            continue
        key = _text(fields[name], where, name)
        if key not in sources:
            raise PublishedDataError(f"{where}: {name} {key!r} is not among the sources ({', '.join(sources)})")
        keys.append(key)
    source, quoted_by = keys
    if quoted_by == source:
        raise PublishedDataError(f"{where}: a source cannot be quoted by itself ({source!r})")
    return source, quoted_by


def _mapping(data: Any, where: str) -> dict:
    if not isinstance(data, Mapping):
        raise PublishedDataError(f"{where}: expected a mapping, got {type(data).__name__}")
    return dict(data)


def _fields(data: Any, where: str, required: Sequence[str], optional: Sequence[str] = ()) -> dict:
    """``data`` as a dict with every ``required`` key and no keys besides these and ``optional``."""
    fields = _mapping(data, where)
    missing = [key for key in required if key not in fields]
    if missing:
        raise PublishedDataError(f"{where}: missing {', '.join(missing)}")
    unknown = sorted(str(key) for key in fields if key not in required and key not in optional)
    if unknown:
        raise PublishedDataError(f"{where}: unknown keys {', '.join(unknown)}")
    return fields


def _list(value: Any, where: str, key: str) -> list:
    if not isinstance(value, list):
        raise PublishedDataError(f"{where}: {key} must be a list, got {type(value).__name__}")
    return value


def _text(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise PublishedDataError(f"{where}: {key} must be non-empty text, got {value!r}")
    return value


def _number(value: Any, where: str, key: str, low: float = -math.inf, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise PublishedDataError(f"{where}: {key} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise PublishedDataError(f"{where}: {key} must lie in [{low}, {high}], got {value!r}")
    return float(value)


def _count(value: Any, where: str, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PublishedDataError(f"{where}: {key} must be a positive integer, got {value!r}")
    return value


def _optional(fields: Mapping[str, Any], key: str, convert: Any) -> Any:
    return convert(fields[key]) if key in fields else None


def _reject_duplicates(keys: Iterable[tuple], where: str) -> None:
    seen = set()
    for key in keys:
        if key in seen:
            raise PublishedDataError(f"{where}: {key} appears twice")
        seen.add(key)


def defence_key(name: str) -> str:
    """What makes two defence names the same defence.

    A hybrid draws one of its sub-policies per image, so ``a+b`` and ``b+a`` are one defence, and
    the replications write hybrids in either order; ``gauss-1e-3`` and ``gauss-0.001`` are one noise.
    """
    spec = parse_defence(name)
    if spec.kind == "policy":
        return "+".join(sorted(name.split("+")))
    if spec.strength is not None:
        return f"{spec.kind}-{spec.strength!r}"
    return name


# ---------------------------------------------------------------------------------------------
# The comparison table


def comparison_rows(
    summary: Sequence[Mapping[str, Any]],
    setting: str | None,
    correlation: Mapping[str, float] | None = None,
    *,
    correlation_attack: str | None = None,
    dataset: str | None = None,
    arch: str | None = None,
    published: PublishedResults | None = None,
) -> list[dict[str, Any]]:
    """The rows of ``published_comparison.tsv`` (keys :data:`COMPARISON_COLUMNS`, ``None`` = empty).

    ``summary`` holds the run's summary rows (``defence``, ``attack``, ``accuracy`` as a fraction,
    ``psnr_mean`` and, where the run has them, ``stage``, ``psnr_ci_low``, ``psnr_ci_high``,
    ``psnr_chance``, ``psnr_gain``, ``n_images``); only final-stage rows are used (a row without
    ``stage`` counts as final). ``correlation`` is the run's S_pri–PSNR correlation
    (``pearson``, ``spearman``, ``n``; None when the run has no S_pri) on ``correlation_attack``.
    ``dataset`` and ``arch``, when given, are checked against the setting's.

    One ``psnr`` row per published figure, in the run's order of attacks and defences, with the
    run's numbers for the same defence and attack (empty where the run did not train it), then one
    row for each of the run's defences without a published figure; then the correlations (one row
    per published value, and the run's own where nothing was published); then one ``source`` row
    per cited publication. ``setting=None`` gives a single ``note`` row saying there is nothing to
    compare with.
    """
    if setting is None:
        return [_note_row("no published setting: report.published_setting is null, so there are no "
                          "published figures to compare this run with")]
    results = published or load_published()
    if setting not in results.settings:
        raise ValueError(f"unknown published setting {setting!r}; known: {', '.join(results.settings)}")
    spec = results.settings[setting]
    rows = []
    if (dataset is not None and dataset != spec.dataset) or (arch is not None and arch != spec.arch):
        rows.append(_note_row(f"this run trains {arch} on {dataset}; the published figures are for "
                              f"{spec.arch} on {spec.dataset}"))
    cited: dict[str, None] = {}
    for entry, defence, run in _matched_psnr(summary, spec):
        if entry is not None:
            cited.update(dict.fromkeys(key for key in (entry.source, entry.quoted_by) if key))
        rows.append(_psnr_row(entry, defence, run, results.sources))
    for statistic in STATISTICS:
        entries = [entry for entry in spec.correlation if entry.statistic == statistic]
        if not entries and correlation is None:
            continue
        for entry in entries or [None]:
            if entry is not None:
                cited.update(dict.fromkeys(key for key in (entry.source, entry.quoted_by) if key))
            rows.append(_correlation_row(statistic, entry, correlation, correlation_attack, results.sources))
    for key in cited:
        source = results.sources[key]
        rows.append(_row(quantity="source", source=source.name, note=f"{source.citation}; {source.setup}"))
    return rows


def _matched_psnr(
    summary: Sequence[Mapping[str, Any]], spec: PublishedSetting
) -> list[tuple[PublishedPsnr | None, str, Mapping[str, Any] | None]]:
    """``(published entry or None, defence name shown, run row or None)`` in reading order.

    Attacks and defences come in the run's order, then those only the publications have; a
    defence is shown by the run's name when the run trained it.
    """
    final = [row for row in summary if row.get("stage", FINAL_STAGE) == FINAL_STAGE]
    runs = {(defence_key(row["defence"]), row["attack"]): row for row in final}
    published: dict[tuple[str, str], list[PublishedPsnr]] = {}
    for entry in spec.psnr:
        published.setdefault((defence_key(entry.defence), entry.attack), []).append(entry)
    attacks = list(dict.fromkeys([row["attack"] for row in final] + [entry.attack for entry in spec.psnr]))
    defences: dict[str, str] = {}
    for name in [row["defence"] for row in final] + [entry.defence for entry in spec.psnr]:
        defences.setdefault(defence_key(name), name)
    matched = []
    for attack in attacks:
        for key, name in defences.items():
            run = runs.get((key, attack))
            entries = published.get((key, attack), [])
            if run is not None or entries:
                matched += [(entry, name, run) for entry in entries or [None]]
    return matched


def _psnr_row(
    entry: PublishedPsnr | None, defence: str, run: Mapping[str, Any] | None, sources: Mapping[str, Source]
) -> dict[str, Any]:
    notes = []
    if entry is not None:
        if entry.defence != defence:
            notes.append(f"published as {entry.defence}")
        if entry.note:
            notes.append(entry.note)
    if run is None:
        notes.append("not trained or attacked in this run")
    elif entry is None:
        notes.append("no published figure")
    row = _row(
        quantity="psnr",
        defence=defence,
        attack=(entry.attack if entry is not None else run["attack"]),  # type: ignore[index]
        note="; ".join(notes),
    )
    if entry is not None:
        row.update(
            source=_source_name(entry.source, entry.quoted_by, sources),
            published_as=entry.label,
            published=entry.psnr_mean,
            published_std=entry.psnr_std,
            published_n=entry.images,
            published_accuracy_pct=entry.accuracy_percent,
        )
    if run is not None:
        mean, chance = _rounded(run.get("psnr_mean")), _rounded(run.get("psnr_chance"))
        gain = run.get("psnr_gain")
        if gain is None and mean is not None and chance is not None:
            gain = float(run["psnr_mean"]) - float(run["psnr_chance"])
        accuracy = run.get("accuracy")
        row.update(
            run=mean,
            run_ci_low=_rounded(run.get("psnr_ci_low")),
            run_ci_high=_rounded(run.get("psnr_ci_high")),
            run_chance=chance,
            run_gain=_rounded(gain),
            run_accuracy_pct=None if accuracy is None else _rounded(100.0 * float(accuracy)),
            run_n=run.get("n_images"),
        )
    return row


def _correlation_row(
    statistic: str,
    entry: PublishedCorrelation | None,
    correlation: Mapping[str, float] | None,
    attack: str | None,
    sources: Mapping[str, Source],
) -> dict[str, Any]:
    notes = [entry.note] if entry is not None and entry.note else []
    if correlation is None:
        notes.append("this run has no S_pri (the search was skipped)")
    elif entry is None:
        notes.append("no published figure")
    row = _row(quantity=f"spri_psnr_{statistic}", attack=attack, note="; ".join(notes))
    if entry is not None:
        row.update(
            source=_source_name(entry.source, entry.quoted_by, sources),
            published=entry.value,
            published_n=entry.images,
        )
    if correlation is not None:
        row.update(
            run=_rounded(correlation.get(statistic), CORRELATION_DIGITS),
            run_n=correlation.get("n"),
        )
    return row


def _source_name(source: str, quoted_by: str | None, sources: Mapping[str, Source]) -> str:
    name = sources[source].name
    return name if quoted_by is None else f"{name}, as quoted by {sources[quoted_by].name}"


def _rounded(value: Any, digits: int = PSNR_DIGITS) -> float | None:
    """``value`` as a float rounded for reading; None (an empty cell) when the run lacks it, NaN kept."""
    if value is None or value == "":
        return None
    value = float(value)
    return round(value, digits) if math.isfinite(value) else value


def _row(**cells: Any) -> dict[str, Any]:
    row = dict.fromkeys(COMPARISON_COLUMNS)
    row.update(cells)
    return row


def _note_row(note: str) -> dict[str, Any]:
    return _row(quantity="note", note=note)


def write_published_comparison(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]]) -> None:
    """Write the comparison atomically as TSV; empty cells for what a row does not have."""
    write_tsv(
        path,
        COMPARISON_COLUMNS,
        [["" if row[column] is None else row[column] for column in COMPARISON_COLUMNS] for row in rows],
    )

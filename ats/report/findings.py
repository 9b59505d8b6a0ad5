"""The report's verdicts in words: which defences can be told from chance, and which attacks failed.

A table of PSNRs invites reading every lower number as more privacy. The sentences written here
read the summary the way a careful reviewer would:

* an attack that does not beat chance on the undefended model (``none``) at some stage failed
  there, so the defences' numbers at that stage say nothing about protection;
* where the undefended model leaks, each defence either still leaks (its gain over chance has an
  interval above 0) or cannot be told from chance, and its paired difference from ``none`` on the
  same targets says how much of the leak it removed, with its interval;
* where an attacker who knows the policy (``inversed-aware``) ran beside an oblivious one, whether
  each defence's protection of the untransformed image survives that knowledge.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

from ats.attack.configs import POLICY_AWARE_ATTACKS
from ats.report.summary import ABOVE_CHANCE, BELOW_CHANCE, REFERENCE_DEFENCE
from ats.runtime.atomic import atomic_path


def _interval(low: Any, high: Any, digits: int = 2) -> str:
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        return "[no interval]"
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def psnr_phrase(row: Mapping[str, Any]) -> str:
    """One summary row's PSNR and SSIM, each beside its interval and chance level (also printed by ``ats attack``)."""
    return (f"PSNR {float(row['psnr_mean']):.2f} dB {_interval(row['psnr_ci_low'], row['psnr_ci_high'])}, "
            f"{float(row['psnr_gain']):+.2f} dB {_interval(row['psnr_gain_ci_low'], row['psnr_gain_ci_high'])} "
            f"over chance ({float(row['psnr_chance']):.2f} dB, {row['chance_guess'] or 'no guess'}), "
            f"SSIM {float(row['ssim_mean']):.3f} (chance {float(row['ssim_chance']):.3f})"
            + (f", LPIPS {float(row['lpips_mean']):.3f} {_interval(row['lpips_ci_low'], row['lpips_ci_high'], 3)}"
               if math.isfinite(float(row.get("lpips_mean", math.nan))) else ""))


def _defence_sentence(row: Mapping[str, Any]) -> str:
    difference = (f"; {float(row['psnr_diff_none']):+.2f} dB "
                  f"{_interval(row['psnr_diff_none_ci_low'], row['psnr_diff_none_ci_high'])} against "
                  f"{REFERENCE_DEFENCE} on the same targets" if math.isfinite(float(row["psnr_diff_none"])) else "")
    if row["vs_chance"] == ABOVE_CHANCE:
        verdict = "still leaks"
    elif row["vs_chance"] == BELOW_CHANCE:
        verdict = "scores below chance: the attack learnt nothing useful against it"
    else:
        verdict = "cannot be told from chance"
    return f"{row['defence']} {verdict}: {psnr_phrase(row)}{difference}."


def findings(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Per attack and stage (in the rows' order): a heading and its sentences."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((str(row["attack"]), str(row["stage"])), []).append(row)
    sections = []
    for (attack, stage), group in groups.items():
        heading = f"Attack {attack} on the models at training stage '{stage}'"
        reference = next((row for row in group if row["defence"] == REFERENCE_DEFENCE), None)
        others = [row for row in group if row is not reference]
        sentences = []
        if reference is None:
            sentences.append(f"No {REFERENCE_DEFENCE} model was attacked, so nothing says whether this attack "
                             "works without a defence; read the rows below against their chance levels only.")
        elif reference["vs_chance"] != ABOVE_CHANCE:
            sentences.append(
                f"The attack failed: even without a defence its reconstructions cannot be told from an "
                f"uninformed guess ({REFERENCE_DEFENCE}: {psnr_phrase(reference)}). At this stage the "
                f"defences' numbers measure the attack's failure and the targets' pixel statistics, not "
                f"protection.")
        else:
            sentences.append(f"Without a defence the model leaks: {psnr_phrase(reference)}.")
        sentences += [_defence_sentence(row) for row in others]
        sections.append((heading, sentences))
    sections += _policy_knowledge_sections(rows)
    return sections


def original_phrase(row: Mapping[str, Any]) -> str:
    """One summary row's PSNR against the untransformed image, with its interval and gain over chance."""
    return (f"{row['attack']} {float(row['psnr_original']):.2f} dB "
            f"{_interval(row['psnr_original_ci_low'], row['psnr_original_ci_high'])}, "
            f"{float(row['psnr_original_gain']):+.2f} dB "
            f"{_interval(row['psnr_original_gain_ci_low'], row['psnr_original_gain_ci_high'])} over chance")


def _policy_knowledge_sections(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, list[str]]]:
    """Per stage: does each defence's protection survive an attacker who knows its policy?

    Compares, against the untransformed image, the best attacker that knows the policy with the
    best one that does not (by the gain's lower bound), for every defence that has both.
    """
    sections = []
    for stage in dict.fromkeys(str(row["stage"]) for row in rows):
        scored = [row for row in rows if row["stage"] == stage and math.isfinite(float(row["psnr_original"]))]
        sentences = []
        for defence in dict.fromkeys(str(row["defence"]) for row in scored):
            own = [row for row in scored if row["defence"] == defence]
            aware = [row for row in own if row["attack"] in POLICY_AWARE_ATTACKS]
            oblivious = [row for row in own if row["attack"] not in POLICY_AWARE_ATTACKS]
            if not aware or not oblivious:
                continue
            best_aware = max(aware, key=lambda row: float(row["psnr_original_gain_ci_low"]))
            best_oblivious = max(oblivious, key=lambda row: float(row["psnr_original_gain_ci_low"]))
            if best_aware["vs_chance_original"] == ABOVE_CHANCE:
                verdict = ("leaks to an attacker who knows it" if best_oblivious["vs_chance_original"] == ABOVE_CHANCE
                           else "protects only against an attacker who does not know it")
            else:
                verdict = ("protects even against an attacker who knows it"
                           if best_oblivious["vs_chance_original"] != ABOVE_CHANCE
                           else "leaks to the oblivious attacker, and knowing the policy does not help")
            sentences.append(f"{defence} {verdict}: against the untransformed image, "
                             f"{original_phrase(best_aware)}; {original_phrase(best_oblivious)}.")
        if sentences:
            sections.append((f"Against an attacker who knows the policy, training stage '{stage}'", sentences))
    return sections


def lpips_missing(rows: Sequence[Mapping[str, Any]]) -> bool:
    """Whether the summary has no LPIPS value at all (its weights were absent when it was made)."""
    return bool(rows) and not any(math.isfinite(float(row.get("lpips_mean", math.nan))) for row in rows)


def write_findings_html(path: str | os.PathLike, rows: Sequence[Mapping[str, Any]],
                        lpips_note: str | None = None) -> None:
    """Write :func:`findings` as a small self-contained HTML page (atomically).

    ``lpips_note`` says why the summary has no LPIPS; it is printed when :func:`lpips_missing`.
    """
    parts = ["<!DOCTYPE html>", "<html><head><meta charset='utf-8'><title>Findings</title>",
             "<style>body{font-family:sans-serif;max-width:60em;margin:1em auto;line-height:1.4}"
             "h2{font-size:1.1em;margin-top:1.5em}</style></head><body>",
             "<h1>What the attacks show</h1>",
             "<p>Intervals are bootstrap 95 % intervals over the attacked images. <em>Chance</em> is the best "
             "of four uninformed guesses of the same targets (all black, mid-grey, the training split's mean "
             "image, the attack's own starting image). A defence whose gain over chance has an interval "
             "containing 0 cannot be told from chance.</p>"]
    if lpips_missing(rows):
        parts.append(f"<p><strong>LPIPS was skipped:</strong> "
                     f"{html.escape(lpips_note or 'no LPIPS weights when the summary was made', quote=False)}. "
                     "PSNR and SSIM are reported as usual.</p>")
    for heading, sentences in findings(rows):
        parts.append(f"<h2>{html.escape(heading, quote=False)}</h2><ul>")
        parts += [f"<li>{html.escape(sentence, quote=False)}</li>" for sentence in sentences]
        parts.append("</ul>")
    if not rows:
        parts.append("<p>No attack results.</p>")
    parts.append("</body></html>")
    with atomic_path(path) as tmp:
        tmp.write_text("\n".join(parts) + "\n", encoding="utf-8")

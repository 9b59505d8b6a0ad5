"""Snakemake adapter: one summary row per defence, training stage and attack."""

import logging
from itertools import product

from ats.attack.lpips import LpipsScorer, lpips_unavailable_reason
from ats.report.loaders import load_accuracy, load_attack_metrics
from ats.report.summary import summary_rows, write_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

params = snakemake.params
skipped = lpips_unavailable_reason(params.lpips_backbone)
if skipped:
    logging.getLogger("summarize").warning("LPIPS skipped: %s", skipped)
lpips = None if skipped else LpipsScorer(params.lpips_backbone)
# The attack files and their fingerprints come in the order of product(defences, stages, attacks).
records = [
    {**load_attack_metrics(path, expected_fingerprint=expected, lpips=lpips),
     "defence": defence, "stage": stage, "attack": attack}
    for (defence, stage, attack), path, expected in zip(
        product(params.defences, params.stages, params.attacks), snakemake.input.attacks,
        params.attack_fingerprints, strict=True,
    )
]
accuracy = {
    defence: load_accuracy(path, expected_fingerprint=expected)
    for defence, path, expected in zip(params.defences, snakemake.input.metrics, params.train_fingerprints, strict=True)
}
write_summary(snakemake.output[0], summary_rows(records, accuracy, seed=params.seed),
              fingerprint=params.fingerprint)

"""Snakemake adapter: per-image PSNR distributions, one box per defence, stage and attack, with chance."""

from itertools import product

from ats.report.figures import plot_psnr_distributions
from ats.report.loaders import load_attack_metrics
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

params = snakemake.params


def label(defence, stage, attack):
    return f"{defence} @ {stage}" + (f" / {attack}" if len(params.attacks) > 1 else "")


# The attack files and their fingerprints come in the order of product(defences, stages, attacks).
psnr = {
    label(*key): load_attack_metrics(path, expected_fingerprint=expected)["psnr"]
    for key, path, expected in zip(product(params.defences, params.stages, params.attacks), snakemake.input.attacks,
                                   params.attack_fingerprints, strict=True)
}
chance = {label(row["defence"], row["stage"], row["attack"]): row["psnr_chance"]
          for row in read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)}
plot_psnr_distributions(snakemake.output[0], psnr, chance)

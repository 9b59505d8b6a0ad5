"""Snakemake adapter: PSNR against the untransformed image, per defence, attacker and stage."""

from ats.report.figures import plot_against_original
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)
plot_against_original(snakemake.output[0], summary)

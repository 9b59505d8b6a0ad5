"""Snakemake adapter: test accuracy against attack PSNR, one point per defence."""

from ats.report.figures import plot_privacy_utility
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)
plot_privacy_utility(snakemake.output[0], summary)

"""Snakemake adapter: PSNR and gain over chance against training progress, per defence."""

from ats.report.figures import plot_leak_across_training
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)
plot_leak_across_training(snakemake.output[0], summary)

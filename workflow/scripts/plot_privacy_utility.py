"""Snakemake adapter: test accuracy against attack PSNR, one point per defence."""

from ats.report.figures import plot_privacy_utility
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

plot_privacy_utility(snakemake.output[0], read_summary(snakemake.input.summary))

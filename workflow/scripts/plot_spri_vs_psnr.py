"""Snakemake adapter: does the privacy score predict the attack's PSNR, per attack and training stage?"""

from ats.report.figures import plot_spri_vs_psnr
from ats.report.loaders import spri_psnr_points
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)
if snakemake.input.ranking:
    points = spri_psnr_points(summary, snakemake.input.ranking,
                              ranking_fingerprint=snakemake.params.selection_fingerprint)
    note = None
else:
    points, note = [], "The search was skipped (pinned policies), so there are no S_pri values."
plot_spri_vs_psnr(snakemake.output[0], points, note=note)

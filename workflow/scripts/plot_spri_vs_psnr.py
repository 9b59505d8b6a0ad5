"""Snakemake adapter: does the privacy score predict the attack's PSNR?"""

import math

from ats.report.figures import plot_spri_vs_psnr
from ats.report.loaders import spri_psnr_points
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary)
if snakemake.input.ranking:
    points, note = spri_psnr_points(summary, snakemake.input.ranking), None
else:
    points, note = [], "The search was skipped (pinned policies), so there are no S_pri values."
plotted = {defence for defence, _, _ in points}
attack = summary[0]["attack"] if summary else None
levels = [row["psnr_chance"] for row in summary
          if row["defence"] in plotted and row["attack"] == attack and row["stage"] == "final"
          and math.isfinite(row["psnr_chance"])]
plot_spri_vs_psnr(snakemake.output[0], points, note=note, chance=sum(levels) / len(levels) if levels else None)

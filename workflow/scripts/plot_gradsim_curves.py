"""Snakemake adapter: gradient similarity along the noise-to-image path (the paper's Fig. 1)."""

import json

from ats.report.figures import NO_TRANSFORM_LABEL, plot_gradsim_curves
from ats.report.loaders import load_curves
from ats.runtime.logs import configure

configure(snakemake.log[0])

with open(snakemake.input.selection) as handle:
    chosen = json.load(handle)["top_k"]
curves = load_curves(list(snakemake.input.shards), ["", *chosen])
plot_gradsim_curves(
    snakemake.output[0],
    {(policy or NO_TRANSFORM_LABEL): curve for policy, curve in curves.items()},
)

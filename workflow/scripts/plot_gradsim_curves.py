"""Snakemake adapter: gradient similarity along the noise-to-image path (the paper's Fig. 1)."""

from ats.report.figures import NO_TRANSFORM_LABEL, plot_gradsim_curves
from ats.report.loaders import load_curves
from ats.runtime.logs import configure
from ats.runtime.provenance import read_verified_json

configure(snakemake.log[0])

params = snakemake.params
chosen = read_verified_json(snakemake.input.selection, expected_fingerprint=params.selection_fingerprint)["top_k"]
curves = load_curves(list(snakemake.input.shards), params.shard_fingerprints, ["", *chosen])
plot_gradsim_curves(
    snakemake.output[0],
    {(policy or NO_TRANSFORM_LABEL): curve for policy, curve in curves.items()},
)

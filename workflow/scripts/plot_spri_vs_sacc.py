"""Snakemake adapter: S_pri (with intervals) against S_acc for every candidate, chosen policies highlighted."""

import json

from ats.report.figures import plot_spri_vs_sacc
from ats.runtime.atomic import read_tsv
from ats.runtime.logs import configure
from ats.search.selection import describe_uncertainty

configure(snakemake.log[0])

with open(snakemake.input.selection) as handle:
    selection = json.load(handle)
plot_spri_vs_sacc(
    snakemake.output[0],
    read_tsv(snakemake.input.ranking),
    chosen=selection["top_k"],
    hybrid=selection.get("hybrid"),
    threshold=selection["accuracy_threshold"],
    uncertainty=describe_uncertainty(selection),
)

"""Snakemake adapter: S_pri (with intervals) against S_acc for every candidate, chosen policies highlighted."""

from ats.report.figures import plot_spri_vs_sacc
from ats.runtime.logs import configure
from ats.runtime.provenance import read_verified_json, read_verified_tsv
from ats.search.selection import describe_uncertainty

configure(snakemake.log[0])

expected = snakemake.params.selection_fingerprint
selection = read_verified_json(snakemake.input.selection, expected_fingerprint=expected)
plot_spri_vs_sacc(
    snakemake.output[0],
    read_verified_tsv(snakemake.input.ranking, expected_fingerprint=expected),
    chosen=selection["top_k"],
    hybrid=selection.get("hybrid"),
    threshold=selection["accuracy_threshold"],
    uncertainty=describe_uncertainty(selection),
)

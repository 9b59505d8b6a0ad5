"""Snakemake adapter: mean S_pri of each single op (the paper's per-op chart)."""

from ats.policies import describe_policy
from ats.report.figures import plot_per_op_spri
from ats.runtime.logs import configure
from ats.runtime.provenance import read_verified_tsv

configure(snakemake.log[0])

ranking = read_verified_tsv(snakemake.input.ranking, expected_fingerprint=snakemake.params.selection_fingerprint)
s_pri = {row["policy"]: float(row["s_pri_mean"]) for row in ranking}
plot_per_op_spri(
    snakemake.output[0],
    {op: s_pri[str(op)] for op in range(50) if str(op) in s_pri},
    {op: describe_policy(str(op)) for op in range(50)},
    reference=s_pri.get(""),
)

"""Snakemake adapter: mean S_pri of each single op (the paper's per-op chart)."""

from ats.policies import describe_policy
from ats.report.figures import plot_per_op_spri
from ats.runtime.atomic import read_tsv
from ats.runtime.logs import configure

configure(snakemake.log[0])

s_pri = {row["policy"]: float(row["s_pri_mean"]) for row in read_tsv(snakemake.input.ranking)}
plot_per_op_spri(
    snakemake.output[0],
    {op: s_pri[str(op)] for op in range(50) if str(op) in s_pri},
    {op: describe_policy(str(op)) for op in range(50)},
    reference=s_pri.get(""),
)

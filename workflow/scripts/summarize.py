"""Snakemake adapter: one summary row per defence and attack."""

from ats.report.loaders import load_accuracy, load_attack_metrics
from ats.report.summary import summary_rows, write_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

defences, attacks = snakemake.params.defences, snakemake.params.attacks
rows = summary_rows(
    defences,
    attacks,
    accuracy={d: load_accuracy(f"results/train/{d}/metrics.json") for d in defences},
    per_image={
        (d, a): load_attack_metrics(f"results/attack/{d}/{a}.h5") for d in defences for a in attacks
    },
)
write_summary(snakemake.output[0], rows)

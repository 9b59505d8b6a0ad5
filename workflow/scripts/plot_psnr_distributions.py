"""Snakemake adapter: per-image PSNR distributions, one box per defence and attack."""

from ats.report.figures import plot_psnr_distributions
from ats.report.loaders import load_attack_metrics
from ats.runtime.logs import configure

configure(snakemake.log[0])

params = snakemake.params
plot_psnr_distributions(
    snakemake.output[0],
    {
        (f"{defence} / {attack}" if len(params.attacks) > 1 else defence):
        load_attack_metrics(f"results/attack/{defence}/{attack}.h5")["psnr"]
        for defence in params.defences
        for attack in params.attacks
    },
)

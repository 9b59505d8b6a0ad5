"""Snakemake adapter: the same attacked images, truth against reconstruction, for every defence and stage."""

from itertools import product

from ats.report.figures import plot_reconstruction_grid
from ats.report.loaders import load_reconstructions
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

params = snakemake.params
chance = {(row["defence"], row["stage"], row["attack"]): row["psnr_chance"]
          for row in read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)}
# The attack files and their fingerprints come in the order of product(defences, stages, attacks).
blocks = [
    (f"{defence} @ {stage}" + (f" / {attack}" if len(params.attacks) > 1 else "")
     + f"\n(chance {chance[(defence, stage, attack)]:.1f} dB)",
     *load_reconstructions(path, params.grid_images, expected_fingerprint=expected))
    for (defence, stage, attack), path, expected in zip(
        product(params.defences, params.stages, params.attacks), snakemake.input.attacks,
        params.attack_fingerprints, strict=True,
    )
]
plot_reconstruction_grid(snakemake.output[0], blocks)

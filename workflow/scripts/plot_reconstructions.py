"""Snakemake adapter: the same attacked images, truth against reconstruction, for every defence."""

from ats.report.figures import plot_reconstruction_grid
from ats.report.loaders import load_reconstructions
from ats.runtime.logs import configure

configure(snakemake.log[0])

params = snakemake.params
blocks = [
    (f"{defence} / {attack}" if len(params.attacks) > 1 else defence,
     *load_reconstructions(f"results/attack/{defence}/{attack}.h5", params.grid_images))
    for defence in params.defences
    for attack in params.attacks
]
plot_reconstruction_grid(snakemake.output[0], blocks)

"""Snakemake adapter: loss and test accuracy per epoch for every defence."""

from ats.report.figures import plot_training_curves
from ats.report.loaders import load_history
from ats.runtime.logs import configure

configure(snakemake.log[0])

histories = {
    defence: load_history(path, expected_fingerprint=expected)
    for defence, path, expected in zip(snakemake.params.defences, snakemake.input.histories,
                                       snakemake.params.train_fingerprints, strict=True)
}
plot_training_curves(snakemake.output[0], histories)

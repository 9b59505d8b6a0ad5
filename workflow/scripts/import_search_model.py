"""Snakemake adapter: use a ready checkpoint (e.g. the authors' 100.pth) as the search model."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.training.loop import import_checkpoint  # noqa: E402

import_checkpoint(
    source_path=snakemake.input.checkpoint,
    arch=snakemake.params.arch,
    num_classes=snakemake.params.num_classes,
    channels=snakemake.params.channels,
    out_checkpoint=snakemake.output.model,
    fingerprint=snakemake.params.fingerprint,
)

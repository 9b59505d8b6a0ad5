"""Snakemake adapter: the model of one defence at one point of its training (a training stage)."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.training.loop import snapshot_stage  # noqa: E402

params = snakemake.params
snapshot_stage(
    dataset_h5=snakemake.input.dataset,
    arch=params.arch,
    defence=params.defence,
    stage=params.stage,
    out_checkpoint=snakemake.output.model,
    epochs=params.epochs,
    batch_size=params.batch_size,
    train_fraction=params.train_fraction,
    seed=params.seed,
    device=params.device,
    normalisation=params.normalisation,
    eval_every=params.eval_every,
    test_images=params.test_images,
    amp=params.amp,
    compile=params.compile,
    fingerprint=params.fingerprint,
)

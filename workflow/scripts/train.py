"""Snakemake adapter: train one model (the tiny-data search model, or one defence)."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.training.loop import train_stage  # noqa: E402

params = snakemake.params
train_stage(
    dataset_h5=snakemake.input.dataset,
    arch=params.arch,
    defence=params.defence,
    out_checkpoint=snakemake.output.model,
    out_history_tsv=snakemake.output.history,
    out_metrics_json=snakemake.output.metrics,
    state_path=params.state,
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

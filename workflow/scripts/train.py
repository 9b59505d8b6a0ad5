"""Snakemake adapter: train one model (the tiny-data search model, or one defence), or replay its
training up to a training stage (rule snapshot_defence, whose params name the stage)."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.training.loop import snapshot_stage, train_stage  # noqa: E402

params = snakemake.params
run = dict(
    dataset_h5=snakemake.input.dataset,
    arch=params.arch,
    defence=params.defence,
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
if hasattr(params, "stage"):
    snapshot_stage(stage=params.stage, out_checkpoint=snakemake.output.model, **run)
else:
    train_stage(
        out_checkpoint=snakemake.output.model,
        out_history_tsv=snakemake.output.history,
        out_metrics_json=snakemake.output.metrics,
        state_path=params.state,
        **run,
    )

"""Snakemake adapter: train one model (the tiny-data search model, or one defence), or replay its
training up to a training stage (rule snapshot_defence, whose params name the stage)."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.settings import PretrainSettings, TrainingSettings  # noqa: E402
from ats.training.loop import snapshot_stage, train_stage  # noqa: E402

params = snakemake.params
if hasattr(params, "pretrain"):
    settings = PretrainSettings.from_config(params.pretrain).training(params.test_images)
else:
    settings = TrainingSettings.from_config(params.training)
run = dict(
    dataset_h5=snakemake.input.dataset,
    arch=params.arch,
    defence=params.defence,
    settings=settings,
    seed=params.seed,
    device=params.device,
    normalisation=params.normalisation,
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

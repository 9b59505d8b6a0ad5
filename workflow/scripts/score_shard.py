"""Snakemake adapter: score one shard of candidate policies (S_pri and S_acc)."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.search.scoring import score_shard  # noqa: E402
from ats.settings import ScoringSettings  # noqa: E402

params = snakemake.params
score_shard(
    dataset_h5=snakemake.input.dataset,
    eval_set_h5=snakemake.input.eval_set,
    search_checkpoint=snakemake.input.model,
    arch=params.arch,
    policies=list(params.policies),
    out_h5=snakemake.output[0],
    seed=params.seed,
    repeat=params.repeat,
    device=params.device,
    normalisation=params.normalisation,
    settings=ScoringSettings.from_config(params.scoring),
    fingerprint=params.fingerprint,
    model_fingerprint=params.model_fingerprint,
    eval_set_fingerprint=params.eval_set_fingerprint,
)

"""Snakemake adapter: attack one trained defence with one gradient-inversion attack."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.attack.stage import attack_defence  # noqa: E402
from ats.settings import AttackSettings  # noqa: E402

params = snakemake.params
attack_defence(
    dataset_h5=snakemake.input.dataset,
    checkpoint=snakemake.input.model,
    model_fingerprint=params.model_fingerprint,
    arch=params.arch,
    defence=params.defence,
    stage=params.stage,
    attack=params.attack,
    settings=AttackSettings.from_config(params.settings),
    seed=params.seed,
    device=params.device,
    normalisation=params.normalisation,
    out_h5=snakemake.output[0],
    fingerprint=params.fingerprint,
)

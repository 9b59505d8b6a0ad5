"""Snakemake adapter: attack one trained defence with one gradient-inversion attack."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.attack.stage import attack_defence  # noqa: E402

params = snakemake.params
attack_defence(
    dataset_h5=snakemake.input.dataset,
    checkpoint=snakemake.input.model,
    model_fingerprint=params.model_fingerprint,
    arch=params.arch,
    defence=params.defence,
    stage=params.stage,
    attack=params.attack,
    first_target=params.first_target,
    num_targets=params.num_targets,
    iterations=params.iterations,
    batch_size=params.batch_size,
    transformed_target=params.transformed_target,
    defend_observed_gradient=params.defend_observed_gradient,
    label_recovery=params.label_recovery,
    seed=params.seed,
    device=params.device,
    normalisation=params.normalisation,
    out_h5=snakemake.output[0],
    fingerprint=params.fingerprint,
)

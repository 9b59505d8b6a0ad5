"""Snakemake adapter: cache the images on which S_pri and S_acc are computed."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.search.eval_set import build_eval_set  # noqa: E402

params = snakemake.params
build_eval_set(
    snakemake.input.dataset,
    snakemake.output[0],
    mode=params.mode,
    num_samples=params.num_samples,
    runs=params.runs,
    start=params.start,
    window=params.window,
    fingerprint=params.fingerprint,
)

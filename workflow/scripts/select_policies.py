"""Snakemake adapter: rank the scored policies and choose the ones to train."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.search.selection import select_policies  # noqa: E402

params = snakemake.params
select_policies(
    shard_paths=list(snakemake.input.shards),
    shard_fingerprints=params.shard_fingerprints,
    ranking_tsv=snakemake.output.ranking,
    selection_json=snakemake.output.selection,
    rule=params.rule,
    alpha=params.alpha,
    threshold=params.threshold,
    top_k=params.top_k,
    allow_empty=params.allow_empty,
    num_classes=params.num_classes,
    seed=params.seed,
    fingerprint=params.fingerprint,
)

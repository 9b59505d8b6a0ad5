"""Snakemake adapter: rank the scored policies and choose the ones to train."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.search.selection import select_policies  # noqa: E402
from ats.settings import SelectionSettings  # noqa: E402

params = snakemake.params
select_policies(
    shard_paths=list(snakemake.input.shards),
    shard_fingerprints=params.shard_fingerprints,
    ranking_tsv=snakemake.output.ranking,
    selection_json=snakemake.output.selection,
    settings=SelectionSettings.from_config(params.selection),
    num_classes=params.num_classes,
    seed=params.seed,
    fingerprint=params.fingerprint,
)

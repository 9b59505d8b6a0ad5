"""Snakemake adapter: write the scored candidate policies, their shard and what they do."""

from ats.policies import describe_policy
from ats.runtime.atomic import write_tsv
from ats.runtime.logs import configure

configure(snakemake.log[0])

size = snakemake.params.shard_size
write_tsv(
    snakemake.output[0],
    ["policy", "shard", "description"],
    [
        (policy, f"{index // size:04d}", describe_policy(policy))
        for index, policy in enumerate(snakemake.params.candidates)
    ],
)

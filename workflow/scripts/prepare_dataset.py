"""Snakemake adapter: read the data set from its source into results/data/{dataset}.h5."""

from ats.runtime.logs import configure

configure(snakemake.log[0])

from ats.case.datasets import build_dataset_file  # noqa: E402

build_dataset_file(
    snakemake.wildcards.dataset,
    snakemake.output[0],
    source_dir=snakemake.params.source_dir,
    download=snakemake.params.download,
    download_root=snakemake.params.download_root,
)

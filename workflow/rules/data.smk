# Stage 0: the data set, read once from its source and cached as uint8 arrays in HDF5.


rule prepare_dataset:
    output:
        "results/data/{dataset}.h5",
    log:
        "results/logs/prepare_dataset/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare_dataset/{dataset}.tsv"
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        source_dir=config["dataset"]["source_dir"],
        download=config["dataset"]["download"],
        download_root="results/downloads",
    script:
        "../scripts/prepare_dataset.py"


# The only stage that may download (where dataset.download allows it), and compute nodes are often
# offline: under Slurm it runs on the submitting node (docs/slurm.md). It only copies a data set
# into HDF5, so it needs no compute node anyway.
localrules:
    prepare_dataset,

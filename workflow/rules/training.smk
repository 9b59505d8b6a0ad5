# Stage 4: full training of every defence: the baselines, the chosen policies and their hybrid,
# and the gradient defences. Each job resumes from its last finished epoch after a kill.
#
# Models are not protected(): Snakemake refuses to replace a write-protected output, and for
# anyone but root that stopped every rerun a config change needs. What keeps a model from being
# used wrongly instead: it is replaced only atomically, by its own job, and every job that reads it
# checks its fingerprint and checksum (docs/robustness.md).


rule train_defence:
    input:
        dataset=get_dataset_file(),
    output:
        model="results/train/{defence}/model.pt",
        history="results/train/{defence}/history.tsv",
        metrics="results/train/{defence}/metrics.json",
    log:
        "results/logs/train_defence/{defence}.log",
    benchmark:
        "results/benchmarks/train_defence/{defence}.tsv"
    conda:
        CONDA_ENVIRONMENT
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=scaled_runtime(720),
    params:
        arch=MODEL,
        defence="{defence}",
        training=TRAINING.as_section(),
        seed=config["seed"],
        device=config["device"],
        normalisation=config["dataset"]["normalisation"],
        state="results/train/{defence}/resume.pt",
        fingerprint=get_train_fingerprint,
    script:
        "../scripts/train.py"


rule snapshot_defence:
    input:
        dataset=get_dataset_file(),
    output:
        model="results/train/{defence}/snapshots/{stage}.pt",
    log:
        "results/logs/snapshot_defence/{defence}/{stage}.log",
    benchmark:
        "results/benchmarks/snapshot_defence/{defence}/{stage}.tsv"
    conda:
        CONDA_ENVIRONMENT
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=scaled_runtime(720),
    params:
        arch=MODEL,
        defence="{defence}",
        stage="{stage}",
        training=TRAINING.as_section(),
        seed=config["seed"],
        device=config["device"],
        normalisation=config["dataset"]["normalisation"],
        fingerprint=get_model_fingerprint,
    script:
        "../scripts/train.py"


rule plot_training_curves:
    input:
        histories=get_train_histories,
    output:
        report(
            "results/report/training_curves.svg",
            caption="../report/training_curves.rst",
            category="Training",
            labels={"figure": "training curves"},
        ),
    log:
        "results/logs/plot_training_curves.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        defences=get_defences,
        train_fingerprints=get_train_fingerprints,
    script:
        "../scripts/plot_training_curves.py"

# Stages 1-3: tiny-data pretraining, per-policy scoring in shards, and the selection checkpoint.

if SEARCH["pretrain"]["checkpoint"]:

    rule import_search_model:
        input:
            checkpoint=SEARCH["pretrain"]["checkpoint"],
        output:
            model=get_search_model(),
        log:
            "results/logs/import_search_model.log",
        benchmark:
            "results/benchmarks/import_search_model.tsv"
        conda:
            CONDA_ENVIRONMENT
        threads: 1
        resources:
            mem_mb=4000,
            runtime=10,
        params:
            arch=MODEL,
            num_classes=NUM_CLASSES,
            channels=CHANNELS,
            fingerprint=get_pretrain_fingerprint(),
        script:
            "../scripts/import_search_model.py"

else:

    rule pretrain_search_model:
        input:
            dataset=get_dataset_file(),
        output:
            model=get_search_model(),
            history="results/search/pretrained/history.tsv",
            metrics="results/search/pretrained/metrics.json",
        log:
            "results/logs/pretrain_search_model.log",
        benchmark:
            "results/benchmarks/pretrain_search_model.tsv"
        conda:
            CONDA_ENVIRONMENT
        threads: 2
        resources:
            gpu=1,
            mem_mb=16000,
            runtime=scaled_runtime(240),
        params:
            arch=MODEL,
            defence="crop",
            pretrain=PRETRAIN.as_section(),
            test_images=TRAINING.test_images,
            seed=config["seed"],
            device=config["device"],
            normalisation=config["dataset"]["normalisation"],
            state="results/search/pretrained/resume.pt",
            fingerprint=get_pretrain_fingerprint(),
        script:
            "../scripts/train.py"


rule list_candidates:
    output:
        "results/search/candidates.tsv",
    log:
        "results/logs/list_candidates.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        candidates=get_candidates(),
        shard_size=SEARCH["shard_size"],
    script:
        "../scripts/list_candidates.py"


rule build_eval_set:
    input:
        dataset=get_dataset_file(),
    output:
        "results/search/eval_images.h5",
    log:
        "results/logs/build_eval_set.log",
    benchmark:
        "results/benchmarks/build_eval_set.tsv"
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        mode=SEARCH["privacy"]["images"],
        num_samples=SEARCH["privacy"]["num_samples"],
        runs=SEARCH["accuracy"]["runs"],
        start=SEARCH["accuracy"]["start"],
        window=SEARCH["accuracy"]["window"],
        fingerprint=get_eval_set_fingerprint(),
    script:
        "../scripts/build_eval_set.py"


# One job per repeat and shard: repeat r scores the shard's policies under the draws and noise of
# its own seed (repeat 0: the master seed itself), see ats.search.scoring.
rule score_shard:
    input:
        dataset=get_dataset_file(),
        eval_set="results/search/eval_images.h5",
        model=get_search_model(),
    output:
        "results/search/scores/repeat-{repeat}/shard-{shard}.h5",
    log:
        "results/logs/score_shard/repeat-{repeat}/shard-{shard}.log",
    benchmark:
        "results/benchmarks/score_shard/repeat-{repeat}/shard-{shard}.tsv"
    wildcard_constraints:
        repeat=r"\d+",
    conda:
        CONDA_ENVIRONMENT
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        # Two minutes per policy, more than the original needed on a shared GPU (docs/original-code.md §10.4).
        runtime=max(30, 2 * SEARCH["shard_size"]),
    params:
        policies=get_shard_policies,
        arch=MODEL,
        seed=config["seed"],
        repeat=lambda wildcards: int(wildcards.repeat),
        device=config["device"],
        normalisation=config["dataset"]["normalisation"],
        scoring=SCORING.as_section(),
        fingerprint=get_shard_fingerprint,
        model_fingerprint=get_pretrain_fingerprint(),
        eval_set_fingerprint=get_eval_set_fingerprint(),
    script:
        "../scripts/score_shard.py"


checkpoint select_policies:
    input:
        shards=get_shard_files,
    output:
        ranking=report(
            "results/search/ranking.tsv",
            caption="../report/ranking.rst",
            category="Search",
            labels={"table": "policy ranking"},
        ),
        selection="results/search/selection.json",
    log:
        "results/logs/select_policies.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        selection=SELECTION.as_section(),
        num_classes=NUM_CLASSES,
        seed=config["seed"],
        shard_fingerprints=get_shard_fingerprints,
        fingerprint=get_selection_fingerprint,
    script:
        "../scripts/select_policies.py"


rule plot_spri_vs_sacc:
    input:
        ranking=rules.select_policies.output.ranking,
        selection=rules.select_policies.output.selection,
    output:
        report(
            "results/search/spri_vs_sacc.svg",
            caption="../report/spri_vs_sacc.rst",
            category="Search",
            labels={"figure": "S_pri against S_acc"},
        ),
    log:
        "results/logs/plot_spri_vs_sacc.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        selection_fingerprint=get_selection_fingerprint,
    script:
        "../scripts/plot_spri_vs_sacc.py"


rule plot_gradsim_curves:
    input:
        shards=get_first_repeat_shard_files,
        selection=rules.select_policies.output.selection,
    output:
        report(
            "results/search/gradsim_curves.svg",
            caption="../report/gradsim_curves.rst",
            category="Search",
            labels={"figure": "gradient similarity along the path"},
        ),
    log:
        "results/logs/plot_gradsim_curves.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        shard_fingerprints=get_first_repeat_shard_fingerprints,
        selection_fingerprint=get_selection_fingerprint,
    script:
        "../scripts/plot_gradsim_curves.py"


rule plot_per_op_spri:
    input:
        ranking=rules.select_policies.output.ranking,
    output:
        report(
            "results/search/per_op_spri.svg",
            caption="../report/per_op_spri.rst",
            category="Search",
            labels={"figure": "S_pri per single op"},
        ),
    log:
        "results/logs/plot_per_op_spri.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        selection_fingerprint=get_selection_fingerprint,
    script:
        "../scripts/plot_per_op_spri.py"

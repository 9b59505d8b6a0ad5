# Stage 5: gradient-inversion attacks on every trained defence, many targets per batch.


rule attack_defence:
    input:
        dataset=get_dataset_file(),
        model=get_attacked_model,
    output:
        "results/attack/{defence}/{stage}/{attack}.h5",
    log:
        "results/logs/attack_defence/{defence}/{stage}/{attack}.log",
    benchmark:
        "results/benchmarks/attack_defence/{defence}/{stage}/{attack}.tsv"
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
        attack="{attack}",
        settings=ATTACK.as_section(),
        seed=config["seed"],
        device=config["device"],
        normalisation=config["dataset"]["normalisation"],
        model_fingerprint=get_model_fingerprint,
        fingerprint=get_attack_fingerprint,
    script:
        "../scripts/attack.py"

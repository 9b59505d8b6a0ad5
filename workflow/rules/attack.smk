# Stage 5: gradient-inversion attacks on every trained defence, many targets per batch.


rule attack_defence:
    input:
        dataset=get_dataset_file(),
        model="results/train/{defence}/model.pt",
    output:
        "results/attack/{defence}/{attack}.h5",
    params:
        arch=config["model"]["arch"],
        defence="{defence}",
        attack="{attack}",
        first_target=config["attack"]["first_target"],
        num_targets=config["attack"]["num_targets"],
        iterations=config["attack"]["iterations"],
        batch_size=config["attack"]["batch_size"],
        transformed_target=config["attack"]["transformed_target"],
        defend_observed_gradient=config["attack"]["defend_observed_gradient"],
        label_recovery=config["attack"]["label_recovery"],
        seed=config["seed"],
        device=config["device"],
        normalisation=config["dataset"]["normalisation"],
        model_fingerprint=get_train_fingerprint,
        fingerprint=get_attack_fingerprint,
    log:
        "results/logs/attack_defence/{defence}/{attack}.log",
    benchmark:
        "results/benchmarks/attack_defence/{defence}/{attack}.tsv"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=720,
    script:
        "../scripts/attack.py"


rule plot_reconstructions:
    input:
        attacks=get_attack_files,
    output:
        report(
            "results/report/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Attacks",
            labels={"figure": "reconstructions"},
        ),
    params:
        defences=get_defences,
        attacks=get_attacks(),
        grid_images=config["report"]["grid_images"],
    log:
        "results/logs/plot_reconstructions.log",
    threads: 1
    script:
        "../scripts/plot_reconstructions.py"


rule plot_psnr_distributions:
    input:
        attacks=get_attack_files,
    output:
        report(
            "results/report/psnr_distributions.svg",
            caption="../report/psnr_distributions.rst",
            category="Attacks",
            labels={"figure": "PSNR distributions"},
        ),
    params:
        defences=get_defences,
        attacks=get_attacks(),
    log:
        "results/logs/plot_psnr_distributions.log",
    threads: 1
    script:
        "../scripts/plot_psnr_distributions.py"

# Stage 6: the summary table and the figures that compare defences; `snakemake --report` turns
# every report() output of the workflow into results/report.html.


rule summarize:
    input:
        metrics=get_train_metrics,
        attacks=get_attack_files,
    output:
        report(
            "results/summary.tsv",
            caption="../report/summary.rst",
            category="Summary",
            subcategory="Tables and verdicts",
            labels={"table": "defences against attacks"},
        ),
    log:
        "results/logs/summarize.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        defences=get_defences,
        stages=get_stages(),
        attacks=get_attacks(),
        attack_fingerprints=get_attack_fingerprints,
        train_fingerprints=get_train_fingerprints,
        seed=config["seed"],
        fingerprint=get_summary_fingerprint,
        lpips_backbone=config["report"]["lpips_backbone"],
    script:
        "../scripts/summarize.py"


rule plot_reconstructions:
    input:
        attacks=get_attack_files,
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/reconstructions.png",
            caption="../report/reconstructions.rst",
            category="Attacks",
            labels={"figure": "reconstructions"},
        ),
    log:
        "results/logs/plot_reconstructions.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
        defences=get_defences,
        stages=get_stages(),
        attacks=get_attacks(),
        attack_fingerprints=get_attack_fingerprints,
        grid_images=config["report"]["grid_images"],
    script:
        "../scripts/plot_reconstructions.py"


rule plot_psnr_distributions:
    input:
        attacks=get_attack_files,
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/psnr_distributions.svg",
            caption="../report/psnr_distributions.rst",
            category="Attacks",
            labels={"figure": "PSNR distributions"},
        ),
    log:
        "results/logs/plot_psnr_distributions.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
        defences=get_defences,
        stages=get_stages(),
        attacks=get_attacks(),
        attack_fingerprints=get_attack_fingerprints,
    script:
        "../scripts/plot_psnr_distributions.py"


rule plot_privacy_utility:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/privacy_utility.svg",
            caption="../report/privacy_utility.rst",
            category="Summary",
            subcategory="Figures",
            labels={"figure": "privacy against utility"},
        ),
    log:
        "results/logs/plot_privacy_utility.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
    script:
        "../scripts/plot_privacy_utility.py"


rule plot_spri_vs_psnr:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/spri_vs_psnr.svg",
            caption="../report/spri_vs_psnr.rst",
            category="Summary",
            subcategory="Figures",
            labels={"figure": "does S_pri predict the attack?"},
        ),
    log:
        "results/logs/plot_spri_vs_psnr.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
        selection_fingerprint=get_selection_fingerprint,
    script:
        "../scripts/plot_spri_vs_psnr.py"


rule write_findings:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/findings.html",
            caption="../report/findings.rst",
            category="Summary",
            subcategory="Tables and verdicts",
            labels={"page": "findings in words"},
        ),
    log:
        "results/logs/write_findings.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
        lpips_backbone=config["report"]["lpips_backbone"],
    script:
        "../scripts/write_findings.py"


rule plot_leak_across_training:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/leak_across_training.svg",
            caption="../report/leak_across_training.rst",
            category="Summary",
            subcategory="Figures",
            labels={"figure": "leak across training"},
        ),
    log:
        "results/logs/plot_leak_across_training.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
    script:
        "../scripts/plot_leak_across_training.py"


rule plot_against_original:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/against_original.svg",
            caption="../report/against_original.rst",
            category="Attacks",
            labels={"figure": "against the untransformed image"},
        ),
    log:
        "results/logs/plot_against_original.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
    script:
        "../scripts/plot_against_original.py"


localrules:
    list_candidates,
    select_policies,
    plot_spri_vs_sacc,
    plot_gradsim_curves,
    plot_per_op_spri,
    plot_training_curves,
    plot_reconstructions,
    plot_psnr_distributions,
    summarize,
    plot_privacy_utility,
    plot_spri_vs_psnr,
    write_findings,
    plot_leak_across_training,
    plot_against_original,

# The published figures of the paper setting named by report.published_setting, beside the run's
# own numbers. With no setting (the demo), the table says so in one row.


rule compare_published:
    input:
        summary=rules.summarize.output[0],
        ranking=get_checkpoint_file,
    output:
        report(
            "results/report/published_comparison.tsv",
            caption="../report/published_comparison.rst",
            category="Summary",
            subcategory="Tables and verdicts",
            labels={"table": "published figures beside this run"},
        ),
    log:
        "results/logs/compare_published.log",
    conda:
        CONDA_ENVIRONMENT
    threads: 1
    params:
        summary_fingerprint=get_summary_fingerprint,
        setting=config["report"]["published_setting"],
        selection_fingerprint=get_selection_fingerprint,
        dataset=config["dataset"]["name"],
        arch=model_name(MODEL),
    script:
        "../scripts/compare_published.py"


localrules:
    compare_published,

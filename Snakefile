# ATS: Automatic Transformation Search against gradient inversion (Gao et al., CVPR 2021).
#
#   data -> tiny-data pretraining -> per-policy scoring -> selection (checkpoint)
#        -> training of every defence -> attack benchmark -> summary and HTML report
#
# Run `snakemake --cores N` (workstation) or `snakemake --profile profiles/slurm` (cluster), then
# `snakemake --report results/report.html`. See README.md and config/README.md.

import os

from snakemake.utils import min_version

min_version("9.0")


# The demo, unless a config file is given: a paper setting or a config of one's own then starts from
# the schema's defaults (the paper's recipe), not from the demo's reduced budget.
if not workflow.overwrite_configfiles:

    configfile: os.path.join(workflow.basedir, "config", "config.yaml")


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/published.smk"


rule all:
    input:
        get_final_outputs(),
    default_target: True

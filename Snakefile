# ATS: Automatic Transformation Search against gradient inversion (Gao et al., CVPR 2021).
#
#   data -> tiny-data pretraining -> per-policy scoring -> selection (checkpoint)
#        -> training of every defence -> attack benchmark -> summary and HTML report
#
# Run `snakemake --cores N` (workstation) or `snakemake --profile profiles/slurm` (cluster), then
# `snakemake --report results/report.html`. See README.md and config/README.md.

import os

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

from ats.config import ConfigFileError, read_config_file
from ats.runtime.job_environment import share_package_with_jobs

min_version("9.0")

# Jobs import the ats package of this checkout, also from a rule's conda environment.
share_package_with_jobs(workflow.basedir)


DEMO_CONFIG = os.path.join(workflow.basedir, "config", "config.yaml")

# Read every config file again, strictly: a key given twice is refused (Snakemake keeps the last
# one), and a broken, empty or non-mapping demo config is reported naming the file.
try:
    for config_file in workflow.overwrite_configfiles or [DEMO_CONFIG]:
        read_config_file(config_file)
except ConfigFileError as error:
    raise WorkflowError(str(error)) from None

# The demo, unless a config file is given: a paper setting or a config of one's own then starts from
# the schema's defaults (the paper's recipe), not from the demo's reduced budget.
if not workflow.overwrite_configfiles:

    configfile: DEMO_CONFIG


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/training.smk"
include: "workflow/rules/attack.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/published.smk"


rule all:
    default_target: True
    input:
        get_final_outputs(),

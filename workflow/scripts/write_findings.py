"""Snakemake adapter: the report's verdicts in words, from the summary table."""

from ats.report.findings import write_findings_html
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

write_findings_html(snakemake.output[0], read_summary(snakemake.input.summary))

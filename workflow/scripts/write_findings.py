"""Snakemake adapter: the report's verdicts in words, from the summary table."""

from ats.attack.lpips import lpips_unavailable_reason
from ats.report.findings import write_findings_html
from ats.report.summary import read_summary
from ats.runtime.logs import configure

configure(snakemake.log[0])

write_findings_html(
    snakemake.output[0],
    read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint),
    lpips_note=lpips_unavailable_reason(snakemake.params.lpips_backbone)
    or "its weights appeared after the summary was made; rerun the summarize rule to add it",
)

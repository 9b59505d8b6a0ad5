"""Snakemake adapter: the published figures of the run's paper setting beside the run's own numbers."""

from ats.report.loaders import spri_psnr_points
from ats.report.published import FINAL_STAGE, comparison_rows, write_published_comparison
from ats.report.summary import correlations, read_summary
from ats.runtime.logs import configure

# The published S_pri-PSNR correlations were measured with Inverting Gradients.
CORRELATION_ATTACK = "inversed"

configure(snakemake.log[0])

summary = read_summary(snakemake.input.summary, expected_fingerprint=snakemake.params.summary_fingerprint)
final = [row for row in summary if row.get("stage", FINAL_STAGE) == FINAL_STAGE]
attacks = list(dict.fromkeys(row["attack"] for row in final))
attack = CORRELATION_ATTACK if CORRELATION_ATTACK in attacks else (attacks[0] if attacks else None)
correlation = None
if snakemake.input.ranking and attack is not None:
    points = [point for point in spri_psnr_points(final, snakemake.input.ranking,
                                                  ranking_fingerprint=snakemake.params.selection_fingerprint)
              if point["attack"] == attack]
    correlation = correlations([point["s_pri"] for point in points], [point["psnr_mean"] for point in points])

rows = comparison_rows(
    summary,
    snakemake.params.setting,
    correlation,
    correlation_attack=attack,
    dataset=snakemake.params.dataset,
    arch=snakemake.params.arch,
)
write_published_comparison(snakemake.output[0], rows)

"""Rules table3_dose_baseline, table4_pipelines: per arm and score, MAE, % exact, % close and
Spearman on the test images, mean ± SD over repeats (petiq.evaluation.metrics.paper_table)."""

from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.evaluation.metrics import labelled_metrics, paper_table, summarise

log = log_to(snakemake.log[0])
arms = snakemake.params.arms
summary = summarise(labelled_metrics(arms, "test"), by=["arm", "score"])
table = paper_table(summary, {label: label for label in arms}, by="arm")
write_tsv(snakemake.output.tsv, table)
log.info("\n%s", table.round(3).to_string())

"""Rules fig08_freeze_levels, fig09_patients, fig10_pipelines: test metrics of every arm's repeats
(petiq.evaluation.metrics.run_metrics) as a long table and as boxplots (petiq.plots.experiments)."""

from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.evaluation.metrics import labelled_metrics
from petiq.plots.experiments import plot_boxplots

log = log_to(snakemake.log[0])
arms = snakemake.params.arms
metrics = labelled_metrics(arms, "test")
write_tsv(snakemake.output.tsv, metrics)
plot_boxplots(metrics, "arm", list(arms), snakemake.output.png, snakemake.params.xlabel)
summary = (
    metrics[metrics["score"] == "all"]
    .groupby("arm", sort=False)[["mae", "pct_exact", "pct_close"]]
    .agg(["mean", "std"])
)
log.info("test metrics over all three scores (mean, SD over repeats):\n%s", summary.round(3).to_string())

"""Rule fig04_backbones: test MAE of each backbone ranked by validation loss (petiq.plots.experiments)."""

from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.evaluation.metrics import labelled_metrics
from petiq.plots.experiments import plot_backbones

log = log_to(snakemake.log[0])
metrics = labelled_metrics(snakemake.params.arms, "test")  # the cards name each backbone
plotted = plot_backbones(metrics[metrics["score"] == "all"], snakemake.output.png)
write_tsv(snakemake.output.tsv, plotted)
log.info("backbones by validation loss:\n%s", plotted.round(3).to_string())

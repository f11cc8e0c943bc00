"""Rule fig04_backbones: test MAE of each backbone ranked by validation loss (petiq.plots.experiments)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.core.fileio import write_tsv  # noqa: E402
from petiq.core.logs import log_to  # noqa: E402
from petiq.evaluation.metrics import labelled_metrics  # noqa: E402
from petiq.plots.experiments import plot_backbones  # noqa: E402

log = log_to(snakemake.log[0])
metrics = labelled_metrics(snakemake.params.arms, "test")  # the cards name each backbone
plotted = plot_backbones(metrics[metrics["score"] == "all"], snakemake.output.png)
write_tsv(snakemake.output.tsv, plotted)
log.info("backbones by validation loss:\n%s", plotted.round(3).to_string())

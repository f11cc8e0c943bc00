"""Rule fig04_backbones: test MAE of each backbone ranked by validation loss (petiq.plots.experiments)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
import pandas as pd  # noqa: E402

from petiq.evaluate import run_metrics  # noqa: E402
from petiq.fileio import write_tsv  # noqa: E402
from petiq.logs import log_to  # noqa: E402
from petiq.plots.experiments import plot_backbones  # noqa: E402

log = log_to(snakemake.log[0])
frames = []
for label, files in snakemake.params.arms.items():
    table = run_metrics([Path(f).parent for f in files], "test")
    table = table[table["score"] == "all"].copy()
    table["backbone"] = label
    frames.append(table)
plotted = plot_backbones(pd.concat(frames, ignore_index=True), snakemake.output.png)
write_tsv(snakemake.output.tsv, plotted)
log.info("backbones by validation loss:\n%s", plotted.round(3).to_string())

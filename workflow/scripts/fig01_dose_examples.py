"""Rule fig01_dose_examples: Fig. 1 of the paper (petiq.plots.plot_dose_examples)."""

from petiq.core.logs import log_to
from petiq.plots import plot_dose_examples

log = log_to(snakemake.log[0])
plot_dose_examples(snakemake.params.examples, snakemake.output.png)
log.info("wrote %s from %s", snakemake.output.png, snakemake.params.examples)

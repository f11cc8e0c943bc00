"""Rule fig01_dose_examples: Fig. 1 of the paper (petiq.plots.plot_dose_examples)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.core.logs import log_to  # noqa: E402
from petiq.plots import plot_dose_examples  # noqa: E402

log = log_to(snakemake.log[0])
plot_dose_examples(snakemake.params.examples, snakemake.output.png)
log.info("wrote %s from %s", snakemake.output.png, snakemake.params.examples)

"""Rule randoms: variance-reduced randoms from the delayeds (petiq.recon.pipeline.randoms_file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.core.logs import log_to  # noqa: E402
from petiq.recon.pipeline import randoms_file  # noqa: E402
from petiq.scanner.geometry import Scanner  # noqa: E402

log = log_to(snakemake.log[0])
randoms_file(
    snakemake.input.sinograms, snakemake.output.npz, Scanner.from_name(snakemake.params.scanner), snakemake.params.span
)
log.info("wrote %s", snakemake.output.npz)

"""Rule randoms: variance-reduced randoms from the delayeds (petiq.recon.pipeline.randoms_file)."""

from petiq.core.logs import log_to
from petiq.recon.pipeline import randoms_file
from petiq.scanner.geometry import Scanner

log = log_to(snakemake.log[0])
randoms_file(
    snakemake.input.sinograms, snakemake.output.npz, Scanner.from_name(snakemake.params.scanner), snakemake.params.span
)
log.info("wrote %s", snakemake.output.npz)

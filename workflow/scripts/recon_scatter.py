"""Rule scatter: tail-scaled scatter estimate (petiq.recon.pipeline.scatter_file)."""

from petiq.core.logs import log_to
from petiq.recon.pipeline import scatter_file
from petiq.scanner.geometry import Scanner

log = log_to(snakemake.log[0])
i = snakemake.input
scatter_file(
    i.sinograms,
    i.norm,
    i.randoms,
    i.attenuation,
    snakemake.output.npz,
    scanner=Scanner.from_name(snakemake.params.scanner),
    span=snakemake.params.span,
)
log.info("wrote %s", snakemake.output.npz)

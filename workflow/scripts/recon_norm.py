"""Rules norm and site_norm: normalisation sinograms from the scanner's component norm (.n) or a
norm scan (petiq.recon.pipeline.norm_file)."""

from petiq.core.logs import log_to
from petiq.recon.pipeline import norm_file
from petiq.scanner.geometry import Scanner

log = log_to(snakemake.log[0])
summary = norm_file(
    snakemake.input.src, snakemake.output.npz, Scanner.from_name(snakemake.params.scanner), snakemake.params.span
)
log.info(
    "norm from %s (%s), calibration factor %.6g -> %s",
    snakemake.input.src,
    summary.get("method", "norm scan"),
    summary["calibration_factor"],
    snakemake.output.npz,
)

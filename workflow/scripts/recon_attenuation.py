"""Rule attenuation: exp(−P μ) from the μ-map [+ hardware μ-maps] (petiq.recon.pipeline.attenuation_file)."""

from petiq.core.logs import log_to
from petiq.recon.pipeline import attenuation_file
from petiq.scanner.geometry import Scanner

log = log_to(snakemake.log[0])
summary = attenuation_file(
    snakemake.input.mumap,
    snakemake.output.npz,
    Scanner.from_name(snakemake.params.scanner),
    snakemake.params.span,
    hardware_mumaps=list(snakemake.input.hardware),
    listmode=snakemake.input.listmode[0] if snakemake.input.listmode else None,
)
log.info(
    "μ-map %s (%s)%s -> %s",
    snakemake.input.mumap,
    summary["mumap_format"],
    f" + hardware {summary['hardware_mumaps']} at bed position {summary['bed_position_mm']} mm"
    if summary["hardware_mumaps"]
    else "",
    snakemake.output.npz,
)

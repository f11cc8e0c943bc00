"""Rule attenuation: exp(−P μ) from the μ-map [+ hardware μ-maps] (petiq.recon.pipeline.attenuation_file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.core.logs import log_to  # noqa: E402
from petiq.recon.pipeline import attenuation_file  # noqa: E402
from petiq.scanner.geometry import Scanner  # noqa: E402

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

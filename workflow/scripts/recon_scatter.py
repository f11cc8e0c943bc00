"""Rule scatter: tail-scaled scatter estimate (petiq.recon.pipeline.scatter_file)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.core.logs import log_to  # noqa: E402
from petiq.recon.pipeline import scatter_file  # noqa: E402
from petiq.scanner.geometry import Scanner  # noqa: E402

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

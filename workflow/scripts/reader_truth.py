"""Rule reader_truth: the phantom's tissue and pattern masks on the recon grid (petiq.scoring.truth)."""

from pathlib import Path

from petiq.core.logs import log_to
from petiq.scoring.truth import write_reader_truth

log = log_to(snakemake.log[0])
i = snakemake.input
anatomy_dir = Path(i.anatomy[0]).parent
truth = write_reader_truth(i.sidecar, anatomy_dir, i.reference, snakemake.output.npz, truth_image=i.truth)
log.info(
    "reader truth of %s: %s",
    snakemake.wildcards.subject,
    {k: int(v.sum()) for k, v in truth.items() if v.dtype == bool},
)

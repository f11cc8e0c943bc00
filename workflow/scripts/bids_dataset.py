"""Rule bids_dataset: the BIDS dataset's own files from participants.tsv (petiq.core.bids.write_dataset_files)."""

from pathlib import Path

from petiq.cohort.patients import read_participants
from petiq.core.bids import write_dataset_files
from petiq.core.logs import log_to

log = log_to(snakemake.log[0])
root = Path(snakemake.output.description).parent
written = write_dataset_files(root, read_participants(snakemake.input.participants))
expected = sorted(Path(p) for p in snakemake.output)
if sorted(written) != expected:  # the rule's outputs and the library's files must name the same files
    raise RuntimeError(
        f"{root}: petiq.core.bids wrote {sorted(map(str, written))}, the rule expects {list(map(str, expected))}; "
        "make workflow/rules/recon.smk (rule bids_dataset) list what petiq.core.bids.write_dataset_files writes"
    )
log.info("BIDS dataset files in %s", root)

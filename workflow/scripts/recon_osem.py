"""Rule osem: OP-OSEM of one patient and dose (petiq.recon.pipeline.reconstruct_file), with the
BIDS PET sidecar keys of the patient and the study design (petiq.core.bids.pet_metadata)."""

from petiq.cohort.patients import read_participants
from petiq.core.bids import dose_from_rec_label, pet_metadata
from petiq.core.logs import log_to
from petiq.recon.pipeline import reconstruct_file
from petiq.scanner.geometry import Scanner

log = log_to(snakemake.log[0])
i, p, o, w = snakemake.input, snakemake.params, snakemake.output, snakemake.wildcards
row = read_participants(i.participants).set_index("participant_id").loc[w.subject]
metadata = pet_metadata({**row.to_dict(), "participant_id": w.subject}, dose_from_rec_label(w.rec), p.scanner)
reconstruct_file(
    i.sinograms,
    i.norm,
    i.randoms,
    i.attenuation,
    i.scatter,
    o.image,
    o.sidecar,
    o.norm01,
    scanner=Scanner.from_name(p.scanner),
    span=p.span,
    n_iterations=p.iterations,
    n_subsets=p.subsets,
    post_filter_fwhm_mm=p.post_filter_fwhm_mm,
    backend=p.device,
    metadata=metadata,
)
log.info("wrote %s", o.image)

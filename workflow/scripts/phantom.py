"""Rule phantom: one synthetic patient's images and sidecar (petiq.cohort.patients.synthesize_patient)."""

from petiq.cohort.patients import read_participants, synthesize_patient
from petiq.core.logs import log_to

log = log_to(snakemake.log[0])
participants = read_participants(snakemake.input.participants).set_index("participant_id", drop=False)
row = participants.loc[snakemake.wildcards.subject].to_dict()
log.info("making %s: %s", snakemake.wildcards.subject, row)
sidecar = synthesize_patient(
    row,
    seed=snakemake.params.seed,
    anatomy_dir=snakemake.params.anatomy_dir,
    shape=snakemake.params.shape,
    voxel_size_mm=snakemake.params.voxel_size_mm,
    outputs=dict(snakemake.output.items()),
)
log.info("anatomy: %s", sidecar["Phantom"]["anatomy"])

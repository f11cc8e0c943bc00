"""Rule participants: the patient sheet → results/cohort/participants.tsv (petiq.cohort.patients.plan_cohort)."""

from petiq.cohort.patients import plan_cohort, read_patients
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to

log = log_to(snakemake.log[0])
sheet = read_patients(snakemake.input.sheet, check_files=False)  # checked when the workflow was parsed
participants = plan_cohort(sheet, snakemake.params.seed, snakemake.params.mix, snakemake.params.clinic)
write_tsv(snakemake.output.tsv, participants)
log.info("%d participants (%s)", len(participants), participants["diagnosis"].value_counts().to_dict())

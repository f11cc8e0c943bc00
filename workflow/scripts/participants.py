"""Rule participants: the patient sheet → results/cohort/participants.tsv (petiq.cohort.patients.plan_cohort)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.cohort.patients import plan_cohort, read_patients  # noqa: E402
from petiq.core.fileio import write_tsv  # noqa: E402
from petiq.core.logs import log_to  # noqa: E402

log = log_to(snakemake.log[0])
sheet = read_patients(snakemake.input.sheet, check_files=False)  # checked when the workflow was parsed
participants = plan_cohort(sheet, snakemake.params.seed, snakemake.params.mix, snakemake.params.clinic)
write_tsv(snakemake.output.tsv, participants)
log.info("%d participants (%s)", len(participants), participants["diagnosis"].value_counts().to_dict())

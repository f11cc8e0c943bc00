"""Rule sessions_plan: the blinded reading sessions (petiq.sessions.plan_sessions) of the rated patients."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
import pandas as pd  # noqa: E402

from petiq.logs import log_to  # noqa: E402
from petiq.sessions import plan_sessions, session_summary, write_plan  # noqa: E402

log = log_to(snakemake.log[0])
scoring = snakemake.params.scoring
splits = pd.read_csv(snakemake.input.splits, sep="\t", dtype=str)
rated = sorted(splits.loc[splits["role"].isin(scoring["rated_roles"]), "participant_id"])
log.info("rated patients (%s): %s", ", ".join(scoring["rated_roles"]), ", ".join(rated))
plan = plan_sessions(
    rated, snakemake.params.doses, design=scoring["design"], rereads=scoring["rereads"],
    n_sessions=scoring["sessions"]["count"], min_images=scoring["sessions"]["min_size"],
    max_images=scoring["sessions"]["max_size"], seed=snakemake.params.seed,
)
write_plan(plan, snakemake.output.key)
log.info("sessions:\n%s", session_summary(plan).to_string())

"""Rule sessions_plan: the blinded reading sessions (petiq.scoring.sessions.plan_sessions) of the rated patients."""

import pandas as pd

from petiq.core.logs import log_to
from petiq.scoring.sessions import plan_sessions, rated_patients, session_summary, write_plan

log = log_to(snakemake.log[0])
p = snakemake.params  # only the scoring keys the plan depends on (not the raters or the label rater)
splits = pd.read_csv(snakemake.input.splits, sep="\t", dtype=str)
rated = rated_patients(splits, p.rated_roles)
log.info("rated patients (%s): %s", ", ".join(p.rated_roles), ", ".join(rated))
plan = plan_sessions(
    rated,
    p.doses,
    design=p.design,
    rereads=p.rereads,
    n_sessions=p.sessions["count"],
    min_images=p.sessions["min_size"],
    max_images=p.sessions["max_size"],
    seed=p.seed,
)
write_plan(plan, snakemake.output.key)
log.info("sessions:\n%s", session_summary(plan).to_string())

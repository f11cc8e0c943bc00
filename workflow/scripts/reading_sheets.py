"""Rule reading_sheets: blinded sheets, one PDF and a blank form per session (petiq.scoring.sessions)."""

from pathlib import Path

from petiq.core.bids import norm01_path
from petiq.core.logs import log_to
from petiq.scoring.sessions import read_plan, write_session_materials

log = log_to(snakemake.log[0])
plan = read_plan(snakemake.input.key)
images = {Path(f).name: f for f in snakemake.input.images}


def image_path(participant_id, dose):
    return images[norm01_path("", participant_id, dose).name]


folder = Path(snakemake.output.pdfs[0]).parents[1]  # results/scores/sessions
folders = write_session_materials(plan, image_path, folder, progress=False)
log.info("reading material in %s", ", ".join(map(str, folders)))

"""Rule virtual_reader: measure the images, calibrate the reader to the paper, read the sessions
(petiq.scoring.measures.measure_images, calibrate_reader, virtual_ratings)."""

from pathlib import Path

from petiq.cohort.patients import read_participants
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.scoring.calibrate import calibrate_reader
from petiq.scoring.measures import measure_images
from petiq.scoring.reader import virtual_ratings
from petiq.scoring.sessions import read_plan

log = log_to(snakemake.log[0])
i, p, o = snakemake.input, snakemake.params, snakemake.output
participants = read_participants(i.participants)
plan = read_plan(i.key)
truths = {Path(t).name.split("_")[0]: t for t in i.truths}
measures = measure_images(list(i.images), truths, progress=False)
write_tsv(o.measures, measures)
log.info("measured %d images of %d patients", len(measures), len(truths))
model = calibrate_reader(measures, participants, plan, seed=p.seed, raters=p.raters)
model.write(o.params)
log.info("calibrated reader: %s", model.to_dict())
ratings = virtual_ratings(measures, participants, plan, model, raters=p.raters, seed=p.seed)
write_tsv(o.ratings, ratings)
log.info("%d readings by %d raters", len(ratings), ratings["rater"].nunique())

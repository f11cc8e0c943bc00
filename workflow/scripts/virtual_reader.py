"""Rule virtual_reader: measure the images, calibrate the reader to the paper, read the sessions
(petiq.scoring.reader.measure_images, calibrate_reader, virtual_ratings)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
from petiq.cohort.patients import read_participants  # noqa: E402
from petiq.core.fileio import write_tsv  # noqa: E402
from petiq.core.logs import log_to  # noqa: E402
from petiq.scoring.reader import calibrate_reader, measure_images, virtual_ratings  # noqa: E402
from petiq.scoring.sessions import read_plan  # noqa: E402

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

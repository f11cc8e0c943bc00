"""Rule scoring_figures: Figs. 2, 3, 6 and Table I from the ratings (petiq.plots.scoring, petiq.scoring.agreement)."""

from pathlib import Path

import pandas as pd

from petiq.cohort.patients import read_participants
from petiq.core.bids import norm01_path
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.plots.scoring import plot_fig02_intersession, plot_fig03_colour_scale, plot_fig06_scores_vs_dose
from petiq.scoring.agreement import check_ratings, colour_scale_example, table_I

log = log_to(snakemake.log[0])
i, o = snakemake.input, snakemake.output
ratings = check_ratings(pd.read_csv(i.ratings, sep="\t", dtype={"rater": str}), i.ratings)
participants = read_participants(i.participants)
write_tsv(o.table1, table_I(ratings))
plot_fig02_intersession(ratings, o.fig02)
fits = plot_fig06_scores_vs_dose(ratings, participants, o.fig06)
log.info("score against dose per weight:\n%s", fits.to_string())
example = colour_scale_example(ratings)  # Fig. 3's reading
images = {Path(f).name: f for f in i.images}
plot_fig03_colour_scale(
    images[norm01_path("", example["participant_id"], example["dose"]).name],
    {m: float(example[m]) for m in ("GQR", "PR", "DC")},
    o.fig03,
)
log.info("Fig. 3 shows %s at %g %%", example["participant_id"], example["dose"])

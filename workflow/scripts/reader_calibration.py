"""Rule reader_calibration: the readers' agreement and score ranges next to the paper's targets
(petiq.scoring.agreement.calibration_table), whether the ratings are real or virtual."""

import pandas as pd

from petiq.cohort.patients import read_participants
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.scoring.agreement import calibration_table, check_ratings

log = log_to(snakemake.log[0])
ratings = check_ratings(pd.read_csv(snakemake.input.ratings, sep="\t", dtype={"rater": str}), snakemake.input.ratings)
table = calibration_table(ratings, read_participants(snakemake.input.participants))
write_tsv(snakemake.output.tsv, table)
log.info(
    "%d of %d targets within tolerance:\n%s", int(table["within"].fillna(False).sum()), len(table), table.to_string()
)

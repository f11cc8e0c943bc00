"""Rule cohort_table: demographics per role (petiq.learning.splits.role_summary)."""

import pandas as pd

from petiq.cohort.patients import read_participants
from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.learning.splits import role_summary

log = log_to(snakemake.log[0])
table = role_summary(read_participants(snakemake.input.participants), pd.read_csv(snakemake.input.splits, sep="\t"))
write_tsv(snakemake.output.tsv, table)
log.info("\n%s", table.to_string(index=False))

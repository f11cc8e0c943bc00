"""Rule cohort_table: demographics per role (petiq.learning.splits.role_summary)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(snakemake.scriptdir).parents[1] / "src"))
import pandas as pd  # noqa: E402

from petiq.cohort.patients import read_participants  # noqa: E402
from petiq.core.fileio import write_tsv  # noqa: E402
from petiq.core.logs import log_to  # noqa: E402
from petiq.learning.splits import role_summary  # noqa: E402

log = log_to(snakemake.log[0])
table = role_summary(read_participants(snakemake.input.participants), pd.read_csv(snakemake.input.splits, sep="\t"))
write_tsv(snakemake.output.tsv, table)
log.info("\n%s", table.to_string(index=False))

"""Rule paper_comparison: every published number next to this run's (petiq.evaluation.paper.paper_comparison_file)."""

from petiq.core.logs import log_to
from petiq.evaluation.paper import paper_comparison_file

log = log_to(snakemake.log[0])
i = snakemake.input
table = paper_comparison_file(i.calibration, i.table2, i.table3, i.table4, i.fig10, snakemake.output.tsv)
log.info("%d published numbers, %d with a petiq value", len(table), int(table["petiq"].notna().sum()))

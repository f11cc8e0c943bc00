"""Rule table2_pretext: the pretext models' dose-per-weight MAE and % exact agreement on the pretext
validation patient's doses (petiq.evaluation.metrics.run_dose_metrics), next to the paper's Table II."""

from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.evaluation.metrics import labelled_metrics, read_reference, summarise

log = log_to(snakemake.log[0])
summary = summarise(labelled_metrics(snakemake.params.arms, "val", pretext=True), by=["arm", "score"])
summary = summary[summary["metric"].isin(["mae", "pct_exact"])]
paper = read_reference().query("table == 'table_II'").rename(columns={"row": "arm", "value": "paper"})
table = summary.merge(paper[["arm", "metric", "paper"]], on=["arm", "metric"], how="left")
table = table.rename(columns={"mean": "petiq", "sd": "petiq_sd"})[
    ["arm", "metric", "score", "petiq", "petiq_sd", "n_repeats", "paper"]
]
write_tsv(snakemake.output.tsv, table)
log.info("Table II (MAE in MBq/kg; exact = nearest of the patient's dose levels):\n%s", table.round(3).to_string())

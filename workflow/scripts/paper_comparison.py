"""Rule paper_comparison: every published number next to this run's (petiq.evaluation.metrics.comparison_table).

Tables I and the readers' agreement come from reader_calibration.tsv (its ``source`` column names the
paper row), Table II–IV from their tables, Fig. 10 from the pipelines' test MAE over all scores."""

import pandas as pd

from petiq.core.fileio import write_tsv
from petiq.core.logs import log_to
from petiq.evaluation.metrics import comparison_table, summarise

log = log_to(snakemake.log[0])
i = snakemake.input
KEYS = ["table", "row", "metric", "score"]


def read(path):
    return pd.read_csv(path, sep="\t")


def wide_table(path, table):
    """Table III/IV (row, score, <metric>, <metric>_sd, n_repeats) in the long comparison form."""
    df = read(path)
    metrics = [c for c in ("pct_exact", "pct_close", "mae", "spearman") if c in df.columns]
    rows = [
        {
            "table": table,
            "row": r["row"],
            "metric": m,
            "score": r["score"],
            "mean": r[m],
            "sd": r.get(f"{m}_sd"),
            "n_repeats": r["n_repeats"],
        }
        for _, r in df.iterrows()
        for m in metrics
    ]
    return pd.DataFrame(rows)


calibration = read(i.calibration)
paper_rows = calibration["source"].str.extract(r": (\S+) (\S+) (\S+) (\S+)$").set_axis(KEYS, axis=1)
readers = pd.concat([paper_rows, calibration[["achieved"]].rename(columns={"achieved": "mean"})], axis=1).dropna(
    subset=["table"]
)
table2 = read(i.table2).rename(columns={"arm": "row", "petiq": "mean", "petiq_sd": "sd"}).assign(table="table_II")
table2["score"] = "dose_per_weight"
fig10 = read(i.fig10)
fig10 = summarise(fig10[fig10["score"] == "all"], by=["arm", "score"]).query("metric == 'mae'")
fig10 = fig10.rename(columns={"arm": "row"}).assign(table="fig_10")
ours = pd.concat(
    [
        readers.assign(sd=float("nan"), n_repeats=pd.NA),
        table2[KEYS + ["mean", "sd", "n_repeats"]],
        wide_table(i.table3, "table_III"),
        wide_table(i.table4, "table_IV"),
        fig10[KEYS + ["mean", "sd", "n_repeats"]],
    ],
    ignore_index=True,
)
table = comparison_table(ours)
write_tsv(snakemake.output.tsv, table)
log.info("%d published numbers, %d with a petiq value", len(table), int(table["petiq"].notna().sum()))

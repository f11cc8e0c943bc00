"""Every published number next to this run's: the rule ``paper_comparison``
(:func:`paper_comparison_file`, on :func:`petiq.evaluation.metrics.comparison_table`).

Table I and the readers' agreement come from ``reader_calibration.tsv`` (its ``source`` column names
the paper row), Tables II–IV from their tables, Fig. 10 from the pipelines' test MAE over all scores.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..core.fileio import write_tsv
from .metrics import comparison_table, summarise

KEYS = ["table", "row", "metric", "score"]


def _read(path) -> pd.DataFrame:
    return pd.read_csv(path, sep="\t")


def wide_table(path, table: str) -> pd.DataFrame:
    """Table III/IV (row, score, <metric>, <metric>_sd, n_repeats) in the long comparison form."""
    df = _read(path)
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


def paper_comparison_file(calibration, table2, table3, table4, fig10, out_tsv: str | Path) -> pd.DataFrame:
    """This run's tables (reader calibration, Tables II–IV, Fig. 10's) → ``out_tsv``: every published
    number with this run's beside it (:func:`petiq.evaluation.metrics.comparison_table`)."""
    cal = _read(calibration)
    paper_rows = cal["source"].str.extract(r": (\S+) (\S+) (\S+) (\S+)$").set_axis(KEYS, axis=1)
    readers = pd.concat([paper_rows, cal[["achieved"]].rename(columns={"achieved": "mean"})], axis=1).dropna(
        subset=["table"]
    )
    t2 = _read(table2).rename(columns={"arm": "row", "petiq": "mean", "petiq_sd": "sd"}).assign(table="table_II")
    t2["score"] = "dose_per_weight"
    f10 = _read(fig10)
    f10 = summarise(f10[f10["score"] == "all"], by=["arm", "score"]).query("metric == 'mae'")
    f10 = f10.rename(columns={"arm": "row"}).assign(table="fig_10")
    ours = pd.concat(
        [
            readers.assign(sd=float("nan"), n_repeats=pd.NA),
            t2[KEYS + ["mean", "sd", "n_repeats"]],
            wide_table(table3, "table_III"),
            wide_table(table4, "table_IV"),
            f10[KEYS + ["mean", "sd", "n_repeats"]],
        ],
        ignore_index=True,
    )
    table = comparison_table(ours)
    write_tsv(out_tsv, table)
    return table

"""Experiment figures: Figs. 8–10 (boxplots over training runs) and Fig. 4 (the backbone survey).

Inputs are the long tables of :mod:`petiq.evaluation.metrics` (one row per repeat and score).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

from ..core.errors import PetiqInputError  # noqa: E402
from . import save_figure  # noqa: E402

PANELS = (("mae", "mean absolute error"), ("pct_exact", "% exact agreement"), ("pct_close", "% close agreement (±0.5)"))


def _check_columns(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise PetiqInputError(
            None, f"{what}: missing column(s) {missing}", "pass the long table of petiq.evaluation.metrics.run_metrics"
        )


def plot_boxplots(
    metrics_long_df: pd.DataFrame,
    x: str,
    order: Sequence,
    path: str | Path,
    xlabel: str,
    *,
    score: str = "all",
    title: str | None = None,
    panels: Sequence[str] = ("mae", "pct_exact", "pct_close"),
) -> None:
    """Figs. 8/9/10: MAE, % exact and % close agreement (one panel each) against ``x``, one box per arm.

    Each box summarises the arm's repeats (the middle line is the median); the repeats are drawn as points.
    The paper plots these "across all clinical metrics": ``score="all"`` (pooled GQR, PR and DC). The paper's
    Fig. 10 shows the MAE only (``panels=("mae",)``).
    """
    chosen = [(c, label) for c, label in PANELS if c in panels]
    if not chosen:
        raise PetiqInputError(
            None, f"plot_boxplots: panels {list(panels)} unknown", f"choose from {[c for c, _ in PANELS]}"
        )
    _check_columns(metrics_long_df, [x] + [c for c, _ in chosen], "plot_boxplots")
    df = metrics_long_df
    if "score" in df.columns:
        df = df[df["score"] == score]
    order = [str(o) for o in order]
    df = df.assign(**{x: df[x].astype(str)})
    unknown = sorted(set(df[x]) - set(order))
    if df.empty or unknown:
        raise PetiqInputError(
            None,
            f"plot_boxplots: no rows for score {score!r}" if df.empty else f"{x} values {unknown} not in order",
            f"list every {x} value in order",
        )
    fig, axes = plt.subplots(
        1, len(chosen), figsize=(4.2 * len(chosen) + 0.4 * max(0, len(order) - 6), 3.8), squeeze=False
    )
    for ax, (column, label) in zip(axes[0], chosen):
        with warnings.catch_warnings():  # seaborn 0.13 passes matplotlib 3.11 a deprecated boxplot argument
            warnings.simplefilter("ignore", matplotlib.MatplotlibDeprecationWarning)
            sns.boxplot(
                data=df,
                x=x,
                y=column,
                order=order,
                ax=ax,
                color="#9ecae1",
                width=0.6,
                showfliers=False,
                medianprops={"color": "black", "linewidth": 1.5},
            )
        sns.stripplot(data=df, x=x, y=column, order=order, ax=ax, color="#08306b", size=4, jitter=0.15, alpha=0.8)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(label)
        if max(len(o) for o in order) * len(order) > 30:  # long arm names (pipelines): slant them
            ax.tick_params(axis="x", labelrotation=25)
            for tick in ax.get_xticklabels():
                tick.set_horizontalalignment("right")
        if column.startswith("pct"):
            ax.set_ylim(-3, 103)
        else:
            ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    n = df.groupby(x)[chosen[0][0]].size()
    counts = sorted(set(n.values))
    runs = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    fig.suptitle(
        title or f"{'all clinical metrics' if score == 'all' else score}, {runs} training runs per box (points)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)


def plot_backbones(df: pd.DataFrame, path: str | Path, *, title: str | None = None) -> pd.DataFrame:
    """Fig. 4: test MAE of each backbone (mean over repeats, error bars ±1 SD, repeats as points).

    ``df`` has one row per (backbone, repeat) with columns backbone, mae (test, all metrics), best_val_loss and
    weights_origin. Backbones are ranked by their mean best validation loss (lowest first, as the paper chose its
    eleven). Backbones that trained from random weights, because no ImageNet weights could be had offline, are
    hatched and labelled "random init". Returns the plotted table (backbone, mae, sd, val, n, random), in plot order.
    """
    _check_columns(df, ["backbone", "mae", "best_val_loss", "weights_origin"], "plot_backbones")
    if "score" in df.columns:
        df = df[df["score"] == "all"]
    if df.empty:
        raise PetiqInputError(None, "plot_backbones: no rows", "evaluate the backbone survey runs first")
    random = df["weights_origin"].astype(str).str.lower().isin(["random", "none", "nan", ""])
    if "init" in df.columns:
        random |= df["init"].astype(str).str.lower() == "random"
    df = df.assign(random=random)
    stats = df.groupby("backbone").agg(
        mae=("mae", "mean"),
        sd=("mae", "std"),
        val=("best_val_loss", "mean"),
        n=("mae", "size"),
        random=("random", "any"),
    )
    stats = stats.sort_values("val", kind="stable")
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(stats) + 2), 4.0))
    xs = np.arange(len(stats))
    colours = ["#d9d9d9" if r else "#6baed6" for r in stats["random"]]
    bars = ax.bar(
        xs,
        stats["mae"],
        yerr=stats["sd"].fillna(0),
        color=colours,
        edgecolor="black",
        capsize=4,
        error_kw={"linewidth": 1},
    )
    for x, (name, row) in zip(xs, stats.iterrows()):
        if row["random"]:
            bars[x].set_hatch("//")
        points = df.loc[df["backbone"] == name, "mae"].to_numpy()
        ax.plot(np.full(points.size, x) + np.linspace(-0.12, 0.12, points.size), points, "o", color="#08306b", ms=3.5)
    labels = [
        f"{name}\nval {row['val']:.3g}" + ("\nrandom init" if row["random"] else "") for name, row in stats.iterrows()
    ]
    ax.set_xticks(
        xs, labels, fontsize=8, rotation=30 if len(stats) > 6 else 0, ha="right" if len(stats) > 6 else "center"
    )
    top = max(float((stats["mae"] + stats["sd"].fillna(0)).max()), float(df["mae"].max()))
    ax.set_ylim(0, 1.3 * top if top > 0 else 1.0)  # room for the legend above the bars
    ax.set_ylabel("test MAE, all clinical metrics")
    ax.set_xlabel("backbone, ranked by best validation loss (lowest first)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        handles=[
            Patch(facecolor="#6baed6", edgecolor="black", label="ImageNet weights"),
            Patch(facecolor="#d9d9d9", edgecolor="black", hatch="//", label="random weights (none offline)"),
        ],
        fontsize=8,
        loc="upper left",
    )
    n = sorted(set(stats["n"]))
    fig.suptitle(
        title or f"Backbone survey: mean ± SD over {n[0] if len(n) == 1 else f'{n[0]}–{n[-1]}'} training runs (points)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, path)
    return stats.reset_index()

"""Evaluation: how close a trained run's predictions come to the readers' scores (Sec. II.F, Tables II–IV, Figs. 8–10).

**An image's prediction** is the mean of the network's outputs over that image's patches (300 in the paper); the
training engine writes it as ``pred_<score>`` in each run's ``predictions_images.tsv``, with the standard deviation
over the patches as ``sd_<score>``. Evaluation uses these per-image means and keeps the spread as ``patch_sd`` (the
mean over images of the per-patch SD).

**Metrics** over the scored images of a set (rows whose target is present; the paper's 3 test patients × 3 scored
doses), per clinical score and over all three pooled (``score == "all"``, the paper's "across all clinical metrics"):

- ``mae``: mean absolute error of the raw (continuous) prediction; ``mae_rounded`` the same after :func:`quantise`;
- ``pct_exact``: % of images whose prediction rounded to the nearest 0.5 (:func:`quantise`) equals the score;
- ``pct_close``: % whose rounded prediction is within ±0.5 of the score;
- ``spearman``: Spearman's rank correlation of raw prediction and score (ties get average ranks; NaN when either
  side is constant or fewer than 2 images);
- ``n``: the number of (image, score) pairs.

Over repeats (``rep-<r>`` folders of one run) :func:`summarise` reports the mean and the sample SD (ddof = 1).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from ..core.errors import PetiqInputError

SCORES = ("GQR", "PR", "DC")
METRIC_COLUMNS = ("mae", "mae_rounded", "pct_exact", "pct_close", "spearman", "patch_sd")
ID_COLUMNS = ("experiment", "run", "repeat", "set", "score")
DOSE_SCORE = "dose_per_weight"  # the reference table's name for the pretext target (dose per body weight)
_TOL = 1e-9


def quantise(x) -> np.ndarray:
    """Round to the nearest 0.5 (halves round up) and clip to the 0–3 scale; NaN stays NaN.

    >>> quantise([-0.4, 0.24, 0.25, 1.74, 2.9, 3.6]).tolist()
    [0.0, 0.0, 0.5, 1.5, 3.0, 3.0]
    """
    x = np.asarray(x, dtype=float)
    return np.clip(np.floor(2.0 * x + 0.5) / 2.0, 0.0, 3.0)


def spearman(x, y) -> float:
    """Spearman's rank correlation: Pearson's r of the average ranks (NaN if either side is constant or n < 2).

    >>> round(spearman([1, 2, 3, 4], [10, 20, 30, 25]), 6)
    0.8
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape} and {y.shape}")
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denominator = float(np.sqrt((rx**2).sum() * (ry**2).sum()))
    if denominator == 0.0:
        return float("nan")
    return float((rx * ry).sum()) / denominator


def _pair_metrics(pred: np.ndarray, target: np.ndarray, sd: np.ndarray | None) -> dict:
    rounded = quantise(pred)
    diff = np.abs(rounded - target)
    return {
        "mae": float(np.mean(np.abs(pred - target))),
        "mae_rounded": float(np.mean(diff)),
        "pct_exact": 100.0 * float(np.mean(diff < _TOL)),
        "pct_close": 100.0 * float(np.mean(diff <= 0.5 + _TOL)),
        "spearman": spearman(pred, target),
        "patch_sd": float(np.nanmean(sd)) if sd is not None and np.isfinite(sd).any() else float("nan"),
        "n": int(pred.size),
    }


def image_metrics(
    df: pd.DataFrame, metrics: Sequence[str] = SCORES, *, source: str | Path | None = None
) -> pd.DataFrame:
    """Evaluation metrics of one run's per-image predictions: one row per score in ``metrics`` plus ``"all"``.

    ``df`` has ``target_<score>`` and ``pred_<score>`` (and optionally ``sd_<score>``) columns; rows without a target
    (unscored doses) are left out. Columns: score, mae, mae_rounded, pct_exact, pct_close, spearman, patch_sd, n.
    """
    missing = [c for m in metrics for c in (f"target_{m}", f"pred_{m}") if c not in df.columns]
    if missing:
        raise PetiqInputError(
            source,
            f"missing column(s) {missing}",
            "give per-image predictions with target_<score> and pred_<score> columns",
        )
    rows, pooled = [], {"pred": [], "target": [], "sd": []}
    for m in metrics:
        target = pd.to_numeric(df[f"target_{m}"], errors="coerce").to_numpy(float)
        pred = pd.to_numeric(df[f"pred_{m}"], errors="coerce").to_numpy(float)
        scored = np.isfinite(target)
        if not scored.any():
            raise PetiqInputError(
                source, f"no image has a {m} score", "evaluate a set whose images were scored (the test set)"
            )
        if not np.isfinite(pred[scored]).all():
            bad = int((~np.isfinite(pred[scored])).sum())
            raise PetiqInputError(
                source, f"{bad} scored image(s) have no finite pred_{m}", "retrain the run: its model predicts NaN"
            )
        sd = pd.to_numeric(df[f"sd_{m}"], errors="coerce").to_numpy(float)[scored] if f"sd_{m}" in df.columns else None
        rows.append({"score": m, **_pair_metrics(pred[scored], target[scored], sd)})
        pooled["pred"].append(pred[scored])
        pooled["target"].append(target[scored])
        pooled["sd"].append(sd if sd is not None else np.full(int(scored.sum()), np.nan))
    if len(metrics) > 1:
        rows.append({"score": "all", **_pair_metrics(*(np.concatenate(pooled[k]) for k in ("pred", "target", "sd")))})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------------------------
# Runs on disk: results/models/<experiment>/<run>/rep-<r>/predictions_images.tsv


def repeat_dirs(run_dirs: Iterable[str | Path] | str | Path, repeats: int | None = None) -> list[Path]:
    """The ``rep-<r>`` folders named, or found inside the run folders named (sorted by r; the first ``repeats``)."""
    if isinstance(run_dirs, (str, Path)):
        run_dirs = [run_dirs]
    found: list[Path] = []
    for run_dir in map(Path, run_dirs):
        if (run_dir / "predictions_images.tsv").is_file():
            found.append(run_dir)
            continue
        reps = sorted(
            (p for p in run_dir.glob("rep-*") if (p / "predictions_images.tsv").is_file()), key=_repeat_number
        )
        if not reps:
            raise PetiqInputError(
                run_dir,
                "no predictions_images.tsv here nor in rep-*/ folders",
                "train the run first, or point at results/models/<experiment>/<run> (or one of its rep-<r> folders)",
            )
        if repeats is not None and len(reps) < repeats:
            raise PetiqInputError(
                run_dir, f"{len(reps)} repeat(s) trained, {repeats} wanted", "train the missing repeats first"
            )
        found.extend(reps[:repeats])
    return found


def _repeat_number(path: Path) -> int:
    match = re.fullmatch(r"rep-(\d+)", path.name)
    return int(match.group(1)) if match else -1


def _run_identity(rep_dir: Path, index: int) -> dict:
    if re.fullmatch(r"rep-(\d+)", rep_dir.name):
        return {"experiment": rep_dir.parent.parent.name, "run": rep_dir.parent.name, "repeat": _repeat_number(rep_dir)}
    return {"experiment": rep_dir.parent.name, "run": rep_dir.name, "repeat": index}


def read_card(rep_dir: str | Path) -> dict:
    """A run's ``card.json`` ({} when absent)."""
    path = Path(rep_dir) / "card.json"
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PetiqInputError(path, f"not valid JSON ({error})", "rerun the training job that writes it") from None


def card_fields(card: Mapping) -> dict:
    """The card's facts the figures need: backbone, weights origin, freeze level, best validation loss and epoch."""
    weights = card.get("weights_origin", card.get("weights"))
    if isinstance(weights, Mapping):
        weights = weights.get("origin", weights.get("init"))
    init = card.get("init")
    if isinstance(init, Mapping):
        init = init.get("kind", init.get("name"))
    spec = card.get("spec") if isinstance(card.get("spec"), Mapping) else {}
    return {
        "backbone": card.get("backbone", spec.get("backbone")),
        "init": init if init is not None else spec.get("init"),
        "weights_origin": weights,
        "freeze_level": card.get("freeze_level", spec.get("freeze_level")),
        "best_val_loss": card.get("best_val_loss"),
        "best_epoch": card.get("best_epoch"),
    }


def read_predictions(rep_dir: str | Path, set: str | None = None) -> pd.DataFrame:
    """A repeat's ``predictions_images.tsv``, checked, optionally only the rows of one set (val/test)."""
    path = Path(rep_dir) / "predictions_images.tsv"
    if not path.is_file():
        raise PetiqInputError(
            path, "file not found", "train the run first (its rep-<r> folder holds predictions_images.tsv)"
        )
    df = pd.read_csv(path, sep="\t")
    missing = [c for c in ("set", "participant_id", "dose") if c not in df.columns]
    if missing:
        raise PetiqInputError(
            path, f"missing column(s) {missing}", "rewrite it with the training engine (petiq.learning.train)"
        )
    if set is not None:
        df = df[df["set"] == set]
        if df.empty:
            raise PetiqInputError(path, f"no rows of set {set!r}", "evaluate a set the run predicted (val or test)")
    return df.reset_index(drop=True)


def _targets_in(df: pd.DataFrame) -> list[str]:
    return [c[len("target_") :] for c in df.columns if c.startswith("target_")]


def run_metrics(
    run_dirs, set: str = "test", metrics: Sequence[str] = SCORES, repeats: int | None = None
) -> pd.DataFrame:
    """:func:`image_metrics` of every repeat: columns experiment, run, repeat, set, score, metrics…, n and card facts.

    ``repeats`` keeps only each run's first that many repeats (an arm may use fewer repeats than its run has).
    """

    def scores(rep: Path) -> pd.DataFrame:
        df = read_predictions(rep, set)
        if not all(f"target_{m}" in df.columns for m in metrics):
            raise PetiqInputError(
                rep / "predictions_images.tsv",
                f"predicts {_targets_in(df)}, not the clinical scores {list(metrics)}",
                "use run_dose_metrics for pretext (dose per weight) runs",
            )
        return image_metrics(df, metrics, source=rep / "predictions_images.tsv")

    return _per_repeat(run_dirs, repeats, set, scores)


def _per_repeat(run_dirs, repeats: int | None, set: str, metrics_of) -> pd.DataFrame:
    """``metrics_of(rep_dir)`` for every repeat, each labelled with its run, repeat, set and card facts."""
    frames = []
    for index, rep in enumerate(repeat_dirs(run_dirs, repeats)):
        table = metrics_of(rep)
        for key, value in {**_run_identity(rep, index), "set": set, **card_fields(read_card(rep))}.items():
            table[key] = value
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    first = [c for c in ID_COLUMNS if c in out.columns]
    return out[first + [c for c in out.columns if c not in first]]


def arm_metrics(
    arms: Iterable,
    models_dir: str | Path,
    set: str = "test",
    *,
    column: str = "arm",
    pretext: bool = False,
    levels: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Metrics of a figure's arms (objects with ``label``, ``run`` and ``repeats``, as ``petiq.learning.experiments.Arm``).

    Each arm's run lives in ``models_dir/<run>``; its first ``repeats`` repeats are evaluated and labelled with the
    arm's label in ``column`` (the x of :func:`petiq.plots.experiments.plot_boxplots`).
    """
    arm_dirs = {str(arm.label): repeat_dirs(Path(models_dir) / arm.run, arm.repeats) for arm in arms}
    return labelled_metrics(arm_dirs, set, column=column, pretext=pretext, levels=levels)


def labelled_metrics(
    arm_dirs: Mapping[str, Sequence[str | Path]],
    set: str = "test",
    *,
    column: str = "arm",
    pretext: bool = False,
    levels: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """Metrics of a figure's arms given as {label: its repeats' folders, or files inside them} (as the workflow
    passes them), labelled in ``column``: :func:`run_metrics`, or :func:`run_dose_metrics` for pretext runs."""
    frames = []
    for label, paths in arm_dirs.items():
        reps = [Path(p) if Path(p).is_dir() else Path(p).parent for p in paths]
        table = run_dose_metrics(reps, set, levels) if pretext else run_metrics(reps, set)
        table.insert(0, column, str(label))
        frames.append(table)
    if not frames:
        raise PetiqInputError(None, "no arms to evaluate", "pass the arms of one experiment (ExperimentPlan.arms[...])")
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------------------------
# The pretext task (Table II): dose per body weight


def dose_metrics(
    df: pd.DataFrame,
    levels: Mapping[str, Sequence[float]] | None = None,
    *,
    target: str = "dose_per_kg",
    source: str | Path | None = None,
) -> pd.DataFrame:
    """Table II's dose-inference metrics: MAE (in the target's unit) and % exact agreement.

    A prediction is exact when, of its patient's dose-per-weight levels (the seven simulated doses), the one nearest
    to it is the true one. ``levels`` maps participant_id to those levels; by default each patient's distinct
    targets in ``df`` (so ``df`` must then hold every dose of the patient). One row, score ``dose_per_weight``.
    """
    for column in ("participant_id", f"target_{target}", f"pred_{target}"):
        if column not in df.columns:
            raise PetiqInputError(
                source, f"missing column {column!r}", f"give pretext predictions with target_{target} and pred_{target}"
            )
    true = pd.to_numeric(df[f"target_{target}"], errors="coerce").to_numpy(float)
    pred = pd.to_numeric(df[f"pred_{target}"], errors="coerce").to_numpy(float)
    if not (np.isfinite(true).all() and np.isfinite(pred).all()):
        raise PetiqInputError(source, f"non-finite target_{target} or pred_{target}", "retrain the pretext run")
    exact = np.zeros(len(df), dtype=bool)
    for i, (pid, t, p) in enumerate(zip(df["participant_id"].astype(str), true, pred)):
        if levels is None:
            grid = np.unique(true[df["participant_id"].astype(str).to_numpy() == pid])
        elif pid in levels:
            grid = np.asarray(levels[pid], dtype=float)
        else:
            raise PetiqInputError(
                source, f"no dose levels given for {pid}", "pass every evaluated patient's dose-per-weight levels"
            )
        if not np.isclose(grid, t, rtol=1e-6, atol=1e-12).any():
            raise PetiqInputError(
                source,
                f"{pid}: true {target} {t:g} is not one of its levels {grid.tolist()}",
                "pass the patient's own levels",
            )
        exact[i] = np.isclose(grid[np.argmin(np.abs(grid - p))], t, rtol=1e-6, atol=1e-12)
    return pd.DataFrame(
        [
            {
                "score": DOSE_SCORE,
                "mae": float(np.mean(np.abs(pred - true))),
                "pct_exact": 100.0 * float(exact.mean()),
                "spearman": spearman(pred, true),
                "n": int(len(df)),
            }
        ]
    )


def run_dose_metrics(
    run_dirs, set: str = "val", levels: Mapping[str, Sequence[float]] | None = None, repeats: int | None = None
) -> pd.DataFrame:
    """:func:`dose_metrics` of every repeat of pretext runs (Table II evaluates the pretext validation patient)."""
    return _per_repeat(
        run_dirs,
        repeats,
        set,
        lambda rep: dose_metrics(read_predictions(rep, set), levels, source=rep / "predictions_images.tsv"),
    )


# --------------------------------------------------------------------------------------------------------------------
# Over repeats, paper-style tables and the comparison with the published numbers


def summarise(df: pd.DataFrame, by: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean and sample SD (ddof 1) over repeats, long: by…, metric, mean, sd, n_repeats.

    ``by`` defaults to the identity columns present among experiment, run, set, score.

    >>> df = pd.DataFrame({"run": "b", "repeat": [0, 1], "score": "all", "mae": [0.4, 0.6], "n": 9})
    >>> summarise(df)[["run", "score", "metric", "mean", "sd", "n_repeats"]].round(3).values.tolist()
    [['b', 'all', 'mae', 0.5, 0.141, 2]]
    """
    if by is None:
        by = [c for c in ("experiment", "run", "set", "score") if c in df.columns]
    by = list(by)
    metrics = [c for c in METRIC_COLUMNS if c in df.columns]
    if not metrics:
        raise PetiqInputError(
            None,
            f"no metric columns among {list(df.columns)}",
            "summarise the output of run_metrics or run_dose_metrics",
        )
    long = df.melt(id_vars=by, value_vars=metrics, var_name="metric", value_name="value")
    long = long[long["value"].notna()]
    grouped = long.groupby(by + ["metric"], sort=False)["value"]
    out = grouped.agg(mean="mean", sd=lambda v: float(v.std(ddof=1)) if len(v) > 1 else float("nan"), n_repeats="size")
    return out.reset_index()


def paper_table(
    summary: pd.DataFrame,
    rows: Mapping[str, str],
    *,
    by: str = "run",
    scores: Sequence[str] = SCORES,
    metrics: Sequence[str] = ("pct_exact", "pct_close", "mae", "spearman"),
) -> pd.DataFrame:
    """Tables III/IV as numbers: one line per (row, score) with ``<metric>`` and ``<metric>_sd`` columns.

    ``rows`` maps a value of column ``by`` (e.g. a run name) to the table's row name, in the table's order.
    """
    lines = []
    for key, name in rows.items():
        part = summary[summary[by] == key]
        if part.empty:
            raise PetiqInputError(
                None,
                f"no summary rows with {by} == {key!r}",
                f"evaluate the run first (known: {sorted(summary[by].unique())})",
            )
        for score in scores:
            cell = part[part["score"] == score].set_index("metric")
            line = {"row": name, "score": score}
            for m in metrics:
                line[m] = cell["mean"].get(m, np.nan)
                line[f"{m}_sd"] = cell["sd"].get(m, np.nan)
            line["n_repeats"] = int(cell["n_repeats"].max()) if not cell.empty else 0
            lines.append(line)
    return pd.DataFrame(lines)


def for_comparison(summary: pd.DataFrame, table: str, rows: Mapping[str, str], *, by: str = "run") -> pd.DataFrame:
    """Tag a :func:`summarise` table for :func:`comparison_table`: ``rows`` maps ``by`` values to the paper's row names."""
    part = summary[summary[by].isin(list(rows))].copy()
    part["row"] = part[by].map(dict(rows))
    part["table"] = table
    return part[["table", "row", "metric", "score", "mean", "sd", "n_repeats"]].reset_index(drop=True)


def read_reference(path: str | Path | None = None) -> pd.DataFrame:
    """The paper's published numbers (table, row, metric, score, value, sd); the packaged file by default."""
    if path is None:
        path = resources.files("petiq") / "data" / "reference_results.tsv"
    try:
        ref = pd.read_csv(
            path,
            sep="\t",
            comment="#",
            header=None,
            names=["table", "row", "metric", "score", "value", "sd"],
            dtype={"table": str, "row": str, "metric": str, "score": str},
        )
    except FileNotFoundError:
        raise PetiqInputError(path, "file not found", "point at src/petiq/data/reference_results.tsv") from None
    if (
        ref[["table", "row", "metric", "score"]].isna().any().any()
        or not np.isfinite(pd.to_numeric(ref["value"], errors="coerce")).all()
    ):
        raise PetiqInputError(
            path, "a line lacks table/row/metric/score or a numeric value", "keep six tab-separated columns per line"
        )
    return ref


def comparison_table(ours: pd.DataFrame, reference_tsv: str | Path | None = None) -> pd.DataFrame:
    """Every published number next to this run's: table, row, metric, score, paper, paper_sd, petiq, petiq_sd, n_repeats.

    ``ours`` has table, row, metric, score, a value column (``mean``, ``value`` or ``petiq``), optionally ``sd`` and
    ``n_repeats`` (see :func:`for_comparison`). Published numbers petiq did not compute get empty petiq columns;
    petiq numbers without a published counterpart are left out.
    """
    value = next((c for c in ("mean", "value", "petiq") if c in ours.columns), None)
    missing = [c for c in ("table", "row", "metric", "score") if c not in ours.columns] + ([] if value else ["mean"])
    if missing:
        raise PetiqInputError(None, f"our results lack column(s) {missing}", "build them with evaluate.for_comparison")
    mine = pd.DataFrame(
        {
            "table": ours["table"].astype(str),
            "row": ours["row"].astype(str),
            "metric": ours["metric"].astype(str),
            "score": ours["score"].astype(str),
            "petiq": pd.to_numeric(ours[value], errors="coerce"),
            "petiq_sd": pd.to_numeric(ours["sd"], errors="coerce") if "sd" in ours.columns else np.nan,
            "n_repeats": ours["n_repeats"] if "n_repeats" in ours.columns else np.nan,
        }
    )
    keys = ["table", "row", "metric", "score"]
    if mine.duplicated(keys).any():
        dup = mine[mine.duplicated(keys, keep=False)].iloc[0]
        raise PetiqInputError(None, f"two petiq values for {tuple(dup[keys])}", "tag each run with its own paper row")
    ref = read_reference(reference_tsv).rename(columns={"value": "paper", "sd": "paper_sd"})
    out = ref.merge(mine, on=keys, how="left")
    out["n_repeats"] = out["n_repeats"].astype("Int64")
    return out[keys + ["paper", "paper_sd", "petiq", "petiq_sd", "n_repeats"]]

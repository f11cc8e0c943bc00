"""Statistics of a ratings table, whatever its origin (real clinicians or the virtual reader).

A ratings table has the columns :data:`RATINGS_COLUMNS`: one row per reading of one image
(``participant_id``, ``dose`` in percent) by one ``rater`` in one ``session``; ``reading`` is
``first`` or ``repeat`` (a re-read in a later session); scores GQR, PR, DC in {0, 0.5, …, 3}.

The statistics follow Hopson et al. (2022): Table I (per rater, Pearson correlation between metric
pairs over first readings), inter-rater Pearson per metric and the share of scores within 0.5 of
the reference rater's (over all metrics), the share of re-read scores that differ by ≥ 0.5 from the
first reading (over all metrics of the re-read images) and the scores' linear fits against the
injected dose per body weight (Fig. 6). :func:`calibration_table` sets them beside the paper's
values (:func:`load_targets`).

The **reference rater** (the paper's clinician 1) is the rater who re-read images (most readings;
ties go to the first in sorted order) unless named.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import PetiqInputError

METRICS = ("GQR", "PR", "DC")
RATINGS_COLUMNS = ("participant_id", "dose", "rater", "session", "reading", "GQR", "PR", "DC")
READINGS = ("first", "repeat")
SCORES = tuple(x / 2 for x in range(7))
METRIC_PAIRS = (("GQR", "PR"), ("GQR", "DC"), ("PR", "DC"))
#: Doses (percent) of the dose-range targets: full dose and the lowest simulated dose.
FULL_DOSE, LOWEST_DOSE = 100.0, 0.5
#: Tolerances of the calibration targets, about two SDs of each statistic between draws of raters on
#: the paper's design (36 first readings, 9 re-reads; measured over 100 draws of the calibrated virtual
#: reader on the demo): Table I r SD ≈ 0.03, but the paper's two clinicians differ by up to 0.09 (GQR
#: vs DC 0.84 and 0.93) and one reader model is fitted to both, so ±0.08; inter-rater r SD ≈ 0.02,
#: ±0.06; within 0.5 SD ≈ 4.6 points (rater biases move it), ±9; re-reads SD ≈ 12 points (27 scores
#: of only 9 images, whose three metrics move together and saturate at 3 for a lenient rater), ±25.
TABLE_I_TOLERANCE, PEARSON_TOLERANCE, WITHIN_TOLERANCE, REREAD_TOLERANCE = 0.08, 0.06, 9.0, 25.0
TARGET_COLUMNS = ("quantity", "target", "tolerance", "rule", "source")
CALIBRATION_COLUMNS = ("quantity", "target", "achieved", "tolerance", "within", "rule", "source")


def check_ratings(ratings: pd.DataFrame, path: str | Path | None = None) -> pd.DataFrame:
    """Validate a ratings table; return a typed copy (dose float, scores float, ids str).

    >>> r = pd.DataFrame([["sub-01", 5, "a", 1, "first", 2, 1.5, 3]], columns=RATINGS_COLUMNS)
    >>> check_ratings(r)["dose"].dtype.kind
    'f'
    """
    missing = [c for c in RATINGS_COLUMNS if c not in ratings.columns]
    if missing:
        raise PetiqInputError(
            path, f"the ratings lack column(s) {missing}", f"give the columns {', '.join(RATINGS_COLUMNS)}"
        )
    out = ratings.loc[:, list(RATINGS_COLUMNS)].copy()
    out["participant_id"] = out["participant_id"].astype(str)
    out["rater"] = out["rater"].astype(str)
    out["reading"] = out["reading"].astype(str)
    try:
        out["dose"] = out["dose"].astype(float).round(4)
        for m in METRICS:
            out[m] = out[m].astype(float)
    except (TypeError, ValueError) as err:
        raise PetiqInputError(
            path, f"a dose or score is not a number ({err})", "write doses in percent and scores as numbers 0–3"
        ) from None
    bad_reading = sorted(set(out["reading"]) - set(READINGS))
    if bad_reading:
        raise PetiqInputError(path, f"unknown reading value(s) {bad_reading}", "write first or repeat")
    for m in METRICS:
        values = out[m].to_numpy()
        bad = ~np.isin(values, SCORES)
        if bad.any():
            row = int(np.nonzero(bad)[0][0])
            raise PetiqInputError(
                path,
                f"{m} score {values[row]} (row {row + 1}) is not one of 0, 0.5, …, 3",
                "score in 0.5 steps from 0 to 3",
            )
    dup = out.duplicated(["participant_id", "dose", "rater", "reading"])
    if dup.any():
        row = out[dup].iloc[0]
        raise PetiqInputError(
            path,
            f"rater {row['rater']} has two {row['reading']} readings of {row['participant_id']} at {row['dose']} %",
            "keep one first reading and at most one repeat per rater and image",
        )
    return out.reset_index(drop=True)


def reference_rater(ratings: pd.DataFrame) -> str:
    """The rater with the most readings (the one who re-read images); ties: first in sorted order.

    >>> r = pd.DataFrame({"rater": ["b", "a", "b"], "reading": ["first", "first", "repeat"]})
    >>> reference_rater(r)
    'b'
    """
    counts = ratings.groupby(ratings["rater"].astype(str)).size()
    if counts.empty:
        raise PetiqInputError(None, "the ratings table is empty", "give at least one reading")
    top = counts.max()
    return sorted(counts.index[counts == top])[0]


def colour_scale_example(ratings: pd.DataFrame) -> pd.Series:
    """The reading Fig. 3 shows: the reference rater's first reading of the first rated patient at its
    highest dose (noise spikes dominate the 0–1 scaling of low-dose images, so a high dose shows the
    colour scale best).

    >>> r = pd.DataFrame({"rater": ["a", "a", "a"], "reading": ["first", "first", "repeat"],
    ...                   "participant_id": ["sub-02", "sub-01", "sub-01"], "dose": [100.0, 5.0, 100.0]})
    >>> example = colour_scale_example(r)
    >>> example["participant_id"], float(example["dose"])
    ('sub-01', 5.0)
    """
    first = ratings[(ratings["rater"] == reference_rater(ratings)) & (ratings["reading"] == "first")]
    return first.sort_values(["participant_id", "dose"], ascending=[True, False]).iloc[0]


def raters_in_order(ratings: pd.DataFrame, reference: str | None = None) -> list[str]:
    """Reference rater first, then the others in sorted order."""
    reference = reference or reference_rater(ratings)
    return [reference] + sorted(set(ratings["rater"].astype(str)) - {reference})


def _first(ratings: pd.DataFrame, rater: str) -> pd.DataFrame:
    sel = ratings[(ratings["rater"] == rater) & (ratings["reading"] == "first")]
    return sel.set_index(["participant_id", "dose"])[list(METRICS)].sort_index()


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def table_I(ratings: pd.DataFrame, reference: str | None = None) -> pd.DataFrame:
    """Paper Table I: per rater, Pearson r between metric pairs over that rater's first readings."""
    ratings = check_ratings(ratings)
    rows = []
    for rater in raters_in_order(ratings, reference):
        first = _first(ratings, rater)
        for a, b in METRIC_PAIRS:
            rows.append(
                {"rater": rater, "pair": f"{a}_vs_{b}", "pearson": _pearson(first[a], first[b]), "n": len(first)}
            )
    return pd.DataFrame(rows, columns=["rater", "pair", "pearson", "n"])


def _paired_first(ratings: pd.DataFrame, reference: str, other: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    a, b = _first(ratings, reference), _first(ratings, other)
    common = a.index.intersection(b.index)
    return a.loc[common], b.loc[common]


def inter_rater(ratings: pd.DataFrame, reference: str | None = None, tolerance: float = 0.5) -> pd.DataFrame:
    """Each other rater against the reference rater's first readings: Pearson r per metric and the
    percentage of scores within ``tolerance`` (per metric and over all metrics, ``metric == "all"``)."""
    ratings = check_ratings(ratings)
    order = raters_in_order(ratings, reference)
    rows = []
    for other in order[1:]:
        a, b = _paired_first(ratings, order[0], other)
        for m in METRICS:
            within = 100.0 * float(np.mean(np.abs(a[m] - b[m]) <= tolerance + 1e-9)) if len(a) else float("nan")
            rows.append(
                {
                    "reference": order[0],
                    "rater": other,
                    "metric": m,
                    "pearson": _pearson(a[m], b[m]),
                    "pct_within": within,
                    "n": len(a),
                }
            )
        diffs = np.abs(a[list(METRICS)].to_numpy() - b[list(METRICS)].to_numpy())
        rows.append(
            {
                "reference": order[0],
                "rater": other,
                "metric": "all",
                "pearson": _pearson(a[list(METRICS)].to_numpy().ravel(), b[list(METRICS)].to_numpy().ravel()),
                "pct_within": 100.0 * float(np.mean(diffs <= tolerance + 1e-9)) if diffs.size else float("nan"),
                "n": int(diffs.size),
            }
        )
    return pd.DataFrame(rows, columns=["reference", "rater", "metric", "pearson", "pct_within", "n"])


def reread_differences(ratings: pd.DataFrame, rater: str | None = None) -> pd.DataFrame:
    """First and repeat scores of each re-read image and metric (long format, ``diff = repeat − first``)."""
    ratings = check_ratings(ratings)
    rater = rater or reference_rater(ratings)
    own = ratings[ratings["rater"] == rater]
    first = own[own["reading"] == "first"].set_index(["participant_id", "dose"])
    repeat = own[own["reading"] == "repeat"].set_index(["participant_id", "dose"])
    common = repeat.index.intersection(first.index)
    rows = []
    for key in common:
        for m in METRICS:
            f, r = float(first.loc[key, m]), float(repeat.loc[key, m])
            rows.append(
                {
                    "participant_id": key[0],
                    "dose": key[1],
                    "metric": m,
                    "first": f,
                    "repeat": r,
                    "diff": r - f,
                    "first_session": int(first.loc[key, "session"]),
                    "repeat_session": int(repeat.loc[key, "session"]),
                }
            )
    return pd.DataFrame(
        rows, columns=["participant_id", "dose", "metric", "first", "repeat", "diff", "first_session", "repeat_session"]
    )


def pct_reread_differing(ratings: pd.DataFrame, rater: str | None = None, threshold: float = 0.5) -> float:
    """Percentage of re-read scores (all metrics) at least ``threshold`` from the first reading."""
    diffs = reread_differences(ratings, rater)
    if diffs.empty:
        return float("nan")
    return 100.0 * float(np.mean(np.abs(diffs["diff"]) >= threshold - 1e-9))


def image_dose_per_kg(frame: pd.DataFrame, table: pd.DataFrame) -> pd.Series:
    """Injected dose per body weight (MBq/kg) of each row's image (``participant_id``, ``dose`` in %).

    ``table`` is either a per-image table (``participant_id``, ``dose``, ``dose_per_kg``) or the
    participants table (``participant_id``, ``injected_mbq``, ``weight_kg``: full dose), in which
    case the image's value is injected_mbq × dose / 100 / weight_kg.

    >>> p = pd.DataFrame({"participant_id": ["sub-01"], "injected_mbq": [200.0], "weight_kg": [80.0]})
    >>> image_dose_per_kg(pd.DataFrame({"participant_id": ["sub-01"], "dose": [50.0]}), p).tolist()
    [1.25]
    """
    keys = frame[["participant_id", "dose"]].astype({"participant_id": str, "dose": float}).copy()
    keys["dose"] = keys["dose"].round(4)
    if {"participant_id", "dose", "dose_per_kg"} <= set(table.columns):
        t = table[["participant_id", "dose", "dose_per_kg"]].astype({"participant_id": str, "dose": float}).copy()
        t["dose"] = t["dose"].round(4)
        t = t.drop_duplicates(["participant_id", "dose"])
        merged = keys.merge(t, on=["participant_id", "dose"], how="left")
        values = merged["dose_per_kg"]
    elif {"participant_id", "injected_mbq", "weight_kg"} <= set(table.columns):
        t = (
            table.assign(participant_id=table["participant_id"].astype(str))
            .drop_duplicates("participant_id")
            .set_index("participant_id")
        )
        full = keys["participant_id"].map(t["injected_mbq"].astype(float) / t["weight_kg"].astype(float))
        values = full * keys["dose"] / 100.0
    else:
        raise PetiqInputError(
            None,
            "the dose table has neither dose_per_kg per image nor injected_mbq and weight_kg per participant",
            "pass participants.tsv or a table with participant_id, dose, dose_per_kg",
        )
    missing = values.isna().to_numpy()
    if missing.any():
        row = keys[missing].iloc[0]
        raise PetiqInputError(
            None,
            f"no dose per kg for {row['participant_id']} at {row['dose']} %",
            "add the image (or patient) to the dose table",
        )
    return pd.Series(values.to_numpy(dtype=float), index=frame.index, name="dose_per_kg")


def score_dose_fits(ratings: pd.DataFrame, dose_table: pd.DataFrame, rater: str | None = None) -> pd.DataFrame:
    """Paper Fig. 6: per metric, least-squares line of a rater's first-reading scores against dose per kg."""
    ratings = check_ratings(ratings)
    rater = rater or reference_rater(ratings)
    first = ratings[(ratings["rater"] == rater) & (ratings["reading"] == "first")]
    x = image_dose_per_kg(first, dose_table).to_numpy()
    rows = []
    for m in METRICS:
        y = first[m].to_numpy(dtype=float)
        if len(x) >= 2 and np.ptp(x) > 0:
            slope, intercept = np.polyfit(x, y, 1)
        else:
            slope = intercept = float("nan")
        rows.append(
            {
                "rater": rater,
                "metric": m,
                "slope": float(slope),
                "intercept": float(intercept),
                "pearson": _pearson(x, y),
                "n": len(x),
            }
        )
    return pd.DataFrame(rows, columns=["rater", "metric", "slope", "intercept", "pearson", "n"])


def load_targets(path: str | Path | None = None) -> pd.DataFrame:
    """The calibration targets: the paper's Table I and rater agreement (``reference_results.tsv``)
    plus the dose-range statements of the issue.

    Rules: ``abs`` — within when |achieved − target| ≤ tolerance; ``min`` — within when achieved ≥ target.

    >>> t = load_targets()
    >>> t.set_index("quantity").loc["intra_rater.pct_reread_differing_ge_0.5", "target"]
    np.float64(44.0)
    """
    if path is None:
        ref = pd.read_csv(
            resources.files("petiq.data") / "reference_results.tsv",
            sep="\t",
            comment="#",
            header=None,
            names=["table", "row", "metric", "score", "value", "sd"],
        )
        source = "reference_results.tsv"
    else:
        if not Path(path).is_file():
            raise PetiqInputError(
                path, "the reference results file does not exist", "give the path of reference_results.tsv"
            )
        ref = pd.read_csv(
            path, sep="\t", comment="#", header=None, names=["table", "row", "metric", "score", "value", "sd"]
        )
        source = Path(path).name
    rows = []
    for r in ref.itertuples(index=False):
        where = f"{source}: {r.table} {r.row} {r.metric} {r.score}"
        if r.table == "table_I":
            rows.append((f"table_I.{r.row}.{r.score}", float(r.value), TABLE_I_TOLERANCE, "abs", where))
        elif r.table == "rater_agreement" and r.metric == "pearson":
            rows.append((f"inter_rater.pearson.{r.score}", float(r.value), PEARSON_TOLERANCE, "abs", where))
        elif r.table == "rater_agreement" and r.metric == "pct_within_0.5":
            rows.append(("inter_rater.pct_within_0.5", float(r.value), WITHIN_TOLERANCE, "abs", where))
        elif r.table == "rater_agreement" and r.metric == "pct_differing_ge_0.5":
            rows.append(("intra_rater.pct_reread_differing_ge_0.5", float(r.value), REREAD_TOLERANCE, "abs", where))
    if not rows:
        raise PetiqInputError(path, "no table_I or rater_agreement rows", "use petiq's reference_results.tsv format")
    issue = "issue 6 (paper Fig. 6 and text)"
    rows += [
        ("dose.pct_full_dose_2.5_to_3", 60.0, float("nan"), "min", issue + ": full-dose images mostly 2.5–3"),
        ("dose.pct_lowest_dose_0_to_1", 60.0, float("nan"), "min", issue + ": 0.5 % images mostly 0–1"),
        (
            "dose.slope_ratio_GQR_over_PR_DC",
            1.0,
            float("nan"),
            "min",
            issue + ": GQR rises most steeply with dose per kg",
        ),
        (
            "dose.pearson_ratio_GQR_over_PR_DC",
            1.0,
            float("nan"),
            "min",
            "paper Sec. IV: the correlation of GQR with dose per kg is stronger than that of PR and DC",
        ),
    ]
    return pd.DataFrame(rows, columns=list(TARGET_COLUMNS))


def achieved_values(ratings: pd.DataFrame, dose_table: pd.DataFrame, reference: str | None = None) -> dict[str, float]:
    """Every calibration quantity of :func:`load_targets` measured on ``ratings`` (NaN when not measurable,
    e.g. no second rater, no re-reads, or no image at full or lowest dose)."""
    ratings = check_ratings(ratings)
    order = raters_in_order(ratings, reference)
    out: dict[str, float] = {}
    t1 = table_I(ratings, order[0])
    for k, rater in enumerate(order[:2], start=1):
        for pair in (f"{a}_vs_{b}" for a, b in METRIC_PAIRS):
            sel = t1[(t1["rater"] == rater) & (t1["pair"] == pair)]
            out[f"table_I.clinician{k}.{pair}"] = float(sel["pearson"].iloc[0]) if len(sel) else float("nan")
    ir = inter_rater(ratings, order[0])
    for m in METRICS:
        out[f"inter_rater.pearson.{m}"] = (
            float(ir.loc[ir["metric"] == m, "pearson"].mean()) if len(ir) else float("nan")
        )
    out["inter_rater.pct_within_0.5"] = (
        float(ir.loc[ir["metric"] == "all", "pct_within"].mean()) if len(ir) else float("nan")
    )
    out["intra_rater.pct_reread_differing_ge_0.5"] = pct_reread_differing(ratings, order[0])
    first = ratings[ratings["reading"] == "first"]
    for name, dose, lo, hi in (
        ("dose.pct_full_dose_2.5_to_3", FULL_DOSE, 2.5, 3.0),
        ("dose.pct_lowest_dose_0_to_1", LOWEST_DOSE, 0.0, 1.0),
    ):
        scores = first.loc[np.isclose(first["dose"], dose), list(METRICS)].to_numpy()
        out[name] = 100.0 * float(np.mean((scores >= lo) & (scores <= hi))) if scores.size else float("nan")
    fits = score_dose_fits(ratings, dose_table, order[0]).set_index("metric")
    for column, name in (
        ("slope", "dose.slope_ratio_GQR_over_PR_DC"),
        ("pearson", "dose.pearson_ratio_GQR_over_PR_DC"),
    ):
        denominator = max(fits.loc["PR", column], fits.loc["DC", column])
        out[name] = float(fits.loc["GQR", column] / denominator) if denominator > 0 else float("nan")
    return out


def calibration_table(
    ratings: pd.DataFrame, dose_table: pd.DataFrame, targets: pd.DataFrame | None = None, reference: str | None = None
) -> pd.DataFrame:
    """Targets beside the values achieved by ``ratings`` (the workflow writes it as ``reader_calibration.tsv``).

    ``within`` is True/False, or NA where the quantity cannot be measured on these ratings.
    """
    targets = load_targets() if targets is None else targets
    achieved = achieved_values(ratings, dose_table, reference)
    rows = []
    for t in targets.itertuples(index=False):
        value = achieved.get(t.quantity, float("nan"))
        if np.isnan(value):
            within = pd.NA
        elif t.rule == "min":
            within = bool(value >= t.target)
        else:
            within = bool(abs(value - t.target) <= t.tolerance + 1e-9)
        rows.append(
            {
                "quantity": t.quantity,
                "target": t.target,
                "achieved": value,
                "tolerance": t.tolerance,
                "within": within,
                "rule": t.rule,
                "source": t.source,
            }
        )
    out = pd.DataFrame(rows, columns=list(CALIBRATION_COLUMNS))
    out["within"] = out["within"].astype("boolean")
    return out

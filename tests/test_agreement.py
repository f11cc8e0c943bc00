"""Rating statistics (petiq.scoring.agreement) against hand-made tables, and the scoring figures."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from petiq.core.errors import PetiqInputError
from petiq.scoring.agreement import (
    METRICS,
    RATINGS_COLUMNS,
    achieved_values,
    calibration_table,
    check_ratings,
    image_dose_per_kg,
    inter_rater,
    load_targets,
    pct_reread_differing,
    reference_rater,
    reread_differences,
    score_dose_fits,
    table_I,
)

# Five images read by rater "a" (two re-read in session 2) and by rater "b".
A_FIRST = {  # (participant, dose): (GQR, PR, DC)
    ("sub-01", 0.5): (0.0, 0.5, 0.5),
    ("sub-01", 100.0): (3.0, 2.5, 3.0),
    ("sub-02", 5.0): (1.5, 2.0, 2.0),
    ("sub-02", 50.0): (2.5, 3.0, 2.5),
    ("sub-03", 1.0): (1.0, 0.5, 1.0),
}
A_REPEAT = {("sub-01", 100.0): (3.0, 2.0, 3.0), ("sub-02", 5.0): (2.0, 2.0, 1.0)}
B_FIRST = {
    ("sub-01", 0.5): (0.5, 0.5, 0.0),
    ("sub-01", 100.0): (3.0, 3.0, 3.0),
    ("sub-02", 5.0): (1.0, 2.0, 1.0),
    ("sub-02", 50.0): (2.5, 2.5, 2.5),
    ("sub-03", 1.0): (1.0, 1.5, 1.0),
}
PARTICIPANTS = pd.DataFrame(
    {
        "participant_id": ["sub-01", "sub-02", "sub-03"],
        "injected_mbq": [200.0, 180.0, 220.0],
        "weight_kg": [80.0, 60.0, 110.0],
    }
)


def _ratings() -> pd.DataFrame:
    rows = []
    for (p, d), s in A_FIRST.items():
        rows.append((p, d, "a", 1, "first", *s))
    for (p, d), s in A_REPEAT.items():
        rows.append((p, d, "a", 2, "repeat", *s))
    for (p, d), s in B_FIRST.items():
        rows.append((p, d, "b", 1, "first", *s))
    return pd.DataFrame(rows, columns=list(RATINGS_COLUMNS))


def _column(table: dict, metric: str) -> np.ndarray:
    return np.array([table[k][METRICS.index(metric)] for k in sorted(table)])


def test_reference_rater_is_the_one_who_reread():
    assert reference_rater(_ratings()) == "a"


def test_table_I_matches_scipy_pearson():
    t = table_I(_ratings()).set_index(["rater", "pair"])
    for rater, table in (("a", A_FIRST), ("b", B_FIRST)):
        for x, y in (("GQR", "PR"), ("GQR", "DC"), ("PR", "DC")):
            expected = stats.pearsonr(_column(table, x), _column(table, y))[0]
            assert t.loc[(rater, f"{x}_vs_{y}"), "pearson"] == pytest.approx(expected)
            assert t.loc[(rater, f"{x}_vs_{y}"), "n"] == 5


def test_inter_rater_pearson_and_within_half():
    ir = inter_rater(_ratings()).set_index("metric")
    for m in METRICS:
        assert ir.loc[m, "pearson"] == pytest.approx(stats.pearsonr(_column(A_FIRST, m), _column(B_FIRST, m))[0])
    # by hand: |a − b| over the 15 scores: 0.5 0 0.5 | 0 0.5 0 | 0.5 0 1 | 0 0.5 0 | 0 1 0 → 13 of 15 within 0.5
    assert ir.loc["all", "pct_within"] == pytest.approx(100 * 13 / 15)
    assert ir.loc["DC", "pct_within"] == pytest.approx(80.0)


def test_reread_percentage_by_hand():
    diffs = reread_differences(_ratings())
    assert len(diffs) == 6 and set(diffs["repeat_session"]) == {2}
    # sub-01 100 %: 0, −0.5, 0; sub-02 5 %: +0.5, 0, −1 → 3 of 6 differ by ≥ 0.5
    assert pct_reread_differing(_ratings()) == pytest.approx(50.0)
    assert np.isnan(pct_reread_differing(_ratings(), rater="b"))


def test_image_dose_per_kg_from_participants_or_image_table():
    r = _ratings()
    from_participants = image_dose_per_kg(r, PARTICIPANTS)
    row = r.index[(r["participant_id"] == "sub-02") & (r["dose"] == 50.0)][0]
    assert from_participants[row] == pytest.approx(180.0 * 0.5 / 60.0)
    per_image = (
        r[["participant_id", "dose"]].drop_duplicates().assign(dose_per_kg=lambda f: image_dose_per_kg(f, PARTICIPANTS))
    )
    assert np.allclose(image_dose_per_kg(r, per_image), from_participants)
    with pytest.raises(PetiqInputError, match="no dose per kg for sub-09"):
        image_dose_per_kg(pd.DataFrame({"participant_id": ["sub-09"], "dose": [5.0]}), PARTICIPANTS)


def test_score_dose_fits_match_linregress():
    fits = score_dose_fits(_ratings(), PARTICIPANTS).set_index("metric")
    keys = sorted(A_FIRST)
    x = np.array(
        [
            PARTICIPANTS.set_index("participant_id").loc[p, "injected_mbq"]
            * d
            / 100
            / PARTICIPANTS.set_index("participant_id").loc[p, "weight_kg"]
            for p, d in keys
        ]
    )
    for m in METRICS:
        lr = stats.linregress(x, _column(A_FIRST, m))
        assert fits.loc[m, "slope"] == pytest.approx(lr.slope)
        assert fits.loc[m, "intercept"] == pytest.approx(lr.intercept)
        assert fits.loc[m, "pearson"] == pytest.approx(lr.rvalue)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.drop(columns=["PR"]), "lack column"),
        (lambda r: r.assign(GQR=[0.3] + list(r["GQR"][1:])), "not one of 0, 0.5"),
        (lambda r: r.assign(GQR=[3.5] + list(r["GQR"][1:])), "not one of 0, 0.5"),
        (lambda r: r.assign(reading=["second"] + list(r["reading"][1:])), "unknown reading"),
        (lambda r: pd.concat([r, r.iloc[:1]]), "two first readings"),
    ],
)
def test_check_ratings_rejects_bad_tables(change, message):
    with pytest.raises(PetiqInputError, match=message):
        check_ratings(change(_ratings()))


def test_load_targets_has_the_paper_values():
    t = load_targets().set_index("quantity")
    assert t.loc["table_I.clinician1.GQR_vs_DC", "target"] == pytest.approx(0.84)
    assert t.loc["table_I.clinician2.PR_vs_DC", "target"] == pytest.approx(0.99)
    assert t.loc["inter_rater.pearson.DC", "target"] == pytest.approx(0.90)
    assert t.loc["inter_rater.pct_within_0.5", "target"] == pytest.approx(91)
    assert t.loc["intra_rater.pct_reread_differing_ge_0.5", "target"] == pytest.approx(44)
    assert set(t["rule"]) == {"abs", "min"}
    assert len(t) == 15


def test_calibration_table_rules():
    r = _ratings()
    achieved = achieved_values(r, PARTICIPANTS)
    assert achieved["intra_rater.pct_reread_differing_ge_0.5"] == pytest.approx(50.0)
    assert achieved["dose.pct_full_dose_2.5_to_3"] == pytest.approx(100.0)  # both raters' 100 % scores are 2.5–3
    assert achieved["dose.pct_lowest_dose_0_to_1"] == pytest.approx(100.0)
    targets = pd.DataFrame(
        [
            ("intra_rater.pct_reread_differing_ge_0.5", 44.0, 5.0, "abs", "t"),
            ("intra_rater.pct_reread_differing_ge_0.5", 40.0, 20.0, "abs", "t"),
            ("dose.pct_full_dose_2.5_to_3", 60.0, np.nan, "min", "t"),
            ("no.such_quantity", 1.0, 1.0, "abs", "t"),
        ],
        columns=["quantity", "target", "tolerance", "rule", "source"],
    )
    table = calibration_table(r, PARTICIPANTS, targets)
    assert list(table.columns[:5]) == ["quantity", "target", "achieved", "tolerance", "within"]
    assert table["within"].tolist()[:3] == [False, True, True]
    assert pd.isna(table["within"].iloc[3])


def test_scoring_figures(tmp_path):
    from petiq.plots.scoring import plot_fig02_intersession, plot_fig06_scores_vs_dose

    diffs = plot_fig02_intersession(_ratings(), tmp_path / "fig02.png")
    assert len(diffs) == 6 and (tmp_path / "fig02.png").stat().st_size > 5000
    fits = plot_fig06_scores_vs_dose(_ratings(), PARTICIPANTS, tmp_path / "fig06.png")
    assert list(fits["metric"]) == list(METRICS) and (tmp_path / "fig06.png").stat().st_size > 5000
    with pytest.raises(PetiqInputError, match="no re-read"):
        plot_fig02_intersession(_ratings().query("reading == 'first'"), tmp_path / "none.png")

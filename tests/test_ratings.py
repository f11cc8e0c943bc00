"""Importing filled ratings forms: every form error is found, named and reported at once; a clean set unblinds."""

from __future__ import annotations

import pandas as pd
import pytest

from petiq.scoring.ratings import (
    METRICS,
    RATINGS_COLUMNS,
    RatingsFormError,
    check_ratings_table,
    import_ratings,
    parse_score,
    rater_summary,
)
from petiq.scoring.sessions import FORM_COLUMNS, blank_form, plan_sessions, write_plan

PATIENTS = ["sub-01", "sub-02", "sub-03"]
DOSES = (0.5, 1, 5, 10, 25, 50, 100)


@pytest.fixture(scope="module")
def plan():
    return plan_sessions(PATIENTS, DOSES, design="paper", rereads=2, n_sessions=4, min_images=2, max_images=4, seed=11)


@pytest.fixture()
def key(tmp_path, plan):
    path = tmp_path / "private" / "unblinding_key.tsv"
    write_plan(plan, path)
    return path


def score_of(plan, rater):
    """A made-up reader: scores rise with dose, rater B half a point lower at high dose."""
    dose = dict(zip(plan["blinded_id"], plan["dose"]))

    def score(bid, metric):
        base = {0.5: 0.5, 1.0: 1.0, 5.0: 1.5, 10.0: 2.0}.get(dose[bid], 3.0)
        return base - (0.5 if rater == "B" and base == 3.0 else 0) - (0.5 if metric == "DC" and base > 0.5 else 0)

    return score


def fill(plan, session, rater, folder):
    """A filled copy of a session's form, as a reader returns it; the path."""
    form = blank_form(plan, session)
    form["rater"] = rater
    score = score_of(plan, rater)
    for metric in METRICS:
        form[metric] = [f"{score(b, metric):g}" for b in form["blinded_id"]]
    path = folder / f"session-{session}_{rater}.tsv"
    form.to_csv(path, sep="\t", index=False)
    return path


@pytest.fixture()
def forms(tmp_path, plan):
    folder = tmp_path / "filled"
    folder.mkdir()
    return [fill(plan, s, r, folder) for s in sorted(plan["session"].unique()) for r in ("A", "B")]


def edit(path, line, column, value):
    """Set one cell (line counts the header as 1)."""
    rows = [r.split("\t") for r in path.read_text().splitlines()]
    rows[line - 1][rows[0].index(column)] = value
    path.write_text("\n".join("\t".join(r) for r in rows) + "\n")


def test_round_trip_plan_forms_import(tmp_path, plan, key, forms):
    out = tmp_path / "scores" / "ratings.tsv"
    ratings = import_ratings([tmp_path / "filled"], key, out)
    written = pd.read_csv(out, sep="\t")
    assert list(written.columns) == list(RATINGS_COLUMNS)
    assert len(written) == 2 * len(plan)
    # every reading of the key comes back once per rater, unblinded to its patient, dose, session and reading
    expected = pd.concat([plan.assign(rater=r) for r in ("A", "B")])
    merged = written.merge(
        expected, on=["participant_id", "dose", "rater", "session", "reading"], how="outer", indicator=True
    )
    assert (merged["_merge"] == "both").all()
    assert (written["reading"] == "repeat").sum() == 4
    for _, row in merged.iterrows():
        score = score_of(plan, row["rater"])
        assert row["GQR"] == score(row["blinded_id"], "GQR") and row["DC"] == score(row["blinded_id"], "DC")
    summary = rater_summary(ratings)
    assert summary.to_dict("records")[0] == {
        "rater": "A",
        "readings": len(plan),
        "first": 9,
        "repeat": 2,
        "sessions": "1,2,3,4",
    }


def test_one_form_with_two_raters_lowercase_ids_bom_and_blank_lines(tmp_path, plan, key):
    rows = []
    for rater in ("A", "B"):
        for s in sorted(plan["session"].unique()):
            form = blank_form(plan, s)
            form["blinded_id"] = form["blinded_id"].str.lower()
            form["rater"], form["GQR"], form["PR"], form["DC"], form["comment"] = f" {rater} ", "2", "2.0", "1.5", "ok"
            rows.append(form)
    path = tmp_path / "all.tsv"
    path.write_text("\ufeff" + pd.concat(rows).to_csv(sep="\t", index=False) + "\n\n")
    ratings = import_ratings([path], key, tmp_path / "ratings.tsv")
    assert set(ratings["rater"]) == {"A", "B"} and (ratings["PR"] == 2.0).all() and len(ratings) == 2 * len(plan)


def first_id_line(plan, session):
    return sorted(plan.loc[plan["session"] == session, "blinded_id"])[0], 2


@pytest.mark.parametrize(
    "column, value, what",
    [
        ("GQR", "", "is blank"),
        ("PR", "3.5", "'3.5' is outside 0–3"),
        ("DC", "-0.5", "'-0.5' is outside 0–3"),
        ("GQR", "1.3", "'1.3' is not a step of 0.5"),
        ("PR", "good", "'good' is not a number"),
        ("DC", "2,5", "'2,5' uses a decimal comma"),
        ("GQR", "nan", "'nan' is outside 0–3"),
        ("rater", "", "is blank"),
        ("blinded_id", "", "is blank"),
        ("blinded_id", "ZZZZZZ", "'ZZZZZZ' is not in the unblinding key"),
    ],
)
def test_each_cell_error_names_file_line_and_column(tmp_path, key, forms, column, value, what):
    edit(forms[0], 2, column, value)
    out = tmp_path / "ratings.tsv"
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms, key, out)
    problem = next(p for p in caught.value.problems if p.line == 2)
    assert (problem.path, problem.column) == (str(forms[0]), column) and what in problem.what
    assert f"{forms[0]}, line 2, column {column}: {what}" in str(caught.value)
    assert not out.exists()


def test_missing_and_duplicate_ids(tmp_path, plan, key, forms):
    lines = forms[0].read_text().splitlines()
    forms[0].write_text("\n".join(lines[:1] + lines[2:] + [lines[2]]) + "\n")  # drop row 1, repeat row 2
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms, key, tmp_path / "ratings.tsv")
    whats = [(p.line, p.what) for p in caught.value.problems]
    dropped = lines[1].split("\t")[0]
    repeated = lines[2].split("\t")[0]
    assert (len(lines), f"{repeated} is scored again by rater 'A' (first at {forms[0]}, line 2)") in whats
    missing = [w for line, w in whats if line is None]
    assert len(missing) == 1 and f"missing ['{dropped}']" in missing[0] and "rater 'A' scored" in missing[0]


def test_same_image_scored_in_two_forms(tmp_path, plan, key, forms):
    extra = tmp_path / "copy.tsv"
    extra.write_text(forms[0].read_text())
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms + [extra], key, tmp_path / "ratings.tsv")
    assert all("is scored again by rater 'A'" in p.what and p.path == str(extra) for p in caught.value.problems)
    assert len(caught.value.problems) == len(blank_form(plan, 1))


def test_session_without_any_form_unless_partial(tmp_path, plan, key, forms):
    last = max(plan["session"])
    kept = [f for f in forms if not f.name.startswith(f"session-{last}_")]
    with pytest.raises(RatingsFormError, match=f"no form holds scores of session {last}"):
        import_ratings(kept, key, tmp_path / "ratings.tsv")
    ratings = import_ratings(kept, key, tmp_path / "ratings.tsv", partial=True)
    assert last not in set(ratings["session"])


@pytest.mark.parametrize(
    "header, what",
    [
        (["blinded_id", "rater", "GQR", "PR", "comment"], ("DC", "the column is missing")),
        (["blinded_id", "rater", "GQR", "PR", "DC", "notes"], ("notes", "unknown column")),
        (["blinded_id", "rater", "GQR", "GQR", "PR", "DC"], ("GQR", "the column appears more than once")),
    ],
)
def test_wrong_columns(tmp_path, key, forms, header, what):
    forms[0].write_text("\t".join(header) + "\n" + "\t".join(["X"] * len(header)) + "\n")
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms, key, tmp_path / "ratings.tsv")
    assert any((p.path, p.line, p.column, p.what) == (str(forms[0]), 1, *what) for p in caught.value.problems)


@pytest.mark.parametrize(
    "text, what",
    [
        ("blinded_id,rater,GQR,PR,DC,comment\nABCDEF,A,1,1,1,\n", "not tab-separated"),
        ("", "the form is empty"),
        ("\t".join(FORM_COLUMNS) + "\n", "the form has no rows"),
        (None, "the file does not exist"),
        (b"blinded_id\trater\nABC\xe9\t1\n", "not UTF-8"),
    ],
)
def test_unreadable_forms(tmp_path, key, forms, text, what):
    if text is None:
        forms[0].unlink()
    elif isinstance(text, bytes):
        forms[0].write_bytes(text)
    else:
        forms[0].write_text(text)
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms, key, tmp_path / "ratings.tsv")
    assert any(p.path == str(forms[0]) and what in p.what for p in caught.value.problems)


def test_row_with_extra_cells(tmp_path, key, forms):
    lines = forms[0].read_text().splitlines()
    lines[1] += "\tstray"
    forms[0].write_text("\n".join(lines) + "\n")
    with pytest.raises(RatingsFormError, match=r"line 2: the row has 7 cells but the header 6"):
        import_ratings(forms, key, tmp_path / "ratings.tsv")


def test_all_problems_across_forms_reported_together(tmp_path, key, forms):
    edit(forms[0], 2, "GQR", "4")
    edit(forms[3], 3, "rater", "")
    edit(forms[5], 2, "DC", "x")
    out = tmp_path / "ratings.tsv"
    with pytest.raises(RatingsFormError) as caught:
        import_ratings(forms, key, out)
    found = {(p.path, p.line, p.column) for p in caught.value.problems}
    assert {(str(forms[0]), 2, "GQR"), (str(forms[3]), 3, "rater"), (str(forms[5]), 2, "DC")} <= found
    assert "nothing was written" in str(caught.value) and not out.exists()


def test_no_forms_and_missing_key(tmp_path, key):
    with pytest.raises(RatingsFormError, match="no ratings forms were given"):
        import_ratings([], key, tmp_path / "ratings.tsv")
    from petiq.core.errors import PetiqInputError

    with pytest.raises(PetiqInputError, match="the unblinding key does not exist"):
        import_ratings([], tmp_path / "nokey.tsv", tmp_path / "ratings.tsv")


def test_parse_score_accepts_every_step():
    assert [parse_score(f"{v:g}")[0] for v in (0, 0.5, 1, 1.5, 2, 2.5, 3)] == [0, 0.5, 1, 1.5, 2, 2.5, 3]
    assert parse_score("3.25")[1] == "'3.25' is outside 0–3"


def test_check_ratings_table(tmp_path, key, forms):
    out = tmp_path / "ratings.tsv"
    good = import_ratings(forms, key, out)
    pd.testing.assert_frame_equal(check_ratings_table(out), good, check_dtype=False)
    lines = out.read_text().splitlines()
    first = next(line for line in lines[2:] if line.split("\t")[4] == "first")
    lines[1] = "\t".join(["", "7", "", "0", "again", "9", "1", "1"])
    lines.append(first)  # a second first reading of the same image by the same rater
    out.write_text("\n".join(lines) + "\n")
    with pytest.raises(RatingsFormError) as caught:
        check_ratings_table(out)
    found = {(p.line, p.column) for p in caught.value.problems}
    assert {
        (2, "participant_id"),
        (2, "rater"),
        (2, "session"),
        (2, "reading"),
        (2, "GQR"),
        (len(lines), None),
    } <= found


def test_cli_import_reports_problems_then_imports(tmp_path, key, forms, capsys):
    from petiq.cli import main

    out = tmp_path / "ratings.tsv"
    edit(forms[1], 2, "PR", "5")
    argv = ["ratings", "import", "--forms", str(tmp_path / "filled"), "--key", str(key), "--out", str(out)]
    assert main(argv) == 2 and not out.exists()
    assert f"{forms[1]}, line 2, column PR: '5' is outside 0–3" in capsys.readouterr().err
    edit(forms[1], 2, "PR", "2.5")
    assert main(argv) == 0 and main(["ratings", "check", str(out)]) == 0
    assert "no problems found" in capsys.readouterr().out

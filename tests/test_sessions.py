"""The reading-session programme's constraints, its failures, and the session materials (sheets, PDF, forms, key)."""

from __future__ import annotations

from functools import partial

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

import petiq.scoring.sessions as sessions
from petiq.core.bids import norm01_path
from petiq.core.doses import PAPER_DOSES, dose_category
from petiq.core.errors import PetiqInputError
from petiq.scoring.sessions import (
    ALPHABET,
    FORM_COLUMNS,
    PLAN_COLUMNS,
    blank_form,
    plan_sessions,
    read_plan,
    session_summary,
    write_plan,
    write_session_materials,
)

PATIENTS = [f"sub-{i:02d}" for i in range(1, 7)]
PAPER = dict(design="paper", rereads=5, n_sessions=5, min_images=4, max_images=5)


@pytest.fixture(scope="module")
def paper_plan():
    return plan_sessions(PATIENTS, PAPER_DOSES, seed=7, **PAPER)


def check_common(plan, n_sessions, min_images, max_images, rereads):
    """Constraints every plan meets, whatever the design."""
    assert list(plan.columns) == list(PLAN_COLUMNS)
    assert plan["blinded_id"].is_unique
    assert all(len(b) == 6 and set(b) <= set(ALPHABET) for b in plan["blinded_id"])
    assert set(plan["session"]) <= set(range(1, n_sessions + 1))
    sizes = plan.groupby("session").size().reindex(range(1, n_sessions + 1), fill_value=0)
    assert sizes.between(min_images, max_images).all(), sizes.tolist()
    # a patient at most once per session, first readings and re-reads alike
    assert not plan.duplicated(["participant_id", "session"]).any()
    first = plan[plan["reading"] == "first"]
    repeat = plan[plan["reading"] == "repeat"]
    assert not first.duplicated(["participant_id", "dose"]).any()
    assert len(repeat) == rereads and not repeat.duplicated(["participant_id", "dose"]).any()
    first_session = first.set_index(["participant_id", "dose"])["session"]
    for _, row in repeat.iterrows():  # each re-read in a later session than its first reading
        assert row["session"] > first_session[row["participant_id"], row["dose"]]
    assert (plan["category"] == [dose_category(d) for d in plan["dose"]]).all()


def test_paper_design_meets_every_constraint(paper_plan):
    plan = paper_plan
    check_common(plan, **{k: PAPER[k] for k in ("n_sessions", "min_images", "max_images", "rereads")})
    first = plan[plan["reading"] == "first"]
    # one dose per category per patient
    assert sorted(first["participant_id"]) == sorted(PATIENTS * 3)
    assert (first.groupby(["participant_id", "category"]).size() == 1).all()
    # categories balanced within every session: each within one of a third of the session
    counts = pd.crosstab(plan["session"], plan["category"])
    size = counts.sum(axis=1)
    assert ((counts.sub(size / 3, axis=0)).abs() < 1).all().all(), counts
    # re-reads spread over the categories, and over patients (at most one each here)
    assert plan.loc[plan["reading"] == "repeat", "category"].value_counts().between(1, 2).all()
    assert plan.loc[plan["reading"] == "repeat", "participant_id"].is_unique
    # doses within a category spread evenly over the six patients (low: 3 + 3; high: 2 + 2 + 2)
    assert first.loc[first["category"] == "low", "dose"].value_counts().tolist() == [3, 3]
    assert first.loc[first["category"] == "high", "dose"].value_counts().tolist() == [2, 2, 2]
    # sessions as even as the total allows (23 readings in 5 sessions: 4 or 5 each)
    assert plan.groupby("session").size().max() - plan.groupby("session").size().min() <= 1


def test_all_doses_design_reads_every_dose_balanced_by_share():
    doses = (0.5, 1, 5, 25)  # low has half of each patient's images
    plan = plan_sessions(
        PATIENTS[:3], doses, design="all_doses", rereads=3, n_sessions=6, min_images=2, max_images=3, seed=1
    )
    check_common(plan, 6, 2, 3, 3)
    first = plan[plan["reading"] == "first"]
    assert sorted(zip(first["participant_id"], first["dose"])) == sorted((p, d) for p in PATIENTS[:3] for d in doses)
    shares = {"low": 0.5, "medium": 0.25, "high": 0.25}
    for s, part in plan.groupby("session"):
        for category, share in shares.items():
            assert abs((part["category"] == category).sum() - share * len(part)) < 1, (s, category)


def test_same_seed_same_plan_other_seed_other_plan(paper_plan):
    again = plan_sessions(PATIENTS, PAPER_DOSES, seed=7, **PAPER)
    pd.testing.assert_frame_equal(again, paper_plan)
    other = plan_sessions(PATIENTS, PAPER_DOSES, seed=8, **PAPER)
    assert set(other["blinded_id"]).isdisjoint(paper_plan["blinded_id"])
    assert not other.drop(columns="blinded_id").equals(paper_plan.drop(columns="blinded_id"))


def test_blinded_ids_do_not_follow_patients_or_doses(paper_plan):
    # neither the id order nor the reading order within a session follows patient or dose order
    by_id = paper_plan.sort_values("blinded_id")
    assert not by_id["participant_id"].is_monotonic_increasing
    assert not by_id["dose"].is_monotonic_increasing
    first_session = paper_plan[paper_plan["session"] == 1]
    assert list(first_session["blinded_id"]) == sorted(first_session["blinded_id"])  # reading order = id order


def test_session_summary(paper_plan):
    summary = session_summary(paper_plan)
    assert list(summary.columns) == ["session", "low", "medium", "high", "first", "repeat", "total"]
    assert summary["total"].sum() == 23 and summary["repeat"].sum() == 5
    assert (summary[["low", "medium", "high"]].sum(axis=1) == summary["total"]).all()


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(rereads=19), "19 re-reads asked for but only 18 images are read"),
        (dict(rereads=1, n_sessions=1, min_images=1, max_images=30), "re-reads need a later session"),
        (dict(n_sessions=2, rereads=0, min_images=1, max_images=20), "so 3 sessions are needed, not 2"),
        (dict(n_sessions=4, rereads=7, min_images=1), "4 sessions leave room for at most 6 re-reads"),
        (dict(max_images=4), "23 readings (18 images + 5 re-reads) do not fit in 5 sessions of at most 4"),
        (dict(min_images=5, max_images=6), "23 readings (18 images + 5 re-reads) cannot fill 5 sessions of at least 5"),
        (dict(min_images=6, max_images=5), "min_images (6) is above max_images (5)"),
        (dict(design="some"), "unknown session design 'some'"),
        (dict(n_sessions=0), "n_sessions is 0"),
        (dict(rereads=-1), "rereads is -1"),
    ],
)
def test_infeasible_settings_fail_with_the_reason(settings, message):
    with pytest.raises(PetiqInputError) as caught:
        plan_sessions(PATIENTS, PAPER_DOSES, seed=1, **{**PAPER, **settings})
    assert message in str(caught.value) and "Fix:" in str(caught.value)


def test_bad_patients_and_doses():
    with pytest.raises(PetiqInputError, match="listed more than once"):
        plan_sessions(["sub-01", "sub-01"], PAPER_DOSES, seed=1, **PAPER)
    with pytest.raises(PetiqInputError, match="no patients to rate"):
        plan_sessions([], PAPER_DOSES, seed=1, **PAPER)
    with pytest.raises(PetiqInputError, match="dose 0.0 % is outside"):
        plan_sessions(PATIENTS, [0, 5], seed=1, **PAPER)


def test_solver_infeasibility_names_the_constraint_to_blame(monkeypatch):
    """Past the up-front checks, the programme itself names the constraint family that admits no plan."""
    real_check = sessions.check_session_settings

    def lenient(ids, doses, design, rereads, n_sessions, min_images, max_images, names=None):
        return real_check(ids, doses, design, 0, n_sessions, 0, 100)  # skip the size checks

    monkeypatch.setattr(sessions, "check_session_settings", lenient)
    with pytest.raises(PetiqInputError) as caught:  # 6 images do not fit 3 sessions of 1
        plan_sessions(
            PATIENTS[:2], (1, 5, 25), design="paper", rereads=0, n_sessions=3, min_images=1, max_images=1, seed=1
        )
    text = str(caught.value)
    assert "cannot be split into sessions of 1 to 1 images" in text
    assert "balanced" not in text and "at most once per session" not in text


# --- materials: key, sheets, PDF, forms -------------------------------------------------------------


def synthetic_recon(root, patients, doses, shape=(20, 22, 12)):
    """0–1 scaled blobs, noisier at lower dose."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, n) for n in shape], indexing="ij"))
    head = np.exp(-((grid**2).sum(0)) * 3)
    for p in patients:
        for d in doses:
            image = np.clip(head + rng.normal(0, 0.3 / np.sqrt(d), shape), 0, None).astype(np.float32)
            path = norm01_path(root, p, d)
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(image / image.max(), np.diag([2.0, 2.0, 2.5, 1.0])), str(path))


@pytest.fixture(scope="module")
def materials(tmp_path_factory):
    root = tmp_path_factory.mktemp("sessions")
    patients, doses = PATIENTS[:2], (1, 5, 25)
    synthetic_recon(root / "recon", patients, doses)
    plan = plan_sessions(patients, doses, design="paper", rereads=1, n_sessions=4, min_images=1, max_images=2, seed=3)
    out = root / "scores" / "sessions"
    write_plan(plan, out / "private" / "unblinding_key.tsv")
    folders = write_session_materials(plan, partial(norm01_path, root / "recon"), out, progress=False)
    return plan, out, folders


def test_sheets_pdf_and_forms_are_written_per_session(materials):
    plan, out, folders = materials
    assert [f.name for f in folders] == [f"session-{s}" for s in sorted(plan["session"].unique())]
    for folder in folders:
        s = int(folder.name.split("-")[1])
        ids = sorted(plan.loc[plan["session"] == s, "blinded_id"])
        assert sorted(p.stem for p in (folder / "sheets").glob("*.png")) == ids
        for png in (folder / "sheets").glob("*.png"):
            assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pdf = (folder / f"session-{s}.pdf").read_bytes()
        assert pdf.startswith(b"%PDF") and pdf.count(b"/Type /Page\n") + pdf.count(b"/Type /Page ") == len(ids)
        form = pd.read_csv(folder / f"session-{s}_ratings-form.tsv", sep="\t", dtype=str, keep_default_na=False)
        assert list(form.columns) == list(FORM_COLUMNS) and list(form["blinded_id"]) == ids
        assert (form.drop(columns="blinded_id") == "").all().all()
    assert not list(out.glob("*.tsv")) and not list(out.glob("session-*/*key*"))


def test_nothing_readers_get_names_a_patient_or_dose(materials):
    plan, out, _ = materials
    for path in out.rglob("*"):
        if path.is_file() and "private" not in path.parts:
            name_and_text = path.name + (path.read_text() if path.suffix in (".tsv", ".txt") else "")
            assert "sub-" not in name_and_text and "dose" not in name_and_text.lower(), path
            if path.suffix == ".pdf":
                assert b"sub-" not in path.read_bytes() and b"CreationDate" not in path.read_bytes()


def test_key_is_kept_apart_with_a_warning(materials):
    plan, out, _ = materials
    key = read_plan(out / "private" / "unblinding_key.tsv")
    pd.testing.assert_frame_equal(key, plan)
    assert "DO NOT GIVE" in (out / "private" / "README.txt").read_text()
    assert "0 to 3 in steps of 0.5" in (out / "README.txt").read_text()


def test_missing_image_fails_before_writing(tmp_path, paper_plan):
    with pytest.raises(PetiqInputError, match=r"image\(s\) to read do not exist"):
        write_session_materials(paper_plan, partial(norm01_path, tmp_path / "recon"), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_blank_form_and_bad_key(tmp_path, paper_plan):
    form = blank_form(paper_plan, 2)
    assert list(form["blinded_id"]) == sorted(paper_plan.loc[paper_plan["session"] == 2, "blinded_id"])
    bad = tmp_path / "key.tsv"
    paper_plan.drop(columns="category").to_csv(bad, sep="\t", index=False)
    with pytest.raises(PetiqInputError, match="the unblinding key has columns"):
        read_plan(bad)
    with pytest.raises(PetiqInputError, match="does not exist"):
        read_plan(tmp_path / "none.tsv")


def test_cli_plan_from_splits(tmp_path, capsys):
    from petiq.cli import main

    splits = tmp_path / "splits.tsv"
    roles = ["pretext_train", "transfer_train", "transfer_val", "test", "test", "transfer_train"]
    pd.DataFrame({"participant_id": PATIENTS, "role": roles}).to_csv(splits, sep="\t", index=False)
    key = tmp_path / "private" / "unblinding_key.tsv"
    argv = [
        "sessions",
        "plan",
        "--splits",
        str(splits),
        "--doses",
        "1",
        "5",
        "25",
        "--rereads",
        "2",
        "--n-sessions",
        "4",
        "--min-images",
        "3",
        "--max-images",
        "5",
        "--seed",
        "1",
        "--out",
        str(key),
    ]
    assert main(argv) == 0
    plan = read_plan(key)
    assert sorted(plan["participant_id"].unique()) == PATIENTS[1:]
    assert "17 readings in 4 sessions" in capsys.readouterr().out
    assert (
        main(
            argv[:-10]
            + [
                "--n-sessions",
                "2",
                "--min-images",
                "1",
                "--max-images",
                "9",
                "--seed",
                "1",
                "--out",
                str(key),
                "--force",
            ]
        )
        == 2
    )
    assert "sessions are needed" in capsys.readouterr().err

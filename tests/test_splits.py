"""The split programme's constraints and the checks of a user's own splits file."""

from __future__ import annotations

import pandas as pd
import pytest
from helpers import write_sheet

from petiq.cohort.patients import plan_cohort, read_patients
from petiq.core.errors import PetiqInputError
from petiq.learning.splits import ROLES, assign_roles, check_splits, role_summary

COUNTS = {"pretext_train": 8, "pretext_val": 1, "transfer_train": 7, "transfer_val": 2, "test": 3}
MIX = {"CN": 0.3, "AD": 0.4, "FTD": 0.15, "DLB": 0.15}


@pytest.fixture(scope="module")
def participants(tmp_path_factory):
    path = write_sheet(
        tmp_path_factory.mktemp("s") / "p.tsv",
        ["participant_id", "source"],
        [[f"sub-{i:02d}", "synthetic"] for i in range(1, 22)],
    )
    return plan_cohort(read_patients(path), 3, MIX)


@pytest.fixture(scope="module")
def splits(participants):
    return assign_roles(participants, COUNTS, 3)


def test_every_patient_once_and_counts_met(participants, splits):
    assert list(splits["participant_id"]) == list(participants["participant_id"])
    assert splits["role"].value_counts().to_dict() == {r: c for r, c in COUNTS.items()}


def test_roles_are_balanced(participants, splits):
    table = participants.merge(splits, on="participant_id")
    n = len(table)
    for role, count in COUNTS.items():
        part = table[table["role"] == role]
        for dx, total in table["diagnosis"].value_counts().items():
            expected = total * count / n
            assert abs((part["diagnosis"] == dx).sum() - expected) < 1.0 + 1e-9, (role, dx)
    # the large roles sit near the cohort means of weight and dose per kg (within 0.5 SD)
    for column in ("weight_kg", "dose_per_kg"):
        sd = table[column].std(ddof=0)
        for role in ("pretext_train", "transfer_train"):
            assert abs(table.loc[table["role"] == role, column].mean() - table[column].mean()) < 0.5 * sd


def test_deterministic_per_seed(participants, splits):
    assert assign_roles(participants, COUNTS, 3).equals(splits)


def test_counts_must_add_up(participants):
    with pytest.raises(PetiqInputError, match="add up to 20 but the cohort has 21"):
        assign_roles(participants, {**COUNTS, "test": 2}, 3)


def test_role_summary_has_every_role(participants, splits):
    summary = role_summary(participants, splits)
    assert list(summary["role"]) == list(ROLES) + ["all"]
    assert summary.set_index("role").loc["all", "n"] == 21


def user_file(tmp_path, splits, edit):
    splits = edit(splits.copy())
    path = tmp_path / "splits.tsv"
    splits.to_csv(path, sep="\t", index=False)
    return path


def test_user_splits_accepted_as_is(tmp_path, participants, splits):
    def swap(s):  # swap the roles of two patients: still valid
        s.loc[0, "role"], s.loc[1, "role"] = s.loc[1, "role"], s.loc[0, "role"]
        return s

    path = user_file(tmp_path, splits, swap)
    got = check_splits(path, participants, COUNTS)
    assert got.equals(pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False))


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: pd.concat([s, s.iloc[[0]]], ignore_index=True), "listed more than once"),
        (lambda s: s.iloc[1:], "have no role"),
        (lambda s: s.assign(role=s["role"].where(s.index != 0, "holdout")), "unknown role(s) ['holdout']"),
        (lambda s: s.assign(role=s["role"].where(s.index != 0, "test")), "has"),
        (
            lambda s: s.assign(participant_id=s["participant_id"].where(s.index != 0, "sub-99")),
            "not in the patient sheet",
        ),
    ],
)
def test_bad_user_splits(tmp_path, participants, splits, edit, message):
    path = user_file(tmp_path, splits, edit)
    with pytest.raises(PetiqInputError) as caught:
        check_splits(path, participants, COUNTS)
    assert message in str(caught.value) and str(path) in str(caught.value)


RATED = ("transfer_train", "transfer_val", "test")


def test_patients_nobody_can_rate_take_unrated_roles_only(participants, splits):
    """Real patients under the virtual reader: every one lands in a pretext role, whatever the seed;
    more of them than the unrated roles hold is a clear error."""
    ids = list(participants["participant_id"])
    real = [pid for pid, role in zip(ids, splits["role"]) if role in RATED][:5]  # rated in the free split
    for seed in (3, 4):
        got = assign_roles(participants, COUNTS, seed, unrated=real, rated_roles=RATED)
        assert got["role"].value_counts().to_dict() == COUNTS
        assert set(got.set_index("participant_id").loc[real, "role"]) <= {"pretext_train", "pretext_val"}
    with pytest.raises(PetiqInputError, match="10 real patients cannot be read.*unrated roles hold 9"):
        assign_roles(participants, COUNTS, 3, unrated=ids[:10], rated_roles=RATED)


def test_user_splits_with_a_real_patient_in_a_rated_role_are_refused(tmp_path, participants, splits):
    path = tmp_path / "splits.tsv"
    splits.to_csv(path, sep="\t", index=False)
    rated = splits.loc[splits["role"] == "test", "participant_id"].iloc[0]
    assert len(check_splits(path, participants, COUNTS, unrated=[], rated_roles=RATED)) == len(splits)
    with pytest.raises(PetiqInputError, match=f"{rated} \\(real, no ratings\\) in a rated role \\(test\\)"):
        check_splits(path, participants, COUNTS, unrated=[rated], rated_roles=RATED)

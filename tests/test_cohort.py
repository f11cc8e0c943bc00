"""The patient sheet's checks and the cohort plan."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import write_sheet, write_site_files

from petiq.cohort.patients import allocate_diagnoses, plan_cohort, read_patients
from petiq.core.errors import PetiqInputError

MIX = {"CN": 0.3, "AD": 0.4, "FTD": 0.15, "DLB": 0.15}


def synthetic_sheet(tmp_path, n=21):
    return write_sheet(
        tmp_path / "patients.tsv",
        ["participant_id", "source"],
        [[f"sub-{i:02d}", "synthetic"] for i in range(1, n + 1)],
    )


def real_files(tmp_path):
    """A real patient's files (tiny scanner): a small genuine list-mode pair, the scanner's component norm, a μ-map."""
    files = write_site_files(tmp_path, "tiny")
    return [files["listmode"], files["mumap"], files["norm"]]


def test_real_patient_with_a_truncated_listmode_is_caught_by_the_sheet_check(tmp_path):
    files = real_files(tmp_path)
    header = ["participant_id", "source", "listmode", "mumap", "norm", "weight_kg", "injected_mbq"]
    sheet = write_sheet(tmp_path / "p.tsv", header, [["sub-R1", "real", *files, "70", "200"]])
    assert list(read_patients(sheet, root=tmp_path, scanner="tiny")["participant_id"]) == ["sub-R1"]
    data = (tmp_path / "a.l").read_bytes()
    (tmp_path / "a.l").write_bytes(data[:-4])  # one word short: a copy that stopped early
    with pytest.raises(PetiqInputError) as caught:
        read_patients(sheet, root=tmp_path, scanner="tiny")
    text = str(caught.value)
    assert "row 2 (sub-R1)" in text and "truncated" in text and "Fix:" in text


def test_valid_sheet_with_real_and_synthetic_rows(tmp_path):
    files = real_files(tmp_path)
    sheet = write_sheet(
        tmp_path / "p.tsv",
        ["participant_id", "source", "listmode", "mumap", "norm", "weight_kg", "injected_mbq"],
        [["sub-01", "synthetic", "", "", "", "", ""], ["sub-R1", "real", *files, "70", "210"]],
    )
    table = read_patients(sheet, root=tmp_path, scanner="tiny")
    assert list(table["participant_id"]) == ["sub-01", "sub-R1"]
    plan = plan_cohort(table, 1, MIX)
    real = plan.set_index("participant_id").loc["sub-R1"]
    assert real["weight_kg"] == 70 and real["injected_mbq"] == 210 and real["diagnosis"] == "unknown"


@pytest.mark.parametrize(
    "header, rows, message",
    [
        (
            ["participant_id", "source"],
            [["sub-01", "synthetic"], ["sub-01", "synthetic"]],
            "row 3: participant_id sub-01 repeats row 2",
        ),
        (["participant_id", "source", "shoe_size"], [["sub-01", "synthetic", "9"]], "unknown column(s) ['shoe_size']"),
        (
            ["participant_id", "source", "weight_kg"],
            [["sub-01", "synthetic", "-70"]],
            "row 2 (sub-01): weight_kg is -70, not positive",
        ),
        (
            ["participant_id", "source", "injected_mbq"],
            [["sub-01", "synthetic", "0"]],
            "row 2 (sub-01): injected_mbq is 0, not positive",
        ),
        (
            ["participant_id", "source", "weight_kg"],
            [["sub-01", "synthetic", "heavy"]],
            "weight_kg is 'heavy', not a number",
        ),
        (["participant_id", "source"], [["01", "synthetic"]], "participant_id '01' is not BIDS-style"),
        (["participant_id", "source"], [["sub-01", "phantom"]], "source is 'phantom'"),
        (["participant_id"], [["sub-01"]], "column 'source' is missing"),
        (["participant_id", "source", "diagnosis"], [["sub-01", "synthetic", "MCI"]], "diagnosis is 'MCI'"),
    ],
)
def test_bad_sheet_names_row_problem_and_fix(tmp_path, header, rows, message):
    sheet = write_sheet(tmp_path / "p.tsv", header, rows)
    with pytest.raises(PetiqInputError) as caught:
        read_patients(sheet, root=tmp_path, scanner="tiny")
    text = str(caught.value)
    assert str(sheet) in text and message in text and "Fix:" in text


def test_real_patient_missing_file_and_weight(tmp_path):
    files = real_files(tmp_path)
    header = ["participant_id", "source", "listmode", "mumap", "norm", "weight_kg", "injected_mbq"]
    sheet = write_sheet(
        tmp_path / "p.tsv", header, [["sub-R1", "real", files[0], "missing.nii.gz", files[2], "70", "200"]]
    )
    with pytest.raises(PetiqInputError, match=r"row 2 \(sub-R1\): mumap file .*missing.nii.gz does not exist"):
        read_patients(sheet, root=tmp_path, scanner="tiny")
    sheet = write_sheet(tmp_path / "p.tsv", header, [["sub-R1", "real", *files, "", "200"]])
    with pytest.raises(PetiqInputError, match="a real patient needs weight_kg"):
        read_patients(sheet, root=tmp_path, scanner="tiny")
    (tmp_path / "a.l.hdr").unlink()
    sheet = write_sheet(tmp_path / "p.tsv", header, [["sub-R1", "real", *files, "70", "200"]])
    with pytest.raises(PetiqInputError, match=r"list-mode header .*a.l.hdr does not exist"):
        read_patients(sheet, root=tmp_path, scanner="tiny")


def test_missing_sheet(tmp_path):
    with pytest.raises(PetiqInputError, match="does not exist"):
        read_patients(tmp_path / "nope.tsv")


def test_plan_is_deterministic_and_follows_the_mix(tmp_path):
    sheet = read_patients(synthetic_sheet(tmp_path))
    a, b, c = plan_cohort(sheet, 5, MIX), plan_cohort(sheet, 5, MIX), plan_cohort(sheet, 6, MIX)
    assert a.equals(b) and not a.equals(c)
    assert a["diagnosis"].value_counts().to_dict() == {"AD": 9, "CN": 6, "FTD": 3, "DLB": 3}
    assert (a.loc[a["diagnosis"] == "CN", "severity"] == 0).all()
    assert (a.loc[a["diagnosis"] != "CN", "severity"] > 0).all()
    assert a["weight_kg"].between(45, 140).all() and a["injected_mbq"].between(150, 250).all()
    assert np.allclose(a["dose_per_kg"], a["injected_mbq"] / a["weight_kg"], atol=1e-3)


def test_adding_a_patient_changes_nobody_elses_demographics(tmp_path):
    small = plan_cohort(read_patients(synthetic_sheet(tmp_path, 5)), 5, {"CN": 1.0})
    large = plan_cohort(read_patients(synthetic_sheet(tmp_path, 6)), 5, {"CN": 1.0})
    assert small.equals(large.iloc[:5])


def test_sheet_values_override_draws(tmp_path):
    sheet = write_sheet(
        tmp_path / "p.tsv",
        ["participant_id", "source", "diagnosis", "weight_kg"],
        [["sub-01", "synthetic", "DLB", "55"]],
    )
    row = plan_cohort(read_patients(sheet), 1, MIX).iloc[0]
    assert row["diagnosis"] == "DLB" and row["weight_kg"] == 55


def test_allocate_diagnoses_largest_remainder():
    rng = np.random.default_rng(0)
    got = allocate_diagnoses(10, {"CN": 0.5, "AD": 0.5}, rng)
    assert sorted(got) == ["AD"] * 5 + ["CN"] * 5

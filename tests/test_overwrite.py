"""No command writes over one of its inputs, or replaces a key, form, ratings table or score table
it finds already there, unless told to with --force: refused before any work, nothing changed."""

from __future__ import annotations

import os

import pytest

from petiq.cli import main


def _files(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


@pytest.fixture
def site(tmp_path):
    """A folder with the inputs a user has: an image, a key, two filled forms, a ratings table."""
    (tmp_path / "recon.nii.gz").write_bytes(b"\x1f\x8b image bytes")
    private = tmp_path / "sessions/private"
    private.mkdir(parents=True)
    (private / "unblinding_key.tsv").write_text("blinded_id\tparticipant_id\tdose\tsession\n")
    for s in (1, 2):
        form = tmp_path / f"sessions/session-{s}/session-{s}_ratings-form.tsv"
        form.parent.mkdir()
        form.write_text("blinded_id\trater\tGQR\tPR\tDC\nimg-001\tdr-a\t2\t2\t2.5\n")
    (tmp_path / "ratings.tsv").write_text("participant_id\tdose\trater\n")
    (tmp_path / "splits.tsv").write_text("participant_id\trole\nsub-01\ttest\n")
    (tmp_path / "model").mkdir()
    os.symlink(tmp_path / "ratings.tsv", tmp_path / "link-to-ratings.tsv")
    return tmp_path


KEY = "sessions/private/unblinding_key.tsv"
FORM = "sessions/session-1/session-1_ratings-form.tsv"
CASES = {
    # command line (relative to the site), words the message must hold
    "predict table onto its image": (["predict", "--model", "model", "recon.nii.gz", "--tsv", "recon.nii.gz"], ["overwrite the input", "recon.nii.gz"]),
    "predict table onto its image, spelt ./": (["predict", "--model", "model", "recon.nii.gz", "--tsv", "./recon.nii.gz"], ["overwrite the input"]),
    "predict table over an existing file": (["predict", "--model", "model", "recon.nii.gz", "--tsv", "ratings.tsv"], ["exists already", "--force"]),
    "ratings onto the unblinding key": (["ratings", "import", "--forms", "sessions", "--key", KEY, "--out", KEY], ["overwrite the input", "unblinding_key.tsv"]),
    "ratings onto a clinician's form": (["ratings", "import", "--forms", "sessions", "--key", KEY, "--out", FORM], ["overwrite the input", "ratings-form"]),
    "ratings onto a form given as a file": (["ratings", "import", "--forms", FORM, "--key", KEY, "--out", FORM, "--force"], ["overwrite the input"]),
    "ratings over an existing table": (["ratings", "import", "--forms", "sessions", "--key", KEY, "--out", "ratings.tsv"], ["exists already", "--force"]),
    "ratings through a link to an existing table": (["ratings", "import", "--forms", "sessions", "--key", KEY, "--out", "link-to-ratings.tsv"], ["exists already"]),
    "a new key over an existing one": (["sessions", "plan", "--patients", "sub-01", "--doses", "100", "--n-sessions", "1", "--max-images", "5",
                                        "--seed", "7", "--out", KEY], ["unblinding key exists already", "--force"]),
    "a key onto its splits file": (["sessions", "plan", "--splits", "splits.tsv", "--doses", "100", "--n-sessions", "1", "--max-images", "5",
                                    "--seed", "7", "--out", "splits.tsv", "--force"], ["overwrite the input", "splits.tsv"]),
    "blank forms over filled ones": (["sessions", "sheets", "--key", KEY, "--out-dir", "sessions"], ["ratings form(s) exist already", "--force"]),
}


@pytest.mark.parametrize("case", CASES)
def test_refused_before_any_work_and_nothing_changed(case, site, capsys, monkeypatch):
    argv, words = CASES[case]
    monkeypatch.chdir(site)
    before = _files(site)
    assert main(argv) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, (word, err)
    assert "Fix:" in err and "Traceback" not in err
    assert _files(site) == before  # no file changed, none created


def test_force_lets_a_table_be_replaced(site, capsys, monkeypatch):
    """--force is the way to replace: the overwrite guard lets the command reach its own checks."""
    monkeypatch.chdir(site)
    assert main(["predict", "--model", "model", "recon.nii.gz", "--tsv", "ratings.tsv", "--force"]) == 2
    err = capsys.readouterr().err
    assert "exists already" not in err and "overwrite" not in err  # it got past the guard to the model check

"""Atomic writes leave nothing half-written and give files the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from petiq.core.fileio import atomic_path, write_text


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "one")
    write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_failure_leaves_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_mode_follows_umask(tmp_path):
    path = tmp_path / "a.nii.gz"
    with atomic_path(path) as tmp:
        assert tmp.name.endswith(".nii.gz")
        tmp.write_bytes(b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_a_killed_writers_temporary_is_removed_by_the_next_write(tmp_path):
    """A temporary whose process is gone (a killed job) goes with the next write of the same file;
    those of live processes, other hosts and other files stay."""
    import subprocess
    import sys

    from petiq.core.fileio import _temp_prefix, write_text

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    pid = int(dead.stdout)
    path = tmp_path / "a.nii.gz"
    stale = tmp_path / f"{_temp_prefix(path)}{pid}.x1y2.tmp.nii.gz"
    live = tmp_path / f"{_temp_prefix(path)}{os.getpid()}.q7r8.tmp.nii.gz"
    other_host = tmp_path / f".a.nii.gz.elsewhere-node.{pid}.z9.tmp.nii.gz"
    other_file = tmp_path / f"{_temp_prefix(tmp_path / 'b.nii.gz')}{pid}.w0.tmp.nii.gz"
    for f in (stale, live, other_host, other_file):
        f.write_bytes(b"half")
    write_text(path, "whole")
    assert path.read_text() == "whole"
    assert not stale.exists()
    assert live.exists() and other_host.exists() and other_file.exists()

"""A failed job says why on the console in one line; the traceback and the job's output stay in its log."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import yaml
from conftest import ANATOMY_DIR, ROOT

ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def run(args, cwd):
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=300, env=ENV, check=False)


def test_cli_with_log_reports_bad_input_in_one_console_line(tmp_path):
    log = tmp_path / "logs/histogram.log"
    done = run([sys.executable, "-m", "petiq.cli", "--log", str(log), "histogram", "missing.l", "out.npz"], tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "missing.l" in lines[0] and "Fix:" in lines[0] and str(log) in lines[0]
    assert done.stdout == ""
    text = log.read_text()
    assert "histogram missing.l out.npz" in text and "list-mode data file not found" in text  # the call and the error
    assert not (tmp_path / "out.npz").exists()


def test_script_job_traceback_goes_to_the_log_and_one_line_to_the_console(tmp_path):
    script = tmp_path / "job.py"
    log = tmp_path / "job.log"
    script.write_text(
        "from petiq.core.logs import log_to\n"
        f"log = log_to({str(log)!r})\n"
        "print('working on it')\n"
        "log.info('step one done')\n"
        "{'sub-01': 1}['sub-99']\n"
    )
    done = run([sys.executable, str(script)], tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"petiq: unexpected KeyError: 'sub-99' (traceback in {log})"]
    text = log.read_text()
    assert "working on it" in text and "step one done" in text
    assert "Traceback (most recent call last)" in text and "KeyError: 'sub-99'" in text


def test_a_failing_workflow_job_names_its_problem_on_the_console(tmp_path):
    """A corrupted atlas file is found by the phantom job (it checks the SHA-256): the console shows
    that job's own message, not only Snakemake's `CalledProcessError … exit status 1`."""
    anatomy = tmp_path / "anatomy"
    shutil.copytree(ANATOMY_DIR, anatomy)
    (anatomy / "Hammers.nii.gz").write_bytes(b"\x1f\x8b" + bytes(998))
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "tests/config/patients.tsv", tmp_path / "config/patients.tsv")
    config = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
    config["patients"] = "config/patients.tsv"
    config["cohort"]["anatomy_dir"] = str(anatomy)
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    done = run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(tmp_path),
            "--cores",
            "1",
            "results/figures/cohort.png",
        ],
        tmp_path,
    )
    assert done.returncode != 0
    console = done.stdout + done.stderr
    ours = [line for line in console.splitlines() if line.startswith("petiq: ")]
    assert ours and "Hammers.nii.gz" in ours[0] and "Fix:" in ours[0] and "results/logs/cohort/phantom_" in ours[0]
    assert "Traceback" not in console

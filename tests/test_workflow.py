"""The workflow as its users run it: dry runs of every preset, lint, bad input, and a real run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from helpers import write_sheet

from conftest import ANATOMY_DIR, ROOT

SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PRESETS = {"paper": "config/config.yaml", "demo": "config/demo.yaml", "test": "tests/config/config.yaml"}


def snakemake(*args, cwd=ROOT, timeout=600):
    # as after `. .venv/bin/activate`: the environment's `petiq` and `python` come first on PATH
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PATH": path}
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


@pytest.mark.parametrize("preset", PRESETS)
def test_dry_run_lists_cohort_jobs(preset):
    done = snakemake("-n", "--cores", "2", "--configfile", PRESETS[preset], "--forceall")
    assert done.returncode == 0, done.stderr
    sheet = pd.read_csv(ROOT / ("tests/config/patients.tsv" if preset == "test" else "config/patients.tsv"), sep="\t")
    stats = done.stdout + done.stderr
    counts = {line.split()[0]: int(line.split()[1]) for line in stats.splitlines() if len(line.split()) == 2 and line.split()[1].isdigit()}
    assert counts["phantom"] == (sheet["source"] == "synthetic").sum()
    for rule in ("participants", "splits", "cohort_figure", "cohort_table", "norm_scan", "norm", "fig01_dose_examples"):
        assert counts[rule] == 1
    n_doses = len(yaml.safe_load((ROOT / PRESETS[preset]).read_text())["doses"])
    assert counts["simulate"] == counts["phantom"] and counts["attenuation"] == len(sheet)
    for rule in ("histogram", "randoms", "scatter", "osem"):
        assert counts[rule] == len(sheet) * n_doses, rule
    assert counts["thin"] == len(sheet) * (n_doses - 1)


def test_lint_is_clean():
    done = snakemake("--lint")
    assert done.returncode == 0, done.stdout + done.stderr


def test_bad_sheet_stops_before_any_job(tmp_path):
    sheet = write_sheet(tmp_path / "p.tsv", ["participant_id", "source"], [["sub-01", "synthetic"], ["sub-01", "synthetic"]])
    done = snakemake("-n", "--cores", "1", "--config", f"patients={sheet}", "--directory", str(tmp_path), "--snakefile", str(ROOT / "Snakefile"),
                     "--configfile", str(ROOT / "tests/config/config.yaml"))
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "row 3: participant_id sub-01 repeats row 2" in message and "Fix: give every patient its own id" in message
    assert not (tmp_path / "results").exists()


def test_bad_config_value_is_refused(tmp_path):
    done = snakemake("-n", "--cores", "1", "--config", "scanner=petrace", "--configfile", "tests/config/config.yaml")
    assert done.returncode != 0 and "petrace" in done.stdout + done.stderr


@pytest.mark.slow
def test_cohort_figure_target_runs_only_what_it_needs(tmp_path):
    """`snakemake results/figures/cohort.png` on the test preset: phantoms and the figure, no table;
    then the whole preset: list-mode, reconstruction and Fig. 1."""
    (tmp_path / "config").mkdir()
    shutil.copy(ROOT / "tests/config/patients.tsv", tmp_path / "config/patients.tsv")
    config = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
    config["patients"] = "config/patients.tsv"
    config["cohort"].update(anatomy_dir=str(ANATOMY_DIR), shape=[40, 40, 36], voxel_size_mm=[7.0, 7.0, 7.0])
    (tmp_path / "config/config.yaml").write_text(yaml.safe_dump(config))
    args = ["--snakefile", str(ROOT / "Snakefile"), "--directory", str(tmp_path), "--cores", "2"]
    done = snakemake(*args, "results/figures/cohort.png")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "results/figures/cohort.png").stat().st_size > 10_000
    assert not (tmp_path / "results/tables/cohort.tsv").exists()
    participants = pd.read_csv(tmp_path / "results/cohort/participants.tsv", sep="\t")
    for pid in participants["participant_id"]:
        for suffix in ("pet-truth.nii.gz", "mumap.nii.gz", "T1w.nii.gz", "brainmask.nii.gz"):
            assert (tmp_path / f"results/cohort/{pid}/{pid}_{suffix}").is_file()
        assert (tmp_path / f"results/logs/cohort/phantom_{pid}.log").read_text().strip()
    # the rest of the stage, then nothing left to do
    done = snakemake(*args)
    assert done.returncode == 0, done.stderr[-3000:]
    splits = pd.read_csv(tmp_path / "results/cohort/splits.tsv", sep="\t")
    assert splits["role"].value_counts().to_dict() == {"pretext_train": 2, "pretext_val": 1, "transfer_train": 1, "transfer_val": 1, "test": 1}
    # list-mode stage: every dose histogrammed; thinned counts follow the binomial law
    from petiq.sinograms import read_sinograms

    for pid in participants["participant_id"]:
        full = read_sinograms(tmp_path / f"results/sinograms/{pid}/{pid}_dose-100.0_sinograms.npz")
        assert full["n_prompts"] > 1000 and full["n_delayeds"] > 100
        for dose in ("001.0", "010.0"):
            low = read_sinograms(tmp_path / f"results/sinograms/{pid}/{pid}_dose-{dose}_sinograms.npz")
            p = float(dose) / 100
            for key in ("n_prompts", "n_delayeds"):
                sigma = (full[key] * p * (1 - p)) ** 0.5
                assert abs(low[key] - p * full[key]) < 4 * sigma + 1, (pid, dose, key)
            header = (tmp_path / f"results/listmode/{pid}/{pid}_dose-{dose}.l.hdr").read_text()
            assert "petiq thinning seed" in header and "petiq source file sha256" in header
    # reconstruction stage: every patient and dose, quantitative, with its sidecar; Fig. 1 drawn
    import json

    import nibabel as nib

    for pid in participants["participant_id"]:
        means = {}
        for dose in ("001.0", "010.0", "100.0"):
            image = tmp_path / f"results/recon/{pid}/{pid}_dose-{dose}_pet.nii.gz"
            means[dose] = float(np.asarray(nib.load(image).dataobj).mean())
            sidecar = json.loads(image.with_name(image.name.replace(".nii.gz", ".json")).read_text())
            assert sidecar["ReconMethodParameterValues"] == [2, 21] and sidecar["DoseFractionPercent"] == float(dose)
            norm01 = np.asarray(nib.load(tmp_path / f"results/recon/{pid}/{pid}_dose-{dose}_desc-norm01_pet.nii.gz").dataobj)
            assert norm01.min() >= 0 and norm01.max() == pytest.approx(1.0)
        assert means["010.0"] == pytest.approx(0.1 * means["100.0"], rel=0.15)
    assert (tmp_path / "results/figures/fig01_dose_examples.png").stat().st_size > 10_000
    done = snakemake(*args, "-n")
    assert "Nothing to be done" in done.stdout + done.stderr

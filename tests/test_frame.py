"""The project's frame: one place for pins, the layout the design card names, the CLI entry point."""

from __future__ import annotations

import subprocess
import sys
import tomllib

import yaml
from conftest import ROOT


def test_conda_env_repeats_the_pyproject_pins():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    env = yaml.safe_load((ROOT / "envs/petiq.yaml").read_text())
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert sorted(pins) == sorted(pip)
    assert all("==" in pin for pin in pins)


def test_layout():
    for path in (
        "Snakefile",
        "workflow/rules",
        "workflow/scripts",
        "workflow/schemas/config.schema.yaml",
        "workflow/report",
        "config/config.yaml",
        "config/demo.yaml",
        "config/patients.tsv",
        "envs",
        "profiles",
        "resources",
        "tests",
        "README.md",
    ):
        assert (ROOT / path).exists(), path


def test_library_never_imports_snakemake():
    offenders = [
        p
        for p in (ROOT / "src/petiq").rglob("*.py")
        if "import snakemake" in p.read_text() or "from snakemake" in p.read_text()
    ]
    assert offenders == []


def test_cli_entry_point_and_check_patients(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "petiq.cli", "check-patients", str(ROOT / "config/patients.tsv")],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0 and "21 patients" in done.stdout
    bad = tmp_path / "p.tsv"
    bad.write_text("participant_id\tsource\nsub-01\treal\n")
    done = subprocess.run(
        [sys.executable, "-m", "petiq.cli", "check-patients", str(bad)], capture_output=True, text=True
    )
    assert done.returncode == 2 and "a real patient needs weight_kg" in done.stderr

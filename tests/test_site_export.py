"""A site's export in the mMR's formats, end to end: the DICOM list-mode, the scanner's component norm
(``.n`` and its DICOM form), the patient's μ-map as e7 Interfile and as a DICOM series, and a
hardware μ-map (a table under the patient) — through ``petiq recon`` and through the workflow's
patient sheet, each quantitative within 5 %.

The export is made from a simulation on the tiny scanner: a 300 kBq/mL off-centre water ball lying
on a table whose attenuation the simulation includes. The expected numbers are the simulation's
truth; the file layouts are written here from their published definitions (e7 Interfile ``[z][row]
[column]`` with rows along −y; DICOM LPS with 10⁴ × cm⁻¹), not by petiq's readers.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import e7_layout, write_e7_interfile, write_mumap_dicom_series

from petiq.cli import main
from petiq.listmode.simulate import scanner_component_norm, simulate_patient
from petiq.recon import mumap as mm
from petiq.recon.norm_writer import write_component_norm
from petiq.scanner.frame import scanner_grid_affine
from petiq.scanner.geometry import Scanner

ROOT = Path(__file__).resolve().parents[1]
SPAN = 11
ACTIVITY = 300.0  # kBq/mL in the ball
WATER, TABLE = 0.096, 0.15  # cm⁻¹
TABLE_ROWS = (26, 27, 28)  # e7 rows v of the table: scanner y = 62 − 4 v = −42 … −50 mm
FAST = ["--scanner", "tiny", "--span", str(SPAN), "--iterations", "5", "--subsets", "6", "--device", "cpu", "--quiet"]


def _axes(sc: Scanner):
    return [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(sc.image_shape, sc.voxel_size_mm)]


def _ball(sc: Scanner, radius_mm: float = 30.0) -> np.ndarray:
    """The patient: a ball centred at scanner (+8, −4, 0) mm, so that a flipped axis would show."""
    x, y, z = _axes(sc)
    return ((x[:, None, None] - 8) ** 2 + (y[None, :, None] + 4) ** 2 + z[None, None, :] ** 2) < radius_mm**2


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("export")
    sc = Scanner.tiny()
    assert sc.voxel_size_mm == (4.0, 4.0, 4.0) and sc.image_shape == (32, 32, 15)
    ball = _ball(sc)
    patient_mu = np.where(ball, WATER, 0.0).astype(np.float32)
    # the table: e7 rows v 26–28 (y −42 … −50 mm) under the whole ball, every slice; the origin keys
    # put its voxel (0, 0, 0) on the scanner grid's first voxel (NiftyPET get_hmupos: x = −4 o₁,
    # y = 4 o₂, z = bed − 4 o₃ for the first voxel's centre)
    table = np.zeros((15, 32, 32), np.float32)
    table[:, list(TABLE_ROWS), 2:30] = TABLE
    origin = "".join(f"$umap origin (pixels) [{i}] := {v}\n" for i, v in ((1, 15.5), (2, 15.5), (3, 7.0)))
    table_hdr = write_e7_interfile(d / "umap_table.v", table, 4.0, origin)
    # the simulation sees the patient and the table (the table, on the scanner grid, in petiq's layout)
    sim_mu = patient_mu + np.transpose(table, (2, 1, 0))[:, ::-1, :]
    affine = scanner_grid_affine(sc.image_shape, sc.voxel_size_mm)
    for name, data in (("truth", ACTIVITY * ball.astype(np.float32)), ("sim_mumap", sim_mu)):
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), d / f"{name}.nii.gz")
    participant = {"participant_id": "sub-R1", "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0}
    simulate_patient(
        truth_path=d / "truth.nii.gz",
        mumap_path=d / "sim_mumap.nii.gz",
        participant=participant,
        scanner=sc,
        scanner_seed=5,
        seed=3,
        out_path=d / "lm.dcm",
        duration_s=600.0,
        progress=False,
    )
    norm = scanner_component_norm(sc, 5, SPAN)
    write_component_norm(d / "norm.n", norm, sc)
    write_component_norm(d / "norm.dcm", norm, sc)
    e7_hdr = write_e7_interfile(d / "umap.v", e7_layout(patient_mu), 4.0)
    dicom = write_mumap_dicom_series(d / "umap_dicom", patient_mu, 4.0)
    for path in (e7_hdr, dicom):  # the files say what was written (the test's own layout check)
        np.testing.assert_allclose(mm.to_scanner_frame(*mm.read_mumap(path)[:2], sc), patient_mu, atol=1e-4)
    return {
        "dir": d,
        "lm": d / "lm.dcm",
        "norm": d / "norm.n",
        "norm_dcm": d / "norm.dcm",
        "e7": e7_hdr,
        "dicom": dicom,
        "table": table_hdr,
        "inner": _ball(sc, 18.0),
    }


def _recon(export, tmp_path, name, mumap, *extra) -> tuple[np.ndarray, dict]:
    out = tmp_path / f"{name}_pet.nii.gz"
    assert main(["recon", str(export["lm"]), "--mumap", str(mumap), "--out", str(out), *extra, *FAST]) == 0
    return np.asarray(nib.load(out).dataobj), json.loads((tmp_path / f"{name}_pet.json").read_text())


@pytest.mark.parametrize("form", ["e7", "dicom"])
def test_petiq_recon_of_the_export_is_quantitative_with_the_table(export, tmp_path, form):
    norm = export["norm"] if form == "e7" else export["norm_dcm"]
    image, sidecar = _recon(
        export, tmp_path, "with", export[form], "--norm", str(norm), "--hardware-mumap", str(export["table"])
    )
    inner = export["inner"]
    assert float(image[inner].mean()) == pytest.approx(ACTIVITY, rel=0.05)
    assert sidecar["Units"] == "kBq/mL" and sidecar["ImageDecayCorrected"] is True
    assert "none" in sidecar["DeadTimeCorrection"]  # the simulated scanner has no dead time
    if form == "e7":  # without the table the image misses its attenuation: lower where it matters
        without, _ = _recon(export, tmp_path, "without", export[form], "--norm", str(norm))
        lower = export["inner"] & (np.arange(image.shape[1])[None, :, None] < image.shape[1] // 2)
        assert float(without[lower].mean()) < 0.97 * float(image[lower].mean())


def test_the_workflow_reconstructs_the_export_named_in_the_patient_sheet(export, tmp_path):
    """The export as a real row of config/patients.tsv: parse-time checks pass, rule site_norm reads its
    .n, attenuation takes the e7 μ-map and the table at the list-mode's bed position, and the image
    is the truth within 5 %."""
    site = tmp_path / "site"
    (site / "config").mkdir(parents=True)
    e = export
    rows = [["sub-R1", "real", str(e["lm"]), str(e["e7"]), str(e["norm"]), str(e["table"]), "70", "200"]]
    rows += [[f"sub-0{i}", "synthetic", "", "", "", "", "", ""] for i in range(1, 6)]  # the split counts need six
    header = ["participant_id", "source", "listmode", "mumap", "norm", "hardware_mumaps", "weight_kg", "injected_mbq"]
    (site / "config/patients.tsv").write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n")
    config = yaml.safe_load((ROOT / "tests/config/config.yaml").read_text())
    config.update(patients="config/patients.tsv", scanner="tiny", span=SPAN, doses=[100])
    config["recon"].update(iterations=5, subsets=6)
    config["cohort"]["anatomy_dir"] = str(ROOT / "resources/anatomy")
    config["training"]["weights_dir"] = str(ROOT / "resources/weights")
    (site / "config/config.yaml").write_text(yaml.safe_dump(config))
    target = "results/bids/sub-R1/pet/sub-R1_rec-dose100p0_pet.nii.gz"
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT / "src"),
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]]),
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--snakefile",
            str(ROOT / "Snakefile"),
            "--directory",
            str(site),
            target,
        ],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "site_norm" in done.stderr and "scanner_norm" not in done.stderr and "norm_scan" not in done.stderr
    image = np.asarray(nib.load(site / target).dataobj)
    assert float(image[e["inner"]].mean()) == pytest.approx(ACTIVITY, rel=0.05)
    log = (site / "results/logs/recon/attenuation_sub-R1.log").read_text()
    assert "umap_table.v" in log and "bed position 0.0 mm" in log

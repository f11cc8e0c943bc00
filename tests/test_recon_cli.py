"""`petiq recon`: one simulated acquisition through the whole chain (petiq.recon.chain), on the tiny scanner."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from helpers import e7_layout, write_e7_interfile, write_mumap_dicom_series

from petiq.cli import main
from petiq.cohort.phantom import grid_affine
from petiq.core.errors import PetiqInputError
from petiq.listmode.simulate import simulate_norm_scan, simulate_patient
from petiq.recon import chain
from petiq.recon import correction_io as cio
from petiq.recon import pipeline as pl
from petiq.scanner.geometry import Scanner

ROOT = Path(__file__).resolve().parents[1]
SPAN = 11
ACTIVITY = 300.0  # kBq/mL, the uniform ball's truth
FAST = ["--scanner", "tiny", "--iterations", "5", "--subsets", "6", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def acq(tmp_path_factory) -> dict:
    """A uniform 300 kBq/mL water ball (radius 40 mm) simulated as list-mode, and the norm scan."""
    d = tmp_path_factory.mktemp("acq")
    sc = Scanner.tiny()
    scan = simulate_norm_scan(sc, scanner_seed=5, seed=1, span=SPAN, counts_per_bin=500.0, progress=False)
    np.savez_compressed(d / "norm_scan.npz", scanner=np.asarray(sc.name), **scan)
    shape, voxel = (48, 48, 30), (2.0, 2.0, 2.0)
    affine = grid_affine(shape, voxel)
    ijk = np.indices(shape).reshape(3, -1)
    ball = (np.sqrt(((affine[:3, :3] @ ijk + affine[:3, 3:4]) ** 2).sum(0)) <= 40.0).reshape(shape).astype(np.float32)
    for name, data in (("truth", ACTIVITY * ball), ("mumap", 0.096 * ball)):
        nib.save(nib.Nifti1Image(data, affine), d / f"{name}.nii.gz")
    participant = {"participant_id": "sub-01", "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0}
    simulate_patient(
        truth_path=d / "truth.nii.gz",
        mumap_path=d / "mumap.nii.gz",
        participant=participant,
        scanner=sc,
        scanner_seed=5,
        seed=3,
        out_path=d / "full.l",
        duration_s=600.0,
        progress=False,
    )
    return {"dir": d, "lm": d / "full.l", "norm_scan": d / "norm_scan.npz", "mumap": d / "mumap.nii.gz"}


def _inner(scanner: Scanner) -> np.ndarray:
    """Voxels of the tiny scanner's grid well inside the ball (r < 25 mm of its 40)."""
    shape, vox = scanner.image_shape, scanner.voxel_size_mm
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vox)]
    return np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2) < 25.0


def test_defaults_are_the_config_schema_defaults():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())["properties"]
    recon = schema["recon"]["properties"]
    assert chain.DEFAULTS == {
        "scanner": schema["scanner"]["default"],
        "span": schema["span"]["default"],
        "n_iterations": recon["iterations"]["default"],
        "n_subsets": recon["subsets"]["default"],
        "post_filter_fwhm_mm": recon["post_filter_fwhm_mm"]["default"],
        "backend": schema["device"]["default"],
    }


def test_recon_listmode_image_sidecar_activity_and_kept_steps(acq, tmp_path, capsys):
    """(a) shape, affine, sidecar; (b) the ball's activity within 6 %; (d) --keep-intermediate keeps the step files."""
    sc = Scanner.tiny()
    out = tmp_path / "sub-01_pet.nii.gz"
    work = tmp_path / "work"
    meta = tmp_path / "meta.json"
    meta.write_text(json.dumps({"InjectedRadioactivity": 200.0, "BodyWeight": 70.0}))
    assert (
        main(
            [
                "recon",
                str(acq["lm"]),
                "--norm",
                str(acq["norm_scan"]),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(out),
                "--work-dir",
                str(work),
                "--keep-intermediate",
                "--metadata",
                str(meta),
                *FAST,
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "kBq/mL" in printed and "histogram" in printed
    img = nib.load(out)
    data = np.asarray(img.dataobj)
    assert data.shape == sc.image_shape
    np.testing.assert_allclose(img.affine, grid_affine(data.shape, sc.voxel_size_mm), atol=1e-5)
    # the simulation's truth is 300 kBq/mL everywhere in the ball; 6 % covers noise at these counts, the
    # 5 x 6 OSEM convergence inside the ball and the norm/scatter estimates (test_recon's chain uses the same)
    assert float(data[_inner(sc)].mean()) == pytest.approx(ACTIVITY, rel=0.06)
    sidecar = json.loads((tmp_path / "sub-01_pet.json").read_text())
    assert sidecar["Units"] == "kBq/mL" and sidecar["ReconMethodName"] == "OP-OSEM"
    assert sidecar["ReconMethodParameterValues"] == [5, 6] and sidecar["ReconFilterType"] == "none"
    assert sidecar["Scanner"] == "tiny" and sidecar["Span"] == SPAN and sidecar["ReconstructionBackend"] == "cpu"
    assert sidecar["FrameDuration"] == [pytest.approx(600.0, rel=0.01)]
    assert sidecar["InjectedRadioactivity"] == 200.0 and sidecar["BodyWeight"] == 70.0
    assert 0.2 < sidecar["EstimatedScatterFraction"] < 0.45  # the simulation draws 0.30-0.40
    n01 = np.asarray(nib.load(tmp_path / "sub-01_desc-norm01_pet.nii.gz").dataobj)
    assert n01.max() == pytest.approx(1.0)
    assert sorted(p.name for p in work.iterdir()) == sorted(chain.STEP_FILES.values())
    # the kept files are the pipeline's: a sinogram file of the list-mode's counts and each correction kind
    with np.load(work / "sinograms.npz") as sino:
        assert int(sino["n_prompts"]) == sidecar["PromptsInSinograms"] > 0
    for kind in ("norm", "randoms", "attenuation", "scatter"):
        with np.load(work / f"{kind}.npz") as data:
            assert str(data["kind"]) == kind
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["meta.json", "sub-01_pet.nii.gz", "sub-01_pet.json", "sub-01_desc-norm01_pet.nii.gz", "work"]
    )
    acq["kept"] = work


def test_recon_default_leaves_no_intermediate_files(acq, tmp_path):
    """(d) without --keep-intermediate only the three outputs remain; a sinogram .npz and a ready norm .npz
    are taken as they are (the chain's other entry points)."""
    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    work = acq["kept"]
    out = tmp_path / "img.nii.gz"
    assert (
        main(
            [
                "recon",
                str(work / "sinograms.npz"),
                "--norm",
                str(work / "norm.npz"),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.json", "img.nii.gz", "img_desc-norm01.nii.gz"]
    data = np.asarray(nib.load(out).dataobj)
    assert float(data[_inner(Scanner.tiny())].mean()) == pytest.approx(ACTIVITY, rel=0.06)


def _bad_inputs(acq, d: Path) -> list:
    sc = Scanner.tiny()
    pl.estimate_norm_file(acq["norm_scan"], d / "norm_span3.npz", sc, 3)
    shape = (20, 20, 10)
    far = np.zeros(shape, np.float32)
    far[:, :, :] = 0.096
    aff = grid_affine(shape, (8.0, 8.0, 8.0))  # 160 mm across: tissue beyond the tiny scanner's ring
    nib.save(nib.Nifti1Image(far, aff), d / "mu_big.nii.gz")
    lm, ns, mu = str(acq["lm"]), str(acq["norm_scan"]), str(acq["mumap"])
    return [  # (arguments, the file the message names, words of the problem or fix)
        ([lm, "--norm", str(d / "missing.npz"), "--mumap", mu], "missing.npz", "norm file not found"),
        ([lm, "--norm", str(d / "norm_span3.npz"), "--mumap", mu], "norm_span3.npz", "span 3"),
        ([lm, "--norm", ns, "--mumap", str(d / "mu_big.nii.gz")], "mu_big.nii.gz", "does not fit scanner"),
        ([lm, "--norm", ns, "--mumap", str(d / "nope.nii.gz")], "nope.nii.gz", "not found"),
        ([str(d / "none.l"), "--norm", ns, "--mumap", mu], "none.l", "not found"),
        ([lm, "--norm", ns, "--mumap", mu, "--scanner", "petmr9"], "", "unknown scanner preset"),
        ([lm, "--norm", ns, "--mumap", mu, "--iterations", "0"], "", "iterations = 0"),
        ([lm, "--norm", ns, "--mumap", mu, "--subsets", "999"], "", "subsets"),
        ([lm, "--norm", ns, "--mumap", mu, "--span", "4"], "", "span 4"),
        ([lm, "--norm", ns, "--mumap", mu, "--device", "tpu"], "", "tpu"),
        ([lm, "--norm", ns, "--mumap", mu, "--post-filter-fwhm-mm", "-1"], "", "FWHM"),
    ]


def test_bad_inputs_exit_2_with_one_line(acq, tmp_path, capsys, monkeypatch):
    """(c) every bad input exits 2 with one line naming the file and the fix, no traceback, no output file
    and no work folder left, and no step started (histogram and every pipeline step are watched)."""
    cases = _bad_inputs(acq, tmp_path)
    started = []
    for name in ("estimate_norm_file", "randoms_file", "attenuation_file", "scatter_file", "reconstruct_file"):
        monkeypatch.setattr(pl, name, lambda *a, _n=name, **k: started.append(_n))
    monkeypatch.setattr(chain, "histogram_file", lambda *a, **k: started.append("histogram"))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for args, named, words in cases:
        defaults = [
            x for flag, value in (("--scanner", "tiny"), ("--device", "cpu")) if flag not in args for x in (flag, value)
        ]
        code = main(["recon", *args, "--out", str(out_dir / "img.nii.gz"), "--quiet", *defaults])
        err = capsys.readouterr().err.strip()
        assert code == 2, (args, err)
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert err.startswith("petiq: error: ") and named in err and words in err and "Fix: " in err, err
        assert started == [], (args, started)
        assert list(out_dir.iterdir()) == [], args
    # an existing output is refused before any work too, and kept
    (out_dir / "img.nii.gz").write_text("x")
    assert (
        main(
            [
                "recon",
                str(acq["lm"]),
                "--norm",
                str(acq["norm_scan"]),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(out_dir / "img.nii.gz"),
                *FAST,
            ]
        )
        == 2
    )
    assert "exists already" in capsys.readouterr().err and started == []
    assert sorted(p.name for p in out_dir.iterdir()) == ["img.nii.gz"]


def test_norm01_names():
    assert chain.norm01_path("a/sub-01_rec-dose010p0_pet.nii.gz") == Path(
        "a/sub-01_rec-dose010p0_desc-norm01_pet.nii.gz"
    )
    assert chain.norm01_path("img.nii.gz") == Path("img_desc-norm01.nii.gz")


def test_steps_logged_with_timings_and_a_failed_step_leaves_nothing(acq, tmp_path, caplog, monkeypatch):
    """Each step logs its time; a step that fails half-way (here: scatter) leaves no output and no work folder."""
    import logging

    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    work = acq["kept"]
    caplog.set_level(logging.INFO, logger="petiq.recon")

    def broken(*args, **kwargs):
        raise RuntimeError("scatter broke")

    monkeypatch.setattr(pl, "scatter_file", broken)
    with pytest.raises(RuntimeError, match="scatter broke"):
        chain.reconstruct_acquisition(
            work / "sinograms.npz",
            norm=acq["norm_scan"],
            mumap=acq["mumap"],
            out_nii=tmp_path / "img.nii.gz",
            scanner="tiny",
            backend="cpu",
            progress=False,
        )
    assert list(tmp_path.iterdir()) == []  # no image, no temporary work folder
    done = [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]
    assert [m.split("] ")[1].split(" done")[0] for m in done] == ["norm", "attenuation", "histogram", "randoms"]


def test_inputs_in_the_work_folder_are_never_removed(acq, tmp_path, capsys):
    """Inputs inside --work-dir survive the clean-up; an input where a step file would go is refused before work."""
    import shutil

    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copy(acq["kept"] / "sinograms.npz", work / "my_sino.npz")
    shutil.copy(acq["kept"] / "norm.npz", work / "my_norm.npz")
    base = ["recon", "--norm", str(work / "my_norm.npz"), "--mumap", str(acq["mumap"]), "--work-dir", str(work), *FAST]
    assert main([*base, str(work / "my_sino.npz"), "--out", str(tmp_path / "a.nii.gz")]) == 0
    assert sorted(p.name for p in work.iterdir()) == ["my_norm.npz", "my_sino.npz"]
    (work / "my_sino.npz").rename(work / "randoms.npz")
    capsys.readouterr()
    assert main([*base, str(work / "randoms.npz"), "--out", str(tmp_path / "b.nii.gz")]) == 2
    assert "step file randoms.npz" in capsys.readouterr().err
    assert not (tmp_path / "b.nii.gz").exists() and (work / "randoms.npz").is_file()


def test_recon_of_a_thinned_dicom_export(acq, tmp_path):
    """The DICOM form (.dcm + .bf) of the acquisition thinned to 50 %: the image is half the ball's activity."""
    from petiq.listmode import thin_listmode

    thin_listmode(acq["lm"], tmp_path / "half.dcm", 0.5, seed=7, scanner=Scanner.tiny())
    assert (tmp_path / "half.bf").is_file()
    out = tmp_path / "out" / "half_pet.nii.gz"
    assert (
        main(
            [
                "recon",
                str(tmp_path / "half.dcm"),
                "--norm",
                str(acq["norm_scan"]),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    data = np.asarray(nib.load(out).dataobj)
    # half the counts: 0.5 x 300 kBq/mL; 8 % (the full-count test's 6 % widened for √2 more noise)
    assert float(data[_inner(Scanner.tiny())].mean()) == pytest.approx(0.5 * ACTIVITY, rel=0.08)
    assert sorted(p.name for p in out.parent.iterdir()) == [
        "half_desc-norm01_pet.nii.gz",
        "half_pet.json",
        "half_pet.nii.gz",
    ]


def test_unserialisable_metadata_is_refused_before_any_step(acq, tmp_path):
    with pytest.raises(PetiqInputError, match="JSON"):
        chain.reconstruct_acquisition(
            acq["lm"],
            norm=acq["norm_scan"],
            mumap=acq["mumap"],
            out_nii=tmp_path / "x.nii.gz",
            scanner="tiny",
            metadata={"when": object()},
        )
    assert list(tmp_path.iterdir()) == []


def test_recon_with_the_scanners_component_norm(acq, tmp_path, capsys):
    """The norm given as the scanner's component norm (.n + .n.hdr): the simulator's truth written as mMR
    components (petiq.recon.component_norm) reconstructs the ball's activity; a component norm of another
    scanner is refused before any step, naming the file."""
    from petiq.listmode.simulate import scanner_calibration, scanner_truth
    from petiq.recon import norm_assembly, norm_writer

    sc = Scanner.tiny()
    truth = scanner_truth(sc, np.random.default_rng(5))  # the acquisition's scanner_seed
    cn = norm_assembly.component_norm_from_truth(
        sc, truth.crystal_efficiency, truth.radial_factor, scanner_calibration(sc, SPAN)
    )
    norm_writer.write_component_norm(tmp_path / "truth.n", cn, sc)
    out = tmp_path / "img.nii.gz"
    assert (
        main(
            [
                "recon",
                str(acq["lm"]),
                "--norm",
                str(tmp_path / "truth.n"),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(out),
                "--keep-intermediate",
                *FAST,
            ]
        )
        == 0
    )
    data = np.asarray(nib.load(out).dataobj)
    assert float(data[_inner(sc)].mean()) == pytest.approx(ACTIVITY, rel=0.06)
    with np.load(tmp_path / "img_work" / "norm.npz") as z:
        assert str(z["kind"]) == "norm" and "component_crystal_efficiency" in z.files
        np.testing.assert_array_equal(z["norm"], norm_assembly.norm_sinogram(cn, sc, SPAN))
    demo = Scanner.demo()
    other = norm_assembly.component_norm_from_truth(
        demo, np.ones((demo.n_rings, demo.crystals_per_ring)), np.ones(demo.n_radial), 1.0
    )
    norm_writer.write_component_norm(tmp_path / "demo.n", other, demo)
    capsys.readouterr()
    assert (
        main(
            [
                "recon",
                str(acq["lm"]),
                "--norm",
                str(tmp_path / "demo.n"),
                "--mumap",
                str(acq["mumap"]),
                "--out",
                str(tmp_path / "bad.nii.gz"),
                *FAST,
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "demo.n.hdr" in err and "originating system" in err
    assert not (tmp_path / "bad.nii.gz").exists()


# ----------------------------------------------------------------------------- μ-maps as a site exports them
WATER = 0.096


def _ball_on_grid(sc: Scanner) -> np.ndarray:
    """The water ball (r 40 mm) on the tiny scanner's centred grid, cm⁻¹, [x, y, z]."""
    shape, vox = sc.image_shape, sc.voxel_size_mm
    axes = [(np.arange(n) - (n - 1) / 2) * v for n, v in zip(shape, vox)]
    r = np.sqrt(axes[0][:, None, None] ** 2 + axes[1][None, :, None] ** 2 + axes[2][None, None, :] ** 2)
    return np.where(r <= 40.0, WATER, 0.0).astype(np.float32)


#: the table plate of the hardware μ-map: scanner x -30..30 mm, y -50 and -54 mm (grid columns 8..23,
#: rows 3 and 2 of the tiny grid), every slice; 0.05 cm⁻¹
PLATE_MU = 0.05


def _hardware_plate(d: Path) -> Path:
    """A hardware μ-map (e7 Interfile with NiftyPET's placement keys) of the plate; with bed position 0
    NiftyPET ``get_hmupos`` puts its voxel (k, j, i) at x = f1 + 4 i, y = -(f2 + 4 j), z = f3 + 4 k (mm)
    ($umap origin 0): f = (-30, 50, -28) puts it on the tiny grid's columns 8.., rows 3, 2 and slices 0..14."""
    plate = np.full((15, 2, 16), PLATE_MU, np.float32)  # [z, y, x]
    extra = "".join(f"$umap origin (pixels) [{i}] := 0\n" for i in (1, 2, 3)) + (
        "$origin offset (mm) [1] := -30\n$origin offset (mm) [2] := 50\n$origin offset (mm) [3] := -28\n"
    )
    return write_e7_interfile(d / "umap_table.v", plate, 4.0, extra)


def _plate_on_grid(sc: Scanner) -> np.ndarray:
    out = np.zeros(sc.image_shape, np.float32)
    out[8:24, 2:4, :] = PLATE_MU
    return out


@pytest.fixture(scope="module")
def site_mumaps(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("site_mu")
    sc = Scanner.tiny()
    ball = _ball_on_grid(sc)
    # e7: [z, row v, column u], column u along +x, row v along -y
    e7 = write_e7_interfile(d / "mu.v", e7_layout(ball), 4.0)
    dcm = write_mumap_dicom_series(d / "umap_dicom", ball, 4.0)
    return {"ball": ball, "e7_v": d / "mu.v", "e7_hdr": e7, "dicom": dcm, "hardware": _hardware_plate(d)}


def _recon_attenuation(acq, tmp_path, mumap, *extra) -> np.ndarray:
    work = acq["kept"]
    out = tmp_path / "img.nii.gz"
    assert (
        main(
            [
                "recon",
                str(work / "sinograms.npz"),
                "--norm",
                str(work / "norm.npz"),
                "--mumap",
                str(mumap),
                "--out",
                str(out),
                "--work-dir",
                str(tmp_path / "w"),
                "--keep-intermediate",
                *extra,
                *FAST,
            ]
        )
        == 0
    )
    data = np.asarray(nib.load(out).dataobj)
    assert float(data[_inner(Scanner.tiny())].mean()) == pytest.approx(ACTIVITY, rel=0.06)
    with np.load(tmp_path / "w" / "attenuation.npz") as att:
        return att["attenuation"], str(att["mumap_format"])


@pytest.mark.parametrize("form", ["e7_v", "e7_hdr", "dicom"])
def test_recon_takes_e7_interfile_and_dicom_mumaps(acq, site_mumaps, tmp_path, form):
    """The ball's μ-map as e7 Interfile (.v or .v.hdr) and as a DICOM series: the attenuation factors are
    exp(-∫μ) of the ball on the scanner grid (computed here from the array), the image is the ball's 300 kBq/mL."""
    from petiq.recon.corrections import attenuation_factors

    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    sc = Scanner.tiny()
    att, fmt = _recon_attenuation(acq, tmp_path, site_mumaps[form])
    assert fmt == ("dicom" if form == "dicom" else "interfile")
    expected = attenuation_factors(site_mumaps["ball"], sc.voxel_size_mm, sc, SPAN)
    np.testing.assert_allclose(att, expected, rtol=1e-5, atol=1e-6)


def test_recon_adds_a_hardware_mumap_placed_by_the_bed_position(acq, site_mumaps, tmp_path):
    """--hardware-mumap with --bed-position-mm 0 on sinograms: the factors are exp(-P(μ_ball + μ_plate)), the
    plate placed by NiftyPET's formula (derived in _hardware_plate)."""
    from petiq.recon.corrections import attenuation_factors

    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    sc = Scanner.tiny()
    att, _ = _recon_attenuation(
        acq, tmp_path, site_mumaps["e7_hdr"], "--hardware-mumap", str(site_mumaps["hardware"]), "--bed-position-mm", "0"
    )
    # exp(-∫(μ_ball + μ_plate)) per span-1 member, then the member mean (not the product of the two means)
    expected = attenuation_factors(site_mumaps["ball"] + _plate_on_grid(sc), sc.voxel_size_mm, sc, SPAN)
    plate = attenuation_factors(_plate_on_grid(sc), sc.voxel_size_mm, sc, SPAN)
    assert float(plate.min()) < 0.9  # the plate attenuates measurably
    np.testing.assert_allclose(att, expected, rtol=1e-5, atol=1e-6)


def test_hardware_mumap_without_a_bed_position_is_refused_before_any_step(
    acq, site_mumaps, tmp_path, capsys, monkeypatch
):
    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    started = []
    for name in ("estimate_norm_file", "randoms_file", "attenuation_file", "scatter_file", "reconstruct_file"):
        monkeypatch.setattr(pl, name, lambda *a, _n=name, **k: started.append(_n))
    work = acq["kept"]
    code = main(
        [
            "recon",
            str(work / "sinograms.npz"),
            "--norm",
            str(work / "norm.npz"),
            "--mumap",
            str(site_mumaps["e7_hdr"]),
            "--hardware-mumap",
            str(site_mumaps["hardware"]),
            "--out",
            str(tmp_path / "img.nii.gz"),
            *FAST,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "umap_table.v.hdr" in err and "bed position" in err and "--bed-position-mm" in err, err
    assert started == [] and list(tmp_path.iterdir()) == []


def _with_gantry_offset(folder: Path, gto) -> None:
    """The DICOM μ-map's first file given a CSA Series Header Info (0029,1020) with GantryTableHomeOffset."""
    import pydicom
    from test_mumap import _csa2

    first = min(folder.iterdir())  # the file read_table_offsets_mm reads (the first by name)
    ds = pydicom.dcmread(str(first))
    ds.add_new((0x0029, 0x0010), "LO", "SIEMENS CSA HEADER")
    ds.add_new((0x0029, 0x1020), "OB", _csa2({"GantryTableHomeOffset": list(gto)}))
    ds.save_as(str(first))


def test_recon_places_the_hardware_by_the_dicom_table_offsets(acq, site_mumaps, tmp_path, capsys):
    """GantryTableHomeOffset from the DICOM μ-map's CSA header and a given TablePositionOrigin move the plate by
    gto - tpo = (4, 0, -8) mm: x + 4 (one voxel to +x) and z = bed - vpos_z: + 8 (two slices to +z)."""
    import shutil

    from petiq.recon.corrections import attenuation_factors

    if "kept" not in acq:
        pytest.skip("needs the kept step files of the list-mode test")
    sc = Scanner.tiny()
    dcm = tmp_path / "umap_csa"
    shutil.copytree(site_mumaps["dicom"], dcm)
    _with_gantry_offset(dcm, (4.0, 10.0, -1220.0))
    run = tmp_path / "run"
    run.mkdir()
    att, fmt = _recon_attenuation(
        acq,
        run,
        dcm,
        "--hardware-mumap",
        str(site_mumaps["hardware"]),
        "--bed-position-mm",
        "0",
        "--table-position-origin-mm",
        "0",
        "10",
        "-1212",
    )
    assert fmt == "dicom"
    plate = np.zeros(sc.image_shape, np.float32)
    plate[9:25, 2:4, 2:] = PLATE_MU
    expected = attenuation_factors(site_mumaps["ball"] + plate, sc.voxel_size_mm, sc, SPAN)
    np.testing.assert_allclose(att, expected, rtol=1e-5, atol=1e-6)
    # only one of the two offsets known: refused before any step, naming the μ-map and the missing flag
    capsys.readouterr()
    code = main(
        [
            "recon",
            str(acq["kept"] / "sinograms.npz"),
            "--norm",
            str(acq["kept"] / "norm.npz"),
            "--mumap",
            str(dcm),
            "--hardware-mumap",
            str(site_mumaps["hardware"]),
            "--bed-position-mm",
            "0",
            "--out",
            str(tmp_path / "x" / "img.nii.gz"),
            *FAST,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "umap_csa" in err and "--table-position-origin-mm" in err, err
    assert not (tmp_path / "x").exists()


def test_a_span_stored_as_a_one_element_array_is_read_and_two_spans_are_refused(acq, tmp_path):
    """Other writers save scalars as arrays of one element; a file with several spans is an input error."""
    sc = Scanner.tiny()
    norm = tmp_path / "norm.npz"
    pl.estimate_norm_file(acq["norm_scan"], norm, sc, SPAN)
    members = dict(np.load(norm))
    for stored, ok in (([SPAN], True), ([SPAN, SPAN], False), ([11.5], False)):
        path = tmp_path / f"norm-{len(stored)}-{stored[0]}.npz"
        np.savez(path, **{**members, "span": np.asarray(stored)})
        if ok:
            assert cio.read_correction(path, "norm", sc, SPAN, ("norm",))["norm"].shape == members["norm"].shape
        else:
            with pytest.raises(PetiqInputError, match=r"stores span .* not one whole number"):
                cio.read_correction(path, "norm", sc, SPAN, ("norm",))

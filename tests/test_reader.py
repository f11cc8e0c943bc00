"""The virtual reader (petiq.scoring.reader) on a small synthetic brain: truth masks, measures, monotonicity
in dose, quantisation, determinism and calibration against the paper's targets."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from petiq.cohort.phantom import PatientAnatomy, grid_affine
from petiq.core.doses import PAPER_DOSES, dose_category
from petiq.core.errors import PetiqInputError
from petiq.scoring import measures, reader, truth
from petiq.scoring.agreement import RATINGS_COLUMNS, SCORES, calibration_table, check_ratings, load_targets
from petiq.scoring.calibrate import calibrate_reader
from petiq.scoring.measures import measure_array
from petiq.scoring.reader import ReaderModel, internal_scores, virtual_ratings
from petiq.scoring.truth import reader_truth

#: A toy atlas: frontal (FTD's pattern), cuneus (DLB's), two regions no pattern touches, white matter.
NAMES = {
    1: "FL superior frontal gyrus L",
    2: "PL postcentral gyrus L",
    3: "OL cuneus L",
    4: "TL superior temporal gyrus middle part L",
    44: "corpus callosum",
}
PH_SHAPE, PH_VOXEL = (40, 44, 36), (2.5, 2.5, 2.5)
REF_SHAPE, REF_VOXEL = (30, 34, 28), (3.4, 3.4, 3.3)
RECON_FWHM_MM = 6.0


@dataclass
class ToyPhantom:
    activity: np.ndarray
    gm: np.ndarray
    wm: np.ndarray
    labels: np.ndarray
    brain_mask: np.ndarray
    affine: np.ndarray
    regional_gm_suv: dict


def toy_phantom(diagnosis: str, severity: float) -> ToyPhantom:
    """An ellipsoidal brain: a 7 mm grey-matter shell in four labelled sectors around white matter."""
    affine = grid_affine(PH_SHAPE, PH_VOXEL)
    ijk = np.indices(PH_SHAPE).reshape(3, -1)
    x, y, z = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *PH_SHAPE)
    r = np.sqrt((x / 38.0) ** 2 + (y / 46.0) ** 2 + (z / 34.0) ** 2)
    brain = r <= 1.0
    wm = (r <= 1.0 - 7.0 / 38.0).astype(np.float32)
    gm = (brain & (wm == 0)).astype(np.float32)
    sector = np.where(y > 12, 1, np.where(y < -12, 3, np.where(z > 0, 2, 4)))
    labels = np.where(wm > 0, 44, np.where(brain, sector, 0)).astype(np.uint8)
    weights = {"FTD": {1: 1.0}, "DLB": {3: 1.0}, "CN": {}}[diagnosis]
    suv = {k: 8.0 * (1.0 - 0.35 * severity * weights.get(k, 0.0)) for k in (1, 2, 3, 4)}
    gm_suv = np.zeros(256, np.float32)
    for k, v in suv.items():
        gm_suv[k] = v
    activity = (gm * gm_suv[labels] + 2.4 * wm).astype(np.float32)
    return ToyPhantom(activity, gm, wm, labels, brain.astype(np.uint8), affine, {NAMES[k]: v for k, v in suv.items()})


def toy_truth(diagnosis: str, severity: float, pid: str = "sub-01") -> dict:
    return reader_truth(
        toy_phantom(diagnosis, severity),
        toy_phantom("CN", 0.0),
        NAMES,
        diagnosis=diagnosis,
        severity=severity,
        ref_shape=REF_SHAPE,
        ref_affine=grid_affine(REF_SHAPE, REF_VOXEL),
        participant_id=pid,
    )


def toy_recon(
    diagnosis: str, severity: float, dose: float, noise_seed: int = 0, counts_scale: float = 1.0
) -> np.ndarray:
    """A 'reconstruction': the truth blurred to RECON_FWHM_MM on the scanner grid, plus correlated
    noise whose relative SD grows as 1/sqrt(counts); one noise field per patient, scaled per dose."""
    ph = toy_phantom(diagnosis, severity)
    sigma = RECON_FWHM_MM / 2.3548 / np.asarray(PH_VOXEL)
    blurred = ndimage.gaussian_filter(ph.activity, sigma)
    mean_image = truth.resample_to_grid(blurred, ph.affine, REF_SHAPE, grid_affine(REF_SHAPE, REF_VOXEL))
    field = ndimage.gaussian_filter(np.random.default_rng(noise_seed).normal(size=REF_SHAPE), 0.7)
    field /= field.std()
    level = 0.25 / np.sqrt(dose / 100.0 * counts_scale)
    return (mean_image * (1.0 + level * field) + 0.05 * level * field).astype(np.float32)


@pytest.fixture(scope="module")
def truths() -> dict:
    return {"FTD": toy_truth("FTD", 1.0), "CN": toy_truth("CN", 0.0, "sub-02"), "DLB": toy_truth("DLB", 0.5, "sub-03")}


# --------------------------------------------------------------------------- truth and measures


def test_truth_masks_follow_the_pattern(truths):
    ftd, cn = truths["FTD"], truths["CN"]
    labels = ftd["labels"]
    assert ftd["affected"].any() and np.all(labels[ftd["affected"]] == 1)  # only the frontal sector
    assert set(np.unique(labels[ftd["reference"]])) == {2, 4}  # regions no pattern touches
    assert ftd["label_reduction"][1] == pytest.approx(0.35, abs=1e-6) and ftd["label_reduction"][2] == 0
    assert 0.1 < float(ftd["pattern_extent"]) < 0.5
    # cognitively normal: the places where patterns would show, expected to look normal
    assert set(np.unique(cn["labels"][cn["affected"]])) == {1, 3}
    assert float(cn["pattern_extent"]) == 0.0 and not cn["label_reduction"].any()
    assert not (ftd["wm_deep"] & ftd["cortex"]).any() and ftd["wm_deep"].sum() >= 20
    assert tuple(ftd["ref_shape"]) == REF_SHAPE and ftd["patient"].shape == tuple(np.diff(ftd["bbox"]).ravel())


def test_measures_follow_noise_resolution_and_pattern(truths):
    high = measure_array(toy_recon("FTD", 1.0, 100.0), truths["FTD"])
    low = measure_array(toy_recon("FTD", 1.0, 1.0), truths["FTD"])
    assert low["noise_cov"] > 5 * high["noise_cov"]
    assert low["pattern_noise"] > 3 * high["pattern_noise"]
    assert high["gw_cnr"] > 5 * low["gw_cnr"]
    assert high["fwhm_mm"] == pytest.approx(RECON_FWHM_MM, abs=2.0)  # blur on top of the scanner's voxels
    clean = measure_array(toy_recon("FTD", 1.0, 1e6), truths["FTD"])  # almost noise-free: measured = expected
    assert clean["pattern_contrast"] == pytest.approx(clean["pattern_contrast_expected"], abs=0.015)
    assert abs(high["pattern_contrast"] - high["pattern_contrast_expected"]) < 3 * high["pattern_noise"]
    assert 0.1 < high["pattern_contrast_expected"] < 0.35  # a 35 % reduction, diluted by partial volume
    normal = measure_array(toy_recon("CN", 0.0, 1e6), truths["CN"])
    assert normal["pattern_contrast_expected"] == pytest.approx(0.0, abs=1e-6)
    assert abs(normal["pattern_contrast"]) < 0.01
    scaled = measure_array(toy_recon("FTD", 1.0, 100.0) / 17.0, truths["FTD"])  # 0–1 images measure the same
    assert all(scaled[k] == pytest.approx(high[k], rel=1e-4, abs=1e-6) for k in high)


def test_measure_image_reads_the_sidecar(tmp_path, truths):
    affine = grid_affine(REF_SHAPE, REF_VOXEL)
    from petiq.core import bids

    root = tmp_path / "bids"
    pet = bids.recon_image_path(root, "sub-01", 25)
    pet.parent.mkdir(parents=True)
    image = toy_recon("FTD", 1.0, 25.0)
    nib.save(nib.Nifti1Image(image, affine), pet)
    bids.recon_sidecar_path(root, "sub-01", 25).write_text(
        json.dumps(
            {"participant_id": "sub-01", "DoseFractionPercent": 25.0, "InjectedRadioactivity": 50.0, "BodyWeight": 80.0}
        )
    )
    norm01 = bids.norm01_path(root, "sub-01", 25)  # in the derivatives: its sidecar is the reconstruction's
    norm01.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(image / image.max(), affine), norm01)
    np.savez(tmp_path / "truth.npz", **truths["FTD"])
    frame = measures.measure_images([pet, norm01], [tmp_path / "truth.npz"] * 2, progress=False)
    for _, row in frame.iterrows():
        assert (row["participant_id"], row["dose"], row["diagnosis"]) == ("sub-01", 25.0, "FTD")
        assert row["dose_per_kg"] == pytest.approx(50.0 / 80.0)
    wrong = tmp_path / "wrong_pet.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8), np.float32), affine), wrong)
    with pytest.raises(PetiqInputError, match="wrong_pet.nii.gz: the image has shape"):
        measures.measure_image(wrong, truths["FTD"])


def test_write_reader_truth_rebuilds_and_checks_the_phantom(tmp_path, monkeypatch):
    import petiq.cohort.anatomy
    import petiq.cohort.phantom

    class Template:
        names = NAMES

    monkeypatch.setattr(petiq.cohort.anatomy, "load_template", lambda _dir: Template())
    monkeypatch.setattr(
        petiq.cohort.phantom,
        "make_phantom",
        lambda tpl, anat, shape, voxel, *, diagnosis, severity, **kw: toy_phantom(diagnosis, severity),
    )
    anatomy = PatientAnatomy(
        (1, 1, 1), (0, 0, 0), (0, 0, 0), 2.0, 0.3, 1.0, 1.0, 6.0, 5.0, 0.15, 1.0, 0.0, 0.1, {"warp": 1}
    )
    sidecar = {
        "participant_id": "sub-07",
        "diagnosis": "FTD",
        "severity": 1.0,
        "injected_mbq": 200.0,
        "weight_kg": 70.0,
        "uptake_min": 35.0,
        "ImageShape": list(PH_SHAPE),
        "VoxelSizeMM": list(PH_VOXEL),
        "Phantom": {"anatomy": asdict(anatomy)},
    }
    (tmp_path / "sub-07.json").write_text(json.dumps(sidecar))
    nib.save(
        nib.Nifti1Image(np.zeros(REF_SHAPE, np.float32), grid_affine(REF_SHAPE, REF_VOXEL)), tmp_path / "ref.nii.gz"
    )
    nib.save(
        nib.Nifti1Image(toy_phantom("FTD", 1.0).activity, grid_affine(PH_SHAPE, PH_VOXEL)), tmp_path / "truth.nii.gz"
    )
    out = tmp_path / "sub-07_reader-truth.npz"
    truth.write_reader_truth(
        tmp_path / "sub-07.json", "anatomy", tmp_path / "ref.nii.gz", out, truth_image=tmp_path / "truth.nii.gz"
    )
    saved = truth.load_truth(out)
    assert str(saved["participant_id"]) == "sub-07" and saved["affected"].any()
    nib.save(
        nib.Nifti1Image(toy_phantom("FTD", 0.5).activity, grid_affine(PH_SHAPE, PH_VOXEL)), tmp_path / "other.nii.gz"
    )
    with pytest.raises(PetiqInputError, match="does not reproduce"):
        truth.write_reader_truth(
            tmp_path / "sub-07.json", "anatomy", tmp_path / "ref.nii.gz", out, truth_image=tmp_path / "other.nii.gz"
        )
    del sidecar["Phantom"]
    (tmp_path / "bad.json").write_text(json.dumps(sidecar))
    with pytest.raises(PetiqInputError, match="bad.json: the sidecar has no Phantom.anatomy"):
        truth.write_reader_truth(tmp_path / "bad.json", "anatomy", tmp_path / "ref.nii.gz", out)


# --------------------------------------------------------------------------- the reader on toy images


@pytest.fixture(scope="module")
def toy_measures(truths) -> pd.DataFrame:
    rows = []
    for pid, diagnosis, severity in (("sub-01", "FTD", 1.0), ("sub-02", "CN", 0.0), ("sub-03", "DLB", 0.5)):
        truth = truths[diagnosis]
        for dose in PAPER_DOSES:
            m = measure_array(toy_recon(diagnosis, severity, dose, noise_seed=int(pid[-1])), truth)
            rows.append(
                {"participant_id": pid, "dose": dose, "dose_per_kg": 2.8 * dose / 100, "diagnosis": diagnosis, **m}
            )
    return pd.DataFrame(rows)


def test_internal_scores_rise_with_dose(toy_measures):
    scores = internal_scores(toy_measures, ReaderModel())
    for pid in toy_measures["participant_id"].unique():
        sel = (toy_measures["participant_id"] == pid).to_numpy()
        order = np.argsort(toy_measures.loc[sel, "dose"].to_numpy())
        assert np.all(np.diff(scores[sel][order], axis=0) > 0), pid
    assert np.all((scores > 0) & (scores < 3))


def _plan(pids, doses_per_pid, rereads=()):
    rows = [
        (f"x{i}", p, d, dose_category(d), 1 + i % 3, "first")
        for i, (p, d) in enumerate((p, d) for p in pids for d in doses_per_pid[p])
    ]
    rows += [(f"r{i}", p, d, dose_category(d), 4, "repeat") for i, (p, d) in enumerate(rereads)]
    return pd.DataFrame(rows, columns=list(reader.PLAN_COLUMNS))


def test_virtual_ratings_are_quantised_deterministic_and_image_local(toy_measures):
    pids = ["sub-01", "sub-02", "sub-03"]
    plan = _plan(pids, {p: PAPER_DOSES for p in pids}, rereads=[("sub-01", 5.0), ("sub-02", 100.0)])
    model = ReaderModel()
    ratings = virtual_ratings(toy_measures, None, plan, model, raters=3, seed=11)
    check_ratings(ratings)
    assert list(ratings.columns) == list(RATINGS_COLUMNS)
    assert ratings[["GQR", "PR", "DC"]].isin(SCORES).all().all()
    counts = ratings.groupby(["rater", "reading"]).size()
    assert counts[("1", "first")] == 21 and counts[("1", "repeat")] == 2 and ("2", "repeat") not in counts
    assert len(ratings) == 21 * 3 + 2
    pd.testing.assert_frame_equal(ratings, virtual_ratings(toy_measures, None, plan, model, raters=3, seed=11))
    assert not ratings.equals(virtual_ratings(toy_measures, None, plan, model, raters=3, seed=12))
    # one image's scores do not depend on which other images are read
    alone = virtual_ratings(toy_measures, None, _plan(["sub-03"], {"sub-03": (10.0,)}), model, raters=3, seed=11)
    both = ratings[(ratings["participant_id"] == "sub-03") & (ratings["dose"] == 10.0)].reset_index(drop=True)
    pd.testing.assert_frame_equal(alone.drop(columns="session"), both.drop(columns="session"))
    # readers' noise averages out: the mean reading rises with dose
    many = virtual_ratings(toy_measures, None, _plan(pids, {p: PAPER_DOSES for p in pids}), model, raters=12, seed=3)
    means = many.groupby("dose")[["GQR", "PR", "DC"]].mean()
    assert np.all(np.diff(means.to_numpy(), axis=0) >= 0)
    assert means.loc[100.0].min() >= 2.0 and means.loc[0.5].max() <= 1.5


def test_virtual_ratings_reject_unmeasured_images(toy_measures):
    plan = _plan(["sub-09"], {"sub-09": (5.0,)})
    with pytest.raises(PetiqInputError, match="no image measures for 1 planned image"):
        virtual_ratings(toy_measures, None, plan, ReaderModel(), raters=2, seed=0)
    with pytest.raises(PetiqInputError, match="re-reads without a first reading"):
        virtual_ratings(
            toy_measures, None, _plan(["sub-01"], {"sub-01": (5.0,)}, rereads=[("sub-01", 50.0)]), ReaderModel(), 2, 0
        )


def test_reader_model_json_round_trip(tmp_path):
    model = ReaderModel(gqr_mid=0.3, calibration={"loss": 1.5})
    model.write(tmp_path / "reader.json")
    assert ReaderModel.read(tmp_path / "reader.json") == model
    with pytest.raises(PetiqInputError, match="unknown reader parameter"):
        ReaderModel.from_dict({"gqr_mid": 0.1, "typo": 1})


def test_fig03_colour_scale(tmp_path):
    from petiq.plots.scoring import plot_fig03_colour_scale

    image = toy_recon("FTD", 1.0, 25.0)
    path = tmp_path / "img_desc-norm01_pet.nii.gz"
    nib.save(nib.Nifti1Image(np.clip(image / image.max(), 0, 1), grid_affine(REF_SHAPE, REF_VOXEL)), path)
    plot_fig03_colour_scale(path, {"GQR": 1.0, "PR": 2.0, "DC": 2.0}, tmp_path / "fig03.png")
    assert (tmp_path / "fig03.png").stat().st_size > 5000
    with pytest.raises(PetiqInputError, match="lack"):
        plot_fig03_colour_scale(path, {"GQR": 1.0}, tmp_path / "x.png")


def test_reading_colormap():
    from petiq.plots.colours import reading_colormap

    cmap = reading_colormap()
    colours = cmap(np.arange(cmap.N))[:, :3]
    assert cmap.N == 20 and len({tuple(c) for c in colours.round(4)}) == 20
    assert np.allclose(colours[0], 0) and np.allclose(colours[-1], 1)
    assert colours[4, 2] > colours[4, 0]  # blue early, red late
    assert colours[15, 0] > colours[15, 2]


# --------------------------------------------------------------------------- calibration


def synthetic_measures(seed: int = 5) -> pd.DataFrame:
    """Measures of 12 patients × 7 doses from a counting-noise model (the demo's orders of magnitude):
    noise ∝ 1/sqrt(dose per kg); pattern contrast by diagnosis and severity."""
    rng = np.random.default_rng(seed)
    diagnoses = ["CN"] * 4 + ["AD"] * 4 + ["FTD", "FTD", "DLB", "DLB"]
    rows = []
    for i, diagnosis in enumerate(diagnoses):
        pid = f"sub-{i + 1:02d}"
        full_per_kg = rng.uniform(1.8, 4.2)
        contrast = 0.0 if diagnosis == "CN" else rng.uniform(0.07, 0.25)
        extent = 0.0 if diagnosis == "CN" else rng.uniform(0.2, 0.37)
        patient = np.exp(rng.normal(0, 0.1))
        for dose in PAPER_DOSES:
            counts = dose / 100 * full_per_kg / 2.8
            rows.append(
                {
                    "participant_id": pid,
                    "dose": dose,
                    "dose_per_kg": full_per_kg * dose / 100,
                    "diagnosis": diagnosis,
                    "gw_cnr": 4.0
                    * patient
                    * np.sqrt(counts)
                    / (1 + 0.3 / np.sqrt(counts * 200))
                    * np.exp(rng.normal(0, 0.05)),
                    "pattern_contrast_expected": contrast,
                    "pattern_noise": np.hypot(0.05 / np.sqrt(counts), 0.01) * np.exp(rng.normal(0, 0.05)),
                    "pattern_extent": extent,
                }
            )
    return pd.DataFrame(rows)


def paper_plan(measures: pd.DataFrame) -> pd.DataFrame:
    """The paper's design: every patient once per category (doses rotated), 9 images re-read later."""
    pids = sorted(measures["participant_id"].unique())
    doses = {p: ((0.5, 1.0)[i % 2], (5.0, 10.0)[i % 2], (25.0, 50.0, 100.0)[i % 3]) for i, p in enumerate(pids)}
    rereads = [(p, doses[p][i % 3]) for i, p in enumerate(pids[:9])]
    return _plan(pids, doses, rereads)


@pytest.fixture(scope="module")
def calibrated():
    measures = synthetic_measures()
    plan = paper_plan(measures)
    model = calibrate_reader(measures, None, plan, seed=2022, replicates=100, maxiter=1500, restarts=2)
    return measures, plan, model


def test_calibration_meets_targets_in_expectation(calibrated):
    _, _, model = calibrated
    expected = model.calibration["expected"]
    for t in load_targets().itertuples(index=False):
        value = expected[t.quantity]
        if t.rule == "min":
            assert value >= t.target, t.quantity
        else:
            assert abs(value - t.target) <= t.tolerance, (t.quantity, value, t.target)
    assert model.calibration["rereads"] == 9 and model.calibration["planned_first_readings"] == 36
    # readers call patterns from noisier images than they call good-looking: GQR rises last
    assert expected["dose.slope_ratio_GQR_over_PR_DC"] >= 1.0


def test_calibrated_ratings_on_a_fixed_seed(calibrated):
    measures, plan, model = calibrated
    ratings = virtual_ratings(measures, None, plan, model, raters=2, seed=2022)
    table = calibration_table(ratings, measures).set_index("quantity")
    assert table["within"].notna().all()
    # one draw of 36 images and 27 re-read scores: sampling can move one or two of the 15 outside their
    # tolerance (seeds 1–6 here: 13–15 within); the stated bar is 13 of 15 (seed 2022: all 15)
    assert table["within"].sum() >= 13, table[["target", "achieved", "within"]]
    assert table.loc["dose.slope_ratio_GQR_over_PR_DC", "within"]


def test_calibration_is_deterministic():
    measures = synthetic_measures()
    plan = paper_plan(measures)
    runs = [calibrate_reader(measures, None, plan, seed=9, replicates=20, maxiter=150, restarts=1) for _ in range(2)]
    assert runs[0] == runs[1] and runs[0].calibration == runs[1].calibration
    other = calibrate_reader(measures, None, plan, seed=10, replicates=20, maxiter=150, restarts=1)
    assert other != runs[0]

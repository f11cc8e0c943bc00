"""Reconstruction stage: corrections (norm, randoms, attenuation, scatter), OP-OSEM, backends, pipeline files."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import bids_validator_errors

from petiq.cohort.phantom import grid_affine
from petiq.core.errors import PetiqInputError
from petiq.listmode.simulate import (
    AcquisitionSettings,
    expected_data,
    iter_span1_counts,
    scanner_truth,
    simulate_norm_scan,
    singles_scale,
)
from petiq.recon import correction_io as cio
from petiq.recon import corrections as corr
from petiq.recon import osem as osem_mod
from petiq.recon import pipeline as pl
from petiq.recon import scatter as sct
from petiq.recon.osem import fov_mask, reconstruct, subset_views, system_model
from petiq.recon.projectors import JosephProjector
from petiq.scanner.geometry import Scanner

SPAN = 11


# ----------------------------------------------------------------------------- a brain-like phantom
@dataclass
class Case:
    """Expected span-11 data of a 'white matter' ellipsoid with a 'grey matter' shell on the tiny
    scanner (its own image grid), from the simulator's count model."""

    scanner: Scanner
    activity: np.ndarray
    mu: np.ndarray
    radius: np.ndarray  # normalised ellipsoid radius of every voxel (1 = object surface)
    norm: np.ndarray
    attenuation: np.ndarray
    trues: np.ndarray
    scatter: np.ndarray
    randoms: np.ndarray
    duration_s: float
    kappa: float

    @property
    def prompts_mean(self) -> np.ndarray:
        return self.trues + self.scatter + self.randoms

    def recon(self, y=None, *, scale=1.0, attenuation=True, scatter=True, **kw) -> np.ndarray:
        y = self.prompts_mean if y is None else y
        kw = {"n_iterations": 10, "n_subsets": 4, "progress": False, "backend": "cpu", **kw}
        return reconstruct(
            y,
            self.scanner,
            SPAN,
            duration_s=self.duration_s,
            calibration_factor=self.kappa,
            norm=self.norm,
            attenuation=self.attenuation if attenuation else None,
            randoms=scale * self.randoms,
            scatter=scale * self.scatter if scatter else None,
            **kw,
        )

    # regions
    @property
    def wm_core(self):
        return self.radius < 0.45

    @property
    def gm_mid(self):
        return (self.radius > 0.68) & (self.radius < 0.82)

    @property
    def background(self):
        return (self.radius > 1.15) & fov_mask(self.scanner)


WM, GM = 8.0, 20.0  # kBq/mL


def phantom(scanner: Scanner):
    shape, vox = scanner.image_shape, scanner.voxel_size_mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * vox[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * vox[1]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * vox[2]
    # semi-axes 44 x 40 x 26 mm: WM inside 0.6 (≥ 6 voxels across), GM shell 0.6-0.9 (3 voxels)
    radius = np.sqrt((x[:, None, None] / 44) ** 2 + (y[None, :, None] / 40) ** 2 + (z[None, None, :] / 26) ** 2)
    activity = (WM * (radius < 0.6) + GM * ((radius >= 0.6) & (radius < 0.9))).astype(np.float32)
    mu = (0.096 * (radius < 1.0)).astype(np.float32)
    return activity, mu, radius


@pytest.fixture(scope="module")
def case() -> Case:
    sc = Scanner.tiny()
    activity, mu, radius = phantom(sc)
    truth = scanner_truth(sc, np.random.default_rng(5))
    settings = AcquisitionSettings(duration_s=600.0, span=SPAN, scatter_fraction=0.35)
    exp = expected_data(activity, mu, sc.voxel_size_mm, sc, truth, settings)
    norm = corr.norm_sinogram(sc, truth.crystal_efficiency, truth.radial_factor, SPAN)
    members = sc.sinogram_members(SPAN).astype(np.float32)[:, None, None]
    randoms = corr.crystal_pair_sums(sc, exp.singles_cps, SPAN) * np.float32(
        2 * settings.coincidence_window_ns * 1e-9 * settings.duration_s
    )
    # a long acquisition (high counts) with a 20 % randoms level; D carries the count scale
    boost = 4e6 / float((norm * members * (exp.emission + exp.scatter)).sum())
    trues = norm * members * exp.emission * np.float32(boost)
    scatter = norm * members * exp.scatter * np.float32(boost)
    randoms = randoms * np.float32(0.25 * trues.sum() / randoms.sum())
    return Case(
        sc,
        activity,
        mu,
        radius,
        norm,
        corr.attenuation_factors(mu, sc.voxel_size_mm, sc, SPAN),
        trues,
        scatter,
        randoms,
        settings.duration_s * boost,
        exp.summary["effective_calibration_factor"],
    )


# ----------------------------------------------------------------------------- system model
class _ExpectationRng:
    """Stands in for a Generator in :func:`iter_span1_counts`: 'draws' the expectation (scaled up
    so the uint32 cast keeps 6 digits)."""

    SCALE = 1e6

    def poisson(self, lam):
        return np.rint(np.asarray(lam) * self.SCALE)


def test_system_model_matches_the_simulator_span1_expectation():
    """The simulator's span-1 expectation summed into span 11 is the exact member sum
    Σ_i n_i·a_i·κ·D·(P₁ x)_i + s + r; the reconstruction's a̅·n̄·κ·D·(P x) + r + s (P = sum over
    members, a̅ and n̄ their means, r = sum of members) equals it up to the covariance of the
    members' factors (measured ≤ 0.36 % per bin on the tiny scanner)."""
    sc = Scanner.tiny()
    activity, mu, _ = phantom(sc)
    truth = scanner_truth(sc, np.random.default_rng(5))
    settings = AcquisitionSettings(
        duration_s=600.0, span=SPAN, scatter_fraction=0.3, singles_cps_per_mbq=4000.0 / singles_scale(sc)
    )  # 4000 cps/MBq per crystal
    exp = expected_data(activity, mu, sc.voxel_size_mm, sc, truth, settings)
    smap = sc.span1_to_sinogram(SPAN)
    prompts = np.zeros(sc.sinogram_shape(SPAN))
    delayeds = np.zeros_like(prompts)
    for z, p, d in iter_span1_counts(exp, sc, truth, settings, _ExpectationRng(), progress=False):
        prompts[smap[z]] += p / _ExpectationRng.SCALE
        delayeds[smap[z]] += d / _ExpectationRng.SCALE
    norm = corr.norm_sinogram(sc, truth.crystal_efficiency, truth.radial_factor, SPAN)
    att = corr.attenuation_factors(mu, sc.voxel_size_mm, sc, SPAN)
    proj = JosephProjector(sc, span=SPAN)
    members = sc.sinogram_members(SPAN)[:, None, None]
    mult, _ = system_model(
        sc,
        SPAN,
        duration_s=600.0,
        calibration_factor=exp.summary["effective_calibration_factor"],
        norm=norm,
        attenuation=att,
    )
    randoms = corr.crystal_pair_sums(sc, exp.singles_cps, SPAN) * (2 * settings.coincidence_window_ns * 1e-9 * 600.0)
    model = mult * proj.forward(activity) + norm * members * exp.scatter + randoms
    np.testing.assert_allclose(model, prompts, rtol=5e-3, atol=2e-5 * prompts.max())
    assert np.abs(model - prompts).sum() / prompts.sum() < 5e-4
    np.testing.assert_allclose(randoms, delayeds, rtol=2e-3, atol=2e-5 * delayeds.max())
    # the exact member sum, built here: every span-1 LOR with its own crystal pair, attenuation and
    # line integral; the span-11 map from the definition (ring differences -5..5, 6..16, ...)
    ra, rb = sc.span1_rings()
    view, t = np.meshgrid(np.arange(sc.n_views), np.arange(sc.n_radial), indexing="ij")
    tp = t - sc.n_radial // 2
    det_a = (view + np.floor_divide(tp, 2)) % sc.crystals_per_ring  # STIR/CTI interleaving
    det_b = (view - (tp + 1) // 2 + sc.crystals_per_ring // 2) % sc.crystals_per_ring
    eff, g = truth.crystal_efficiency.astype(np.float64), truth.radial_factor.astype(np.float64)
    proj1 = JosephProjector(sc, span=1)
    line1 = proj1.forward(activity).astype(np.float64)
    att1 = np.exp(-0.1 * proj1.forward(mu).astype(np.float64))
    kappa_d = exp.summary["effective_calibration_factor"] * 600.0

    def segment(d):  # span 11: 0 holds -5..5, +-1 holds +-(6..16), ...
        return 0 if abs(d) <= 5 else int(np.sign(d)) * ((abs(d) - 6) // 11 + 1)

    # span-11 sinograms in storage order: segments 0, -1, +1, ..., ring sums ascending in each
    present = {(segment(b - a), a + b) for a, b in zip(ra, rb)}
    planes = sorted(present, key=lambda km: (abs(km[0]), km[0], km[1]))
    exact = np.zeros_like(prompts)
    for z in range(ra.size):
        k11 = planes.index((segment(rb[z] - ra[z]), ra[z] + rb[z]))
        n_i = eff[ra[z]][det_a] * eff[rb[z]][det_b] * g[None, :]
        exact[k11] += n_i * att1[z] * line1[z] * kappa_d
    exact += norm * members * exp.scatter + randoms
    np.testing.assert_allclose(exact, prompts, rtol=2e-3, atol=2e-5 * prompts.max())


@pytest.mark.slow
def test_uniform_cylinder_with_the_real_gaps_reconstructs_flat():
    """Demo scanner (28 blocks of 9 positions, the mMR's gap layout): a noise-free water cylinder of
    10 kBq/mL, radius 80 mm, simulated span-1 bin by span-1 bin, each with its own norm (gaps: 0)
    and attenuation, histogrammed to span 11, normalised and attenuation-corrected, reconstructs
    flat: CoV < 2 % and mean within 1 % over the central 80 % of the radius in the central half of
    the axial FOV (measured: CoV 1.0 %, mean 1.0005; the mean-LOR model on the same data: CoV 25 %)."""
    sc = Scanner.demo()
    radius_mm, conc = 80.0, 10.0
    shape, vox = sc.image_shape, sc.voxel_size_mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * vox[0]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * vox[2]
    r = np.hypot(x[:, None], x[None, :])
    cylinder = np.repeat((r <= radius_mm)[:, :, None], shape[2], axis=2).astype(np.float32)
    truth = scanner_truth(sc, np.random.default_rng(5))
    gap = np.arange(sc.crystals_per_ring) % 9 == 0  # NiftyPET (c + 1) % 9 == 0 with c = det - 1
    assert np.all(truth.crystal_efficiency[:, gap] == 0) and np.all(truth.crystal_efficiency[:, ~gap] > 0)
    settings = AcquisitionSettings(duration_s=600.0, span=SPAN, scatter_fraction=0.0, singles_cps_per_mbq=0.0)
    exp = expected_data(conc * cylinder, 0.096 * cylinder, vox, sc, truth, settings)
    smap = sc.span1_to_sinogram(SPAN)
    y = np.zeros(sc.sinogram_shape(SPAN))
    for z1, p, _ in iter_span1_counts(exp, sc, truth, settings, _ExpectationRng(), progress=False):
        y[smap[z1]] += p / _ExpectationRng.SCALE
    norm = corr.norm_sinogram(sc, truth.crystal_efficiency, truth.radial_factor, SPAN)
    assert y[norm == 0].sum() == 0 and (norm == 0).mean() > 0.15  # bins touching a gap record nothing
    att = corr.attenuation_factors(0.096 * cylinder, vox, sc, SPAN)
    image = reconstruct(
        y.astype(np.float32),
        sc,
        SPAN,
        duration_s=600.0,
        calibration_factor=exp.summary["effective_calibration_factor"],
        norm=norm,
        attenuation=att,
        n_iterations=3,
        n_subsets=14,
        progress=False,
        backend="cpu",
    )
    roi = (r <= 0.8 * radius_mm)[:, :, None] & (np.abs(z) <= 0.25 * sc.axial_fov_mm)[None, None, :]
    values = image[roi].astype(np.float64)
    assert values.std() / values.mean() < 0.02
    assert values.mean() == pytest.approx(conc, rel=0.01)
    # and flat along the axis, slice by slice, to the axial edges
    per_slice = image[r <= 0.8 * radius_mm].mean(axis=0)
    np.testing.assert_allclose(per_slice, conc, rtol=0.01)


def test_subsets_interleave_views_evenly():
    subsets = subset_views(252, 21)
    assert [len(s) for s in subsets] == [12] * 21
    assert subsets[3].tolist() == list(range(3, 252, 21))
    uneven = subset_views(36, 21)
    assert sorted(np.concatenate(uneven).tolist()) == list(range(36))
    assert {len(s) for s in uneven} == {1, 2}
    with pytest.raises(PetiqInputError):
        subset_views(36, 37)


# ----------------------------------------------------------------------------- normalisation
@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_norm_components_from_norm_scan(name):
    sc = Scanner.from_name(name)
    scan = simulate_norm_scan(sc, scanner_seed=5, seed=1, span=SPAN, counts_per_bin=500.0, progress=False)
    est = corr.estimate_normalisation(
        scan["fansums"],
        scan["sinogram"],
        sc,
        norm_scan_span=SPAN,
        phantom_radius_mm=scan["phantom_radius_mm"],
        phantom_mu_cm=scan["phantom_mu_cm"],
        phantom_activity_bq_per_ml=scan["phantom_activity_bq_per_ml"],
        duration_s=scan["duration_s"],
        calibration_factor=scan["calibration_factor"],
        span=SPAN,
    )
    eff, true_eff = est.crystal_efficiency, scan["true_crystal_efficiency"]
    real = true_eff > 0
    assert np.all(eff[~real] == 0)
    assert np.corrcoef(eff[real], true_eff[real])[0, 1] > 0.95
    # radial factors up to the global scale (ε has mean 1; the truth's mean ε² goes into g)
    g_true = scan["true_radial_factor"] * true_eff[real].mean() ** 2
    np.testing.assert_allclose(est.radial_factor, g_true, rtol=0.03)
    # the overall scale: n·κ·D·(attenuated line integral) reproduces the norm scan's counts
    expected = corr.norm_phantom_expected(
        sc,
        SPAN,
        scan["phantom_radius_mm"],
        scan["phantom_mu_cm"],
        scan["phantom_activity_bq_per_ml"],
        scan["duration_s"],
        scan["calibration_factor"],
    )
    model = est.norm * sc.sinogram_members(SPAN)[:, None, None] * expected
    measured = scan["sinogram"].astype(np.float64)
    assert model.sum() == pytest.approx(measured.sum(), rel=2e-3)
    np.testing.assert_allclose(model.sum(axis=(1, 2)), measured.sum(axis=(1, 2)), rtol=0.03)
    # and the true normalisation sinogram is recovered bin by bin (up to noise)
    true_norm = corr.norm_sinogram(sc, true_eff, scan["true_radial_factor"], SPAN)
    live = true_norm > 0
    assert np.all(est.norm[~live] == 0)
    assert np.median(np.abs(est.norm[live] / true_norm[live] - 1)) < 0.02


# ----------------------------------------------------------------------------- randoms
def test_randoms_from_delayed_fansums_beat_raw_delayeds():
    sc = Scanner.tiny()
    activity, mu, _ = phantom(sc)
    truth = scanner_truth(sc, np.random.default_rng(5))
    settings = AcquisitionSettings(duration_s=600.0, span=SPAN, singles_cps_per_mbq=3000.0 / singles_scale(sc))
    exp = expected_data(activity, mu, sc.voxel_size_mm, sc, truth, settings)
    smap = sc.span1_to_sinogram(SPAN)
    ring_a, ring_b = sc.span1_rings()
    view, t = np.meshgrid(np.arange(sc.n_views), np.arange(sc.n_radial), indexing="ij")
    det_a, det_b = sc.view_radial_to_dets(view, t)
    delayeds = np.zeros(sc.sinogram_shape(SPAN), np.int64)
    fans = np.zeros(sc.n_crystals, np.int64)
    cpr = sc.crystals_per_ring
    for z, _, d in iter_span1_counts(exp, sc, truth, settings, np.random.default_rng(2), progress=False):
        delayeds[smap[z]] += d
        np.add.at(fans, ring_a[z] * cpr + det_a.ravel(), d.ravel())
        np.add.at(fans, ring_b[z] * cpr + det_b.ravel(), d.ravel())
    truth_r = corr.crystal_pair_sums(sc, exp.singles_cps, SPAN) * (2 * settings.coincidence_window_ns * 1e-9 * 600.0)
    est = corr.estimate_randoms(delayeds, fans, sc, SPAN)
    assert est.randoms.shape == delayeds.shape and est.randoms.dtype == np.float32
    assert est.randoms.sum() == pytest.approx(delayeds.sum(), rel=1e-5)  # scaled to the delayed total
    n = float(truth_r.sum())
    assert abs(delayeds.sum() - n) < 4 * np.sqrt(n)  # ... which is unbiased
    rmse_est = np.sqrt(np.mean((est.randoms - truth_r) ** 2))
    rmse_raw = np.sqrt(np.mean((delayeds - truth_r) ** 2))
    assert rmse_est < 0.3 * rmse_raw
    assert np.all(est.randoms[truth_r == 0] == 0)  # gaps


# ----------------------------------------------------------------------------- attenuation
def test_attenuation_of_a_water_ball_and_mumap_checks(tmp_path):
    sc = Scanner.tiny()
    shape, vox = (40, 40, 30), (2.0, 2.0, 2.0)
    affine = grid_affine(shape, vox)
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    mu = (0.096 * (np.sqrt((xyz**2).sum(0)) <= 30.0)).astype(np.float32)
    nib.save(nib.Nifti1Image(mu, affine), tmp_path / "mu.nii.gz")
    pl.attenuation_file(tmp_path / "mu.nii.gz", tmp_path / "att.npz", sc, SPAN)
    att = cio.read_correction(tmp_path / "att.npz", "attenuation", sc, SPAN, ("attenuation",))["attenuation"]
    centre = att[sc.segments(SPAN)[0].n_sinograms // 2, :, sc.n_radial // 2]  # segment 0, z = 0, s = 0
    # 60 mm of water through the centre (each view samples the voxelised ball a little differently)
    assert centre.mean() == pytest.approx(np.exp(-0.096 * 6.0), rel=0.01)
    assert np.allclose(centre, np.exp(-0.096 * 6.0), rtol=0.03)
    assert att.max() == pytest.approx(1.0) and att.min() > 0

    def bad(data, aff=affine, name="bad.nii.gz"):
        nib.save(nib.Nifti1Image(np.asarray(data, np.float32), aff), tmp_path / name)
        with pytest.raises(PetiqInputError) as info:
            pl.attenuation_file(tmp_path / name, tmp_path / "bad_att.npz", sc, SPAN)
        assert not (tmp_path / "bad_att.npz").exists()
        return str(info.value)

    assert "NaN" in bad(np.where(mu > 0, np.nan, 0))
    assert "negative" in bad(-mu)
    assert "cm⁻¹" in bad(mu * 100)  # in 1/m
    assert "neither a qform nor an sform" in bad(mu, aff=None)  # nibabel writes codes 0: orientation unknown
    # a μ-map off the scanner grid is mapped by its affine (docs/frame.md), not refused: 20 mm to
    # the patient's right (RAS +x) is scanner -x; the attenuation is that of the ball moved there
    pl.attenuation_file(tmp_path / "mu.nii.gz", tmp_path / "att.npz", sc, SPAN)
    nib.save(nib.Nifti1Image(mu, affine + _shift(20.0)), tmp_path / "mu_right.nii.gz")
    pl.attenuation_file(tmp_path / "mu_right.nii.gz", tmp_path / "att_right.npz", sc, SPAN)
    moved = cio.read_correction(tmp_path / "att_right.npz", "attenuation", sc, SPAN, ("attenuation",))["attenuation"]
    on_grid = np.zeros(sc.image_shape, np.float32)  # the ball at scanner (-20, 0, 0) on the 4 mm grid
    g = np.indices(sc.image_shape).reshape(3, -1).T - (np.asarray(sc.image_shape) - 1) / 2.0
    on_grid.reshape(-1)[np.sqrt(((g * 4.0 + [20.0, 0, 0]) ** 2).sum(1)) <= 30.0] = 0.096
    want = corr.attenuation_factors(on_grid, (4.0,) * 3, sc, SPAN)  # the same ball placed on the grid by hand
    assert np.abs(np.log(moved) - np.log(want)).mean() < 0.01  # the 2 mm ball resampled vs voxelised at 4 mm
    big = np.full((80, 80, 40), 0.096, np.float32)  # 240 mm wide: beyond the tiny ring (r = 100 mm)
    assert "does not fit" in bad(big, aff=grid_affine(big.shape, (3.0, 3.0, 3.0)))
    assert not list(tmp_path.glob(".*tmp*"))


def _shift(mm):
    out = np.zeros((4, 4))
    out[0, 3] = mm
    return out


# ----------------------------------------------------------------------------- scatter
def test_scatter_estimate_recovers_the_simulated_scatter(case):
    y = np.random.default_rng(3).poisson(case.prompts_mean).astype(np.float32)
    est = sct.estimate_scatter(y, case.randoms, case.norm, case.attenuation, case.scanner, SPAN)
    assert est.n_tail_bins > 1000
    assert est.scatter.sum() == pytest.approx(case.scatter.sum(), rel=0.15)
    sf_true = case.scatter.sum() / (case.trues.sum() + case.scatter.sum())
    assert est.scatter_fraction == pytest.approx(sf_true, abs=0.05)
    # the shape too: within 5 % on average (after the totals)
    live = case.scatter > 0.05 * case.scatter.max()
    shape_est, shape_true = est.scatter / est.scatter.sum(), case.scatter / case.scatter.sum()
    assert np.mean(np.abs(shape_est[live] / shape_true[live] - 1)) < 0.05


# ----------------------------------------------------------------------------- OP-OSEM
def test_noise_free_osem_recovers_activity(case):
    img = case.recon()
    assert img.shape == case.scanner.image_shape and img.dtype == np.float32
    assert img.min() >= 0
    assert np.all(img[~fov_mask(case.scanner)] == 0)
    assert img[case.wm_core].mean() == pytest.approx(WM, rel=0.05)
    assert img[case.gm_mid].mean() == pytest.approx(GM, rel=0.05)
    assert img[case.background].mean() < 0.05 * WM


def test_without_attenuation_correction_the_centre_is_low(case):
    with_ac = case.recon()
    without = case.recon(attenuation=False)
    assert without[case.wm_core].mean() < 0.75 * with_ac[case.wm_core].mean()
    # the bias is worst in the centre: centre / rim ratio drops
    ratio = lambda im: im[case.wm_core].mean() / im[case.gm_mid].mean()  # noqa: E731
    assert ratio(without) < 0.85 * ratio(with_ac)


def test_without_scatter_correction_background_up_and_contrast_down(case):
    with_sc = case.recon()
    without = case.recon(scatter=False)
    assert without[case.background].mean() > 0.05 * WM > 5 * with_sc[case.background].mean()
    contrast = lambda im: im[case.gm_mid].mean() / im[case.wm_core].mean()  # noqa: E731
    assert contrast(with_sc) == pytest.approx(GM / WM, rel=0.06)
    assert contrast(without) < 0.8 * contrast(with_sc)


def test_count_scaling_reconstructs_to_the_dose_fraction(case):
    """Thinning the prompts to a fraction f (binomial, as the list-mode thinning does) reconstructs
    to f × the activity."""
    rng = np.random.default_rng(11)
    full = rng.poisson(case.prompts_mean)
    f = 0.25
    thinned = rng.binomial(full, f)
    kw = {"n_iterations": 3, "n_subsets": 6}
    img_full = case.recon(full.astype(np.float32), **kw)
    img_f = case.recon(thinned.astype(np.float32), scale=f, **kw)
    region = case.radius < 0.8
    assert img_f[region].mean() / img_full[region].mean() == pytest.approx(f, rel=0.03)
    assert img_full[region].mean() == pytest.approx(case.activity[region].mean(), rel=0.05)


def test_post_filter_keeps_the_total_and_smooths(case):
    y = np.random.default_rng(5).poisson(0.02 * case.prompts_mean).astype(np.float32)  # noisy
    kw = {"n_iterations": 2, "n_subsets": 6, "scale": 0.02}
    raw = case.recon(y, **kw)
    smooth = case.recon(y, post_filter_fwhm_mm=8.0, **kw)
    assert smooth.sum() == pytest.approx(raw.sum(), rel=0.01)
    roughness = lambda im: np.abs(np.diff(im, axis=0)).mean()  # noqa: E731
    assert roughness(smooth) < 0.6 * roughness(raw)


def test_osem_input_errors(case):
    sc = case.scanner
    with pytest.raises(PetiqInputError, match="empty"):
        case.recon(np.zeros_like(case.trues))
    with pytest.raises(PetiqInputError, match="shape"):
        case.recon(case.trues[:-1])
    with pytest.raises(PetiqInputError, match="backend"):
        case.recon(backend="opencl")
    with pytest.raises(PetiqInputError, match="subsets"):
        case.recon(n_subsets=sc.n_views + 1)


# ----------------------------------------------------------------------------- backends
def test_torch_projector_matches_numba():
    from petiq.recon.torch_backend import TorchJosephProjector

    sc = Scanner.tiny()
    for span in (1, SPAN):
        ref = JosephProjector(sc, span=span)
        tp = TorchJosephProjector(sc, span=span, device="cpu", chunk_elements=50_000)  # several chunks per view
        rng = np.random.default_rng(span)
        x = rng.random(ref.image_shape, dtype=np.float32)
        for views in (None, np.arange(2, sc.n_views, 7)):
            fwd = ref.forward(x, views=views)
            np.testing.assert_allclose(tp.to_numpy(tp.forward(x, views=views)), fwd, rtol=1e-5, atol=1e-5 * fwd.max())
            y = rng.random(fwd.shape, dtype=np.float32)
            back = ref.back(y, views=views)
            np.testing.assert_allclose(tp.to_numpy(tp.back(y, views=views)), back, rtol=1e-5, atol=1e-5 * back.max())
        # exact adjoint
        fx, bty = tp.to_numpy(tp.forward(x)), tp.to_numpy(tp.back(y := rng.random(ref.sinogram_shape, np.float32)))
        lhs, rhs = np.vdot(fx.astype(np.float64), y), np.vdot(x.astype(np.float64), bty)
        assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_osem_backends_agree(case):
    y = np.random.default_rng(8).poisson(case.prompts_mean).astype(np.float32)
    kw = {"n_iterations": 1, "n_subsets": 12}
    cpu = case.recon(y, backend="cpu", **kw)
    torch_cpu = case.recon(y, backend="torch-cpu", **kw)
    np.testing.assert_allclose(torch_cpu, cpu, rtol=1e-3, atol=1e-4 * cpu.max())


def test_cuda_request_without_gpu_falls_back_with_a_warning(monkeypatch, caplog):
    import petiq.recon.torch_backend as tb

    monkeypatch.setattr(tb, "cuda_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="petiq.recon"):
        assert osem_mod.resolve_backend("cuda") == "cpu"
    assert "falling back" in caplog.text
    assert osem_mod.resolve_backend("auto") == "cpu"
    monkeypatch.setattr(tb, "cuda_available", lambda: True)
    assert osem_mod.resolve_backend("auto") == "cuda"


# ----------------------------------------------------------------------------- pipeline files
@pytest.fixture(scope="module")
def files(case, tmp_path_factory) -> dict:
    """Norm scan, sinogram file and μ-map of the phantom on disk, plus the correction files."""
    from petiq.listmode.sinograms import write_sinograms

    d = tmp_path_factory.mktemp("recon")
    sc = case.scanner
    scan = simulate_norm_scan(sc, scanner_seed=5, seed=1, span=SPAN, counts_per_bin=500.0, progress=False)
    np.savez_compressed(d / "norm_scan.npz", scanner=np.asarray(sc.name), **scan)
    rng = np.random.default_rng(21)
    prompts = rng.poisson(case.prompts_mean).astype(np.uint32)
    # delayeds and their fan sums from the singles model behind case.randoms
    truth = scanner_truth(sc, np.random.default_rng(5))
    singles = truth.crystal_efficiency.astype(np.float64)
    pairs = corr.crystal_pair_sums(sc, singles, SPAN)
    delayeds = rng.poisson(pairs * (case.randoms.sum() / pairs.sum())).astype(np.uint32)
    fans = corr.crystal_fan_sums(sc, singles) * singles * (case.randoms.sum() / pairs.sum())
    hist = {
        "prompts": prompts,
        "delayeds": delayeds,
        "delayed_fansums": np.rint(fans).astype(np.int64).ravel(),
        "span": SPAN,
        "duration_s": case.duration_s,
        "n_prompts": int(prompts.sum()),
        "n_delayeds": int(delayeds.sum()),
        "n_outside_span": 0,
    }
    write_sinograms(d / "sino.npz", hist, sc.name)
    nib.save(nib.Nifti1Image(case.mu, grid_affine(case.mu.shape, sc.voxel_size_mm)), d / "mu.nii.gz")
    out = {
        "dir": d,
        "norm_scan": d / "norm_scan.npz",
        "sino": d / "sino.npz",
        "mu": d / "mu.nii.gz",
        "norm": d / "norm.npz",
        "randoms": d / "randoms.npz",
        "att": d / "att.npz",
        "scatter": d / "scatter.npz",
    }
    pl.estimate_norm_file(out["norm_scan"], out["norm"], sc, SPAN)
    pl.randoms_file(out["sino"], out["randoms"], sc, SPAN)
    pl.attenuation_file(out["mu"], out["att"], sc, SPAN)
    pl.scatter_file(out["sino"], out["norm"], out["randoms"], out["att"], out["scatter"], scanner=sc, span=SPAN)
    return out


def _recon_files(files, outdir: Path, **kw):
    args = {
        "scanner": "tiny",
        "span": SPAN,
        "n_iterations": 4,
        "n_subsets": 6,
        "backend": "cpu",
        "metadata": {
            "DoseFraction": 0.25,
            "InjectedRadioactivity": 200.0,
            "BodyWeight": 70.0,
            "PromptsCounted": 123,
            "DelayedsCounted": 45,
        },
        "progress": False,
        **kw,
    }
    paths = [outdir / "img.nii.gz", outdir / "img.json", outdir / "img_norm01.nii.gz"]
    sources = [files[k] for k in ("sino", "norm", "randoms", "att", "scatter")]
    for k, v in list(kw.items()):
        if k in ("sino", "norm", "randoms", "att", "scatter"):
            sources[["sino", "norm", "randoms", "att", "scatter"].index(k)] = v
            args.pop(k)
    return pl.reconstruct_file(*sources, *paths, **args), paths


def test_reconstruct_file_outputs_and_sidecar(files, case, tmp_path):
    sidecar, (img_path, json_path, n01_path) = _recon_files(files, tmp_path)
    img = nib.load(img_path)
    data = np.asarray(img.dataobj)
    assert data.shape == case.scanner.image_shape
    np.testing.assert_allclose(img.affine, grid_affine(data.shape, case.scanner.voxel_size_mm))
    for form in (img.get_qform(coded=True), img.get_sform(coded=True)):  # both set, code 1 (scanner)
        assert form[1] == 1 and np.allclose(form[0], img.affine, atol=1e-5)
    # quantitative through the estimated norm, randoms and scatter; these sinograms name no isotope,
    # so the image is not decay corrected (nor divided by the branching ratio): it is the frame's
    # mean positron concentration, BR · (1 − e^{−λD}) / (λD) of the activity at the scan start
    lam_d = math.log(2) / (109.7712 * 60) * 600.0
    scale = 0.967 * -math.expm1(-lam_d) / lam_d
    assert data[case.wm_core].mean() == pytest.approx(WM * scale, rel=0.08)
    assert data[case.gm_mid].mean() == pytest.approx(GM * scale, rel=0.08)
    n01 = np.asarray(nib.load(n01_path).dataobj)
    assert n01.max() == pytest.approx(1.0) and n01.min() >= 0
    np.testing.assert_allclose(n01 * data.max(), data, rtol=1e-5, atol=1e-6 * data.max())
    on_disk = json.loads(json_path.read_text())
    assert on_disk == json.loads(json.dumps(sidecar))
    assert on_disk["ReconMethodName"] == "OP-OSEM"
    assert on_disk["ReconMethodParameterLabels"] == ["iterations", "subsets"]
    assert on_disk["ReconMethodParameterUnits"] == ["none", "none"]
    assert on_disk["ReconMethodParameterValues"] == [4, 6]
    assert on_disk["ReconFilterType"] == "none" and on_disk["ReconFilterSize"] == 0
    assert on_disk["Units"] == "kBq/mL" and on_disk["ImageDecayCorrected"] is False
    assert "DecayCorrectionFactor" not in on_disk
    assert on_disk["ImageDecayCorrectionTime"] == 0.0  # BIDS requires it: the scan start
    assert on_disk["ScanStart"] == 0.0 and on_disk["AcquisitionMode"] == "list mode"
    assert "InjectionStart" not in on_disk  # these sinograms name no injection time
    assert "μ-map" in on_disk["AttenuationCorrection"]
    assert "SSS" in on_disk["ScatterCorrectionMethod"] or "single scatter" in on_disk["ScatterCorrectionMethod"]
    assert on_disk["RandomsCorrectionMethod"].startswith("DLYD")
    assert on_disk["ReconstructionBackend"] == "cpu"
    assert on_disk["FrameDuration"] == [pytest.approx(case.duration_s)]
    for key, value in {
        "DoseFraction": 0.25,
        "InjectedRadioactivity": 200.0,
        "BodyWeight": 70.0,
        "PromptsCounted": 123,
        "DelayedsCounted": 45,
    }.items():
        assert on_disk[key] == value
    assert 0.25 < on_disk["EstimatedScatterFraction"] < 0.45
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.json", "img.nii.gz", "img_norm01.nii.gz"]


def test_bad_inputs_stop_before_any_output(files, case, tmp_path):
    d = files["dir"]
    sc = case.scanner

    def fails(match, **kw):
        out = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        out.mkdir()
        with pytest.raises(PetiqInputError, match=match):
            _recon_files(files, out, **kw)
        assert list(out.iterdir()) == []  # nothing, not even a temporary file

    # wrong span / wrong scanner of a correction
    pl.attenuation_file(files["mu"], d / "att_span3.npz", sc, 3)
    fails("span 3", att=d / "att_span3.npz")
    demo_norm = d / "norm_demo.npz"
    with np.load(files["norm"]) as data:
        arrays = dict(data)
    np.savez(demo_norm, **{**arrays, "scanner": np.asarray("demo")})
    fails("scanner 'demo'", norm=demo_norm)
    fails("expected a norm file", norm=files["randoms"])
    fails("not found", scatter=d / "missing.npz")
    # an empty list-mode
    from petiq.listmode.sinograms import read_sinograms, write_sinograms

    hist = read_sinograms(files["sino"])
    empty = {**hist, "prompts": np.zeros_like(hist["prompts"]), "n_prompts": 0}
    write_sinograms(d / "empty.npz", empty, sc.name)
    fails("0 prompts", sino=d / "empty.npz")
    # sinograms of another span
    other = {**hist, "span": 3}
    write_sinograms(d / "span3.npz", other, sc.name)
    fails("span 3", sino=d / "span3.npz")
    # a NaN in the μ-map stops the attenuation step
    mu = case.mu.copy()
    mu[10, 10, 5] = np.nan
    nib.save(nib.Nifti1Image(mu, grid_affine(mu.shape, sc.voxel_size_mm)), d / "mu_nan.nii.gz")
    with pytest.raises(PetiqInputError, match="NaN"):
        pl.attenuation_file(d / "mu_nan.nii.gz", tmp_path / "att_nan.npz", sc, SPAN)
    assert not (tmp_path / "att_nan.npz").exists()
    # a norm scan of another scanner
    with pytest.raises(PetiqInputError, match="scanner"):
        pl.estimate_norm_file(files["norm_scan"], tmp_path / "n.npz", Scanner.demo(), SPAN)
    assert not (tmp_path / "n.npz").exists()


def test_randoms_file_roundtrip(files, case):
    randoms = cio.read_randoms(files["randoms"], case.scanner, SPAN)
    with np.load(files["randoms"]) as data:
        n_delayeds = float(data["n_delayeds"])
    assert randoms.sum() == pytest.approx(n_delayeds, rel=1e-5)
    assert np.corrcoef(randoms.ravel(), case.randoms.ravel())[0, 1] > 0.99


def test_listmode_chain_is_quantitative(tmp_path):
    """simulate → list-mode → (thin) → histogram → norm, randoms, attenuation, scatter → OP-OSEM:
    a uniform 300 kBq/mL water ball comes back at its activity, and at f × it after thinning to f."""
    from petiq.listmode import histogram_listmode, thin_listmode
    from petiq.listmode.simulate import simulate_patient
    from petiq.listmode.sinograms import write_sinograms

    sc = Scanner.tiny()
    scan = simulate_norm_scan(sc, scanner_seed=5, seed=1, span=SPAN, counts_per_bin=500.0, progress=False)
    np.savez_compressed(tmp_path / "norm_scan.npz", scanner=np.asarray(sc.name), **scan)
    pl.estimate_norm_file(tmp_path / "norm_scan.npz", tmp_path / "norm.npz", sc, SPAN)
    shape, voxel = (48, 48, 30), (2.0, 2.0, 2.0)
    affine = grid_affine(shape, voxel)
    ijk = np.indices(shape).reshape(3, -1)
    ball = (np.sqrt(((affine[:3, :3] @ ijk + affine[:3, 3:4]) ** 2).sum(0)) <= 40.0).reshape(shape).astype(np.float32)
    for name, data in (("truth", 300.0 * ball), ("mumap", 0.096 * ball)):
        nib.save(nib.Nifti1Image(data, affine), tmp_path / f"{name}.nii.gz")
    participant = {"participant_id": "sub-01", "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0}
    simulate_patient(
        truth_path=tmp_path / "truth.nii.gz",
        mumap_path=tmp_path / "mumap.nii.gz",
        participant=participant,
        scanner=sc,
        scanner_seed=5,
        seed=3,
        out_path=tmp_path / "full.l",
        duration_s=600.0,
        progress=False,
    )
    thin_listmode(tmp_path / "full.l", tmp_path / "quarter.l", 0.25, seed=7, scanner=sc)
    pl.attenuation_file(tmp_path / "mumap.nii.gz", tmp_path / "att.npz", sc, SPAN)
    x = (np.arange(32) - 15.5) * 4.0
    z = (np.arange(15) - 7.0) * 4.0
    inner = np.sqrt(x[:, None, None] ** 2 + x[None, :, None] ** 2 + z[None, None, :] ** 2) < 25.0
    means = {}
    for name in ("full", "quarter"):
        write_sinograms(tmp_path / f"{name}.npz", histogram_listmode(tmp_path / f"{name}.l", sc, span=SPAN), sc.name)
        pl.randoms_file(tmp_path / f"{name}.npz", tmp_path / f"{name}_r.npz", sc, SPAN)
        scatter = pl.scatter_file(
            tmp_path / f"{name}.npz",
            tmp_path / "norm.npz",
            tmp_path / f"{name}_r.npz",
            tmp_path / "att.npz",
            tmp_path / f"{name}_s.npz",
            scanner=sc,
            span=SPAN,
        )
        assert 0.2 < scatter["scatter_fraction"] < 0.45  # the simulation draws 0.30-0.40
        pl.reconstruct_file(
            tmp_path / f"{name}.npz",
            tmp_path / "norm.npz",
            tmp_path / f"{name}_r.npz",
            tmp_path / "att.npz",
            tmp_path / f"{name}_s.npz",
            tmp_path / f"{name}.nii.gz",
            tmp_path / f"{name}.json",
            tmp_path / f"{name}_01.nii.gz",
            scanner=sc,
            span=SPAN,
            n_iterations=5,
            n_subsets=6,
            backend="cpu",
            progress=False,
        )
        means[name] = float(np.asarray(nib.load(tmp_path / f"{name}.nii.gz").dataobj)[inner].mean())
    # e7's quantification: decay corrected to the scan start, divided by the branching ratio
    assert means["full"] == pytest.approx(300.0, rel=0.05)
    assert means["quarter"] / means["full"] == pytest.approx(0.25, rel=0.06)
    sidecar = json.loads((tmp_path / "full.json").read_text())
    lam_d = math.log(2) / (109.7712 * 60) * sidecar["FrameDuration"][0]  # NiftyPET riLUT F18 half-life
    assert sidecar["ImageDecayCorrected"] is True and sidecar["ImageDecayCorrectionTime"] == 0
    assert sidecar["DecayCorrectionFactor"] == [pytest.approx(lam_d / -math.expm1(-lam_d))]
    assert sidecar["BranchingRatio"] == pytest.approx(0.967) and sidecar["TracerRadionuclide"] == "F18"


def test_reconstructions_form_a_valid_bids_dataset(files, tmp_path):
    """petiq's own writers (dataset files, paths, sidecar keys) give a dataset the official BIDS
    validator accepts with no error, for a real reconstruction from sinograms that name the isotope
    and the injection time as a list-mode header does."""
    import pandas as pd

    from petiq.core import bids
    from petiq.listmode.sinograms import read_sinograms, write_sinograms

    sino = read_sinograms(files["sino"])
    sino.update(
        isotope="F-18", half_life_s=6586.2, branching_ratio=0.9673, frame_start_s=0.0, injection_start_s=-2400.0
    )
    write_sinograms(tmp_path / "sino.npz", sino, sino["scanner"])
    root = tmp_path / "bids"
    participants = pd.DataFrame(
        [
            {
                "participant_id": "sub-01",
                "source": "synthetic",
                "diagnosis": "AD",
                "severity": 0.6,
                "age": 71.0,
                "sex": "F",
                "weight_kg": 70.0,
                "injected_mbq": 200.0,
                "uptake_min": 40.0,
                "dose_per_kg": 2.8571,
            },
            {
                "participant_id": "sub-R1",
                "source": "real",
                "diagnosis": "unknown",
                "severity": np.nan,
                "age": np.nan,
                "sex": "",
                "weight_kg": 80.0,
                "injected_mbq": 190.0,
                "uptake_min": np.nan,
                "dose_per_kg": 2.375,
            },
        ]
    )
    bids.write_dataset_files(root, participants)
    row = participants.iloc[0].to_dict()
    for dose in (5, 100):
        metadata = bids.pet_metadata(row, dose, "tiny")
        sidecar, _ = _recon_files(files, tmp_path, sino=tmp_path / "sino.npz", metadata=metadata)
        for src, dst in zip(
            ("img.nii.gz", "img.json", "img_norm01.nii.gz"),
            (
                bids.recon_image_path(root, "sub-01", dose),
                bids.recon_sidecar_path(root, "sub-01", dose),
                bids.norm01_path(root, "sub-01", dose),
            ),
        ):
            dst.parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / src).replace(dst)
    assert sidecar["InjectionStart"] == -2400.0 and sidecar["TracerRadionuclide"] == "F18"
    assert sidecar["InjectedRadioactivity"] == 200.0 and sidecar["ImageDecayCorrected"] is True
    assert bids.pet_metadata(participants.iloc[1].to_dict(), 5, "mmr")["Manufacturer"] == "Siemens"
    assert "InjectionStart" not in bids.pet_metadata(participants.iloc[1].to_dict(), 5, "mmr")
    table = pd.read_csv(root / "participants.tsv", sep="\t", dtype=str, keep_default_na=False)
    assert table.loc[1, "age"] == "n/a" and table.loc[1, "sex"] == "n/a"
    assert bids_validator_errors(root) == []

"""Watson single-scatter simulation (SSS): a library model, not yet used by the workflow.

Model (Watson, "New, faster, image-based scatter correction for 3D PET", IEEE TNS 47 (2000) 1587;
the same structure as STIR
``src/scatter_buildblock/scatter_estimate_for_one_scatter_point.cxx``, read and written anew): the expected
single-scatter counts of the LOR between detectors A and B are a sum over scatter points S (voxel
centres of a coarse grid where μ > 0, each standing for its volume ``V_S``)::

    S_AB = Σ_S V_S (μ_S / σ_KN(511)) dσ_KN/dΩ(θ) σ_AS σ_BS / (2π R_AS² R_BS²) (I_A + I_B)
    I_A  = ε(511) ε(E') exp(-∫_A^S μ(511) - ∫_S^B μ(E')) ∫_A^S λ ds     (photon to A unscattered)
    I_B  = ε(E') ε(511) exp(-∫_A^S μ(E') - ∫_S^B μ(511)) ∫_S^B λ ds     (photon to B unscattered)

* θ is the scattering angle at S (between the directions A→S and S→B), E' = 511/(1 + 1 - cos θ)
  the scattered energy (Compton formula).
* ``σ_AS = a |n_A · u_AS|`` is the detector area ``a`` (crystal pitch x ring pitch) seen from S
  (``n_A`` the detector's radial normal): STIR's ``cos_incident_angle_AS``/``_BS`` (same file).
* μ at the scattered energy is μ(511) σ_KN(E')/σ_KN(511) (Compton-dominated tissue; STIR raises
  the 511 keV attenuation factor to ``total_Compton_cross_section_relative_to_511keV(E')``, same file).
* ε(E) is :func:`window_efficiency`, taken from STIR ``scatter_detection_modelling.cxx``
  (``detection_efficiency``): erf of the Gaussian energy response, FWHM ∝ sqrt(E).
* Both terms carry 1/(R_AS² R_BS²): STIR folds 1/R_AS² into the emission integral of leg A
  (``single_scatter_integrals.cxx``, ``integral_over_activity_image_between_scattpoint_det``) and
  multiplies by 1/R_BS², the same.
* The factor 1/(2π) (not Watson's 1/(4π)) is the collinear-pair count: an emission puts one photon
  on A and the other through S with probability 2Ω/(4π). :func:`unscattered_lor` uses the same
  normalisation (``2 σ_A σ_B / (4π D²)``), so scatter fractions are consistent; tail scaling makes
  the absolute factor irrelevant for correction anyway.

Units: ``activity`` per voxel (any unit: the result is in the same unit x detection probability),
``mu`` in cm⁻¹ (petiq's μ-map convention), lengths in mm. Line integrals are sampled at half a
voxel with nearest-voxel lookup.

Detectors are subsampled (every ``detector_step`` crystal transaxially and every ``ring_step``
ring, ends included) and the scatter of every span-1 LOR is interpolated (periodic-linear in the
crystal index, linear in the ring) from the sampled detector pairs: scatter varies slowly.
"""

from __future__ import annotations

import logging
import math

import numpy as np
from numba import njit, prange

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import Scanner

log = logging.getLogger(__name__)

#: Classical electron radius (cm), CODATA 2018.
R_E_CM = 2.8179403262e-13
#: Electron rest energy (keV).
ME_C2_KEV = 510.99895


def scattered_energy(energy_kev, cos_theta):
    """Compton: ``E' = E / (1 + (E/m_e c²)(1 - cos θ))`` (keV)."""
    e = np.asarray(energy_kev, dtype=np.float64)
    return e / (1.0 + (e / ME_C2_KEV) * (1.0 - np.asarray(cos_theta, dtype=np.float64)))


def klein_nishina(energy_kev, cos_theta):
    """Klein–Nishina differential cross-section per electron (cm²/sr)::

        dσ/dΩ = r_e²/2 P² (P + 1/P - sin²θ),   P = E'/E

    (STIR's ``dif_Compton_cross_section(costheta, 511)``; formula from Klein & Nishina 1929).
    """
    c = np.asarray(cos_theta, dtype=np.float64)
    p = scattered_energy(energy_kev, c) / np.asarray(energy_kev, dtype=np.float64)
    return 0.5 * R_E_CM**2 * p * p * (p + 1.0 / p - (1.0 - c * c))


def klein_nishina_total(energy_kev):
    """Closed-form total KN cross-section per electron (cm²) (Klein & Nishina 1929; Evans)."""
    k = np.asarray(energy_kev, dtype=np.float64) / ME_C2_KEV
    a = 1.0 + 2.0 * k
    return (
        2.0
        * np.pi
        * R_E_CM**2
        * ((1.0 + k) / k**2 * (2.0 * (1.0 + k) / a - np.log(a) / k) + np.log(a) / (2.0 * k) - (1.0 + 3.0 * k) / a**2)
    )


def window_efficiency(energy_kev, lower=430.0, upper=610.0, fwhm_fraction_at_511=0.145):
    """Probability that a photon of true energy E is measured in ``[lower, upper]`` keV.

    Gaussian energy response with FWHM(E) = f 511 sqrt(E/511) (resolution ∝ sqrt(E), STIR
    ``scatter_detection_modelling.cxx``, ``detection_efficiency``)::

        ε(E) = ½ [erf((U - E)/(√2 σ)) - erf((L - E)/(√2 σ))],  σ = FWHM(E)/(2 sqrt(2 ln 2))
    """
    from scipy.special import erf

    if not (0 < lower < upper) or not fwhm_fraction_at_511 > 0:
        raise PetiqInputError(
            None,
            f"energy window {lower}-{upper} keV, resolution {fwhm_fraction_at_511}",
            "give 0 < lower < upper (keV) and a positive FWHM fraction (mMR: 430, 610, 0.145)",
        )
    e = np.asarray(energy_kev, dtype=np.float64)
    sigma_sqrt2 = fwhm_fraction_at_511 * np.sqrt(511.0 * e) / (2.0 * np.sqrt(2.0 * np.log(2.0))) * np.sqrt(2.0)
    return 0.5 * (erf((upper - e) / sigma_sqrt2) - erf((lower - e) / sigma_sqrt2))


# --------------------------------------------------------------------------- numba kernels
@njit(cache=True)
def _trace(vol, x0, y0, z0, x1, y1, z1, org, vox, step):
    """∫ vol ds (mm x vol) from p0 to p1, nearest voxel, ``step`` mm samples (midpoint rule)."""
    dx, dy, dz = x1 - x0, y1 - y0, z1 - z0
    length = math.sqrt(dx * dx + dy * dy + dz * dz)
    n = max(1, int(length / step) + 1)
    ds = length / n
    nx, ny, nz = vol.shape
    acc = 0.0
    for k in range(n):
        f = (k + 0.5) / n
        i = int(math.floor((x0 + f * dx - org[0]) / vox[0] + 0.5))
        j = int(math.floor((y0 + f * dy - org[1]) / vox[1] + 0.5))
        m = int(math.floor((z0 + f * dz - org[2]) / vox[2] + 0.5))
        if 0 <= i < nx and 0 <= j < ny and 0 <= m < nz:
            acc += vol[i, j, m]
    return acc * ds


@njit(parallel=True, cache=True)
def _leg_integrals(act, mu_mm, pts, det, org, vox, step):
    """Per (scatter point, sampled detector): ∫ μ (dimensionless) and ∫ λ ds from S to the detector."""
    ns, nd = pts.shape[0], det.shape[0]
    att = np.zeros((ns, nd))
    emi = np.zeros((ns, nd))
    for s in prange(ns):
        for d in range(nd):
            att[s, d] = _trace(mu_mm, pts[s, 0], pts[s, 1], pts[s, 2], det[d, 0], det[d, 1], det[d, 2], org, vox, step)
            emi[s, d] = _trace(act, pts[s, 0], pts[s, 1], pts[s, 2], det[d, 0], det[d, 1], det[d, 2], org, vox, step)
    return att, emi


@njit(parallel=True, cache=True)
def _pair_scatter(pts, weight, det, normal, area, att, emi, cos_tab, kn_tab, eff_tab, ratio_tab, eff511):
    """Scatter of every sampled detector pair (a < b): Watson's sum over scatter points."""
    nd = det.shape[0]
    ns = pts.shape[0]
    ntab = cos_tab.shape[0]
    out = np.zeros((nd, nd))
    for a in prange(nd):
        for b in range(a + 1, nd):
            acc = 0.0
            for s in range(ns):
                ax, ay, az = pts[s, 0] - det[a, 0], pts[s, 1] - det[a, 1], pts[s, 2] - det[a, 2]  # A -> S
                bx, by, bz = det[b, 0] - pts[s, 0], det[b, 1] - pts[s, 1], det[b, 2] - pts[s, 2]  # S -> B
                ra2 = ax * ax + ay * ay + az * az
                rb2 = bx * bx + by * by + bz * bz
                ra, rb = math.sqrt(ra2), math.sqrt(rb2)
                cos_t = (ax * bx + ay * by + az * bz) / (ra * rb)
                f = (cos_t + 1.0) * 0.5 * (ntab - 1)
                k = min(int(f), ntab - 2)
                w = f - k
                kn = (1 - w) * kn_tab[k] + w * kn_tab[k + 1]
                eff = (1 - w) * eff_tab[k] + w * eff_tab[k + 1]
                if eff <= 0.0:
                    continue
                ratio = (1 - w) * ratio_tab[k] + w * ratio_tab[k + 1]
                ca = abs(normal[a, 0] * ax + normal[a, 1] * ay) / ra
                cb = abs(normal[b, 0] * bx + normal[b, 1] * by) / rb
                geo = area * ca * area * cb / (2.0 * math.pi * ra2 * rb2)
                i_a = emi[s, a] * math.exp(-att[s, a] - ratio * att[s, b])
                i_b = emi[s, b] * math.exp(-ratio * att[s, a] - att[s, b])
                acc += weight[s] * kn * geo * eff511 * eff * (i_a + i_b)
            out[a, b] = acc
            out[b, a] = acc
    return out


@njit(parallel=True, cache=True)
def _interp_span1(pair, ring_s, crys_s, n_cry, rings_a, rings_b, det_a, det_b, out):
    """Span-1 LOR (ring_a, det_a, ring_b, det_b) from the sampled pairs: linear in ring,
    periodic-linear in crystal index, at both ends (16 corners)."""
    nrs = ring_s.shape[0]
    ncs = crys_s.shape[0]
    nz, nv, nr = out.shape
    for z in prange(nz):
        for v in range(nv):
            for t in range(nr):
                ends_r = (rings_a[z], rings_b[z])
                ends_c = (det_a[v, t], det_b[v, t])
                ir = np.zeros((2, 2), np.int64)
                wr = np.zeros((2, 2))
                ic = np.zeros((2, 2), np.int64)
                wc = np.zeros((2, 2))
                for e in range(2):
                    r = ends_r[e]
                    k = 0
                    while k < nrs - 2 and ring_s[k + 1] <= r:
                        k += 1
                    f = (r - ring_s[k]) / max(ring_s[k + 1] - ring_s[k], 1) if nrs > 1 else 0.0
                    ir[e, 0], ir[e, 1] = k, min(k + 1, nrs - 1)
                    wr[e, 0], wr[e, 1] = 1.0 - f, f
                    c = ends_c[e]
                    step = n_cry / ncs
                    q = int(c // step)
                    g = (c - crys_s[q]) / step
                    ic[e, 0], ic[e, 1] = q, (q + 1) % ncs
                    wc[e, 0], wc[e, 1] = 1.0 - g, g
                acc = 0.0
                for p in range(2):
                    for q2 in range(2):
                        for u in range(2):
                            for w2 in range(2):
                                da = ir[0, p] * ncs + ic[0, q2]
                                db = ir[1, u] * ncs + ic[1, w2]
                                acc += wr[0, p] * wc[0, q2] * wr[1, u] * wc[1, w2] * pair[da, db]
                out[z, v, t] = acc


# --------------------------------------------------------------------------- public API
def _grid(shape, vox):
    return np.array([-(n - 1) / 2.0 * v for n, v in zip(shape, vox)], dtype=np.float64)


def scatter_points(mu, voxel_size_mm, step=3, threshold_cm=0.01):
    """Scatter points: centres of ``step``^3 blocks of voxels whose mean μ exceeds ``threshold_cm``;
    returns ``(points_mm (n, 3), weight (n,))`` with weight = block volume (cm³) x mean μ (cm⁻¹)."""
    nx, ny, nz = mu.shape
    org = _grid(mu.shape, voxel_size_mm)
    pts, wts = [], []
    vol_cm3 = (step**3) * np.prod(voxel_size_mm) / 1000.0
    for i in range(0, nx, step):
        for j in range(0, ny, step):
            for k in range(0, nz, step):
                blk = mu[i : i + step, j : j + step, k : k + step]
                m = float(blk.mean())
                if m > threshold_cm:
                    c = [(i + (blk.shape[0] - 1) / 2.0), (j + (blk.shape[1] - 1) / 2.0), (k + (blk.shape[2] - 1) / 2.0)]
                    pts.append([org[a] + c[a] * voxel_size_mm[a] for a in range(3)])
                    wts.append(vol_cm3 * blk.size / step**3 * m)
    return np.array(pts, dtype=np.float64).reshape(-1, 3), np.array(wts, dtype=np.float64)


def _sampled_detectors(scanner, detector_step, ring_step):
    n_cry = scanner.crystals_per_ring
    if detector_step < 1 or n_cry % detector_step or ring_step < 1:
        raise PetiqInputError(
            None,
            f"detector_step {detector_step} / ring_step {ring_step} for {n_cry} crystals",
            f"use a divisor of {n_cry} for detector_step and ring_step >= 1",
        )
    crys = np.arange(0, n_cry, detector_step)
    rings = np.arange(0, scanner.n_rings, ring_step)
    if rings[-1] != scanner.n_rings - 1:
        rings = np.append(rings, scanner.n_rings - 1)
    xy = scanner.crystal_xy()[crys]
    z = scanner.ring_z()[rings]
    det = np.array([[xy[c, 0], xy[c, 1], z[r]] for r in range(len(rings)) for c in range(len(crys))])
    nrm = det[:, :2] / np.linalg.norm(det[:, :2], axis=1, keepdims=True)
    return crys, rings, det, nrm


def single_scatter(
    activity,
    mu,
    scanner: Scanner,
    *,
    voxel_size_mm=None,
    scatter_step=3,
    detector_step=None,
    ring_step=1,
    lower_kev=430.0,
    upper_kev=610.0,
    fwhm_fraction_at_511=0.145,
):
    """Expected single-scatter counts per span-1 bin, float64 ``scanner.sinogram_shape(1)``.

    ``activity`` (per voxel) and ``mu`` (cm⁻¹) are ``(nx, ny, nz)`` images on petiq's centred grid
    (:mod:`petiq.recon.projectors`), ``voxel_size_mm`` defaults to the scanner's. ``scatter_step``:
    scatter-point block size in voxels; ``detector_step``: crystal subsampling (default: the divisor of
    ``crystals_per_ring`` giving closest to 36 samples per ring); ``ring_step``: ring subsampling.
    Counts are per unit activity per voxel x the detection probability of the module doc.
    """
    activity = np.asarray(activity, dtype=np.float64)
    mu = np.asarray(mu, dtype=np.float64)
    vox = tuple(float(v) for v in (voxel_size_mm or scanner.voxel_size_mm))
    if activity.shape != mu.shape or activity.ndim != 3:
        raise PetiqInputError(
            None,
            f"activity {activity.shape} and μ-map {mu.shape} differ or are not 3-D",
            "pass two (nx, ny, nz) images on the same grid",
        )
    if (mu < 0).any() or (activity < 0).any() or not np.isfinite(mu).all() or not np.isfinite(activity).all():
        raise PetiqInputError(None, "negative or non-finite activity or μ", "pass finite, non-negative images")
    if detector_step is None:
        n = scanner.crystals_per_ring
        detector_step = min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: abs(n / d - 36))
    crys, rings, det, nrm = _sampled_detectors(scanner, detector_step, ring_step)
    pts, wts = scatter_points(mu, vox, scatter_step)
    out = np.zeros(scanner.sinogram_shape(1))
    if len(pts) == 0:
        return out
    log.info(
        "SSS: %d scatter points, %d sampled detectors (%d crystals x %d rings)",
        len(pts),
        len(det),
        len(crys),
        len(rings),
    )
    org = _grid(mu.shape, vox)
    step = 0.5 * min(vox)
    att, emi = _leg_integrals(activity, mu / 10.0, pts, det, org, np.array(vox), step)
    cos_tab = np.linspace(-1.0, 1.0, 2001)
    e_s = scattered_energy(511.0, cos_tab)
    kn_tab = klein_nishina(511.0, cos_tab) / klein_nishina_total(511.0)  # per unit μ: (μ/σ) dσ/dΩ
    eff_tab = window_efficiency(e_s, lower_kev, upper_kev, fwhm_fraction_at_511)
    eff_tab[eff_tab < 1e-12] = 0.0
    ratio_tab = klein_nishina_total(e_s) / klein_nishina_total(511.0)
    eff511 = float(window_efficiency(511.0, lower_kev, upper_kev, fwhm_fraction_at_511))
    area_mm2 = 2.0 * np.pi * scanner.lor_radius_mm / scanner.crystals_per_ring * scanner.ring_pitch_mm
    # weight: V μ (cm³ cm⁻¹ = cm²) -> mm²; with kn_tab (1/sr), geo (mm⁻²) and emi (mm x act) the result is act.
    pair = _pair_scatter(pts, wts * 100.0, det, nrm, area_mm2, att, emi, cos_tab, kn_tab, eff_tab, ratio_tab, eff511)
    # emi is ∫ act ds in mm with act per voxel; converting act per voxel to density: / voxel volume (mm³)
    pair /= float(np.prod(vox))
    ra, rb = scanner.span1_rings()
    v, t = np.meshgrid(np.arange(scanner.n_views), np.arange(scanner.n_radial), indexing="ij")
    da, db = scanner.view_radial_to_dets(v, t)
    _interp_span1(
        pair,
        rings.astype(np.float64),
        crys.astype(np.float64),
        float(scanner.crystals_per_ring),
        ra.astype(np.float64),
        rb.astype(np.float64),
        np.asarray(da, np.float64),
        np.asarray(db, np.float64),
        out,
    )
    return out


def unscattered_lor(
    line_activity_mm,
    line_mu,
    distance_mm,
    cos_a,
    cos_b,
    area_mm2,
    lower_kev=430.0,
    upper_kev=610.0,
    fwhm_fraction_at_511=0.145,
):
    """Trues of one LOR in the same normalisation as :func:`single_scatter`:
    ``ε(511)² exp(-∫μ) ∫λ ds 2 σ_A σ_B/(4π D²)`` (``line_activity_mm``: ∫ activity density ds)."""
    e = float(window_efficiency(511.0, lower_kev, upper_kev, fwhm_fraction_at_511))
    return e * e * np.exp(-line_mu) * line_activity_mm * area_mm2**2 * cos_a * cos_b / (2.0 * np.pi * distance_mm**2)

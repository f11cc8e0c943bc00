"""Data corrections of the e7-style chain: normalisation, randoms, attenuation, scatter.

All corrections enter the reconstruction's system model (ordinary-Poisson OSEM,
:mod:`petiq.recon.osem`) for a span-``S`` sinogram bin ``k``::

    ybar_k = a_k · n_k · κ · D · (P x)_k + r_k + s_k

``x`` in kBq/mL (= Bq/mm³), ``P`` the Joseph projector (line integrals in mm; for a compressed bin
the SUM over its span-1 members, each its own LOR, as the scanner adds their counts: see
:mod:`petiq.recon.projectors`), ``a`` attenuation factors (the MEAN over the members of
``exp(−P₁μ)``), ``n`` the normalisation of the compressed bin = the MEAN of its span-1 members'
``n_i``, ``κ`` the scanner's calibration factor (trues per second per Bq/mm² of line integral of one
span-1 LOR; stored with the norm scan), ``D`` the acquisition duration (s), ``r`` expected randoms
(the SUM over members), ``s`` expected scatter (counts, normalisation included).

Sum projector with mean factors is NiftyPET's span-11 model: ``prjf.cu`` adds every span-1 LOR's
line integral into its span-11 sinogram but its attenuation factor as ``exp(−acc)/li2nos``, and
``norm.cu`` adds ``nrmfctr/sn1_sn11no`` per member. ``a·n·ΣP`` equals the scanner's
``Σ_i a_i n_i P_i`` up to the covariance of the members' factors and line integrals (the members of
one bin share the crystal pair's transaxial position and differ only in ring pair).

Span-1 bookkeeping: the ring pair of a span-1 bin depends on its sinogram ``z`` only and the
crystal pair on (view, radial) only (:meth:`petiq.scanner.geometry.Scanner.view_radial_to_dets`), so
crystal-wise quantities (fan sums, efficiency products) are computed by two small numba kernels
that loop over the span-1 planes without ever storing a span-1 sinogram (354 M bins on the mMR).

The estimators (each a paragraph of the README; see their docstrings):

* :func:`estimate_normalisation` — component-based norm from the norm scan (fan sums of a known
  uniform cylinder): crystal efficiencies by an ML-norm-like fan-sum fixed point, radial
  geometric factors by measured / expected counts, scale fixed by the known phantom and κ.
* :func:`estimate_randoms` — singles per crystal from the delayed fan sums, randoms ∝ s_a·s_b,
  scaled to the delayed total (variance reduction).
* :func:`attenuation_factors` — ``exp(−P₁ μ)`` of the μ-map on its own grid, averaged over members.

The scatter estimators live in :mod:`petiq.recon.scatter`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numba
import numpy as np
from numba import njit, prange

from petiq.core.errors import PetiqInputError
from petiq.recon.projectors import forward_member_mean
from petiq.scanner.geometry import Scanner

__all__ = [
    "NormEstimate",
    "RandomsEstimate",
    "attenuation_factors",
    "check_mumap",
    "crystal_fan_sums",
    "crystal_pair_sums",
    "estimate_normalisation",
    "estimate_randoms",
    "estimate_singles",
    "norm_phantom_expected",
    "norm_sinogram",
    "randoms_sinogram",
]

log = logging.getLogger("petiq.recon")


# ----------------------------------------------------------------------------- crystal kernels
@njit(parallel=True, cache=True)
def _fan_sums_kernel(w, per_bin, use_bins, radial, z_to_k, ring_a, ring_b, det_a, det_b, out):
    """out[c, ring, det] += Σ over span-1 bins (z, v, t) touching crystal (ring, det) of
    w[other crystal] · radial[t] · (per_bin[k(z), v, t] if use_bins). One buffer per chunk of z."""
    n_z = z_to_k.shape[0]
    nv, nr = det_a.shape
    n_chunks = out.shape[0]
    for c in prange(n_chunks):
        o = out[c]
        for z in range(c * n_z // n_chunks, (c + 1) * n_z // n_chunks):
            k = z_to_k[z]
            ra = ring_a[z]
            rb = ring_b[z]
            wa = w[ra]
            wb = w[rb]
            oa = o[ra]
            ob = o[rb]
            for v in range(nv):
                for t in range(nr):
                    e = radial[t]
                    if use_bins:
                        e *= per_bin[k, v, t]
                    da = det_a[v, t]
                    db = det_b[v, t]
                    oa[da] += wb[db] * e
                    ob[db] += wa[da] * e


@njit(parallel=True, cache=True)
def _pair_sums_kernel(w, k_start, z_sorted, ring_a, ring_b, det_a, det_b, out):
    """out[k, v, t] = Σ over span-1 members z of sinogram k of w[ring_a[z], det_a] · w[ring_b[z], det_b]."""
    n_k = out.shape[0]
    nv, nr = det_a.shape
    for k in prange(n_k):
        ok = out[k]
        for m in range(k_start[k], k_start[k + 1]):
            z = z_sorted[m]
            wa = w[ring_a[z]]
            wb = w[ring_b[z]]
            for v in range(nv):
                for t in range(nr):
                    ok[v, t] += wa[det_a[v, t]] * wb[det_b[v, t]]


@dataclass(frozen=True)
class _Tables:
    z_to_k: np.ndarray
    ring_a: np.ndarray
    ring_b: np.ndarray
    det_a: np.ndarray
    det_b: np.ndarray
    k_start: np.ndarray
    z_sorted: np.ndarray
    members: np.ndarray


_TABLES: dict = {}


def _tables(scanner: Scanner, span: int) -> _Tables:
    key = (scanner, int(span))
    if key not in _TABLES:
        z_to_k = np.ascontiguousarray(scanner.span1_to_sinogram(span), dtype=np.int64)
        ring_a, ring_b = (np.ascontiguousarray(r, dtype=np.int64) for r in scanner.span1_rings())
        view, t = np.meshgrid(np.arange(scanner.n_views), np.arange(scanner.n_radial), indexing="ij")
        det_a, det_b = (np.ascontiguousarray(d, dtype=np.int64) for d in scanner.view_radial_to_dets(view, t))
        order = np.argsort(z_to_k, kind="stable")
        members = np.bincount(z_to_k, minlength=scanner.n_sinograms(span))
        k_start = np.concatenate([[0], np.cumsum(members)]).astype(np.int64)
        _TABLES[key] = _Tables(z_to_k, ring_a, ring_b, det_a, det_b, k_start, order.astype(np.int64), members)
    return _TABLES[key]


def crystal_fan_sums(
    scanner: Scanner,
    weights: np.ndarray,
    per_bin: np.ndarray | None = None,
    radial: np.ndarray | None = None,
    span: int = 1,
) -> np.ndarray:
    """Fan sums ``Σ_j w_j · g_t · E_k`` per crystal ``i`` over all span-1 bins (i, j) of the scanner.

    ``weights``: (n_rings, crystals_per_ring) per crystal; ``per_bin``: optional span-``span``
    sinogram whose value applies to every span-1 member of a bin; ``radial``: optional per radial bin
    factor. Returns float64 (n_rings, crystals_per_ring). With ``weights = ε`` this is the expected
    fan sum divided by ``ε_i``; with all ones it counts a crystal's bins.
    """
    tab = _tables(scanner, span if per_bin is not None else 1)
    w = np.ascontiguousarray(weights, dtype=np.float64).reshape(scanner.n_rings, scanner.crystals_per_ring)
    g = np.ones(scanner.n_radial) if radial is None else np.ascontiguousarray(radial, dtype=np.float64)
    use = per_bin is not None
    pb = np.ascontiguousarray(per_bin, dtype=np.float32) if use else np.zeros((1, 1, 1), np.float32)
    n_chunks = max(1, min(numba.get_num_threads(), tab.z_to_k.size))
    out = np.zeros((n_chunks, scanner.n_rings, scanner.crystals_per_ring), dtype=np.float64)
    _fan_sums_kernel(w, pb, use, g, tab.z_to_k, tab.ring_a, tab.ring_b, tab.det_a, tab.det_b, out)
    return out.sum(axis=0)


def crystal_pair_sums(scanner: Scanner, weights: np.ndarray, span: int) -> np.ndarray:
    """float32 span-``span`` sinogram: per bin, Σ over its span-1 members of ``w_a · w_b``."""
    tab = _tables(scanner, span)
    w = np.ascontiguousarray(weights, dtype=np.float32).reshape(scanner.n_rings, scanner.crystals_per_ring)
    out = np.zeros(scanner.sinogram_shape(span), dtype=np.float32)
    _pair_sums_kernel(w, tab.k_start, tab.z_sorted, tab.ring_a, tab.ring_b, tab.det_a, tab.det_b, out)
    return out


def _members(scanner: Scanner, span: int) -> np.ndarray:
    return scanner.sinogram_members(span).astype(np.float64)[:, None, None]


# ----------------------------------------------------------------------------- normalisation
@dataclass
class NormEstimate:
    """Component-based normalisation.

    ``norm``: float32 span-``span`` sinogram, the mean over each bin's span-1 members of
    ``ε_a ε_b g_t``; ``crystal_efficiency`` (n_rings, crystals_per_ring; mean 1 over real
    crystals, 0 in the gaps); ``radial_factor`` (n_radial; carries the global scale);
    ``radial_measured``: which radial bins the norm phantom covered (the others are extrapolated);
    ``calibration_factor`` κ (copied from the norm scan); ``summary``: fit diagnostics.
    """

    norm: np.ndarray
    crystal_efficiency: np.ndarray
    radial_factor: np.ndarray
    radial_measured: np.ndarray
    span: int
    calibration_factor: float
    summary: dict = field(default_factory=dict)


def norm_phantom_expected(
    scanner: Scanner,
    span: int,
    radius_mm: float,
    mu_cm: float,
    activity_bq_per_ml: float,
    duration_s: float,
    calibration_factor: float,
) -> np.ndarray:
    """Expected counts per span-1 member of each span-``span`` bin for the norm scan's uniform
    cylinder with unit normalisation, the mean over the bin's members of ``κ · D · c · a_i · (P₁ 1_cyl)_i``
    (float32; ``a_i = exp(−μ (P₁ 1_cyl)_i)``, each member's own LOR).

    The cylinder is the one :func:`petiq.listmode.simulate.simulate_norm_scan` acquires (radius
    ``radius_mm``, the whole axial FOV, water μ), voxelised the same way, so the expectation is exact
    for simulated norm scans; for a real scanner this is the known norm phantom."""
    from petiq.listmode.simulate import uniform_cylinder

    cylinder, voxel = uniform_cylinder(radius_mm, scanner.n_rings * scanner.ring_pitch_mm)
    scale = np.float32(calibration_factor * (activity_bq_per_ml / 1000.0) * duration_s)
    mu_mm = np.float32(0.1 * mu_cm)
    return forward_member_mean(scanner, cylinder, voxel, span, lambda p: scale * p * np.exp(-mu_mm * p))


def norm_sinogram(scanner: Scanner, crystal_efficiency: np.ndarray, radial_factor: np.ndarray, span: int) -> np.ndarray:
    """float32 span-``span`` normalisation: mean over members of ``ε_a ε_b`` times ``g_t``.

    The mean, because the projector already sums the members' line integrals (``n̄ · Σ_i P_i x``
    ≈ ``Σ_i n_i P_i x``); NiftyPET's ``norm.cu`` forms the span-11 norm the same way (``nrmfctr /
    sn1_sn11no`` added per member)."""
    pairs = crystal_pair_sums(scanner, crystal_efficiency, span)
    members = scanner.sinogram_members(span).astype(np.float32)[:, None, None]
    return (pairs / members * np.asarray(radial_factor, dtype=np.float32)[None, None, :]).astype(np.float32)


def _extrapolate_radial(g: np.ndarray, weight: np.ndarray, measured: np.ndarray) -> np.ndarray:
    """Fill unmeasured radial bins with a weighted fit ``a + b·tp²`` (tp: centred radial index),
    one per parity of tp (the interleaving pattern), clipped to [0.5 min, 1.5 max] of the measured."""
    out = g.copy()
    if measured.all():
        return out
    n = g.size
    parity = (np.arange(n) - n // 2) % 2
    for p in (0, 1):
        fit = measured & (parity == p)
        todo = ~measured & (parity == p)
        if not todo.any():
            continue
        if fit.sum() < 3:
            out[todo] = np.average(g[measured], weights=weight[measured])
            continue
        tp2 = (np.arange(n, dtype=np.float64) - n // 2) ** 2
        coef = np.polyfit(tp2[fit], g[fit], 1, w=np.sqrt(weight[fit]))
        lo, hi = g[fit].min(), g[fit].max()
        out[todo] = np.clip(np.polyval(coef, tp2[todo]), 0.5 * lo, 1.5 * hi)
    return out


def estimate_normalisation(
    fansums: np.ndarray,
    sinogram: np.ndarray,
    scanner: Scanner,
    *,
    norm_scan_span: int,
    phantom_radius_mm: float,
    phantom_mu_cm: float,
    phantom_activity_bq_per_ml: float,
    duration_s: float,
    calibration_factor: float,
    span: int = 11,
    n_outer: int = 5,
    n_inner: int = 12,
    min_relative_counts: float = 0.1,
) -> NormEstimate:
    """Component-based normalisation ``n_i = ε_a ε_b g_t`` from a norm scan of a known cylinder.

    1. Expected counts per span-1 LOR with unit normalisation ``E`` (:func:`norm_phantom_expected`,
       using the known phantom, κ and the scan duration).
    2. Crystal efficiencies (ML-norm-like fan-sum fixed point): the measured fan sum of crystal ``i``
       is ``F_i = ε_i Σ_j ε_j g_t E_ij``; iterate ``ε_i ← sqrt(ε_i · F_i / Σ_j ε_j g_t E_ij)`` (the
       square root damps the ε → c·ε, 1/c oscillation of the plain fixed point). Gaps and crystals
       without counts stay 0.
    3. Radial factors: ``g_t = Σ_{k,v} counts / Σ_{k,v} E · Σ_members ε_a ε_b`` over views and
       planes. Bins the phantom does not cover (expected counts < ``min_relative_counts`` of the
       best radial bin; a 100 mm cylinder leaves the mMR's |s| > 100 mm) are extrapolated by a
       weighted fit ``a + b·tp²`` in the centred radial index, one per parity of tp (the
       interleaving pattern). A real scanner measures them with a rotating rod source instead.
    4. Steps 2-3 alternate ``n_outer`` times. Then ε is scaled to mean 1 over real crystals and
       ``g`` takes the inverse square, so ``n`` keeps the scale the data fixed: ``n · κ · D ·
       (attenuated line integral)`` reproduces the norm scan's counts.
    """
    sc = scanner
    norm_scan_span = sc.check_span(int(norm_scan_span))
    span = sc.check_span(int(span))
    fansums = np.asarray(fansums, dtype=np.float64).reshape(sc.n_rings, sc.crystals_per_ring)
    sinogram = np.asarray(sinogram)
    expected = norm_phantom_expected(
        sc, norm_scan_span, phantom_radius_mm, phantom_mu_cm, phantom_activity_bq_per_ml, duration_s, calibration_factor
    )
    real = ~sc.is_gap(np.arange(sc.crystals_per_ring))[None, :] & (fansums > 0)
    eps = np.where(real, 1.0, 0.0)
    g = np.ones(sc.n_radial)
    measured_counts = sinogram.sum(axis=(0, 1), dtype=np.float64)
    members = _members(sc, norm_scan_span)
    for outer in range(n_outer):
        for _ in range(n_inner if outer == 0 else max(4, n_inner // 2)):
            fan = crystal_fan_sums(sc, eps, per_bin=expected, radial=g, span=norm_scan_span)
            ratio = np.divide(fansums, fan, out=np.zeros_like(fan), where=fan > 0)
            eps = np.where(real, np.sqrt(eps * ratio), 0.0)
        pairs = crystal_pair_sums(sc, eps, norm_scan_span)
        predicted = (expected.astype(np.float64) * pairs).sum(axis=(0, 1))  # per radial bin, g = 1
        measured = predicted >= min_relative_counts * predicted.max()
        g_meas = np.divide(measured_counts, predicted, out=np.zeros_like(predicted), where=predicted > 0)
        g = _extrapolate_radial(g_meas, predicted, measured)
    scale = eps[real].mean()
    eps = eps / scale
    g = g * scale**2
    norm = norm_sinogram(sc, eps, g, span)
    # how well n·κ reproduces the norm scan (at the norm scan's span)
    pairs = crystal_pair_sums(sc, eps, norm_scan_span)
    model = expected.astype(np.float64) * pairs * g[None, None, :]
    cover = (expected > 0).any(axis=(0, 1)) & measured
    total_model, total_meas = float(model[..., cover].sum()), float(sinogram[..., cover].sum(dtype=np.float64))
    summary = {
        "norm_scan_counts": float(sinogram.sum(dtype=np.float64)),
        "model_over_measured_counts": total_model / max(total_meas, 1e-30),
        "radial_bins_measured": int(measured.sum()),
        "radial_bins_extrapolated": int((~measured).sum()),
        "efficiency_cv": float(eps[real].std()),
        "n_real_crystals": int(real.sum()),
        "plane_mean_members": float(members.mean()),
    }
    log.info(
        "norm: %d crystals, efficiency CV %.3f, %d/%d radial bins measured, model/measured counts %.4f",
        summary["n_real_crystals"],
        summary["efficiency_cv"],
        summary["radial_bins_measured"],
        sc.n_radial,
        summary["model_over_measured_counts"],
    )
    return NormEstimate(
        norm=norm,
        crystal_efficiency=eps.astype(np.float32),
        radial_factor=g.astype(np.float32),
        radial_measured=measured,
        span=span,
        calibration_factor=float(calibration_factor),
        summary=summary,
    )


# ----------------------------------------------------------------------------- randoms
@dataclass
class RandomsEstimate:
    """``randoms``: float32 span-``span`` sinogram of expected randoms; ``singles``: relative singles
    per crystal (n_rings, crystals_per_ring); ``scale``: randoms = scale · Σ_members s_a s_b."""

    randoms: np.ndarray
    singles: np.ndarray
    scale: float
    span: int


def estimate_singles(delayed_fansums: np.ndarray, scanner: Scanner, n_iterations: int = 12) -> np.ndarray:
    """Relative singles per crystal from the delayed fan sums (fan-sum method).

    Delayed coincidences have expectation ``R_ij = c · s_i s_j``, so a crystal's fan sum is
    ``F_i = c · s_i Σ_{j ∈ fan(i)} s_j``; solve by the damped fixed point
    ``s_i ← sqrt(s_i · F_i / Σ_{j ∈ fan(i)} s_j)`` (``c`` is absorbed in the scale). Crystals with
    no delayeds (gaps) stay 0. float64 (n_rings, crystals_per_ring)."""
    sc = scanner
    fans = np.asarray(delayed_fansums, dtype=np.float64).reshape(sc.n_rings, sc.crystals_per_ring)
    ones = (fans > 0).astype(np.float64)
    if not ones.any():
        return np.zeros_like(fans)
    count = crystal_fan_sums(sc, ones)
    s = np.sqrt(np.divide(fans, count, out=np.zeros_like(fans), where=count > 0))
    for _ in range(n_iterations):
        fan = crystal_fan_sums(sc, s)
        s = np.sqrt(s * np.divide(fans, fan, out=np.zeros_like(fans), where=fan > 0))
    return s


def randoms_sinogram(
    singles: np.ndarray, scanner: Scanner, span: int, total: float | None = None
) -> tuple[np.ndarray, float]:
    """Randoms ∝ ``Σ_members s_a s_b`` at span ``span``; scaled to ``total`` when given.
    Returns (float32 sinogram, scale)."""
    pairs = crystal_pair_sums(scanner, singles, span)
    scale = 1.0
    if total is not None:
        psum = float(pairs.sum(dtype=np.float64))
        scale = float(total) / psum if psum > 0 else 0.0
    return (pairs * np.float32(scale)).astype(np.float32), scale


def estimate_randoms(
    delayeds: np.ndarray, delayed_fansums: np.ndarray, scanner: Scanner, span: int, n_iterations: int = 12
) -> RandomsEstimate:
    """Variance-reduced expected randoms from the delayed window (see :func:`estimate_singles`):
    the singles-product sinogram, expanded to span ``span`` (sum over members) and scaled so that
    its total equals the delayeds' total (unbiased: E[delayeds] = randoms)."""
    span = scanner.check_span(int(span))
    total = float(np.asarray(delayeds).sum(dtype=np.float64))
    singles = estimate_singles(delayed_fansums, scanner, n_iterations)
    randoms, scale = randoms_sinogram(singles, scanner, span, total=total)
    log.info(
        "randoms: %d delayeds, fan-sum singles estimate (%d crystals with counts)", int(total), int((singles > 0).sum())
    )
    return RandomsEstimate(randoms=randoms, singles=singles, scale=scale, span=span)


# ----------------------------------------------------------------------------- attenuation
MU_MAX_CM = 2.0
"""Largest believable linear attenuation coefficient at 511 keV in cm⁻¹ (cortical bone ≈ 0.17,
metal implants ≈ 0.5-1); larger values mean the μ-map is not in cm⁻¹."""


def check_mumap(mu: np.ndarray, affine: np.ndarray, scanner: Scanner, path=None) -> tuple[float, float, float]:
    """Check a μ-map (cm⁻¹) against the scanner: 3-D, finite, non-negative, plausible units, a sound
    RAS+ affine (any axis order, flips, offset or rotation: :func:`petiq.scanner.frame.check_affine`) and all
    tissue, placed by that affine in the scanner frame (head-first supine), inside the crystal ring
    and the axial field of view. Returns the voxel size (mm) along the array's axes."""
    from petiq.scanner.frame import SCANNER_TO_RAS, check_affine

    mu = np.asarray(mu)
    if mu.ndim != 3 or min(mu.shape) < 1:
        raise PetiqInputError(
            path, f"μ-map has shape {mu.shape}, expected a 3-D volume", "give a 3-D μ-map NIfTI (x, y, z)"
        )
    n_nan = int(np.count_nonzero(~np.isfinite(mu)))
    if n_nan:
        raise PetiqInputError(
            path,
            f"μ-map has {n_nan} NaN/infinite voxels",
            "fill them (air is 0, soft tissue 0.096 cm⁻¹) or regenerate the μ-map",
        )
    if float(mu.min()) < 0:
        raise PetiqInputError(
            path,
            f"μ-map has negative values (min {float(mu.min()):.4g} cm⁻¹)",
            "attenuation coefficients are ≥ 0: clip the μ-map at 0 or regenerate it",
        )
    if float(mu.max()) > MU_MAX_CM:
        raise PetiqInputError(
            path,
            f"μ-map maximum {float(mu.max()):.4g} is not a 511 keV attenuation "
            f"coefficient in cm⁻¹ (water 0.096, bone ≤ 0.2)",
            "give μ in cm⁻¹ (divide values in 1/m by 100, multiply 1/mm by 10)",
        )
    affine = check_affine(affine, path)
    voxel = tuple(float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0)))
    if mu.any():
        tissue = np.nonzero(mu > 0)
        ijk = np.vstack([*tissue, np.ones(tissue[0].size)])
        xyz = SCANNER_TO_RAS.T @ (affine @ ijk)[:3]  # RAS mm -> scanner mm (an orthogonal map)
        r = float(np.hypot(xyz[0], xyz[1]).max())
        zmax = float(np.abs(xyz[2]).max())
        half_axial = 0.5 * scanner.n_rings * scanner.ring_pitch_mm
        if r > scanner.ring_radius_mm or zmax > half_axial + max(voxel):
            raise PetiqInputError(
                path,
                f"μ-map grid {mu.shape} of {voxel} mm does not fit scanner {scanner.name!r}: tissue reaches "
                f"r = {r:.0f} mm (crystal ring {scanner.ring_radius_mm:.0f} mm) and |z| = {zmax:.0f} mm "
                f"(axial FOV ±{half_axial:.0f} mm)",
                "use the μ-map made for this scanner preset, with its true affine (check the config's "
                "scanner and cohort grid)",
            )
    return voxel


def attenuation_factors(mu: np.ndarray, voxel_size_mm, scanner: Scanner, span: int) -> np.ndarray:
    """float32 span-``span`` attenuation factors: the mean over each bin's span-1 members of
    ``exp(−P₁ μ)`` (NiftyPET ``prjf.cu``: ``expf(-acc) / li2nos`` per member), μ in cm⁻¹ on its own
    grid (centred on the scanner); the projector integrates in mm, hence the factor 0.1."""
    mu = np.asarray(mu, dtype=np.float32)
    return forward_member_mean(scanner, mu, voxel_size_mm, span, lambda p: np.exp(np.float32(-0.1) * p))

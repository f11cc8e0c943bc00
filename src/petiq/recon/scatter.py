"""Scatter estimators of the reconstruction: the expected scatter sinogram ``s`` of the system model
(:mod:`petiq.recon.corrections`), counts with the normalisation included.

* :func:`estimate_scatter` — smoothed-emission scatter model scaled to the tails (not e7's SSS).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import Scanner

__all__ = ["ScatterEstimate", "estimate_scatter"]

log = logging.getLogger("petiq.recon")


@dataclass
class ScatterEstimate:
    """``scatter``: float32 span-``span`` sinogram of expected scatter counts (normalisation
    included); ``scale``: the tail-fit factor; ``n_tail_bins``; ``scatter_fraction``: estimated
    scatter / (prompts − randoms); ``summary``."""

    scatter: np.ndarray
    scale: float
    n_tail_bins: int
    scatter_fraction: float
    summary: dict = field(default_factory=dict)


def _smooth_sinogram(sino: np.ndarray, sigma) -> np.ndarray:
    """Gaussian blur of a sinogram stack: planes in storage order (``nearest`` at the ends), views
    wrapping around, radial bins with zeros beyond the field of view."""
    return ndimage.gaussian_filter(sino, sigma=sigma, mode=("nearest", "wrap", "constant"))


def estimate_scatter(
    prompts: np.ndarray,
    randoms: np.ndarray,
    norm: np.ndarray,
    attenuation: np.ndarray,
    scanner: Scanner,
    span: int,
    *,
    sigma_radial_mm: float = 60.0,
    sigma_views: float = 3.0,
    sigma_planes: float = 2.0,
    tail_margin_mm: float = 8.0,
    object_threshold: float = 0.999,
    n_refine: int = 3,
) -> ScatterEstimate:
    """Scatter = tail-scaled broad smoothing of the emission inside the object (not e7's SSS).

    Model: scatter per span-1 LOR is a broad blur of the (attenuated, un-normalised) true emission,
    ``s_k = α · n_k · m_k · G * e``, with ``G`` a Gaussian of σ = ``sigma_radial_mm`` radially (in
    units of the central radial bin width), ``sigma_views`` views (wrapping) and ``sigma_planes``
    sinogram planes in storage order (segment after segment, as petiq's simulator blurs; it mixes
    neighbouring segments at their borders, harmless for an axially smooth distribution), ``m_k``
    the bin's members and ``n_k`` its normalisation.

    1. Emission per span-1 LOR: ``e = (prompts − randoms) / (n · m)``, kept only on LORs through
       the object (attenuation factor < ``object_threshold``; elsewhere 0: no trues there).
    2. Shape ``G * e``; scale ``α`` by least squares on the tails — bins whose LOR misses the
       object by more than ``tail_margin_mm`` radially (and that have a normalisation): there
       ``prompts − randoms`` is pure scatter.
    3. Repeat ``n_refine`` times with the current scatter estimate subtracted from ``e`` inside the
       object, so that the blurred quantity is the trues alone.

    The result is clipped at 0. Noise in ``e`` is irrelevant after the broad blur, so the estimate
    works from the lowest dose on; at very low counts ``α`` carries the tails' Poisson noise.
    """
    span = scanner.check_span(int(span))
    shape = scanner.sinogram_shape(span)
    y = np.asarray(prompts, dtype=np.float32)
    r = np.asarray(randoms, dtype=np.float32)
    n = np.asarray(norm, dtype=np.float32)
    a = np.asarray(attenuation, dtype=np.float32)
    for name, arr in (("prompts", y), ("randoms", r), ("norm", n), ("attenuation", a)):
        if arr.shape != shape:
            raise PetiqInputError(
                None,
                f"{name} sinogram has shape {arr.shape}, expected {shape} (scanner {scanner.name!r}, span {span})",
                "give sinograms of one scanner and span",
            )
    members = scanner.sinogram_members(span).astype(np.float32)[:, None, None]
    nm = n * members
    valid = nm > 0
    inside = a < object_threshold
    bin_mm = np.pi * scanner.lor_radius_mm / scanner.crystals_per_ring
    margin = int(math.ceil(tail_margin_mm / bin_mm))
    if margin > 0:
        struct = np.zeros((1, 1, 2 * margin + 1), dtype=bool)
        struct[..., :] = True
        grown = ndimage.binary_dilation(inside, structure=struct)
    else:
        grown = inside
    tails = valid & ~grown
    n_tail = int(tails.sum())
    net = y - r
    e_all = np.divide(net, nm, out=np.zeros(shape, np.float32), where=valid)
    sigma = (sigma_planes, sigma_views, sigma_radial_mm / bin_mm)
    s_member = np.zeros(shape, np.float32)
    alpha = 0.0
    for _ in range(max(1, n_refine)):
        # no clipping of negative values before the blur: at low counts (prompts − randoms < 0 in
        # many bins) clipping would bias the blurred emission upwards
        e = np.where(inside & valid, e_all - s_member, 0.0).astype(np.float32)
        blur = _smooth_sinogram(e, sigma)
        if n_tail == 0:
            log.warning("scatter: no tail bins (the object fills the field of view); scatter set to 0")
            alpha = 0.0
        else:
            model = (nm * blur)[tails].astype(np.float64)
            den = float((model * model).sum())
            alpha = max(0.0, float((model * net[tails]).sum()) / den) if den > 0 else 0.0
        s_member = (alpha * blur).astype(np.float32)
    scatter = np.maximum(nm * s_member, 0.0).astype(np.float32)
    net_total = float(net.sum(dtype=np.float64))
    sf = float(scatter.sum(dtype=np.float64)) / net_total if net_total > 0 else 0.0
    log.info("scatter: %d tail bins, scale %.4g, estimated scatter fraction %.3f", n_tail, alpha, sf)
    return ScatterEstimate(
        scatter=scatter,
        scale=alpha,
        n_tail_bins=n_tail,
        scatter_fraction=sf,
        summary={
            "sigma_radial_mm": sigma_radial_mm,
            "sigma_views": sigma_views,
            "sigma_planes": sigma_planes,
            "tail_margin_mm": tail_margin_mm,
            "n_refine": n_refine,
        },
    )

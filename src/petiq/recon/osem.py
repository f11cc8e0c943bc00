"""Ordinary-Poisson OSEM (OP-OSEM), e7 style, on the CPU (numba) or with torch (CUDA / CPU).

System model for a span-``S`` sinogram bin ``k`` (see :mod:`petiq.recon.corrections`)::

    ybar_k = m_k (P x)_k + add_k,    m = a · n · κ · D  (multiplicative),   add = r + s  (additive)

with ``x`` in kBq/mL. The data are the raw prompts; randoms and scatter stay additive in the model
(ordinary Poisson), so the data keep their Poisson statistics. One sub-iteration over subset ``b``::

    x ← x / sens_b · Pᵀ_b( m_b · y_b / (m_b · P_b x + add_b) ),    sens_b = Pᵀ_b m_b

Subsets are interleaved views (subset ``b`` = views ``b, b + S, b + 2S, …``; when ``n_views`` is not
a multiple of ``S`` the subsets differ by at most one view), visited in order ``0 … S−1``, each with
its own sensitivity image. The update is multiplicative, so the image stays non-negative; voxels
outside the scanner's transaxial field of view (the cylinder the radial bins reach) and voxels no
subset sees are 0. The start image is uniform inside the field of view at the level that
reproduces the net counts. An optional isotropic Gaussian post-filter (FWHM in mm) follows.

Backends (``backend=``): ``"cpu"`` — the numba projector (:class:`~petiq.recon.projectors.JosephProjector`);
``"cuda"`` — the torch projector (:class:`~petiq.recon.torch_backend.TorchJosephProjector`) on the GPU,
falling back to ``"cpu"`` with a warning when no CUDA device is present; ``"auto"`` — ``"cuda"`` if
``torch.cuda.is_available()`` else ``"cpu"``; ``"torch-cpu"`` — the torch projector on the CPU (for
tests and benchmarks of the GPU code path on machines without a GPU).
"""

from __future__ import annotations

import logging
import sys

import numpy as np
from scipy import ndimage
from tqdm import tqdm

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import Scanner

__all__ = ["BACKENDS", "fov_mask", "osem", "reconstruct", "resolve_backend", "subset_views", "system_model"]

BACKENDS = ("auto", "cpu", "cuda", "torch-cpu")

log = logging.getLogger("petiq.recon")


def subset_views(n_views: int, n_subsets: int) -> list[np.ndarray]:
    """Interleaved view subsets: subset ``b`` holds views ``b, b + S, …`` (sizes differ by ≤ 1).

    >>> [v.tolist() for v in subset_views(7, 3)]
    [[0, 3, 6], [1, 4], [2, 5]]
    """
    if not 1 <= int(n_subsets) <= int(n_views):
        raise PetiqInputError(
            None,
            f"{n_subsets} subsets for {n_views} views",
            f"use between 1 and {n_views} subsets (the mMR's 252 views: 21 subsets of 12)",
        )
    return [np.arange(b, n_views, n_subsets, dtype=np.int64) for b in range(int(n_subsets))]


def fov_mask(scanner: Scanner, image_shape=None, voxel_size_mm=None) -> np.ndarray:
    """bool image: voxel centres inside the transaxial field of view (radius = largest |s| of the
    radial bins)."""
    shape = scanner.image_shape if image_shape is None else tuple(image_shape)
    vox = scanner.voxel_size_mm if voxel_size_mm is None else tuple(voxel_size_mm)
    half = scanner.n_radial // 2
    tp_max = max(half, scanner.n_radial - 1 - half)
    radius = scanner.lor_radius_mm * np.sin(np.pi * tp_max / scanner.crystals_per_ring)
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * vox[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * vox[1]
    inside = x[:, None] ** 2 + y[None, :] ** 2 <= radius**2
    return np.repeat(inside[:, :, None], shape[2], axis=2)


def resolve_backend(backend: str) -> str:
    """``"cpu"``, ``"cuda"`` or ``"torch-cpu"`` for a requested backend (logs which one runs; a
    ``"cuda"`` request without a CUDA device falls back to ``"cpu"`` with a warning)."""
    key = str(backend).strip().lower()
    if key not in BACKENDS:
        raise PetiqInputError(None, f"unknown reconstruction backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    if key in ("auto", "cuda"):
        from petiq.recon.torch_backend import cuda_available

        if cuda_available():
            return "cuda"
        if key == "cuda":
            log.warning("backend 'cuda' requested but no CUDA device is available: falling back to the CPU backend")
        return "cpu"
    return key


def system_model(
    scanner: Scanner,
    span: int,
    *,
    duration_s: float,
    calibration_factor: float,
    norm: np.ndarray,
    attenuation: np.ndarray | None = None,
    randoms: np.ndarray | None = None,
    scatter: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(multiplicative, additive)`` float32 sinograms: ``a · n · κ · D`` and ``r + s``.

    ``attenuation=None`` means no attenuation correction (a = 1); ``randoms`` / ``scatter`` = None
    leave them out of the model."""
    shape = scanner.sinogram_shape(span)
    if not duration_s > 0 or not calibration_factor > 0:
        raise PetiqInputError(
            None,
            f"duration {duration_s} s and calibration factor {calibration_factor} must be > 0",
            "check the sinogram file's duration_s and the norm file's calibration_factor",
        )
    for name, arr in (("norm", norm), ("attenuation", attenuation), ("randoms", randoms), ("scatter", scatter)):
        if arr is not None and np.shape(arr) != shape:
            raise PetiqInputError(
                None,
                f"{name} sinogram has shape {np.shape(arr)}, expected {shape} (scanner {scanner.name!r}, span {span})",
                "estimate every correction for the same scanner and span",
            )
    mult = np.asarray(norm, dtype=np.float32) * np.float32(duration_s * calibration_factor)
    if attenuation is not None:
        mult = mult * np.asarray(attenuation, dtype=np.float32)
    add = np.zeros(shape, np.float32)
    if randoms is not None:
        add += np.asarray(randoms, dtype=np.float32)
    if scatter is not None:
        add += np.asarray(scatter, dtype=np.float32)
    return mult.astype(np.float32, copy=False), add


class _NumpyEngine:
    """The numba projector with numpy arithmetic."""

    name = "cpu"

    def __init__(self, scanner, shape, voxel, span):
        import numba

        from petiq.recon.projectors import JosephProjector

        self.proj = JosephProjector(scanner, image_shape=shape, voxel_size_mm=voxel, span=span)
        self.description = f"cpu (numba, {numba.get_num_threads()} threads)"

    def put(self, a):
        return np.ascontiguousarray(a, dtype=np.float32)

    def get(self, a):
        return np.asarray(a)

    def forward(self, x, views):
        return self.proj.forward(x, views=views)

    def back(self, v, views):
        return self.proj.back(v, views=views)

    def ratio(self, y, mult, fp, add):
        ybar = mult * fp + add
        out = np.zeros_like(ybar)
        np.divide(mult * y, ybar, out=out, where=ybar > 0)
        return out

    def inverse(self, sens, mask):
        out = np.zeros_like(sens)
        np.divide(1.0, sens, out=out, where=(sens > 0) & mask)
        return out

    def total(self, a) -> float:
        return float(np.sum(a, dtype=np.float64))


class _TorchEngine:
    """The torch projector with torch arithmetic on ``device``."""

    def __init__(self, scanner, shape, voxel, span, device):
        import torch

        from petiq.recon.torch_backend import TorchJosephProjector, describe_device

        self.torch = torch
        self.proj = TorchJosephProjector(scanner, image_shape=shape, voxel_size_mm=voxel, span=span, device=device)
        self.device = self.proj.device
        self.name = "cuda" if self.device.type == "cuda" else "torch-cpu"
        self.description = describe_device(self.device)

    def put(self, a):
        t = a if isinstance(a, self.torch.Tensor) else self.torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
        return t.to(self.device, self.torch.float32)

    def get(self, a):
        return a.detach().to("cpu").numpy()

    def forward(self, x, views):
        return self.proj.forward(x, views=views)

    def back(self, v, views):
        return self.proj.back(v, views=views)

    def ratio(self, y, mult, fp, add):
        ybar = mult * fp + add
        pos = ybar > 0
        return self.torch.where(
            pos, mult * y / self.torch.where(pos, ybar, self.torch.ones_like(ybar)), self.torch.zeros_like(ybar)
        )

    def inverse(self, sens, mask):
        ok = (sens > 0) & mask
        return self.torch.where(
            ok, 1.0 / self.torch.where(ok, sens, self.torch.ones_like(sens)), self.torch.zeros_like(sens)
        )

    def total(self, a) -> float:
        return float(a.double().sum())


def _engine(backend: str, scanner, shape, voxel, span):
    if backend == "cpu":
        return _NumpyEngine(scanner, shape, voxel, span)
    return _TorchEngine(scanner, shape, voxel, span, "cuda" if backend == "cuda" else "cpu")


def _check_sinogram(name: str, a, shape, allow_zero_total: bool = True) -> None:
    a = np.asarray(a)
    if a.shape != tuple(shape):
        raise PetiqInputError(
            None,
            f"{name} sinogram has shape {a.shape}, expected {tuple(shape)}",
            "give sinograms of the reconstruction's scanner and span",
        )
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        raise PetiqInputError(None, f"{name} sinogram has NaN or infinite values", f"recompute the {name} sinogram")
    if a.size and a.min() < 0:
        raise PetiqInputError(None, f"{name} sinogram has negative values", f"{name} must be ≥ 0")


def gaussian_post_filter(image: np.ndarray, fwhm_mm: float, voxel_size_mm) -> np.ndarray:
    """Isotropic Gaussian filter of FWHM ``fwhm_mm`` (0: no filter)."""
    if not fwhm_mm:
        return image
    if fwhm_mm < 0:
        raise PetiqInputError(None, f"post-filter FWHM {fwhm_mm} mm is negative", "use 0 (off) or a FWHM in mm")
    sigma = [fwhm_mm / (2.0 * np.sqrt(2.0 * np.log(2.0))) / v for v in voxel_size_mm]
    return ndimage.gaussian_filter(image, sigma=sigma, mode="constant").astype(np.float32)


def osem(
    prompts: np.ndarray,
    multiplicative: np.ndarray,
    additive: np.ndarray,
    scanner: Scanner,
    span: int = 11,
    *,
    n_iterations: int = 2,
    n_subsets: int = 21,
    post_filter_fwhm_mm: float = 0.0,
    backend: str = "auto",
    image_shape=None,
    voxel_size_mm=None,
    x0: np.ndarray | None = None,
    progress: bool = True,
    stop_after: int | None = None,
) -> np.ndarray:
    """OP-OSEM reconstruction (module docstring): float32 image ``(nx, ny, nz)`` in the units of
    ``1 / multiplicative`` per mm of line integral — kBq/mL when ``multiplicative = a·n·κ·D``.

    ``prompts``: raw prompt counts (span-``span`` sinogram); ``multiplicative``, ``additive``: from
    :func:`system_model`. The image grid defaults to the scanner's (``scanner.image_shape`` /
    ``voxel_size_mm``). ``x0``: start image (default: uniform in the FOV at the count level).
    ``stop_after``: stop after this many sub-iterations (benchmarks of slow backends).
    """
    span = scanner.check_span(int(span))
    shape_s = scanner.sinogram_shape(span)
    for name, arr in (("prompts", prompts), ("multiplicative", multiplicative), ("additive", additive)):
        _check_sinogram(name, arr, shape_s)
    if not (isinstance(n_iterations, (int, np.integer)) and n_iterations >= 1):
        raise PetiqInputError(None, f"n_iterations = {n_iterations!r}", "use an integer ≥ 1 (e7 default: 2)")
    subsets = subset_views(scanner.n_views, int(n_subsets))
    total_prompts = float(np.sum(prompts, dtype=np.float64))
    if total_prompts <= 0:
        raise PetiqInputError(
            None, "the prompts sinogram is empty (0 counts)", "check the list-mode file and its histogram"
        )
    shape = tuple(scanner.image_shape if image_shape is None else image_shape)
    voxel = tuple(scanner.voxel_size_mm if voxel_size_mm is None else voxel_size_mm)
    backend = resolve_backend(backend)
    eng = _engine(backend, scanner, shape, voxel, span)
    log.info(
        "OP-OSEM %d iterations x %d subsets on %s, image %s of %s mm",
        n_iterations,
        len(subsets),
        eng.description,
        shape,
        voxel,
    )

    mask_np = fov_mask(scanner, shape, voxel)
    # subset data: on the GPU split once and kept on the device; on the CPU sliced when needed
    # (a copy of 3 x 1/S of the sinograms per sub-iteration, instead of a second copy of everything)
    keep = backend != "cpu"

    def subset_data(views):
        return (
            eng.put(np.asarray(prompts[:, views, :], dtype=np.float32)),
            eng.put(multiplicative[:, views, :]),
            eng.put(additive[:, views, :]),
        )

    data = [(views, subset_data(views) if keep else None) for views in subsets]
    mask = eng.put(mask_np) > 0 if keep else mask_np
    sens_inv = []
    sens_total = 0.0
    for views, d in data:
        sens = eng.back(d[1] if keep else eng.put(multiplicative[:, views, :]), views)
        sens_total += eng.total(sens * mask)
        sens_inv.append(eng.inverse(sens, mask))
        del sens
    if x0 is None:
        net = total_prompts - float(np.sum(additive, dtype=np.float64))
        level = max(net, 1e-3 * total_prompts) / max(sens_total, 1e-30)
        x = eng.put(mask_np.astype(np.float32) * np.float32(level))
    else:
        if np.shape(x0) != shape:
            raise PetiqInputError(
                None, f"start image has shape {np.shape(x0)}, expected {shape}", "pass x0 on the image grid"
            )
        x = eng.put(np.where(mask_np, np.asarray(x0, np.float32), 0.0))
    bar = tqdm(
        total=n_iterations * len(data),
        desc=f"OP-OSEM ({eng.name})",
        file=sys.stderr,
        disable=not progress,
        mininterval=2,
    )
    done = 0
    for _ in range(n_iterations):
        for (views, d), sinv in zip(data, sens_inv):
            if stop_after is not None and done >= stop_after:
                break
            y, m, a = d if keep else subset_data(views)
            fp = eng.forward(x, views)
            x = x * sinv * eng.back(eng.ratio(y, m, fp, a), views)
            del y, m, a, fp
            done += 1
            bar.update(1)
    bar.close()
    image = eng.get(x).astype(np.float32)
    return gaussian_post_filter(image, post_filter_fwhm_mm, voxel)


def reconstruct(
    prompts: np.ndarray,
    scanner: Scanner,
    span: int = 11,
    *,
    duration_s: float,
    calibration_factor: float,
    norm: np.ndarray,
    attenuation: np.ndarray | None = None,
    randoms: np.ndarray | None = None,
    scatter: np.ndarray | None = None,
    **osem_options,
) -> np.ndarray:
    """Quantitative OP-OSEM (kBq/mL): :func:`system_model` then :func:`osem`. A correction left as
    ``None`` is left out of the model (e.g. ``attenuation=None``: no attenuation correction)."""
    mult, add = system_model(
        scanner,
        span,
        duration_s=duration_s,
        calibration_factor=calibration_factor,
        norm=norm,
        attenuation=attenuation,
        randoms=randoms,
        scatter=scatter,
    )
    return osem(prompts, mult, add, scanner, span, **osem_options)

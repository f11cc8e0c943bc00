"""Joseph ray-driven projector (numba, parallel CPU) for the cylindrical scanners of
:mod:`petiq.scanner.geometry`.

Image convention
----------------
Images are float32 arrays ``(nx, ny, nz)``: x and y transaxial, z axial (along the scanner axis), in
C order (so z is the contiguous axis). Voxel ``(i, j, k)`` has its centre at::

    x = (i - (nx - 1)/2) * vx,   y = (j - (ny - 1)/2) * vy,   z = (k - (nz - 1)/2) * vz   (mm)

in the scanner frame of :mod:`petiq.scanner.geometry`: the grid is centred on the scanner axis and on the
axial centre of the crystal rings. Values are activity per voxel (any unit); projections are line
integrals in mm x activity: a uniform ball of value 1 projects to its chord length in mm.

Joseph's method
---------------
A LOR from crystal face ``p1`` to ``p2`` is sampled once per image plane perpendicular to its
*major transaxial axis* (x if ``|dx| >= |dy|``, else y), at that plane's voxel centres, between the
two crystal faces. Each sample is a bilinear interpolation: linear along the minor transaxial axis x
linear along z (4 taps), with weight = the LOR's length per major-axis step,
``v_major * |p2 - p1| / |dmajor|``. Taps outside the image count as zero (the image is padded with
zero voxels internally). Forward and back projection use the same samples and weights, so they are
exact adjoints: ``<A x, y> = <x, A^T y>`` up to float32 rounding.

Two modes
---------
* All bins of a span (``bins=None``): values shaped ``scanner.sinogram_shape(span)`` (or
  ``(n_sinograms, len(views), n_radial)`` with ``views=``, for OSEM subsets by view). The value of a
  span-``S`` bin is the SUM of the line integrals of its span-1 members (see "Axial compression"
  below); the LOR of a member (span-1 plane, view, radial) runs from ``(xy_a, z_mid - dz/2)`` to
  ``(xy_b, z_mid + dz/2)`` (:class:`petiq.scanner.tables.SinogramGeometry` of span 1). The transaxial path
  of a (view, radial) pair - major-axis steps, minor-axis taps and weights - is the same for every
  plane, so it is computed once and all member planes are projected in the inner loop. With z
  contiguous, consecutive planes read neighbouring memory of the same two z-columns of the image
  (L1-resident), which is what makes the full-mMR projection affordable on a CPU.
* Arbitrary span-1 bins (``bins=`` int64 span-1 offsets, list-mode style): values 1-D, one per bin,
  exact crystal-face endpoints from :meth:`petiq.scanner.geometry.Scanner.lor_endpoints`. For span 1 both modes
  give the same numbers for the same LOR (same code path per LOR).

Axial compression (span > 1)
----------------------------
The scanner ADDS the counts of the 1-6 (mMR span 11) span-1 sinograms of a compressed sinogram, so
the model of a span-``S`` bin is the sum over its members, each member its own LOR (its own ring
pair: the members share the ring sum, hence the axial midpoint, and differ in obliquity)::

    (P x)_k = sum_{span-1 members m of k} (P_1 x)_m

This is NiftyPET's span-11 projector (``prjf.cu``: every span-1 LOR is traced and ``atomicAdd``-ed
into its span-11 sinogram ``li2sn``; ``prjb.cu`` back-projects the span-11 value into every member).
Multiplicative factors of a compressed bin are then member MEANS, as NiftyPET's are (its
``norm.cu`` adds ``nrmfctr / sn1_sn11no`` per member; its attenuation factors add
``exp(-acc) / li2nos``): see :mod:`petiq.recon.corrections`. Forward and back projection loop over
the member planes and add into / read from their span-``S`` sinogram (``to_sino``), so the back
projection stays the exact adjoint. The work is that of a span-1 projection (mMR: 4084 member
planes for 837 sinograms, x4.9); the transaxial path is still computed once per (view, radial).
(Before, a compressed bin was one "mean LOR" at the members' mean ring difference, which counted
each bin once: the axial sensitivity of an on-axis point on the mMR was off by up to 17 %.)

Speed (all-bins mode): the planes are grouped into runs (:func:`plane_runs`). Member planes are
in span-1 order (segment = ring difference); in one segment consecutive planes share the obliquity
and sit one ring pitch apart, which on the mMR default grid (axial voxel = half the ring pitch) is
exactly two voxels, so along a run the z interpolation weight is the same and the taps are every
other voxel: the inner loop is a SIMD stencil. Runs that would leave the image take a generic
per-plane loop with clamping.

Parallelism: ``numba.prange`` over (view, block of radial bins) tasks (forward) or over per-thread
chunks of them, each thread back-projecting into its own image buffer, summed at the end (no write
races; memory ``n_threads x`` one padded image, 62 MB each at mMR size). Thread count:
``numba.set_num_threads``.
"""

from __future__ import annotations

import functools

import numba
import numpy as np
from scipy import sparse

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import Scanner

from .joseph_kernels import (
    RADIAL_BLOCK,
    back_lors,
    back_sino,
    count_samples,
    forward_lors,
    forward_sino,
    pad_volume,
    sum_unpad,
)

__all__ = [
    "JosephProjector",
    "compress_span1",
    "forward_member_mean",
    "member_planes",
]


"""Radial bins per parallel task in the all-bins mode: a task keeps its planes x radial block of
sums locally and writes/reads the (plane, view, radial) sinogram in contiguous rows of this many
values. (One value per plane per (view, radial) was a strided access 837 x 72.6 M times at mMR
size, a TLB/cache miss each, and cost ~2x the forward projection itself.)"""


def plane_runs(c0: np.ndarray, c1: np.ndarray, nz: int, min_stencil: int = 4, eps: float = 1e-3) -> np.ndarray:
    """Group sinogram planes into runs for the kernels: int64 ``(n_runs, 3)`` = (first plane,
    number of planes, step), from the planes' padded z index ``c0 + t*c1`` (t in [0, 1]).

    Planes p .. p+L-1 form a *stencil run* with step 1 or 2 when they share the obliquity ``c1``,
    their z index steps by exactly ``step`` voxels (``c0[p+1] = c0[p] + step``: consecutive ring
    sums with voxel size = half the ring pitch, the mMR default, give step 1 in a span-11 segment
    and step 2 in a span-1 segment), ``L >= min_stencil``, and for every t all their z indices stay
    in [0, nz + 1] (no clamping needed). The kernels then use one z interpolation weight for the
    whole run and read contiguous memory (SIMD). All other planes (segment ends, where the mean
    ring difference changes from plane to plane, or grids with other axial voxel sizes) are merged
    into generic runs (step 0), projected plane by plane with clamping.
    """
    runs: list[list[int]] = []
    n = len(c0)
    p = 0
    while p < n:
        q = p + 1
        step = 0
        while q < n and c1[q] == c1[p]:
            d = c0[q] - c0[q - 1]
            st = int(round(d))
            if st not in (1, 2) or abs(d - st) > 1e-9 or (step and st != step):
                break
            step = st
            q += 1
        length = q - p
        f_lo = min(c0[p], c0[p] + c1[p])
        f_hi = max(c0[p], c0[p] + c1[p]) + step * (length - 1)
        if length >= min_stencil and f_lo >= eps and f_hi <= nz + 1 - eps:
            runs.append([p, length, step])
        elif runs and runs[-1][2] == 0:
            runs[-1][1] += length
        else:
            runs.append([p, length, 0])
        p = q
    return np.array(runs, dtype=np.int64).reshape(-1, 3)


def member_planes(scanner: Scanner, span: int, vz: float, z0: float):
    """The span-1 member planes of a span-``span`` projection on an axial grid of voxel ``vz`` (mm)
    whose first voxel centre is at ``z0`` (mm): ``(c0, c1, dz, to_sino)``.

    One entry per span-1 sinogram (ring pair) in span-1 storage order: float64 ``c0`` / ``c1``, the
    padded fractional z index of the member's LOR at parameter t is ``c0 + t*c1``; float64 ``dz``
    = ``z_b - z_a`` (mm); int64 ``to_sino``, the span-``span`` sinogram it is added into.
    """
    g1 = scanner.sinogram_lor_geometry(1)
    z_a = g1.z_mid_mm - 0.5 * g1.delta_z_mm
    c0 = (z_a - z0) / vz + 1.0
    c1 = g1.delta_z_mm / vz
    dz = np.ascontiguousarray(g1.delta_z_mm, dtype=np.float64)
    to_sino = np.array(scanner.span1_to_sinogram(span), dtype=np.int64)  # a writable copy (torch)
    return c0, c1, dz, to_sino


@functools.lru_cache(maxsize=16)
def _compression_matrix(scanner: Scanner, span: int, mean: bool) -> sparse.csr_matrix:
    """float32 CSR (n_sinograms(span), n_sinograms(1)): 1 (or 1/members) where span-1 sinogram z is a
    member of the sinogram."""
    to_sino = scanner.span1_to_sinogram(span)
    weight = np.ones(to_sino.size, dtype=np.float32)
    if mean:
        weight = (1.0 / np.bincount(to_sino)[to_sino]).astype(np.float32)
    return sparse.csr_matrix(
        (weight, (to_sino, np.arange(to_sino.size))), shape=(scanner.n_sinograms(span), to_sino.size), dtype=np.float32
    )


def compress_span1(values, scanner: Scanner, span: int, mean: bool = False) -> np.ndarray:
    """Span-1 values ``(n_sinograms(1), n_views_or_subset, n_radial)`` -> span ``span``: the sum over
    each sinogram's members (how the scanner histograms counts), or their mean (``mean=True``; how a
    compressed bin's multiplicative factors - normalisation, attenuation - are formed). float32."""
    values = np.asarray(values)
    n1 = scanner.n_sinograms(1)
    if values.ndim != 3 or values.shape[0] != n1:
        raise PetiqInputError(
            None,
            f"span-1 values have shape {values.shape}, expected ({n1}, views, radial)",
            "pass one span-1 sinogram per ring pair (scanner.sinogram_shape(1))",
        )
    m = _compression_matrix(scanner, scanner.check_span(span), bool(mean))
    out = m @ np.ascontiguousarray(values, dtype=np.float32).reshape(n1, -1)  # float32: <= 6 terms a bin
    return np.asarray(out, dtype=np.float32).reshape((m.shape[0],) + values.shape[1:])


def forward_member_mean(
    scanner: Scanner, image, voxel_size_mm, span: int, transform, views_per_chunk: int = 12
) -> np.ndarray:
    """float32 span-``span`` sinogram: the mean over each bin's span-1 members of
    ``transform(P_1 image)`` (``transform`` maps a float32 span-1 projection to values), computed
    a few views at a time so that no full span-1 sinogram is held (354 M bins on the mMR).

    For ``transform = exp(-0.1 p)`` this is the attenuation factor of a compressed bin as NiftyPET
    forms it (``prjf.cu``: ``atomicAdd(sino, expf(-acc) / li2nos)``)."""
    image = np.asarray(image, dtype=np.float32)
    proj1 = JosephProjector(scanner, image_shape=image.shape, voxel_size_mm=voxel_size_mm, span=1)
    out = np.empty(scanner.sinogram_shape(span), dtype=np.float32)
    for v0 in range(0, scanner.n_views, int(views_per_chunk)):
        views = np.arange(v0, min(scanner.n_views, v0 + int(views_per_chunk)), dtype=np.int64)
        values = np.asarray(transform(proj1.forward(image, views=views)), dtype=np.float32)
        out[:, views, :] = compress_span1(values, scanner, span, mean=True)
    return out


# ----------------------------------------------------------------------------- public class
def image_grid(scanner: Scanner, image_shape=None, voxel_size_mm=None):
    """The image grid ``(shape, voxel_size_mm)`` as tuples, the scanner's default where not given;
    checked (3 positive ints, 3 positive floats)."""
    shape = scanner.image_shape if image_shape is None else image_shape
    vox = scanner.voxel_size_mm if voxel_size_mm is None else voxel_size_mm
    shape = tuple(int(n) for n in shape)
    vox = tuple(float(v) for v in vox)
    if len(shape) != 3 or min(shape) < 1 or len(vox) != 3 or min(vox) <= 0:
        raise PetiqInputError(
            None,
            f"bad image grid {shape} voxels of {vox} mm",
            "give image_shape as 3 positive ints (nx, ny, nz) and voxel_size_mm as 3 positive floats (mm)",
        )
    return shape, vox


class JosephProjector:
    """Forward (image -> sinogram / LOR values) and back projection (adjoint) for one scanner.

    ``image_shape`` / ``voxel_size_mm`` default to the scanner's default image; ``span`` selects the
    sinogram layout of the all-bins mode (``scanner.sinogram_shape(span)``).

    Attributes: ``scanner``, ``span``, ``image_shape`` (nx, ny, nz), ``voxel_size_mm`` (vx, vy, vz),
    ``sinogram_shape`` (n_sinograms, n_views, n_radial), ``geometry``
    (:class:`petiq.scanner.tables.SinogramGeometry`).

    * ``forward(image, bins=None, views=None)`` -> float32 projection (see the method).
    * ``back(values, bins=None, views=None)`` -> float32 image, the exact adjoint.
    * ``values_shape(bins=None, views=None)``, ``n_samples(views=None)``.

    OSEM by views: ``forward(x, views=subset)`` / ``back(ratio, views=subset)`` touch only the
    subset's bins (cost proportional to ``len(subset)``). Threads: ``numba.set_num_threads``. Memory
    of ``back``: one padded image per thread.

    >>> from petiq.scanner.geometry import Scanner
    >>> proj = JosephProjector(Scanner.tiny(), span=3)
    >>> proj.sinogram_shape
    (47, 36, 28)
    """

    def __init__(self, scanner: Scanner, image_shape=None, voxel_size_mm=None, span: int = 11):
        self.scanner = scanner
        self.span = scanner.check_span(span)
        shape, vox = image_grid(scanner, image_shape, voxel_size_mm)
        self.image_shape: tuple[int, int, int] = shape
        self.voxel_size_mm: tuple[float, float, float] = vox
        self.geometry = scanner.sinogram_lor_geometry(self.span)
        self.sinogram_shape: tuple[int, int, int] = self.geometry.shape
        nx, ny, nz = shape
        vx, vy, vz = vox
        x0 = -(nx - 1) / 2.0 * vx
        y0 = -(ny - 1) / 2.0 * vy
        z0 = -(nz - 1) / 2.0 * vz
        self._grid = np.array([nx, ny, nz, vx, vy, x0, y0, vz, z0], dtype=np.float64)
        self._n_padded = (nx + 2) * (ny + 2) * (nz + 3)
        # the planes actually projected: every span-1 member plane (ring pair), each added into its
        # span-S sinogram (see "Axial compression" in the module docstring)
        c0, c1, dz, to_sino = member_planes(scanner, self.span, vz, z0)
        self._c0 = c0.astype(np.float32)
        self._c1 = c1.astype(np.float32)
        self._dz = dz
        self._to_sino = to_sino
        self._all_views = np.arange(scanner.n_views, dtype=np.int64)
        self._runs = plane_runs(c0, c1, nz)

    # ------------------------------------------------------------------ helpers
    def _padded(self, image) -> np.ndarray:
        image = np.asarray(image)
        if image.shape != self.image_shape:
            raise PetiqInputError(
                None,
                f"image has shape {image.shape}, the projector expects {self.image_shape} (nx, ny, nz)",
                f"pass a {self.image_shape} array or build the projector with image_shape={image.shape}",
            )
        flat = np.zeros(self._n_padded, dtype=np.float32)
        pad_volume(np.ascontiguousarray(image, dtype=np.float32), flat)
        return flat

    def _views(self, views) -> np.ndarray:
        if views is None:
            return self._all_views
        views = np.atleast_1d(np.asarray(views))
        if (
            views.dtype.kind not in "iu"
            or views.ndim != 1
            or (views.size and (views.min() < 0 or views.max() >= self.scanner.n_views))
        ):
            raise PetiqInputError(
                None,
                f"views must be a 1-D int array in 0 .. {self.scanner.n_views - 1}",
                "pass view indices such as np.arange(v0, n_views, n_subsets)",
            )
        return np.ascontiguousarray(views, dtype=np.int64)

    def _bins(self, bins, views):
        if views is not None:
            raise PetiqInputError(
                None, "views= and bins= were both given", "use views= with the all-bins (sinogram) mode only"
            )
        bins = np.atleast_1d(np.asarray(bins))
        if bins.ndim != 1:
            raise PetiqInputError(
                None, f"bins must be 1-D span-1 offsets, got shape {bins.shape}", "flatten the offsets"
            )
        p1, p2 = self.scanner.lor_endpoints(bins)
        return np.ascontiguousarray(p1), np.ascontiguousarray(p2)

    def values_shape(self, bins=None, views=None) -> tuple[int, ...]:
        """Shape of the projection data for a call with these ``bins`` / ``views``."""
        if bins is not None:
            return (int(np.size(bins)),)
        n_v = self.scanner.n_views if views is None else int(np.size(views))
        return (self.sinogram_shape[0], n_v, self.sinogram_shape[2])

    def n_samples(self, views=None) -> int:
        """Number of Joseph samples (4-tap interpolations) in one all-bins projection (over all
        span-1 member planes)."""
        views = self._views(views)
        g = self.geometry
        out = np.empty(views.size * g.shape[2], dtype=np.int64)
        count_samples(views, g.xy_a, g.xy_b, self._grid, out)
        return int(out.sum()) * self._c0.shape[0]

    # ------------------------------------------------------------------ projections
    def forward(self, image, bins=None, views=None) -> np.ndarray:
        """Line integrals (mm x activity) of ``image`` (float32 ``image_shape``).

        ``bins=None``: all bins of the span, float32 ``sinogram_shape`` (or only ``views``: shape
        ``(n_sinograms, len(views), n_radial)``). ``bins``: int64 span-1 offsets -> float32 ``(N,)``.
        """
        img = self._padded(image)
        g = self.geometry
        if bins is not None:
            p1, p2 = self._bins(bins, views)
            out = np.empty(p1.shape[0], dtype=np.float32)
            if p1.shape[0]:
                n_chunks = min(p1.shape[0], 64 * numba.get_num_threads())
                forward_lors(img, p1, p2, self._grid, n_chunks, out)
            return out
        views = self._views(views)
        out = np.empty(self.values_shape(None, views), dtype=np.float32)
        if views.size:
            forward_sino(
                img, views, g.xy_a, g.xy_b, self._c0, self._c1, self._dz, self._runs, self._to_sino, self._grid, out
            )
        return out

    def back(self, values, bins=None, views=None) -> np.ndarray:
        """Adjoint of :meth:`forward`: float32 image ``image_shape`` from projection ``values``."""
        values = np.asarray(values)
        g = self.geometry
        expected = self.values_shape(bins, views)
        if values.shape != expected:
            raise PetiqInputError(
                None,
                f"projection values have shape {values.shape}, expected {expected}",
                "pass one value per bin (sinogram_shape, or (n_sinograms, len(views), "
                "n_radial) with views=, or (len(bins),) with bins=)",
            )
        values = np.ascontiguousarray(values, dtype=np.float32)
        n_threads = numba.get_num_threads()
        if bins is not None:
            p1, p2 = self._bins(bins, views)
            n_chunks = max(1, min(n_threads, p1.shape[0]))
            buf = np.zeros((n_chunks, self._n_padded), dtype=np.float32)
            if p1.shape[0]:
                back_lors(values, p1, p2, self._grid, buf)
        else:
            views = self._views(views)
            n_tasks = views.size * -(-g.shape[2] // RADIAL_BLOCK)
            n_chunks = max(1, min(n_threads, n_tasks))
            buf = np.zeros((n_chunks, self._n_padded), dtype=np.float32)
            if views.size:
                back_sino(
                    values,
                    views,
                    g.xy_a,
                    g.xy_b,
                    self._c0,
                    self._c1,
                    self._dz,
                    self._runs,
                    self._to_sino,
                    self._grid,
                    buf,
                )
        out = np.empty(self.image_shape, dtype=np.float32)
        sum_unpad(buf, *self.image_shape, out)
        return out

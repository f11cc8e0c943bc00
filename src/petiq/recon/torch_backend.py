"""The Joseph projector of :mod:`petiq.recon.projectors` in PyTorch (CUDA, or the torch CPU device).

Same samples, same weights, same padded image layout as the numba projector, so the two agree to
float32 rounding and the torch back projection is the exact adjoint of its forward projection.

How it is vectorised
--------------------
The transaxial Joseph path of every (view, radial) pair — "ray" — is computed once on the host with
the numba projector's own ``transaxial_path`` and stored padded to the longest path:
``base`` (flat padded index of the lower minor-axis tap at z-pad 0), the two minor-axis weights
``w0``/``w1`` (0 for padding samples), the LOR parameter ``t`` of each sample, the minor-axis
``stride`` of the ray, and what the per (ray, plane) weight ``v_major/|dmajor| · |LOR|`` is made
of. The planes are the span-1 member planes of the span (as in the numba projector: a compressed
bin is the sum of its members, :func:`petiq.recon.projectors.member_planes`). A projection then
processes chunks of rays × samples × all member planes as tensors::

    f   = clamp(c0[p] + t · c1[p], 0, nz + 1)      padded fractional z index (C, S, P)
    i0  = base + floor(f),   i1 = i0 + stride,   wz = f − floor(f)
    fwd = Σ_S (w0·((1−wz)·img[i0] + wz·img[i0+1]) + w1·((1−wz)·img[i1] + wz·img[i1+1])) · weight
    sino[:, to_sino] += fwd          (index_add_ over the member planes of each sinogram)
    back: img.index_add_(…) of the same four taps with the same weights, y = sino[:, to_sino]

with planes innermost, so neighbouring GPU threads read neighbouring z voxels. ``chunk_elements``
(C·S·P per chunk) bounds the temporaries (≈ 70 bytes per element). Rays of a chunk are consecutive
radial bins of one view; the sample axis is cut at the chunk's longest path.
"""

from __future__ import annotations

import logging

import numpy as np
from numba import njit

from petiq.core.errors import PetiqInputError
from petiq.recon.joseph_kernels import transaxial_path
from petiq.recon.projectors import image_grid, member_planes
from petiq.scanner.geometry import Scanner

__all__ = ["TorchJosephProjector", "cuda_available", "describe_device"]

log = logging.getLogger("petiq.recon")


def cuda_available() -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return bool(torch.cuda.is_available())


def describe_device(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"torch cpu ({torch.get_num_threads()} threads)"


@njit(cache=True)
def _all_paths(xy_a, xy_b, grid, base, wm, tt, ns_out, stride_out, scale_out, lxy2_out):
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0 = grid[3], grid[4], grid[5], grid[6]
    nyp = ny + 2
    nzp = nz + 3
    nv, nr = xy_a.shape[0], xy_a.shape[1]
    for v in range(nv):
        for r in range(nr):
            q = v * nr + r
            ns, stride, scale = transaxial_path(
                xy_a[v, r, 0],
                xy_a[v, r, 1],
                xy_b[v, r, 0],
                xy_b[v, r, 1],
                nx,
                ny,
                vx,
                vy,
                x0,
                y0,
                nyp,
                nzp,
                base[q],
                wm[q],
                tt[q],
            )
            ns_out[q] = ns
            stride_out[q] = stride
            scale_out[q] = scale
            lxy2_out[q] = (xy_b[v, r, 0] - xy_a[v, r, 0]) ** 2 + (xy_b[v, r, 1] - xy_a[v, r, 1]) ** 2


class TorchJosephProjector:
    """Joseph forward/back projection (all bins of a span, optionally a subset of views) in torch.

    Same constructor arguments as :class:`petiq.recon.projectors.JosephProjector` plus ``device``
    (``"cuda"``, ``"cpu"``, a ``torch.device``) and ``chunk_elements`` (default 2²⁵ on CUDA, 2²² on
    CPU). ``forward(image, views=None)`` takes a float32 ``(nx, ny, nz)`` array or tensor and returns
    a float32 tensor ``(n_sinograms, len(views), n_radial)`` on the device; ``back(values,
    views=None)`` is its exact adjoint (float32 image tensor). ``to_numpy`` converts results.
    """

    def __init__(
        self,
        scanner: Scanner,
        image_shape=None,
        voxel_size_mm=None,
        span: int = 11,
        device="cpu",
        chunk_elements: int | None = None,
    ):
        import torch

        self.torch = torch
        self.scanner = scanner
        self.span = scanner.check_span(span)
        self.device = torch.device(device)
        shape, vox = image_grid(scanner, image_shape, voxel_size_mm)
        self.image_shape = shape
        self.voxel_size_mm = vox
        g = scanner.sinogram_lor_geometry(self.span)
        self.geometry = g
        self.sinogram_shape = g.shape
        _, nv, nr = g.shape
        nx, ny, nz = shape
        vx, vy, vz = vox
        x0, y0, z0 = -(nx - 1) / 2.0 * vx, -(ny - 1) / 2.0 * vy, -(nz - 1) / 2.0 * vz
        grid = np.array([nx, ny, nz, vx, vy, x0, y0, vz, z0], dtype=np.float64)
        self._padded_shape = (nx + 2, ny + 2, nz + 3)
        self._n_padded = int(np.prod(self._padded_shape))
        nmax = max(nx, ny) + 2
        n_rays = nv * nr
        base = np.zeros((n_rays, nmax), np.int64)
        wm = np.zeros((n_rays, nmax), np.float32)
        tt = np.zeros((n_rays, nmax), np.float32)
        ns = np.zeros(n_rays, np.int64)
        stride = np.zeros(n_rays, np.int64)
        scale = np.zeros(n_rays, np.float64)
        lxy2 = np.zeros(n_rays, np.float64)
        _all_paths(g.xy_a, g.xy_b, grid, base, wm, tt, ns, stride, scale, lxy2)
        smax = max(int(ns.max()), 1)
        valid = np.arange(smax)[None, :] < ns[:, None]
        base, wm, tt = base[:, :smax], wm[:, :smax], tt[:, :smax]
        w0 = np.where(valid, 1.0 - wm, 0.0).astype(np.float32)
        w1 = np.where(valid, wm, 0.0).astype(np.float32)
        base = np.where(valid, base, 0)
        tt = np.where(valid, tt, 0.0).astype(np.float32)
        # the planes projected are the span-1 member planes, each added into its span-S sinogram
        # (projectors.member_planes); the per (ray, member plane) weight is made chunk by chunk in
        # float64 exactly as the numba kernels: float32(scale * sqrt(lxy2 + dz^2))
        c0, c1, dz, to_sino = member_planes(scanner, self.span, vz, z0)
        self._n_members = int(to_sino.size)
        scale = np.where(ns == 0, 0.0, scale)
        dev = self.device
        idx_dtype = torch.int32 if self._n_padded + nmax * (nz + 3) < 2**31 - 1 else torch.int64
        self._base = torch.from_numpy(base).to(dev, idx_dtype)
        self._w0 = torch.from_numpy(w0).to(dev)
        self._w1 = torch.from_numpy(w1).to(dev)
        self._tt = torch.from_numpy(tt).to(dev)
        self._stride = torch.from_numpy(stride).to(dev)
        self._scale = torch.from_numpy(scale).to(dev, torch.float64)
        self._lxy2 = torch.from_numpy(lxy2).to(dev, torch.float64)
        self._dz2 = torch.from_numpy(dz * dz).to(dev, torch.float64)
        self._c0 = torch.from_numpy(c0.astype(np.float32)).to(dev)
        self._c1 = torch.from_numpy(c1.astype(np.float32)).to(dev)
        self._to_sino = torch.from_numpy(to_sino).to(dev)
        self._ns = ns
        self._zmax = float(nz + 1)
        if chunk_elements is None:
            chunk_elements = 2**25 if dev.type == "cuda" else 2**22
        self.chunk_elements = int(chunk_elements)
        self._plans: dict = {}

    # ------------------------------------------------------------------ helpers
    def _views(self, views) -> np.ndarray:
        if views is None:
            return np.arange(self.scanner.n_views, dtype=np.int64)
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
        return views.astype(np.int64)

    def _plan(self, views: np.ndarray):
        """Chunks of rays for these views: list of (first row in the output, ray index tensor, S)."""
        key = views.tobytes()
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        nr = self.scanner.n_radial
        n_planes = self._n_members
        plan = []
        row = 0
        for v in views:
            rays = np.arange(v * nr, (v + 1) * nr)
            start = 0
            while start < nr:
                # grow the chunk while C * S * P stays within the budget
                stop = start + 1
                smax = max(int(self._ns[rays[start]]), 1)
                while stop < nr:
                    s_new = max(smax, int(self._ns[rays[stop]]))
                    if (stop - start + 1) * s_new * n_planes > self.chunk_elements:
                        break
                    smax = s_new
                    stop += 1
                idx = self.torch.from_numpy(rays[start:stop]).to(self.device)
                plan.append((row, idx, smax))
                row += stop - start
                start = stop
        if len(self._plans) > 64:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _weight(self, idx):
        """float32 (C, member planes): Joseph weight of every member LOR of the chunk's rays."""
        w = self._scale[idx].unsqueeze(-1) * self.torch.sqrt(self._lxy2[idx].unsqueeze(-1) + self._dz2)
        return w.to(self.torch.float32)

    def _taps(self, idx, smax):
        torch = self.torch
        base = self._base[idx, :smax].long()
        tt = self._tt[idx, :smax]
        f = torch.clamp(self._c0 + tt.unsqueeze(-1) * self._c1, 0.0, self._zmax)  # (C, S, P)
        iz = f.long()
        wz = f - iz
        i0 = base.unsqueeze(-1) + iz
        i1 = i0 + self._stride[idx].view(-1, 1, 1)
        return i0, i1, wz, self._w0[idx, :smax].unsqueeze(-1), self._w1[idx, :smax].unsqueeze(-1)

    def _as_image(self, image):
        torch = self.torch
        t = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image, np.float32))
        if tuple(t.shape) != self.image_shape:
            raise PetiqInputError(
                None,
                f"image has shape {tuple(t.shape)}, the projector expects {self.image_shape}",
                f"pass a {self.image_shape} array",
            )
        return t.to(self.device, torch.float32)

    def to_numpy(self, tensor) -> np.ndarray:
        return tensor.detach().to("cpu").numpy()

    # ------------------------------------------------------------------ projections
    def forward(self, image, views=None):
        """float32 tensor ``(n_sinograms, len(views), n_radial)``: line integrals of ``image``."""
        torch = self.torch
        views = self._views(views)
        nx, ny, nz = self.image_shape
        padded = torch.zeros(self._padded_shape, dtype=torch.float32, device=self.device)
        padded[1 : nx + 1, 1 : ny + 1, 1 : nz + 1] = self._as_image(image)
        img = padded.view(-1)
        n_planes, _, nr = self.sinogram_shape
        out = torch.zeros((views.size * nr, n_planes), dtype=torch.float32, device=self.device)
        for row, idx, smax in self._plan(views):
            i0, i1, wz, w0, w1 = self._taps(idx, smax)
            lo = w0 * img[i0] + w1 * img[i1]
            hi = w0 * img[i0 + 1] + w1 * img[i1 + 1]
            val = (lo + wz * (hi - lo)).sum(dim=1)  # (C, member planes)
            out[row : row + idx.numel()].index_add_(1, self._to_sino, val * self._weight(idx))
        return out.view(views.size, nr, n_planes).permute(2, 0, 1).contiguous()

    def back(self, values, views=None):
        """Adjoint of :meth:`forward`: float32 image tensor ``image_shape``."""
        torch = self.torch
        views = self._views(views)
        n_planes, _, nr = self.sinogram_shape
        expected = (n_planes, views.size, nr)
        vals = (
            values if isinstance(values, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(values, np.float32))
        )
        if tuple(vals.shape) != expected:
            raise PetiqInputError(
                None,
                f"projection values have shape {tuple(vals.shape)}, expected {expected}",
                "pass (n_sinograms, len(views), n_radial) values",
            )
        vals = vals.to(self.device, torch.float32).permute(1, 2, 0).reshape(views.size * nr, n_planes)
        img = torch.zeros(self._n_padded, dtype=torch.float32, device=self.device)
        for row, idx, smax in self._plan(views):
            yw = vals[row : row + idx.numel()][:, self._to_sino] * self._weight(idx)  # (C, member planes)
            if not bool(torch.any(yw != 0)):
                continue
            i0, i1, wz, w0, w1 = self._taps(idx, smax)
            yhi = yw.unsqueeze(1) * wz
            ylo = yw.unsqueeze(1) - yhi
            img.index_add_(0, i0.reshape(-1), (w0 * ylo).reshape(-1))
            img.index_add_(0, (i0 + 1).reshape(-1), (w0 * yhi).reshape(-1))
            img.index_add_(0, i1.reshape(-1), (w1 * ylo).reshape(-1))
            img.index_add_(0, (i1 + 1).reshape(-1), (w1 * yhi).reshape(-1))
        nx, ny, nz = self.image_shape
        return img.view(self._padded_shape)[1 : nx + 1, 1 : ny + 1, 1 : nz + 1].contiguous()

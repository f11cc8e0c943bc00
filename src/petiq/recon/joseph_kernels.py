"""The numba kernels of :class:`petiq.recon.projectors.JosephProjector`: Joseph's method along the
transaxial path of each LOR, forward and back, per view or per LOR, and the padding they share."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange


# ----------------------------------------------------------------------------- kernels
@njit(cache=True, fastmath=True, inline="always")
def transaxial_path(ax, ay, bx, by, nx, ny, vx, vy, x0, y0, nyp, nzp, base, wminor, tt):
    """Joseph samples of the transaxial chord (ax, ay) -> (bx, by) (mm) through the padded grid.

    Fills ``base`` (flat padded index of the lower minor-axis tap at z-pad 0), ``wminor`` (weight of
    the upper minor-axis tap) and ``tt`` (LOR parameter 0..1 of the sample); returns
    ``(n_samples, minor_stride, step_mm_per_transaxial_mm)`` where the last factor times the 3-D LOR
    length gives the per-sample weight (``v_major / |dmajor|``).
    """
    dx = bx - ax
    dy = by - ay
    ns = 0
    if abs(dx) >= abs(dy):
        if dx == 0.0:
            return 0, 0, 0.0
        fa = (ax - x0) / vx
        fb = (bx - x0) / vx
        lo = max(0, math.ceil(min(fa, fb)))
        hi = min(nx - 1, math.floor(max(fa, fb)))
        inv = 1.0 / (fb - fa)
        for i in range(lo, hi + 1):
            t = (i - fa) * inv
            fy = (ay + t * dy - y0) / vy + 1.0  # padded minor coordinate
            if fy <= 0.0 or fy >= ny + 1.0:
                continue
            iy = int(fy)
            base[ns] = ((i + 1) * nyp + iy) * nzp
            wminor[ns] = fy - iy
            tt[ns] = t
            ns += 1
        return ns, nzp, vx / abs(dx)
    else:
        fa = (ay - y0) / vy
        fb = (by - y0) / vy
        lo = max(0, math.ceil(min(fa, fb)))
        hi = min(ny - 1, math.floor(max(fa, fb)))
        inv = 1.0 / (fb - fa)
        for j in range(lo, hi + 1):
            t = (j - fa) * inv
            fx = (ax + t * dx - x0) / vx + 1.0
            if fx <= 0.0 or fx >= nx + 1.0:
                continue
            ix = int(fx)
            base[ns] = (ix * nyp + (j + 1)) * nzp
            wminor[ns] = fx - ix
            tt[ns] = t
            ns += 1
        return ns, nyp * nzp, vy / abs(dy)


RADIAL_BLOCK = 32


@njit(cache=True, fastmath=True, inline="always")
def _forward_path(img, base, wm, tt, ns, stride, c0, c1, runs, zmax, acc):
    """acc[p] += Joseph samples of all planes along one transaxial path (see :func:`_plane_runs`).

    A stencil run (step 1 or 2) of L planes reads z taps ``iz + step*j`` and ``iz + step*j + 1``
    with one z weight for the run; a generic run (step 0) computes and clamps each plane's z index.
    """
    zero = np.float32(0.0)
    one = np.float32(1.0)
    u1 = np.uint64(1)
    nzp = np.int64(zmax) + 2
    for k in range(ns):
        b0 = base[k]
        b1 = b0 + stride
        w1 = wm[k]
        w0 = one - w1
        t = tt[k]
        for ri in range(runs.shape[0]):
            ps = runs[ri, 0]
            n_run = runs[ri, 1]
            step = runs[ri, 2]
            if step > 0:
                f = c0[ps] + t * c1[ps]
                iz = int(f)
                wz = f - np.float32(iz)
                a0 = w0 * (one - wz)
                a1 = w0 * wz
                a2 = w1 * (one - wz)
                a3 = w1 * wz
                # slices so that indices are provably >= 0 (no wrap-around selects: SIMD)
                col0 = img[b0 + iz : b0 + iz + step * n_run + 1]
                col1 = img[b1 + iz : b1 + iz + step * n_run + 1]
                acc_run = acc[ps : ps + n_run]
                if step == 1:
                    for j in range(n_run):
                        acc_run[j] += a0 * col0[j] + a1 * col0[j + 1] + a2 * col1[j] + a3 * col1[j + 1]
                else:
                    for j in range(n_run):
                        j2 = 2 * j
                        acc_run[j] += a0 * col0[j2] + a1 * col0[j2 + 1] + a2 * col1[j2] + a3 * col1[j2 + 1]
            else:
                # generic planes: unsigned indices into slices avoid wrap-around selects
                col0 = img[b0 : b0 + nzp]
                col1 = img[b1 : b1 + nzp]
                c0_run = c0[ps : ps + n_run]
                c1_run = c1[ps : ps + n_run]
                acc_run = acc[ps : ps + n_run]
                for j in range(n_run):
                    fg = c0_run[j] + t * c1_run[j]
                    fg = min(max(fg, zero), zmax)
                    izu = np.uint64(fg)  # fg >= 0; own names: no type unification with iz
                    izu1 = izu + u1
                    wzg = fg - np.float32(izu)
                    lo = w0 * col0[izu] + w1 * col1[izu]
                    hi = w0 * col0[izu1] + w1 * col1[izu1]
                    acc_run[j] += lo + wzg * (hi - lo)


@njit(cache=True, fastmath=True, inline="always")
def _back_path(img, base, wm, tt, ns, stride, c0, c1, runs, zmax, yv):
    """Adjoint of :func:`_forward_path`: img += samples of all planes weighted by yv[p]."""
    zero = np.float32(0.0)
    one = np.float32(1.0)
    u1 = np.uint64(1)
    nzp = np.int64(zmax) + 2
    for k in range(ns):
        b0 = base[k]
        b1 = b0 + stride
        w1 = wm[k]
        w0 = one - w1
        t = tt[k]
        for ri in range(runs.shape[0]):
            ps = runs[ri, 0]
            n_run = runs[ri, 1]
            step = runs[ri, 2]
            if step > 0:
                f = c0[ps] + t * c1[ps]
                iz = int(f)
                wz = f - np.float32(iz)
                a0 = w0 * (one - wz)
                a1 = w0 * wz
                a2 = w1 * (one - wz)
                a3 = w1 * wz
                col0 = img[b0 + iz : b0 + iz + step * n_run + 1]
                col1 = img[b1 + iz : b1 + iz + step * n_run + 1]
                y_run = yv[ps : ps + n_run]
                if step == 1:
                    # tap j of plane ps+j and tap j+1 of plane ps+j-1 hit the same voxel:
                    # sum both per voxel so the loop carries no dependency through memory
                    col0[0] += a0 * y_run[0]
                    col1[0] += a2 * y_run[0]
                    for j in range(1, n_run):
                        col0[j] += a0 * y_run[j] + a1 * y_run[j - 1]
                    for j in range(1, n_run):
                        col1[j] += a2 * y_run[j] + a3 * y_run[j - 1]
                    col0[n_run] += a1 * y_run[n_run - 1]
                    col1[n_run] += a3 * y_run[n_run - 1]
                else:
                    for j in range(n_run):
                        j2 = 2 * j
                        y = y_run[j]
                        col0[j2] += a0 * y
                        col0[j2 + 1] += a1 * y
                        col1[j2] += a2 * y
                        col1[j2 + 1] += a3 * y
            else:
                col0 = img[b0 : b0 + nzp]
                col1 = img[b1 : b1 + nzp]
                c0_run = c0[ps : ps + n_run]
                c1_run = c1[ps : ps + n_run]
                y_run = yv[ps : ps + n_run]
                for j in range(n_run):
                    fg = c0_run[j] + t * c1_run[j]
                    fg = min(max(fg, zero), zmax)
                    izu = np.uint64(fg)
                    izu1 = izu + u1
                    y = y_run[j]
                    yhi = (fg - np.float32(izu)) * y
                    ylo = y - yhi
                    col0[izu] += w0 * ylo
                    col0[izu1] += w0 * yhi
                    col1[izu] += w1 * ylo
                    col1[izu1] += w1 * yhi


@njit(parallel=True, fastmath=True, cache=True)
def forward_sino(img, views, xy_a, xy_b, c0, c1, dz, runs, to_sino, grid, out):
    """All sinograms of the selected views. img: flat padded float32; out: (K, len(views), nr).

    The planes (``c0``, ``c1``, ``dz``) are the span-1 member planes; member plane ``p`` adds into
    sinogram ``to_sino[p]`` (the identity for span 1). One parallel task per (view, block of
    RADIAL_BLOCK radial bins)."""
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0 = grid[3], grid[4], grid[5], grid[6]
    nyp = ny + 2
    nzp = nz + 3
    zmax = np.float32(nz + 1)
    nv = views.shape[0]
    nr = xy_a.shape[1]
    n_planes = c0.shape[0]
    n_sino = out.shape[0]
    nmax = max(nx, ny) + 2
    rb = RADIAL_BLOCK
    n_blocks = (nr + rb - 1) // rb
    for task in prange(nv * n_blocks):
        vi = task // n_blocks
        r0 = (task - vi * n_blocks) * rb
        r1 = min(nr, r0 + rb)
        v = views[vi]
        base = np.empty(nmax, np.int64)
        wm = np.empty(nmax, np.float32)
        tt = np.empty(nmax, np.float32)
        acc = np.zeros((rb, n_planes), np.float32)
        sums = np.zeros((rb, n_sino), np.float32)
        for r in range(r0, r1):
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
                base,
                wm,
                tt,
            )
            if ns == 0:
                continue
            a = acc[r - r0]
            _forward_path(img, base, wm, tt, ns, stride, c0, c1, runs, zmax, a)
            lxy2 = (xy_b[v, r, 0] - xy_a[v, r, 0]) ** 2 + (xy_b[v, r, 1] - xy_a[v, r, 1]) ** 2
            srow = sums[r - r0]
            for p in range(n_planes):
                srow[to_sino[p]] += a[p] * np.float32(scale * math.sqrt(lxy2 + dz[p] * dz[p]))
        for k in range(n_sino):
            for r in range(r0, r1):
                out[k, vi, r] = sums[r - r0, k]


@njit(parallel=True, fastmath=True, cache=True)
def back_sino(values, views, xy_a, xy_b, c0, c1, dz, runs, to_sino, grid, buf):
    """Adjoint of :func:`forward_sino`; buf: (n_chunks, n_padded) zeroed, one per thread; chunk c
    takes the tasks (view, radial block) c, c + n_chunks, ..."""
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0 = grid[3], grid[4], grid[5], grid[6]
    nyp = ny + 2
    nzp = nz + 3
    zmax = np.float32(nz + 1)
    zero = np.float32(0.0)
    nv = views.shape[0]
    nr = xy_a.shape[1]
    n_planes = c0.shape[0]
    nmax = max(nx, ny) + 2
    rb = RADIAL_BLOCK
    n_blocks = (nr + rb - 1) // rb
    n_chunks = buf.shape[0]
    for c in prange(n_chunks):
        img = buf[c]
        base = np.empty(nmax, np.int64)
        wm = np.empty(nmax, np.float32)
        tt = np.empty(nmax, np.float32)
        yblock = np.empty((rb, n_planes), np.float32)
        nonzero = np.empty(rb, np.bool_)
        for task in range(c, nv * n_blocks, n_chunks):
            vi = task // n_blocks
            r0 = (task - vi * n_blocks) * rb
            r1 = min(nr, r0 + rb)
            v = views[vi]
            nonzero[:] = False
            for p in range(n_planes):
                k = to_sino[p]
                for r in range(r0, r1):
                    y = values[k, vi, r]
                    yblock[r - r0, p] = y
                    if y != zero:
                        nonzero[r - r0] = True
            for r in range(r0, r1):
                if not nonzero[r - r0]:
                    continue
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
                    base,
                    wm,
                    tt,
                )
                if ns == 0:
                    continue
                lxy2 = (xy_b[v, r, 0] - xy_a[v, r, 0]) ** 2 + (xy_b[v, r, 1] - xy_a[v, r, 1]) ** 2
                yv = yblock[r - r0]
                for p in range(n_planes):
                    yv[p] *= np.float32(scale * math.sqrt(lxy2 + dz[p] * dz[p]))
                _back_path(img, base, wm, tt, ns, stride, c0, c1, runs, zmax, yv)


@njit(parallel=True, fastmath=True, cache=True)
def forward_lors(img, p1, p2, grid, n_chunks, out):
    """One value per LOR (p1[n] -> p2[n], mm). Same per-LOR code as :func:`forward_sino`."""
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0, vz, z0 = grid[3], grid[4], grid[5], grid[6], grid[7], grid[8]
    nyp = ny + 2
    nzp = nz + 3
    zmax = np.float32(nz + 1)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    n = p1.shape[0]
    nmax = max(nx, ny) + 2
    for c in prange(n_chunks):
        base = np.empty(nmax, np.int64)
        wm = np.empty(nmax, np.float32)
        tt = np.empty(nmax, np.float32)
        for m in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            ns, stride, scale = transaxial_path(
                p1[m, 0], p1[m, 1], p2[m, 0], p2[m, 1], nx, ny, vx, vy, x0, y0, nyp, nzp, base, wm, tt
            )
            dzm = p2[m, 2] - p1[m, 2]
            cz0 = np.float32((p1[m, 2] - z0) / vz + 1.0)
            cz1 = np.float32(dzm / vz)
            acc = zero
            for k in range(ns):
                b0 = base[k]
                b1 = b0 + stride
                w1 = wm[k]
                w0 = one - w1
                f = cz0 + tt[k] * cz1
                f = min(max(f, zero), zmax)
                iz = int(f)
                wz = f - np.float32(iz)
                lo = w0 * img[b0 + iz] + w1 * img[b1 + iz]
                hi = w0 * img[b0 + iz + 1] + w1 * img[b1 + iz + 1]
                acc += lo + wz * (hi - lo)
            lxy2 = (p2[m, 0] - p1[m, 0]) ** 2 + (p2[m, 1] - p1[m, 1]) ** 2
            out[m] = acc * np.float32(scale * math.sqrt(lxy2 + dzm * dzm)) if ns > 0 else zero


@njit(parallel=True, fastmath=True, cache=True)
def back_lors(values, p1, p2, grid, buf):
    """Adjoint of :func:`forward_lors`; buf: (n_chunks, n_padded) zeroed, one per thread."""
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0, vz, z0 = grid[3], grid[4], grid[5], grid[6], grid[7], grid[8]
    nyp = ny + 2
    nzp = nz + 3
    zmax = np.float32(nz + 1)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    n = p1.shape[0]
    n_chunks = buf.shape[0]
    nmax = max(nx, ny) + 2
    for c in prange(n_chunks):
        img = buf[c]
        base = np.empty(nmax, np.int64)
        wm = np.empty(nmax, np.float32)
        tt = np.empty(nmax, np.float32)
        for m in range(c * n // n_chunks, (c + 1) * n // n_chunks):
            if values[m] == zero:
                continue
            ns, stride, scale = transaxial_path(
                p1[m, 0], p1[m, 1], p2[m, 0], p2[m, 1], nx, ny, vx, vy, x0, y0, nyp, nzp, base, wm, tt
            )
            dzm = p2[m, 2] - p1[m, 2]
            cz0 = np.float32((p1[m, 2] - z0) / vz + 1.0)
            cz1 = np.float32(dzm / vz)
            lxy2 = (p2[m, 0] - p1[m, 0]) ** 2 + (p2[m, 1] - p1[m, 1]) ** 2
            y = values[m] * np.float32(scale * math.sqrt(lxy2 + dzm * dzm))
            for k in range(ns):
                b0 = base[k]
                b1 = b0 + stride
                w1 = wm[k]
                w0 = one - w1
                f = cz0 + tt[k] * cz1
                f = min(max(f, zero), zmax)
                iz = int(f)
                wz = f - np.float32(iz)
                yhi = wz * y
                ylo = y - yhi
                img[b0 + iz] += w0 * ylo
                img[b0 + iz + 1] += w0 * yhi
                img[b1 + iz] += w1 * ylo
                img[b1 + iz + 1] += w1 * yhi


@njit(parallel=True, fastmath=True, cache=True)
def sum_unpad(buf, nx, ny, nz, out):
    """out[i, j, k] = sum_c buf[c] at the padded index of (i, j, k)."""
    nyp = ny + 2
    nzp = nz + 3
    n_chunks = buf.shape[0]
    for i in prange(nx):
        for j in range(ny):
            src = ((i + 1) * nyp + (j + 1)) * nzp + 1
            for k in range(nz):
                s = np.float32(0.0)
                for c in range(n_chunks):
                    s += buf[c, src + k]
                out[i, j, k] = s


@njit(parallel=True, cache=True)
def pad_volume(image, out):
    nx, ny, nz = image.shape
    nyp = ny + 2
    nzp = nz + 3
    for i in prange(nx):
        for j in range(ny):
            dst = ((i + 1) * nyp + (j + 1)) * nzp + 1
            for k in range(nz):
                out[dst + k] = image[i, j, k]


@njit(parallel=True, cache=True)
def count_samples(views, xy_a, xy_b, grid, out):
    nx, ny, nz = int(grid[0]), int(grid[1]), int(grid[2])
    vx, vy, x0, y0 = grid[3], grid[4], grid[5], grid[6]
    nr = xy_a.shape[1]
    nmax = max(nx, ny) + 2
    for q in prange(views.shape[0] * nr):
        vi = q // nr
        r = q - vi * nr
        v = views[vi]
        base = np.empty(nmax, np.int64)
        wm = np.empty(nmax, np.float32)
        tt = np.empty(nmax, np.float32)
        ns, _, _ = transaxial_path(
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
            ny + 2,
            nz + 3,
            base,
            wm,
            tt,
        )
        out[q] = ns

"""The scanner's cached tables: crystal positions, the span-S sinogram layout (segments, planes,
members) and the inverse look-ups from crystal pairs to bins (:class:`SinogramGeometry`), computed
once per scanner and span and kept read-only."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np

if TYPE_CHECKING:  # geometry imports these tables
    from .geometry import Scanner


class Segment(NamedTuple):
    """One segment of a sinogram set, in storage order.

    ``number``: signed segment number (for span 1 it equals the ring difference);
    ``min_ring_difference`` / ``max_ring_difference``: the ring differences ``ring_b - ring_a`` it
    holds; ``n_sinograms``: its number of axial positions (sinogram planes).
    """

    number: int
    min_ring_difference: int
    max_ring_difference: int
    n_sinograms: int


@dataclass(frozen=True)
class SinogramGeometry:
    """Everything a projector needs to project all bins of one span efficiently.

    Transaxial part, per (view, radial) bin of a sinogram plane (identical for every plane):

    * ``xy_a``, ``xy_b``: float64 ``(n_views, n_radial, 2)``: LOR end points (mm, at the mean interaction depth) of ``det_a``
      and ``det_b``; the LOR's transaxial chord runs from ``xy_a`` to ``xy_b``.
    * ``view_angle_rad``: float64 ``(n_views,)``: transaxial direction (mod pi) of the view's ``tp = 0``
      LOR; on circular positions ``pi/2 - tilt_rad - pi*view/n_views`` mod pi, the direction of all
      its even-``tp`` LORs (odd ``tp`` are rotated by half a crystal: the interleaving), and with flat
      blocks a view's LORs are parallel only approximately; ``xy_a``/``xy_b`` are exact.
    * ``radial_offset_mm``: float64 ``(n_views, n_radial)``: signed distance of the LOR from the
      scanner axis (sign of ``tp``; on circular positions ``R sin(pi*tp/N)``).

    Axial part, per sinogram plane:

    * ``z_mid_mm``: float64 ``(n_sinograms,)``: axial position of the LOR midpoint.
    * ``delta_z_mm``: float64 ``(n_sinograms,)``: ``z_b - z_a`` between the two LOR end points
      (= mean ring difference x ring pitch). The LOR of bin (plane, view, radial) runs from
      ``(xy_a, z_mid - delta_z/2)`` to ``(xy_b, z_mid + delta_z/2)``.
    * ``axial_slope``: float64 ``(n_sinograms,)``: tan of the polar angle of the plane's central
      LORs (``delta_z / (2 R)``); for off-centre bins the slope is ``delta_z / chord``, which the
      endpoint form above carries exactly.
    * ``mean_ring_difference``, ``n_members``: mean ring difference and number of span-1 sinograms
      added into each plane.

    For span > 1 the axial part describes the "mean LOR" of each compressed sinogram (mean axial
    position and mean ring difference of its members; all members share the ring sum, so only the
    obliquity is averaged). The projector does not use it: it models a compressed bin as the sum of
    its span-1 members, each with its own LOR (span-1 geometry; :mod:`petiq.recon.projectors`).
    """

    span: int
    shape: tuple[int, int, int]
    xy_a: np.ndarray
    xy_b: np.ndarray
    view_angle_rad: np.ndarray
    radial_offset_mm: np.ndarray
    z_mid_mm: np.ndarray
    delta_z_mm: np.ndarray
    axial_slope: np.ndarray
    mean_ring_difference: np.ndarray
    n_members: np.ndarray


def _readonly(*arrays: np.ndarray) -> None:
    for a in arrays:
        a.setflags(write=False)


# ---------------------------------------------------------------------- cached tables
@functools.cache
def crystal_positions(sc: Scanner) -> np.ndarray:
    """Crystal positions (module doc). Flat blocks re-trace NiftyPET ``mmraux.transaxial_lut``:
    block centre ``R (cos phi_b, sin phi_b)``, crystal ``n`` of the block at ``bw/2 - (n + 1/2) bw/8``
    along ``(-sin phi_b, cos phi_b)``, NiftyPET crystal ``c = det - 1``."""
    n = sc.crystals_per_ring
    det = np.arange(n)
    r = sc.lor_radius_mm
    if sc.block_width_mm <= 0.0:
        phi = 0.5 * np.pi - sc.tilt_rad - 2.0 * np.pi * det / n
        xy = np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    else:
        block, pos = np.divmod((det - 1) % n, sc.block_positions)  # NiftyPET c = det - 1
        alpha = 2.0 * np.pi / sc.blocks_per_ring
        phi_b = 0.5 * np.pi - 0.5 * alpha - sc.tilt_rad - block * alpha
        per_block = sc.block_positions - 1
        t = sc.block_width_mm * (0.5 - (pos + 0.5) / per_block)
        xy = np.stack([r * np.cos(phi_b) - t * np.sin(phi_b), r * np.sin(phi_b) + t * np.cos(phi_b)], axis=1)
        gap = pos == per_block  # no crystal: a virtual position halfway to the next block
        xy[gap] = r * np.stack([np.cos(phi_b[gap] - 0.5 * alpha), np.sin(phi_b[gap] - 0.5 * alpha)], axis=1)
    _readonly(xy)
    return xy


@functools.cache
def span_layout(sc: Scanner, span: int):
    """(segments, ring_a per span-1 z, ring_b per span-1 z, span-1 z -> span sinogram)."""
    n, dmax = sc.n_rings, sc.max_ring_difference
    # span-1 order: d = 0, -1, +1, ...
    order = [0] + [s * d for d in range(1, dmax + 1) for s in (-1, 1)]
    ring_a, ring_b = [], []
    for d in order:
        ax = np.arange(n - abs(d))
        ra = ax + max(0, -d)
        ring_a.append(ra)
        ring_b.append(ra + d)
    ring_a = np.concatenate(ring_a).astype(np.int64)
    ring_b = np.concatenate(ring_b).astype(np.int64)
    d_of_z = ring_b - ring_a
    m_of_z = ring_a + ring_b

    half = (span - 1) // 2
    absd = np.abs(d_of_z)
    k_abs = np.where(absd <= half, 0, 1 + (absd - half - 1) // span)
    seg_of_z = np.sign(d_of_z) * k_abs
    kmax = int(k_abs.max())
    seg_order = [0] + [s * k for k in range(1, kmax + 1) for s in (-1, 1)]

    segments = []
    to_sino = np.empty(len(ring_a), dtype=np.int64)
    offset = 0
    for k in seg_order:
        members = np.nonzero(seg_of_z == k)[0]
        ms = np.unique(m_of_z[members])
        rank = np.searchsorted(ms, m_of_z[members])
        to_sino[members] = offset + rank
        ds = d_of_z[members]
        segments.append(Segment(int(k), int(ds.min()), int(ds.max()), int(len(ms))))
        offset += len(ms)
    _readonly(ring_a, ring_b, to_sino)
    return tuple(segments), ring_a, ring_b, to_sino


@functools.cache
def inverse_tables(sc: Scanner):
    n = sc.crystals_per_ring
    view_of = np.full((n, n), -1, dtype=np.int64)
    t_of = np.full((n, n), -1, dtype=np.int64)
    swap_of = np.zeros((n, n), dtype=bool)
    # full tangential range -N/2+1 .. N/2 covers every unordered pair of distinct positions once
    tp = np.arange(-(n // 2) + 1, n // 2 + 1)
    view = np.arange(sc.n_views)
    vv, tt = np.meshgrid(view, tp, indexing="ij")
    t_idx = tt + sc.n_radial // 2
    da, db = sc.view_radial_to_dets(vv, t_idx)
    keep = da != db
    da, db, vv, t_idx = da[keep], db[keep], vv[keep], t_idx[keep]
    view_of[da, db] = vv
    t_of[da, db] = t_idx
    view_of[db, da] = vv
    t_of[db, da] = t_idx
    swap_of[db, da] = True
    ring_a, ring_b = span_layout(sc, 1)[1:3]
    z_of = np.full((sc.n_rings, sc.n_rings), -1, dtype=np.int64)
    z_of[ring_a, ring_b] = np.arange(len(ring_a))
    _readonly(view_of, t_of, swap_of, z_of)
    return view_of, t_of, swap_of, z_of


@functools.cache
def lor_geometry(sc: Scanner, span: int) -> SinogramGeometry:
    view = np.arange(sc.n_views)[:, None]
    t = np.arange(sc.n_radial)[None, :]
    det_a, det_b = sc.view_radial_to_dets(
        np.broadcast_to(view, (sc.n_views, sc.n_radial)), np.broadcast_to(t, (sc.n_views, sc.n_radial))
    )
    xy = crystal_positions(sc)
    xy_a = np.ascontiguousarray(xy[det_a])
    xy_b = np.ascontiguousarray(xy[det_b])
    # signed distance of each chord from the axis, positive for tp > 0
    d = xy_b - xy_a
    dist = np.abs(xy_a[..., 0] * xy_b[..., 1] - xy_a[..., 1] * xy_b[..., 0]) / np.hypot(d[..., 0], d[..., 1])
    tp = np.arange(sc.n_radial) - sc.n_radial // 2
    radial = np.ascontiguousarray(np.sign(tp)[None, :] * dist)
    centre = d[:, sc.n_radial // 2]  # tp = 0: the chord through the axis
    view_angle = np.arctan2(centre[:, 1], centre[:, 0]) % np.pi

    _, ring_a, ring_b, to_sino = span_layout(sc, span)
    n_sino = int(to_sino.max()) + 1
    counts = np.bincount(to_sino, minlength=n_sino).astype(np.int64)
    z = sc.ring_z()
    z_mid = np.bincount(to_sino, weights=0.5 * (z[ring_a] + z[ring_b]), minlength=n_sino) / counts
    mean_d = np.bincount(to_sino, weights=(ring_b - ring_a).astype(np.float64), minlength=n_sino) / counts
    delta_z = mean_d * sc.ring_pitch_mm
    slope = delta_z / (2.0 * sc.lor_radius_mm)
    _readonly(xy_a, xy_b, radial, view_angle, z_mid, mean_d, delta_z, slope, counts)
    return SinogramGeometry(
        span=span,
        shape=(n_sino, sc.n_views, sc.n_radial),
        xy_a=xy_a,
        xy_b=xy_b,
        view_angle_rad=view_angle,
        radial_offset_mm=radial,
        z_mid_mm=z_mid,
        delta_z_mm=delta_z,
        axial_slope=slope,
        mean_ring_difference=mean_d,
        n_members=counts,
    )

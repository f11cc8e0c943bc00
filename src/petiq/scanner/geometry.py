"""Cylindrical PET scanner geometry: crystals, sinogram bins and lines of response (LORs).

One :class:`Scanner` class serves three presets that differ only in numbers:

``Scanner.mmr()``
    Siemens Biograph mMR: 64 crystal rings (8 block rings x 8), 504 crystal positions per ring
    (56 blocks x 9 positions; one position of every block, ``det % 9 == 0``, is a gap with no crystal), crystal face
    radius 328 mm, axial pitch 4.0625 mm, 344 radial bins x 252 views, maximum ring difference 60.
    Span 1: 4084 sinograms; span 11: 837 (segments 0, -1, +1, ..., -5, +5 with 127, 115, 115, 93, 93,
    71, 71, 49, 49, 27, 27 sinograms). Default image 344 x 344 x 127 voxels of
    2.08626 x 2.08626 x 2.03125 mm.
``Scanner.demo()``
    A reduced scanner for a 2-core laptop demo (see :meth:`Scanner.demo` for the numbers and why).
``Scanner.tiny()``
    A toy scanner for unit tests (see :meth:`Scanner.tiny`).

Frame and conventions
---------------------
* Scanner frame in mm, origin at the scanner centre (transaxial centre, axial centre of the crystal
  rings), z along the scanner axis, x and y transaxial: **NiftyPET's (e7's) frame**, in which its
  projector puts image column ``u = SZ_IMX/2 + floor(x/vx)`` (grows with +x) and row
  ``v = SZ_IMY/2 - ceil(y/vy)`` (grows with -y; ``niftypet/nipet/prj/src/tprj.cu``, ``sddn_tx``). For a
  head-first supine patient +x is the patient's left, +y anterior and +z (growing ring number)
  towards the feet; :mod:`petiq.scanner.frame` maps it to the NIfTI RAS+ affine (``docs/frame.md``).
* Crystal positions: ``det`` (0 .. ``crystals_per_ring - 1``) is NiftyPET's crystal ``c = det - 1``
  (mod ``crystals_per_ring``; see the gaps below), numbered **clockwise** seen from the patient
  table, starting just left of +y. With flat blocks (``block_width_mm > 0``, the mMR) the positions
  are NiftyPET's (``niftypet/nipet/mmraux.py``, ``transaxial_lut``): block ``bi = c // 9`` faces the
  axis at azimuth ``phi_b = pi/2 - alpha/2 - tilt_rad - bi*alpha`` (``alpha = 2*pi/56``; NiftyPET
  writes 0.1122 and ``tilt = 0.001``), its face is the tangent to the circle of radius
  ``ring_radius_mm + doi_mm`` (NiftyPET ``R_RING = R + DOI``) and its crystal ``n = c % 9`` (0..7)
  sits at ``bw/2 - (n + 1/2)*bw/8`` along the counter-clockwise tangent ``(-sin phi_b, cos phi_b)``,
  ``bw = block_width_mm`` (NiftyPET ``bw = 3.209`` cm); an LOR ends at the centre of the crystal face
  (``tprj.cu`` uses ``0.5*(crs[c].x + crs[c].z)``). The gap position ``n = 8`` (no crystal; NiftyPET gives
  it no coordinates) is put on that circle at ``phi_b - alpha/2``, halfway to the next block. Without
  flat blocks (``block_width_mm == 0``: the reduced presets) every position lies on the circle at
  azimuth ``phi = pi/2 - tilt_rad - 2*pi*det/crystals_per_ring`` (the same frame and numbering).
  Ring ``r`` (0 .. ``n_rings - 1``) sits at ``z = (r - (n_rings - 1)/2) * ring_pitch_mm``
  (NiftyPET ``axial_lut``: ring ``r`` spans ``-NRNG*AXR/2 + r*AXR`` .. ``+ AXR``; its image slice
  index grows with z).
* Gaps: positions ``det % block_positions == 0`` have no crystal (:meth:`Scanner.is_gap`). This is
  the mMR's layout as NiftyPET and STIR decode it: NiftyPET's crystal ``c`` is petiq's ``det - 1``
  (its sinogram LUT ``c0 = floor(ia + (NCRS - 2 + NSBINS/2 - iw)/2) mod NCRS`` is petiq's ``det_b - 1``)
  and its gap rule is ``(c + OFFGAP) % TGAP == 0`` with ``OFFGAP = 1``, ``TGAP = 9``
  (``mmraux.transaxial_lut``); STIR shifts the mMR's efficiencies by one crystal and zeroes
  c = 0, 9, 18, ... . They still have a geometric position (a "virtual
  crystal"), so sinograms keep the regular 504-position interleaved layout, as on the mMR; LORs that
  touch a gap can never record counts.

Sinograms (interleaved, no arc correction, view mashing 1)
----------------------------------------------------------
``n_views = crystals_per_ring / 2``. Radial (tangential) index ``t`` in ``0 .. n_radial - 1`` is
centred as ``tp = t - n_radial // 2``. A (view, tp) pair maps to the crystal pair as in STIR's
``ProjDataInfoCylindricalNoArcCorr`` (adapted from CTI code)::

    det_a = (view + floor(tp / 2)) mod N
    det_b = (view - ceil(tp / 2) + N / 2) mod N            N = crystals_per_ring

so ``tp = 0`` joins diametrically opposite crystals. This is NiftyPET's sinogram LUT with its crystal
numbers one lower (``transaxial_lut``: bin ``(ia = view, iw = t)`` joins
``c1 = floor(ia + (2N - 2 - NSBINS/2 + iw)/2) mod N = det_a - 1`` and
``c0 = floor(ia + (N - 2 + NSBINS/2 - iw)/2) mod N = det_b - 1``), and its ring pair
(``axial_lut`` ``sn1_rno[z] = (r0, r1)``, ``r0`` with ``c0``) is ``(ring_b, ring_a)``: the list-mode
histogrammer ``hst.cu`` and the projector ``prjf.cu`` pair them so. On circular positions the LOR of
(view, tp) has transaxial direction at angle ``pi/2 - tilt_rad - pi*view/n_views`` (minus half a crystal
angle for odd ``tp``: the interleaving) and distance ``R |sin(pi*tp/N)|`` from the axis
(``R = ring_radius_mm + doi_mm``); with flat blocks both follow from the crystal positions.

Span-1 sinogram order (PETLINK list-mode)
-----------------------------------------
Span-1 sinograms are stored segment by segment, segment = ring difference ``d``, in the order
0, -1, +1, -2, +2, ..., -D, +D (``D = max_ring_difference``); segment ``d`` holds ``n_rings - |d|``
axial positions ``ax = min(ring_a, ring_b)``. A span-1 bin offset is::

    offset = (z * n_views + view) * n_radial + t        z = running sinogram index

which is exactly how the mMR's 32-bit PETLINK list-mode words store the event (bits 0-29) and how
STIR's ``CListEventECAT8_32bit::get_detection_position`` decodes it (segment sequence 0, -1, +1, ...
with sizes ``num_rings - |ring diff|``, then ``tang_pos_num - num_tangential_poss/2``).

**Sign convention:** ring difference ``d = ring_b - ring_a``, where ``(ring_a, det_a)`` is STIR's
first detector of the pair (``pos1``/``det1``) and ``(ring_b, det_b)`` the second. This is STIR's
``ProjDataInfoCylindrical`` convention (segment sign = sign of ``ring2 - ring1``), and STIR's ECAT8
reader hands ``(segment, view, axial_pos, tang_pos)`` straight to ``get_det_pos_pair_for_bin``, so
choosing the same sign keeps our decoding of real mMR list-mode identical to STIR's. (Within the
simulation the choice is only a labelling, since swapping ``a`` and ``b`` gives the same LOR.)

Axial compression (span)
------------------------
For an odd span ``s``, segment 0 holds ring differences ``-(s-1)/2 .. (s-1)/2``, segment ``+k`` holds
``(s-1)/2 + (k-1)*s + 1 .. (s-1)/2 + k*s`` (clipped at ``D``) and ``-k`` the negatives. Within a
segment, span-1 sinograms with the same ring sum ``m = ring_a + ring_b`` are added into one
sinogram; sinograms are ordered by segment (0, -1, +1, ...; the ECAT7/e7 order) and by ``m`` within
a segment. mMR span 11: ring differences 0: -5..5, +-1: 6..16, ..., +-5: 50..60 -> 837 sinograms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from petiq.core.errors import PetiqInputError

from .tables import Segment, SinogramGeometry, crystal_positions, inverse_tables, lor_geometry, span_layout

__all__ = [
    "Scanner",
    "PRESETS",
]


PRESETS = ("mmr", "demo", "tiny")


@dataclass(frozen=True)
class Scanner:
    """A cylindrical PET scanner with block detectors; see the module docstring for conventions.

    Construct through a preset (:meth:`mmr`, :meth:`demo`, :meth:`tiny`, :meth:`from_name`); the
    presets differ only in these numbers.
    """

    name: str
    n_rings: int
    crystals_per_ring: int
    n_views: int
    n_radial: int
    max_ring_difference: int
    ring_radius_mm: float
    ring_pitch_mm: float
    block_positions: int
    image_shape: tuple[int, int, int]
    voxel_size_mm: tuple[float, float, float]
    #: Mean depth of interaction (mm) beyond the crystal face where LORs end. mMR: 6.7 mm, NiftyPET's
    #: ``DOI = 0.67`` cm (``R_RING = R + DOI``, ``niftypet/ninst/raw/resources.py``); STIR uses 7 mm.
    doi_mm: float = 0.0
    #: Width (mm) of a flat block face holding ``block_positions - 1`` crystals; 0 puts every position
    #: on the circle of radius :attr:`lor_radius_mm` instead. mMR: NiftyPET's ``bw = 3.209`` cm
    #: (``niftypet/nipet/mmraux.py``, ``transaxial_lut``).
    block_width_mm: float = 0.0
    #: Clockwise rotation (rad) of the whole ring from the nominal frame. mMR: NiftyPET's 0.001 rad
    #: (``phi = 0.5*pi - alpha/2 - 0.001`` in ``transaxial_lut``).
    tilt_rad: float = 0.0

    # ------------------------------------------------------------------ presets
    @classmethod
    def mmr(cls) -> Scanner:
        """Siemens Biograph mMR (published numbers; see ``shared/design/PET.md``)."""
        return cls(
            name="mmr",
            n_rings=64,
            crystals_per_ring=504,
            n_views=252,
            n_radial=344,
            max_ring_difference=60,
            ring_radius_mm=328.0,
            ring_pitch_mm=4.0625,
            block_positions=9,
            image_shape=(344, 344, 127),
            voxel_size_mm=(2.08626, 2.08626, 2.03125),
            doi_mm=6.7,
            block_width_mm=32.09,  # NiftyPET mmraux.transaxial_lut: bw = 3.209 cm
            tilt_rad=0.001,  # NiftyPET mmraux.transaxial_lut: phi = pi/2 - alpha/2 - 0.001
        )

    @classmethod
    def demo(cls) -> Scanner:
        """Reduced mMR for the 2-core laptop demo: same code, about half the sampling everywhere.

        * 32 rings of 8.125 mm pitch (twice the mMR crystal size axially; same 260 mm axial FOV).
        * 252 positions per ring = 28 blocks x 9 (8 crystals + 1 gap), same 328 mm radius, so
          crystals are ~8 mm transaxially; 126 views.
        * 80 radial bins: ``s = R sin(pi*tp/252)`` reaches +-157 mm, a 314 mm transaxial FOV: a head
          (<= ~200 mm) with >= 50 mm of scatter tails on each side (the mMR's 344 bins reach
          +-288 mm, a whole-body FOV).
        * Maximum ring difference 27 with span 11: segments 0 (-5..5), +-1 (6..16), +-2 (17..27) ->
          63 + 2*(51 + 29) = 223 sinograms, 223 x 126 x 80 = 2.25 M bins (mMR: 837 sinograms,
          72.6 M bins). 27 of 31 keeps the mMR's maximum polar angle (~19 deg vs ~20 deg) and whole
          span-11 segments.
        * Image 80 x 80 x 63 voxels of 4.17252 x 4.17252 x 4.0625 mm (twice the mMR voxel in every
          direction; 334 mm transaxially, covering the FOV; the 63 axial voxel centres sit at the
          63 ring sums, as the mMR's 127 do, which the projector exploits).

        Why these numbers: projection cost ~ bins x samples per LOR (157 M Joseph samples per full
        projection here, 16.8 G for the mMR). Measured on the shared 2-core machine (best of
        several, busy with other jobs): full span-11 forward + back of the default image ~0.2 s, so
        OSEM with 2 iterations (~2 full passes) spends well under a second projecting. With 96 bins
        and a 96^2 image (400 mm) it measured ~0.28 s; 128 bins / 128^2 (399 M samples) would be
        ~0.5 s (estimated from the sample count).
        """
        return cls(
            name="demo",
            n_rings=32,
            crystals_per_ring=252,
            n_views=126,
            n_radial=80,
            max_ring_difference=27,
            ring_radius_mm=328.0,
            ring_pitch_mm=8.125,
            block_positions=9,
            image_shape=(80, 80, 63),
            voxel_size_mm=(4.17252, 4.17252, 4.0625),
            doi_mm=6.7,
        )

    @classmethod
    def tiny(cls) -> Scanner:
        """A toy scanner for unit tests: projections take milliseconds.

        8 rings of 8 mm pitch, 72 positions per ring (8 blocks x 9, first of each a gap), radius
        100 mm, 36 views, 28 radial bins (``s`` up to +-57 mm), maximum ring difference 7 (all ring
        pairs; span 1: 64 sinograms, span 3: 47, span 11: 15 + 2*3 = 21). Image 32 x 32 x 15 of
        4 x 4 x 4 mm (axial centres at the 15 ring sums).
        """
        return cls(
            name="tiny",
            n_rings=8,
            crystals_per_ring=72,
            n_views=36,
            n_radial=28,
            max_ring_difference=7,
            ring_radius_mm=100.0,
            ring_pitch_mm=8.0,
            block_positions=9,
            image_shape=(32, 32, 15),
            voxel_size_mm=(4.0, 4.0, 4.0),
            doi_mm=2.0,
        )

    @classmethod
    def from_name(cls, name: str) -> Scanner:
        """The preset called ``name`` (the ``scanner`` config key): "mmr", "demo" or "tiny"."""
        key = str(name).strip().lower()
        if key not in PRESETS:
            raise PetiqInputError(
                None,
                f"unknown scanner preset {name!r}",
                f"use one of: {', '.join(PRESETS)}",
            )
        return getattr(cls, key)()

    def __post_init__(self) -> None:
        problems = []
        if self.crystals_per_ring % 2:
            problems.append("crystals_per_ring must be even")
        if self.n_views != self.crystals_per_ring // 2:
            problems.append("n_views must be crystals_per_ring / 2 (interleaved, no view mashing)")
        if not 0 < self.n_radial < self.crystals_per_ring:
            problems.append("n_radial must be in 1 .. crystals_per_ring - 1")
        if not 0 <= self.max_ring_difference < self.n_rings:
            problems.append("max_ring_difference must be in 0 .. n_rings - 1")
        if self.crystals_per_ring % self.block_positions:
            problems.append("crystals_per_ring must be a multiple of block_positions")
        if len(self.image_shape) != 3 or len(self.voxel_size_mm) != 3:
            problems.append("image_shape and voxel_size_mm need 3 entries (x, y, z)")
        if not 0.0 <= self.block_width_mm < 2.0 * self.lor_radius_mm * np.tan(np.pi / max(self.blocks_per_ring, 2)):
            problems.append("block_width_mm must be >= 0 and the flat blocks must not overlap")
        if problems:
            raise PetiqInputError(
                None, f"inconsistent scanner {self.name!r}: " + "; ".join(problems), "fix the preset numbers"
            )

    # ------------------------------------------------------------------ basic numbers
    @property
    def n_crystals(self) -> int:
        """Crystal positions in the whole scanner (gaps included): n_rings x crystals_per_ring."""
        return self.n_rings * self.crystals_per_ring

    @property
    def blocks_per_ring(self) -> int:
        return self.crystals_per_ring // self.block_positions

    @property
    def axial_fov_mm(self) -> float:
        return self.n_rings * self.ring_pitch_mm

    def is_gap(self, det) -> np.ndarray | bool:
        """True where transaxial crystal position ``det`` is a block gap (no crystal, never counts)."""
        det = np.asarray(det)
        out = (det % self.block_positions) == 0  # NiftyPET (c + 1) % 9 == 0 with c = det - 1
        return bool(out) if out.ndim == 0 else out

    # Singles buckets: 2 blocks transaxially x 8 rings axially. NiftyPET ``src/norm.cu``
    # (``dev_norm``): ``b = c / Cbt + Bt * (r / Cba)`` with ``Cbt = 18``, ``Cba = 8``, ``Bt = 28``
    # (= 504 / 18), ``NBUCKTS = 224`` (``include/def.h``); the mMR header says
    # ``%total number of singles blocks:=224`` (STIR ``examples/samples/mMR_listmode.l.hdr``).
    #: Transaxial positions per singles bucket, in blocks (NiftyPET ``Cbt = 18`` = 2 x 9 positions).
    BUCKET_BLOCKS = 2
    #: Crystal rings per singles bucket (NiftyPET ``Cba = 8``: one mMR block ring).
    BUCKET_RINGS = 8

    @property
    def buckets_per_ring(self) -> int:
        """Singles buckets around the ring (mMR 28: NiftyPET's ``Bt``)."""
        return -(-self.crystals_per_ring // (self.BUCKET_BLOCKS * self.block_positions))

    @property
    def n_buckets(self) -> int:
        """Singles buckets of the scanner (mMR 224 = 28 x 8, NiftyPET ``NBUCKTS``); the reduced
        presets group their crystals the same way (2 blocks x 8 rings)."""
        return self.buckets_per_ring * -(-self.n_rings // self.BUCKET_RINGS)

    def crystal_buckets(self) -> np.ndarray:
        """int64 ``(n_rings, crystals_per_ring)``: the singles bucket of every crystal position.

        NiftyPET's ``b = c // 18 + 28 * (ring // 8)`` with its crystal ``c = det - 1`` (mod
        ``crystals_per_ring``) in petiq's numbering: bucket ``k`` of a ring group holds positions
        ``det = 18k + 1 .. 18k + 18``, two whole blocks with their gaps at both ends (gaps have
        no singles but keep a bucket, as in NiftyPET's LUT)."""
        c = (np.arange(self.crystals_per_ring, dtype=np.int64) - 1) % self.crystals_per_ring
        ring = np.arange(self.n_rings, dtype=np.int64)
        per = self.BUCKET_BLOCKS * self.block_positions
        return c[None, :] // per + self.buckets_per_ring * (ring[:, None] // self.BUCKET_RINGS)

    def crystal_xy(self) -> np.ndarray:
        """float64 ``(crystals_per_ring, 2)``: (x, y) in mm of every position at the mean interaction
        depth, where LORs end, in NiftyPET's frame and numbering (module doc, "Frame and conventions")."""
        return crystal_positions(self).copy()

    @property
    def lor_radius_mm(self) -> float:
        """Radius of the LOR end points: crystal face + mean depth of interaction."""
        return float(self.ring_radius_mm + self.doi_mm)

    def ring_z(self) -> np.ndarray:
        """float64 ``(n_rings,)``: axial position (mm) of every crystal ring."""
        return (np.arange(self.n_rings) - (self.n_rings - 1) / 2.0) * self.ring_pitch_mm

    # ------------------------------------------------------------------ sinogram layout
    def check_span(self, span: int) -> int:
        """Validate ``span`` (odd, 1 .. 2*max_ring_difference + 1) and return it as int."""
        ok = isinstance(span, (int, np.integer)) and span >= 1 and span % 2 == 1
        if not ok or span > 2 * self.max_ring_difference + 1:
            raise PetiqInputError(
                None,
                f"span {span!r} is not valid for scanner {self.name!r}",
                f"use an odd span between 1 and {2 * self.max_ring_difference + 1} (mMR: 1 or 11)",
            )
        return int(span)

    def segments(self, span: int) -> tuple[Segment, ...]:
        """Segments of a span in storage order 0, -1, +1, -2, +2, ..."""
        return span_layout(self, self.check_span(span))[0]

    def span1_segments(self) -> tuple[Segment, ...]:
        """Span-1 segments in PETLINK order 0, -1, +1, ..., -D, +D.

        Segment ``d`` (``number == min_ring_difference == max_ring_difference == d``,
        ``d = ring_b - ring_a``) holds ``n_rings - |d|`` sinograms, axial position
        ``ax = min(ring_a, ring_b)``. The running sinogram index ``z`` over this order gives the
        span-1 bin offset ``(z*n_views + view)*n_radial + t`` of the list-mode.
        """
        return self.segments(1)

    def span1_rings(self) -> tuple[np.ndarray, np.ndarray]:
        """``(ring_a, ring_b)`` int64 arrays, one entry per span-1 sinogram ``z``."""
        lay = span_layout(self, 1)
        return lay[1], lay[2]

    def n_sinograms(self, span: int) -> int:
        return sum(s.n_sinograms for s in self.segments(span))

    def sinogram_shape(self, span: int) -> tuple[int, int, int]:
        """``(n_sinograms, n_views, n_radial)`` of a span."""
        return (self.n_sinograms(span), self.n_views, self.n_radial)

    def n_bins(self, span: int) -> int:
        a, b, c = self.sinogram_shape(span)
        return a * b * c

    def span1_to_sinogram(self, span: int) -> np.ndarray:
        """int64 array (length = number of span-1 sinograms): the span-``span`` sinogram index of
        each span-1 sinogram (view and radial index are unchanged). Span 1 gives the identity.

        Histogramming a span-1 offset ``o`` into span ``s``:
        ``z1, rest = divmod(o, n_views*n_radial)`` -> bin ``map[z1]*n_views*n_radial + rest``.
        """
        span = self.check_span(span)
        return span_layout(self, span)[3]

    def sinogram_members(self, span: int) -> np.ndarray:
        """int64 ``(n_sinograms,)``: number of span-1 sinograms added into each sinogram."""
        span = self.check_span(span)
        return np.bincount(span_layout(self, span)[3], minlength=self.n_sinograms(span))

    # ------------------------------------------------------------------ bins <-> crystals <-> mm
    def _check_bins(self, bins) -> np.ndarray:
        bins = np.asarray(bins)
        if bins.dtype.kind not in "iu":
            raise PetiqInputError(
                None, f"span-1 bin offsets must be integers, got dtype {bins.dtype}", "pass an int64 array of offsets"
            )
        bins = bins.astype(np.int64, copy=False)
        n = self.n_bins(1)
        if bins.size and (bins.min() < 0 or bins.max() >= n):
            raise PetiqInputError(
                None,
                f"span-1 bin offsets must lie in 0 .. {n - 1} for scanner "
                f"{self.name!r}, got {bins.min()} .. {bins.max()}",
                "check the list-mode decoding and the scanner preset",
            )
        return bins

    def bin_indices(self, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Span-1 offsets -> ``(z, view, t)`` (span-1 sinogram, view, radial index)."""
        bins = self._check_bins(bins)
        rest, t = np.divmod(bins, self.n_radial)
        z, view = np.divmod(rest, self.n_views)
        return z, view, t

    def view_radial_to_dets(self, view, t) -> tuple[np.ndarray, np.ndarray]:
        """(view, radial index) -> ``(det_a, det_b)``: STIR/CTI interleaved mapping (module doc)."""
        view = np.asarray(view, dtype=np.int64)
        tp = np.asarray(t, dtype=np.int64) - self.n_radial // 2
        n = self.crystals_per_ring
        det_a = (view + (tp >> 1)) % n  # >> is floor division by 2 for negatives
        det_b = (view - ((tp + 1) >> 1) + n // 2) % n
        return det_a, det_b

    def bin_crystals(self, bins) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Span-1 offsets -> ``(ring_a, det_a, ring_b, det_b)`` int64 arrays.

        ``ring_b - ring_a`` is the segment (ring difference) of the offset's sinogram.
        """
        z, view, t = self.bin_indices(bins)
        ring_a_of_z, ring_b_of_z = self.span1_rings()
        det_a, det_b = self.view_radial_to_dets(view, t)
        return ring_a_of_z[z], det_a, ring_b_of_z[z], det_b

    def crystals_to_bin(self, ring_a, det_a, ring_b, det_b) -> np.ndarray:
        """Inverse of :meth:`bin_crystals` for any crystal pair (either order): span-1 offsets,
        int64, ``-1`` where the pair is not in the sinogram (same position, ``|tp|`` beyond the
        radial bins, or ring difference beyond ``max_ring_difference``)."""
        ring_a = np.asarray(ring_a, dtype=np.int64)
        ring_b = np.asarray(ring_b, dtype=np.int64)
        det_a = np.asarray(det_a, dtype=np.int64)
        det_b = np.asarray(det_b, dtype=np.int64)
        view_of, t_of, swap_of, z_of = inverse_tables(self)
        view = view_of[det_a, det_b]
        t = t_of[det_a, det_b]
        swap = swap_of[det_a, det_b]
        ra = np.where(swap, ring_b, ring_a)
        rb = np.where(swap, ring_a, ring_b)
        z = z_of[ra, rb]
        ok = (view >= 0) & (t >= 0) & (t < self.n_radial) & (z >= 0)
        out = (z * self.n_views + view) * self.n_radial + t
        return np.where(ok, out, -1)

    def lor_endpoints(self, bins) -> tuple[np.ndarray, np.ndarray]:
        """Span-1 offsets -> ``(p1, p2)``: float64 ``(N, 3)`` LOR end points (mean interaction depth) in mm (scanner
        frame), ``p1`` on ``(ring_a, det_a)``, ``p2`` on ``(ring_b, det_b)``."""
        ring_a, det_a, ring_b, det_b = self.bin_crystals(np.atleast_1d(bins))
        xy = self.crystal_xy()
        z = self.ring_z()
        p1 = np.column_stack([xy[det_a], z[ring_a]])
        p2 = np.column_stack([xy[det_b], z[ring_b]])
        return p1, p2

    def sinogram_lor_geometry(self, span: int) -> SinogramGeometry:
        """Geometry of all bins of a span, factorised into a transaxial part per (view, radial) and
        an axial part per sinogram plane (see :class:`SinogramGeometry`; for span > 1 the mean LOR
        of each bin's members)."""
        return lor_geometry(self, self.check_span(span))

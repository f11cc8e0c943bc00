"""The scanner's frame: crystal positions and sinogram addresses against NiftyPET, the RAS+ affine of
every image, and inputs mapped by their affine (issue 13, item 4).

Expected numbers are re-derived here from NiftyPET's code (``niftypet/nipet/mmraux.py``
``transaxial_lut`` and ``axial_lut``, ``lm/src/hst.cu``, ``prj/src/tprj.cu``,
``img/mmrimg.py`` ``image_affine``; constants from ``niftypet/ninst/raw/resources.py``), never from
petiq's own functions.
"""

from __future__ import annotations

import numpy as np
import pytest

from petiq.scanner import Scanner

# NiftyPET resources.py: NCRS, NRNG, NSBINS, NSANGLES, MRD, R, DOI (cm), AXR (cm), TGAP, OFFGAP
NCRS, NRNG, NSBINS, NSANGLES, MRD = 504, 64, 344, 252, 60
R_RING_CM = 32.8 + 0.67
AXR_CM = 0.40625


@pytest.fixture(scope="module")
def mmr() -> Scanner:
    return Scanner.mmr()


def niftypet_crystals() -> np.ndarray:
    """``crs`` of ``mmraux.transaxial_lut`` (cm): both ends of every crystal face, gaps left at 0."""
    bw, ntblk, alpha = 3.209, 56, 0.1122
    crs = np.zeros((NCRS, 4))
    phi = 0.5 * np.pi - alpha / 2 - 0.001
    for bi in range(ntblk):
        y, x = R_RING_CM * np.sin(phi), R_RING_CM * np.cos(phi)
        pv = np.array([-y, x]) / np.hypot(x, y)
        phi -= alpha
        xcp, ycp = x + (bw / 2) * pv[0], y + (bw / 2) * pv[1]
        for n in range(1, 9):
            c = bi * 9 + n - 1
            xc, yc = x + (bw / 2 - n * bw / 8) * pv[0], y + (bw / 2 - n * bw / 8) * pv[1]
            crs[c] = xcp, ycp, xc, yc
            xcp, ycp = xc, yc
    return crs


def niftypet_s2c() -> np.ndarray:
    """``s2cF`` of ``transaxial_lut``: (crystal c0, crystal c1) of bin index ``ia + iw*NSANGLES``."""
    iw, ia = np.meshgrid(np.arange(NSBINS), np.arange(NSANGLES), indexing="ij")
    c0 = np.floor(np.mod(ia + 0.5 * (NCRS - 2 + NSBINS / 2 - iw), NCRS)).astype(int)
    c1 = np.floor(np.mod(ia + 0.5 * (2 * NCRS - 2 - NSBINS / 2 + iw), NCRS)).astype(int)
    return np.stack([c0.ravel(), c1.ravel()], axis=1)  # row ia + iw*NSANGLES (iw slow)


def niftypet_sn1_rno() -> np.ndarray:
    """``sn1_rno`` of ``axial_lut`` (span 1, all rings): (r0, r1) of every span-1 sinogram."""
    out = []
    for ro in range(NRNG):
        for m in range(1 if ro == 0 else 2):
            for li in range(NRNG * ro, NRNG * NRNG, NRNG + 1):
                if m == 0:
                    r1, r0 = divmod(li, NRNG)
                else:
                    r0, r1 = divmod(li, NRNG)
                if abs(r1 - r0) <= MRD:
                    out.append((r0, r1))
    return np.asarray(out)


def test_crystal_positions_are_niftypets(mmr):
    """Every real crystal's LOR end (centre of its face, as ``tprj.cu`` takes it) agrees with
    NiftyPET's ``crs`` table to < 0.1 mm, with NiftyPET's c = petiq's det - 1."""
    crs = niftypet_crystals()
    centre_mm = 10.0 * 0.5 * (crs[:, :2] + crs[:, 2:])
    c = np.arange(NCRS)
    real = (c + 1) % 9 != 0  # NiftyPET (c + OFFGAP) % TGAP
    xy = mmr.crystal_xy()[(c + 1) % NCRS]
    err = np.hypot(*(xy[real] - centre_mm[real]).T)
    assert real.sum() == 448
    assert err.max() < 0.1, err.max()
    # clockwise from just left of +y: c = 0 at ~89.1 deg, then decreasing azimuth all the way round
    ang = np.degrees(np.arctan2(centre_mm[:, 1], centre_mm[:, 0]))
    assert 88.5 < ang[0] < 89.5 and np.all(np.diff(np.unwrap(np.radians(ang[real]))) < 0)
    # the gap positions lie halfway between the neighbouring blocks' last and first crystals
    gaps = mmr.crystal_xy()[mmr.is_gap(np.arange(NCRS))]
    assert gaps.shape == (56, 2)
    np.testing.assert_allclose(np.hypot(*gaps.T), 334.7, rtol=1e-12)


def test_listmode_addresses_land_on_niftypets_lors(mmr):
    """A span-1 list-mode address decoded as NiftyPET's histogrammer does (``hst.cu``:
    si = val / (NSBINS*NSANGLES), a = aw / NSBINS, w = aw % NSBINS; crystals ``s2cF[a + NSANGLES*w]``,
    rings ``sn1_rno[si]`` with r0 on c0) gives the LOR petiq reads for it, end for end to < 0.1 mm,
    ring z = (r - 31.5) * AXR as ``axial_lut``'s ``rng`` (ring centre)."""
    rng = np.random.default_rng(13)
    s2c, rno, crs = niftypet_s2c(), niftypet_sn1_rno(), niftypet_crystals()
    assert rno.shape == (4084, 2)
    val = rng.integers(0, 4084 * NSBINS * NSANGLES, 50_000)
    si, aw = np.divmod(val, NSBINS * NSANGLES)
    a, w = np.divmod(aw, NSBINS)
    c0, c1 = s2c[a + NSANGLES * w].T
    r0, r1 = rno[si].T
    live = ((c0 + 1) % 9 != 0) & ((c1 + 1) % 9 != 0)
    centre = 10.0 * 0.5 * (crs[:, :2] + crs[:, 2:])
    ring_z = 10.0 * (-0.5 * NRNG * AXR_CM + np.arange(NRNG) * AXR_CM + 0.5 * AXR_CM)
    q0 = np.column_stack([centre[c0], ring_z[r0]])
    q1 = np.column_stack([centre[c1], ring_z[r1]])
    ring_a, det_a, ring_b, det_b = mmr.bin_crystals(val)
    assert np.array_equal(det_a, (c1 + 1) % NCRS) and np.array_equal(det_b, (c0 + 1) % NCRS)
    assert np.array_equal(ring_a, r1) and np.array_equal(ring_b, r0)
    p1, p2 = mmr.lor_endpoints(val)
    assert np.abs(p1 - q1)[live].max() < 0.1 and np.abs(p2 - q0)[live].max() < 0.1
    # the inverse LUT (NiftyPET c2sF, crystal pair -> bin) is petiq's crystals_to_bin
    bins = mmr.crystals_to_bin(r1, (c1 + 1) % NCRS, r0, (c0 + 1) % NCRS)
    assert np.array_equal(bins, val)

"""Scanner geometry: mMR sinogram counts, span-11 compression, bin <-> crystal <-> mm consistency."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import PRESETS, Scanner


@pytest.fixture(scope="module")
def mmr() -> Scanner:
    return Scanner.mmr()


def test_mmr_numbers(mmr):
    assert mmr.n_rings == 64 and mmr.crystals_per_ring == 504 and mmr.n_crystals == 64 * 504
    assert mmr.n_views == 252 and mmr.n_radial == 344 and mmr.max_ring_difference == 60
    assert mmr.image_shape == (344, 344, 127)
    assert mmr.voxel_size_mm == pytest.approx((2.08626, 2.08626, 2.03125))
    assert mmr.ring_radius_mm == pytest.approx(328.0)
    assert mmr.sinogram_shape(1) == (4084, 252, 344)
    assert mmr.sinogram_shape(11) == (837, 252, 344)
    assert mmr.n_bins(11) == 837 * 252 * 344
    assert int(mmr.is_gap(np.arange(504)).sum()) == 56  # 448 real crystals per ring
    assert mmr.is_gap(0) and mmr.is_gap(9) and not mmr.is_gap(8) and not mmr.is_gap(503)


def test_mmr_span1_segments_petlink_order(mmr):
    segs = mmr.span1_segments()
    assert [s.number for s in segs[:5]] == [0, -1, 1, -2, 2]
    assert segs[-1].number == 60 and segs[-2].number == -60
    assert all(s.n_sinograms == 64 - abs(s.number) for s in segs)
    assert sum(s.n_sinograms for s in segs) == 4084
    ring_a, ring_b = mmr.span1_rings()
    z = 0
    for s in segs:  # ring difference ring_b - ring_a equals the segment; axial pos = min ring
        d = ring_b[z : z + s.n_sinograms] - ring_a[z : z + s.n_sinograms]
        assert np.all(d == s.number)
        assert np.array_equal(np.minimum(ring_a, ring_b)[z : z + s.n_sinograms], np.arange(s.n_sinograms))
        z += s.n_sinograms


def test_mmr_span11_segments(mmr):
    segs = mmr.segments(11)
    assert [s.n_sinograms for s in segs] == [127, 115, 115, 93, 93, 71, 71, 49, 49, 27, 27]
    assert [s.number for s in segs] == [0, -1, 1, -2, 2, -3, 3, -4, 4, -5, 5]
    assert (segs[0].min_ring_difference, segs[0].max_ring_difference) == (-5, 5)
    assert (segs[2].min_ring_difference, segs[2].max_ring_difference) == (6, 16)
    assert (segs[1].min_ring_difference, segs[1].max_ring_difference) == (-16, -6)
    assert (segs[-1].min_ring_difference, segs[-1].max_ring_difference) == (50, 60)


def test_mmr_span11_map(mmr):
    m = mmr.span1_to_sinogram(11)
    assert m.shape == (4084,) and m.min() == 0 and m.max() == 836
    ring_a, ring_b = mmr.span1_rings()
    d = ring_b - ring_a
    segs = mmr.segments(11)
    starts = np.cumsum([0] + [s.n_sinograms for s in segs])
    seg_of_sino = np.repeat(np.arange(len(segs)), [s.n_sinograms for s in segs])
    for i, s in enumerate(segs):  # each span-1 sinogram lands in the segment of its ring difference
        members = seg_of_sino[m] == i
        assert np.all((d[members] >= s.min_ring_difference) & (d[members] <= s.max_ring_difference))
        assert np.all((d[~members] < s.min_ring_difference) | (d[~members] > s.max_ring_difference))
    counts = mmr.sinogram_members(11)
    assert counts.sum() == 4084 and counts.min() >= 1
    # every member of a span-11 sinogram has the same ring sum; planes ordered by ring sum
    ring_sum = np.full(837, -1)
    ring_sum[m] = ring_a + ring_b
    for z1 in range(4084):
        assert ring_sum[m[z1]] == ring_a[z1] + ring_b[z1]
    for i in range(len(segs)):
        assert np.all(np.diff(ring_sum[starts[i] : starts[i + 1]]) == 1)
    # segment 0: ring sums 0..126 get 1, 2, 3, 4, 5, 6, 5, 6, ..., 6, 5, 4, 3, 2, 1 members
    seg0 = counts[:127]
    assert seg0[:6].tolist() == [1, 2, 3, 4, 5, 6]
    assert seg0[-6:].tolist() == [6, 5, 4, 3, 2, 1]
    middle = seg0[4:-4]
    assert np.all(middle[0::2] == 5) and np.all(middle[1::2] == 6)
    # segment +1 holds ring differences 6..16: 5 or 6 members in its interior
    assert set(counts[starts[2] + 10 : starts[3] - 10].tolist()) == {5, 6}
    assert np.array_equal(mmr.span1_to_sinogram(1), np.arange(4084))


def test_bin_crystal_endpoint_consistency(mmr):
    rng = np.random.default_rng(1)
    bins = np.concatenate([rng.integers(0, mmr.n_bins(1), 20000), [0, mmr.n_bins(1) - 1]])
    z, view, t = mmr.bin_indices(bins)
    assert np.array_equal((z * 252 + view) * 344 + t, bins)
    ring_a, det_a, ring_b, det_b = mmr.bin_crystals(bins)
    assert ring_a.min() >= 0 and ring_b.max() < 64 and det_a.min() >= 0 and det_b.max() < 504
    assert np.all(det_a != det_b)
    # the ring difference is the segment of the offset's sinogram
    d_of_z = np.concatenate([[s.number] * s.n_sinograms for s in mmr.span1_segments()])
    assert np.array_equal(ring_b - ring_a, d_of_z[z])
    # tp = 0 joins opposite crystals; view fixes (det_a + det_b) up to the interleaving
    tp = t - 172
    assert np.all(((det_a - det_b) % 504 == 252) == (tp == 0))
    p1, p2 = mmr.lor_endpoints(bins)
    assert p1.shape == (bins.size, 3) and p1.dtype == np.float64
    # LORs end on the flat block faces, tangent to the 328 + 6.7 mm circle (NiftyPET R_RING): no
    # nearer than 334.7 mm and no further than the block's edge crystal, sqrt(334.7^2 + 14.04^2)
    edge = np.hypot(334.7, 32.09 * (0.5 - 0.5 / 8))
    for p in (p1, p2):
        r = np.hypot(p[:, 0], p[:, 1])
        assert r.min() >= 334.7 - 1e-9 and r.max() <= edge + 1e-9
    ring_z = (np.arange(64) - 31.5) * 4.0625
    np.testing.assert_allclose(p1[:, 2], ring_z[ring_a])
    np.testing.assert_allclose(p2[:, 2], ring_z[ring_b])
    # |distance of the LOR from the axis| is the geometry's radial offset, signed like tp
    cross = p1[:, 0] * p2[:, 1] - p1[:, 1] * p2[:, 0]
    dist = np.abs(cross) / np.hypot(p2[:, 0] - p1[:, 0], p2[:, 1] - p1[:, 1])
    g = mmr.sinogram_lor_geometry(1)
    np.testing.assert_allclose(g.radial_offset_mm[view, t], np.sign(tp) * dist, atol=1e-9)
    # and close to the circular R sin(pi tp / N) (within the flat-block deviation, < 1 mm)
    np.testing.assert_allclose(dist, np.abs(334.7 * np.sin(np.pi * tp / 504)), atol=1.0)
    # inverse, in either crystal order
    assert np.array_equal(mmr.crystals_to_bin(ring_a, det_a, ring_b, det_b), bins)
    assert np.array_equal(mmr.crystals_to_bin(ring_b, det_b, ring_a, det_a), bins)
    assert mmr.crystals_to_bin(0, 0, 63, 252) == -1  # ring difference 63 > 60
    assert mmr.crystals_to_bin(0, 0, 0, 1) == -1  # |tp| far beyond the 344 radial bins


def test_sinogram_geometry_matches_endpoints():
    sc = Scanner.tiny()
    g1 = sc.sinogram_lor_geometry(1)
    bins = np.arange(sc.n_bins(1))
    z, view, t = sc.bin_indices(bins)
    p1, p2 = sc.lor_endpoints(bins)
    np.testing.assert_allclose(g1.xy_a[view, t], p1[:, :2], atol=1e-12)
    np.testing.assert_allclose(g1.xy_b[view, t], p2[:, :2], atol=1e-12)
    np.testing.assert_allclose(g1.z_mid_mm[z], 0.5 * (p1[:, 2] + p2[:, 2]), atol=1e-12)
    np.testing.assert_allclose(g1.delta_z_mm[z], p2[:, 2] - p1[:, 2], atol=1e-12)
    # the transaxial direction of a view is pi*view/n_views (exact for even tp)
    d = g1.xy_b - g1.xy_a
    ang = np.arctan2(d[..., 1], d[..., 0]) % np.pi
    even = (np.arange(sc.n_radial) - sc.n_radial // 2) % 2 == 0
    expected = np.broadcast_to(g1.view_angle_rad[:, None], ang.shape)[:, even]
    diff = np.angle(np.exp(2j * (ang[:, even] - expected))) / 2
    np.testing.assert_allclose(diff, 0, atol=1e-9)
    # span 3: mean ring difference / mean position of the members
    g3 = sc.sinogram_lor_geometry(3)
    m = sc.span1_to_sinogram(3)
    ra, rb = sc.span1_rings()
    for s3 in range(g3.shape[0]):
        members = m == s3
        assert g3.mean_ring_difference[s3] == pytest.approx(np.mean(rb[members] - ra[members]))
        ring_z = sc.ring_z()
        assert g3.z_mid_mm[s3] == pytest.approx(np.mean(0.5 * (ring_z[ra[members]] + ring_z[rb[members]])))
    assert g3.n_members.sum() == sc.n_sinograms(1)


def test_presets_differ_only_in_numbers():
    fields = [f.name for f in dataclasses.fields(Scanner)]
    scanners = [Scanner.from_name(n) for n in PRESETS]
    for sc in scanners:
        assert [f.name for f in dataclasses.fields(sc)] == fields
        assert type(sc) is Scanner
        assert sc.n_views == sc.crystals_per_ring // 2
        # every preset works through the same code: counts, maps, round trips
        n1 = sc.n_sinograms(1)
        assert n1 == sc.n_rings + 2 * sum(sc.n_rings - d for d in range(1, sc.max_ring_difference + 1))
        assert sc.sinogram_members(11).sum() == n1
        bins = np.linspace(0, sc.n_bins(1) - 1, 999).astype(np.int64)
        assert np.array_equal(sc.crystals_to_bin(*sc.bin_crystals(bins)), bins)
    demo = Scanner.demo()
    assert demo.n_rings * demo.ring_pitch_mm == pytest.approx(260.0)
    assert Scanner.from_name(" MMR ") == Scanner.mmr()


def test_bad_preset_name():
    with pytest.raises(PetiqInputError) as err:
        Scanner.from_name("biograph")
    msg = str(err.value)
    assert "biograph" in msg and all(n in msg for n in PRESETS)


def test_bad_span_and_bins():
    sc = Scanner.tiny()
    with pytest.raises(PetiqInputError, match="odd span"):
        sc.sinogram_shape(2)
    with pytest.raises(PetiqInputError, match="0 .. "):
        sc.bin_crystals([sc.n_bins(1)])
    with pytest.raises(PetiqInputError, match="integers"):
        sc.lor_endpoints(np.array([1.5]))


def test_gap_mask_is_niftypets():
    """The live-bin mask of a 2-D mMR sinogram equals NiftyPET's, re-derived here from its
    ``mmraux.transaxial_lut``: bin (iw = radial, ia = view) joins crystals
    c0 = floor((ia + (NCRS - 2 + NSBINS/2 - iw)/2) mod NCRS), c1 = floor((ia + (2 NCRS - 2 -
    NSBINS/2 + iw)/2) mod NCRS), live iff ((c0 + OFFGAP) % TGAP) * ((c1 + OFFGAP) % TGAP) > 0 with
    NCRS = 504, NSBINS = 344, OFFGAP = 1, TGAP = 9 (``niftypet/ninst/raw/resources.py``)."""
    ncrs, nsbins, offgap, tgap = 504, 344, 1, 9
    iw = np.arange(nsbins)[None, :]
    ia = np.arange(252)[:, None]
    c0 = np.floor(np.mod(ia + 0.5 * (ncrs - 2 + nsbins / 2 - iw), ncrs)).astype(int)
    c1 = np.floor(np.mod(ia + 0.5 * (2 * ncrs - 2 - nsbins / 2 + iw), ncrs)).astype(int)
    live_niftypet = ((c0 + offgap) % tgap) * ((c1 + offgap) % tgap) > 0
    mmr = Scanner.mmr()
    view, t = np.meshgrid(np.arange(252), np.arange(344), indexing="ij")
    det_a, det_b = mmr.view_radial_to_dets(view, t)
    live_petiq = ~mmr.is_gap(det_a) & ~mmr.is_gap(det_b)
    assert live_petiq.shape == live_niftypet.shape == (252, 344)
    assert np.array_equal(live_petiq, live_niftypet)
    # NiftyPET's crystal pair is petiq's, one crystal down: c1 = det_a - 1, c0 = det_b - 1
    assert np.array_equal(c1, (det_a - 1) % 504) and np.array_equal(c0, (det_b - 1) % 504)


def test_lor_ends_at_the_mean_interaction_depth():
    """LORs end 6.7 mm behind the 328 mm crystal face (NiftyPET R_RING = 32.8 + 0.67 cm): the
    central bin of view 0 joins the diametrically opposite gap positions (on the circle), a chord of
    2 (R + DOI); every block face is the tangent at R + DOI (its normal component is R + DOI)."""
    mmr = Scanner.mmr()
    centre = mmr.n_radial // 2
    p1, p2 = mmr.lor_endpoints(np.array([centre]))
    assert np.linalg.norm(p1[0, :2] - p2[0, :2]) == pytest.approx(2 * (328.0 + 6.7))
    xy = mmr.crystal_xy()
    c = (np.arange(504) - 1) % 504
    phi_b = np.pi / 2 - np.pi / 56 - 0.001 - (c // 9) * 2 * np.pi / 56
    normal = xy[:, 0] * np.cos(phi_b) + xy[:, 1] * np.sin(phi_b)
    real = c % 9 != 8
    np.testing.assert_allclose(normal[real], 334.7, atol=1e-9)


def test_circular_positions_of_the_reduced_presets():
    """Without flat blocks every position lies on the circle of radius R + DOI at azimuth
    pi/2 - 2 pi det / N (clockwise from +y, the mMR's numbering), so a bin's distance from the axis is
    R |sin(pi tp / N)| and the view's direction pi/2 - pi view / n_views (mod pi)."""
    sc = Scanner.tiny()
    r = 100.0 + 2.0
    phi = np.pi / 2 - 2 * np.pi * np.arange(72) / 72
    np.testing.assert_allclose(sc.crystal_xy(), r * np.stack([np.cos(phi), np.sin(phi)], 1), atol=1e-12)
    g = sc.sinogram_lor_geometry(1)
    tp = np.arange(28) - 14
    np.testing.assert_allclose(g.radial_offset_mm, np.broadcast_to(r * np.sin(np.pi * tp / 72), (36, 28)), atol=1e-9)
    want = (np.pi / 2 - np.pi * np.arange(36) / 36) % np.pi
    np.testing.assert_allclose(np.angle(np.exp(2j * (g.view_angle_rad - want))), 0, atol=1e-12)

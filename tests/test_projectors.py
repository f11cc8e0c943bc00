"""Joseph projector: adjointness, analytic line integrals, mode agreement, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from petiq.core.errors import PetiqInputError
from petiq.recon import projectors
from petiq.recon.projectors import JosephProjector
from petiq.scanner.geometry import Scanner


@pytest.fixture(scope="module")
def tiny() -> Scanner:
    return Scanner.tiny()


def _dot(a, b) -> float:
    return float(np.vdot(np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()))


@pytest.mark.parametrize("span", [1, 3, 11])
def test_adjoint_all_bins(tiny, span):
    proj = JosephProjector(tiny, span=span)
    rng = np.random.default_rng(span)
    x = rng.random(proj.image_shape, dtype=np.float32)
    y = rng.random(proj.sinogram_shape, dtype=np.float32)
    ax, aty = proj.forward(x), proj.back(y)
    assert ax.shape == tiny.sinogram_shape(span) and ax.dtype == np.float32
    assert aty.shape == proj.image_shape and aty.dtype == np.float32
    lhs, rhs = _dot(ax, y), _dot(x, aty)
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_adjoint_views_subset_and_slicing(tiny):
    proj = JosephProjector(tiny, span=3)
    rng = np.random.default_rng(7)
    x = rng.random(proj.image_shape, dtype=np.float32)
    views = np.arange(2, tiny.n_views, 6)
    full = proj.forward(x)
    sub = proj.forward(x, views=views)
    np.testing.assert_array_equal(sub, full[:, views, :])
    y = rng.random(sub.shape, dtype=np.float32)
    lhs, rhs = _dot(sub, y), _dot(x, proj.back(y, views=views))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)
    # back of a subset = back of the full sinogram that is zero outside the subset
    y_full = np.zeros(proj.sinogram_shape, np.float32)
    y_full[:, views, :] = y
    np.testing.assert_allclose(proj.back(y, views=views), proj.back(y_full), rtol=1e-5, atol=1e-4)


def test_adjoint_bins_mode(tiny):
    proj = JosephProjector(tiny, span=11)
    rng = np.random.default_rng(3)
    x = rng.random(proj.image_shape, dtype=np.float32)
    bins = rng.integers(0, tiny.n_bins(1), 20000)
    v = rng.random(bins.size, dtype=np.float32)
    ax = proj.forward(x, bins=bins)
    assert ax.shape == bins.shape and ax.dtype == np.float32
    lhs, rhs = _dot(ax, v), _dot(x, proj.back(v, bins=bins))
    assert abs(lhs - rhs) <= 1e-5 * abs(lhs)


def test_all_bins_equals_bins_mode_span1(tiny):
    proj = JosephProjector(tiny, span=1)
    rng = np.random.default_rng(5)
    x = rng.random(proj.image_shape, dtype=np.float32)
    bins = np.arange(tiny.n_bins(1))
    sino = proj.forward(x)
    lm = proj.forward(x, bins=bins)
    np.testing.assert_allclose(sino.ravel(), lm, rtol=1e-5, atol=1e-4 * float(lm.max()))
    y = rng.random(bins.size, dtype=np.float32)
    np.testing.assert_allclose(
        proj.back(y.reshape(proj.sinogram_shape)),
        proj.back(y, bins=bins),
        rtol=1e-5,
        atol=1e-5 * float(proj.back(y, bins=bins).max()),
    )


def test_stencil_runs_equal_generic_planes(tiny, monkeypatch):
    """The SIMD stencil path (runs of equally oblique planes) gives the plane-by-plane numbers."""
    proj = JosephProjector(tiny, span=3)
    assert (proj._runs[:, 2] > 0).any()  # the default tiny grid has stencil runs
    rng = np.random.default_rng(11)
    x = rng.random(proj.image_shape, dtype=np.float32)
    y = rng.random(proj.sinogram_shape, dtype=np.float32)
    fast_f, fast_b = proj.forward(x), proj.back(y)
    proj._runs = np.array([[0, proj._c0.shape[0], 0]], dtype=np.int64)  # all member planes generic
    np.testing.assert_allclose(proj.forward(x), fast_f, rtol=1e-5, atol=1e-5 * float(fast_f.max()))
    np.testing.assert_allclose(proj.back(y), fast_b, rtol=1e-5, atol=1e-5 * float(fast_b.max()))


def test_uniform_ball_chord_lengths(tiny):
    """A uniform ball of value 1 projects to its chord length (mm), in both modes."""
    radius, vox = 40.0, 0.5
    centre = np.array([4.0, -3.0, 1.5])
    n = int(np.ceil(2 * (radius + 8) / vox))
    axis = (np.arange(n) - (n - 1) / 2) * vox
    r = np.sqrt(
        (axis[:, None, None] - centre[0]) ** 2
        + (axis[None, :, None] - centre[1]) ** 2
        + (axis[None, None, :] - centre[2]) ** 2
    )
    ball = np.clip(0.5 - (r - radius) / vox, 0, 1).astype(np.float32)  # partial-volume edge
    del r
    proj = JosephProjector(tiny, image_shape=ball.shape, voxel_size_mm=(vox, vox, vox), span=1)
    bins = np.arange(tiny.n_bins(1))
    p1, p2 = tiny.lor_endpoints(bins)
    u = (p2 - p1) / np.linalg.norm(p2 - p1, axis=1, keepdims=True)
    w = centre - p1
    dist2 = (w * w).sum(1) - (w * u).sum(1) ** 2
    chord = 2 * np.sqrt(np.clip(radius**2 - dist2, 0, None))
    inside = chord > 0.4 * 2 * radius  # away from the edge, where partial volume dominates
    assert inside.sum() > 10000
    for values in (proj.forward(ball, bins=bins), proj.forward(ball).ravel()):
        rel = (values[inside] - chord[inside]) / chord[inside]
        assert np.abs(rel).max() < 0.01
        assert abs(rel.mean()) < 1e-3
        assert np.all(values[dist2 > (radius + 3 * vox) ** 2] == 0)  # LORs missing the ball see 0


def test_bad_image_shape(tiny):
    proj = JosephProjector(tiny, span=3)
    with pytest.raises(PetiqInputError) as err:
        proj.forward(np.zeros((32, 32, 16), np.float32))
    assert "(32, 32, 15)" in str(err.value)
    with pytest.raises(PetiqInputError, match="expected"):
        proj.back(np.zeros((3, 3), np.float32))
    with pytest.raises(PetiqInputError, match="views"):
        proj.forward(np.zeros(proj.image_shape, np.float32), views=[tiny.n_views])


def test_plane_runs_grouping():
    # 6 planes one voxel apart with equal obliquity, then 2 with changing obliquity
    c0 = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0])
    c1 = np.array([0.5] * 6 + [0.7, 0.9])
    runs = projectors.plane_runs(c0, c1, nz=10)
    assert runs.tolist() == [[0, 6, 1], [6, 2, 0]]
    # a run that would leave the image is projected plane by plane (with clamping)
    assert projectors.plane_runs(c0, c1, nz=5).tolist() == [[0, 8, 0]]


# ----------------------------------------------------------------------------- axial compression
def _span11_planes_from_definition(n_rings: int, max_rd: int):
    """The mMR span-11 layout re-derived from its published definition: segment 0 holds ring
    differences -5..5, segment +-k holds +-(6 + 11(k-1) .. 16 + 11(k-1)); sinograms ordered by
    segment 0, -1, +1, -2, ... and by ring sum within a segment. Returns {(r1, r2): sinogram}."""

    def segment(d):
        return 0 if abs(d) <= 5 else int(np.sign(d)) * ((abs(d) - 6) // 11 + 1)

    pairs = [(r1, r2) for r1 in range(n_rings) for r2 in range(n_rings) if abs(r2 - r1) <= max_rd]
    planes = sorted({(segment(r2 - r1), r1 + r2) for r1, r2 in pairs}, key=lambda km: (abs(km[0]), km[0], km[1]))
    index = {km: i for i, km in enumerate(planes)}
    return {(r1, r2): index[(segment(r2 - r1), r1 + r2)] for r1, r2 in pairs}, len(planes)


def test_axial_sensitivity_of_an_on_axis_point_is_the_span1_sum():
    """mMR, span 11: a point on the axis at z = 0 / 36.6 / 77.2 / 101.6 / 117.8 mm (voxel centres of
    the default axial grid, where the voxel index is the ring sum r1 + r2). Every ring pair
    (|r2 - r1| <= 60) with that ring sum has one LOR through the point, seen with the Joseph weight
    1/cos(theta), tan(theta) = (r2 - r1) * pitch / (2 R) (R = 328 + 6.7 mm, NiftyPET's R_RING); the
    transaxial part is the same for all of them. So the model's counts per span-11 sinogram are
    C * sum over its member pairs of 1/cos(theta), with one constant C, within 1 %; and the relative
    axial profile is the span-1 sum (the mean-LOR model was off by up to 17 % here)."""
    sc = Scanner.mmr()
    pitch, radius = 4.0625, 328.0 + 6.7  # mMR ring pitch (mm), LOR radius (mm)
    to11, n11 = _span11_planes_from_definition(64, 60)
    assert n11 == 837
    shape, vox = (5, 5, 127), (2.08626, 2.08626, pitch / 2)
    proj = JosephProjector(sc, image_shape=shape, voxel_size_mm=vox, span=11)
    views = np.arange(0, sc.n_views, 21)  # the transaxial constant cancels in the ratios
    model_profile, geo_profile, ratios = [], [], []
    for k in (63, 81, 101, 113, 121):
        img = np.zeros(shape, np.float32)
        img[2, 2, k] = 1.0
        per_plane = proj.forward(img, views=views).sum(axis=(1, 2), dtype=np.float64)
        geo = np.zeros(n11)
        for (r1, r2), s11 in to11.items():
            if r1 + r2 == k:
                geo[s11] += np.sqrt(1.0 + ((r2 - r1) * pitch / (2 * radius)) ** 2)
        hit = geo > 0
        # no other sinogram sees the point (but for a trace: on flat blocks the LOR ends lie at radii of
        # 334.7-335.0 mm, so an LOR crosses the axis a hair off its ring pair's mid-plane)
        assert per_plane[~hit].sum() < 1e-3 * per_plane.sum()
        ratios.append(per_plane[hit] / geo[hit])
        model_profile.append(per_plane.sum())
        geo_profile.append(geo.sum())
    ratios = np.concatenate(ratios)
    np.testing.assert_allclose(ratios, np.median(ratios), rtol=0.01)
    model_profile, geo_profile = np.array(model_profile), np.array(geo_profile)
    np.testing.assert_allclose(model_profile / model_profile[0], geo_profile / geo_profile[0], rtol=0.01)
    # the numbers the issue quotes: ~1.00 / 0.76 / 0.43 / 0.23 / 0.10 of the centre
    np.testing.assert_allclose(geo_profile / geo_profile[0], [1.0, 0.760, 0.426, 0.229, 0.098], atol=2e-3)


def test_span11_bins_are_member_sums_and_attenuation_member_means(tiny):
    """Bin by bin on the tiny scanner: a span-11 projection is the sum of the span-1 projections of
    its members (the span-11 map re-derived from the definition), its adjoint spreads each value to
    every member, and the attenuation factor of a bin is the mean of its members' exp(-P1 mu)."""
    from petiq.recon.corrections import attenuation_factors

    rng = np.random.default_rng(4)
    x = rng.random(tiny.image_shape, dtype=np.float32)
    p1 = JosephProjector(tiny, span=1).forward(x).astype(np.float64)
    ring_a, ring_b = tiny.span1_rings()
    to11, n11 = _span11_planes_from_definition(tiny.n_rings, tiny.max_ring_difference)
    k_of_z = np.array([to11[(a, b)] for a, b in zip(ring_a, ring_b)])
    summed = np.zeros((n11,) + p1.shape[1:])
    np.add.at(summed, k_of_z, p1)
    p11 = JosephProjector(tiny, span=11)
    np.testing.assert_allclose(p11.forward(x), summed, rtol=1e-5, atol=1e-5 * summed.max())
    y = rng.random(p11.sinogram_shape, dtype=np.float32)
    np.testing.assert_allclose(
        p11.back(y), JosephProjector(tiny, span=1).back(y[k_of_z]), rtol=1e-4, atol=1e-5 * float(p11.back(y).max())
    )
    mu = 0.01 * x
    a1 = np.exp(-0.1 * JosephProjector(tiny, span=1).forward(mu).astype(np.float64))
    mean = np.zeros_like(summed)
    np.add.at(mean, k_of_z, a1)
    mean /= np.bincount(k_of_z)[:, None, None]
    np.testing.assert_allclose(attenuation_factors(mu, tiny.voxel_size_mm, tiny, 11), mean, rtol=1e-5)

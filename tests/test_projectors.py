"""Joseph projector: adjointness, analytic line integrals, mode agreement, input errors."""

from __future__ import annotations

import numpy as np
import pytest

from petiq.errors import PetiqInputError
from petiq.recon import projectors
from petiq.recon.projectors import JosephProjector
from petiq.scanner import Scanner


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
    np.testing.assert_allclose(proj.back(y.reshape(proj.sinogram_shape)), proj.back(y, bins=bins),
                               rtol=1e-5, atol=1e-5 * float(proj.back(y, bins=bins).max()))


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
    r = np.sqrt((axis[:, None, None] - centre[0]) ** 2 + (axis[None, :, None] - centre[1]) ** 2
                + (axis[None, None, :] - centre[2]) ** 2)
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
    runs = projectors._plane_runs(c0, c1, nz=10)
    assert runs.tolist() == [[0, 6, 1], [6, 2, 0]]
    # a run that would leave the image is projected plane by plane (with clamping)
    assert projectors._plane_runs(c0, c1, nz=5).tolist() == [[0, 8, 0]]

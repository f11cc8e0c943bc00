"""The CUDA backend: projector and full OP-OSEM agree with the CPU (numba) backend.

Skipped with the reason on machines without a CUDA device (run ``pytest -m gpu`` on a GPU machine).
"""

from __future__ import annotations

import numpy as np
import pytest

from petiq.listmode.simulate import AcquisitionSettings, expected_data, scanner_truth
from petiq.recon import corrections as corr
from petiq.recon.osem import reconstruct
from petiq.recon.projectors import JosephProjector
from petiq.scanner.geometry import Scanner

pytestmark = pytest.mark.gpu

SPAN = 11


def _need_cuda():
    import torch

    if not torch.cuda.is_available():
        pytest.skip(f"no CUDA device: torch {torch.__version__} sees no GPU (torch.cuda.is_available() is False)")


def _data(scanner: Scanner):
    shape, vox = scanner.image_shape, scanner.voxel_size_mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * vox[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * vox[1]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * vox[2]
    extent = min(
        0.6 * scanner.ring_radius_mm * np.sin(np.pi * (scanner.n_radial // 2) / scanner.crystals_per_ring),
        0.45 * shape[2] * vox[2],
    )
    radius = np.sqrt(x[:, None, None] ** 2 + y[None, :, None] ** 2 + z[None, None, :] ** 2) / extent
    activity = (8.0 * (radius < 0.6) + 20.0 * ((radius >= 0.6) & (radius < 0.9))).astype(np.float32)
    mu = (0.096 * (radius < 1.0)).astype(np.float32)
    truth = scanner_truth(scanner, np.random.default_rng(5))
    settings = AcquisitionSettings(duration_s=600.0, span=SPAN)
    exp = expected_data(activity, mu, vox, scanner, truth, settings)
    norm = corr.norm_sinogram(scanner, truth.crystal_efficiency, truth.radial_factor, SPAN)
    members = scanner.sinogram_members(SPAN).astype(np.float32)[:, None, None]
    boost = 5e6 / float((norm * members * (exp.emission + exp.scatter)).sum())
    trues = norm * members * exp.emission * np.float32(boost)
    scatter = norm * members * exp.scatter * np.float32(boost)
    randoms = np.where(norm > 0, np.float32(0.2 * trues.mean()), np.float32(0.0))
    prompts = np.random.default_rng(1).poisson(trues + scatter + randoms).astype(np.float32)
    att = corr.attenuation_factors(mu, vox, scanner, SPAN)
    return dict(
        prompts=prompts,
        norm=norm,
        attenuation=att,
        randoms=randoms,
        scatter=scatter,
        duration_s=600.0 * boost,
        calibration_factor=exp.summary["effective_calibration_factor"],
    )


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_cuda_projector_matches_numba(name):
    _need_cuda()
    from petiq.recon.torch_backend import TorchJosephProjector

    sc = Scanner.from_name(name)
    ref = JosephProjector(sc, span=SPAN)
    gpu = TorchJosephProjector(sc, span=SPAN, device="cuda")
    rng = np.random.default_rng(0)
    x = rng.random(ref.image_shape, dtype=np.float32)
    views = np.arange(3, sc.n_views, 9)
    for v in (None, views):
        fwd = ref.forward(x, views=v)
        np.testing.assert_allclose(gpu.to_numpy(gpu.forward(x, views=v)), fwd, rtol=1e-4, atol=1e-5 * fwd.max())
        y = rng.random(fwd.shape, dtype=np.float32)
        back = ref.back(y, views=v)
        np.testing.assert_allclose(gpu.to_numpy(gpu.back(y, views=v)), back, rtol=1e-4, atol=1e-5 * back.max())


@pytest.mark.parametrize("name", ["tiny", "demo"])
def test_cuda_osem_matches_cpu(name):
    _need_cuda()
    sc = Scanner.from_name(name)
    data = _data(sc)
    kw = {"n_iterations": 2, "n_subsets": 21 if sc.n_views >= 42 else 6, "progress": False}
    cpu = reconstruct(
        data["prompts"], sc, SPAN, backend="cpu", **{k: v for k, v in data.items() if k != "prompts"}, **kw
    )
    gpu = reconstruct(
        data["prompts"], sc, SPAN, backend="cuda", **{k: v for k, v in data.items() if k != "prompts"}, **kw
    )
    assert gpu.shape == cpu.shape and gpu.dtype == np.float32
    np.testing.assert_allclose(gpu, cpu, rtol=2e-3, atol=2e-4 * cpu.max())
    assert abs(gpu.sum() / cpu.sum() - 1) < 1e-4

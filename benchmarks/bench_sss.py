"""Benchmark: one Watson single-scatter simulation (:func:`petiq.recon.sss.single_scatter`) of a
20 cm water cylinder (μ 0.096 cm⁻¹, uniform activity) filling the axial FOV.

* ``demo`` scanner: scatter points every 4 voxels, 36 crystals x 9 rings sampled (the test settings).
* ``--mmr``: also the mMR at e7-like coarse settings (scatter points every ``--mmr-step`` voxels,
  36 crystals x 9 rings sampled), span-1 output (354 M bins, 2.8 GB float64).

The first call includes numba compilation (cached on disk afterwards); best of ``--repeat`` is
printed, with the process's peak RSS. ::

    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/bench_sss.py
    PYTHONPATH=src /work/main/.venv/bin/python benchmarks/bench_sss.py --mmr --repeat 1
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from petiq.recon import sss
from petiq.scanner.geometry import Scanner


def cylinder(sc: Scanner, radius_mm: float) -> np.ndarray:
    nx, ny, nz = sc.image_shape
    x = (np.arange(nx) - (nx - 1) / 2) * sc.voxel_size_mm[0]
    X, Y = np.meshgrid(x, x, indexing="ij")
    return ((X**2 + Y**2) <= radius_mm**2)[:, :, None] * np.ones(nz)


def bench(sc: Scanner, repeat: int, **kw) -> None:
    act = cylinder(sc, 100.0)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        s = sss.single_scatter(act, 0.096 * act, sc, **kw)
        times.append(time.perf_counter() - t)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{sc.name}: {s.size} span-1 bins, {kw}: best {min(times):.2f} s of {[round(x, 2) for x in times]}, "
        f"total {s.sum():.4g}, peak RSS {rss:.0f} MB",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--mmr", action="store_true")
    ap.add_argument("--mmr-step", type=int, default=8)
    a = ap.parse_args()
    bench(Scanner.demo(), a.repeat, scatter_step=4, ring_step=4)
    if a.mmr:
        bench(Scanner.mmr(), a.repeat, scatter_step=a.mmr_step, ring_step=8)


if __name__ == "__main__":
    main()

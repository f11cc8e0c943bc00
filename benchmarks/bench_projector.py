"""Benchmark: full span-11 forward + back Joseph projection of the scanner's default image.

    /tmp/venv/bin/python benchmarks/bench_projector.py --scanner demo
    /tmp/venv/bin/python benchmarks/bench_projector.py --scanner mmr --threads 2

Prints seconds for forward, back and total (after a warm-up that compiles / loads the numba cache
and touches all code paths on a few views), peak RSS, the number of interpolated samples (4-tap
Joseph samples, counted over all bins) and ns per sample (wall time / samples, all threads). The
image is a uniform head-sized ellipsoid; the back projection gets a dense sinogram (forward + 1) so
that no bin is skipped, unless ``--sparse-back``. ``--views N`` projects only N evenly
spaced views (an OSEM subset, and a quick way to extrapolate the full mMR cost).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time

import numba
import numpy as np

from petiq.recon.projectors import JosephProjector
from petiq.scanner.geometry import PRESETS, Scanner


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kB on Linux
    return kb / 1024.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scanner", default="demo", choices=PRESETS)
    ap.add_argument("--span", type=int, default=11)
    ap.add_argument("--threads", type=int, default=None, help="numba threads (default: all)")
    ap.add_argument("--views", type=int, default=None, help="project only this many evenly spaced views")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions (best is reported)")
    ap.add_argument(
        "--sparse-back",
        action="store_true",
        help="back-project the forward projection itself (bins missing the object are 0 and "
        "skipped) instead of a dense sinogram (the default, worst case: no bin skipped)",
    )
    args = ap.parse_args(argv)

    if args.threads:
        numba.set_num_threads(args.threads)
    scanner = Scanner.from_name(args.scanner)
    proj = JosephProjector(scanner, span=args.span)
    views = None
    if args.views:
        views = np.unique(np.linspace(0, scanner.n_views - 1, args.views).round().astype(np.int64))

    nx, ny, nz = proj.image_shape
    # a smooth head-sized ellipsoid, so the data look like an emission image
    x = (np.arange(nx) - (nx - 1) / 2) * proj.voxel_size_mm[0]
    y = (np.arange(ny) - (ny - 1) / 2) * proj.voxel_size_mm[1]
    z = (np.arange(nz) - (nz - 1) / 2) * proj.voxel_size_mm[2]
    image = ((x[:, None, None] / 80) ** 2 + (y[None, :, None] / 100) ** 2 + (z[None, None, :] / 90) ** 2 <= 1).astype(
        np.float32
    )

    t0 = time.perf_counter()
    warm_views = np.arange(2, dtype=np.int64)
    proj.back(proj.forward(image, views=warm_views), views=warm_views)
    warm = time.perf_counter() - t0

    n_samples = proj.n_samples(views)
    best_f = best_b = float("inf")
    for _ in range(max(1, args.repeat)):
        t0 = time.perf_counter()
        sino = proj.forward(image, views=views)
        t1 = time.perf_counter()
        if not args.sparse_back:
            sino += np.float32(1.0)  # every bin non-zero: nothing skipped
        back = proj.back(sino, views=views)
        t2 = time.perf_counter()
        best_f = min(best_f, t1 - t0)
        best_b = min(best_b, t2 - t1)
    total = best_f + best_b

    n_views_done = scanner.n_views if views is None else views.size
    print(f"scanner={scanner.name} span={args.span} threads={numba.get_num_threads()} layer={numba.threading_layer()}")
    print(
        f"image={proj.image_shape} voxel_mm={proj.voxel_size_mm} sinogram={proj.sinogram_shape} "
        f"views_projected={n_views_done}/{scanner.n_views}"
    )
    print(f"warm-up (compile or cache load) s: {warm:.2f}")
    print(f"forward s: {best_f:.3f}")
    print(f"back    s: {best_b:.3f} ({'sparse: zero bins skipped' if args.sparse_back else 'dense sinogram'})")
    print(f"total   s: {total:.3f}")
    if views is not None:
        scale = scanner.n_views / views.size
        print(f"extrapolated to all {scanner.n_views} views, total s: {total * scale:.1f}")
    print(f"samples (per projection): {n_samples:,d}")
    print(f"ns per sample: forward {best_f / n_samples * 1e9:.2f}, back {best_b / n_samples * 1e9:.2f}")
    print(f"peak RSS MB: {_peak_rss_mb():.0f}")
    print(f"checksum: sino {float(sino.sum(dtype=np.float64)):.6g} back {float(back.sum(dtype=np.float64)):.6g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

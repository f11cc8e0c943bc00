"""Benchmark: OP-OSEM (default 2 iterations x 21 subsets) at a scanner's full size, one backend.

    /tmp/venv/bin/python benchmarks/bench_osem.py --scanner demo
    /tmp/venv/bin/python benchmarks/bench_osem.py --scanner demo --backend torch-cpu
    /tmp/venv/bin/python benchmarks/bench_osem.py --scanner mmr                       # minutes
    /tmp/venv/bin/python benchmarks/bench_osem.py --scanner mmr --backend torch-cpu --max-subsets 2
    /tmp/venv/bin/python benchmarks/bench_osem.py --scanner mmr --backend cuda        # on a GPU machine

Synthetic span-11 data on the scanner's default image grid (a head-sized 'white matter' ellipsoid
with a 'grey matter' shell, water μ, the simulator's normalisation truth, a flat randoms level of
20 % and a smooth scatter of 30 %; Poisson prompts) are made first (not timed; at mMR size this takes
~1 min: two full projections). Then the reconstruction is timed after a warm-up that loads the numba
cache (CPU) or initialises CUDA, on the tiny scanner (reported too):

* :func:`petiq.recon.osem.osem` (sensitivity images, all sub-iterations, data transfer; for the torch
  backends also building the projector tables),
* ``--max-subsets N``: stop after N sub-iterations and extrapolate (for slow backends); the
  extrapolation is printed as such,
* ``--corrections``: also time the randoms (fan-sum singles) and scatter estimates at this size.

Prints seconds and the peak resident memory (RSS) of the process while OSEM runs (sampled every
20 ms; it includes the prompts, multiplicative and additive sinograms the benchmark holds, as
``reconstruct_file`` does), the peak while making the data, and for CUDA the peak GPU memory.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time

import numba
import numpy as np

from petiq.listmode.simulate import scanner_calibration, scanner_truth
from petiq.recon import corrections as corr
from petiq.recon import osem as osem_mod
from petiq.recon import scatter as sct
from petiq.recon.projectors import JosephProjector
from petiq.scanner.geometry import PRESETS, Scanner


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RssSampler:
    """Largest resident set size (MB) of this process while the block runs (sampled every 20 ms)."""

    def __enter__(self):
        self.peak = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _now() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self._now())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._now())


def make_data(scanner: Scanner, span: int, total_counts: float, seed: int = 0) -> dict:
    shape, vox = scanner.image_shape, scanner.voxel_size_mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * vox[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * vox[1]
    z = (np.arange(shape[2]) - (shape[2] - 1) / 2) * vox[2]
    radius = np.sqrt((x[:, None, None] / 80) ** 2 + (y[None, :, None] / 95) ** 2 + (z[None, None, :] / 90) ** 2)
    activity = (8.0 * (radius < 0.7) + 20.0 * ((radius >= 0.7) & (radius < 0.9))).astype(np.float32)
    mu = (0.096 * (radius < 1.0)).astype(np.float32)
    del radius
    truth = scanner_truth(scanner, np.random.default_rng(5))
    norm = corr.norm_sinogram(scanner, truth.crystal_efficiency, truth.radial_factor, span)
    proj = JosephProjector(scanner, span=span)
    att = corr.attenuation_factors(mu, vox, scanner, span)  # member means of exp(-P1 mu)
    kappa = scanner_calibration(scanner, span)
    trues = att * norm * proj.forward(activity)
    scale = total_counts * 0.5 / float(trues.sum(dtype=np.float64))  # trues 50 %, scatter 30 %, randoms 20 %
    trues *= np.float32(scale)
    duration = scale / kappa
    live = norm > 0
    randoms = np.where(live, np.float32(0.2 * total_counts / live.sum()), np.float32(0.0))
    # smooth scatter: a radial cosine bump times the norm (cheap stand-in for a blurred emission)
    tp = np.arange(scanner.n_radial) - scanner.n_radial // 2
    bump = np.cos(0.5 * np.pi * np.clip(tp / (0.8 * scanner.n_radial / 2), -1, 1)).astype(np.float32)
    scatter = norm * bump[None, None, :]
    scatter *= np.float32(0.3 * total_counts / float(scatter.sum(dtype=np.float64)))
    rng = np.random.default_rng(seed)
    lam = trues
    lam += randoms
    lam += scatter
    prompts = np.empty_like(lam)
    for p0 in range(0, lam.shape[0], 16):  # Poisson by blocks of planes: no full int64 copy
        prompts[p0 : p0 + 16] = rng.poisson(lam[p0 : p0 + 16])
    del lam, trues
    mult, add = osem_mod.system_model(
        scanner,
        span,
        duration_s=duration,
        calibration_factor=kappa,
        norm=norm,
        attenuation=att,
        randoms=randoms,
        scatter=scatter,
    )
    return {
        "prompts": prompts,
        "mult": mult,
        "add": add,
        "norm": norm,
        "att": att,
        "randoms": randoms,
        "singles": truth.crystal_efficiency.astype(np.float64),
        "activity": activity,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scanner", default="demo", choices=PRESETS)
    ap.add_argument("--span", type=int, default=11)
    ap.add_argument("--backend", default="cpu", choices=osem_mod.BACKENDS)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--subsets", type=int, default=21)
    ap.add_argument("--threads", type=int, default=None, help="numba / torch CPU threads (default: all)")
    ap.add_argument("--counts", type=float, default=None, help="total prompts (default: 1e8 mMR-equivalent per bin)")
    ap.add_argument("--max-subsets", type=int, default=None, help="time only this many sub-iterations, extrapolate")
    ap.add_argument("--repeat", type=int, default=1, help="timed repetitions (best is reported)")
    ap.add_argument("--corrections", action="store_true", help="also time the randoms and scatter estimates")
    args = ap.parse_args(argv)

    if args.threads:
        numba.set_num_threads(args.threads)
        import torch

        torch.set_num_threads(args.threads)
    scanner = Scanner.from_name(args.scanner)
    counts = args.counts or 1e8 * scanner.n_bins(args.span) / Scanner.mmr().n_bins(args.span)
    t0 = time.perf_counter()
    data = make_data(scanner, args.span, counts)
    t_data = time.perf_counter() - t0
    rss_data = _peak_rss_mb()
    backend = osem_mod.resolve_backend(args.backend)
    print(
        f"scanner {scanner.name}: image {scanner.image_shape}, sinogram {scanner.sinogram_shape(args.span)} "
        f"(span {args.span}), {data['prompts'].sum():.3g} prompts; backend {backend} "
        f"(numba threads {numba.get_num_threads()}); data made in {t_data:.1f} s, peak RSS {rss_data:.0f} MB"
    )

    if not args.corrections:
        for key in ("norm", "att", "randoms", "singles"):
            data.pop(key)
    # warm-up: numba cache / CUDA context and kernels, on the tiny scanner (same compiled code)
    t0 = time.perf_counter()
    tiny = Scanner.tiny()
    warm = make_data(tiny, args.span, 1e5)
    osem_mod.osem(
        warm["prompts"],
        warm["mult"],
        warm["add"],
        tiny,
        args.span,
        n_iterations=1,
        n_subsets=4,
        backend=backend,
        progress=False,
    )
    del warm
    t_warm = time.perf_counter() - t0
    print(f"warm-up on the tiny scanner (numba cache / CUDA context): {t_warm:.1f} s")

    cuda = backend == "cuda"
    if cuda:
        import torch

        torch.cuda.reset_peak_memory_stats()
    n_total = args.iterations * args.subsets
    n_run = min(n_total, args.max_subsets) if args.max_subsets else n_total
    best = float("inf")
    image = None
    rss_osem = 0.0
    for _ in range(max(1, args.repeat)):
        with RssSampler() as rss:
            t0 = time.perf_counter()
            image = osem_mod.osem(
                data["prompts"],
                data["mult"],
                data["add"],
                scanner,
                args.span,
                n_iterations=args.iterations,
                n_subsets=args.subsets,
                backend=backend,
                progress=False,
                stop_after=n_run if n_run < n_total else None,
            )
            if cuda:
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
        rss_osem = max(rss_osem, rss.peak)
    region = data["activity"] == 8.0
    label = f"OSEM {args.iterations}x{args.subsets} ({backend})"
    if n_run < n_total:
        # set-up (sensitivity = 1 full back projection) + n_run sub-iterations measured; extrapolate linearly
        print(
            f"{label}: {n_run} of {n_total} sub-iterations in {best:.1f} s (incl. sensitivity images); "
            f"extrapolated full run ~{best * n_total / n_run:.0f} s (upper bound: the sensitivity images "
            f"are counted {n_total / n_run:.0f}x)"
        )
    else:
        print(f"{label}: {best:.2f} s; mean in the 'white matter' {image[region].mean():.2f} kBq/mL (truth 8)")
    held = sum(a.nbytes for a in data.values()) / 2**20
    print(
        f"peak RSS during OSEM {rss_osem:.0f} MB (the benchmark holds {held:.0f} MB of data arrays; "
        f"peak while making the data {rss_data:.0f} MB)"
    )
    if cuda:
        print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")

    if args.corrections:
        prompts = data["prompts"]
        pairs = corr.crystal_pair_sums(scanner, data["singles"], args.span)
        rate = float(data["randoms"].sum()) / float(pairs.sum())
        fans = corr.crystal_fan_sums(scanner, data["singles"]) * data["singles"] * rate
        t0 = time.perf_counter()
        est = corr.estimate_randoms(data["randoms"], fans, scanner, args.span)
        t_r = time.perf_counter() - t0
        t0 = time.perf_counter()
        sct.estimate_scatter(prompts, est.randoms, data["norm"], data["att"], scanner, args.span)
        t_s = time.perf_counter() - t0
        print(
            f"randoms estimate (fan-sum singles, 12 iterations): {t_r:.1f} s; scatter estimate: {t_s:.1f} s; "
            f"peak RSS {_peak_rss_mb():.0f} MB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

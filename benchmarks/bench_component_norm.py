"""Benchmark: reading a full-size mMR component norm (``.n`` + ``.n.hdr``) and assembling its sinograms.

Writes an mMR component norm with random components (and dead-time parameters) to a temporary
folder, then times :func:`petiq.recon.component_norm.read_component_norm`, the span-11
:func:`~petiq.recon.norm_assembly.norm_sinogram` without and with bucket singles (dead time),
the ``norm`` rule's :func:`~petiq.recon.norm_assembly.component_norm_file` (read + span 11 + write
the ``.npz``) and, unless ``--no-span1``, the span-1 sinogram (4084 x 252 x 344 float32, 1.4 GB).

    /tmp/venv/bin/python benchmarks/bench_component_norm.py
    /tmp/venv/bin/python benchmarks/bench_component_norm.py --no-span1 --repeat 3

Prints seconds (best of ``--repeat``) and the process's peak RSS after each step (``ru_maxrss``,
monotone: span 11 is measured before span 1). Target: span 11 < 30 s on 2 cores.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from petiq.recon import component_norm as cnm
from petiq.recon import norm_assembly, norm_writer
from petiq.scanner.geometry import Scanner


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def best(fn, repeat: int):
    out, times = None, []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, min(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--no-span1", action="store_true", help="skip the span-1 sinogram (1.4 GB)")
    ap.add_argument("--dir", default=None, help="temporary folder parent (default: system temp)")
    args = ap.parse_args(argv)
    sc = Scanner.mmr()
    rng = np.random.default_rng(0)
    lay = cnm.component_layout(sc)
    arr = {f: rng.uniform(0.5, 1.5, s).astype(np.float32) for f, s in lay.items()}
    arr["ring_dead_time_paralysing"] = rng.uniform(-3e-6, -1e-6, 64).astype(np.float32)
    arr["ring_dead_time_nonparalysing"] = rng.uniform(1e-7, 5e-7, 64).astype(np.float32)
    cn0 = cnm.ComponentNorm(**arr, quantification_factor=3.0e7)
    singles = rng.integers(50_000, 300_000, sc.n_buckets)
    work = Path(tempfile.mkdtemp(prefix="petiq-bench-cn-", dir=args.dir))
    try:
        path = norm_writer.write_component_norm(work / "norm.n", cn0, sc)
        print(f"mMR component norm: {path.stat().st_size} bytes; peak RSS {peak_rss_mb():.0f} MB")
        cn, t = best(lambda: cnm.read_component_norm(path, sc), args.repeat)
        print(f"read .n + .n.hdr              {t:8.3f} s   peak RSS {peak_rss_mb():7.0f} MB")
        s11, t = best(lambda: norm_assembly.norm_sinogram(cn, sc, 11), args.repeat)
        print(f"norm_sinogram span 11         {t:8.3f} s   peak RSS {peak_rss_mb():7.0f} MB   {s11.shape}")
        del s11
        _, t = best(lambda: norm_assembly.norm_sinogram(cn, sc, 11, singles), args.repeat)
        print(f"norm_sinogram span 11 + DT    {t:8.3f} s   peak RSS {peak_rss_mb():7.0f} MB")
        _, t = best(lambda: norm_assembly.component_norm_file(path, work / "norm.npz", sc, 11), args.repeat)
        print(f"component_norm_file span 11   {t:8.3f} s   peak RSS {peak_rss_mb():7.0f} MB")
        if not args.no_span1:
            s1, t = best(lambda: norm_assembly.norm_sinogram(cn, sc, 1), args.repeat)
            print(f"norm_sinogram span 1          {t:8.3f} s   peak RSS {peak_rss_mb():7.0f} MB   {s1.shape}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

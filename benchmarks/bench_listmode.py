"""Benchmark: thinning and histogramming a clinical-size mMR list-mode file, streaming.

Makes a PETLINK file of ``--events`` events (default 10^8, about a clinical mMR brain FDG
acquisition) over ``--duration`` s with one time tag per ms and the singles reports of every bucket
every 2 s, written chunk-wise (one second per chunk) through :class:`petiq.listmode.ListmodeWriter`; bins are uniform over the mMR's 354 M
span-1 bins (the worst case for cache locality), 70 % prompts. Then times
``thin_listmode`` (``--fraction``, default 0.5) and ``histogram_listmode`` (mMR, span 11) on it and
prints events/s for each and for both together, and the process's peak RSS.

    /tmp/venv/bin/python benchmarks/bench_listmode.py                   # 10^8 events, ~0.6 GB disk
    /tmp/venv/bin/python benchmarks/bench_listmode.py --events 1e7      # quicker

Files go to a temporary folder under ``--dir`` (default: the system temp dir) that is removed at
the end. Targets (issue 13): >= 30 M events/s for thinning + histogramming together on 2 cores;
peak RSS < 1 GB. ``--threads`` sets the histogram's threads (default: 2 where a second core is free,
``petiq.listmode.histogram.histogram_threads``); on a machine busy with other work, 1 is faster.
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

from petiq.listmode import (
    DEFAULT_CHUNK_WORDS,
    ListmodeWriter,
    histogram_listmode,
    thin_listmode,
    write_listmode,
)
from petiq.scanner.geometry import Scanner


def peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kb / 1024.0


def make_file(path: Path, n_events: int, duration_s: int, scanner, seed: int = 0, prompt_fraction: float = 0.7) -> None:
    """Write ``n_events`` events spread evenly over ``duration_s`` seconds, one second per chunk."""
    rng = np.random.default_rng(seed)
    n_bins = scanner.n_bins(1)
    header = {"image duration (sec)": duration_s, "radiopharmaceutical": "Fluorodeoxyglucose"}
    edges = (np.arange(duration_s + 1, dtype=np.int64) * n_events) // duration_s
    with ListmodeWriter(path, header, scanner=scanner) as w:
        bucket_cps = np.full(scanner.n_buckets, 1.0e5)  # singles reports as the mMR writes them
        for sec in range(duration_s):
            if (sec * 1000) % w.singles_interval_ms == 0:
                w.write_singles(bucket_cps, time_ms=sec * 1000)
            n = int(edges[sec + 1] - edges[sec])
            t = sec * 1000 + (np.arange(n, dtype=np.int64) * 1000) // max(n, 1)
            bins = rng.integers(0, n_bins, n, dtype=np.int64)
            prompt = rng.random(n) < prompt_fraction
            w.write_events(bins, prompt, t)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=float, default=1e8, help="number of events (default 1e8)")
    ap.add_argument("--duration", type=int, default=900, help="acquisition length in s (default 900)")
    ap.add_argument("--fraction", type=float, default=0.5, help="thinning fraction (default 0.5)")
    ap.add_argument("--span", type=int, default=11)
    ap.add_argument("--chunk-words", type=int, default=DEFAULT_CHUNK_WORDS)
    ap.add_argument("--dir", default=None, help="where to put the temporary files (default: system temp)")
    ap.add_argument(
        "--threads", type=int, default=None, help="histogram threads (default: 2 where a second core is free)"
    )
    args = ap.parse_args(argv)
    n_events = int(args.events)
    scanner = Scanner.mmr()

    work = Path(tempfile.mkdtemp(prefix="petiq-bench-listmode-", dir=args.dir))
    try:
        # warm-up: load the numba kernels (compiled once, cached) on a tiny file
        warm = write_listmode(work / "warm.l", [0, 1, 2], [True, False, True], [0, 1, 2], scanner=scanner)
        thin_listmode(warm, work / "warm_thin.l", 0.5, 0)
        histogram_listmode(warm, scanner, span=args.span)
        for p in work.iterdir():
            p.unlink()
        rss_base = peak_rss_mb()

        src = work / "bench.l"
        t0 = time.perf_counter()
        make_file(src, n_events, args.duration, scanner)
        t_make = time.perf_counter() - t0
        size_mb = src.stat().st_size / 2**20
        print(
            f"made {n_events:,} events + {args.duration * 1000:,} time tags: {size_mb:.0f} MiB in {t_make:.1f} s "
            f"({n_events / t_make / 1e6:.1f} M events/s)"
        )

        t0 = time.perf_counter()
        s = thin_listmode(src, work / "thin.l", args.fraction, seed=1, chunk_words=args.chunk_words)
        t_thin = time.perf_counter() - t0
        assert s.prompts_in + s.delayeds_in == n_events
        rss_thin = peak_rss_mb()
        print(
            f"thin_listmode  p={args.fraction}: {t_thin:6.2f} s  {n_events / t_thin / 1e6:6.1f} M events/s  "
            f"(kept {s.prompts_out + s.delayeds_out:,}; peak RSS so far {rss_thin:.0f} MiB)"
        )

        t0 = time.perf_counter()
        kw = {} if args.threads is None else {"threads": args.threads}
        h = histogram_listmode(src, scanner, span=args.span, chunk_words=args.chunk_words, **kw)
        t_hist = time.perf_counter() - t0
        assert h.n_prompts + h.n_delayeds == n_events
        assert h.n_singles_tags == h.singles_reports.sum() == scanner.n_buckets * ((args.duration + 1) // 2)
        rss_hist = peak_rss_mb()
        sino_mb = (h.prompts.nbytes + h.delayeds.nbytes) / 2**20
        print(
            f"histogram_listmode span {args.span}: {t_hist:6.2f} s  {n_events / t_hist / 1e6:6.1f} M events/s  "
            f"(sinograms {h.prompts.shape} x2 = {sino_mb:.0f} MiB; peak RSS so far {rss_hist:.0f} MiB)"
        )
        del h

        total = t_thin + t_hist
        rate = n_events / total / 1e6
        print(f"thin + histogram: {total:6.2f} s  {rate:6.1f} M events/s  (target >= 30)")
        print(f"peak RSS: {peak_rss_mb():.0f} MiB (after imports and warm-up: {rss_base:.0f} MiB; limit 1024)")
        ok = rate >= 30 and peak_rss_mb() < 1024
        print("PASS" if ok else "BELOW TARGET")
        return 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

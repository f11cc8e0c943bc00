"""Histogramming list-mode into span-``s`` prompt/delayed sinograms plus delayed fan sums."""

from __future__ import annotations

import concurrent.futures
import contextlib
import math
import mmap
import os
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.listmode.files import bad_bin_error, check_chunk_words, iter_word_chunks, open_checked
from petiq.listmode.header import DURATION_KEY, header_value, scanner_span1_shape, singles_settings
from petiq.listmode.words import (
    DEFAULT_CHUNK_WORDS,
    HIST_BLOCK,
    SINGLES_BUCKET_MASK,
    SINGLES_BUCKET_SHIFT,
    SINGLES_VALUE_MASK,
    histogram_chunk,
    singles_kernel,
)


@dataclass
class ListmodeHistogram:
    """Sinograms of one list-mode file. Also readable as a dict (``h["prompts"]``, ``dict(h)``).

    ``prompts`` and ``delayeds`` are views into one allocation (copy one to free the other).

    Singles: the scanner reports the singles rate of every bucket (``Scanner.crystal_buckets``)
    once per polling interval (mMR: 2 s). ``singles[k, b]`` is the sum of the rates (cps, the
    tag's 19-bit value times the header's ``%singles scale factor``) reported for bucket ``b``
    in interval ``k`` (time tags ``first + k*P <= t < first + (k+1)*P``; tags before the first
    time tag count in interval 0) and ``singles_reports[k, b]`` how many reports that sums, so
    the mean rate is ``singles / singles_reports`` where reports > 0 (NiftyPET ``mmrhist.py``
    averages its per-second bucket sums the same way). Rows: enough for the acquisition
    (``ceil(duration / P)``) and every report."""

    prompts: np.ndarray  # uint32, scanner.sinogram_shape(span)
    delayeds: np.ndarray  # uint32, scanner.sinogram_shape(span)
    delayed_fansums: np.ndarray  # int64 (n_crystals,): delayeds per crystal (index ring*crystals_per_ring + det)
    n_prompts: int
    n_delayeds: int
    n_outside_span: int  # events in span-1 sinograms the span-`span` sinograms do not include
    duration_s: float  # (last - first time tag) / 1000, as NiftyPET's lmaux.cu offsets by the first
    # tag; the header's image duration if there are fewer than two tags
    span: int
    singles: np.ndarray  # int64 (n_intervals, scanner.n_buckets): summed reported rates (cps)
    singles_reports: np.ndarray  # int32 (n_intervals, scanner.n_buckets): reports summed
    singles_interval_s: float  # polling interval P (header's %singles polling interval (sec))
    n_time_tags: int
    n_singles_tags: int  # all singles tags, including those with a bucket number out of range
    n_singles_skipped: int  # singles tags with bucket >= scanner.n_buckets (NiftyPET skips them)
    n_gantry_tags: int  # word >> 29 == 0b110, skipped
    n_gating_tags: int  # word >> 28 == 0b1110, skipped
    n_control_tags: int  # word >> 28 == 0b1111, skipped
    header: dict[str, str] = field(repr=False)

    def __getitem__(self, key: str):
        return getattr(self, key)

    def keys(self):
        return [f for f in self.__dataclass_fields__]


@dataclass(frozen=True)
class _CrystalTables:
    """Span-1 bin ``(z, r = view*n_radial + tang)`` -> its two crystals
    ``ring_a[z] + det_a(r)`` and ``ring_b[z] + det_b(r)``, crystal index ``ring*crystals_per_ring + det``."""

    ring_a: np.ndarray  # (n_sino1,) int64: ring * crystals_per_ring of the crystal paired with det_a
    ring_b: np.ndarray  # (n_sino1,) int64: same for det_b
    dets: np.ndarray  # (n_views*n_radial,) uint32: det_a | det_b << 16 (one load per event)


_TABLE_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _crystal_tables(scanner) -> _CrystalTables:
    """Span-1 bin -> crystal lookup tables, built once per scanner from ``scanner.bin_crystals``.

    The layout is separable: the ring pair depends on the span-1 sinogram ``z`` only and the
    detector pair on (view, tangential) only (a sinogram whose LORs list the pair the other way
    round gets its ring entries swapped). This is checked on a deterministic sample of bins."""
    try:
        cached = _TABLE_CACHE.get(scanner)
    except TypeError:
        cached = None
    if cached is not None:
        return cached
    n_sino, n_views, n_radial = scanner_span1_shape(scanner)
    plane = n_views * n_radial
    cpr = int(scanner.crystals_per_ring)
    if cpr > 0xFFFF:
        raise NotImplementedError(f"{cpr} crystals per ring: the fan-sum tables pack detector numbers in 16 bits")

    def crystals(bins):
        return tuple(np.asarray(a, dtype=np.int64) for a in scanner.bin_crystals(bins))

    ra_z, da_z, rb_z, db_z = crystals(np.arange(n_sino, dtype=np.int64) * plane)
    _, det_a, _, det_b = crystals(np.arange(plane, dtype=np.int64))
    same = (da_z == det_a[0]) & (db_z == det_b[0])
    swapped = ~same & (da_z == det_b[0]) & (db_z == det_a[0])
    not_separable = not np.all(same | swapped)
    ring_a = np.where(swapped, rb_z, ra_z) * cpr
    ring_b = np.where(swapped, ra_z, rb_z) * cpr
    n_bins = n_sino * plane
    rng = np.random.default_rng(12345)
    sample = np.unique(
        np.concatenate([rng.integers(0, n_bins, 20000), [0, plane - 1, plane, n_bins - plane, n_bins - 1]])
    )
    ra, da, rb, db = crystals(sample)
    zs, rs = sample // plane, sample % plane
    got = np.sort(np.stack([ra * cpr + da, rb * cpr + db]), axis=0)
    want = np.sort(np.stack([ring_a[zs] + det_a[rs], ring_b[zs] + det_b[rs]]), axis=0)
    if not_separable or not np.array_equal(got, want):
        raise NotImplementedError(
            "scanner.bin_crystals is not separable into (ring pair per sinogram) x (detector pair per "
            "view/tangential); delayed fan sums need that layout"
        )
    if int(max(ring_a.max(), ring_b.max())) + int(max(det_a.max(), det_b.max())) >= int(scanner.n_crystals):
        raise NotImplementedError("crystal index ring*crystals_per_ring + det exceeds scanner.n_crystals")
    tables = _CrystalTables(ring_a, ring_b, (det_a | (det_b << 16)).astype(np.uint32))
    with contextlib.suppress(TypeError):
        _TABLE_CACHE[scanner] = tables
    return tables


def histogram_threads() -> int:
    """Threads :func:`histogram_listmode` uses by default: 2 where this process may use 2 or more
    CPUs and at least one of them is idle (1-minute load average <= CPUs - 1), else 1.

    The result is the same whatever the thread count; only the speed differs. The second thread
    pays only on a free core: measured on the shared 2-core machine, 10^8 mMR events histogram at
    47-51 M events/s with 2 threads and 39 with 1 when it was idle, but 22-27 with 2 and 31-35
    with 1 when other jobs kept a load of about 3."""
    try:
        n_cpu = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n_cpu = os.cpu_count() or 1
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = 0.0
    return 2 if n_cpu >= 2 and load <= n_cpu - 1 else 1


def histogram_listmode(
    path: str | Path,
    scanner,
    span: int = 11,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    *,
    threads: int | None = None,
) -> ListmodeHistogram:
    """Histogram a PETLINK file into span-``span`` prompt and delayed sinograms (uint32, shape
    ``scanner.sinogram_shape(span)``) plus span-1 delayed fan sums per crystal (each delayed
    adds 1 to both its crystals; index ``ring * crystals_per_ring + det``), streaming
    ``chunk_words`` words at a time. Memory: the two sinograms plus two chunks.

    Singles tags are kept per bucket and polling interval (:class:`ListmodeHistogram`; for
    dead time and the randoms estimate); gantry, gating and control tags are counted and
    skipped. A header ``%total number of singles blocks`` other than ``scanner.n_buckets`` is
    refused.

    ``threads`` (1, 2 or 4; default :func:`histogram_threads`: 2 where a second core is free):
    threads adding into the sinograms, each owning every ``threads``-th 4 KiB stretch of them
    (no shared cache lines, no atomics, its own fan sums, summed at the end), so the result does
    not depend on it; the next chunk is read on one more thread meanwhile."""
    chunk_words = check_chunk_words(chunk_words)
    n_parts = histogram_threads() if threads is None else threads
    if isinstance(n_parts, bool) or n_parts not in (1, 2, 4):
        raise PetiqInputError(None, f"threads={threads!r} is not 1, 2 or 4", "pass threads=1, 2 or 4 (or None)")
    lm = open_checked(path, scanner)
    shape = tuple(int(v) for v in scanner.sinogram_shape(span))
    n_sino1, n_views, n_radial = scanner_span1_shape(scanner)
    plane = n_views * n_radial
    if shape[1:] != (n_views, n_radial):
        raise ValueError(f"scanner.sinogram_shape({span}) = {shape} changes views/radial bins")
    sino_map = np.ascontiguousarray(scanner.span1_to_sinogram(span), dtype=np.int64)
    if sino_map.shape != (n_sino1,) or sino_map.max(initial=-1) >= shape[0]:
        raise ValueError(f"scanner.span1_to_sinogram({span}) does not map {n_sino1} sinograms into {shape[0]}")
    t = _crystal_tables(scanner)
    n_buckets = int(scanner.n_buckets)
    interval_ms, scale = singles_settings(lm.header, lm.hdr, n_buckets)
    n_sino_bins = shape[0] * plane
    # one allocation: [delayeds | prompts | a dummy slot that tags and out-of-span events hit]
    hist = zeroed_uint32(2 * n_sino_bins + 1)
    delayeds = hist[:n_sino_bins].reshape(shape)
    prompts = hist[n_sino_bins : 2 * n_sino_bins].reshape(shape)
    fans = [np.zeros(int(scanner.n_crystals), dtype=np.int64) for _ in range(n_parts)]
    slots = [np.empty(HIST_BLOCK, dtype=np.int64) for _ in range(n_parts)]
    no_words, no_ms = np.empty(0, dtype=np.uint32), np.empty(0, dtype=np.int64)
    scratch_counts = [np.zeros(5, dtype=np.int64) for _ in range(n_parts)]  # other parts' (= part 0's)
    totals = np.zeros(3, dtype=np.int64)
    tag_counts = np.zeros(5, dtype=np.int64)  # time, singles, gantry, gating, control
    sng = _SinglesAccumulator(n_buckets, interval_ms, scale)
    sng_words = np.empty(_SINGLES_ROOM, dtype=np.uint32)
    sng_ms = np.empty(_SINGLES_ROOM, dtype=np.int64)
    first_ms = cur_ms = -1
    offset = 0
    pool = concurrent.futures.ThreadPoolExecutor(n_parts - 1) if n_parts > 1 else None
    try:
        for words in iter_word_chunks(lm.path, chunk_words):
            start_ms = cur_ms
            common = (words, lm.n_bins, plane, 1.0 / plane, sino_map, hist, n_sino_bins, t.ring_a, t.ring_b, t.dets)
            others = [
                pool.submit(
                    histogram_chunk,
                    *common,
                    fans[p],
                    slots[p],
                    cur_ms,
                    scratch_counts[p],
                    no_words,
                    no_ms,
                    p,
                    n_parts - 1,
                )
                for p in range(1, n_parts)
            ]
            try:
                n_p, n_d, n_out, fm_ms, cur_ms, bad, n_sng = histogram_chunk(
                    *common, fans[0], slots[0], cur_ms, tag_counts, sng_words, sng_ms, 0, n_parts - 1
                )
            finally:
                for fut in others:
                    fut.result()
            if bad >= 0:
                raise bad_bin_error(lm.path, offset + bad, words[bad], lm.n_bins)
            offset += words.size
            totals += (n_p, n_d, n_out)
            if first_ms < 0 and fm_ms >= 0:
                first_ms = int(fm_ms)
            if n_sng > sng_words.size:  # more singles in this chunk than room: extract them again
                sng_words = np.empty(n_sng, dtype=np.uint32)
                sng_ms = np.empty(n_sng, dtype=np.int64)
                singles_kernel(words, start_ms, sng_words, sng_ms)
            sng.add(sng_words[:n_sng], sng_ms[:n_sng], first_ms)
    finally:
        if pool is not None:
            pool.shutdown()
    fans = fans[0] if n_parts == 1 else np.sum(fans, axis=0)
    n_time = int(tag_counts[0])
    if n_time >= 2:
        duration = (cur_ms - first_ms) / 1000.0
    else:
        try:
            duration = float(header_value(lm.header, DURATION_KEY) or 0.0)
        except ValueError:
            duration = 0.0
    singles, reports = sng.result(duration)
    return ListmodeHistogram(
        prompts=prompts,
        delayeds=delayeds,
        delayed_fansums=fans,
        n_prompts=int(totals[0]),
        n_delayeds=int(totals[1]),
        n_outside_span=int(totals[2]),
        duration_s=duration,
        span=int(span),
        singles=singles,
        singles_reports=reports,
        singles_interval_s=interval_ms / 1000.0,
        n_time_tags=n_time,
        n_singles_tags=int(tag_counts[1]),
        n_singles_skipped=sng.skipped,
        n_gantry_tags=int(tag_counts[2]),
        n_gating_tags=int(tag_counts[3]),
        n_control_tags=int(tag_counts[4]),
        header=lm.header,
    )


def zeroed_uint32(n: int) -> np.ndarray:
    """``np.zeros(n, uint32)`` with its pages mapped up front where the OS can (Linux
    ``MAP_POPULATE``): the events hit the sinograms at random, and faulting 140 k pages in one at
    a time there cost more than a second per mMR histogram (measured: 1.34 s vs 0.16 s)."""
    flags = getattr(mmap, "MAP_POPULATE", None)
    if flags is None or n == 0:
        return np.zeros(n, dtype=np.uint32)
    try:
        mm = mmap.mmap(-1, 4 * n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | flags)
    except (OSError, ValueError):
        return np.zeros(n, dtype=np.uint32)
    return np.frombuffer(mm, dtype=np.uint32)  # anonymous pages are zero; the array keeps mm alive


_SINGLES_ROOM = 1 << 16  # singles tags kept per chunk by the kernel (mMR: 224 per 2 s)


class _SinglesAccumulator:
    """Singles tags -> summed rates and report counts per (polling interval, bucket)."""

    def __init__(self, n_buckets: int, interval_ms: int, scale: int):
        self.n_buckets = n_buckets
        self.interval_ms = interval_ms
        self.scale = scale
        self.sums = np.zeros((0, n_buckets), dtype=np.int64)
        self.reports = np.zeros((0, n_buckets), dtype=np.int32)
        self.skipped = 0

    def add(self, words: np.ndarray, ms: np.ndarray, first_ms: int) -> None:
        if not words.size:
            return
        bucket = (words >> np.uint32(SINGLES_BUCKET_SHIFT)) & np.uint32(SINGLES_BUCKET_MASK)
        value = (words & np.uint32(SINGLES_VALUE_MASK)).astype(np.int64) * self.scale
        ok = bucket < self.n_buckets
        self.skipped += int(ok.size - np.count_nonzero(ok))
        # ms = -1: before the first time tag (then first_ms may still be -1): interval 0
        k = np.where(ms >= 0, (ms - max(first_ms, 0)) // self.interval_ms, 0)[ok]
        bucket = bucket[ok].astype(np.int64)
        if not k.size:
            return
        self._grow(int(k.max()) + 1)
        np.add.at(self.sums, (k, bucket), value[ok])
        np.add.at(self.reports, (k, bucket), 1)

    def _grow(self, rows: int) -> None:
        if rows > self.sums.shape[0]:
            more = max(rows, 2 * self.sums.shape[0]) - self.sums.shape[0]
            self.sums = np.concatenate([self.sums, np.zeros((more, self.n_buckets), np.int64)])
            self.reports = np.concatenate([self.reports, np.zeros((more, self.n_buckets), np.int32)])

    def result(self, duration_s: float) -> tuple[np.ndarray, np.ndarray]:
        """Rows: ``ceil(duration / P)`` or up to the last report, whichever is more."""
        used = np.flatnonzero(self.reports.any(axis=1))
        rows = math.ceil(round(duration_s * 1000.0) / self.interval_ms)
        rows = max(rows, int(used[-1]) + 1 if used.size else 0)
        self._grow(rows)
        return self.sums[:rows].copy(), self.reports[:rows].copy()

"""Singles, gantry, gating and control tags: the scanner's buckets, parsing, writing, thinning.

Expected numbers come from the format description, decoded here without petiq: a PETLINK 32-bit
tag has bit 31 set; ``word >> 29`` is 0b100 for an elapsed-time tag (bits 0-28: ms), 0b101 for a
singles report (NiftyPET ``lm/src/hst.cu``: bucket ``(word & 0x1fffffff) >> 19``, rate
``(word & 0x7ffff) << 3``, buckets >= 224 skipped), 0b110 gantry; ``word >> 28`` 0b1110 gating,
0b1111 control. The mMR header (STIR ``examples/samples/mMR_listmode.l.hdr``) says
``%singles polling interval (sec):=2``, ``%singles scale factor:=8``,
``%total number of singles blocks:=224``.
"""

from __future__ import annotations

import numpy as np
import pytest

import petiq.listmode.histogram as histogram_mod
from petiq.core.errors import PetiqInputError
from petiq.listmode import (
    ListmodeWriter,
    encode_events,
    header_value,
    histogram_listmode,
    read_listmode,
    read_listmode_header,
    thin_listmode,
    write_listmode_words,
)
from petiq.listmode.sinograms import read_sinograms, require_singles, write_sinograms
from petiq.scanner.geometry import Scanner

TIME, SINGLES, GANTRY, GATING, CONTROL = 0x80000000, 0xA0000000, 0xC0000000, 0xE0000000, 0xF0000000
INTERVAL_MS, SCALE = 2000, 8  # mMR header values (see the module docstring)


@pytest.fixture(scope="module")
def tiny():
    return Scanner.tiny()


# ------------------------------------------------------------------------ buckets
def test_mmr_buckets_follow_niftypet_norm_lut():
    """NiftyPET ``src/norm.cu``: for sinogram bin (angle ai, radial wi) its crystals are
    c1 = floor((ai + (NCRS - 2 + W/2 - wi)/2) mod NCRS), c2 = floor((ai + (2 NCRS - 2 - W/2 + wi)/2)
    mod NCRS) and their buckets b = c / 18 + 28 (r / 8). petiq's bucket of the two crystals of
    the same bin (any ring) must be that pair."""
    sc = Scanner.mmr()
    ncrs, w = 504, 344
    ai, wi = np.meshgrid(np.arange(252), np.arange(w), indexing="ij")
    c1 = np.floor(np.fmod(ai + 0.5 * (ncrs - 2 + w / 2 - wi), ncrs)).astype(np.int64)
    c2 = np.floor(np.fmod(ai + 0.5 * (2 * ncrs - 2 - w / 2 + wi), ncrs)).astype(np.int64)
    det_a, det_b = sc.view_radial_to_dets(ai, wi)
    buckets = sc.crystal_buckets()
    assert buckets.shape == (64, 504) and sc.n_buckets == 224
    for ring in (0, 7, 8, 33, 63):
        want = np.sort(np.stack([c1 // 18, c2 // 18]) + 28 * (ring // 8), axis=0)
        got = np.sort(np.stack([buckets[ring][det_a], buckets[ring][det_b]]), axis=0)
        np.testing.assert_array_equal(got, want)
    # every bucket: 8 rings x 18 positions = two whole blocks, 16 of them gaps
    counts = np.bincount(buckets.ravel(), minlength=224)
    assert np.all(counts == 144)
    gaps = np.bincount(buckets[:, sc.is_gap(np.arange(504))].ravel(), minlength=224)
    assert np.all(gaps == 16)


def test_reduced_presets_group_buckets_the_same_way():
    for sc, n in ((Scanner.demo(), 14 * 4), (Scanner.tiny(), 4 * 1)):
        b = sc.crystal_buckets()
        assert sc.n_buckets == n
        assert np.array_equal(np.unique(b), np.arange(n))
        # det 1..18 in bucket 0 of ring group 0, det 0 (a gap) closes the last bucket of the ring
        assert np.all(b[0, 1:19] == 0) and b[0, 0] == sc.buckets_per_ring - 1


# ------------------------------------------------------------------------ a decoder of our own
def decode_tags(words: np.ndarray, n_buckets: int):
    """Singles per (interval, bucket), reports, and tag counts, straight from the description."""
    w = words.astype(np.int64)
    is_tag = w >= 0x80000000
    top3 = w >> 29
    is_time = is_tag & (top3 == 4)
    times = np.where(is_time, w & 0x1FFFFFFF, -1)
    cur = np.maximum.accumulate(np.where(is_time, np.arange(w.size), -1))  # last time tag index so far
    cur_ms = np.where(cur >= 0, times[np.maximum(cur, 0)], -1)
    first_ms = int(times[is_time][0]) if is_time.any() else 0
    is_sng = is_tag & (top3 == 5)
    bucket = (w & 0x1FFFFFFF) >> 19
    value = (w & 0x7FFFF) << 3
    keep = is_sng & (bucket < n_buckets)
    k = np.where(cur_ms >= 0, (cur_ms - first_ms) // INTERVAL_MS, 0)
    rows = int(k[keep].max()) + 1 if keep.any() else 0
    sums = np.zeros((rows, n_buckets), np.int64)
    reports = np.zeros((rows, n_buckets), np.int64)
    for i in np.flatnonzero(keep):  # a plain loop: the test's own arithmetic
        sums[k[i], bucket[i]] += value[i]
        reports[k[i], bucket[i]] += 1
    counts = {
        "n_time_tags": int(is_time.sum()),
        "n_singles_tags": int(is_sng.sum()),
        "n_singles_skipped": int((is_sng & ~keep).sum()),
        "n_gantry_tags": int((is_tag & (top3 == 6)).sum()),
        "n_gating_tags": int((is_tag & ((w >> 28) == 0xE)).sum()),
        "n_control_tags": int((is_tag & ((w >> 28) == 0xF)).sum()),
    }
    return sums, reports, counts


def tag_stream(scanner, seed=0, duration_ms=7000, n_events=3000) -> np.ndarray:
    """Events and time tags 0..duration, singles reports of every bucket each 2 s (plus an extra
    one, one before the first time tag and one with a bucket number beyond the scanner's), and
    gantry, gating and control tags sprinkled in."""
    rng = np.random.default_rng(seed)
    nb = scanner.n_buckets
    t = np.sort(rng.integers(0, duration_ms, n_events))
    events = encode_events(rng.integers(0, scanner.n_bins(1), n_events), rng.random(n_events) < 0.7, t)
    tail = [TIME | m for m in range(int(t[-1]) + 1, duration_ms + 1)]
    words = [TIME, *events, *tail]  # time tags 0 .. duration, as the scanner (and petiq) writes them
    tag_at = {}  # position of the time tag of ms m in `words`
    for i, x in enumerate(words):
        if x >> 29 == 4:
            tag_at[int(x) & 0x1FFFFFFF] = i
    inserts = []  # (position, word)
    for m in range(INTERVAL_MS, duration_ms, INTERVAL_MS):
        for b in range(nb):
            inserts.append((tag_at[m] + 1, SINGLES | (b << 19) | int(rng.integers(0, 1 << 19))))
    inserts.append((tag_at[3001] + 1, SINGLES | (1 << 19) | 77))  # a second report in interval 1
    inserts.append((0, SINGLES | (2 << 19) | 5))  # before any time tag: interval 0
    inserts.append((tag_at[1], SINGLES | (2 << 19) | 6))  # (one more in interval 0)
    inserts.append((tag_at[100], SINGLES | (nb << 19) | 9))  # bucket out of range: skipped
    inserts.append((tag_at[100], SINGLES | (1023 << 19) | 9))
    for x in (GANTRY | 3, GATING | 1, GATING | 0xFFFFFFF, CONTROL | 2, CONTROL):
        for _ in range(int(rng.integers(1, 4))):
            inserts.append((int(rng.integers(0, len(words))), x))
    for pos, x in sorted(inserts, key=lambda p: p[0], reverse=True):
        words.insert(pos, x)
    return np.array(words, dtype=np.uint32)


# ------------------------------------------------------------------------ histogram
def test_histogram_singles_and_tag_counts_match_own_decoder(tmp_path, tiny, monkeypatch):
    words = tag_stream(tiny)
    path = write_listmode_words(tmp_path / "tags.l", words, scanner=tiny)
    sums, reports, counts = decode_tags(words, tiny.n_buckets)
    assert counts["n_singles_skipped"] == 2 and reports[1, 1] == 2 and reports[0, 2] == 2
    h = histogram_listmode(path, tiny, span=11)
    rows = max(sums.shape[0], int(np.ceil(h.duration_s * 1000 / INTERVAL_MS)))
    want = np.zeros((rows, tiny.n_buckets), np.int64)
    want[: sums.shape[0]] = sums
    np.testing.assert_array_equal(h.singles, want)
    np.testing.assert_array_equal(h.singles_reports[: reports.shape[0]], reports)
    assert h.singles_reports[reports.shape[0] :].sum() == 0
    assert h.singles.dtype == np.int64 and h.singles_interval_s == 2.0
    for key, value in counts.items():
        assert h[key] == value, key
    # the events are unaffected by the tags
    lm = read_listmode(path, scanner=tiny)
    assert h.n_prompts == lm.n_prompts and h.n_delayeds == lm.n_delayeds
    # chunking (with tiny chunks) and a kernel buffer too small for the chunk's singles
    monkeypatch.setattr(histogram_mod, "_SINGLES_ROOM", 3)
    g = histogram_listmode(path, tiny, span=11, chunk_words=37)
    np.testing.assert_array_equal(g.singles, h.singles)
    np.testing.assert_array_equal(g.singles_reports, h.singles_reports)
    assert [g[k] for k in counts] == [h[k] for k in counts]
    np.testing.assert_array_equal(g.prompts, h.prompts)


def test_header_singles_keys_are_checked(tmp_path, tiny):
    words = tag_stream(tiny, n_events=50, duration_ms=4100)
    for header, problem in (
        ({"%total number of singles blocks": "224"}, "singles buckets"),
        ({"%singles polling interval (sec)": "0"}, "polling interval"),
        ({"%singles scale factor": "-1"}, "scale factor"),
    ):
        with pytest.raises(PetiqInputError, match=problem):
            write_listmode_words(tmp_path / "bad.l", words, header, scanner=tiny)
    # a header with another polling interval and scale (written without a scanner) is followed
    path = write_listmode_words(
        tmp_path / "p1.l",
        words,
        {
            "%singles polling interval (sec)": "1",
            "%singles scale factor": "4",
            "%number of projections": "28",
            "%number of views": "36",
            "number of rings": "8",
            "%maximum ring difference": "7",
            "%total number of singles blocks": "4",
            "%number of segments": "15",
            "%segment table": "{8,7,7,6,6,5,5,4,4,3,3,2,2,1,1}",
        },
    )
    h = histogram_listmode(path, tiny, span=1)
    w = words.astype(np.int64)
    sng = (w >> 29) == 5
    ok = sng & (((w & 0x1FFFFFFF) >> 19) < 4)
    assert h.singles_interval_s == 1.0 and h.singles.sum() == int(((w[ok] & 0x7FFFF) * 4).sum())


# ------------------------------------------------------------------------ writing like the scanner
def test_writer_singles_read_back_by_own_decoder(tmp_path, tiny):
    rng = np.random.default_rng(4)
    rates = rng.uniform(0, 4e5, size=(3, tiny.n_buckets))
    with ListmodeWriter(tmp_path / "w.l", {"image duration (sec)": 6}, scanner=tiny) as w:
        assert (w.singles_interval_ms, w.singles_scale, w.n_buckets) == (2000, 8, 4)
        for k in range(3):
            w.write_singles(rates[k], time_ms=2000 * k)
            w.write_events([5, 6], [True, False], [2000 * k, 2000 * k + 3])
    words = np.fromfile(tmp_path / "w.l", dtype="<u4").astype(np.int64)
    sng = np.flatnonzero((words >> 29) == 5)
    assert sng.size == 3 * tiny.n_buckets
    bucket = (words[sng] & 0x1FFFFFFF) >> 19
    value = (words[sng] & 0x7FFFF) << 3
    np.testing.assert_array_equal(bucket, np.tile(np.arange(tiny.n_buckets), 3))
    np.testing.assert_array_equal(value, (np.rint(rates / 8) * 8).astype(np.int64).ravel())
    # each report follows the time tag of its ms: the word before the first report of k is tag 2000k
    for k in range(3):
        before = words[sng[k * tiny.n_buckets] - 1]
        assert before >> 29 == 4 and (before & 0x1FFFFFFF) == 2000 * k
    hdr = read_listmode_header(tmp_path / "w.l")
    assert header_value(hdr, "total number of singles blocks") == "4"
    with pytest.raises(PetiqInputError, match="one per bucket"), ListmodeWriter(tmp_path / "x.l", scanner=tiny) as w:
        w.write_singles([1.0, 2.0])
    assert not (tmp_path / "x.l").exists()  # an error inside the writer leaves no file
    for bad, problem in (([1e9] * 4, "19 bits"), ([-1.0] * 4, "non-negative"), ([np.nan] * 4, "finite")):
        with pytest.raises(PetiqInputError, match=problem), ListmodeWriter(tmp_path / "y.l", scanner=tiny) as w:
            w.write_singles(bad)
    with pytest.raises(PetiqInputError, match="time order"), ListmodeWriter(tmp_path / "z.l", scanner=tiny) as w:
        w.write_events([1], [True], [50])
        w.write_singles([0.0] * 4, time_ms=10)


def test_thinning_keeps_singles_and_every_tag(tmp_path, tiny):
    words = tag_stream(tiny, seed=2)
    src = write_listmode_words(tmp_path / "src.l", words, scanner=tiny)
    thin_listmode(src, tmp_path / "half.l", 0.3, seed=5)
    out = np.fromfile(tmp_path / "half.l", dtype="<u4")
    np.testing.assert_array_equal(out[out >= 0x80000000], words[words >= 0x80000000])
    a = histogram_listmode(src, tiny, span=11)
    b = histogram_listmode(tmp_path / "half.l", tiny, span=11)
    np.testing.assert_array_equal(a.singles, b.singles)
    np.testing.assert_array_equal(a.singles_reports, b.singles_reports)
    assert b.n_prompts < a.n_prompts


# ------------------------------------------------------------------------ sinogram files
def test_sinogram_file_keeps_singles_and_old_files_still_read(tmp_path, tiny):
    words = tag_stream(tiny, n_events=100)
    h = histogram_listmode(write_listmode_words(tmp_path / "s.l", words, scanner=tiny), tiny, span=11)
    write_sinograms(tmp_path / "s.npz", h, tiny.name)
    got = read_sinograms(tmp_path / "s.npz")
    np.testing.assert_array_equal(got["singles"], h.singles)
    np.testing.assert_array_equal(got["singles_reports"], h.singles_reports)
    assert got["n_gating_tags"] == h.n_gating_tags and isinstance(got["n_control_tags"], int)
    singles, reports, interval = require_singles(got, tmp_path / "s.npz", tiny.n_buckets)
    assert interval == 2.0 and singles.shape == reports.shape
    with pytest.raises(PetiqInputError, match="buckets"):
        require_singles(got, tmp_path / "s.npz", 224)
    # a file from before the tags were kept: reads, and says what to do where singles are needed
    old = {
        k: h[k]
        for k in (
            "prompts",
            "delayeds",
            "delayed_fansums",
            "span",
            "duration_s",
            "n_prompts",
            "n_delayeds",
            "n_outside_span",
        )
    }
    write_sinograms(tmp_path / "old.npz", old, tiny.name)
    got_old = read_sinograms(tmp_path / "old.npz")
    assert "singles" not in got_old and got_old["n_prompts"] == h.n_prompts
    with pytest.raises(PetiqInputError, match="histogram the list-mode again"):
        require_singles(got_old, tmp_path / "old.npz", tiny.n_buckets)
    # half the tag keys is an error, not a silent half-file
    with pytest.raises(ValueError, match="tag keys"):
        write_sinograms(tmp_path / "half.npz", {**old, "singles": h.singles}, tiny.name)

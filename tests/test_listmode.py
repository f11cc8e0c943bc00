"""PETLINK list-mode: decoding, writing, thinning, histogramming, and every bad-file case."""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import pytest

from petiq.core.errors import PetiqInputError
from petiq.listmode import (
    MMR_HEADER_DEFAULTS,
    ListmodeWriter,
    encode_events,
    header_path,
    header_value,
    histogram_listmode,
    iter_listmode_chunks,
    read_listmode,
    read_listmode_header,
    thin_listmode,
    write_listmode,
    write_listmode_words,
)
from petiq.scanner.geometry import Scanner

TIME, DEAD, GANTRY, GATING, CONTROL = 0x80000000, 0xA0000000, 0xC0000000, 0xE0000000, 0xF0000000
PROMPT = 0x40000000


@pytest.fixture(scope="module")
def tiny():
    return Scanner.tiny()


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def words_of(path) -> np.ndarray:
    return np.fromfile(path, dtype="<u4")


def random_events(scanner, n, seed=0, duration_ms=3000, prompt_fraction=0.7):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, duration_ms, n))
    b = rng.integers(0, scanner.n_bins(1), n)
    p = rng.random(n) < prompt_fraction
    return b, p, t


def tagged_stream(scanner, n=4000, seed=3) -> np.ndarray:
    """Events with time tags every ms plus dead-time, gantry, gating and control tags sprinkled."""
    b, p, t = random_events(scanner, n, seed=seed, duration_ms=200)
    words = encode_events(b, p, t)
    rng = np.random.default_rng(seed + 1)
    extra = np.array([DEAD | 17, GANTRY | 5, GATING | 1, CONTROL | 9], dtype=np.uint32)
    at = np.sort(rng.integers(0, words.size, 60))
    return np.insert(words, at, extra[np.arange(at.size) % 4])


@pytest.fixture(scope="module")
def big_file(tmp_path_factory, tiny):
    """2e5 events (about 70 % prompts) with all kinds of tags: shared by the thinning tests."""
    d = tmp_path_factory.mktemp("big")
    b, p, t = random_events(tiny, 200_000, seed=11, duration_ms=4000)
    words = encode_events(b, p, t)
    rng = np.random.default_rng(12)
    extra = np.array([DEAD | 3, GANTRY | 4, GATING | 2, CONTROL | 1], dtype=np.uint32)
    at = np.sort(rng.integers(0, words.size, 400))
    words = np.insert(words, at, extra[np.arange(at.size) % 4])
    path = d / "big.l"
    write_listmode_words(path, words, {"isotope name": "F-18", "lab note": "kept"}, scanner=tiny)
    return path


# ------------------------------------------------------------------------------ decoding
def test_hand_built_stream_decodes(tmp_path, tiny):
    words = np.array(
        [
            PROMPT | 5,  # before any time tag -> t = 0
            DEAD | 123,
            TIME | 1,
            7,  # delayed, bin 7
            GANTRY | 42,
            GATING | 1,
            PROMPT | 64511,  # last span-1 bin of the tiny scanner
            CONTROL | 3,
            TIME | 2,
            TIME | 3,
            0,  # delayed, bin 0
            DEAD | 9,
            TIME | 4,
        ],
        dtype=np.uint32,
    )
    assert tiny.n_bins(1) == 64512
    path = write_listmode_words(tmp_path / "hand.l", words, scanner=tiny)
    assert np.array_equal(words_of(path), words)
    lm = read_listmode(path)
    assert lm.bins.dtype == np.int64 and lm.prompt.dtype == np.bool_ and lm.time_ms.dtype == np.int64
    assert lm.bins.tolist() == [5, 7, 64511, 0]
    assert lm.prompt.tolist() == [True, False, True, False]
    assert lm.time_ms.tolist() == [0, 1, 1, 3]
    # the acquisition length is last minus first time tag (tags 1..4: 3 ms), not the last tag
    assert lm.duration_ms == 3 and lm.first_time_ms == 1 and lm.n_time_tags == 4
    assert lm.header["%total listmode word counts"] == str(words.size)
    assert lm.header["image duration (sec)"] == "0.003"
    for cw in (1, 2, 3, 5, 100):
        chunks = list(iter_listmode_chunks(path, chunk_words=cw))
        assert np.concatenate([c.bins for c in chunks]).tolist() == lm.bins.tolist()
        assert np.concatenate([c.prompt for c in chunks]).tolist() == lm.prompt.tolist()
        assert np.concatenate([c.time_ms for c in chunks]).tolist() == lm.time_ms.tolist()


def test_encode_one_time_tag_per_millisecond():
    w = encode_events([1, 2, 3], [True, True, False], [0, 0, 3])
    assert [hex(x) for x in w] == [
        "0x40000001",
        "0x40000002",
        "0x80000001",
        "0x80000002",
        "0x80000003",
        "0x3",
    ]


# ------------------------------------------------------------------------------ writing
def test_write_read_round_trip(tmp_path, tiny):
    b, p, t = random_events(tiny, 20_000, seed=1, duration_ms=2500)
    path = write_listmode(tmp_path / "rt.l", b, p, t, scanner=tiny)
    assert header_path(path) == tmp_path / "rt.l.hdr"
    lm = read_listmode(path, scanner=tiny)
    assert np.array_equal(lm.bins, b) and np.array_equal(lm.prompt, p) and np.array_equal(lm.time_ms, t)
    words = words_of(path)
    # acquisition rounded up to whole seconds: time tags 0 .. 3000, one per ms, in order, so that
    # last minus first tag is the length
    tags = words[words >= TIME]
    assert np.array_equal(tags, TIME | np.arange(0, 3001, dtype=np.uint32))
    assert int(lm.header["%total listmode word counts"]) == words.size == b.size + 3001
    assert lm.header["image duration (sec)"] == "3" and lm.duration_ms == 3000
    # chunked reading gives the same events
    chunks = list(iter_listmode_chunks(path, chunk_words=4097))
    assert np.array_equal(np.concatenate([c.time_ms for c in chunks]), t)
    assert np.array_equal(np.concatenate([c.bins for c in chunks]), b)


def test_header_defaults_and_unknown_keys(tmp_path, tiny):
    given = {
        "my lab key": "hello",
        "isotope name": "C-11",
        "image duration (sec)": 2,
        "%study date (yyyy:mm:dd)": "2021:03:04",
    }
    path = write_listmode(tmp_path / "h.l", [3, 4], [True, False], [10, 1500], given)
    text = header_path(path).read_text()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert lines[0] == "!INTERFILE:=" and lines[-1] == "!END OF INTERFILE:="
    hdr = read_listmode_header(path)
    # every default key is there; given values win; unknown keys kept
    norm = {k.lstrip("!%").lower(): v for k, v in hdr.items()}
    for k in MMR_HEADER_DEFAULTS:
        assert k.lstrip("!%").lower() in norm, k
    assert hdr["my lab key"] == "hello" and hdr["isotope name"] == "C-11"
    assert hdr["%study date (yyyy:mm:dd)"] == "2021:03:04"
    assert hdr["data format"] == "CoincidenceList"
    assert hdr["%SMS-MI header name space"] == "PETLINK bin address"
    assert hdr["image duration (sec)"] == "2"
    assert hdr["%total listmode word counts"] == str(2 + 2001)
    assert hdr["!name of data file"] == "h.l"
    assert hdr["%number of projections"] == "344" and hdr["%number of views"] == "252"  # mMR defaults
    assert words_of(path).size == 2003
    # given keys keep their relative order
    keys = list(hdr)
    assert keys.index("my lab key") < keys.index("isotope name") < keys.index("image duration (sec)")
    # scanner geometry fills the geometry keys
    h2 = read_listmode_header(write_listmode(tmp_path / "t.l", [1], [True], [0], scanner=tiny))
    assert h2["%number of projections"] == "28" and h2["%number of views"] == "36"
    assert h2["number of rings"] == "8" and h2["%maximum ring difference"] == "7"
    # the span-11 layout, as the mMR writes it next to '%axial compression:=1': 8 rings, ring
    # differences -5..5 have ring sums 0..14 (15 sinograms); 6..7 (and -7..-6) the sums 6, 7, 8
    assert header_value(h2, "segment table") == "{15,3,3}"
    assert header_value(h2, "number of segments") == "3" and header_value(h2, "axial compression") == "1"
    # a header read back and written again keeps every key, in order
    lm = read_listmode(path)
    again = write_listmode(tmp_path / "again.l", lm.bins, lm.prompt, lm.time_ms, lm.header)
    h3 = read_listmode_header(again)
    assert list(h3) == list(hdr)
    assert {k: v for k, v in h3.items() if k != "!name of data file"} == {
        k: v for k, v in hdr.items() if k != "!name of data file"
    }


def test_writer_validates_and_leaves_nothing(tmp_path, tiny):
    out = tmp_path / "bad.l"
    cases = [
        (([1, 2], [True, False], [5, 4]), "time order"),
        (([1, 2], [True], [1, 2]), "same length"),
        (([1, 10**8], [True, False], [1, 2]), "span-1 bin"),
        (([-1, 2], [True, False], [1, 2]), "span-1 bin"),
    ]
    for (b, p, t), what in cases:
        with pytest.raises(PetiqInputError, match=what) as err:
            write_listmode(out, b, p, t, scanner=tiny)
        assert "bad.l" in str(err.value) and "Fix:" in str(err.value)
    with pytest.raises(PetiqInputError, match="image duration"):
        write_listmode(out, [1], [True], [2500], {"image duration (sec)": "2"}, scanner=tiny)
    with pytest.raises(PetiqInputError, match="not list-mode"):
        write_listmode(out, [1], [True], [0], {"data format": "sinogram"})
    with pytest.raises(PetiqInputError, match="scanner has"):
        write_listmode(out, [1], [True], [0], {"%number of views": "252"}, scanner=tiny)
    with pytest.raises(PetiqInputError, match="time order"):
        with ListmodeWriter(out, scanner=tiny) as w:
            w.write_events([1], [True], [50])
            w.write_events([1], [True], [10])
    assert list(tmp_path.iterdir()) == []  # no data, no header, no temporaries


# ------------------------------------------------------------------------------ bad files
def _expect(path_fragment, problem, fn, *args, **kw):
    with pytest.raises(PetiqInputError, match=problem) as err:
        fn(*args, **kw)
    msg = str(err.value)
    assert path_fragment in msg and "Fix:" in msg, msg
    return msg


def test_bad_files_fail_clearly(tmp_path, tiny):
    good = write_listmode(tmp_path / "good.l", *random_events(tiny, 500, duration_ms=100), scanner=tiny)
    data = good.read_bytes()
    hdr_text = header_path(good).read_text()

    def make(name, data_bytes, header_text):
        p = tmp_path / name
        p.write_bytes(data_bytes)
        if header_text is not None:
            header_path(p).write_text(header_text)
        return p

    readers = [
        lambda p: read_listmode(p),
        lambda p: iter_listmode_chunks(p, chunk_words=64),  # fails at the call, before any chunk
        lambda p: thin_listmode(p, tmp_path / "thin_out.l", 0.5, 1),
        lambda p: histogram_listmode(p, tiny, 3),
    ]
    odd = make("odd.l", data + b"\x01\x02", hdr_text)
    trunc = make("trunc.l", data[:-8], hdr_text)
    longer = make("longer.l", data + data[:8], hdr_text)
    nohdr = make("nohdr.l", data, None)
    notinter = make("notinter.l", data, "hello world\nthis is not a header\n")
    sino = make("sino.l", data, hdr_text.replace("data format:=CoincidenceList", "data format:=sinogram"))
    space = make("space.l", data, hdr_text.replace("PETLINK bin address", "sinogram subheader"))
    nocount = make("nocount.l", data, "\n".join(ln for ln in hdr_text.splitlines() if "word counts" not in ln))
    bits = make("bits.l", data, hdr_text.replace("(bits):=32", "(bits):=64"))
    for read in readers:
        _expect("odd.l", "not a multiple of 4", read, odd)
        _expect("trunc.l", "truncated", read, trunc)
        _expect("longer.l", "longer than its header", read, longer)
        _expect("nohdr.l.hdr", "header .* is missing", read, nohdr)
        _expect("notinter.l.hdr", "not an Interfile header", read, notinter)
        _expect("sino.l.hdr", "not list-mode", read, sino)
        _expect("space.l.hdr", "sinogram header", read, space)
        _expect("nocount.l.hdr", "not a list-mode header", read, nocount)
        _expect("bits.l.hdr", "64-bit", read, bits)
    assert not (tmp_path / "thin_out.l").exists()

    # an event beyond the scanner's bins (header says tiny geometry)
    bad_words = words_of(good).copy()
    bad_words[10] = PROMPT | 64512
    beyond = write_listmode_words(tmp_path / "beyond.l", bad_words)  # no scanner: header is mMR
    header_path(beyond).write_text(hdr_text.replace(f":={words_of(good).size}", f":={bad_words.size}"))
    _expect("beyond.l", "beyond the scanner's 64512", read_listmode, beyond)
    _expect("beyond.l", "beyond the scanner's 64512", lambda p: list(iter_listmode_chunks(p, 7)), beyond)
    _expect("beyond.l", "beyond the scanner's 64512", thin_listmode, beyond, tmp_path / "o.l", 1.0, 0)
    _expect("beyond.l", "beyond the scanner's 64512", histogram_listmode, beyond, tiny)
    assert not (tmp_path / "o.l").exists() and not (tmp_path / "o.l.hdr").exists()
    # a file written for another scanner
    mmr_file = write_listmode(tmp_path / "mmr.l", [10**6], [True], [0])
    _expect("mmr.l.hdr", "scanner has", histogram_listmode, mmr_file, tiny)
    _expect("mmr.l.hdr", "scanner has", read_listmode, mmr_file, scanner=tiny)


def test_fraction_and_seed_out_of_range(tmp_path, tiny, big_file):
    for f in (0, 0.0, -0.1, 1.0000001, 1.5, math.nan, math.inf, "0.5", None, True):
        _expect("big.l", "fraction", thin_listmode, big_file, tmp_path / "x.l", f, 1)
    for s in (-1, 1.5, "1"):
        _expect("big.l", "seed", thin_listmode, big_file, tmp_path / "x.l", 0.5, s)
    _expect("big.l", "overwrite the input", thin_listmode, big_file, big_file, 0.5, 1)
    assert not (tmp_path / "x.l").exists()


# ------------------------------------------------------------------------------ thinning
@pytest.fixture(scope="module")
def thinned(tmp_path_factory, big_file):
    d = tmp_path_factory.mktemp("thin")
    before = (sha(big_file), sha(header_path(big_file)), big_file.stat().st_mtime_ns)
    summary = thin_listmode(big_file, d / "t30.l", 0.3, seed=2024, chunk_words=1 << 16)
    after = (sha(big_file), sha(header_path(big_file)), big_file.stat().st_mtime_ns)
    return d / "t30.l", summary, before, after


def test_thinning_follows_binomial_law(thinned):
    _, s, _, _ = thinned
    assert s.prompts_in + s.delayeds_in == 200_000
    for n_in, n_out in ((s.prompts_in, s.prompts_out), (s.delayeds_in, s.delayeds_out)):
        assert n_in > 50_000
        mean, sd = 0.3 * n_in, math.sqrt(n_in * 0.3 * 0.7)
        assert abs(n_out - mean) < 4 * sd, (n_in, n_out)


def test_thinning_keeps_every_tag_in_place_and_matches_spec(thinned, big_file):
    out, s, _, _ = thinned
    src_words, out_words = words_of(big_file), words_of(out)
    is_tag = src_words >= TIME
    assert np.array_equal(out_words[out_words >= TIME], src_words[is_tag])  # all tags, same order
    assert s.tags == int(is_tag.sum()) and s.words_out == out_words.size
    # exactly the documented rule: one uniform per word, event kept iff u < fraction
    u = np.random.default_rng(2024).random(src_words.size)
    assert np.array_equal(out_words, src_words[is_tag | (u < 0.3)])
    hdr = read_listmode_header(out)
    assert hdr["%total listmode word counts"] == str(out_words.size)
    assert hdr["%petiq source file sha256"] == s.source_sha256 == sha(big_file)
    assert hdr["%petiq dose fraction"] == "0.3" and hdr["%petiq thinning seed"] == "2024"
    assert hdr["%petiq source prompts"] == str(s.prompts_in) and hdr["%petiq prompts"] == str(s.prompts_out)
    assert hdr["%petiq source delayeds"] == str(s.delayeds_in) and hdr["%petiq delayeds"] == str(s.delayeds_out)
    assert hdr["lab note"] == "kept" and hdr["!name of data file"] == "t30.l"
    # every source header line is kept, in order; only changed values differ
    src_lines = header_path(big_file).read_text().splitlines()
    out_lines = header_path(out).read_text().splitlines()
    changed = ("%total listmode word counts", "!name of data file")
    kept = [ln for ln in out_lines if not ln.startswith("%petiq") and not ln.startswith(changed)]
    assert kept == [ln for ln in src_lines if not ln.startswith(changed)]
    # events decode with the time of the preceding tag, as in the source
    lm_src, lm_out = read_listmode(big_file), read_listmode(out)
    assert lm_out.duration_ms == lm_src.duration_ms


def test_source_unchanged(thinned):
    _, _, before, after = thinned
    assert before == after


def test_thinning_chunk_invariant_and_deterministic(tmp_path, tiny):
    src = write_listmode_words(tmp_path / "s.l", tagged_stream(tiny, n=3000), scanner=tiny)
    outs = []
    for i, cw in enumerate((1, 7, 1000, 1 << 22)):
        out = tmp_path / f"c{i}.l"
        thin_listmode(src, out, 0.5, seed=99, chunk_words=cw)
        outs.append((out.read_bytes(), header_path(out).read_text().replace(f"c{i}.l", "X")))
    assert all(o == outs[0] for o in outs[1:])
    thin_listmode(src, tmp_path / "again.l", 0.5, seed=99)
    assert (tmp_path / "again.l").read_bytes() == outs[0][0]
    thin_listmode(src, tmp_path / "other.l", 0.5, seed=100)
    assert (tmp_path / "other.l").read_bytes() != outs[0][0]
    s = thin_listmode(src, tmp_path / "all.l", 1.0, seed=5)
    assert (tmp_path / "all.l").read_bytes() == src.read_bytes()
    assert s.prompts_out == s.prompts_in and s.delayeds_out == s.delayeds_in
    # repeated thinning: dose fractions compound
    thin_listmode(tmp_path / "c0.l", tmp_path / "quarter.l", 0.5, seed=7)
    h = read_listmode_header(tmp_path / "quarter.l")
    assert h["%petiq dose fraction"] == "0.25" and h["%petiq thinning fraction"] == "0.5"


# ------------------------------------------------------------------------------ histogramming
@pytest.mark.parametrize("span", [1, 3, 11])
def test_histogram_matches_numpy(tmp_path, tiny, span):
    b, p, t = random_events(tiny, 30_000, seed=span)
    path = write_listmode(tmp_path / "h.l", b, p, t, scanner=tiny)
    h = histogram_listmode(path, tiny, span=span, chunk_words=5000)
    shape = tiny.sinogram_shape(span)
    plane = shape[1] * shape[2]
    z1, rest = np.divmod(b, plane)
    target = tiny.span1_to_sinogram(span)[z1] * plane + rest
    n = shape[0] * plane
    assert h.prompts.shape == h.delayeds.shape == shape
    assert h.prompts.dtype == np.uint32 and h["delayeds"].dtype == np.uint32
    assert np.array_equal(h.prompts.ravel(), np.bincount(target[p], minlength=n))
    assert np.array_equal(h.delayeds.ravel(), np.bincount(target[~p], minlength=n))
    assert h.n_prompts == p.sum() and h.n_delayeds == (~p).sum() and h.n_outside_span == 0
    assert h.duration_s == 3.0 and h.span == span
    # fan sums: each delayed adds 1 to both its crystals
    ra, da, rb, db = tiny.bin_crystals(b[~p])
    cpr = tiny.crystals_per_ring
    ref = np.bincount(ra * cpr + da, minlength=tiny.n_crystals) + np.bincount(rb * cpr + db, minlength=tiny.n_crystals)
    assert h.delayed_fansums.shape == (tiny.n_crystals,)
    assert np.array_equal(h.delayed_fansums, ref)
    assert h.delayed_fansums.sum() == 2 * h.n_delayeds


def test_histogram_chunk_invariant_with_tags(tmp_path, tiny):
    path = write_listmode_words(tmp_path / "tags.l", tagged_stream(tiny), scanner=tiny)
    a = histogram_listmode(path, tiny, span=11, chunk_words=3)
    b = histogram_listmode(path, tiny, span=11)
    assert np.array_equal(a.prompts, b.prompts) and np.array_equal(a.delayeds, b.delayeds)
    assert np.array_equal(a.delayed_fansums, b.delayed_fansums)
    lm = read_listmode(path)
    assert a.n_prompts == lm.n_prompts and a.n_delayeds == lm.n_delayeds
    assert a.prompts.sum() == lm.n_prompts and a.duration_s == lm.duration_ms / 1000


def test_foreign_header_crlf_comments_kept(tmp_path, tiny):
    """A header written elsewhere (CRLF, comments, blanks around ':=') is read and rewritten
    line by line: only the changed values differ."""
    words = encode_events([1, 2, 3], [True, False, True], [0, 1, 2])
    hdr_lines = [
        "!INTERFILE:=",
        "; exported by the scanner console",
        "%SMS-MI header name space:=PETLINK bin address",
        "!originating system := 2008",
        "",
        "%number of projections:=28",
        "%number of views:=36",
        "number of rings:=8",
        "%maximum ring difference:=7",
        "data format:=CoincidenceList",
        f"%total listmode word counts := {words.size}",
        "image duration (sec):=1",
        "!END OF INTERFILE:=",
    ]
    src = tmp_path / "console.l"
    src.write_bytes(words.astype("<u4").tobytes())
    header_path(src).write_bytes(("\r\n".join(hdr_lines) + "\r\n").encode())
    lm = read_listmode(src, scanner=tiny)
    assert lm.bins.tolist() == [1, 2, 3] and lm.time_ms.tolist() == [0, 1, 2]
    assert lm.header["!originating system"] == "2008"
    assert header_value(lm.header, "TOTAL LISTMODE WORD COUNTS") == str(words.size)
    thin_listmode(src, tmp_path / "out.l", 1.0, seed=0)
    out = header_path(tmp_path / "out.l").read_bytes().decode()
    out_lines = out.split("\r\n")
    assert out.count("\n") == out.count("\r\n")  # CRLF kept
    assert out_lines[:10] == hdr_lines[:10]
    assert out_lines[10] == f"%total listmode word counts := {words.size}"
    assert out_lines[-2] == "!END OF INTERFILE:=" and out_lines[-3].startswith("%petiq")


class _PartialSpan:
    """The tiny scanner with a span map that leaves the largest ring differences out."""

    def __init__(self, scanner):
        self._s = scanner

    def __getattr__(self, name):
        return getattr(self._s, name)

    def span1_to_sinogram(self, span):
        m = self._s.span1_to_sinogram(span).copy()
        ra, rb = self._s.span1_rings()
        m[np.abs(rb - ra) > 5] = -1
        return m


def test_histogram_events_outside_span_and_plain_kernel(tmp_path, tiny, monkeypatch):
    import petiq.listmode.words as words_mod

    b, p, t = random_events(tiny, 20_000, seed=5)
    path = write_listmode(tmp_path / "o.l", b, p, t, scanner=tiny)
    part = _PartialSpan(tiny)
    h = histogram_listmode(path, part, span=3)
    z1 = b // (tiny.n_views * tiny.n_radial)
    outside = part.span1_to_sinogram(3)[z1] < 0
    assert 0 < h.n_outside_span == outside.sum()
    assert h.prompts.sum() == (p & ~outside).sum() and h.delayeds.sum() == (~p & ~outside).sum()
    assert h.delayed_fansums.sum() == 2 * (~p).sum()  # fan sums are span-1: every delayed counts
    # the fallback kernel (no software prefetch) gives the same sinograms
    monkeypatch.setattr(words_mod, "_histogram_chunk_impl", words_mod.histogram_kernel_plain)
    g = histogram_listmode(path, part, span=3)
    assert np.array_equal(g.prompts, h.prompts) and np.array_equal(g.delayed_fansums, h.delayed_fansums)

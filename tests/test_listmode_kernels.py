"""The fast paths of thinning and histogramming give exactly what the plain definitions give."""

from __future__ import annotations

import numpy as np
import pytest

import petiq.listmode.histogram as histogram_mod
from petiq.core.errors import PetiqInputError
from petiq.listmode import (
    encode_events,
    histogram_listmode,
    thin_listmode,
    write_listmode_words,
)
from petiq.listmode.words import pcg64_fill, pcg64_state
from petiq.scanner.geometry import Scanner


@pytest.mark.parametrize("seed", [0, 1, 2024, 2**63 + 11, 123456789012345678901234567890])
def test_pcg64_draws_are_numpys_uniforms(seed):
    """The thinning kernel's own PCG64 stream is ``np.random.default_rng(seed).random()``, also
    across calls (state carried)."""
    state = pcg64_state(np.random.default_rng(seed))
    parts = []
    for n in (1, 999, 0, 40_000, 3):
        out = np.empty(n)
        pcg64_fill(state, out)
        parts.append(out)
    np.testing.assert_array_equal(np.concatenate(parts), np.random.default_rng(seed).random(41_003))


def test_pcg64_state_refuses_other_generators():
    with pytest.raises(ValueError, match="PCG64"):
        pcg64_state(np.random.Generator(np.random.MT19937(1)))
    rng = np.random.default_rng(1)
    rng.integers(0, 2, dtype=np.uint32)  # leaves a buffered 32-bit half
    with pytest.raises(ValueError, match="buffered"):
        pcg64_state(rng)


def _stream(scanner, n=60_000, seed=9):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.integers(0, 4000, n))
    words = encode_events(rng.integers(0, scanner.n_bins(1), n), rng.random(n) < 0.7, t)
    extra = np.array([0xA0000000 | (1 << 19) | 3, 0xC0000001, 0xE0000002, 0xF0000003], dtype=np.uint32)
    return np.insert(words, rng.integers(0, words.size, 40), np.resize(extra, 40))


def test_thinning_equals_the_documented_rule_for_any_chunk(tmp_path):
    tiny = Scanner.tiny()
    words = _stream(tiny)
    src = write_listmode_words(tmp_path / "s.l", words, scanner=tiny)
    u = np.random.default_rng(77).random(words.size)
    want = words[(words >= 0x80000000) | (u < 0.25)]
    for chunk in (37, 1000, 1 << 22):
        thin_listmode(src, tmp_path / f"t{chunk}.l", 0.25, 77, chunk_words=chunk)
        np.testing.assert_array_equal(np.fromfile(tmp_path / f"t{chunk}.l", dtype="<u4"), want)


def test_histogram_threads_give_identical_results(tmp_path):
    tiny = Scanner.tiny()
    path = write_listmode_words(tmp_path / "h.l", _stream(tiny), scanner=tiny)
    # numpy reference: span-11 sinogram of every event, fan sums of the delayeds
    w = np.fromfile(path, dtype="<u4").astype(np.int64)
    ev = w[w < 0x80000000]
    b, p = ev & 0x3FFFFFFF, (ev >> 30) & 1 == 1
    plane = tiny.n_views * tiny.n_radial
    z11 = tiny.span1_to_sinogram(11)[b // plane]
    want_p = np.bincount((z11 * plane + b % plane)[p], minlength=tiny.n_bins(11))
    ra, da, rb, db = tiny.bin_crystals(b[~p])
    cpr = tiny.crystals_per_ring
    want_fans = np.bincount(np.concatenate([ra * cpr + da, rb * cpr + db]), minlength=tiny.n_crystals)
    results = [
        histogram_listmode(path, tiny, span=11, chunk_words=c, threads=th)
        for th, c in ((1, 1 << 22), (2, 1 << 22), (4, 4097), (2, 333))
    ]
    for h in results:
        np.testing.assert_array_equal(h.prompts.ravel(), want_p)
        np.testing.assert_array_equal(h.delayed_fansums, want_fans)
        for key in ("delayeds", "singles", "singles_reports"):
            np.testing.assert_array_equal(h[key], results[0][key])
        assert [h.n_prompts, h.n_delayeds, h.n_gating_tags, h.n_singles_tags] == [
            results[0].n_prompts,
            results[0].n_delayeds,
            results[0].n_gating_tags,
            results[0].n_singles_tags,
        ]
    for bad in (0, 3, True, "2"):
        with pytest.raises(PetiqInputError, match="threads"):
            histogram_listmode(path, tiny, threads=bad)


def test_zeroed_sinogram_buffer():
    a = histogram_mod.zeroed_uint32(3 * 1024 + 5)
    assert a.dtype == np.uint32 and a.size == 3 * 1024 + 5 and not a.any()
    a[-1] += 1  # writable
    assert histogram_mod.zeroed_uint32(0).size == 0


def test_default_threads_follow_free_cores(monkeypatch):
    monkeypatch.setattr(histogram_mod.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(histogram_mod.os, "getloadavg", lambda: (0.7, 0.0, 0.0))
    assert histogram_mod.histogram_threads() == 2
    monkeypatch.setattr(histogram_mod.os, "getloadavg", lambda: (3.1, 0.0, 0.0))  # both cores busy
    assert histogram_mod.histogram_threads() == 1
    monkeypatch.setattr(histogram_mod.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    monkeypatch.setattr(histogram_mod.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert histogram_mod.histogram_threads() == 1

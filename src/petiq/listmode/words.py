"""PETLINK 32-bit word layout and the numba kernels that walk word streams.

One pass per chunk of words, no Python per event; every kernel is ``cache=True`` and ``nogil=True``
(so file reading on a helper thread overlaps with it). See :mod:`petiq.listmode` for the format.
"""

from __future__ import annotations

import numba
import numba.core.errors
import numpy as np
from llvmlite import ir as llvm_ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

TAG_BIT = 0x80000000
PROMPT_BIT = 0x40000000
BIN_MASK = 0x3FFFFFFF
TIME_TAG = 0x80000000  # word >> 29 == 0b100
TIME_MASK = 0x1FFFFFFF
DEADTIME_TAG = 0xA0000000  # word >> 29 == 0b101: singles ("dead-time") report of one bucket
# Singles tag fields, as NiftyPET's lm/src/hst.cu decodes them (``ibck = (word & 0x1fffffff) >> 19``,
# rate ``(word & 0x0007ffff) << 3``; bucket numbers >= NBUCKTS = 224 are skipped there and here):
SINGLES_BUCKET_SHIFT = 19  # bits 19-28: bucket number
SINGLES_BUCKET_MASK = 0x3FF
SINGLES_VALUE_MASK = 0x7FFFF  # bits 0-18: singles rate / scale factor (mMR header: scale factor 8)
GANTRY_TAG = 0xC0000000  # word >> 29 == 0b110
GATING_TAG = 0xE0000000  # word >> 28 == 0b1110
CONTROL_TAG = 0xF0000000  # word >> 28 == 0b1111
MAX_TIME_MS = TIME_MASK  # 2**29 - 1 ms, about 6.2 days

#: Words per chunk for the streaming functions (16 MiB of data per chunk).
DEFAULT_CHUNK_WORDS = 1 << 22


@numba.njit(cache=True, nogil=True)
def decode_kernel(words, cur_ms, first_ms, n_bins, bins_out, prompt_out, time_out):
    """Decode events of ``words``; returns (n_events, cur_ms, first_ms, n_time_tags, first bad word
    index). ``first_ms`` is the first time tag's value (pass -1 until one has been seen)."""
    n = 0
    n_time = 0
    bad = -1
    for i in range(words.size):
        w = np.int64(words[i])
        if w < 0x80000000:
            b = w & 0x3FFFFFFF
            if b >= n_bins and bad < 0:
                bad = i
            bins_out[n] = b
            prompt_out[n] = (w & 0x40000000) != 0
            time_out[n] = cur_ms
            n += 1
        elif (w >> 29) == 4:
            cur_ms = w & 0x1FFFFFFF
            if first_ms < 0:
                first_ms = cur_ms
            n_time += 1
    return n, cur_ms, first_ms, n_time, bad


@numba.njit(cache=True, nogil=True)
def count_kernel(words, n_bins):
    """(prompts, delayeds, time tags, other tags, last time ms, first bad word index)."""
    n_p = 0
    n_d = 0
    n_time = 0
    n_other = 0
    last_ms = -1
    bad = -1
    for i in range(words.size):
        w = np.int64(words[i])
        if w < 0x80000000:
            if (w & 0x3FFFFFFF) >= n_bins and bad < 0:
                bad = i
            if w & 0x40000000:
                n_p += 1
            else:
                n_d += 1
        elif (w >> 29) == 4:
            n_time += 1
            last_ms = w & 0x1FFFFFFF
        else:
            n_other += 1
    return n_p, n_d, n_time, n_other, last_ms, bad


@numba.njit(cache=True, nogil=True)
def encode_kernel(bins, prompt, time_ms, cur_ms, out):
    """Events -> words with one time tag per ms boundary crossed; returns (n_words, cur_ms)."""
    n = 0
    for i in range(bins.size):
        t = time_ms[i]
        while cur_ms < t:
            cur_ms += 1
            out[n] = np.uint32(0x80000000 | cur_ms)
            n += 1
        w = bins[i]
        if prompt[i]:
            w = w | 0x40000000
        out[n] = np.uint32(w)
        n += 1
    return n, cur_ms


@numba.njit(cache=True, nogil=True)
def time_tags_kernel(start_ms, stop_ms, out):
    n = 0
    for m in range(start_ms + 1, stop_ms + 1):
        out[n] = np.uint32(0x80000000 | m)
        n += 1
    return n


@intrinsic
def _mulhi64(typingctx, a, b):
    """High 64 bits of the 128-bit product of two uint64 (LLVM ``i128`` multiply)."""
    if a != types.uint64 or b != types.uint64:
        return None
    sig = types.uint64(types.uint64, types.uint64)

    def codegen(context, builder, signature, args):
        i128 = llvm_ir.IntType(128)
        p = builder.mul(builder.zext(args[0], i128), builder.zext(args[1], i128))
        return builder.trunc(builder.lshr(p, llvm_ir.Constant(i128, 64)), llvm_ir.IntType(64))

    return sig, codegen


# PCG64 (O'Neill's PCG XSL RR 128/64), numpy's default bit generator: 128-bit LCG state
# s <- s * MULT + inc, output rotr64(hi(s) ^ lo(s), hi(s) >> 58) of the new state; numpy's
# ``Generator.random()`` is ``(output >> 11) * 2**-53`` (numpy ``random/src/pcg64/pcg64.h``,
# ``pcg64_next_double``; multiplier ``PCG_DEFAULT_MULTIPLIER_128``). Drawing them here, one per
# word, gives the very uniforms ``rng.random()`` would, without a buffer of them.
_PCG_MULT_HI = np.uint64(0x2360ED051FC65DA4)
_PCG_MULT_LO = np.uint64(0x4385DF649FCCF645)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2**-53


@numba.njit(cache=True, nogil=True, inline="always")
def _pcg64_next_double(sh, sl, ih, il):
    """One PCG64 step from state (sh, sl) with increment (ih, il): (sh', sl', uniform)."""
    lo = sl * _PCG_MULT_LO
    hi = _mulhi64(sl, _PCG_MULT_LO) + sl * _PCG_MULT_HI + sh * _PCG_MULT_LO
    nlo = lo + il
    nhi = hi + ih + (np.uint64(1) if nlo < lo else np.uint64(0))
    x = nhi ^ nlo
    r = nhi >> np.uint64(58)
    out = (x >> r) | (x << ((np.uint64(64) - r) & np.uint64(63)))
    return nhi, nlo, np.float64(out >> np.uint64(11)) * _TWO_M53


def pcg64_state(rng: np.random.Generator) -> np.ndarray:
    """uint64 ``[state_hi, state_lo, inc_hi, inc_lo]`` of a fresh PCG64 ``rng`` (for the kernels
    that draw its uniforms themselves; the caller owns the stream from then on)."""
    st = rng.bit_generator.state
    if st.get("bit_generator") != "PCG64" or st.get("has_uint32"):
        raise ValueError(f"need a PCG64 generator with no buffered 32-bit value, got {st.get('bit_generator')}")
    m = (1 << 64) - 1
    s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
    return np.array([s >> 64, s & m, inc >> 64, inc & m], dtype=np.uint64)


@numba.njit(cache=True, nogil=True)
def pcg64_fill(state, out):
    """``out[:] = `` the next ``out.size`` uniforms of the PCG64 ``state`` (advanced in place)."""
    sh, sl, ih, il = state[0], state[1], state[2], state[3]
    for i in range(out.size):
        sh, sl, out[i] = _pcg64_next_double(sh, sl, ih, il)
    state[0] = sh
    state[1] = sl


@numba.njit(cache=True, nogil=True)
def thin_pcg_kernel(words, state, fraction, n_bins, out):
    """Keep tags; keep each event iff its uniform ``u[i] < fraction`` (branch-free keep), ``u[i]``
    drawn here from the PCG64 ``state`` (advanced in place, one draw per word, tags included):
    the uniforms ``rng.random(words.size)`` would give, without a buffer of them.

    Returns (n_out, prompts_in, prompts_out, delayeds_in, delayeds_out, tags, last_ms, bad)."""
    sh, sl, ih, il = state[0], state[1], state[2], state[3]
    n = 0
    p_in = 0
    p_out = 0
    n_events = 0
    n_kept = 0
    last_ms = -1
    bad = -1
    for i in range(words.size):
        sh, sl, u = _pcg64_next_double(sh, sl, ih, il)
        w = words[i]
        wi = np.int64(w)
        out[n] = w
        if wi >= 0x80000000:
            n += 1
            if (wi >> 29) == 4:
                last_ms = wi & 0x1FFFFFFF
            continue
        if (wi & 0x3FFFFFFF) >= n_bins and bad < 0:
            bad = i
        keep = np.int64(u < fraction)
        pr = (wi >> 30) & 1
        n_events += 1
        n_kept += keep
        p_in += pr
        p_out += pr & keep
        n += keep
    state[0] = sh
    state[1] = sl
    tags = n - n_kept
    return n, p_in, p_out, n_events - p_in, n_kept - p_out, tags, last_ms, bad


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Software prefetch of ``arr[idx]`` for writing (LLVM ``llvm.prefetch``)."""
    sig = types.void(arr, idx)

    def codegen(context, builder, signature, args):
        aryty, _ = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p = llvm_ir.IntType(8).as_pointer()
        i32 = llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        # rw = 1 (write), locality = 3 (keep in cache), cache type = 1 (data)
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(1), i32(3), i32(1)])
        return context.get_dummy_value()

    return sig, codegen


def _make_histogram_kernel(prefetch: bool, parted: bool = True):
    def kernel(
        words,
        n_bins,
        plane,
        inv_plane,
        sino_map,
        hist,
        n_sino_bins,
        ring_a,
        ring_b,
        dets,
        fans,
        slots,
        cur_ms,
        tag_counts,
        sng_words,
        sng_ms,
        part,
        part_mask,
    ):
        """Histogram ``words`` into ``hist`` = [delayeds | prompts | 1 dummy slot] (flat) and the
        delayed fan sums. Works in blocks of ``slots.size`` words: a first pass decodes, adds fan
        sums and prefetches each target bin, a second pass increments them, so that many cache
        misses into the big sinograms are in flight at once (the sinograms are far larger than
        the caches and events hit them at random).

        Parts: with ``part_mask = n_parts - 1`` (``n_parts`` a power of two) this call adds only
        the events whose target ``o`` has ``(o >> _PART_SHIFT) & part_mask == part`` (4 KiB
        stretches of ``hist`` dealt out in turn; events outside the span go to part 0), and their
        fan sums into its own ``fans``: ``n_parts`` threads can share one ``hist`` without two
        ever writing the same cache line. Every part decodes and counts every word; the counts
        and singles are the same in each (pass zero-size singles buffers to all parts but one).

        Tags are counted into ``tag_counts`` += (time, singles, gantry, gating, control). Singles
        tags are stored as they come, ``sng_words[k]`` = the word and ``sng_ms[k]`` = the time
        tag before it (``cur_ms`` carries it in from the previous chunk; -1: none yet), while
        ``k < sng_words.size``; the count returned may exceed the room (the caller extracts that
        chunk's singles again with :func:`singles_kernel`).

        Returns (prompts, delayeds, events outside the span, first ms, last ms, bad word index,
        singles tags); first ms is the chunk's first time tag (-1: none), last ms the time at the
        end of the chunk (``cur_ms`` if it has no time tag)."""
        block = slots.size
        n_words = words.size
        room = sng_words.size
        n_p = 0
        n_ev = 0
        n_out = 0
        n_sng = 0
        first_ms = -1
        for start in range(0, n_words, block):
            m = min(block, n_words - start)
            k = 0
            for j in range(m):
                w = np.int64(words[start + j])
                if w >= 0x80000000:
                    top = w >> 29
                    if top == 4:
                        tag_counts[0] += 1
                        cur_ms = w & 0x1FFFFFFF
                        if first_ms < 0:
                            first_ms = cur_ms
                    elif top == 5:
                        tag_counts[1] += 1
                        if n_sng < room:
                            sng_words[n_sng] = w
                            sng_ms[n_sng] = cur_ms
                        n_sng += 1
                    elif top == 6:
                        tag_counts[2] += 1
                    elif (w >> 28) == 0xE:
                        tag_counts[3] += 1
                    else:
                        tag_counts[4] += 1
                    continue
                b = w & 0x3FFFFFFF
                if b >= n_bins:
                    return n_p, n_ev - n_p, n_out, first_ms, cur_ms, start + j, n_sng
                z = np.int64(b * inv_plane)  # b // plane without the slow integer division
                r = b - z * plane
                if r < 0:
                    z -= 1
                    r += plane
                elif r >= plane:
                    z += 1
                    r -= plane
                pr = (w >> 30) & 1
                n_ev += 1
                n_p += pr
                sz = sino_map[z]
                if sz < 0:
                    n_out += 1
                    if parted and part != 0:
                        continue
                else:
                    o = pr * n_sino_bins + sz * plane + r
                    if parted and ((o >> _PART_SHIFT) & part_mask) != part:
                        continue
                    slots[k] = o
                    k += 1
                    if prefetch:
                        _prefetch(hist, o)
                if pr == 0:
                    d = dets[r]  # det_a | det_b << 16
                    fans[ring_a[z] + (d & 0xFFFF)] += 1
                    fans[ring_b[z] + (d >> 16)] += 1
            for j in range(k):
                hist[slots[j]] += 1
        return n_p, n_ev - n_p, n_out, first_ms, cur_ms, -1, n_sng

    return numba.njit(cache=True, nogil=True)(kernel)


_PART_SHIFT = 10  # 2**10 uint32 bins = 4 KiB of hist per part in turn


@numba.njit(cache=True, nogil=True)
def singles_kernel(words, cur_ms, sng_words, sng_ms):
    """Singles tags of ``words`` with the time tag before each (``cur_ms`` before the first;
    -1: none); returns how many (only the first ``sng_words.size`` are stored)."""
    n = 0
    for i in range(words.size):
        w = np.int64(words[i])
        top = w >> 29
        if top == 4:
            cur_ms = w & 0x1FFFFFFF
        elif top == 5:
            if n < sng_words.size:
                sng_words[n] = w
                sng_ms[n] = cur_ms
            n += 1
    return n


_histogram_kernel_prefetch = _make_histogram_kernel(True)
histogram_kernel_plain = _make_histogram_kernel(False)
# one thread (part 0 of 1): the same kernel without the part test
_histogram_kernel_prefetch_whole = _make_histogram_kernel(True, parted=False)
_histogram_kernel_plain_whole = _make_histogram_kernel(False, parted=False)
HIST_BLOCK = 256  # words per prefetch block


def histogram_chunk(*args):
    """Run the prefetching kernel (the part-free one when ``part_mask``, the last argument, is 0);
    fall back to the plain one if this LLVM lacks the intrinsic."""
    global _histogram_chunk_impl
    whole = args[-1] == 0
    try:
        return _WHOLE[_histogram_chunk_impl](*args) if whole else _histogram_chunk_impl(*args)
    except numba.core.errors.NumbaError:
        if _histogram_chunk_impl is histogram_kernel_plain:
            raise
        _histogram_chunk_impl = histogram_kernel_plain
        return _WHOLE[_histogram_chunk_impl](*args) if whole else _histogram_chunk_impl(*args)


_WHOLE = {
    _histogram_kernel_prefetch: _histogram_kernel_prefetch_whole,
    histogram_kernel_plain: _histogram_kernel_plain_whole,
}
_histogram_chunk_impl = _histogram_kernel_prefetch


def encode_events(bins, prompt, time_ms) -> np.ndarray:
    """PETLINK words for time-ordered events: one elapsed-time tag per millisecond boundary
    (tags ``1 .. time_ms[-1]``) before the events of that millisecond. No trailing tags; no
    validation beyond what :class:`ListmodeWriter` does.

    >>> [hex(w) for w in encode_events([5, 7], [True, False], [0, 2])]
    ['0x40000005', '0x80000001', '0x80000002', '0x7']
    """
    bins = np.ascontiguousarray(bins, dtype=np.int64)
    prompt = np.ascontiguousarray(prompt, dtype=np.bool_)
    time_ms = np.ascontiguousarray(time_ms, dtype=np.int64)
    n_tags = int(time_ms[-1]) if time_ms.size else 0
    out = np.empty(bins.size + n_tags, dtype=np.uint32)
    n, _ = encode_kernel(bins, prompt, time_ms, 0, out)
    return out[:n]

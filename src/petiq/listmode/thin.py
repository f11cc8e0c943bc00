"""Thinning: simulate a lower injected dose by keeping each event with probability p."""

from __future__ import annotations

import hashlib
import math
import numbers
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.core.fileio import same_file
from petiq.listmode.dicom import is_dicom_form
from petiq.listmode.files import bad_bin_error, check_chunk_words, iter_word_chunks, open_checked
from petiq.listmode.header import WORD_COUNT_KEY, data_path, header_path, header_value, rewrite_header_lines
from petiq.listmode.words import DEFAULT_CHUNK_WORDS, pcg64_state, thin_pcg_kernel
from petiq.listmode.writer import AtomicPair


@dataclass(frozen=True)
class ThinSummary:
    """Counts in and out of :func:`thin_listmode`."""

    fraction: float
    seed: int
    prompts_in: int
    delayeds_in: int
    prompts_out: int
    delayeds_out: int
    tags: int
    words_in: int
    words_out: int
    source_sha256: str

    def as_dict(self) -> dict:
        return dict(self.__dict__)


def _check_fraction(fraction, where) -> float:
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool)
    f = float(fraction) if ok else math.nan
    if not (ok and math.isfinite(f) and 0.0 < f <= 1.0):
        raise PetiqInputError(
            where,
            f"thinning fraction {fraction!r} is not in (0, 1]",
            "give the dose fraction p as a number with 0 < p <= 1 (1 keeps every event)",
        )
    return f


def _check_seed(seed, where) -> int:
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or seed < 0:
        raise PetiqInputError(
            where, f"seed {seed!r} is not a non-negative integer", "derive one with petiq.core.seeding.derive_seed"
        )
    return int(seed)


def thin_listmode(
    src: str | Path,
    dst: str | Path,
    fraction: float,
    seed: int,
    chunk_words: int = DEFAULT_CHUNK_WORDS,
    *,
    scanner=None,
) -> ThinSummary:
    """Simulate a lower injected dose: keep each prompt and each delayed of ``src``
    independently with probability ``fraction`` and write them, with every tag unchanged and in
    place, to ``dst`` (+ ``dst.hdr``), streaming ``chunk_words`` words at a time. Either may be
    the DICOM form (``.dcm`` + ``.bf``); a DICOM ``dst`` of a DICOM ``src`` keeps the source's
    DICOM attributes.

    One uniform ``u`` is drawn per word (events and tags) from ``np.random.default_rng(seed)``
    in file order, and an event is kept iff ``u < fraction``: the output does not depend on
    ``chunk_words``, the same seed gives byte-identical files, and with one seed the events kept
    at a lower fraction are a subset of those kept at a higher one.

    The header is copied line by line, with ``%total listmode word counts`` and ``!name of data
    file`` updated and provenance keys added: ``%petiq source file``, ``%petiq source file
    sha256``, ``%petiq thinning fraction`` (this step), ``%petiq dose fraction`` (cumulative over
    repeated thinning), ``%petiq thinning seed``, ``%petiq source prompts``, ``%petiq source
    delayeds``, ``%petiq prompts``, ``%petiq delayeds``. ``src`` is only read."""
    src = Path(src)
    dst = Path(dst)
    f = _check_fraction(fraction, src)
    seed = _check_seed(seed, src)
    chunk_words = check_chunk_words(chunk_words)
    lm = open_checked(src, scanner)
    for a, b in (
        (data_path(dst), lm.path),
        (header_path(dst), lm.hdr),
        (data_path(dst), lm.hdr),
        (header_path(dst), lm.path),
    ):
        if same_file(a, b):
            raise PetiqInputError(
                dst, f"the output would overwrite the input {b}", "write the thinned copy to another path"
            )
    prev = header_value(lm.header, "petiq dose fraction")
    try:
        prev_f = float(prev) if prev is not None and prev.strip() else 1.0
    except ValueError:
        prev_f = 1.0

    # the kernel draws rng.random() itself, one uniform per word in file order (words.py: PCG64)
    state = pcg64_state(np.random.default_rng(seed))
    sha = hashlib.sha256()
    out = np.empty(chunk_words, dtype=np.uint32)
    totals = np.zeros(5, dtype=np.int64)  # p_in, p_out, d_in, d_out, tags
    offset = 0
    pair = AtomicPair(dst, template=lm.hdr if is_dicom_form(src) else None)
    try:
        for words in iter_word_chunks(lm.path, chunk_words, sha):
            n, p_in, p_out, d_in, d_out, tags, _, bad = thin_pcg_kernel(words, state, f, lm.n_bins, out)
            if bad >= 0:
                raise bad_bin_error(lm.path, offset + bad, words[bad], lm.n_bins)
            offset += words.size
            totals += (p_in, p_out, d_in, d_out, tags)
            pair.write(out[:n])
        if offset != lm.n_words:
            raise PetiqInputError(
                src, f"read {offset} words, expected {lm.n_words}", "do not modify the file while thinning"
            )
        p_in, p_out, d_in, d_out, tags = (int(v) for v in totals)
        digest = sha.hexdigest()
        updates = {
            WORD_COUNT_KEY: str(pair.n_words),
            "!name of data file": pair.path.name,
            "%petiq source file": src.name,
            "%petiq source file sha256": digest,
            "%petiq thinning fraction": repr(f),
            "%petiq dose fraction": repr(f * prev_f),
            "%petiq thinning seed": str(seed),
            "%petiq source prompts": str(p_in),
            "%petiq source delayeds": str(d_in),
            "%petiq prompts": str(p_out),
            "%petiq delayeds": str(d_out),
        }
        pair.commit(rewrite_header_lines(lm.lines, updates))
    except BaseException as exc:
        pair.abort((type(exc), exc, exc.__traceback__))
        raise
    return ThinSummary(
        fraction=f,
        seed=seed,
        prompts_in=p_in,
        delayeds_in=d_in,
        prompts_out=p_out,
        delayeds_out=d_out,
        tags=tags,
        words_in=lm.n_words,
        words_out=p_out + d_out + tags,
        source_sha256=digest,
    )

"""Opening, checking, reading and writing PETLINK list-mode files (data + header)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import numbers
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np

from petiq.core.decay import isotope_from_header
from petiq.core.errors import PetiqInputError
from petiq.listmode.dicom import is_dicom_form
from petiq.listmode.header import (
    WORD_COUNT_KEY,
    check_listmode_header,
    check_scanner_matches,
    data_path,
    header_bin_count,
    header_int,
    read_header_text,
)
from petiq.listmode.words import (
    BIN_MASK,
    DEFAULT_CHUNK_WORDS,
    decode_kernel,
)


# --------------------------------------------------------------------------------------------
# Opening and checking a file
# --------------------------------------------------------------------------------------------
@dataclass
class _LmFile:
    path: Path
    hdr: Path
    lines: list[str]
    header: dict[str, str]
    n_words: int
    n_bins: int  # span-1 bins (2**30 when neither header nor scanner tells)


def open_checked(path: str | Path, scanner=None) -> _LmFile:
    path = Path(path)
    if is_dicom_form(path):  # foo.dcm (header in its private tags) + foo.bf (the words)
        hdr, lines, header = read_header_text(path)
        path = data_path(path)
        if not path.is_file():
            raise PetiqInputError(
                path,
                f"the list-mode data file of {hdr.name} is missing (the .dcm holds only the header)",
                f"copy {path.name} from the same export beside {hdr.name}",
            )
    elif not path.is_file():
        raise PetiqInputError(path, "list-mode data file not found", "check the path (the header is <data>.hdr)")
    else:
        hdr, lines, header = read_header_text(path)
    check_listmode_header(header, hdr)
    isotope_from_header(header, hdr)  # half-life and branching factor, if given, are numbers
    size = path.stat().st_size
    if size % 4:
        raise PetiqInputError(
            path,
            f"size {size} bytes is not a multiple of 4, so it is not a stream of 32-bit PETLINK words "
            f"(truncated or corrupt copy)",
            "copy the list-mode file again from the scanner export",
        )
    n_words = size // 4
    declared = header_int(header, WORD_COUNT_KEY, hdr)
    if declared is None:
        raise PetiqInputError(hdr, f"'{WORD_COUNT_KEY}' is empty", "write the number of 32-bit words of the .l file")
    if declared != n_words:
        what = "truncated" if n_words < declared else "longer than its header says"
        raise PetiqInputError(
            path,
            f"holds {n_words} words but its header {hdr.name} says {WORD_COUNT_KEY} = {declared}: the file is {what}",
            "copy the list-mode file and its header again, as one pair from the same export",
        )
    if scanner is not None:
        n_bins = check_scanner_matches(header, scanner, hdr)
    else:
        n_bins = header_bin_count(header, hdr) or (BIN_MASK + 1)
    return _LmFile(path, hdr, lines, header, n_words, n_bins)


def check_listmode(path: str | Path, scanner=None) -> int:
    """Check a list-mode pair without reading its events: header as the scanner writes it (and
    matching ``scanner`` when given), data file present, its size a whole number of words and equal
    to the header's word count. Returns the number of words; raises :class:`PetiqInputError`."""
    return open_checked(path, scanner).n_words


def bad_bin_error(path: Path, word_index: int, word: int, n_bins: int) -> PetiqInputError:
    return PetiqInputError(
        path,
        f"word {word_index} is an event with bin offset {int(word) & BIN_MASK}, beyond the scanner's "
        f"{n_bins} span-1 bins",
        "use the scanner (and header) the file was acquired with; otherwise the file is corrupt",
    )


BIG_ENDIAN = sys.byteorder == "big"


def _read_words_into(fh, buf: np.ndarray, sha=None) -> int:
    mv = memoryview(buf).cast("B")
    total = 0
    while total < len(mv):
        got = fh.readinto(mv[total:])
        if not got:
            break
        total += got
    if sha is not None and total:
        sha.update(mv[:total])
    n = total // 4
    if BIG_ENDIAN:
        buf[:n].byteswap(inplace=True)
    return n


def iter_word_chunks(path: Path, chunk_words: int, sha=None) -> Iterator[np.ndarray]:
    """Yield successive chunks of words (a reused buffer: use each before asking for the next).

    The next chunk is read (and hashed) on a helper thread while the caller works on the current
    one; numba kernels and file reads release the GIL, so the two overlap on two cores."""
    bufs = [np.empty(chunk_words, dtype=np.uint32), np.empty(chunk_words, dtype=np.uint32)]
    with open(path, "rb", buffering=0) as fh, concurrent.futures.ThreadPoolExecutor(1) as pool:
        fut = pool.submit(_read_words_into, fh, bufs[0], sha)
        k = 0
        try:
            while True:
                n = fut.result()
                if n == 0:
                    return
                current = bufs[k]
                k = 1 - k
                fut = pool.submit(_read_words_into, fh, bufs[k], sha)
                yield current[:n]
        finally:
            fut.cancel()
            with contextlib.suppress(BaseException):
                fut.result()


def check_chunk_words(chunk_words) -> int:
    if isinstance(chunk_words, bool) or not isinstance(chunk_words, numbers.Integral) or chunk_words < 1:
        raise PetiqInputError(
            None, f"chunk_words={chunk_words!r} is not a positive integer", "pass e.g. chunk_words=1<<22"
        )
    return int(chunk_words)


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
class ListmodeChunk(NamedTuple):
    """Events of one chunk of words (tags removed)."""

    bins: np.ndarray  # int64 span-1 bin offsets
    prompt: np.ndarray  # bool
    time_ms: np.ndarray  # int64 elapsed ms (value of the preceding time tag, 0 before any)


@dataclass
class Listmode:
    """A whole list-mode file in memory (events only; tags other than time are skipped)."""

    bins: np.ndarray
    prompt: np.ndarray
    time_ms: np.ndarray
    header: dict[str, str] = field(repr=False)
    path: Path
    n_words: int
    n_time_tags: int
    duration_ms: int  # last minus first time tag (0 with fewer than two tags)
    first_time_ms: int = -1  # value of the first time tag (-1 if there is none)

    @property
    def n_prompts(self) -> int:
        return int(np.count_nonzero(self.prompt))

    @property
    def n_delayeds(self) -> int:
        return int(self.prompt.size - np.count_nonzero(self.prompt))


def read_listmode(path: str | Path, *, scanner=None) -> Listmode:
    """Read a whole PETLINK file into memory: ``.bins`` (int64), ``.prompt`` (bool),
    ``.time_ms`` (int64), ``.header`` (ordered dict of strings). Use
    :func:`iter_listmode_chunks` for files larger than memory.

    Bin offsets are checked against ``scanner``'s span-1 bin count, or the header's geometry
    when no scanner is given."""
    lm = open_checked(path, scanner)
    words = np.fromfile(lm.path, dtype="<u4").astype(np.uint32, copy=False)
    if words.size != lm.n_words:  # changed under our feet
        raise PetiqInputError(lm.path, "file changed while being read", "do not write it while reading")
    bins = np.empty(words.size, dtype=np.int64)
    prompt = np.empty(words.size, dtype=np.bool_)
    time_ms = np.empty(words.size, dtype=np.int64)
    n, cur, first, n_time, bad = decode_kernel(words, 0, -1, lm.n_bins, bins, prompt, time_ms)
    if bad >= 0:
        raise bad_bin_error(lm.path, bad, words[bad], lm.n_bins)
    return Listmode(
        bins=bins[:n],
        prompt=prompt[:n],
        time_ms=time_ms[:n],
        header=lm.header,
        path=lm.path,
        n_words=lm.n_words,
        n_time_tags=int(n_time),
        duration_ms=int(cur - first) if n_time else 0,
        first_time_ms=int(first),
    )


def iter_listmode_chunks(
    path: str | Path, chunk_words: int = DEFAULT_CHUNK_WORDS, *, scanner=None
) -> Iterator[ListmodeChunk]:
    """Stream the events of a list-mode file, ``chunk_words`` words at a time, in bounded memory.

    The file and header are checked when this is called (before any chunk is produced); each
    chunk's bin offsets are checked before it is yielded. The elapsed time carries across chunk
    boundaries, so the concatenated chunks equal :func:`read_listmode`."""
    chunk_words = check_chunk_words(chunk_words)
    lm = open_checked(path, scanner)
    return _iter_events(lm, chunk_words)


def _iter_events(lm: _LmFile, chunk_words: int) -> Iterator[ListmodeChunk]:
    cur = 0
    first = -1
    offset = 0
    for words in iter_word_chunks(lm.path, chunk_words):
        bins = np.empty(words.size, dtype=np.int64)  # fresh arrays: the caller may keep them
        prompt = np.empty(words.size, dtype=np.bool_)
        time_ms = np.empty(words.size, dtype=np.int64)
        n, cur, first, _, bad = decode_kernel(words, cur, first, lm.n_bins, bins, prompt, time_ms)
        if bad >= 0:
            raise bad_bin_error(lm.path, offset + bad, words[bad], lm.n_bins)
        offset += words.size
        yield ListmodeChunk(bins[:n], prompt[:n], time_ms[:n])

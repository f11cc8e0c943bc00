"""Writing PETLINK list-mode files: the 32-bit words and their Interfile header side by side, both
written to temporary names and renamed together (:class:`ListmodeWriter`)."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.core.fileio import atomic_path
from petiq.listmode.dicom import is_dicom_form, write_dicom_header
from petiq.listmode.header import (
    DURATION_KEY,
    TIME_SYNC_KEY,
    WORD_COUNT_KEY,
    check_listmode_header,
    check_scanner_matches,
    data_path,
    fmt_seconds,
    header_bin_count,
    header_int,
    header_path,
    header_value,
    merge_header,
    norm_key,
    render_header,
    scanner_defaults,
    set_items,
    singles_settings,
)
from petiq.listmode.words import (
    BIN_MASK,
    DEADTIME_TAG,
    MAX_TIME_MS,
    SINGLES_BUCKET_SHIFT,
    SINGLES_VALUE_MASK,
    TIME_MASK,
    TIME_TAG,
    count_kernel,
    encode_kernel,
    time_tags_kernel,
)

from .files import BIG_ENDIAN, bad_bin_error


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
class AtomicPair:
    """A data file and its header written atomically: data renamed into place first, header
    last; on error neither is renamed and both temporaries are removed. A ``.dcm`` (or ``.bf``)
    ``path`` writes the DICOM form: the words to the ``.bf``, the header into a ``.dcm`` (a copy
    of ``template``, the source ``.dcm``, when given)."""

    def __init__(self, path: str | Path, template: Path | None = None):
        self.path = data_path(path)
        self.hdr = header_path(path)
        self._dicom = is_dicom_form(path)
        self._template = template
        self._stack = contextlib.ExitStack()
        self._tmp_hdr = self._stack.enter_context(atomic_path(self.hdr, suffix=""))
        self._tmp_data = self._stack.enter_context(atomic_path(self.path, suffix=""))
        self._fh = open(self._tmp_data, "wb")
        self._stack.callback(self._fh.close)  # closed before the renames
        self.n_words = 0

    def write(self, words: np.ndarray) -> None:
        if words.size:
            if BIG_ENDIAN:
                words = words.byteswap()
            self._fh.write(memoryview(np.ascontiguousarray(words, dtype=np.uint32)).cast("B"))
            self.n_words += int(words.size)

    def commit(self, header_text: str) -> None:
        self._fh.flush()
        if self._dicom:
            write_dicom_header(self._tmp_hdr, header_text, template=self._template)
        else:
            self._tmp_hdr.write_text(header_text, encoding="utf-8", newline="")
        self._stack.close()

    def abort(self, exc_info=(None, None, None)) -> None:
        exc = exc_info[1] if exc_info[1] is not None else RuntimeError("list-mode write aborted")
        with contextlib.suppress(BaseException):
            self._stack.__exit__(type(exc), exc, exc.__traceback__)


class ListmodeWriter:
    """Write a PETLINK list-mode file (and its header) incrementally, in bounded memory.

    >>> import tempfile, os
    >>> from petiq.listmode.files import read_listmode
    >>> d = tempfile.mkdtemp()
    >>> with ListmodeWriter(os.path.join(d, "x.l")) as w:
    ...     w.write_events([1, 2], [True, False], [0, 1500])
    >>> read_listmode(os.path.join(d, "x.l")).header["image duration (sec)"]
    '2'

    ``header``: Interfile keys to use (partial or empty; missing keys get mMR-like defaults,
    geometry keys from ``scanner`` when given). ``write_events`` encodes events (time tags
    added, one per ms); ``write_singles`` adds one singles tag per bucket, as the scanner does
    every polling interval; ``write_words`` appends raw PETLINK words as they are (tags included).
    On ``close`` (end of the ``with`` block) time tags are added up to the acquisition end when
    ``pad_time_tags`` (the header's ``image duration (sec)``, or the last event's time rounded up
    to a whole second), then the header is written with the exact ``%total listmode word
    counts``. An error inside the ``with`` block leaves no file behind.
    """

    def __init__(
        self,
        path: str | Path,
        header: Mapping[str, object] | None = None,
        *,
        scanner=None,
        pad_time_tags: bool = True,
    ):
        self.path = data_path(path)
        self.hdr = header_path(path)
        if header is not None and not isinstance(header, Mapping):
            raise PetiqInputError(
                self.hdr,
                f"header is a {type(header).__name__}, not a mapping",
                "pass a dict of Interfile keys",
            )
        self._items = merge_header(header, scanner_defaults(scanner))
        merged = {k: v for k, v in self._items}
        check_listmode_header(merged, self.hdr)
        if scanner is not None:
            self.n_bins = check_scanner_matches(merged, scanner, self.hdr)
        else:
            self.n_bins = header_bin_count(merged, self.hdr) or (BIN_MASK + 1)
        dur = header_value(header or {}, DURATION_KEY)
        self._duration_ms = None
        if dur is not None and str(dur).strip():
            try:
                self._duration_ms = int(round(float(str(dur)) * 1000))
            except ValueError:
                raise PetiqInputError(
                    self.hdr, f"'{DURATION_KEY}' is {dur!r}", "give the duration in seconds"
                ) from None
            if not 0 <= self._duration_ms <= MAX_TIME_MS:
                raise PetiqInputError(self.hdr, f"'{DURATION_KEY}' is {dur!r}", f"give 0 to {MAX_TIME_MS // 1000} s")
        self._preset_given = bool(str(header_value(header or {}, "preset value") or "").strip())
        self._sync_given = bool(str(header_value(header or {}, TIME_SYNC_KEY) or "").strip())
        #: Singles buckets (the scanner's, else the header's ``%total number of singles blocks``).
        self.n_buckets = int(
            scanner.n_buckets
            if scanner is not None
            else (header_int(merged, "total number of singles blocks", self.hdr) or 0)
        )
        self.singles_interval_ms, self.singles_scale = singles_settings(
            merged, self.hdr, self.n_buckets if scanner is not None else None
        )
        self.n_singles_tags = 0
        self._pad = pad_time_tags
        self._opened = False  # the opening time tag (value 0) is written before the first word
        self._first_ms = -1  # first time tag written
        self.cur_ms = 0
        self.n_prompts = 0
        self.n_delayeds = 0
        self._pair: AtomicPair | None = AtomicPair(path)

    # -- context manager
    def __enter__(self) -> ListmodeWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort((exc_type, exc, tb))

    def abort(self, exc_info=(None, None, None)) -> None:
        """Discard everything written so far."""
        if self._pair is not None:
            self._pair.abort(exc_info)
            self._pair = None

    def _live(self) -> AtomicPair:
        if self._pair is None:
            raise RuntimeError(f"{self.path}: writer already closed")
        return self._pair

    def _open_stream(self, pair: AtomicPair) -> None:
        """Start the stream with a time tag of value 0 (when this writer adds time tags), so that
        the acquisition length is last minus first time tag, as readers compute it."""
        if self._pad and not self._opened:
            pair.write(np.array([TIME_TAG], dtype=np.uint32))  # elapsed-time tag of value 0 ms
            self._first_ms = 0
        self._opened = True

    # -- data
    def write_events(self, bins, prompt, time_ms) -> None:
        """Append events (1-D, equal lengths, ``time_ms`` non-decreasing and not before the
        events already written)."""
        pair = self._live()
        bins_a = np.asarray(bins)
        prompt_a = np.asarray(prompt)
        time_a = np.asarray(time_ms)
        if not (bins_a.ndim == prompt_a.ndim == time_a.ndim == 1) or not (bins_a.size == prompt_a.size == time_a.size):
            raise PetiqInputError(
                self.path,
                f"bins, prompt and time_ms have shapes {bins_a.shape}, {prompt_a.shape}, {time_a.shape}",
                "give three 1-D arrays of the same length, one entry per event",
            )
        if bins_a.size == 0:
            return
        for name, a in (("bins", bins_a), ("time_ms", time_a)):
            if not (
                np.issubdtype(a.dtype, np.integer) or (np.issubdtype(a.dtype, np.floating) and np.all(a == np.floor(a)))
            ):
                raise PetiqInputError(self.path, f"{name} has dtype {a.dtype}", f"give {name} as integers")
        bins_a = bins_a.astype(np.int64, copy=False)
        time_a = time_a.astype(np.int64, copy=False)
        bmin, bmax = int(bins_a.min()), int(bins_a.max())
        if bmin < 0 or bmax >= self.n_bins:
            raise PetiqInputError(
                self.path,
                f"event bin offsets span {bmin}..{bmax}, outside the {self.n_bins} span-1 bins of the scanner",
                "give span-1 bin offsets (z*n_views + view)*n_radial + tangential for this scanner",
            )
        if time_a[0] < self.cur_ms or np.any(np.diff(time_a) < 0):
            raise PetiqInputError(
                self.path,
                "events are not in time order (time_ms decreases"
                + (f"; earlier events reached {self.cur_ms} ms)" if time_a[0] < self.cur_ms else ")"),
                "sort the events by time_ms (np.argsort(time_ms, kind='stable')) before writing",
            )
        if time_a[-1] > MAX_TIME_MS:
            raise PetiqInputError(
                self.path, f"time_ms reaches {int(time_a[-1])}", f"times must be below {MAX_TIME_MS + 1} ms"
            )
        if self._duration_ms is not None and time_a[-1] >= max(self._duration_ms, 1):
            raise PetiqInputError(
                self.path,
                f"an event at {int(time_a[-1])} ms is not inside the header's "
                f"{DURATION_KEY} = {self._duration_ms / 1000} s",
                f"give events with time_ms < duration, or a longer '{DURATION_KEY}'",
            )
        prompt_b = prompt_a.astype(np.bool_, copy=False)
        self._open_stream(pair)
        out = np.empty(bins_a.size + int(time_a[-1]) - self.cur_ms, dtype=np.uint32)
        n, self.cur_ms = encode_kernel(bins_a, prompt_b, time_a, self.cur_ms, out)
        n_p = int(np.count_nonzero(prompt_b))
        self.n_prompts += n_p
        self.n_delayeds += bins_a.size - n_p
        pair.write(out[:n])

    def _advance_to(self, pair: AtomicPair, end_ms: int) -> None:
        """Time tags ``cur_ms + 1 .. end_ms`` (none if ``end_ms <= cur_ms``)."""
        step = 1 << 20
        tags = np.empty(min(step, max(end_ms - self.cur_ms, 0)), dtype=np.uint32)
        while self.cur_ms < end_ms:
            stop = min(end_ms, self.cur_ms + step)
            n = time_tags_kernel(self.cur_ms, stop, tags)
            pair.write(tags[:n])
            self.cur_ms = stop

    def write_singles(self, rates_cps, time_ms: int | None = None) -> None:
        """Append one singles tag per bucket ``b`` (``0b101 << 29 | b << 19 | value``, buckets in
        order), as the mMR reports the singles rate of each bucket once per polling interval
        (:attr:`singles_interval_ms`). ``value = round(rate / scale)`` with the header's
        ``%singles scale factor`` (:attr:`singles_scale`, mMR 8; NiftyPET reads ``value << 3``).

        ``rates_cps``: one rate per bucket (``n_buckets``; see ``Scanner.crystal_buckets``).
        ``time_ms``: time tags are written up to it first (not before the events already
        written), so the reports follow the time tag of that millisecond and precede its events."""
        pair = self._live()
        where = self.path
        rates = np.asarray(rates_cps, dtype=np.float64)
        if rates.shape != (self.n_buckets,) or self.n_buckets == 0:
            raise PetiqInputError(
                where,
                f"singles rates have shape {rates.shape}, expected ({self.n_buckets},): one per bucket",
                "give the singles rate (cps) of every bucket, in bucket order (Scanner.crystal_buckets)",
            )
        finite = bool(np.all(np.isfinite(rates)))
        value = np.rint(rates / self.singles_scale) if finite else rates
        if not finite or rates.min() < 0 or value.max() > SINGLES_VALUE_MASK:
            raise PetiqInputError(
                where,
                f"singles rates span {rates.min()}..{rates.max()} cps; a tag holds 0 .. "
                f"{SINGLES_VALUE_MASK * self.singles_scale} cps (19 bits x scale factor {self.singles_scale})",
                "give finite, non-negative rates within that range",
            )
        if time_ms is not None:
            t = int(time_ms)
            if t < self.cur_ms or t > MAX_TIME_MS or (self._duration_ms is not None and t > self._duration_ms):
                raise PetiqInputError(
                    where,
                    f"singles at {t} ms, but the stream is at {self.cur_ms} ms"
                    + (
                        f" and the header's duration is {self._duration_ms} ms" if self._duration_ms is not None else ""
                    ),
                    "write singles in time order, inside the acquisition",
                )
        self._open_stream(pair)
        if time_ms is not None:
            self._advance_to(pair, int(time_ms))
        buckets = np.arange(self.n_buckets, dtype=np.uint32)
        words = np.uint32(DEADTIME_TAG) | (buckets << np.uint32(SINGLES_BUCKET_SHIFT)) | value.astype(np.uint32)
        pair.write(words)
        self.n_singles_tags += int(words.size)

    def write_words(self, words) -> None:
        """Append raw PETLINK words unchanged (events and any tags). Event bins are checked."""
        pair = self._live()
        w = np.asarray(words)
        if w.ndim != 1 or not (np.issubdtype(w.dtype, np.integer)):
            raise PetiqInputError(
                self.path,
                f"words have shape {w.shape} and dtype {w.dtype}",
                "give a 1-D array of uint32 words",
            )
        if w.size and (int(w.min()) < 0 or int(w.max()) > 0xFFFFFFFF):
            raise PetiqInputError(self.path, "words do not fit in 32 bits", "give uint32 words")
        w = np.ascontiguousarray(w, dtype=np.uint32)
        n_p, n_d, n_time, _, last_ms, bad = count_kernel(w, self.n_bins)
        if bad >= 0:
            raise bad_bin_error(self.path, pair.n_words + bad, w[bad], self.n_bins)
        self._opened = True  # raw words bring their own time tags
        if n_time:
            self.cur_ms = int(last_ms)
            if self._first_ms < 0:
                self._first_ms = int(w[(w >> 29) == 4][0]) & TIME_MASK
        self.n_prompts += int(n_p)
        self.n_delayeds += int(n_d)
        pair.write(w)

    def close(self) -> None:
        """Add the trailing time tags, write the header, rename both files into place."""
        pair = self._live()
        try:
            if self._duration_ms is not None:  # counted from the first time tag (the scanner's clock)
                end_ms = max(self._first_ms, 0) + self._duration_ms
                if self.cur_ms > end_ms:
                    raise PetiqInputError(
                        self.path,
                        f"time tags reach {self.cur_ms - max(self._first_ms, 0)} ms after the first one, "
                        f"beyond the header's {DURATION_KEY}",
                        f"give a longer '{DURATION_KEY}'",
                    )
            elif self._pad:
                last = self.cur_ms if (pair.n_words or self.cur_ms) else -1
                end_ms = 1000 * ((last + 1 + 999) // 1000) if last >= 0 else 0
            else:
                end_ms = self.cur_ms
            if self._pad:
                self._open_stream(pair)
            if self._pad:
                self._advance_to(pair, end_ms)
            items = [list(it) for it in self._items]
            set_items(items, WORD_COUNT_KEY, str(pair.n_words))
            set_items(items, "!name of data file", self.path.name)
            length_ms = end_ms - max(self._first_ms, 0)
            if self._duration_ms is None:
                set_items(items, DURATION_KEY, fmt_seconds(length_ms))
            if not self._preset_given:
                set_items(items, "%preset value", fmt_seconds(length_ms))
            if not self._sync_given and any(norm_key(k) == norm_key(TIME_SYNC_KEY) for k, _ in items):
                set_items(items, TIME_SYNC_KEY, str(max(self._first_ms, 0)))
            pair.commit(render_header(items))
        except BaseException as exc:
            pair.abort((type(exc), exc, exc.__traceback__))
            raise
        finally:
            self._pair = None


def write_listmode(
    path: str | Path,
    bins,
    prompt,
    time_ms,
    header: Mapping[str, object] | None = None,
    *,
    scanner=None,
) -> Path:
    """Write events (time-ordered) as a PETLINK file ``path`` plus header ``path + '.hdr'``.

    One elapsed-time tag per millisecond boundary precedes that millisecond's events; tags run
    up to the acquisition end (``image duration (sec)`` from ``header``, else the last event's
    time rounded up to a whole second). Missing header keys get mMR-like defaults
    (:data:`MMR_HEADER_DEFAULTS`; geometry from ``scanner`` if given); unknown keys are kept in
    their order. Returns ``path``."""
    with ListmodeWriter(path, header, scanner=scanner) as w:
        w.write_events(bins, prompt, time_ms)
    return Path(path)


def write_listmode_words(path: str | Path, words, header: Mapping[str, object] | None = None, *, scanner=None) -> Path:
    """Write raw PETLINK ``words`` exactly as given (any tags), with a defaulted header whose
    ``image duration (sec)`` is the last minus the first time tag unless ``header`` gives one."""
    with ListmodeWriter(path, header, scanner=scanner, pad_time_tags=False) as w:
        w.write_words(words)
    return Path(path)

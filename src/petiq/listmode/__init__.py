"""PETLINK 32-bit list-mode files (Siemens Biograph mMR): read, write, thin, histogram.

A list-mode acquisition is two files: ``foo.l`` (the data, a stream of 32-bit little-endian
words) and ``foo.l.hdr`` (an Interfile text header, ``key:=value`` lines). The header path is
always the data path plus ``.hdr``.

The scanner's DICOM export holds the same two things as ``foo.dcm`` (the Interfile header in the
Siemens private tag (0029,1010) or (0029,1110)) and ``foo.bf`` (the words, byte for byte a ``.l``);
every reader, the thinner and the patient sheet take the ``.dcm`` (or the ``.bf``) where they take
a ``.l``, and a writer given a ``.dcm`` path writes that form (:mod:`~petiq.listmode.dicom`,
:func:`data_path`, :func:`header_path`).

PETLINK 32-bit words
--------------------
Every word is one of::

    bit 31 = 0          event        bit 30: 1 = prompt, 0 = delayed (randoms window)
                                     bits 0-29: the event's bin offset in the uncompressed
                                     (span-1) sinogram, offset = (z*n_views + view)*n_radial + tang
    bit 31 = 1          tag, told apart by the top bits:
      word >> 29 == 0b100    elapsed-time tag, bits 0-28 = milliseconds since the start
      word >> 29 == 0b101    singles ("dead-time") tag: bits 19-28 bucket, bits 0-18 the
                             bucket's singles rate / %singles scale factor (mMR: 8); one per
                             bucket every %singles polling interval (mMR: 2 s, 224 buckets)
      word >> 29 == 0b110    gantry / motion tag
      word >> 28 == 0b1110   patient-monitoring (gating) tag
      word >> 28 == 0b1111   control tag

``z`` runs over span-1 sinograms, segment by segment in the order 0, -1, +1, -2, +2, ... (the
segment is the ring difference), each segment holding ``n_rings - |segment|`` axial positions:
4084 sinograms x 252 views x 344 radial bins = 354 033 792 bins on the mMR. Readers here decode
events and time tags; the histogram also keeps the singles per bucket and polling interval and
counts the gantry, gating and control tags (otherwise skipped); the thinner copies all tags
unchanged (the singles rate belongs to the acquisition, not to the dose fraction).

Time: the mMR writes one elapsed-time tag per millisecond. A tag with value ``m`` marks the
boundary at which ``m`` ms have elapsed: events after it (until the next tag) happened during
millisecond ``m`` and get ``time_ms = m``; events before the first tag get 0. The acquisition
length is the last minus the first time tag (files need not start at 0; NiftyPET's ``lmaux.cu``
offsets by the first tag). :func:`write_listmode` writes tags ``0, 1, 2, ..., duration_ms``, each
one before the events of its millisecond.

Interfile header
----------------
Read into an ordered ``dict`` of ``key -> value`` (both strings exactly as in the file, stripped
of surrounding blanks; comment lines ``;...`` and blank lines are not in the dict but are kept
when a header is rewritten). Keys are looked up case-insensitively and ignoring a leading ``!``
or ``%`` (:func:`header_value`). Writers fill missing keys with mMR-like defaults
(:data:`MMR_HEADER_DEFAULTS`, geometry from a ``scanner`` when one is given) and always set
``%total listmode word counts`` to the exact number of words written. Rewriting (thinning) keeps
every line it does not change, in order, and adds ``%petiq ...`` provenance keys before
``!END OF INTERFILE``.

Checks before any output: the header exists and starts with ``!INTERFILE``, it describes
list-mode data (``data format`` ``CoincidenceList``, not a sinogram; 32-bit words; little
endian), the data size is a multiple of 4 bytes and equals ``%total listmode word counts`` words,
and every event's bin offset is below the scanner's span-1 bin count.

All writers go through :func:`petiq.core.fileio.atomic_path` (data file renamed into place first,
header last), so a failed or interrupted run leaves no output; inputs are never modified.

Thinning and histogramming
--------------------------
:func:`thin_listmode` keeps each prompt and each delayed independently with probability ``p``
(one uniform per word from ``np.random.default_rng(seed)`` in file order; event kept iff
``u < p``), copies every tag in place, and is byte-identical whatever the chunk size.
:func:`histogram_listmode` adds span-1 offsets into span-``s`` sinograms through
``scanner.span1_to_sinogram(s)``, counts delayeds per crystal (fan sums, for the randoms
estimate) and keeps the singles tags per bucket (``Scanner.crystal_buckets``) and polling
interval. Both stream the file in chunks of :data:`DEFAULT_CHUNK_WORDS` words (a helper thread
reads the next chunk while a numba kernel works on the current one), so memory stays bounded
whatever the file size. The thinning kernel draws the uniforms itself (numpy's PCG64, the same
numbers ``rng.random()`` gives); the histogram adds with two threads where two CPUs are free,
each owning alternate 4 KiB stretches of the sinograms (``threads=``); results are identical
whatever the chunk size or thread count. See ``benchmarks/bench_listmode.py`` for throughput.

Modules: :mod:`~petiq.listmode.words` (word layout, numba kernels), :mod:`~petiq.listmode.header`
(Interfile), :mod:`~petiq.listmode.files` (check, read, write), :mod:`~petiq.listmode.thin`,
:mod:`~petiq.listmode.histogram`, :mod:`~petiq.listmode.dicom` (the DICOM form). Everything
public is importable from ``petiq.listmode``.
"""

from petiq.listmode.files import Listmode, ListmodeChunk, check_listmode, iter_listmode_chunks, read_listmode
from petiq.listmode.header import MMR_HEADER_DEFAULTS, data_path, header_path, header_value, read_listmode_header
from petiq.listmode.histogram import ListmodeHistogram, histogram_listmode
from petiq.listmode.thin import ThinSummary, thin_listmode
from petiq.listmode.words import (
    BIN_MASK,
    CONTROL_TAG,
    DEADTIME_TAG,
    DEFAULT_CHUNK_WORDS,
    GANTRY_TAG,
    GATING_TAG,
    PROMPT_BIT,
    SINGLES_BUCKET_MASK,
    SINGLES_BUCKET_SHIFT,
    SINGLES_VALUE_MASK,
    TAG_BIT,
    TIME_MASK,
    TIME_TAG,
    encode_events,
)
from petiq.listmode.writer import ListmodeWriter, write_listmode, write_listmode_words

__all__ = [
    "check_listmode",
    "BIN_MASK",
    "CONTROL_TAG",
    "DEADTIME_TAG",
    "DEFAULT_CHUNK_WORDS",
    "GANTRY_TAG",
    "GATING_TAG",
    "MMR_HEADER_DEFAULTS",
    "PROMPT_BIT",
    "SINGLES_BUCKET_MASK",
    "SINGLES_BUCKET_SHIFT",
    "SINGLES_VALUE_MASK",
    "TAG_BIT",
    "TIME_MASK",
    "TIME_TAG",
    "Listmode",
    "ListmodeChunk",
    "ListmodeHistogram",
    "ListmodeWriter",
    "ThinSummary",
    "data_path",
    "encode_events",
    "header_path",
    "header_value",
    "histogram_listmode",
    "iter_listmode_chunks",
    "read_listmode",
    "read_listmode_header",
    "thin_listmode",
    "write_listmode",
    "write_listmode_words",
]

"""Interfile headers of PETLINK list-mode files (``foo.l.hdr``): parse, check, default, rewrite.

Values stay strings exactly as in the file. Keys are matched case-insensitively, ignoring blanks
and a leading ``!`` or ``%`` (:func:`header_value`). A rewritten header keeps every line it does not
change, in order (:func:`rewrite_header_lines`).
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.listmode.dicom import bf_path, dicom_path, is_dicom_form, read_interfile_text

# mMR geometry used when no scanner is given.
_MMR_RINGS = 64
_MMR_VIEWS = 252
_MMR_RADIAL = 344
_MMR_MRD = 60
#: The span-11 layout a genuine mMR list-mode header describes (``%number of segments:=11``) next
#: to ``%axial compression:=1``: the event addresses are span-1 whatever this table says. Sizes from
#: NiftyPET ``resources.py`` ``SEG`` (and STIR's mMR ``ProjDataInfo``): segment 0 holds the 127 ring
#: sums of ring differences -5..5, segments -+1 .. -+5 the ring differences 6-16, ..., 50-60.
_MMR_SEGMENT_TABLE = [127, 115, 115, 93, 93, 71, 71, 49, 49, 27, 27]
#: ``!originating system`` of a Biograph mMR export (STIR ``InterfileHeaderSiemens`` maps 2008 to
#: the mMR); other values name other scanners and are refused for the mMR preset.
MMR_ORIGINATING_SYSTEM = "2008"


def _segment_table_text(table: list[int]) -> str:
    return "{" + ",".join(str(int(v)) for v in table) + "}"


#: Interfile keys a writer fills in when the given header lacks them, spelled and ordered as a
#: Biograph mMR writes its list-mode header (the keys STIR's ``InterfileListmodeHeaderSiemens``
#: lists; ``tests/test_mmr_export.py`` holds such a header and checks the order). Patient and study
#: specific values are left empty so that writing stays deterministic. ``%total listmode word
#: counts``, ``image duration (sec)``, ``%preset value``, ``!name of data file`` and ``%time_sync``
#: are computed when the file is written.
MMR_HEADER_DEFAULTS: dict[str, str] = {
    "!INTERFILE": "",
    "%comment": "SMS-MI listmode (PETLINK 32-bit), written by petiq",
    "!originating system": "2008",
    "%SMS-MI header name space": "PETLINK bin address",
    # e7 tools write 3.4 in the mMR's Interfile headers (mlsiemens' e7 header writers and tests)
    "%SMS-MI version number": "3.4",
    "!GENERAL DATA": "",
    "%listmode header file": "",
    "!name of data file": "",
    "!GENERAL IMAGE DATA": "",
    "%study date (yyyy:mm:dd)": "",
    "%study time (hh:mm:ss GMT+00:00)": "",
    "isotope name": "F-18",
    "isotope gamma halflife (sec)": "6586.2",
    "isotope branching factor": "0.9673",
    "radiopharmaceutical": "Fluorodeoxyglucose",
    "%tracer injection date (yyyy:mm:dd)": "",
    "%tracer injection time (hh:mm:ss GMT+00:00)": "",
    "relative time of tracer injection (sec)": "",
    "tracer activity at time of injection (Bq)": "",
    "injected volume (ml)": "",
    "image data byte order": "LITTLEENDIAN",
    "%patient orientation": "HFS",
    "!PET data type": "emission",
    "data format": "CoincidenceList",
    "%LM event and tag words format (bits)": "32",
    "%preset type": "time",
    "%preset value": "",
    "%preset unit": "seconds",
    "%energy window lower level (keV) [1]": "430",
    "%energy window upper level (keV) [1]": "610",
    "%coincidence window width (ns)": "5.85938",
    "PET scanner type": "cylindrical",
    "transaxial FOV diameter (cm)": "59.6",
    "number of rings": str(_MMR_RINGS),
    "distance between rings (cm)": "0.40625",
    "gantry crystal radius (cm)": "32.8",
    "bin size (cm)": "0.20445",
    "septa state": "none",
    "gantry tilt angle (degrees)": "0",
    "%number of projections": str(_MMR_RADIAL),
    "%number of views": str(_MMR_VIEWS),
    "%axial compression": "1",
    "%maximum ring difference": str(_MMR_MRD),
    "%number of segments": str(len(_MMR_SEGMENT_TABLE)),
    "%segment table": _segment_table_text(_MMR_SEGMENT_TABLE),
    "%tof mashing factor": "1",  # the mMR has no time of flight (STIR ignores the key)
    "start horizontal bed position (mm)": "0",
    "end horizontal bed position (mm)": "0",
    "start vertical bed position (mm)": "0",
    "%bed zero offset (mm)": "0",
    "!IMAGE DATA DESCRIPTION": "",
    "!total number of data sets": "1",
    "image duration (sec)": "",
    "image relative start time (sec)": "0",
    "%total listmode word counts": "",
    "%timing tagwords interval (msec)": "1",
    "%singles polling method": "instantaneous",
    "%singles polling interval (sec)": "2",
    "%singles scale factor": "8",
    "%total number of singles blocks": "224",
    # the scanner's clock (ms) at the start: the value of the first time tag (in a real export the
    # tags run on from it, so time_sync = first tag); the writer sets it from the tags it wrote
    "%time_sync": "",
    "!END OF INTERFILE": "",
}

# Keys that only make sense for the real mMR; dropped from the defaults for other scanners.
_MMR_ONLY_KEYS = {
    "transaxial fov diameter (cm)",
    "distance between rings (cm)",
    "gantry crystal radius (cm)",
    "bin size (cm)",
}
_SECTION_KEYS = {"general data", "general image data", "image data description", "end of interfile"}

WORD_COUNT_KEY = "%total listmode word counts"
DURATION_KEY = "image duration (sec)"
TIME_SYNC_KEY = "%time_sync"


# --------------------------------------------------------------------------------------------
# Interfile header
# --------------------------------------------------------------------------------------------
def norm_key(key: str) -> str:
    k = key.strip().lstrip("!%").strip().lower()
    k = re.sub(r"\s+", " ", k)
    k = re.sub(r"\s*\[\s*", "[", k)
    return re.sub(r"\s*\]", "]", k)


def header_path(path: str | Path) -> Path:
    """The Interfile header of a list-mode file: ``foo.l`` -> ``foo.l.hdr``; in the DICOM form
    (``foo.dcm`` + ``foo.bf``, :mod:`petiq.listmode.dicom`) the ``.dcm`` that holds it.

    >>> header_path("sub-01/PETLM.l").as_posix(), header_path("sub-01/PETLM.bf").as_posix()
    ('sub-01/PETLM.l.hdr', 'sub-01/PETLM.dcm')
    """
    p = Path(path)
    if is_dicom_form(p):
        return dicom_path(p)
    return p.with_name(p.name + ".hdr")


def data_path(path: str | Path) -> Path:
    """The file of PETLINK words of a list-mode path: ``foo.l`` itself, or the ``.bf`` of a
    ``foo.dcm`` (DICOM form).

    >>> data_path("sub-01/PETLM.l").as_posix(), data_path("sub-01/PETLM.dcm").as_posix()
    ('sub-01/PETLM.l', 'sub-01/PETLM.bf')
    """
    p = Path(path)
    return bf_path(p) if is_dicom_form(p) else p


def header_value(header: Mapping[str, str], key: str, default: str | None = None) -> str | None:
    """Look ``key`` up in a header dict ignoring case, blanks and a leading ``!``/``%``.

    >>> header_value({"%Total listmode word counts": "12"}, "total listmode word counts")
    '12'
    """
    want = norm_key(key)
    found = default
    for k, v in header.items():
        if norm_key(k) == want:
            found = v  # the last occurrence wins, as in the dict itself
    return found


def _parse_header_lines(lines: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in lines:
        s = line.strip()
        if not s or s.startswith(";"):
            continue
        if ":=" in s:
            k, v = s.split(":=", 1)
        else:
            k, v = s, ""
        out[k.strip()] = v.strip()
    return out


def read_header_text(path: Path) -> tuple[Path, list[str], dict[str, str]]:
    """Read and minimally check ``path.hdr`` (or the header inside the ``.dcm`` of the DICOM
    form); return (header path, raw lines, dict)."""
    hdr = header_path(path)
    if is_dicom_form(path):
        text = read_interfile_text(hdr)
    else:
        if not hdr.is_file():
            raise PetiqInputError(
                hdr,
                f"the Interfile header of list-mode file {Path(path).name} is missing",
                f"put the header next to the data as {hdr.name} (the data file name plus '.hdr')",
            )
        raw = hdr.read_bytes()
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
    lines = text.splitlines(keepends=True)
    first = next((ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith(";")), "")
    if norm_key(first.split(":=", 1)[0]) != "interfile":
        raise PetiqInputError(
            hdr,
            "is not an Interfile header (the first line is not '!INTERFILE:=')",
            f"give the Siemens/PETLINK Interfile header of {Path(path).name}, starting with '!INTERFILE:='",
        )
    return hdr, lines, _parse_header_lines(lines)


def read_listmode_header(path: str | Path) -> dict[str, str]:
    """The Interfile header of list-mode file ``path`` (reads ``path + '.hdr'``, or the header
    in the private tags of a ``.dcm``), checked to describe PETLINK list-mode data. Values are
    the strings in the file."""
    hdr, _, header = read_header_text(Path(path))
    check_listmode_header(header, hdr)
    return header


def check_listmode_header(header: Mapping[str, str], hdr: Path | str | None) -> None:
    """Raise if the header describes something other than 32-bit PETLINK list-mode data."""
    fix = "give the list-mode (.l.hdr) header, not a sinogram (.s.hdr) or image header"
    fmt = header_value(header, "data format")
    if fmt is not None and fmt.strip() and "list" not in fmt.lower():
        raise PetiqInputError(hdr, f"'data format' is {fmt!r}, not list-mode ('CoincidenceList')", fix)
    space = header_value(header, "SMS-MI header name space")
    if space is not None and "sinogram" in space.lower():
        raise PetiqInputError(hdr, f"'%SMS-MI header name space' is {space!r}: this is a sinogram header", fix)
    pdt = header_value(header, "PET data type")
    if pdt is not None and pdt.strip() and pdt.strip().lower() != "emission":
        raise PetiqInputError(hdr, f"'PET data type' is {pdt!r}, expected 'emission'", fix)
    bits = header_value(header, "LM event and tag words format (bits)")
    if bits is not None and bits.strip() and bits.strip() != "32":
        raise PetiqInputError(
            hdr,
            f"list-mode words are {bits}-bit; only 32-bit PETLINK is supported",
            "convert to 32-bit PETLINK list-mode",
        )
    order = header_value(header, "image data byte order")
    if order is not None and order.strip() and order.strip().upper() != "LITTLEENDIAN":
        raise PetiqInputError(hdr, f"'image data byte order' is {order!r}", "PETLINK list-mode is LITTLEENDIAN")
    count = header_value(header, WORD_COUNT_KEY)
    if count is None:
        raise PetiqInputError(hdr, f"has no '{WORD_COUNT_KEY}' key, so it is not a list-mode header", fix)
    from petiq.scanner.frame import check_patient_orientation

    check_patient_orientation(header, hdr)  # the image frame holds for head-first supine only


def header_int(header: Mapping[str, str], key: str, hdr) -> int | None:
    v = header_value(header, key)
    if v is None or not v.strip():
        return None
    try:
        return int(v.strip())
    except ValueError:
        try:
            f = float(v.strip())
        except ValueError:
            f = math.nan
        if f.is_integer():
            return int(f)
        raise PetiqInputError(hdr, f"'{key}' is {v!r}, not an integer", f"write a whole number for '{key}'") from None


_SINGLES_INTERVAL_KEY = "%singles polling interval (sec)"
_SINGLES_SCALE_KEY = "%singles scale factor"
_SINGLES_BLOCKS_KEY = "%total number of singles blocks"


def singles_settings(header: Mapping[str, str], hdr, n_buckets: int | None = None) -> tuple[int, int]:
    """``(polling interval in ms, scale factor)`` of the singles tags, from the header (a genuine
    mMR header: ``%singles polling interval (sec):=2``, ``%singles scale factor:=8``; those are
    the defaults when a key is missing or empty). With ``n_buckets`` (the scanner's), a header
    ``%total number of singles blocks`` other than that is refused."""
    raw = header_value(header, _SINGLES_INTERVAL_KEY)
    raw = raw.strip() if raw is not None and raw.strip() else MMR_HEADER_DEFAULTS[_SINGLES_INTERVAL_KEY]
    try:
        interval_ms = float(raw) * 1000.0
    except ValueError:
        interval_ms = math.nan
    if not (math.isfinite(interval_ms) and interval_ms >= 1 and float(interval_ms).is_integer()):
        raise PetiqInputError(
            hdr,
            f"'{_SINGLES_INTERVAL_KEY}' is {raw!r}",
            "give the singles polling interval in seconds, a whole number of ms (the mMR writes 2)",
        )
    scale = header_int(header, _SINGLES_SCALE_KEY, hdr)
    if scale is None:
        scale = int(MMR_HEADER_DEFAULTS[_SINGLES_SCALE_KEY])
    if scale < 1:
        raise PetiqInputError(hdr, f"'{_SINGLES_SCALE_KEY}' is {scale}", "give a positive factor (the mMR writes 8)")
    blocks = header_int(header, _SINGLES_BLOCKS_KEY, hdr)
    if n_buckets is not None and blocks is not None and blocks != n_buckets:
        raise PetiqInputError(
            hdr,
            f"'{_SINGLES_BLOCKS_KEY}' is {blocks} but the scanner has {n_buckets} singles buckets",
            "use the scanner (and header) the file was acquired with",
        )
    return int(interval_ms), int(scale)


def _segment_table(header: Mapping[str, str], hdr) -> list[int] | None:
    table = header_value(header, "segment table")
    if table is None or not table.strip():
        return None
    try:
        return [int(x) for x in table.strip().strip("{}").split(",") if x.strip()]
    except ValueError:
        raise PetiqInputError(hdr, f"'%segment table' is {table!r}", "write it as {n0,n1,...} with integers") from None


def _is_span1_table(table: list[int]) -> bool:
    """``{R, R-1, R-1, R-2, R-2, ...}``: the uncompressed layout (one segment per ring difference)."""
    return len(table) % 2 == 1 and all(v == table[0] - (i + 1) // 2 for i, v in enumerate(table))


def _header_geometry(header: Mapping[str, str], hdr) -> tuple[int | None, int | None, int | None]:
    """(n_span1_sinograms, n_views, n_radial) as far as the header tells them.

    Event addresses are always span-1, so the span-1 count comes from ``number of rings`` and
    ``%maximum ring difference``. The ``%segment table`` may describe another span: a genuine
    mMR header says ``%axial compression:=1`` and yet gives the span-11 table (11 segments,
    837 sinograms); it gives the span-1 count only when it is the span-1 pattern."""
    n_radial = header_int(header, "number of projections", hdr)
    n_views = header_int(header, "number of views", hdr)
    n_sino = None
    rings = header_int(header, "number of rings", hdr)
    mrd = header_int(header, "maximum ring difference", hdr)
    table = _segment_table(header, hdr)
    if rings is not None and mrd is not None:
        n_sino = rings + 2 * sum(rings - d for d in range(1, mrd + 1))
    elif table is not None and _is_span1_table(table):
        n_sino = sum(table)
    return n_sino, n_views, n_radial


def header_bin_count(header: Mapping[str, str], hdr) -> int | None:
    n_sino, n_views, n_radial = _header_geometry(header, hdr)
    if n_sino is None or n_views is None or n_radial is None:
        return None
    return n_sino * n_views * n_radial


def scanner_span1_shape(scanner) -> tuple[int, int, int]:
    n_sino, n_views, n_radial = (int(v) for v in scanner.sinogram_shape(1))
    return n_sino, n_views, n_radial


def _scanner_table(scanner, span: int) -> list[int]:
    return [int(s.n_sinograms) for s in scanner.segments(span)]


def _table_span(scanner, table: list[int]) -> int | None:
    """The span whose segment layout on ``scanner`` is ``table``, or None."""
    mrd = int(scanner.max_ring_difference)
    for span in range(1, 2 * mrd + 2, 2):
        half = (span - 1) // 2
        n_segments = 1 + 2 * (-(-(mrd - half) // span) if mrd > half else 0)
        if n_segments == len(table) and _scanner_table(scanner, span) == table:
            return span
    return None


def check_scanner_matches(header: Mapping[str, str], scanner, where) -> int:
    """Span-1 bin count of ``scanner``, after checking the header describes that scanner: its
    originating system (the mMR preset takes mMR exports only), rings, maximum ring difference,
    views, radial bins, and a segment table that is the layout of some span on this scanner."""
    origin = (header_value(header, "originating system") or "").strip()
    if getattr(scanner, "name", None) == "mmr" and origin and origin != MMR_ORIGINATING_SYSTEM:
        raise PetiqInputError(
            where,
            f"'!originating system' is {origin!r}: a list-mode file of another scanner (a Siemens "
            f"Biograph mMR export says {MMR_ORIGINATING_SYSTEM})",
            "petiq models the Biograph mMR only: give an mMR acquisition",
        )
    shape = scanner_span1_shape(scanner)
    got = _header_geometry(header, where)
    names = ("span-1 sinograms", "views (%number of views)", "radial bins (%number of projections)")
    for name, h, s in zip(names, got, shape):
        if h is not None and h != s:
            raise PetiqInputError(
                where,
                f"the header says {h} {name} but the scanner has {s}",
                "use the scanner the data were acquired (or simulated) with",
            )
    for key, want in (("number of rings", scanner.n_rings), ("maximum ring difference", scanner.max_ring_difference)):
        h = header_int(header, key, where)
        if h is not None and h != int(want):
            raise PetiqInputError(
                where,
                f"the header says '{key}' {h} but the scanner has {int(want)}",
                "use the scanner the data were acquired (or simulated) with",
            )
    table = _segment_table(header, where)
    if table is not None:
        if _table_span(scanner, table) is None:
            raise PetiqInputError(
                where,
                f"'%segment table' {_segment_table_text(table)} is not the segment layout of any span of "
                f"scanner {scanner.name!r} (span 1: {_segment_table_text(_scanner_table(scanner, 1))})",
                "use the scanner the data were acquired with; otherwise the header was edited",
            )
        n_seg = header_int(header, "number of segments", where)
        if n_seg is not None and n_seg != len(table):
            raise PetiqInputError(
                where,
                f"'%number of segments' is {n_seg} but the segment table has {len(table)} entries",
                "the header is inconsistent: export it from the scanner again",
            )
    return shape[0] * shape[1] * shape[2]


def scanner_defaults(scanner) -> dict[str, str]:
    """Default header keys for ``scanner`` (mMR values where no scanner is given), in the order
    of :data:`MMR_HEADER_DEFAULTS`. The segment table is the span-11 one (as the mMR writes it)
    where span 11 is valid for the scanner, else span 1."""
    if scanner is None:
        return dict(MMR_HEADER_DEFAULTS)
    _, n_views, n_radial = scanner_span1_shape(scanner)
    rings = int(scanner.n_rings)
    is_mmr = getattr(scanner, "name", None) == "mmr"
    drop = set() if is_mmr else set(_MMR_ONLY_KEYS)
    set_: dict[str, str] = {
        "number of rings": str(rings),
        "number of projections": str(n_radial),
        "number of views": str(n_views),
    }
    if hasattr(scanner, "n_buckets"):
        set_["total number of singles blocks"] = str(int(scanner.n_buckets))
    elif not is_mmr:
        drop.add("total number of singles blocks")
    if not is_mmr:
        set_["originating system"] = str(getattr(scanner, "name", "") or "petiq simulated scanner")
    pitch = getattr(scanner, "ring_pitch_mm", None)
    radius = getattr(scanner, "ring_radius_mm", None)
    if pitch is not None:
        set_["distance between rings (cm)"] = _fmt_value(round(float(pitch) / 10.0, 6))
        drop.discard("distance between rings (cm)")
    if radius is not None:
        set_["gantry crystal radius (cm)"] = _fmt_value(round(float(radius) / 10.0, 6))
        drop.discard("gantry crystal radius (cm)")
    mrd = int(scanner.max_ring_difference)
    table = _scanner_table(scanner, 11 if 11 <= 2 * mrd + 1 else 1)
    set_["maximum ring difference"] = str(mrd)
    set_["number of segments"] = str(len(table))
    set_["segment table"] = _segment_table_text(table)
    return {k: set_.get(norm_key(k), v) for k, v in MMR_HEADER_DEFAULTS.items() if norm_key(k) not in drop}


def _fmt_value(v) -> str:
    if isinstance(v, (bool, np.bool_)):
        return str(int(v))
    if isinstance(v, numbers.Integral):
        return str(int(v))
    if isinstance(v, numbers.Real):
        f = float(v)
        return str(int(f)) if f.is_integer() else repr(f)
    return str(v).strip()


def fmt_seconds(ms: int) -> str:
    return str(ms // 1000) if ms % 1000 == 0 else f"{ms / 1000:.3f}".rstrip("0")


def merge_header(given: Mapping[str, object] | None, defaults: Mapping[str, str]) -> list[list[str]]:
    """The header to write: every default key in the order of ``defaults`` (the scanner's), with
    the given spelling and value where ``given`` has the key; ``!INTERFILE`` first and ``!END OF
    INTERFILE`` last. Given keys that are not default keys keep their place after the given key
    before them (at the top when none precedes); those after the last given default key go last,
    before ``!END OF INTERFILE``."""
    items: list[list[str]] = [[str(k).strip(), _fmt_value(v)] for k, v in (given or {}).items()]
    items = [it for it in items if norm_key(it[0]) not in ("interfile", "end of interfile")]
    known = {norm_key(k) for k in defaults}
    given_known = {norm_key(k): it for k, it in ((it[0], it) for it in items) if norm_key(k) in known}
    last_known = max((i for i, it in enumerate(items) if norm_key(it[0]) in known), default=-1)
    after: dict[str | None, list[list[str]]] = {None: []}
    tail: list[list[str]] = []
    anchor = None
    for i, it in enumerate(items):
        nk = norm_key(it[0])
        if nk in known:
            anchor = nk
        elif i > last_known:
            tail.append(it)
        else:
            after.setdefault(anchor, []).append(it)
    out = [["!INTERFILE", ""]] + after[None]
    for dk, dv in defaults.items():
        nk = norm_key(dk)
        if nk in ("interfile", "end of interfile"):
            continue
        out.append(given_known.get(nk, [dk, dv]))
        out += after.get(nk, [])
    return out + tail + [["!END OF INTERFILE", ""]]


def render_header(items: list[list[str]]) -> str:
    lines = []
    for i, (k, v) in enumerate(items):
        if i > 0 and norm_key(k) in _SECTION_KEYS:
            lines.append("")
        lines.append(f"{k}:={v}")
    return "\n".join(lines) + "\n"


def set_items(items: list[list[str]], key: str, value: str) -> None:
    nk = norm_key(key)
    hit = False
    for it in items:
        if norm_key(it[0]) == nk:
            it[1] = value
            hit = True
    if not hit:
        items.insert(len(items) - 1, [key, value])


def rewrite_header_lines(lines: list[str], updates: Mapping[str, str]) -> str:
    """Set ``updates`` in a header kept as its original lines: a key present is changed in place
    (its spelling, spacing, line ending and position kept); a new key goes before ``!END OF
    INTERFILE`` (or at the end). Every other line is copied unchanged."""
    bodies = [ln.rstrip("\r\n") for ln in lines]
    ends = [ln[len(b) :] for ln, b in zip(lines, bodies)]
    eol = next((e for e in ends if e), "\n")
    if ends and not ends[-1]:
        ends[-1] = eol
    pending = {norm_key(k): (k, v) for k, v in updates.items()}
    done: set[str] = set()
    out: list[str] = []
    end_at = None
    for body, end in zip(bodies, ends):
        s = body.strip()
        if s and not s.startswith(";"):
            nk = norm_key(s.split(":=", 1)[0])
            if nk == "end of interfile" and end_at is None:
                end_at = len(out)
            if nk in pending:
                m = re.match(r".*?:=[ \t]*", body)  # keep the key and the spacing after ':='
                prefix = m.group(0) if m else body.rstrip() + ":="
                body = prefix + pending[nk][1]
                done.add(nk)
        out.append(body + end)
    new = [f"{k}:={v}{eol}" for nk, (k, v) in pending.items() if nk not in done]
    if end_at is None:
        out.extend(new)
    else:
        while end_at > 0 and not out[end_at - 1].strip():  # keep the blank line before the end
            end_at -= 1
        out[end_at:end_at] = new
    return "".join(out)

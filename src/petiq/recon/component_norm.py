"""The Siemens Biograph mMR component normalisation file: ``.n`` + ``.n.hdr`` and its DICOM form.

The mMR stores its normalisation as *components*, one float32 array after another, little endian,
in the order NiftyPET reads them (``niftypet/nipet/mmrnorm.py``, ``get_components``; STIR reads
the first four in the same order, ``src/recon_buildblock/BinNormalisationFromECAT8.cxx``,
``read_norm_data``)::

    #  name (NiftyPET key)                       shape (slow, fast)       mMR size
    1  geometric effects (geo)                   (2*NRNG - 1, NSBINS)     127 x 344 = 43,688
    2  crystal interference (cinf)               (NSBINS, 9)              344 x 9   =  3,096
    3  crystal efficiencies (ceff)               (NRNG, NCRS)             64 x 504  = 32,256
    4  axial effects (axe1)                      (NSN11,)                 837
    5  paralysing ring dead time (dtp)           (NRNG,)                  64
    6  non-paralysing ring dead time (dtnp)      (NRNG,)                  64
    7  TX crystal dead time (dtc)                (9,)                     9
    8  additional axial effects (axe2)           (NSN11,)                 837
                                                 total                    80,851 float32 = 323,404 bytes

(``shared/design/PET.md`` lists the same eight shapes but a total of 81,651: the shapes are right,
the sum is 800 too high.) The header (``norm.cu``'s comment ``matrix size [1]:={344,127}``,
``[2]:={9,344}``, ``[3]:={504,64}``, ``[4]:={837}``, fastest index first; STIR
``InterfileNormHeaderSiemens``) names the components, their ``%matrix size[i]`` and ``data offset in
bytes[i]``, ``%number of buckets`` and ``%scanner quantification factor (Bq*s/ECAT counts)``, the
quantification factor NiftyPET reads (``get_components``: the number after ``:=`` on the line with
``scanner quantification factor``; it multiplies it by a local ``qf_loc = 0.205`` that is not in
the file). NiftyPET's span-1 axial factors (``AxialFactorForSpan1.npy``) and scatter scale factors
are package data from a 24 h Ge-68 scan, not part of the file: :class:`ComponentNorm` carries an
optional ``span1_axial`` for them.

The DICOM form (NiftyPET ``mmraux.get_dicoms``: CSA data type containing "norm"): the Interfile
header in (0029,1010) or (0029,1110) (the one whose text holds ``!INTERFILE`` and ``scanner
quantification factor``), the binary either inline in (7FE1,1010) (the ``.IMA`` form) or in a
``.bf`` with the ``.dcm``'s stem.

Numbering. NiftyPET's crystal ``c`` is petiq's ``det - 1`` (mod ``crystals_per_ring``, see
:mod:`petiq.scanner.geometry`), so ``ceff[r, c]`` is the efficiency of petiq's crystal ``(r, (c + 1) % N)``;
the radial index ``iw`` and view ``ia`` of NiftyPET's sinogram are petiq's ``t`` and ``view``. The
gap rule ``(c + 1) % 9 == 0`` is petiq's ``det % 9 == 0``.

The efficiency of the span-1 LOR of bin (view, t) between crystals ``(r0, c0)`` and ``(r1, c1)``
(NiftyPET ``src/norm.cu``, ``dev_norm``)::

    geo[t] * cinf[t, view % 9] * ceff[r0, c0] * ceff[r1, c1] * DT(r0, b0) * DT(r1, b1) / axe1[s11]
    DT(r, b) = exp(s_b/2 * dtp[r] / (1 + s_b/2 * dtnp[r])) / (1 + s_b/2 * dtnp[r])

with ``s_b`` the singles of the crystal's bucket ``b = c // 18 + 28 * (r // 8)`` and ``s11`` the
span-11 sinogram of the LOR; span 11 is the mean over the span-1 members (``atomicAdd`` of
``nrmfctr / (axe1 * sn1_sn11no)``), span 1 multiplies by ``axf1`` as well. It is an *efficiency*:
NiftyPET's ``mmrrec.py`` forms ``ansng = asng * nsng`` and multiplies the forward projection by it,
as petiq's reconstruction does with the ``norm`` of its norm file. Bins that involve a gap crystal
are 0 (NiftyPET only fills the live bins, ``aw2ali``). NiftyPET reads row 0 of the geometric
effects only (``geo[wi]``); STIR takes row ``ring1 + ring2`` (``geometric_factors[geo_plane_num]``);
:func:`norm_sinogram` does NiftyPET's by default and STIR's with ``geometric_by_plane=True``.
Neither uses the TX crystal dead time or the additional axial effects; they are read and kept.

Sizes follow the scanner (``Scanner.mmr()`` gives the numbers above; ``demo`` and ``tiny`` get the
same layout with their own numbers, so tests stay small); a file is checked against the scanner
it is read for.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.scanner.geometry import Scanner

__all__ = [
    "NORM_SUFFIXES",
    "is_component_norm",
    "COMPONENTS",
    "ComponentNorm",
    "component_layout",
    "read_component_norm",
]


#: (field of :class:`ComponentNorm`, name in the header ``%normalization component[i]``), file order.
COMPONENTS = (
    ("geometric", "geometric effects"),
    ("interference", "crystal interference"),
    ("crystal_efficiency", "crystal efficiencies"),
    ("axial", "axial effects"),
    ("ring_dead_time_paralysing", "paralyzing ring DT parameters"),
    ("ring_dead_time_nonparalysing", "non-paralyzing ring DT parameters"),
    ("crystal_dead_time", "TX crystal DT parameter"),
    ("axial_2", "additional axial effects"),
)


FIELDS = tuple(f for f, _ in COMPONENTS)


#: ``%matrix axis label[i]`` (fastest first), as an mMR norm header spells them.
AXIS_LABELS = {
    "geometric": "{sinogram projections,sinogram planes}",
    "interference": "{crystal number,sinogram projections}",
    "crystal_efficiency": "{crystal number,ring number}",
    "axial": "{plane number}",
    "ring_dead_time_paralysing": "{ring number}",
    "ring_dead_time_nonparalysing": "{ring number}",
    "crystal_dead_time": "{crystal number}",
    "axial_2": "{plane number}",
}


#: ``!originating system`` of the mMR (STIR ``Scanner``: "Siemens mMR", "mMR", "2008").
MMR_SYSTEM = "2008"


QF_KEY = "%scanner quantification factor (Bq*s/ECAT counts)"


#: CSA data type of an mMR norm export (NIMPA ``dcminfo``; :data:`petiq.listmode.dicom.OTHER_DATA_TYPES`).
NORM_DATA_TYPE = "MRPETNORM"


_BINARY_TAG = (0x7FE1, 0x1010)


_HEADER_TAGS = ((0x0029, 0x1010), (0x0029, 0x1110))


DICOM_SUFFIXES = (".dcm", ".ima")


#: What a component norm's file name ends with (lower case): the Interfile pair or the norm DICOM.
NORM_SUFFIXES = (".n", ".n.hdr", *DICOM_SUFFIXES)


_FIX_GENERIC = "give the scanner's component normalisation export (.n with its .n.hdr, or the norm .dcm/.IMA)"


def is_component_norm(path) -> bool:
    """Whether ``path`` names a component norm (``.n``, ``.n.hdr``, a norm ``.dcm``/``.IMA``) rather
    than a norm scan or a norm ``.npz`` (by its name only).

    >>> [is_component_norm(p) for p in ("PET_NORM.n", "x.n.hdr", "norm.IMA", "norm_scan.npz")]
    [True, True, True, False]
    """
    return Path(path).name.lower().endswith(NORM_SUFFIXES)


def component_layout(scanner: Scanner) -> dict[str, tuple[int, ...]]:
    """Shape (slow index first) of every component for ``scanner``, in file order.

    >>> lay = component_layout(Scanner.mmr())
    >>> lay["geometric"], lay["interference"], lay["crystal_efficiency"], lay["axial"]
    ((127, 344), (344, 9), (64, 504), (837,))
    >>> sum(int(np.prod(s)) for s in lay.values())
    80851
    """
    n_sn11 = scanner.n_sinograms(axial_span(scanner))
    return {
        "geometric": (2 * scanner.n_rings - 1, scanner.n_radial),
        "interference": (scanner.n_radial, scanner.block_positions),
        "crystal_efficiency": (scanner.n_rings, scanner.crystals_per_ring),
        "axial": (n_sn11,),
        "ring_dead_time_paralysing": (scanner.n_rings,),
        "ring_dead_time_nonparalysing": (scanner.n_rings,),
        "crystal_dead_time": (scanner.block_positions,),
        "axial_2": (n_sn11,),
    }


def axial_span(scanner: Scanner) -> int:
    """The span of the axial effects: 11 (the mMR's), or the largest valid span below it."""
    return min(11, 2 * scanner.max_ring_difference + 1)


def system_name(scanner: Scanner) -> str:
    return MMR_SYSTEM if scanner.name == "mmr" else scanner.name


@dataclass(frozen=True, eq=False)
class ComponentNorm:
    """The components of a component normalisation file, in NiftyPET's layout and numbering.

    Arrays are float32 with the shapes of :func:`component_layout` (slow index first):
    ``geometric`` (2 n_rings - 1, n_radial) NiftyPET ``geo``; ``interference`` (n_radial, 9)
    ``cinf`` (by view mod 9); ``crystal_efficiency`` (n_rings, crystals_per_ring) ``ceff`` with
    NiftyPET's crystal ``c = det - 1``; ``axial`` (span-11 sinograms) ``axe1``;
    ``ring_dead_time_paralysing`` / ``ring_dead_time_nonparalysing`` (n_rings) ``dtp`` / ``dtnp``;
    ``crystal_dead_time`` (9) ``dtc``; ``axial_2`` ``axe2``. ``quantification_factor``: the
    header's ``%scanner quantification factor (Bq*s/ECAT counts)``; ``scanner``: petiq preset name;
    ``originating_system``: the header's (``2008`` for the mMR); ``n_buckets``: the header's
    ``%number of buckets``; ``span1_axial``: optional span-1 axial factors (NiftyPET ``axf1``,
    not in the file; used for span 1 only, as in ``norm.cu``); ``header``: the header text read
    (empty when built in memory); ``source``: the file read.
    """

    geometric: np.ndarray
    interference: np.ndarray
    crystal_efficiency: np.ndarray
    axial: np.ndarray
    ring_dead_time_paralysing: np.ndarray
    ring_dead_time_nonparalysing: np.ndarray
    crystal_dead_time: np.ndarray
    axial_2: np.ndarray
    quantification_factor: float
    scanner: str = "mmr"
    originating_system: str = MMR_SYSTEM
    n_buckets: int = 224
    span1_axial: np.ndarray | None = None
    header: str = ""
    source: str = ""

    def arrays(self) -> dict[str, np.ndarray]:
        """The eight components by field name, in file order."""
        return {f: getattr(self, f) for f in FIELDS}

    def replace(self, **changes) -> ComponentNorm:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- paths
def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in DICOM_SUFFIXES or path.suffix.lower() == ".bf"


def interfile_pair(path: Path) -> tuple[Path, Path]:
    """(header, data) of an Interfile norm path given as either file."""
    if path.name.lower().endswith(".hdr"):
        return path, path.with_name(path.name[:-4])
    return path.with_name(path.name + ".hdr"), path


# ----------------------------------------------------------------------------- header
def _nkey(key: str) -> str:
    k = key.strip().lstrip("!%").strip().lower()
    k = re.sub(r"\s+", " ", k)
    return re.sub(r"\s*\[\s*(\d+)\s*\]", r"[\1]", k)


def _parse(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        s = line.strip()
        if not s or s.startswith(";") or ":=" not in s:
            continue
        k, v = s.split(":=", 1)
        out[_nkey(k)] = v.strip()
    return out


def _ints(value: str) -> list[int]:
    return [int(x) for x in re.findall(r"-?\d+", value)]


def _header_float(text: str, hdr: dict[str, str], where) -> float:
    """The quantification factor: STIR's key, else NiftyPET's search for the line holding
    ``scanner quantification factor`` and the number after ``:=``."""
    for k, v in hdr.items():
        if k.startswith("scanner quantification factor"):
            try:
                return float(v.split()[0])
            except (ValueError, IndexError):
                raise PetiqInputError(
                    where, f"'{QF_KEY}' is {v!r}, not a number", "give the norm header as the scanner wrote it"
                ) from None
    raise PetiqInputError(
        where,
        f"the norm header has no '{QF_KEY}' (the calibration)",
        "give the norm header as the scanner wrote it, with its quantification factor",
    )


def _check_header(text: str, scanner: Scanner, where) -> tuple[dict[str, str], list[int], str]:
    """Check a norm header against ``scanner``; return (keys, data offsets, byte order)."""
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith(";")), "")
    if _nkey(first.split(":=", 1)[0]) != "interfile":
        raise PetiqInputError(where, "is not an Interfile header (the first line is not '!INTERFILE:=')", _FIX_GENERIC)
    hdr = _parse(text)
    kind = (hdr.get("pet data type", "") + " " + hdr.get("data format", "")).lower()
    if "norm" not in kind and "number of normalization components" not in hdr:
        raise PetiqInputError(
            where,
            f"is not a normalisation header (PET data type {hdr.get('pet data type', '?')!r}, "
            "no '%number of normalization components')",
            _FIX_GENERIC,
        )
    system = hdr.get("originating system", "").strip()
    if system and system != system_name(scanner):
        raise PetiqInputError(
            where,
            f"the norm is for originating system {system!r}, not {system_name(scanner)!r} "
            f"(petiq scanner {scanner.name!r})",
            "give the norm of the scanner the data came from, or choose the matching scanner preset",
        )
    layout = component_layout(scanner)
    n_comp = _ints(hdr.get("number of normalization components", "8") or "8")
    if n_comp != [len(COMPONENTS)]:
        raise PetiqInputError(
            where, f"'%number of normalization components' is {n_comp}, expected {len(COMPONENTS)}", _FIX_GENERIC
        )
    offsets, at = [], 0
    for i, (field, label) in enumerate(COMPONENTS, start=1):
        shape = layout[field]
        want = list(reversed(shape))
        got = _ints(hdr.get(f"matrix size[{i}]", ""))
        if got and got != want:
            raise PetiqInputError(
                where,
                f"component {i} ({label}) has matrix size {got}, but scanner {scanner.name!r} "
                f"needs {want}: a norm of another scanner or software version",
                "give the norm of the scanner the data came from, or choose the matching preset",
            )
        off = _ints(hdr.get(f"data offset in bytes[{i}]", str(at)))
        if off != [at]:
            raise PetiqInputError(
                where,
                f"component {i} ({label}) starts at byte {off}, expected {at} (components back to back, float32)",
                _FIX_GENERIC,
            )
        offsets.append(at)
        at += 4 * int(np.prod(shape))
    order = hdr.get("imagedata byte order", hdr.get("image data byte order", "LITTLEENDIAN")).upper()
    if order not in ("LITTLEENDIAN", "BIGENDIAN"):
        raise PetiqInputError(where, f"byte order {order!r} is neither LITTLEENDIAN nor BIGENDIAN", _FIX_GENERIC)
    fmt = hdr.get("number format", "float").lower()
    nbytes = hdr.get("number of bytes per pixel", "4")
    if "float" not in fmt or _ints(nbytes) != [4]:
        raise PetiqInputError(where, f"number format {fmt!r} with {nbytes} bytes, expected 4-byte float", _FIX_GENERIC)
    return hdr, offsets, order


# ----------------------------------------------------------------------------- binary
def _decode_components(raw: bytes, scanner: Scanner, order: str, where) -> dict[str, np.ndarray]:
    layout = component_layout(scanner)
    n_want = sum(int(np.prod(s)) for s in layout.values())
    if len(raw) != 4 * n_want:
        n_got = len(raw) / 4
        raise PetiqInputError(
            where,
            f"holds {len(raw)} bytes ({n_got:g} float32 values), but a component norm of "
            f"scanner {scanner.name!r} has {n_want} ({4 * n_want} bytes)",
            "give the complete .n of the scanner the data came from (a truncated copy, or "
            "another scanner's norm, cannot be used)",
        )
    values = np.frombuffer(raw, dtype="<f4" if order == "LITTLEENDIAN" else ">f4").astype(np.float32)
    out, at = {}, 0
    for field, shape in layout.items():
        n = int(np.prod(shape))
        out[field] = values[at : at + n].reshape(shape).copy()
        at += n
    return out


def _check_values(arrays: dict[str, np.ndarray], where) -> None:
    labels = dict(COMPONENTS)
    for field, a in arrays.items():
        bad = ~np.isfinite(a)
        if bad.any():
            raise PetiqInputError(
                where,
                f"{labels[field]} hold {int(bad.sum())} NaN/infinite values "
                f"(first at index {np.unravel_index(int(np.argmax(bad)), a.shape)})",
                "give an intact norm file (this one is corrupt)",
            )
    # efficiencies and axial factors are positive numbers; dead-time parameters may take any finite value
    for field in ("geometric", "interference", "crystal_efficiency", "axial", "axial_2"):
        a = arrays[field]
        if (a < 0).any():
            raise PetiqInputError(
                where,
                f"{labels[field]} hold {int((a < 0).sum())} negative values (min {a.min():g})",
                "give an intact norm file (efficiencies cannot be negative)",
            )
    if (arrays["axial"] == 0).any():
        raise PetiqInputError(
            where,
            f"axial effects hold {int((arrays['axial'] == 0).sum())} zeros (the norm divides by them)",
            "give an intact norm file",
        )


# ----------------------------------------------------------------------------- DICOM
def _read_dicom(path: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    dcm = path
    if path.suffix.lower() == ".bf":
        dcm = path.with_suffix(".dcm")
        if not dcm.exists() and path.with_suffix(".DCM").exists():
            dcm = path.with_suffix(".DCM")
    if not dcm.is_file():
        raise PetiqInputError(dcm, "the norm DICOM file is missing", _FIX_GENERIC)
    try:
        ds = pydicom.dcmread(dcm)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise PetiqInputError(dcm, f"is not a DICOM file ({type(exc).__name__}: {exc})", _FIX_GENERIC) from None
    from petiq.listmode.dicom import (
        CSA_NON_IMAGE,
        LISTMODE_DATA_TYPE,
        OTHER_DATA_TYPES,
        creator_blocks,
        decode,
    )

    blocks = creator_blocks(ds, CSA_NON_IMAGE)
    for block in blocks:
        elem = ds.get((0x0029, (block << 8) | 0x08))
        kind = str(elem.value).strip().upper() if elem is not None else ""
        if kind and "NORM" not in kind:
            what = "list-mode" if kind == LISTMODE_DATA_TYPE else OTHER_DATA_TYPES.get(kind, "not a norm")
            raise PetiqInputError(
                dcm,
                f"its CSA Data Type (0029,{block:02X}08) is {kind!r} ({what}), not a normalisation ({NORM_DATA_TYPE})",
                "give the norm .dcm/.IMA of the export (CSA Data Type MRPETNORM)",
            )
    tags = [(0x0029, (b << 8) | 0x10) for b in blocks] + list(_HEADER_TAGS)
    text = None
    for tag in dict.fromkeys(tags):
        elem = ds.get(tag)
        if elem is None or elem.value is None:
            continue
        t = decode(elem.value)
        if "!INTERFILE" in t and "scanner quantification factor" in t:  # NiftyPET get_components
            text = t[t.find("!INTERFILE") :]
            break
    if text is None:
        where = ", ".join(f"({g:04X},{e:04X})" for g, e in dict.fromkeys(tags))
        raise PetiqInputError(
            dcm,
            f"no normalisation Interfile header (with '!INTERFILE' and 'scanner "
            f"quantification factor') in the Siemens private tags {where}",
            "give the norm .dcm/.IMA of the scanner's export with its private tags kept",
        )
    if _BINARY_TAG in ds:
        return dcm, text, bytes(ds[_BINARY_TAG].value)
    bf = dcm.with_suffix(".bf")
    if not bf.exists() and dcm.with_suffix(".BF").exists():
        bf = dcm.with_suffix(".BF")
    if not bf.is_file():
        raise PetiqInputError(
            dcm,
            "holds no component data in (7FE1,1010) and there is no .bf beside it",
            f"put the export's {bf.name} beside the .dcm (NiftyPET: dfile[:-4] + '.bf')",
        )
    return bf, text, bf.read_bytes()


# ----------------------------------------------------------------------------- read / write
def read_component_norm(path, scanner: Scanner | str = "mmr") -> ComponentNorm:
    """Read a component normalisation file for ``scanner`` (default the mMR).

    ``path``: the ``.n`` or its ``.n.hdr`` (Interfile pair), or a DICOM ``.dcm``/``.IMA`` holding the
    header in (0029,1010)/(0029,1110) and the components in (7FE1,1010) or a ``.bf`` beside it
    (NiftyPET ``mmrnorm.get_components``, ``mmraux.get_dicoms``). Every problem is a
    :class:`PetiqInputError` naming the file: missing, not a norm, another scanner, wrong size,
    NaN/infinite or negative efficiencies."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    p = Path(path)
    if _is_dicom(p):
        where, text, raw = _read_dicom(p)
        hdr_where = where if where.suffix.lower() != ".bf" else where.with_suffix(".dcm")
    else:
        hdr_path, data_path = interfile_pair(p)
        for f, what in ((hdr_path, "header (.n.hdr)"), (data_path, "data (.n)")):
            if not f.is_file():
                raise PetiqInputError(
                    f,
                    f"the norm {what} is missing",
                    "put the .n and its .n.hdr side by side (the data name plus '.hdr')",
                )
        raw_hdr = hdr_path.read_bytes()
        try:
            text = raw_hdr.decode("utf-8-sig")
        except UnicodeDecodeError:
            text = raw_hdr.decode("latin-1")
        hdr_where = hdr_path
        hdr0 = _parse(text)
        named = hdr0.get("name of data file", "").strip()
        if named and Path(named).name != data_path.name and (hdr_path.parent / Path(named).name).is_file():
            data_path = hdr_path.parent / Path(named).name
        where, raw = data_path, data_path.read_bytes()
    hdr, _offsets, order = _check_header(text, scanner, hdr_where)
    qf = _header_float(text, hdr, hdr_where)
    if not (np.isfinite(qf) and qf > 0):
        raise PetiqInputError(
            hdr_where,
            f"the quantification factor is {qf!r}, not a positive number",
            "give the norm header as the scanner wrote it",
        )
    arrays = _decode_components(raw, scanner, order, where)
    _check_values(arrays, where)
    buckets = _ints(hdr.get("number of buckets", str(scanner.n_buckets)))
    return ComponentNorm(
        **arrays,
        quantification_factor=float(qf),
        scanner=scanner.name,
        originating_system=hdr.get("originating system", system_name(scanner)).strip(),
        n_buckets=buckets[0] if buckets else scanner.n_buckets,
        header=text,
        source=str(where),
    )


def validate(cn: ComponentNorm, scanner: Scanner, where) -> None:
    for field, shape in component_layout(scanner).items():
        a = np.asarray(getattr(cn, field))
        if a.shape != shape:
            raise PetiqInputError(
                where,
                f"component {field} has shape {a.shape}, scanner {scanner.name!r} needs {shape}",
                "build the components for this scanner (component_layout)",
            )
    _check_values({f: np.asarray(getattr(cn, f), dtype=np.float32) for f in FIELDS}, where)

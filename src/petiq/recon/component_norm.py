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
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.core.fileio import atomic_path, write_npz
from petiq.scanner.geometry import Scanner

__all__ = [
    "NORM_SUFFIXES",
    "is_component_norm",
    "calibration_factor",
    "quantification_factor",
    "COMPONENTS",
    "ComponentNorm",
    "component_layout",
    "component_norm_file",
    "component_norm_from_truth",
    "components_from_npz",
    "dead_time_factor",
    "from_niftypet_crystals",
    "has_dead_time",
    "mean_bucket_singles",
    "norm_sinogram",
    "read_component_norm",
    "to_niftypet_crystals",
    "write_component_norm",
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
_FIELDS = tuple(f for f, _ in COMPONENTS)
#: ``%matrix axis label[i]`` (fastest first), as an mMR norm header spells them.
_AXIS_LABELS = {
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
_DICOM_SUFFIXES = (".dcm", ".ima")
#: What a component norm's file name ends with (lower case): the Interfile pair or the norm DICOM.
NORM_SUFFIXES = (".n", ".n.hdr", *_DICOM_SUFFIXES)
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
    n_sn11 = scanner.n_sinograms(_axial_span(scanner))
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


def _axial_span(scanner: Scanner) -> int:
    """The span of the axial effects: 11 (the mMR's), or the largest valid span below it."""
    return min(11, 2 * scanner.max_ring_difference + 1)


def _system_name(scanner: Scanner) -> str:
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
        return {f: getattr(self, f) for f in _FIELDS}

    def replace(self, **changes) -> ComponentNorm:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


# ----------------------------------------------------------------------------- paths
def _is_dicom(path: Path) -> bool:
    return path.suffix.lower() in _DICOM_SUFFIXES or path.suffix.lower() == ".bf"


def _pair(path: Path) -> tuple[Path, Path]:
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
    if system and system != _system_name(scanner):
        raise PetiqInputError(
            where,
            f"the norm is for originating system {system!r}, not {_system_name(scanner)!r} "
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


def _header_text(cn: ComponentNorm, scanner: Scanner, data_name: str) -> str:
    layout = component_layout(scanner)
    lines = [
        "!INTERFILE:=",
        "%comment:=SMS-MI normalization (written by petiq)",
        f"!originating system:={_system_name(scanner)}",
        "%SMS-MI header name space:=component based normalization",
        "!GENERAL DATA:=",
        f"!name of data file:={data_name}",
        "!GENERAL IMAGE DATA:=",
        "!type of data:=PET",
        "imagedata byte order:=LITTLEENDIAN",
        "!PET data type:=normalization",
        "data format:=component based normalization",
        "number format:=float",
        "!number of bytes per pixel:=4",
        f"number of rings:={scanner.n_rings}",
        f"%number of buckets:={int(cn.n_buckets)}",
        f"%number of normalization components:={len(COMPONENTS)}",
    ]
    at = 0
    for i, (field, label) in enumerate(COMPONENTS, start=1):
        shape = layout[field]
        size = ",".join(str(s) for s in reversed(shape))
        lines += [
            f"%normalization component[{i}]:={label}",
            f"data offset in bytes[{i}]:={at}",
            f"number of dimensions[{i}]:={len(shape)}",
            f"%matrix size[{i}]:={{{size}}}",
            f"%matrix axis label[{i}]:={_AXIS_LABELS[field]}",
        ]
        at += 4 * int(np.prod(shape))
    lines += [
        f"{QF_KEY}:={cn.quantification_factor:.10e}",
        "%cross calibration factor:=1.0",
        "",
    ]
    return "\r\n".join(lines)


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
        _creator_blocks,
        _decode,
    )

    blocks = _creator_blocks(ds, CSA_NON_IMAGE)
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
        t = _decode(elem.value)
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


def _write_dicom(path: Path, cn: ComponentNorm, scanner: Scanner, raw: bytes) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    from petiq.listmode.dicom import (
        CSA_NON_IMAGE,
        PUBLIC_ATTRIBUTES,
        SIEMENS_CSA_NON_IMAGE_STORAGE,
        _uid,
    )

    text = _header_text(cn, scanner, path.with_suffix(".bf").name)
    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    for key, value in PUBLIC_ATTRIBUTES.items():
        setattr(ds, key, value)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "PET_NORM"]
    ds.ImageComments = "PET Normalization data"
    if scanner.name != "mmr":
        ds.Manufacturer, ds.ManufacturerModelName = "petiq", f"simulated {scanner.name}"
    ds.PatientID, ds.PatientName = "", ""
    ds.StudyInstanceUID = _uid("norm-study", text)
    ds.SeriesInstanceUID = _uid("norm-series", text)
    ds.SeriesNumber = ds.InstanceNumber = 1
    block = ds.private_block(0x0029, CSA_NON_IMAGE, create=True)
    block.add_new(0x08, "CS", NORM_DATA_TYPE)
    block.add_new(0x09, "LO", "1.0")
    hdr = text.encode("latin-1", errors="replace")
    block.add_new(0x10, "OB", hdr + b"\x00" * (len(hdr) % 2))
    ds.private_block(0x7FE1, CSA_NON_IMAGE, create=True).add_new(0x10, "OB", raw)  # the .IMA form (NiftyPET)
    ds.SOPClassUID = SIEMENS_CSA_NON_IMAGE_STORAGE
    ds.SOPInstanceUID = _uid("norm-instance", text, str(len(raw)), str(hash(raw)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


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
        hdr_path, data_path = _pair(p)
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
        originating_system=hdr.get("originating system", _system_name(scanner)).strip(),
        n_buckets=buckets[0] if buckets else scanner.n_buckets,
        header=text,
        source=str(where),
    )


def _validate(cn: ComponentNorm, scanner: Scanner, where) -> None:
    for field, shape in component_layout(scanner).items():
        a = np.asarray(getattr(cn, field))
        if a.shape != shape:
            raise PetiqInputError(
                where,
                f"component {field} has shape {a.shape}, scanner {scanner.name!r} needs {shape}",
                "build the components for this scanner (component_layout)",
            )
    _check_values({f: np.asarray(getattr(cn, f), dtype=np.float32) for f in _FIELDS}, where)


def write_component_norm(path, cn: ComponentNorm, scanner: Scanner | str | None = None) -> Path:
    """Write ``cn`` as the scanner writes it; returns the file holding the components.

    ``path`` ending in ``.n`` (or ``.n.hdr``): the ``.n`` and its ``.n.hdr``, each atomically (data
    first, so a header never names missing data). ``.dcm``/``.IMA``: one DICOM file with the header
    in (0029,1010) (CSA Data Type ``MRPETNORM``) and the components inline in (7FE1,1010), the form
    NiftyPET extracts. ``scanner`` defaults to the preset ``cn.scanner``."""
    scanner = Scanner.from_name(scanner or cn.scanner) if not isinstance(scanner, Scanner) else scanner
    p = Path(path)
    _validate(cn, scanner, p)
    raw = b"".join(np.ascontiguousarray(getattr(cn, f), dtype="<f4").tobytes() for f in _FIELDS)
    if p.suffix.lower() in _DICOM_SUFFIXES:
        _write_dicom(p, cn, scanner, raw)
        return p
    hdr_path, data_path = _pair(p)
    with atomic_path(data_path) as tmp:
        tmp.write_bytes(raw)
    with atomic_path(hdr_path) as tmp:
        tmp.write_bytes(_header_text(cn, scanner, data_path.name).encode("latin-1", errors="replace"))
    return data_path


# ----------------------------------------------------------------------------- petiq truth
def to_niftypet_crystals(a: np.ndarray) -> np.ndarray:
    """petiq ``(n_rings, crystals_per_ring)`` by ``det`` -> NiftyPET's by ``c = det - 1``:
    ``out[:, c] = a[:, (c + 1) % N]``."""
    return np.roll(np.asarray(a), -1, axis=-1)


def from_niftypet_crystals(a: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_niftypet_crystals`: ``out[:, det] = a[:, (det - 1) % N]``."""
    return np.roll(np.asarray(a), 1, axis=-1)


def calibration_factor(quantification_factor: float) -> float:
    """petiq's calibration ``κ`` (expected counts per second per positron-emitting Bq/mm² of line
    integral, :func:`petiq.recon.osem.system_model`) of a norm's quantification factor (e7: Bq·s
    per count): ``κ = 1 / qf``. NiftyPET scales its image by ``qf · qf_loc / (BF · duration)``
    (``prj/mmrrec.py``) with ``qf_loc = 0.205`` fitted to its own projector; petiq's projector has
    its own units, so a real scanner's factor gives petiq's absolute scale only up to that fit (the
    README says so). petiq's simulated scanner writes ``qf = 1 / κ``, and reads back its own κ.

    >>> calibration_factor(4.0), quantification_factor(calibration_factor(4.0))
    (0.25, 4.0)
    """
    qf = float(quantification_factor)
    if not (np.isfinite(qf) and qf > 0):
        raise PetiqInputError(None, f"quantification factor {qf!r}", "give a positive quantification factor")
    return 1.0 / qf


def quantification_factor(calibration: float) -> float:
    """The quantification factor (Bq·s per count) that gives petiq's calibration ``κ``: ``1 / κ``."""
    return 1.0 / float(calibration)


def component_norm_from_truth(
    scanner: Scanner | str, crystal_efficiency, radial_factor, calibration: float
) -> ComponentNorm:
    """petiq's simulated truth (:class:`petiq.listmode.simulate.ScannerTruth`) as mMR components.

    Geometric effects: every one of the ``2 n_rings - 1`` rows is ``radial_factor`` (petiq's
    radial index ``t`` is NiftyPET's ``iw``), so NiftyPET's row 0 and STIR's row ``r1 + r2`` agree;
    crystal interference and both axial effects 1; crystal efficiencies in NiftyPET's numbering
    (:func:`to_niftypet_crystals`; 0 in the gaps, as petiq's truth has them); all dead-time
    parameters 0, which makes NiftyPET's dead-time factor exactly 1 for any bucket singles (petiq's
    simulation has no dead time); the quantification factor is ``1 / κ``
    (:func:`quantification_factor` of petiq's calibration factor ``calibration_factor``).
    :func:`norm_sinogram` of the result is petiq's ``mean over members of ε_a ε_b g_t``."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    lay = component_layout(scanner)
    eff = np.asarray(crystal_efficiency, dtype=np.float32).reshape(lay["crystal_efficiency"])
    g = np.asarray(radial_factor, dtype=np.float32).reshape(scanner.n_radial)
    eff = np.where(scanner.is_gap(np.arange(scanner.crystals_per_ring))[None, :], 0.0, eff).astype(np.float32)
    return ComponentNorm(
        geometric=np.broadcast_to(g, lay["geometric"]).astype(np.float32),
        interference=np.ones(lay["interference"], np.float32),
        crystal_efficiency=to_niftypet_crystals(eff).astype(np.float32),
        axial=np.ones(lay["axial"], np.float32),
        ring_dead_time_paralysing=np.zeros(lay["ring_dead_time_paralysing"], np.float32),
        ring_dead_time_nonparalysing=np.zeros(lay["ring_dead_time_nonparalysing"], np.float32),
        crystal_dead_time=np.zeros(lay["crystal_dead_time"], np.float32),
        axial_2=np.ones(lay["axial_2"], np.float32),
        quantification_factor=quantification_factor(calibration),
        scanner=scanner.name,
        originating_system=_system_name(scanner),
        n_buckets=scanner.n_buckets,
    )


# ----------------------------------------------------------------------------- assembly
def dead_time_factor(cn: ComponentNorm, scanner: Scanner, bucket_singles) -> np.ndarray:
    """float64 ``(n_rings, crystals_per_ring)`` (petiq numbering): NiftyPET's per-crystal factor
    ``exp(s/2 · dtp[r] / (1 + s/2 · dtnp[r])) / (1 + s/2 · dtnp[r])`` with ``s`` the singles of the
    crystal's bucket (``Scanner.crystal_buckets``, NiftyPET ``b = c/18 + 28 (r/8)``)."""
    s = np.asarray(bucket_singles, dtype=np.float64).ravel()
    if s.size != scanner.n_buckets:
        raise PetiqInputError(
            None,
            f"bucket singles have {s.size} entries, scanner {scanner.name!r} has {scanner.n_buckets} buckets",
            "pass one singles value per bucket",
        )
    half = 0.5 * s[scanner.crystal_buckets()]
    dtp = np.asarray(cn.ring_dead_time_paralysing, np.float64)[:, None]
    dtnp = np.asarray(cn.ring_dead_time_nonparalysing, np.float64)[:, None]
    den = 1.0 + half * dtnp
    return np.exp(half * dtp / den) / den


def mean_bucket_singles(singles, singles_reports) -> np.ndarray:
    """NiftyPET's ``buckets`` (``lm/mmrhist.py``, ``hist``): the mean singles rate of every bucket,
    int32 ``(n_buckets,)``, from a sinogram file's ``singles`` (summed reported rates, cps, shape
    (polling intervals, n_buckets)) and ``singles_reports`` (how many reports each sum holds).

    Mirrors NiftyPET step by step: per interval and bucket the sum is divided by its reports where
    reports > 0, in integers (NiftyPET assigns ``bck / nsr`` back into its ``uint32`` array, so the
    quotient is truncated); the intervals kept are those where any bucket reported
    (``np.sum(nsr, axis=1) > 0``); the result is the sum over those intervals divided by their
    number, truncated by ``np.int32``. A bucket with no report in a kept interval counts 0 there, as
    in NiftyPET. (NiftyPET's intervals are its 1 s time-tag bins, most without a report; petiq's are
    the polling intervals; the kept rows and the mean are the same.) No report at all is an error
    (NiftyPET would divide by zero).

    One difference cannot be undone from petiq's sums: NiftyPET's report counter counts only reports
    with a non-zero value (``lm/src/hst.cu``: ``((word & 0x0007ffff) > 0) << 30``), petiq's
    ``singles_reports`` counts every report. Where a bucket reports 0 (a dead bucket, the first
    report of a scan) petiq averages the zero in, NiftyPET does not; with only non-zero reports the
    two agree."""
    s = np.asarray(singles)
    n = np.asarray(singles_reports)
    if s.ndim != 2 or s.shape != n.shape:
        raise PetiqInputError(
            None,
            f"singles {s.shape} and singles_reports {n.shape} are not one (intervals, buckets) shape",
            "pass the sinogram file's singles and singles_reports",
        )
    if (n < 0).any() or (s < 0).any():
        raise PetiqInputError(
            None,
            "singles or singles_reports hold negative values",
            "pass the sinogram file's singles and singles_reports",
        )
    s = s.astype(np.int64)
    n = n.astype(np.int64)
    rate = np.where(n > 0, s // np.maximum(n, 1), 0)
    keep = n.sum(axis=1) > 0
    if not keep.any():
        raise PetiqInputError(
            None,
            "the singles hold no report (every singles_reports is 0), so there is no "
            "bucket singles rate for the dead-time correction",
            "histogram the list-mode with its singles tags, or leave out the dead time",
        )
    return np.int32(rate[keep].sum(axis=0) / int(keep.sum()))


def has_dead_time(cn: ComponentNorm) -> bool:
    """True when any paralysing or non-paralysing ring dead-time parameter is non-zero (else
    NiftyPET's dead-time factor is 1 for any singles)."""
    return bool(
        np.any(np.asarray(cn.ring_dead_time_paralysing) != 0)
        or np.any(np.asarray(cn.ring_dead_time_nonparalysing) != 0)
    )


def components_from_npz(data, scanner: Scanner | str) -> ComponentNorm | None:
    """The :class:`ComponentNorm` a :func:`component_norm_file` ``.npz`` stores (keys
    ``component_<field>`` and ``quantification_factor``), checked against ``scanner``; ``None`` when
    ``data`` (a dict or an open ``.npz``) has no component keys (a norm estimated from a norm scan)."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    keys = [f"component_{f}" for f in _FIELDS]
    present = [k for k in keys if k in data]
    if not present:
        return None
    missing = [k for k in keys + ["quantification_factor"] if k not in data]
    if missing:
        raise PetiqInputError(
            None,
            f"the norm .npz has component keys but lacks {missing}",
            "rebuild it from the component norm (.n) with component_norm_file",
        )
    cn = ComponentNorm(
        **{f: np.asarray(data[f"component_{f}"], dtype=np.float32) for f in _FIELDS},
        quantification_factor=float(np.asarray(data["quantification_factor"])),
        scanner=scanner.name,
        originating_system=_system_name(scanner),
        n_buckets=scanner.n_buckets,
    )
    _validate(cn, scanner, None)
    return cn


def norm_sinogram(
    components: ComponentNorm,
    scanner: Scanner | str,
    span: int,
    bucket_singles=None,
    *,
    geometric_by_plane: bool = False,
) -> np.ndarray:
    """float32 span-``span`` sinogram (``scanner.sinogram_shape(span)``): the efficiency that
    multiplies the expected counts, as NiftyPET's ``norm.cu`` (``dev_norm``) forms it.

    Per span-1 LOR (view, t) between petiq crystals ``(ring_a, det_a)`` and ``(ring_b, det_b)``:
    ``geo[0, t] · cinf[t, view % 9] · ε_a ε_b · DT_a DT_b / axe1[s11]``, with ``ε`` the
    crystal efficiency (NiftyPET crystal ``det - 1``), ``DT`` :func:`dead_time_factor` when
    ``bucket_singles`` (one value per bucket) are given (else 1) and ``s11`` the LOR's span-11
    sinogram; span 1 multiplies by ``components.span1_axial`` when set. A bin is the mean over its
    span-1 members; LORs touching a gap crystal are 0. ``geometric_by_plane``: STIR's row
    ``ring_a + ring_b`` of the geometric effects instead of NiftyPET's row 0."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    span = scanner.check_span(int(span))
    if components.scanner != scanner.name:
        raise PetiqInputError(
            components.source or None,
            f"the norm components are for scanner {components.scanner!r}, not {scanner.name!r}",
            "read the norm for the scanner the data came from",
        )
    _validate(components, scanner, components.source or None)
    eff = from_niftypet_crystals(np.asarray(components.crystal_efficiency, np.float64))
    eff = np.where(scanner.is_gap(np.arange(scanner.crystals_per_ring))[None, :], 0.0, eff)
    if bucket_singles is not None:
        eff = eff * dead_time_factor(components, scanner, bucket_singles)
    nv, nr = scanner.n_views, scanner.n_radial
    view = np.arange(nv)[:, None]
    det_a, det_b = scanner.view_radial_to_dets(
        np.broadcast_to(view, (nv, nr)), np.broadcast_to(np.arange(nr), (nv, nr))
    )
    cinf = np.asarray(components.interference, np.float64)  # (n_radial, block_positions)
    transaxial = cinf[np.arange(nr)[None, :], (view % scanner.block_positions)]  # (nv, nr)
    geo = np.asarray(components.geometric, np.float64)
    if not geometric_by_plane:
        transaxial = transaxial * geo[0][None, :]
    ring_a, ring_b = scanner.span1_rings()
    to_s = scanner.span1_to_sinogram(span)
    to_s11 = scanner.span1_to_sinogram(_axial_span(scanner))
    weight = 1.0 / np.asarray(components.axial, np.float64)[to_s11]
    weight = weight / scanner.sinogram_members(span)[to_s]
    if span == 1 and components.span1_axial is not None:
        axf1 = np.asarray(components.span1_axial, np.float64).ravel()
        if axf1.size != ring_a.size:
            raise PetiqInputError(
                None,
                f"span1_axial has {axf1.size} entries, scanner {scanner.name!r} has {ring_a.size} span-1 sinograms",
                "pass one factor per span-1 sinogram",
            )
        weight = weight * axf1
    out = np.zeros(scanner.sinogram_shape(span), dtype=np.float32)
    eff = eff.astype(np.float32)
    eff_a = eff[:, det_a]  # (n_rings, nv, nr): crystal a's efficiency for every ring
    eff_b = eff[:, det_b]
    geo32 = geo.astype(np.float32)
    weight = weight.astype(np.float32)
    for z in range(ring_a.size):
        ra, rb = ring_a[z], ring_b[z]
        lor = eff_a[ra] * eff_b[rb]
        if geometric_by_plane:
            lor *= geo32[ra + rb][None, :]
        lor *= weight[z]
        out[to_s[z]] += lor
    out *= transaxial.astype(np.float32)[None]
    return out


def component_norm_file(n_path, out_npz, scanner: Scanner | str, span: int) -> dict:
    """Component norm file (``.n``/``.n.hdr``/``.dcm``) -> the ``.npz`` the ``norm`` rule writes
    (kind "norm", keys of :func:`petiq.recon.pipeline.estimate_norm_file`): ``norm`` from
    :func:`norm_sinogram` (no dead time), ``crystal_efficiency`` in petiq's numbering (0 in the
    gaps), ``radial_factor`` = row 0 of the geometric effects, every radial bin measured,
    ``calibration_factor`` κ = ``1 / qf`` (:func:`calibration_factor`); and the components themselves, to
    reassemble the norm with dead time (:func:`components_from_npz`): ``component_<field>`` for
    every field of :data:`COMPONENTS` and ``quantification_factor``."""
    scanner = Scanner.from_name(scanner) if isinstance(scanner, str) else scanner
    span = scanner.check_span(int(span))
    cn = read_component_norm(n_path, scanner)
    norm = norm_sinogram(cn, scanner, span)
    eff = from_niftypet_crystals(cn.crystal_efficiency).astype(np.float32)
    eff[:, scanner.is_gap(np.arange(scanner.crystals_per_ring))] = 0.0
    kappa = calibration_factor(cn.quantification_factor)
    summary = {
        "source": str(n_path),
        "scanner": scanner.name,
        "span": span,
        "calibration_factor": kappa,
        "quantification_factor": cn.quantification_factor,
        "method": "component norm file (NiftyPET norm.cu)",
    }
    write_npz(
        out_npz,
        kind=np.asarray("norm"),
        scanner=np.asarray(scanner.name),
        span=np.asarray(span),
        norm=norm,
        crystal_efficiency=eff,
        radial_factor=cn.geometric[0].astype(np.float32),
        radial_measured=np.ones(scanner.n_radial, dtype=bool),
        calibration_factor=np.asarray(kappa),
        summary=np.asarray(json.dumps(summary)),
        quantification_factor=np.asarray(cn.quantification_factor),
        **{f"component_{f}": np.asarray(getattr(cn, f), dtype=np.float32) for f in _FIELDS},
    )
    return summary

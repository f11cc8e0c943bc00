"""The DICOM form of a Biograph mMR list-mode export: ``foo.dcm`` (header) + ``foo.bf`` (data).

The scanner's DICOM export of a list-mode acquisition is two files with one stem:

* ``foo.dcm``, a DICOM file of the Siemens private SOP class *CSA Non-Image Storage*
  (:data:`SIEMENS_CSA_NON_IMAGE_STORAGE`), whose private block ``SIEMENS CSA NON-IMAGE`` in
  group 0029 holds the data type ``MRPETLM_LARGE`` (element ``xx08``, *CSA Data Type*) and the
  list-mode Interfile header, the same text as a ``.l.hdr``, as bytes (element ``xx10``, *CSA Data
  Info*). The block is ``0x10`` or ``0x11`` depending on the software version, so the header sits at
  (0029,1010) or (0029,1110): NiftyPET ``mmraux.hdr_lm`` looks at exactly these two tags and takes
  the one whose text holds ``!INTERFILE``; the private dictionary of pydicom names the elements.
* ``foo.bf``, the raw PETLINK words, byte for byte what a ``.l`` file holds (NiftyPET
  ``mmraux.get_dicoms`` takes ``dfile[:-4] + '.bf'`` beside the ``.dcm`` as the list-mode data).

:func:`dicom_path` and :func:`bf_path` map a path of either file to the other (``data_path`` and
``header_path`` of :mod:`petiq.listmode.header` use them); :func:`read_interfile_text` takes the header out of a ``.dcm``; :func:`write_dicom_header` writes a
``.dcm`` around a header text (a fresh one with Siemens-like public attributes, or a copy of a
template ``.dcm`` with the header replaced). The readers and writers of :mod:`petiq.listmode` call
these, so every entry point takes a ``.dcm`` (or its ``.bf``) where it takes a ``.l``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from petiq.core.errors import PetiqInputError

#: Siemens' private SOP class "CSA Non-Image Storage" (not a DICOM standard class, so not in
#: pydicom's UID dictionary): the SOP Class UID of Siemens raw-data objects (list-mode, norm,
#: sinograms, calibration) with the CSA NON-IMAGE block, e.g. the PET_LISTMODE and PET_CALIBRATION
#: headers of a Biograph Vision Quadra kept as test data in Australian-Imaging-Service/medimages4tests
#: (same (0029,0010) "SIEMENS CSA NON-IMAGE" layout as the mMR's); GDCM's MediaStorage lists it as
#: "exCSA_Non-Image_Storage". No genuine mMR .dcm was at hand to confirm it for the mMR itself.
SIEMENS_CSA_NON_IMAGE_STORAGE = "1.3.12.2.1107.5.9.1"
#: Private creator of the raw-data block in group 0029 (pydicom private dictionary: xx08 CSA Data
#: Type, xx09 CSA Data Version, xx10 CSA Data Info).
CSA_NON_IMAGE = "SIEMENS CSA NON-IMAGE"
#: The tags where NiftyPET ``mmraux.hdr_lm`` finds the list-mode Interfile header (software B20P/E11
#: at (0029,1010), B18P at either).
HEADER_TAGS = ((0x0029, 0x1010), (0x0029, 0x1110))
#: CSA Data Type of a list-mode export with a ``.bf`` beside it (NiftyPET NIMPA ``dcminfo``; a
#: public MATLAB mMR reader, ``ParseDicomDataFile.m``, reads it from (0029,1008) or (0029,1108) and
#: requires the ``.bf`` for exactly this type).
LISTMODE_DATA_TYPE = "MRPETLM_LARGE"
#: Other CSA Data Types an mMR export folder holds (NIMPA ``dcminfo``), refused with their name.
OTHER_DATA_TYPES = {"MRPETNORM": "a normalisation (.n) export", "MRPETSINO": "a sinogram export"}
#: Public attributes of a written ``.dcm``, as an mMR export carries them: NIMPA ``dcminfo`` takes
#: Manufacturer "SIEMENS" with a model containing "mMR"/"Biograph" for the mMR, and ImageType
#: "PET_LISTMODE" / ImageComments "Listmode" for list-mode; NiftyPET ``mmraux.hdr_lm`` accepts
#: SoftwareVersions "syngo MR B18P", "syngo MR B20P" and "syngo MR E11".
PUBLIC_ATTRIBUTES = {
    "Modality": "PT",
    "Manufacturer": "SIEMENS",
    "ManufacturerModelName": "Biograph_mMR",
    "SoftwareVersions": "syngo MR E11",
    "ImageType": ["ORIGINAL", "PRIMARY", "PET_LISTMODE"],
    "ImageComments": "Listmode",
    "SeriesDescription": "PET Raw Data",  # as in the Siemens raw-data headers of medimages4tests
}

#: ``!originating system`` of an mMR header (STIR ``InterfileHeaderSiemens``; header.MMR_ORIGINATING_SYSTEM).
MMR_SYSTEM = "2008"

_DICOM_SUFFIX = ".dcm"
_DATA_SUFFIX = ".bf"


def is_dicom_form(path: str | Path) -> bool:
    """True for a ``.dcm`` or ``.bf`` path (either file of the DICOM form), any case.

    >>> is_dicom_form("PET_LM.dcm"), is_dicom_form("x/PET_LM.BF"), is_dicom_form("PETLM.l")
    (True, True, False)
    """
    return Path(path).suffix.lower() in (_DICOM_SUFFIX, _DATA_SUFFIX)


def _partner(path: str | Path, suffix: str) -> Path:
    """``path`` itself when it has ``suffix`` (any case), else its stem with ``suffix``; upper case
    when only that file exists."""
    p = Path(path)
    if p.suffix.lower() == suffix:
        return p
    lower, upper = p.with_suffix(suffix), p.with_suffix(suffix.upper())
    return upper if not lower.exists() and upper.exists() else lower


def dicom_path(path: str | Path) -> Path:
    """The ``.dcm`` of a DICOM-form path (a ``.bf`` maps to the ``.dcm`` with its stem, ``.DCM``
    when only that exists)."""
    return _partner(path, _DICOM_SUFFIX)


def bf_path(path: str | Path) -> Path:
    """The ``.bf`` of a DICOM-form path: the ``.dcm``'s stem plus ``.bf`` (NiftyPET
    ``dfile[:-4] + '.bf'``), ``.BF`` when only that exists."""
    return _partner(path, _DATA_SUFFIX)


def decode(raw) -> str:
    if isinstance(raw, str):
        return raw
    raw = bytes(raw).rstrip(b"\x00 ")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def creator_blocks(ds, creator: str) -> list[int]:
    """Private block numbers (0x10-0xFF) of group 0029 reserved by ``creator``."""
    out = []
    for block in range(0x10, 0x100):
        elem = ds.get((0x0029, block))
        if elem is not None and str(elem.value).strip() == creator:
            out.append(block)
    return out


def _read_dataset(dcm: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not dcm.is_file():
        raise PetiqInputError(
            dcm,
            "the DICOM header of the list-mode export is missing",
            f"put the .dcm of the export beside its .bf, with the same name ({dcm.name})",
        )
    try:
        return pydicom.dcmread(dcm, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError) as exc:
        raise PetiqInputError(
            dcm,
            f"is not a DICOM file ({type(exc).__name__}: {exc})",
            "give the .dcm of the scanner's DICOM list-mode export (the .bf beside it holds the data), "
            "or the .l file of the Interfile export",
        ) from None


def read_interfile_text(path: str | Path) -> str:
    """The list-mode Interfile header kept in the Siemens private tags of an export's ``.dcm``
    (``path``: the ``.dcm`` or its ``.bf``), from ``!INTERFILE`` on, trailing padding removed."""
    dcm = dicom_path(path)
    ds = _read_dataset(dcm)
    blocks = creator_blocks(ds, CSA_NON_IMAGE)
    for block in blocks:
        kind = ds.get((0x0029, (block << 8) | 0x08))
        kind = str(kind.value).strip().upper() if kind is not None else ""
        if kind in OTHER_DATA_TYPES:
            raise PetiqInputError(
                dcm,
                f"its CSA Data Type (0029,{block:02X}08) is {kind!r}: {OTHER_DATA_TYPES[kind]}, not list-mode "
                f"({LISTMODE_DATA_TYPE})",
                "give the list-mode .dcm of the export (ImageType PET_LISTMODE)",
            )
    tags = [(0x0029, (b << 8) | 0x10) for b in blocks] + [t for t in HEADER_TAGS]
    for tag in dict.fromkeys(tags):
        elem = ds.get(tag)
        if elem is None or elem.value is None:
            continue
        text = decode(elem.value)
        at = text.find("!INTERFILE")
        if at >= 0:
            return text[at:]
    where = ", ".join(f"({g:04X},{e:04X})" for g, e in dict.fromkeys(tags))
    raise PetiqInputError(
        dcm,
        f"no list-mode Interfile header (text starting '!INTERFILE') in the Siemens private tags {where}",
        "give the list-mode .dcm of the scanner's raw-data export (CSA Data Type MRPETLM_LARGE); an image "
        "or a de-identified copy that dropped the private tags cannot be read",
    )


def uid(*parts: str) -> str:
    """A deterministic DICOM UID from ``parts`` (pydicom's ``generate_uid`` with entropy sources)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[hashlib.sha256("\x00".join(parts).encode()).hexdigest()])


def _header_field(text: str, key: str) -> str:
    want = key.lower()
    for line in text.splitlines():
        k, sep, v = line.partition(":=")
        if sep and k.strip().lstrip("!%").strip().lower() == want:
            return v.strip()
    return ""


def _new_dataset(text: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 100"
    for key, value in PUBLIC_ATTRIBUTES.items():
        setattr(ds, key, value)
    origin = _header_field(text, "originating system")
    if origin and origin != MMR_SYSTEM:  # a reduced simulated scanner is not an mMR
        ds.Manufacturer, ds.ManufacturerModelName = "petiq", f"simulated {origin}"
    date = _header_field(text, "study date (yyyy:mm:dd)").replace(":", "")
    time = _header_field(text, "study time (hh:mm:ss GMT+00:00)").replace(":", "")
    if date:
        ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = date
    if time:
        ds.StudyTime = ds.SeriesTime = ds.AcquisitionTime = time
    ds.PatientID = _header_field(text, "patient ID")
    ds.PatientName = ""
    ds.StudyInstanceUID = uid("study", ds.PatientID, date, time)
    ds.SeriesInstanceUID = uid("series", ds.PatientID, date, time)
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    block = ds.private_block(0x0029, CSA_NON_IMAGE, create=True)
    block.add_new(0x08, "CS", LISTMODE_DATA_TYPE)
    block.add_new(0x09, "LO", "1.0")
    return ds


def write_dicom_header(out: str | Path, header_text: str, *, template: str | Path | None = None) -> None:
    """Write the ``.dcm`` of the DICOM form to ``out`` (the caller renames it into place): the
    Interfile ``header_text`` in (0029,xx10) of the ``SIEMENS CSA NON-IMAGE`` block. With
    ``template`` (the ``.dcm`` the data came from), every attribute of the template is kept and
    only the header and the SOP Instance UID change; otherwise the public attributes are
    :data:`PUBLIC_ATTRIBUTES` (Manufacturer "petiq" and model "simulated <name>" when the header's
    originating system is not the mMR's) plus the study date and time of the header. UIDs are derived from
    the content, so the same input gives the same file."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    ds = _read_dataset(Path(template)) if template is not None else _new_dataset(header_text)
    blocks = creator_blocks(ds, CSA_NON_IMAGE)
    if not blocks:
        ds.private_block(0x0029, CSA_NON_IMAGE, create=True).add_new(0x08, "CS", LISTMODE_DATA_TYPE)
        blocks = creator_blocks(ds, CSA_NON_IMAGE)
    tag = (0x0029, (blocks[0] << 8) | 0x10)
    for old in HEADER_TAGS:  # a template's header under another creator would be read stale
        if old != tag and old in ds and "!INTERFILE" in decode(ds[old].value or b""):
            del ds[old]
    if (0x7FE1, 0x1010) in ds:  # the IMA form's inline copy of the data: the .bf holds the words
        del ds[0x7FE1, 0x1010]
    raw = header_text.encode("latin-1", errors="replace")
    ds.add_new(tag, "OB", raw + b"\x00" * (len(raw) % 2))  # even length, NUL padded (PS3.5 7.1.1)
    ds.SOPClassUID = SIEMENS_CSA_NON_IMAGE_STORAGE
    ds.SOPInstanceUID = uid("instance", header_text)
    meta = getattr(ds, "file_meta", None) or FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    ds.save_as(out, enforce_file_format=True)

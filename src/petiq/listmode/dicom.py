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

:func:`data_path` and :func:`header_path` map a path of either form to its data and header file; :func:`read_interfile_text` takes the header out of a ``.dcm``. The readers of :mod:`petiq.listmode` call
these, so every entry point takes a ``.dcm`` (or its ``.bf``) where it takes a ``.l``.
"""

from __future__ import annotations

from pathlib import Path

from petiq.errors import PetiqInputError

#: Siemens' private SOP class "CSA Non-Image Storage" (not a DICOM standard class): the SOP Class
#: UID of Siemens raw-data objects (list-mode, norm, sinograms, calibration), e.g. the PET_LISTMODE
#: and PET_CALIBRATION DICOM headers kept as test data in Australian-Imaging-Service/medimages4tests;
#: GDCM lists it as "exCSA_Non-Image_Storage", pynetdicom users add it as a private context.
SIEMENS_CSA_NON_IMAGE_STORAGE = "1.3.12.2.1107.5.9.1"
#: Private creator of the raw-data block in group 0029 (pydicom private dictionary: xx08 CSA Data
#: Type, xx09 CSA Data Version, xx10 CSA Data Info).
CSA_NON_IMAGE = "SIEMENS CSA NON-IMAGE"
#: The tags where NiftyPET ``mmraux.hdr_lm`` finds the list-mode Interfile header (software B20P/E11
#: at (0029,1010), B18P at either).
HEADER_TAGS = ((0x0029, 0x1010), (0x0029, 0x1110))
#: CSA Data Type of a list-mode export with a ``.bf`` beside it (NiftyPET NIMPA ``dcminfo``;
#: the mMR MATLAB toolbox's ``ParseDicomDataFile`` requires the ``.bf`` for exactly this type).
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
    "SeriesDescription": "PET Raw Data",
}

_DICOM_SUFFIX = ".dcm"
_DATA_SUFFIX = ".bf"


def is_dicom_form(path: str | Path) -> bool:
    """True for a ``.dcm`` or ``.bf`` path (either file of the DICOM form), any case.

    >>> is_dicom_form("PET_LM.dcm"), is_dicom_form("x/PET_LM.BF"), is_dicom_form("PETLM.l")
    (True, True, False)
    """
    return Path(path).suffix.lower() in (_DICOM_SUFFIX, _DATA_SUFFIX)


def dicom_path(path: str | Path) -> Path:
    """The ``.dcm`` of a DICOM-form path (a ``.bf`` maps to the ``.dcm`` with its stem, ``.DCM``
    when only that exists)."""
    p = Path(path)
    if p.suffix.lower() == _DICOM_SUFFIX:
        return p
    lower = p.with_suffix(_DICOM_SUFFIX)
    upper = p.with_suffix(_DICOM_SUFFIX.upper())
    return upper if not lower.exists() and upper.exists() else lower


def bf_path(path: str | Path) -> Path:
    """The ``.bf`` of a DICOM-form path: the ``.dcm``'s stem plus ``.bf`` (NiftyPET
    ``dfile[:-4] + '.bf'``), ``.BF`` when only that exists."""
    p = Path(path)
    if p.suffix.lower() == _DATA_SUFFIX:
        return p
    lower = p.with_suffix(_DATA_SUFFIX)
    upper = p.with_suffix(_DATA_SUFFIX.upper())
    return upper if not lower.exists() and upper.exists() else lower


def _decode(raw) -> str:
    if isinstance(raw, str):
        return raw
    raw = bytes(raw).rstrip(b"\x00 ")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _creator_blocks(ds, creator: str) -> list[int]:
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
    blocks = _creator_blocks(ds, CSA_NON_IMAGE)
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
        text = _decode(elem.value)
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

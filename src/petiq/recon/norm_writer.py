"""Writing a component normalisation as the mMR exports it: ``.n`` + ``.n.hdr``, or the norm DICOM
(CSA Data Type ``MRPETNORM``) — what the simulator writes as its scanner's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petiq.core.fileio import atomic_path
from petiq.scanner.geometry import Scanner

from .component_norm import (
    AXIS_LABELS,
    COMPONENTS,
    DICOM_SUFFIXES,
    FIELDS,
    NORM_DATA_TYPE,
    QF_KEY,
    ComponentNorm,
    component_layout,
    interfile_pair,
    system_name,
    validate,
)


def _header_text(cn: ComponentNorm, scanner: Scanner, data_name: str) -> str:
    layout = component_layout(scanner)
    lines = [
        "!INTERFILE:=",
        "%comment:=SMS-MI normalization (written by petiq)",
        f"!originating system:={system_name(scanner)}",
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
            f"%matrix axis label[{i}]:={AXIS_LABELS[field]}",
        ]
        at += 4 * int(np.prod(shape))
    lines += [
        f"{QF_KEY}:={cn.quantification_factor:.10e}",
        "%cross calibration factor:=1.0",
        "",
    ]
    return "\r\n".join(lines)


def _write_dicom(path: Path, cn: ComponentNorm, scanner: Scanner, raw: bytes) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    from petiq.listmode.dicom import (
        CSA_NON_IMAGE,
        PUBLIC_ATTRIBUTES,
        SIEMENS_CSA_NON_IMAGE_STORAGE,
        uid,
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
    ds.StudyInstanceUID = uid("norm-study", text)
    ds.SeriesInstanceUID = uid("norm-series", text)
    ds.SeriesNumber = ds.InstanceNumber = 1
    block = ds.private_block(0x0029, CSA_NON_IMAGE, create=True)
    block.add_new(0x08, "CS", NORM_DATA_TYPE)
    block.add_new(0x09, "LO", "1.0")
    hdr = text.encode("latin-1", errors="replace")
    block.add_new(0x10, "OB", hdr + b"\x00" * (len(hdr) % 2))
    ds.private_block(0x7FE1, CSA_NON_IMAGE, create=True).add_new(0x10, "OB", raw)  # the .IMA form (NiftyPET)
    ds.SOPClassUID = SIEMENS_CSA_NON_IMAGE_STORAGE
    ds.SOPInstanceUID = uid("norm-instance", text, str(len(raw)), str(hash(raw)))
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    with atomic_path(path) as tmp:
        ds.save_as(tmp, enforce_file_format=True)


def write_component_norm(path, cn: ComponentNorm, scanner: Scanner | str | None = None) -> Path:
    """Write ``cn`` as the scanner writes it; returns the file holding the components.

    ``path`` ending in ``.n`` (or ``.n.hdr``): the ``.n`` and its ``.n.hdr``, each atomically (data
    first, so a header never names missing data). ``.dcm``/``.IMA``: one DICOM file with the header
    in (0029,1010) (CSA Data Type ``MRPETNORM``) and the components inline in (7FE1,1010), the form
    NiftyPET extracts. ``scanner`` defaults to the preset ``cn.scanner``."""
    scanner = Scanner.from_name(scanner or cn.scanner) if not isinstance(scanner, Scanner) else scanner
    p = Path(path)
    validate(cn, scanner, p)
    raw = b"".join(np.ascontiguousarray(getattr(cn, f), dtype="<f4").tobytes() for f in FIELDS)
    if p.suffix.lower() in DICOM_SUFFIXES:
        _write_dicom(p, cn, scanner, raw)
        return p
    hdr_path, data_path = interfile_pair(p)
    with atomic_path(data_path) as tmp:
        tmp.write_bytes(raw)
    with atomic_path(hdr_path) as tmp:
        tmp.write_bytes(_header_text(cn, scanner, data_path.name).encode("latin-1", errors="replace"))
    return data_path

"""Hardware μ-maps (head-and-neck coil, table) placed in the scanner frame from the list-mode header's
bed position and the CSA table offsets, with NiftyPET's ``get_hmupos`` formula."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.scanner.frame import SCANNER_TO_RAS, scanner_grid_affine
from petiq.scanner.geometry import Scanner

from .mumap import FIX_FORMAT, check_values, dicom_files, header_voxel_xyz, ival, read_interfile, sniff


# ----------------------------------------------------------------------------- hardware
def read_bed_position_mm(listmode) -> float | None:
    """``start horizontal bed position (mm)`` of a list-mode header (Interfile or DICOM form), or
    None when absent (NiftyPET ``mmraux.vh_bedpos``)."""
    from petiq.listmode.header import header_value, read_listmode_header

    header = read_listmode_header(listmode)
    value = header_value(header, "start horizontal bed position (mm)")
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise PetiqInputError(
            listmode, f"'start horizontal bed position (mm)' is {value!r}", "give the bed position in mm"
        ) from None


#: The CSA headers of a Siemens DICOM where NiftyPET finds the table offsets: CSA Series Header Info
#: (0029,1020) (``hdr_mu`` for the μ-map; ``hdr_lm`` for the list-mode, else (0029,1120)).
CSA_SERIES_TAGS = ((0x0029, 0x1020), (0x0029, 0x1120))


_OFFSET_KEYS = {
    "TablePositionOrigin": "table_position_origin_mm",
    "GantryTableHomeOffset": "gantry_table_home_offset_mm",
}


def _csa_elements(blob: bytes) -> dict[str, list[str]]:
    """Element name -> value strings of a Siemens CSA header (CSA2 ``SV10`` or CSA1), the layout
    nibabel's ``nicom.csareader`` reads: per element 64-byte name, vm, 4-byte vr, syngodt, n_items,
    a marker (77 or 205); per item four int32 (CSA2 length: the second) and the value padded to 4."""
    import struct

    out: dict[str, list[str]] = {}
    csa2 = blob[:4] == b"SV10"
    ptr = 8 if csa2 else 0
    try:
        n_tags, _ = struct.unpack_from("<2I", blob, ptr)
        ptr += 8
        if not 0 < n_tags <= 1000:
            return out
        first_n_items = 0
        for tag_no in range(n_tags):
            name, vm, _vr, _dt, n_items, _mark = struct.unpack_from("<64si4s3i", blob, ptr)
            ptr += 84
            if tag_no == 1:
                first_n_items = n_items
            values = []
            for _ in range(n_items):
                x0, x1, _x2, _x3 = struct.unpack_from("<4i", blob, ptr)
                ptr += 16
                length = x1 if csa2 else x0 - first_n_items
                if length < 0 or ptr + length > len(blob):
                    break
                text = blob[ptr : ptr + length].split(b"\x00")[0].decode("latin-1").strip()
                if text:
                    values.append(text)
                ptr += length + (-length) % 4
            out[name.split(b"\x00")[0].decode("latin-1")] = values[: vm or None]
    except struct.error:
        pass
    return out


def read_table_offsets_mm(dicom) -> dict[str, tuple[float, float, float] | None]:
    """``TablePositionOrigin`` and ``GantryTableHomeOffset`` (x, y, z mm) from the CSA Series Header
    Info of a Siemens DICOM (a μ-map file, the first file of a μ-map folder, or a list-mode ``.dcm``),
    as NiftyPET ``get_hmupos`` takes them (the first from the list-mode's, the second from the
    μ-map's): keys ``table_position_origin_mm`` / ``gantry_table_home_offset_mm``, None when absent.
    The CSA elements are read as such; a header that holds the name only as text is searched as
    NiftyPET searches it (the numbers after the name)."""
    import pydicom

    path = Path(dicom)
    f = dicom_files(path)[0] if path.is_dir() else path
    try:
        ds = pydicom.dcmread(str(f), stop_before_pixels=True)
    except Exception as error:  # noqa: BLE001 - pydicom raises many types for a non-DICOM
        raise PetiqInputError(
            f,
            f"cannot read as DICOM ({type(error).__name__}: {error})",
            "give the scanner's DICOM μ-map or list-mode .dcm",
        ) from None
    out: dict[str, tuple[float, float, float] | None] = dict.fromkeys(_OFFSET_KEYS.values())
    for tag in CSA_SERIES_TAGS:
        elem = ds.get(tag)
        if elem is None or not isinstance(elem.value, (bytes, bytearray)):
            continue
        blob = bytes(elem.value)
        elements = _csa_elements(blob)
        for name, key in _OFFSET_KEYS.items():
            if out[key] is not None:
                continue
            values = elements.get(name)
            if not values:  # NiftyPET's way: the first three numbers after the name
                at = blob.find(name.encode())
                if at < 0:
                    continue
                values = re.findall(rb"-?\d+\.\d+|-?\d+", re.sub(rb"[^0-9.\- ]", b" ", blob[at + len(name) : at + 400]))
                values = [v.decode() for v in values]
            try:
                triple = tuple(float(v) for v in values[:3])
            except ValueError:
                raise PetiqInputError(
                    f, f"CSA {name} is {values[:3]!r}, not numbers", "give the DICOM as the scanner exported it"
                ) from None
            if len(triple) == 3:
                out[key] = triple
    return out


def hardware_affine(
    hdr: Mapping[str, str],
    shape_xyz,
    bed_position_mm: float,
    table_position_origin_mm=(0.0, 0.0, 0.0),
    gantry_table_home_offset_mm=(0.0, 0.0, 0.0),
    path=None,
) -> np.ndarray:
    """RAS+ affine of a hardware μ-map array ``[x, y, z]`` (transposed e7 ``[z, y, x]``) placed as
    NiftyPET ``get_hmupos`` places it (see the module docstring); offsets are (x, y, z) in mm."""
    vs = header_voxel_xyz(hdr, path)  # mm, xyz

    def triple(key, default="0"):
        try:
            return np.array([float(ival(hdr, f"{key} [{i}]", path, default)) for i in (1, 2, 3)])
        except ValueError:
            raise PetiqInputError(path, f"'{key}' is not a number", "give the site's hardware μ-map header") from None

    origin = triple("$umap origin (pixels)")
    offset = triple("$origin offset (mm)")
    tpo = np.asarray(table_position_origin_mm, dtype=float)
    gto = np.asarray(gantry_table_home_offset_mm, dtype=float)
    # NiftyPET (cm, zyx): org = (-o3, o2, o1), off = 0.1 (-f3, f2, f1), vpos = -org vs + off + gto - tpo
    org = np.array([origin[0], origin[1], -origin[2]])  # xyz order
    off = np.array([offset[0], offset[1], -offset[2]])
    vpos = -org * vs + off + gto - tpo  # mm, xyz
    corner = np.array([vpos[0], -vpos[1], float(bed_position_mm) - vpos[2]])  # scanner mm of voxel (0,0,0)
    axes = np.diag([vs[0], -vs[1], vs[2]])  # scanner mm per index step
    affine = np.eye(4)
    affine[:3, :3] = SCANNER_TO_RAS @ axes
    affine[:3, 3] = SCANNER_TO_RAS @ corner
    return affine


def hardware_mumap(
    paths: Sequence,
    scanner: Scanner,
    bed_position_mm: float | None = None,
    *,
    listmode=None,
    table_position_origin_mm=(0.0, 0.0, 0.0),
    gantry_table_home_offset_mm=(0.0, 0.0, 0.0),
) -> tuple[np.ndarray, list[dict]]:
    """Sum of the site's hardware μ-maps (head-and-neck coil, table; e7 Interfile with NiftyPET's
    ``$umap origin``/``$origin offset`` keys, or NIfTI already in the patient frame) on
    ``scanner``'s image grid, each placed by the bed position (``bed_position_mm``, else the
    list-mode header's ``start horizontal bed position (mm)``; neither is an error before any work).
    Returns ``(μ cm⁻¹ float32 on the scanner grid, [info per file])``."""
    paths = [Path(p) for p in paths]
    if not paths:
        return np.zeros(scanner.image_shape, np.float32), []
    where = paths[0]
    if bed_position_mm is None and listmode is not None:
        bed_position_mm = read_bed_position_mm(listmode)
        where = listmode
    if bed_position_mm is None:
        raise PetiqInputError(
            where,
            "hardware μ-maps need the bed position, but none was given and the list-mode "
            "header has no 'start horizontal bed position (mm)'",
            "pass the list-mode file whose header holds the bed position, or give bed_position_mm",
        )
    for p in paths:
        if not p.exists():
            raise PetiqInputError(
                p,
                "hardware μ-map not found",
                "put the site's hardware μ-maps where the patient sheet's hardware_mumaps names them",
            )
    total = np.zeros(scanner.image_shape, np.float32)
    infos = []
    for p in paths:
        kind = sniff(p)
        if kind == "interfile":
            im, hdr, _ = read_interfile(p)
            mu = check_values(np.ascontiguousarray(np.transpose(im, (2, 1, 0))), p, "hardware", hardware=True)
            affine = hardware_affine(
                hdr, mu.shape, bed_position_mm, table_position_origin_mm, gantry_table_home_offset_mm, p
            )
        elif kind == "nifti":
            from petiq.scanner.frame import load_nifti

            mu, affine = load_nifti(p, "hardware μ-map", FIX_FORMAT)
            mu = check_values(mu, p, "hardware", hardware=True)
        else:
            raise PetiqInputError(p, "hardware μ-map is neither e7 Interfile nor NIfTI", "give the site's files")
        total += _resample_hardware(mu, affine, scanner)
        infos.append({"path": str(p), "format": kind, "shape": list(mu.shape)})
    return total, infos


def _resample_hardware(mu, affine, scanner: Scanner) -> np.ndarray:
    """Hardware reaches beyond the image grid (the table is long): keep the part inside, no check."""
    from scipy import ndimage

    shape = tuple(int(s) for s in scanner.image_shape)
    target = scanner_grid_affine(shape, scanner.voxel_size_mm)
    m = np.linalg.inv(affine) @ target
    return ndimage.affine_transform(
        np.asarray(mu, np.float32), m[:3, :3], offset=m[:3, 3], output_shape=shape, order=1, mode="constant", cval=0.0
    ).astype(np.float32)

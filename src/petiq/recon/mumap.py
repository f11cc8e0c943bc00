"""μ-maps as an mMR site exports them: read (NIfTI, e7 Interfile, DICOM), map onto the scanner
grid, add the hardware (coil, table) μ-maps placed by the bed position.

Conventions (taken from NiftyPET, ``niftypet/nipet/img/mmrimg.py``, and written here anew):

* e7 Interfile μ-map (``.v`` + ``.v.hdr``): raw float32 little-endian (``getinterfile``:
  ``np.fromfile(f, np.float32)``), array order ``[z, y, x]`` = ``[slice, row v, column u]``
  (``im.shape = (SO_IMZ, SO_IMY, SO_IMX)``), mMR size 344 x 344 x 127 of 2.08626 x 2.08626 x 2.03125 mm
  (``getmu_off``'s ``Cim``), values in cm⁻¹. Column ``u`` runs along scanner +x, row ``v`` along -y,
  slice ``z`` along +z (:mod:`petiq.scanner.frame`); the image is centred on the scanner.
* DICOM μ-map: pixel values are 10⁴ x cm⁻¹ (``mudcm2nii``: ``mu *= 0.0001``; ``obj_mumap``:
  ``mu / 1e4``), placed by ImagePositionPatient / ImageOrientationPatient (DICOM LPS, turned to RAS).
* Hardware μ-maps (``rd_hmu``, ``hmu_shape``, ``hmu_voxsize``, ``hmu_origin``, ``hmu_offset``,
  ``get_hmupos``): e7 Interfile, ``matrix size [1..3]`` (x, y, z), ``scale factor (mm/pixel) [1..3]``,
  ``$umap origin (pixels) [1..3]``, ``$origin offset (mm) [1..3]``; in cm, zyx order,
  ``org = (-o3, o2, o1)``, ``off = 0.1 (-f3, f2, f1)`` and the corner voxel
  ``vpos = -org*vs + off + GantryTableHomeOffset - TablePositionOrigin``. Its NIfTI affine and
  the reference grid's (``B[2, 3] = 10 ((-0.5 SO_IMZ + 1) vz + hbedpos)``) put voxel ``(k, j, i)``
  at scanner ``x = vpos_x + i vs_x``, ``y = -(vpos_y + j vs_y)``, ``z = hbed - vpos_z + k vs_z``
  (cm; ``hbed`` the list-mode header's ``start horizontal bed position``). petiq uses these
  positions on its exactly centred grid (NiftyPET's reference grid is half a voxel off its own
  projector's, :mod:`petiq.scanner.frame`), so petiq's placement differs from NiftyPET's by half a voxel.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.scanner.frame import (
    SCANNER_TO_RAS,
    check_affine,
    scanner_grid_affine,
    to_scanner_grid,
)
from petiq.scanner.geometry import Scanner

__all__ = [
    "DICOM_MU_SCALE",
    "read_mumap",
    "to_scanner_frame",
]


#: DICOM μ-maps store 10⁴ x cm⁻¹ (NiftyPET ``mudcm2nii``/``obj_mumap``).
DICOM_MU_SCALE = 1e4


#: Largest plausible μ (cm⁻¹) at 511 keV; dense bone ≈ 0.17, metal coil parts a little more.
MU_MAX_CM = 2.0


#: A tissue μ-map whose maximum is below this is likely in 1/mm (water 0.0096 /mm).
MU_MIN_MAX_CM = 0.03


#: Tissue threshold (cm⁻¹) for coverage checks: a tenth of water.
_TISSUE_CM = 0.0096


FIX_FORMAT = (
    "give the μ-map as NIfTI (cm⁻¹), e7 Interfile (.v + .v.hdr, cm⁻¹) or the scanner's DICOM μ-map series (10⁴ x cm⁻¹)"
)


# ----------------------------------------------------------------------------- value checks
def check_values(mu: np.ndarray, path, source: str, *, hardware: bool = False) -> np.ndarray:
    mu = np.asarray(mu, dtype=np.float32)
    if mu.ndim != 3 or min(mu.shape) < 1:
        raise PetiqInputError(path, f"μ-map has shape {mu.shape}, expected a 3-D volume", FIX_FORMAT)
    bad = int(np.count_nonzero(~np.isfinite(mu)))
    if bad:
        raise PetiqInputError(path, f"μ-map has {bad} NaN/infinite voxels", "regenerate the μ-map")
    peak = float(mu.max())
    if peak > MU_MAX_CM:
        hint = (
            " (10⁴ x cm⁻¹ DICOM scaling left in? water would read 960)"
            if peak > 100
            else " (1/m? water would read 9.6)"
        )
        raise PetiqInputError(
            path,
            f"{source} μ-map maximum {peak:.4g} is implausible for cm⁻¹ (water 0.096, bone ≤ 0.2){hint}",
            "give μ in cm⁻¹ (divide a 10⁴-scaled map by 10⁴)",
        )
    if not hardware and 0 < peak < MU_MIN_MAX_CM:
        raise PetiqInputError(
            path,
            f"{source} μ-map maximum {peak:.4g} is implausible for cm⁻¹ (water 0.096; a μ-map in 1/mm reads 0.0096)",
            "give μ in cm⁻¹ (multiply 1/mm by 10)",
        )
    if float(mu.min()) < -1e-3:
        raise PetiqInputError(
            path,
            f"μ-map has negative values (min {float(mu.min()):.4g})",
            "attenuation coefficients are ≥ 0: regenerate the μ-map",
        )
    return np.clip(mu, 0, None)


# ----------------------------------------------------------------------------- Interfile
def _parse_interfile(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        if ":=" not in line:
            continue
        key, _, value = line.partition(":=")
        key = re.sub(r"\s+", " ", key.strip().lstrip("!%").strip().lower())
        key = re.sub(r"\s*\[\s*", " [", key)
        out[key] = value.strip()
    return out


def ival(hdr: Mapping[str, str], key: str, path, default=None) -> str:
    value = hdr.get(key)
    if value is None or value == "":
        if default is not None:
            return default
        raise PetiqInputError(
            path, f"Interfile header lacks '{key}'", "give the e7 μ-map header (.v.hdr) as the scanner wrote it"
        )
    return value


def _interfile_paths(path: Path) -> tuple[Path, Path]:
    name = path.name
    if name.lower().endswith((".hdr", ".hv", ".h33")):
        hdr = path
    elif path.with_name(name + ".hdr").is_file():
        hdr = path.with_name(name + ".hdr")
    else:
        raise PetiqInputError(
            path,
            "no Interfile header next to it (expected " + name + ".hdr)",
            "put the e7 header (.v.hdr) beside the .v data file",
        )
    return hdr, path


def read_interfile(path: Path) -> tuple[np.ndarray, dict[str, str], Path]:
    """``(array [z, y, x] float32, header dict, data path)`` of an e7 Interfile image
    (NiftyPET ``rd_hmu``, ``getinterfile``, ``hmu_shape``)."""
    hdr_path, _ = _interfile_paths(path)
    try:
        text = hdr_path.read_text(encoding="latin-1")
    except OSError as error:
        raise PetiqInputError(hdr_path, f"cannot read the Interfile header ({error})", FIX_FORMAT) from None
    if "interfile" not in text[:200].lower() and ":=" not in text:
        raise PetiqInputError(hdr_path, "not an Interfile header (no '!INTERFILE' / 'key := value' lines)", FIX_FORMAT)
    hdr = _parse_interfile(text)
    mhdr = hdr_path.with_name(hdr_path.name.replace(".v.hdr", ".mhdr"))
    if mhdr != hdr_path and mhdr.is_file():  # e7 main header: keys the image header lacks
        for key, value in _parse_interfile(mhdr.read_text(encoding="latin-1")).items():
            hdr.setdefault(key, value)
    kind = hdr.get("data description", "") + " " + hdr.get("originating system", "")
    if (
        "listmode" in hdr.get("type of data", "").lower().replace(" ", "")
        or "sinogram" in kind.lower()
        or ("total listmode word counts" in hdr)
    ):
        raise PetiqInputError(
            hdr_path,
            f"an Interfile of raw data (type of data {hdr.get('type of data')!r}), not a μ-map image",
            FIX_FORMAT,
        )
    try:
        shape_xyz = [int(ival(hdr, f"matrix size [{i}]", hdr_path)) for i in (1, 2, 3)]
    except ValueError:
        raise PetiqInputError(hdr_path, "matrix size is not an integer", FIX_FORMAT) from None
    fmt = ival(hdr, "number format", hdr_path, "float").lower()
    nbytes = int(ival(hdr, "number of bytes per pixel", hdr_path, "4"))
    order = ival(hdr, "imagedata byte order", hdr_path, "LITTLEENDIAN").upper().replace(" ", "")
    endian = ">" if order.startswith("BIG") else "<"
    if "float" in fmt and nbytes == 4:
        dtype = np.dtype(endian + "f4")
    elif "float" in fmt and nbytes == 8:
        dtype = np.dtype(endian + "f8")
    elif "integer" in fmt and nbytes == 2:
        dtype = np.dtype(endian + ("u2" if "unsigned" in fmt else "i2"))
    else:
        raise PetiqInputError(hdr_path, f"number format {fmt!r} with {nbytes} bytes per pixel", "give float μ-maps")
    name = ival(hdr, "name of data file", hdr_path, path.name.removesuffix(".hdr"))
    data_path = hdr_path.parent / Path(name.strip()).name
    if not data_path.is_file():
        raise PetiqInputError(
            hdr_path,
            f"data file {data_path.name!r} named by the header is missing",
            "put the .v data file beside its header",
        )
    n = int(np.prod(shape_xyz))
    size = data_path.stat().st_size
    if size != n * dtype.itemsize:
        raise PetiqInputError(
            data_path,
            f"data file holds {size} bytes, header says {shape_xyz[0]} x "
            f"{shape_xyz[1]} x {shape_xyz[2]} x {dtype.itemsize} = "
            f"{n * dtype.itemsize}",
            "give the .v file that belongs to this header",
        )
    im = np.fromfile(data_path, dtype=dtype).astype(np.float32).reshape(shape_xyz[::-1])
    return im, hdr, data_path


def header_voxel_xyz(hdr: Mapping[str, str], path) -> np.ndarray:
    try:
        return np.array([float(ival(hdr, f"scale factor (mm/pixel) [{i}]", path)) for i in (1, 2, 3)])
    except ValueError:
        raise PetiqInputError(path, "scale factor (mm/pixel) is not a number", FIX_FORMAT) from None


def _e7_image_affine(shape_xyz, voxel_xyz) -> np.ndarray:
    """RAS+ affine of an e7 image transposed to ``[u, v, z]``: petiq's centred scanner grid with the
    row axis flipped (row ``v`` runs along -y)."""
    affine = scanner_grid_affine(shape_xyz, voxel_xyz)
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, shape_xyz[1] - 1.0
    return affine @ flip


# ----------------------------------------------------------------------------- DICOM
def dicom_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise PetiqInputError(path, "the DICOM μ-map folder is empty", FIX_FORMAT)
        return files
    return [path]


def _read_dicom(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """DICOM μ-map series → ``(μ cm⁻¹ [col, row, slice], RAS+ affine, info)``."""
    import pydicom

    slices = []
    for f in dicom_files(path):
        try:
            ds = pydicom.dcmread(str(f))
        except Exception as error:  # noqa: BLE001 - pydicom raises many types for a non-DICOM
            raise PetiqInputError(f, f"cannot read as DICOM ({type(error).__name__}: {error})", FIX_FORMAT) from None
        modality = str(ds.get("Modality", ""))
        image_type = "\\".join(str(t) for t in (ds.get("ImageType") or [])).upper()
        units = str(ds.get("Units", "")).upper()
        description = str(ds.get("SeriesDescription", "")).upper()
        if "PixelData" not in ds:
            raise PetiqInputError(
                f,
                f"DICOM without pixel data (Modality {modality!r}; raw data such as list-mode or a sinogram?)",
                FIX_FORMAT,
            )
        marks = (image_type + "\\" + description).replace("_", "").replace("-", "").replace(" ", "")
        is_mu = any(m in marks for m in ("UMAP", "MRAC", "ATTENUATION"))
        if modality == "PT" or units in ("BQML", "CNTS", "SUV", "PROPCPS") or not is_mu:
            raise PetiqInputError(
                f,
                f"DICOM is not a μ-map (Modality {modality!r}, ImageType {image_type!r}, "
                f"SeriesDescription {description!r}, Units {units or '(none)'!r}; a PET image in "
                "Bq/mL or an MR image? μ-maps carry UMAP/MRAC in ImageType or SeriesDescription)",
                FIX_FORMAT,
            )
        slices.append((f, ds))
    if len(slices) == 1 and int(slices[0][1].get("NumberOfFrames", 1) or 1) > 1:
        return _dicom_multiframe(*slices[0])
    return _dicom_stack(slices, path)


def _rescale(ds, pixels) -> np.ndarray:
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return (pixels.astype(np.float64) * slope + intercept) / DICOM_MU_SCALE


def _lps_affine(row_cos, col_cos, normal, spacing_rc, slice_step, origin) -> np.ndarray:
    """RAS+ affine of an array ``[col index, row index, slice]`` from DICOM LPS geometry."""
    a = np.eye(4)
    a[:3, 0] = np.asarray(row_cos) * spacing_rc[1]  # along a row: the column index grows
    a[:3, 1] = np.asarray(col_cos) * spacing_rc[0]
    a[:3, 2] = np.asarray(normal) * slice_step
    a[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ a  # LPS -> RAS


def _dicom_stack(slices, path) -> tuple[np.ndarray, np.ndarray, dict]:
    ds0 = slices[0][1]
    try:
        iop = np.asarray(ds0.ImageOrientationPatient, dtype=float)
        spacing = np.asarray(ds0.PixelSpacing, dtype=float)
        row_cos, col_cos = iop[:3], iop[3:]
        normal = np.cross(row_cos, col_cos)
        ordered = sorted(slices, key=lambda s: float(np.dot(np.asarray(s[1].ImagePositionPatient, float), normal)))
        positions = [np.asarray(s[1].ImagePositionPatient, dtype=float) for s in ordered]
        planes = [_rescale(s[1], s[1].pixel_array) for s in ordered]
    except AttributeError as error:
        raise PetiqInputError(
            slices[0][0],
            f"DICOM μ-map lacks geometry ({error})",
            "give the scanner's DICOM μ-map with ImagePositionPatient/ImageOrientationPatient/PixelSpacing",
        ) from None
    if len(positions) > 1:
        steps = np.diff([float(np.dot(p, normal)) for p in positions])
        if steps.min() <= 0 or np.ptp(steps) > 1e-3 * max(abs(float(steps.mean())), 1e-6) + 1e-3:
            raise PetiqInputError(
                path,
                f"DICOM μ-map slices are not evenly spaced (steps {np.unique(steps.round(3))} mm) or repeat a position",
                "give one complete μ-map series per folder",
            )
        step = float(steps.mean())
    else:
        step = float(ds0.get("SliceThickness", 1.0) or 1.0)
    mu = np.stack([p.T for p in planes], axis=2)  # [col, row, slice]
    affine = _lps_affine(row_cos, col_cos, normal, spacing, step, positions[0])
    return mu.astype(np.float32), affine, {"n_files": len(slices), "modality": str(ds0.get("Modality", ""))}


def _dicom_multiframe(f, ds) -> tuple[np.ndarray, np.ndarray, dict]:
    try:
        shared = ds.SharedFunctionalGroupsSequence[0]
        frames = ds.PerFrameFunctionalGroupsSequence
        iop = np.asarray(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
        spacing = np.asarray(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
        positions = [np.asarray(fr.PlanePositionSequence[0].ImagePositionPatient, dtype=float) for fr in frames]
    except (AttributeError, IndexError) as error:
        raise PetiqInputError(
            f, f"multi-frame DICOM μ-map lacks its functional-group geometry ({error})", FIX_FORMAT
        ) from None
    row_cos, col_cos = iop[:3], iop[3:]
    normal = np.cross(row_cos, col_cos)
    pix = _rescale(ds, ds.pixel_array)  # [frame, row, col]
    order = np.argsort([float(np.dot(p, normal)) for p in positions])
    pos = [positions[i] for i in order]
    step = float(np.dot(pos[1] - pos[0], normal)) if len(pos) > 1 else float(ds.get("SliceThickness", 1) or 1)
    mu = np.transpose(pix[order], (2, 1, 0))
    return (
        mu.astype(np.float32),
        _lps_affine(row_cos, col_cos, normal, spacing, step, pos[0]),
        {"n_files": 1, "n_frames": len(pos), "modality": str(ds.get("Modality", ""))},
    )


# ----------------------------------------------------------------------------- public
def sniff(path: Path) -> str:
    name = path.name.lower()
    if path.is_dir():
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith((".v", ".hdr", ".hv", ".h33")):
        return "interfile"
    with open(path, "rb") as fh:
        head = fh.read(132)
    if head[128:132] == b"DICM":
        return "dicom"
    if head[:10].lstrip(b"!").upper().startswith(b"INTERFILE"):
        return "interfile"
    return "unknown"


def read_mumap(path) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read a patient μ-map as a site exports it → ``(μ float32 cm⁻¹, RAS+ mm affine, info)``.

    * NIfTI (``.nii``/``.nii.gz``), any orientation, values in cm⁻¹ (:func:`petiq.scanner.frame.load_nifti`).
    * e7 Interfile ``.v`` + ``.v.hdr`` (either path; a ``.mhdr`` beside it supplies missing keys),
      float32 cm⁻¹ ``[z, y, x]``, centred on the scanner (NiftyPET ``getinterfile``).
    * DICOM μ-map series (folder, single-slice file or multi-frame file): 10⁴ x cm⁻¹ after
      RescaleSlope/Intercept (NiftyPET ``obj_mumap``), placed by ImagePositionPatient /
      ImageOrientationPatient (LPS → RAS).

    ``info``: ``format`` ("nifti" | "interfile" | "dicom"), ``path``, ``shape``, ``voxel_mm``, and
    per-format details. A file that is missing, unreadable, not a μ-map (PET image, raw data) or
    whose values are implausible for cm⁻¹ is a :class:`PetiqInputError`."""
    path = Path(path)
    if not path.exists():
        raise PetiqInputError(path, "μ-map not found", "give the path of the μ-map file or DICOM folder")
    kind = sniff(path)
    info: dict = {"format": kind, "path": str(path)}
    if kind == "nifti":
        from petiq.scanner.frame import load_nifti

        mu, affine = load_nifti(path, "μ-map", FIX_FORMAT)
        if mu.ndim == 4 and mu.shape[3] == 1:
            mu = mu[..., 0]
    elif kind == "interfile":
        im, hdr, data_path = read_interfile(path)
        mu = np.ascontiguousarray(np.transpose(im, (2, 1, 0)))  # [u, v, z]
        affine = _e7_image_affine(mu.shape, header_voxel_xyz(hdr, path))
        info["data_file"] = str(data_path)
    elif kind == "dicom":
        mu, affine, extra = _read_dicom(path)
        info.update(extra)
    else:
        raise PetiqInputError(path, "unrecognised μ-map format (neither NIfTI, Interfile nor DICOM)", FIX_FORMAT)
    mu = check_values(mu, path, kind)
    affine = check_affine(affine, path)
    info["shape"] = list(mu.shape)
    info["voxel_mm"] = [float(v) for v in np.sqrt((affine[:3, :3] ** 2).sum(axis=0))]
    return mu, affine, info


def _scanner_xyz(affine, ijk) -> np.ndarray:
    return SCANNER_TO_RAS.T @ (affine @ ijk)[:3]


def to_scanner_frame(mu, affine, scanner: Scanner, path=None, *, what: str = "μ-map") -> np.ndarray:
    """``mu`` (RAS+ ``affine``, any orientation) resampled onto ``scanner``'s image grid (linear).

    Refuses, naming the missing mm per side: tissue (> 0.0096 cm⁻¹) outside the scanner grid, and
    a μ-map whose own grid ends inside the scanner's field of view (transaxial cylinder of the
    image grid's half-width, axial FOV) while the object reaches that edge: the object is cut there
    and its attenuation would be missed."""
    mu = np.asarray(mu, dtype=np.float32)
    affine = check_affine(affine, path)
    shape = tuple(int(s) for s in scanner.image_shape)
    voxel = np.asarray(scanner.voxel_size_mm, dtype=float)
    half_grid = 0.5 * np.asarray(shape) * voxel
    r_fov = float(min(half_grid[0], half_grid[1]))
    z_fov = min(0.5 * float(scanner.axial_fov_mm), float(half_grid[2]))  # what the image grid can hold
    tissue = mu > _TISSUE_CM
    names = (
        ("-x (patient right)", "+x (patient left)"),
        ("-y (posterior)", "+y (anterior)"),
        ("-z (head end)", "+z (feet end)"),
    )
    if tissue.any():
        idx = np.nonzero(tissue)
        xyz = _scanner_xyz(affine, np.vstack([*idx, np.ones(idx[0].size)]))
        over = []
        for a in range(3):
            lo, hi = float(xyz[a].min()), float(xyz[a].max())
            if lo < -half_grid[a] - 0.5 * voxel[a]:
                over.append(f"{-half_grid[a] - lo:.1f} mm beyond {names[a][0]}")
            if hi > half_grid[a] + 0.5 * voxel[a]:
                over.append(f"{hi - half_grid[a]:.1f} mm beyond {names[a][1]}")
        if over:
            raise PetiqInputError(
                path,
                f"the {what}'s object lies outside scanner {scanner.name!r}'s image grid ({', '.join(over)})",
                "give the μ-map with its true affine, the object inside the scanner's field of view",
            )
        # object cut by the μ-map's own edge, inside the FOV
        missing = []
        for a in range(3):
            n = mu.shape[a]
            for side, edge_index in ((0, 0), (1, n - 1)):
                face = np.take(tissue, edge_index, axis=a)
                if not face.any():
                    continue
                # the face's outer boundary in scanner mm: half a voxel beyond the edge voxels
                step = np.zeros(3)
                step[a] = -0.5 if side == 0 else 0.5
                fidx = np.nonzero(face)
                ijk = np.zeros((4, fidx[0].size))
                others = [b for b in range(3) if b != a]
                ijk[others[0]], ijk[others[1]] = fidx
                ijk[a] = edge_index + step[a]
                ijk[3] = 1
                pts = _scanner_xyz(affine, ijk)
                r = np.hypot(pts[0], pts[1])
                inside = (r < r_fov) & (np.abs(pts[2]) < z_fov)
                if not inside.any():
                    continue
                p = pts[:, inside]
                # distance from this edge to the FOV boundary along the scanner axis the edge faces
                ax = int(np.argmax(np.abs(SCANNER_TO_RAS.T @ affine[:3, a])))
                sign = float(np.sign((SCANNER_TO_RAS.T @ affine[:3, a])[ax])) * (1 if side else -1)
                if ax == 2:
                    gap = z_fov - sign * p[2]
                else:
                    gap = np.sqrt(np.maximum(r_fov**2 - p[1 - ax] ** 2, 0)) - sign * p[ax]
                if float(gap.max()) <= 0.5 * voxel[ax] + 1e-6:
                    continue
                missing.append(f"{float(gap.max()):.1f} mm missing on the {names[ax][int(sign > 0)]} side")
        if missing:
            raise PetiqInputError(
                path,
                f"the {what} does not cover scanner {scanner.name!r}'s field of view where "
                f"the object is: the object reaches the μ-map's edge ({'; '.join(missing)})",
                "export the μ-map over the whole field of view (a truncated μ-map misses "
                "attenuation; it is never cropped silently)",
            )
    return to_scanner_grid(mu, affine, shape, voxel, order=1, path=path, what=what)

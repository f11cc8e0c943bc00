"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def bids_validator_errors(root: Path) -> list[dict]:
    """The errors the official BIDS validator (``bids-validator-deno``, the ``test`` extra) reports for
    the dataset at ``root`` and its derivatives (``-r``); skips the test when it is not installed."""
    import json
    import shutil
    import subprocess
    import sys

    import pytest

    exe = shutil.which("bids-validator-deno") or shutil.which(
        "bids-validator-deno", path=str(Path(sys.executable).parent)
    )
    if exe is None:
        pytest.skip("bids-validator-deno is not installed (pip install -e '.[test]' installs it)")
    done = subprocess.run(
        [exe, "-r", "--format", "json", str(root)], capture_output=True, text=True, timeout=600, check=False
    )
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise AssertionError(
            f"bids-validator-deno {root}: no JSON report (exit {done.returncode}): {done.stderr[-2000:]}"
        ) from None
    return [issue for issue in report["issues"]["issues"] if issue["severity"] == "error"]


def write_sheet(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path


def write_site_files(folder: Path, scanner_name: str = "tiny", *, listmode: str = "a.l") -> dict[str, str]:
    """A real patient's files as a site exports them, for a small scanner: a genuine list-mode pair
    (three events), the scanner's component norm (``.n`` + ``.n.hdr``, made from petiq's simulated
    scanner) and a water-cylinder μ-map NIfTI inside the field of view. Returns {column: file name}."""
    import nibabel as nib

    from petiq.listmode import write_listmode
    from petiq.listmode.simulate import scanner_component_norm
    from petiq.recon.norm_writer import write_component_norm
    from petiq.scanner.frame import nifti_image, scanner_grid_affine
    from petiq.scanner.geometry import Scanner

    scanner = Scanner.from_name(scanner_name)
    folder.mkdir(parents=True, exist_ok=True)
    write_listmode(
        folder / listmode, np.array([0, 5, 9]), np.array([True, True, False]), np.array([0, 1, 2]), scanner=scanner
    )
    write_component_norm(folder / "norm.n", scanner_component_norm(scanner, 5, 11 if scanner.name == "mmr" else 3))
    shape, voxel = scanner.image_shape, scanner.voxel_size_mm
    x = (np.arange(shape[0]) - (shape[0] - 1) / 2) * voxel[0]
    y = (np.arange(shape[1]) - (shape[1] - 1) / 2) * voxel[1]
    r = np.hypot(x[:, None], y[None, :])
    mu = np.where(r < 0.4 * min(shape[0] * voxel[0], shape[1] * voxel[1]) / 2, 0.096, 0.0)
    mu = np.repeat(mu[:, :, None], shape[2], axis=2).astype(np.float32)
    mu[:, :, [0, -1]] = 0.0  # the head ends inside the axial field of view
    nib.save(nifti_image(mu, scanner_grid_affine(shape, voxel)), str(folder / "mu.nii.gz"))
    return {"listmode": listmode, "mumap": "mu.nii.gz", "norm": "norm.n"}


def e7_layout(mu_xyz):
    """petiq's scanner grid ``[x, y, z]`` (x along scanner +x, y along +y) → e7 ``[z, v, u]``,
    column u along +x, row v along −y (NiftyPET ``getinterfile``)."""
    return np.transpose(np.asarray(mu_xyz)[:, ::-1, :], (2, 1, 0))


def write_e7_interfile(path, im_zyx: np.ndarray, voxel_mm: float, extra: str = "") -> Path:
    """An e7 Interfile image: float32 little-endian [z, y, x] (x fastest) + its .hdr; returns the .hdr."""
    path = Path(path)
    nz, ny, nx = im_zyx.shape
    np.ascontiguousarray(im_zyx, dtype="<f4").tofile(path)
    hdr = path.with_name(path.name + ".hdr")
    hdr.write_text(
        "!INTERFILE :=\n!imaging modality := nucmed\n!name of data file := " + path.name + "\n"
        "!type of data := PET\nnumber format := float\n!number of bytes per pixel := 4\n"
        "imagedata byte order := LITTLEENDIAN\nnumber of dimensions := 3\n"
        f"matrix size [1] := {nx}\nmatrix size [2] := {ny}\nmatrix size [3] := {nz}\n"
        + "".join(f"scale factor (mm/pixel) [{i}] := {voxel_mm:.5f}\n" for i in (1, 2, 3))
        + extra
        + "!END OF INTERFILE :=\n"
    )
    return hdr


def write_mumap_dicom_slice(
    path, pixels, ipp, *, voxel_mm: float = 4.0, modality="MR", desc="Head_MRAC_PET_UMAP", units=None, slope=1.0
) -> Path:
    """One axial slice of an mMR DICOM μ-map (IOP 1\\0\\0\\0\\1\\0): uint16 ``pixels`` [row, column] at
    ImagePositionPatient ``ipp`` (LPS mm), ``voxel_mm`` square pixels and slice thickness."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesDescription = modality, desc
    ds.ImageType = ["DERIVED", "PRIMARY", "MRAC" if "UMAP" in desc else "M"]
    if units:
        ds.Units = units
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.ImagePositionPatient = [float(v) for v in ipp]
    ds.PixelSpacing = [voxel_mm, voxel_mm]
    ds.SliceThickness = voxel_mm
    ds.RescaleSlope, ds.RescaleIntercept = slope, 0
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.PixelData = np.asarray(pixels).astype("<u2").tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def write_mumap_dicom_series(folder, mu_xyz: np.ndarray, voxel_mm: float) -> Path:
    """A centred grid's μ-map as an mMR DICOM μ-map series: uint16 10⁴ x cm⁻¹, one file per slice,
    axial LPS (IOP 1\\0\\0\\0\\1\\0): pixel (row r, column c) of slice s is scanner voxel
    (c, ny-1-r, nz-1-s) for head-first supine (scanner x = L, y = -P, z = -S)."""
    folder = Path(folder)
    folder.mkdir()
    nx, ny, nz = mu_xyz.shape
    x0 = -(nx - 1) / 2 * voxel_mm  # L of column 0
    y0 = -(ny - 1) / 2 * voxel_mm  # P of row 0 (scanner y = +(ny-1)/2 v)
    z0 = -(nz - 1) / 2 * voxel_mm  # S of slice 0 (scanner z = +(nz-1)/2 v)
    for s in range(nz):
        plane = mu_xyz[:, ::-1, nz - 1 - s].T  # [row r, column c] = mu[c, ny-1-r]
        write_mumap_dicom_slice(
            folder / f"MR.{s:04d}.dcm", np.rint(plane * 1e4), (x0, y0, z0 + voxel_mm * s), voxel_mm=voxel_mm
        )
    return folder

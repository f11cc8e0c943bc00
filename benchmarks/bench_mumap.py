"""Benchmark: a site's μ-map onto the mMR grid: read a DICOM μ-map series, resample it into the
scanner frame, add one hardware μ-map.

Writes (not timed) an mMR-like MRAC μ-map series to a temporary folder: ``--slices`` (default 127)
single-slice DICOM files of 192 x 192 uint16 pixels (10⁴ x cm⁻¹) of 2.6042 x 2.6042 mm, 2.03125 mm
apart, a water ellipsoid with a bone shell, shifted 5 mm off centre; and an e7 Interfile hardware
μ-map of a head coil (a cylindrical shell, 300 x 300 x 140 voxels of 2.08626 x 2.08626 x 2.03125 mm,
float32 cm⁻¹, NiftyPET's ``$umap origin`` / ``$origin offset`` keys). Then times, best of
``--repeat`` (default 3):

* ``read_mumap`` of the folder (pydicom, 127 files, stacked and placed by ImagePositionPatient),
* ``to_scanner_frame`` onto the mMR's 344 x 344 x 127 grid of 2.08626 x 2.08626 x 2.03125 mm
  (coverage check + linear resampling),
* ``hardware_mumap`` of the coil (read, placed by the bed position, resampled) and the sum,

and prints the process's peak RSS. ::

    /tmp/venv/bin/python benchmarks/bench_mumap.py
    /tmp/venv/bin/python benchmarks/bench_mumap.py --repeat 1

The temporary folder goes under ``--dir`` (default: the system temp dir) and is removed at the end.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from petiq.recon import hardware_mumap
from petiq.recon import mumap as mm
from petiq.scanner.geometry import Scanner


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def write_dicom_series(
    folder: Path, n_slices: int, n: int = 192, pixel_mm: float = 2.6042, slice_mm: float = 2.03125
) -> None:
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    folder.mkdir()
    c = (np.arange(n) - (n - 1) / 2) * pixel_mm
    X, Y = np.meshgrid(c, c, indexing="xy")  # [row, column]: column along L, row along P
    series = generate_uid()
    for s in range(n_slices):
        z = (s - (n_slices - 1) / 2) * slice_mm
        r = np.sqrt(((X - 5.0) / 75) ** 2 + (Y / 95) ** 2 + (z / 110) ** 2)
        mu = np.where(r < 0.93, 0.096, np.where(r < 1.0, 0.151, 0.0))
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality, ds.SeriesDescription, ds.ImageType = "MR", "Head_MRAC_PET_UMAP", ["DERIVED", "PRIMARY", "MRAC"]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [float(c[0]), float(c[0]), float(-z)]
        ds.PixelSpacing = [pixel_mm, pixel_mm]
        ds.SliceThickness = slice_mm
        ds.RescaleSlope, ds.RescaleIntercept = 1, 0
        ds.Rows = ds.Columns = n
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.PixelData = np.rint(mu * 1e4).astype("<u2").tobytes()
        ds.save_as(str(folder / f"MR.{s:04d}.dcm"), enforce_file_format=True)


def write_coil(path: Path, shape_xyz=(300, 300, 140), vs=(2.08626, 2.08626, 2.03125)) -> Path:
    nx, ny, nz = shape_xyz
    x = (np.arange(nx) - (nx - 1) / 2) * vs[0]
    y = (np.arange(ny) - (ny - 1) / 2) * vs[1]
    r = np.hypot(x[None, :], y[:, None])
    ring = ((r > 140) & (r < 146)).astype(np.float32) * 0.12  # [y, x]
    im = np.broadcast_to(ring, (nz, ny, nx))  # [z, y, x]
    np.ascontiguousarray(im, dtype="<f4").tofile(path)
    hdr = path.with_name(path.name + ".hdr")
    # $umap origin at the array centre, $origin offset 0: centred on the scanner at bed position 0 (get_hmupos)
    hdr.write_text(
        "!INTERFILE :=\n!name of data file := " + path.name + "\nnumber format := float\n"
        "!number of bytes per pixel := 4\nimagedata byte order := LITTLEENDIAN\n"
        + "".join(f"matrix size [{i + 1}] := {n}\n" for i, n in enumerate(shape_xyz))
        + "".join(f"scale factor (mm/pixel) [{i + 1}] := {v}\n" for i, v in enumerate(vs))
        + f"$umap origin (pixels) [1] := {(nx - 1) / 2}\n$umap origin (pixels) [2] := {(ny - 1) / 2}\n"
        f"$umap origin (pixels) [3] := {(nz - 1) / 2}\n"
        + "".join(f"$origin offset (mm) [{i}] := 0\n" for i in (1, 2, 3))
        + "!END OF INTERFILE :=\n"
    )
    return hdr


def best(fn, repeat: int):
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=127)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bed-position-mm", type=float, default=0.0)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args(argv)
    sc = Scanner.mmr()
    work = Path(tempfile.mkdtemp(prefix="petiq-bench-mumap-", dir=args.dir))
    try:
        write_dicom_series(work / "umap", args.slices)
        coil = write_coil(work / "umap_coil.v")
        rss0 = peak_rss_mb()
        t_read, (mu, affine, info) = best(lambda: mm.read_mumap(work / "umap"), args.repeat)
        rss_read = peak_rss_mb()
        t_frame, on_grid = best(lambda: mm.to_scanner_frame(mu, affine, sc, work / "umap"), args.repeat)
        rss_frame = peak_rss_mb()

        def add_hw():
            hw, _ = hardware_mumap.hardware_mumap([coil], sc, args.bed_position_mm)
            return on_grid + hw

        t_hw, total = best(add_hw, args.repeat)
        print(
            f"DICOM μ-map {info['shape']} ({info['n_files']} files) -> mMR grid {tuple(sc.image_shape)}; "
            f"best of {args.repeat}"
        )
        print(f"read_mumap        {t_read:7.2f} s   peak RSS {rss_read:6.0f} MB")
        print(f"to_scanner_frame  {t_frame:7.2f} s   peak RSS {rss_frame:6.0f} MB")
        print(f"+ hardware (coil) {t_hw:7.2f} s   peak RSS {peak_rss_mb():6.0f} MB")
        print(
            f"total             {t_read + t_frame + t_hw:7.2f} s   (RSS before reading {rss0:.0f} MB); "
            f"μ sum patient {float(on_grid.sum()):.0f}, with coil {float(total.sum()):.0f} cm⁻¹·voxels"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

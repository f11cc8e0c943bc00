"""Training patches from reconstructed volumes (Hopson et al. 2022, section II-C).

The paper cuts 80×80 patches from each reconstructed volume: 1000 random candidates from the
transverse, sagittal and coronal planes; a candidate is background, and rejected, when its mean is
below one eighth of the volume's mean; of those kept, 100 per plane are drawn (300 per volume).

Conventions (the training engine and ``petiq predict`` rely on them):

* The volume is indexed ``[i, j, k]`` in RAS order (``nib.as_closest_canonical``: petiq's
  reconstructions are stored along the scanner's axes, +x left, +y anterior, +z inferior, and their
  affine says so; ``docs/frame.md``), both when training patches are cut and when images are scored.
  Planes: ``transverse`` = ``vol[:, :, s]``, ``coronal`` = ``vol[:, s, :]``, ``sagittal`` = ``vol[s, :, :]``.
* A patch is ``plane2d[row:row + size, column:column + size]`` (``row``, ``column``: its top-left
  corner, in the volume's own voxel indices). Voxels outside the plane read as zero: when a plane is
  smaller than the patch along one axis, the patch is centred on it (zero padding split evenly, the
  odd voxel after), so ``row`` (or ``column``) is negative, ``-((size - dim) // 2)``. Otherwise corners
  are drawn uniformly so that the patch lies inside the plane. Means are taken over the whole
  ``size × size`` patch, padding included.
* Candidates: ``candidates`` in all, split evenly over the three planes (the first planes take the
  remainder: 1000 → 334 transverse, 333 sagittal, 333 coronal); each picks a slice and a corner
  uniformly at random, with replacement. Of the kept candidates, ``per_plane`` are drawn from each
  plane without replacement and stored in plane order (transverse, sagittal, coronal), in candidate
  order within a plane. A plane with fewer kept candidates than ``per_plane`` stops the job with the
  counts and what to change; nothing is written.
* Randomness: plane ``p`` draws from ``rng_for(seed, "patches", p)``; pass a seed derived per
  (patient, dose) from the config seed, e.g. ``derive_seed(cfg_seed, "patches", subject, dose)``.

Outputs per (patient, dose): ``*_patches.npy`` (N × size × size, float32 or float16) and
``*_patches.tsv`` with :data:`TABLE_COLUMNS`, one row per patch, in array order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ..core.errors import PetiqInputError
from ..core.fileio import write_npy, write_tsv
from ..core.seeding import rng_for

PLANES = ("transverse", "sagittal", "coronal")
#: Columns of the patch table; ``size`` is the patch edge in voxels (square patches).
TABLE_COLUMNS = ("patch_index", "plane", "slice", "row", "column", "mean", "seed", "size")
DTYPES = ("float32", "float16")
_FIX_TOO_FEW = (
    "draw more candidates (patches.candidates), lower the background threshold (patches.threshold), "
    "use smaller patches (patches.size) or keep fewer per plane (patches.per_plane)"
)


def plane_stack(volume: np.ndarray, plane: str) -> np.ndarray:
    """The volume as a stack of 2-D planes: ``plane_stack(vol, p)[s]`` is plane ``p``'s slice ``s`` (a view).

    >>> vol = np.arange(24).reshape(2, 3, 4)
    >>> bool((plane_stack(vol, "transverse")[1] == vol[:, :, 1]).all())
    True
    >>> plane_stack(vol, "coronal").shape, plane_stack(vol, "sagittal").shape
    ((3, 2, 4), (2, 3, 4))
    """
    if plane == "transverse":
        return volume.transpose(2, 0, 1)
    if plane == "coronal":
        return volume.transpose(1, 0, 2)
    if plane == "sagittal":
        return volume
    raise ValueError(f"unknown plane {plane!r}; one of {PLANES}")


def corner_range(dim: int, size: int) -> tuple[int, int]:
    """Smallest and largest top-left corner (inclusive) of a patch of ``size`` along an axis of ``dim`` voxels.

    >>> corner_range(80, 32), corner_range(63, 80), corner_range(64, 80)
    ((0, 48), (-8, -8), (-8, -8))
    """
    if dim >= size:
        return 0, dim - size
    start = -((size - dim) // 2)
    return start, start


def _cut(plane2d: np.ndarray, row: int, column: int, size: int) -> np.ndarray:
    """``plane2d[row:row+size, column:column+size]`` with zeros wherever the window leaves the plane."""
    out = np.zeros((size, size), dtype=plane2d.dtype)
    r0, r1 = max(row, 0), min(row + size, plane2d.shape[0])
    c0, c1 = max(column, 0), min(column + size, plane2d.shape[1])
    if r1 > r0 and c1 > c0:
        out[r0 - row : r1 - row, c0 - column : c1 - column] = plane2d[r0:r1, c0:c1]
    return out


def _window_means(stack: np.ndarray, slices: np.ndarray, rows: np.ndarray, cols: np.ndarray, size: int) -> np.ndarray:
    """Means of ``size × size`` windows (zeros outside the plane) from a summed-area table per slice drawn."""
    unique, where = np.unique(slices, return_inverse=True)
    sub = stack[unique].astype(np.float64)
    sat = np.zeros((unique.size, sub.shape[1] + 1, sub.shape[2] + 1))
    np.cumsum(np.cumsum(sub, axis=1), axis=2, out=sat[:, 1:, 1:])
    n_rows, n_cols = sub.shape[1:]
    r0, r1 = np.clip(rows, 0, n_rows), np.clip(rows + size, 0, n_rows)
    c0, c1 = np.clip(cols, 0, n_cols), np.clip(cols + size, 0, n_cols)
    total = sat[where, r1, c1] - sat[where, r0, c1] - sat[where, r1, c0] + sat[where, r0, c0]
    return total / float(size * size)


def _check_args(
    volume: np.ndarray,
    size: int,
    candidates: int,
    per_plane: int,
    threshold_fraction: float,
    dtype: str,
    source: str | Path | None,
) -> None:
    if volume.ndim != 3:
        raise PetiqInputError(
            source, f"the image has {volume.ndim} dimensions, shape {volume.shape}", "give a 3-D volume (one frame)"
        )
    if not np.isfinite(volume).all():
        raise PetiqInputError(source, "the image holds NaN or infinite voxels", "fix the reconstruction")
    if not float(volume.mean()) > 0:
        raise PetiqInputError(
            source,
            f"the image's mean is {float(volume.mean()):g}",
            "give a non-negative image with some activity (petiq's desc-norm01 images are 0-1)",
        )
    if int(size) != size or size < 1:
        raise PetiqInputError(
            None,
            f"patch size {size!r} is not a positive whole number of voxels",
            "set patches.size, e.g. 80 for the mMR images",
        )
    if int(per_plane) != per_plane or per_plane < 1:
        raise PetiqInputError(
            None, f"per_plane {per_plane!r} is not a positive whole number", "set patches.per_plane, e.g. 100"
        )
    if int(candidates) != candidates or candidates // 3 < per_plane:
        raise PetiqInputError(
            None,
            f"{candidates!r} candidates give {int(candidates) // 3} or so per plane, fewer than the "
            f"{per_plane} patches wanted per plane",
            "draw at least 3 × per_plane candidates (patches.candidates)",
        )
    if not (np.isfinite(threshold_fraction) and threshold_fraction >= 0):
        raise PetiqInputError(
            None,
            f"threshold_fraction {threshold_fraction!r} is not a number >= 0",
            "set patches.threshold, e.g. 0.125 (one eighth of the volume mean)",
        )
    if str(dtype) not in DTYPES:
        raise PetiqInputError(None, f"patch dtype {dtype!r} is not supported", f"use one of {', '.join(DTYPES)}")


def patch_paths(patches_dir: str | Path, participant_id: str, dose: float | str) -> tuple[Path, Path]:
    """The ``.npy`` and ``.tsv`` of one image's patches (``dose`` in percent or as its label).

    >>> [p.as_posix() for p in patch_paths("results/patches", "sub-01", 5)]
    ['results/patches/sub-01/sub-01_dose-005.0_patches.npy', 'results/patches/sub-01/sub-01_dose-005.0_patches.tsv']
    """
    from ..core.doses import dose_label

    stem = f"{participant_id}_dose-{dose_label(float(dose))}_patches"
    folder = Path(patches_dir) / participant_id
    return folder / f"{stem}.npy", folder / f"{stem}.tsv"


def extract_patches(
    volume: np.ndarray,
    *,
    size: int,
    candidates: int,
    per_plane: int,
    threshold_fraction: float = 1 / 8,
    seed: int,
    dtype: str = "float32",
    source: str | Path | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Cut ``3 × per_plane`` patches from ``volume`` by the paper's rule (see the module docstring).

    Returns the patches (N × size × size, ``dtype``) and their table (:data:`TABLE_COLUMNS`, same order).
    ``source`` names the image in error messages.
    """
    volume = np.asarray(volume)
    _check_args(volume, size, candidates, per_plane, threshold_fraction, dtype, source)
    size, candidates, per_plane = int(size), int(candidates), int(per_plane)
    threshold = float(threshold_fraction) * float(volume.mean(dtype=np.float64))
    n_per_plane = [candidates // 3 + (1 if p < candidates % 3 else 0) for p in range(3)]

    drawn = {}
    for plane, n in zip(PLANES, n_per_plane):
        stack = plane_stack(volume, plane)
        rng = rng_for(seed, "patches", plane)
        (rlo, rhi), (clo, chi) = corner_range(stack.shape[1], size), corner_range(stack.shape[2], size)
        slices = rng.integers(0, stack.shape[0], n)
        rows = rng.integers(rlo, rhi + 1, n)
        cols = rng.integers(clo, chi + 1, n)
        means = _window_means(stack, slices, rows, cols, size)
        kept = np.flatnonzero(means >= threshold)
        drawn[plane] = (rng, stack, slices, rows, cols, means, kept)

    short = {p: d[-1].size for p, d in drawn.items()}
    if min(short.values()) < per_plane:
        counts = ", ".join(f"{p} {k} of {n}" for (p, k), n in zip(short.items(), n_per_plane))
        raise PetiqInputError(
            source,
            f"too few candidate patches pass the background threshold ({threshold_fraction:g} × volume mean = "
            f"{threshold:.4g}) for {per_plane} per plane: {counts}",
            _FIX_TOO_FEW,
        )

    patches, rows_out = [], []
    for plane, (rng, stack, slices, rows, cols, means, kept) in drawn.items():
        chosen = np.sort(rng.choice(kept, size=per_plane, replace=False))
        for c in chosen:
            patches.append(_cut(stack[slices[c]], int(rows[c]), int(cols[c]), size))
            rows_out.append((plane, int(slices[c]), int(rows[c]), int(cols[c]), float(means[c])))
    array = np.stack(patches).astype(dtype)
    table = pd.DataFrame(rows_out, columns=["plane", "slice", "row", "column", "mean"])
    table.insert(0, "patch_index", np.arange(len(table)))
    table["seed"] = int(seed)
    table["size"] = size
    return array, table


def locate_patch(volume: np.ndarray, row: Mapping | pd.Series, size: int | None = None) -> np.ndarray:
    """Cut the patch that a table row describes out of ``volume`` again (float, zeros outside the plane).

    ``size`` defaults to the row's ``size`` column.

    >>> vol = np.arange(4 * 5 * 6, dtype=float).reshape(4, 5, 6)
    >>> locate_patch(vol, {"plane": "coronal", "slice": 2, "row": 1, "column": 3, "size": 2}).tolist()
    [[45.0, 46.0], [75.0, 76.0]]
    """
    size = int(row["size"] if size is None else size)
    stack = plane_stack(np.asarray(volume), str(row["plane"]))
    return _cut(stack[int(row["slice"])], int(row["row"]), int(row["column"]), size)


def load_volume(path: str | Path) -> nib.Nifti1Image:
    """Open a 3-D NIfTI image (a 4-D image with one frame is accepted), or explain what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise PetiqInputError(
            path,
            "the image does not exist",
            "reconstruct it first (results/bids/derivatives/petiq/...) or fix the path",
        )
    try:
        img = nib.load(path)
    except Exception as error:  # nibabel raises several types for bad files
        raise PetiqInputError(path, f"not a readable NIfTI image ({error})", "give a .nii or .nii.gz file") from error
    if len(img.shape) == 4 and img.shape[3] == 1:
        img = img.slicer[..., 0]
    if len(img.shape) != 3:
        raise PetiqInputError(path, f"the image has shape {img.shape}", "give a 3-D image (one frame)")
    return img


def extract_patches_file(
    nifti_path: str | Path,
    npy_out: str | Path,
    tsv_out: str | Path,
    *,
    size: int,
    candidates: int,
    per_plane: int,
    threshold_fraction: float = 1 / 8,
    seed: int,
    dtype: str = "float32",
) -> dict:
    """:func:`extract_patches` on a NIfTI file; writes the ``.npy`` and ``.tsv`` atomically; returns a summary."""
    for out, suffix in ((npy_out, ".npy"), (tsv_out, ".tsv")):
        if not str(out).endswith(suffix):
            raise PetiqInputError(out, f"the output name does not end in {suffix}", f"name it *{suffix}")
    img = nib.as_closest_canonical(load_volume(nifti_path))  # RAS axes, as predict.py resamples
    volume = np.asarray(img.dataobj, dtype=np.float32)
    patches, table = extract_patches(
        volume,
        size=size,
        candidates=candidates,
        per_plane=per_plane,
        threshold_fraction=threshold_fraction,
        seed=seed,
        dtype=dtype,
        source=nifti_path,
    )
    write_npy(npy_out, patches)
    write_tsv(tsv_out, table)
    return {
        "image": str(nifti_path),
        "shape": list(volume.shape),
        "volume_mean": float(volume.mean(dtype=np.float64)),
        "threshold": float(threshold_fraction) * float(volume.mean(dtype=np.float64)),
        "n_patches": int(len(table)),
        "patch_mean_by_plane": table.groupby("plane", sort=False)["mean"].mean().round(6).to_dict(),
        "seed": int(seed),
        "npy": str(npy_out),
        "tsv": str(tsv_out),
    }


def read_patches(npy: str | Path, tsv: str | Path) -> tuple[np.ndarray, pd.DataFrame]:
    """Load a patch array and its table, checking that they belong together."""
    npy, tsv = Path(npy), Path(tsv)
    for path in (npy, tsv):
        if not path.is_file():
            raise PetiqInputError(path, "the patch file does not exist", "run `petiq patches` (the patches rule) first")
    try:
        array = np.load(npy, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise PetiqInputError(
            npy, f"not a readable .npy array ({error})", "delete it and extract the patches again"
        ) from error
    if array.ndim != 3 or array.shape[1] != array.shape[2] or array.dtype.name not in DTYPES:
        raise PetiqInputError(
            npy,
            f"holds {array.dtype} {array.shape}, not N × size × size float32/float16 patches",
            "delete it and extract the patches again",
        )
    table = pd.read_csv(tsv, sep="\t")
    missing = [c for c in TABLE_COLUMNS if c not in table.columns]
    if missing:
        raise PetiqInputError(tsv, f"columns {missing} are missing", f"the table needs {', '.join(TABLE_COLUMNS)}")
    if len(table) != array.shape[0]:
        raise PetiqInputError(
            tsv,
            f"{len(table)} rows for {array.shape[0]} patches in {npy}",
            "the two files come from different runs: extract the patches again",
        )
    if not (table["patch_index"].to_numpy() == np.arange(len(table))).all():
        raise PetiqInputError(tsv, "patch_index is not 0, 1, 2, ... in order", "extract the patches again")
    if not table["plane"].isin(PLANES).all() or not (table["size"] == array.shape[1]).all():
        raise PetiqInputError(
            tsv,
            f"planes outside {PLANES} or sizes other than the array's {array.shape[1]}",
            "extract the patches again",
        )
    return array, table


def resample_to_voxel_size(
    img: nib.Nifti1Image, voxel_size_mm: float | Sequence[float], *, canonical: bool = True
) -> np.ndarray:
    """Resample an image to ``voxel_size_mm`` (linear, same field of view, centres aligned) as float32.

    ``canonical`` first reorders the axes to RAS (``nib.as_closest_canonical``) so that ``vol[:, :, s]``
    is transverse, as for petiq's own reconstructions. No smoothing is applied before downsampling.
    """
    if canonical:
        img = nib.as_closest_canonical(img)
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise PetiqInputError(img.get_filename(), f"the image has shape {data.shape}", "give a 3-D image")
    old = np.asarray(img.header.get_zooms()[:3], dtype=np.float64)
    new = np.broadcast_to(np.asarray(voxel_size_mm, dtype=np.float64), (3,)).copy()
    if not (np.all(new > 0) and np.all(old > 0)):
        raise PetiqInputError(
            img.get_filename(), f"voxel sizes {old.tolist()} -> {new.tolist()} mm", "give positive voxel sizes"
        )
    if np.allclose(old, new, rtol=1e-6, atol=0):
        return data.copy()
    n_in = np.asarray(data.shape, dtype=np.float64)
    n_out = np.maximum(1, np.round(n_in * old / new)).astype(int)
    step = new / old  # input voxels per output voxel
    offset = (n_in - 1) / 2 - (n_out - 1) / 2 * step
    return ndimage.affine_transform(
        data, step, offset=offset, output_shape=tuple(n_out), order=1, mode="nearest"
    ).astype(np.float32)

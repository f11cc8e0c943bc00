"""Reading sheets: what a clinician sees of one blinded image.

A sheet shows transverse, coronal and sagittal views through the centre of the brain, once in
inverted greyscale and once in the 20-step discrete colour scale of the paper's Fig. 3
(:func:`petiq.plots.colours.reading_colormap`), both from 0 to 1 (the images are 0–1 scaled).
The only label is the blinded id: no patient, dose or file name reaches the sheet or its metadata.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from scipy import ndimage
from tqdm import tqdm

from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path
from . import save_figure
from .colours import reading_colormap

# no creation date or producer: the same plan gives the same bytes, and nothing hints at the source
_PDF_METADATA = {"CreationDate": None, "Producer": None, "Creator": None}


def brain_centre_and_box(
    volume: np.ndarray, margin: int = 3
) -> tuple[tuple[int, int, int], tuple[slice, slice, slice]]:
    """Centre voxel of the head (smoothed image above a quarter of its peak) and a bounding box around it.

    >>> v = np.zeros((20, 20, 10)); v[5:12, 6:15, 2:9] = 1
    >>> brain_centre_and_box(v)[0]
    (8, 10, 5)
    """
    smooth = ndimage.gaussian_filter(np.nan_to_num(volume.astype(np.float32)), 1.5)
    peak = float(smooth.max())
    head = smooth > 0.25 * peak if peak > 0 else np.ones(volume.shape, bool)
    centre = tuple(int(round(c)) for c in ndimage.center_of_mass(head))
    box = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.nonzero(head.any(axis=other))[0]
        box.append(slice(max(int(hit.min()) - margin, 0), min(int(hit.max()) + margin + 1, volume.shape[axis])))
    return centre, tuple(box)


def reading_sheet(volume: np.ndarray, zooms: Sequence[float], blinded_id: str, vmax: float = 1.0) -> plt.Figure:
    """One sheet: orthogonal views in greyscale (top) and in the reading colour scale (bottom)."""
    if volume.ndim != 3:
        raise ValueError(f"a reading sheet needs a 3-D image, got shape {volume.shape}")
    (i, j, k), (bx, by, bz) = brain_centre_and_box(volume)
    dx, dy, dz = (float(z) for z in zooms[:3])
    views = (
        ("transverse", volume[bx, by, k], dy / dx),
        ("coronal", volume[bx, j, bz], dz / dx),
        ("sagittal", volume[i, by, bz], dz / dy),
    )
    widths = [v.shape[0] * (dx if n != "sagittal" else dy) for n, v, _ in views]
    fig, axes = plt.subplots(2, 3, figsize=(10, 7.2), gridspec_kw={"width_ratios": widths}, squeeze=False)
    for row, cmap in enumerate(("gray_r", reading_colormap())):
        for col, (name, data, aspect) in enumerate(views):
            ax = axes[row, col]
            shown = ax.imshow(
                data.T, origin="lower", cmap=cmap, vmin=0, vmax=vmax, aspect=aspect, interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=10)
        fig.colorbar(shown, ax=list(axes[row]), fraction=0.025, pad=0.02)
    fig.suptitle(blinded_id, fontsize=18, fontweight="bold", family="monospace")
    return fig


def write_session_sheets(
    items: Sequence[tuple[str, str | Path]],
    png_dir: str | Path,
    pdf_path: str | Path,
    *,
    progress: bool = True,
) -> None:
    """Write ``<png_dir>/<blinded_id>.png`` per ``(blinded_id, image path)`` and one PDF page per image, in order."""
    items = [(bid, Path(p)) for bid, p in items]
    for _, path in items:
        if not path.is_file():
            raise PetiqInputError(
                path, "the image to read does not exist", "reconstruct it before writing the reading sheets"
            )
    png_dir = Path(png_dir)
    show = progress and sys.stderr.isatty()
    with atomic_path(pdf_path) as tmp, PdfPages(tmp, metadata=_PDF_METADATA) as pdf:
        for bid, path in tqdm(items, desc=f"sheets {Path(pdf_path).stem}", disable=not show, file=sys.stderr):
            image = nib.as_closest_canonical(nib.load(str(path)))  # RAS axes (docs/frame.md)
            volume = np.asarray(image.dataobj, dtype=np.float32)
            if volume.ndim == 4 and volume.shape[3] == 1:
                volume = volume[..., 0]
            if volume.ndim != 3:
                raise PetiqInputError(
                    path, f"the image has shape {volume.shape}, not 3-D", "give the 3-D 0–1 scaled reconstruction"
                )
            fig = reading_sheet(volume, image.header.get_zooms(), bid)
            pdf.savefig(fig)
            save_figure(fig, png_dir / f"{bid}.png")

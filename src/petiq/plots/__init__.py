"""Figures. Each function draws one figure of the paper (or of petiq's own checks) from files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import ndimage  # noqa: E402

from ..core.fileio import atomic_path  # noqa: E402


def _mid_brain_slice(mask: np.ndarray) -> int:
    """Transverse slice through the brain's centre of mass."""
    z = np.nonzero(mask.any(axis=(0, 1)))[0]
    if z.size == 0:
        return mask.shape[2] // 2
    weights = mask.sum(axis=(0, 1))[z]
    return int(round(float(np.average(z, weights=weights))))


def save_figure(fig, path: str | Path, dpi: int = 110) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=Path(path).suffix.lstrip(".") or "png")
    plt.close(fig)


def plot_cohort(
    participants: pd.DataFrame, images: dict[str, dict[str, str]], path: str | Path, per_row: int = 3
) -> None:
    """Cohort overview: for each patient, transverse mid-brain activity, μ-map and T1w side by side."""
    meta = participants.set_index("participant_id")
    subjects = list(images)
    rows = math.ceil(len(subjects) / per_row)
    fig, axes = plt.subplots(rows, 3 * per_row, figsize=(2.0 * 3 * per_row, 2.25 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for n, subject in enumerate(subjects):
        files = images[subject]
        mask = np.asarray(nib.as_closest_canonical(nib.load(files["brainmask"])).dataobj) > 0  # RAS axes
        k = _mid_brain_slice(mask)
        row = meta.loc[subject]
        panels = (
            ("truth", "inferno"),
            ("mumap", "gray"),
            ("t1w", "gray"),
        )
        for j, (key, cmap) in enumerate(panels):
            ax = axes[n // per_row, 3 * (n % per_row) + j]
            data = np.asarray(nib.as_closest_canonical(nib.load(files[key])).dataobj, dtype=np.float32)[:, :, k]
            vmax = 0.17 if key == "mumap" else float(np.percentile(data, 99.7)) or 1.0
            ax.imshow(data.T, origin="lower", cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
            if j == 0:
                ax.set_title(
                    f"{subject}  {row['diagnosis']}"
                    + (f" (sev {row['severity']:.2f})" if row["diagnosis"] not in ("CN", "unknown") else "")
                    + f"\n{row['weight_kg']:.0f} kg, {row['injected_mbq']:.0f} MBq",
                    fontsize=7,
                    loc="left",
                )
    fig.suptitle(
        "petiq digital memory-clinic cohort: transverse mid-brain slices\n"
        "activity 0 to its 99.7th percentile (kBq/mL) · μ-map 0–0.17 cm⁻¹ · T1w",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / (2.25 * rows)))
    save_figure(fig, path)


def _crop_box(mask: np.ndarray, margin: int = 2) -> tuple[slice, slice]:
    """Transaxial bounding box of a 2-D mask, with a margin."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return slice(None), slice(None)
    r0, r1 = max(rows.min() - margin, 0), min(rows.max() + margin + 1, mask.shape[0])
    c0, c1 = max(cols.min() - margin, 0), min(cols.max() + margin + 1, mask.shape[1])
    return slice(r0, r1), slice(c0, c1)


def plot_dose_examples(examples: dict[str, dict[str, str]], path: str | Path, cmap: str = "gray_r") -> None:
    """Fig. 1 of the paper: cropped transverse slices of reconstructions at several doses.

    ``examples`` maps a patient id to ``{dose label: path of the 0–1 normalised image}``; columns
    follow the dose order given (e.g. low, medium, high). Every row uses the slice through the
    centre of its patient's brain (the highest-dose image's upper half of intensities) and one crop.
    """
    from ..core.doses import dose_category

    subjects = list(examples)
    doses = list(next(iter(examples.values())))
    fig, axes = plt.subplots(len(subjects), len(doses), figsize=(2.6 * len(doses), 2.6 * len(subjects)), squeeze=False)
    for r, subject in enumerate(subjects):
        images = {
            d: np.asarray(nib.as_closest_canonical(nib.load(p)).dataobj, dtype=np.float32)  # RAS axes
            for d, p in examples[subject].items()
        }
        reference = ndimage.gaussian_filter(images[doses[-1]], 1.5)  # a noise-free look for slice and crop
        head = reference > 0.25 * reference.max()
        k = _mid_brain_slice(head)
        box = _crop_box(head[:, :, k])
        for c, dose in enumerate(doses):
            ax = axes[r, c]
            ax.imshow(images[dose][:, :, k][box].T, origin="lower", cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"{dose_category(float(dose))}: {float(dose):g} %", fontsize=9)
            if c == 0:
                ax.set_ylabel(subject, fontsize=9)
    fig.suptitle("Fig. 1 — reconstructions at low, medium and high simulated dose", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)

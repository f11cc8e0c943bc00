"""Figures of the clinical scoring (paper Figs. 2, 3 and 6), from a ratings table and images."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.colors import BoundaryNorm  # noqa: E402
from scipy import ndimage  # noqa: E402

from ..core.errors import PetiqInputError  # noqa: E402
from ..scoring.agreement import (  # noqa: E402
    METRICS,
    check_ratings,
    image_dose_per_kg,
    reference_rater,
    reread_differences,
    score_dose_fits,
)
from . import save_figure  # noqa: E402
from .colours import reading_colormap  # noqa: E402

MARKERS = {"GQR": ("o", "tab:blue"), "PR": ("s", "tab:orange"), "DC": ("^", "tab:green")}


def plot_fig02_intersession(ratings: pd.DataFrame, path: str | Path, rater: str | None = None) -> pd.DataFrame:
    """Fig. 2: the re-read images' second-session scores against their first, all metrics, with the
    identity line (dotted) and the ±0.5 band. Returns the plotted differences."""
    diffs = reread_differences(ratings, rater)
    if diffs.empty:
        raise PetiqInputError(
            None, "the ratings hold no re-read images", "plan re-reads (scoring.rereads > 0) to draw Fig. 2"
        )
    rater = rater or reference_rater(check_ratings(ratings))
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    grid = np.array([0.0, 3.0])
    ax.fill_between(grid, grid - 0.5, grid + 0.5, color="0.9", label="±0.5")
    ax.plot(grid, grid, ":", color="k", label="identity (session 1)")
    for k, m in enumerate(METRICS):
        sel = diffs[diffs["metric"] == m]
        pairs = sel.groupby(["first", "repeat"]).size().reset_index(name="count")
        marker, colour = MARKERS[m]
        ax.scatter(
            pairs["first"] + (k - 1) * 0.07,
            pairs["repeat"],
            s=28 * pairs["count"] ** 0.8,
            marker=marker,
            color=colour,
            alpha=0.8,
            edgecolor="k",
            linewidth=0.4,
            label=m,
        )
    differing = 100.0 * float(np.mean(np.abs(diffs["diff"]) >= 0.5 - 1e-9))
    ax.set(
        xlim=(-0.25, 3.25),
        ylim=(-0.25, 3.25),
        xlabel="score, first reading (session 1)",
        ylabel="score, re-read (later session)",
        xticks=np.arange(0, 3.01, 0.5),
        yticks=np.arange(0, 3.01, 0.5),
        aspect="equal",
    )
    ax.set_title(
        f"Fig. 2 — inter-session scoring, rater {rater}\n{diffs[['participant_id', 'dose']].drop_duplicates().shape[0]} images, "
        f"{differing:.0f} % of {len(diffs)} scores differ by ≥ 0.5",
        fontsize=9,
    )
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    save_figure(fig, path)
    return diffs


def _head(image: np.ndarray) -> np.ndarray:
    """Where the head is, from a smoothed copy (robust to noise spikes at low dose)."""
    smooth = ndimage.gaussian_filter(image, 1.5)
    return smooth > 0.3 * float(smooth.max()) if smooth.max() > 0 else np.ones_like(image, bool)


def _crop(head: np.ndarray, margin: int = 3) -> tuple[slice, ...]:
    idx = np.nonzero(head)
    if idx[0].size == 0:
        return tuple(slice(None) for _ in head.shape)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, n)) for i, n in zip(idx, head.shape)
    )


def plot_fig03_colour_scale(
    norm01_path: str | Path, scores: Mapping[str, float], path: str | Path, title: str | None = None
) -> None:
    """Fig. 3: an image on the 20-colour reading scale (orthogonal views through the brain's centre)
    with its colour bar and its three scores (``scores``: GQR, PR, DC)."""
    norm01_path = Path(norm01_path)
    if not norm01_path.is_file():
        raise PetiqInputError(norm01_path, "the image does not exist", "reconstruct it first")
    missing = [m for m in METRICS if m not in scores]
    if missing:
        raise PetiqInputError(None, f"the scores lack {missing}", "give GQR, PR and DC")
    img = nib.as_closest_canonical(nib.load(str(norm01_path)))  # RAS axes: superior up in coronal/sagittal
    data = np.asarray(img.dataobj, dtype=np.float32)
    voxel = np.sqrt((img.affine[:3, :3] ** 2).sum(axis=0))
    head = _head(data)
    i, j, k = (int(round(c)) for c in ndimage.center_of_mass(head))
    box = _crop(head)
    data = data[box]
    i, j, k = i - box[0].start, j - box[1].start, k - box[2].start
    cmap = reading_colormap()
    norm = BoundaryNorm(np.linspace(0.0, 1.0, cmap.N + 1), cmap.N)
    views = (
        ("transverse", data[:, :, k].T, voxel[1] / voxel[0]),
        ("coronal", data[:, j, :].T, voxel[2] / voxel[0]),
        ("sagittal", data[i, :, :].T, voxel[2] / voxel[1]),
    )
    fig, axes = plt.subplots(
        1, 3, figsize=(9.5, 3.6), gridspec_kw={"width_ratios": [data.shape[0], data.shape[0], data.shape[1]]}
    )
    for ax, (name, plane, aspect) in zip(axes, views):
        shown = ax.imshow(plane, origin="lower", cmap=cmap, norm=norm, interpolation="nearest", aspect=aspect)
        ax.set_title(name, fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    bar = fig.colorbar(shown, ax=list(axes), fraction=0.025, pad=0.02, ticks=np.linspace(0, 1, 6))
    bar.set_label("normalised uptake (20-colour scale)", fontsize=8)
    score_text = "   ".join(f"{m} {float(scores[m]):g}" for m in METRICS)
    fig.suptitle((title + "\n" if title else "Fig. 3 — image as read, with its scores\n") + score_text, fontsize=10)
    save_figure(fig, path)


def plot_fig06_scores_vs_dose(
    ratings: pd.DataFrame, dose_table: pd.DataFrame, path: str | Path, rater: str | None = None
) -> pd.DataFrame:
    """Fig. 6: each metric's first-reading scores against injected dose per body weight, with the line
    of best fit (dotted) and ±0.5 error bars (Fig. 2's scoring uncertainty). Returns the fits."""
    ratings = check_ratings(ratings)
    rater = rater or reference_rater(ratings)
    first = ratings[(ratings["rater"] == rater) & (ratings["reading"] == "first")]
    if first.empty:
        raise PetiqInputError(None, f"rater {rater} has no first readings", "give ratings with first readings")
    x = image_dose_per_kg(first, dose_table).to_numpy()
    fits = score_dose_fits(ratings, dose_table, rater).set_index("metric")
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.6), sharey=True)
    grid = np.linspace(0.0, float(x.max()) * 1.05, 50)
    for ax, m in zip(axes, METRICS):
        marker, colour = MARKERS[m]
        ax.errorbar(
            x,
            first[m],
            yerr=0.5,
            fmt=marker,
            color=colour,
            ecolor="0.6",
            elinewidth=0.8,
            capsize=2,
            markersize=4,
            markeredgecolor="k",
            markeredgewidth=0.4,
        )
        fit = fits.loc[m]
        if np.isfinite(fit["slope"]):
            ax.plot(grid, fit["intercept"] + fit["slope"] * grid, ":", color="k")
        ax.set_title(f"{m}: slope {fit['slope']:.2f} per MBq/kg, r = {fit['pearson']:.2f}", fontsize=9)
        ax.set_xlabel("injected dose per body weight (MBq/kg)")
        ax.set_ylim(-0.7, 3.7)
        ax.set_yticks(np.arange(0, 3.01, 0.5))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(f"score (rater {rater}, first reading)")
    fig.suptitle(
        "Fig. 6 — clinical scores against injected dose per body weight (dotted: best fit; bars: ±0.5)", fontsize=10
    )
    fig.tight_layout()
    save_figure(fig, path)
    return fits.reset_index()

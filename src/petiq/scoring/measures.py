"""What the virtual reader sees in an image: ratio measures of noise, grey/white contrast, effective
resolution and the dementia pattern against the patient's truth (:func:`measure_image`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ..core.errors import PetiqInputError
from .truth import load_truth, voxel_sizes

FWHM_TO_SIGMA = 1.0 / math.sqrt(8.0 * math.log(2.0))


#: Gaussian FWHM (mm) at which the reader judges patterns: about the width of a gyrus.
READER_FWHM_MM = 10.0


#: Candidate blurs (mm) for the effective-resolution fit of :func:`measure_image`.
FWHM_GRID_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0)


def _blur(volume: np.ndarray, fwhm_mm: float, voxel_mm: np.ndarray) -> np.ndarray:
    if fwhm_mm <= 0:
        return volume
    return ndimage.gaussian_filter(volume, fwhm_mm * FWHM_TO_SIGMA / voxel_mm, mode="nearest")


def _fit_resolution(image: np.ndarray, patient: np.ndarray, mask: np.ndarray, voxel_mm: np.ndarray) -> float:
    """FWHM (mm) of the Gaussian blur of the true activity that best fits the image (scaled least squares)."""
    sse = []
    y = image[mask].astype(np.float64)
    for fwhm in FWHM_GRID_MM:
        x = _blur(patient, fwhm, voxel_mm)[mask].astype(np.float64)
        scale = float(x @ y) / max(float(x @ x), 1e-30)
        sse.append(float(((y - scale * x) ** 2).sum()))
    k = int(np.argmin(sse))
    if 0 < k < len(sse) - 1:  # parabolic refinement between grid points
        a, b, c = sse[k - 1], sse[k], sse[k + 1]
        denom = a - 2 * b + c
        step = FWHM_GRID_MM[k + 1] - FWHM_GRID_MM[k]
        return float(FWHM_GRID_MM[k] + (0.5 * (a - c) / denom * step if denom > 0 else 0.0))
    return float(FWHM_GRID_MM[k])


def measure_array(
    image: np.ndarray, truth: Mapping[str, np.ndarray], *, reader_fwhm_mm: float = READER_FWHM_MM
) -> dict[str, float]:
    """Measures of one image (full reconstruction grid, any intensity scale) against its reader truth."""
    shape = tuple(int(s) for s in truth["ref_shape"])
    if tuple(image.shape[:3]) != shape:
        raise PetiqInputError(
            None,
            f"the image has shape {image.shape}, its reader truth {shape}",
            "measure images against the truth made on their own grid",
        )
    crop = tuple(slice(int(a), int(b)) for a, b in truth["bbox"])
    img = np.asarray(image, dtype=np.float32)[crop]
    voxel = voxel_sizes(truth["ref_affine"])
    brain, wm_deep, cortex = truth["brain"].astype(bool), truth["wm_deep"].astype(bool), truth["cortex"].astype(bool)
    affected, reference = truth["affected"].astype(bool), truth["reference"].astype(bool)

    wm_vals = img[wm_deep]
    wm_mean, wm_sd = float(wm_vals.mean()), float(wm_vals.std(ddof=1))
    gm_mean = float(img[cortex].mean())
    if wm_mean <= 0 or gm_mean <= 0:
        raise PetiqInputError(
            None,
            "the image has no positive uptake in white or grey matter",
            "check the reconstruction (is it empty or misregistered?)",
        )
    noise_cov = wm_sd / wm_mean
    fwhm = _fit_resolution(img, truth["patient"], brain, voxel)

    patient = _blur(truth["patient"], fwhm, voxel)
    normal = _blur(truth["normal"], fwhm, voxel)
    seen = _blur(img, reader_fwhm_mm, voxel)
    normal_r = _blur(normal, reader_fwhm_mm, voxel)
    patient_r = _blur(patient, reader_fwhm_mm, voxel)
    scale = float(seen[reference].mean() / normal_r[reference].mean())
    deficit = 1.0 - seen / (scale * np.maximum(normal_r, 1e-12))
    expected = 1.0 - patient_r / np.maximum(normal_r, 1e-12)
    expected = expected - float(expected[reference].mean())  # the same reference scaling as the image
    residual = (deficit - expected)[cortex]
    return {
        "noise_cov": noise_cov,
        "gm_wm_contrast": gm_mean / wm_mean,
        "gw_cnr": (gm_mean - wm_mean) / max(wm_sd, 1e-12),
        "fwhm_mm": fwhm,
        "pattern_contrast": float(deficit[affected].mean()),
        "pattern_contrast_expected": float(expected[affected].mean()),
        "pattern_noise": float(residual.std(ddof=1)),
        "pattern_extent": float(truth["pattern_extent"]),
    }


def _pet_sidecar(pet_path: Path) -> dict:
    """The reconstruction's sidecar of an image: beside it, or for a 0–1 image of petiq's BIDS
    derivatives, its reconstruction's in the raw dataset (:func:`petiq.core.bids.recon_sidecar_of`)."""
    from ..core.bids import recon_sidecar_of

    side = recon_sidecar_of(pet_path)
    return json.loads(side.read_text()) if side is not None and side.is_file() else {}


def measure_image(
    pet_path: str | Path, truth_npz: str | Path | Mapping[str, np.ndarray], *, reader_fwhm_mm: float = READER_FWHM_MM
) -> dict:
    """Measures of one reconstruction (kBq/mL or 0–1) with its patient, dose and dose per kg.

    Patient and dose come from the image's JSON sidecar when it lies beside it (``..._pet.json``), or, for a
    0–1 image in petiq's BIDS derivatives, from its reconstruction's sidecar in the raw dataset.
    """
    pet_path = Path(pet_path)
    if not pet_path.is_file():
        raise PetiqInputError(pet_path, "the image does not exist", "run the reconstruction step for it first")
    truth = truth_npz if isinstance(truth_npz, Mapping) else load_truth(truth_npz)
    image = np.asarray(nib.load(str(pet_path)).dataobj, dtype=np.float32)
    try:
        values = measure_array(image, truth, reader_fwhm_mm=reader_fwhm_mm)
    except PetiqInputError as err:
        raise PetiqInputError(pet_path, err.problem, err.fix) from None
    side = _pet_sidecar(pet_path)
    injected, weight = side.get("InjectedRadioactivity"), side.get("BodyWeight")
    return {
        "participant_id": str(side.get("participant_id", truth["participant_id"])),
        "dose": float(side["DoseFractionPercent"]) if "DoseFractionPercent" in side else float("nan"),
        "dose_per_kg": float(injected) / float(weight) if injected and weight else float("nan"),
        "diagnosis": str(truth["diagnosis"]),
        "severity": float(truth["severity"]),
        **values,
    }


def measure_images(
    pet_paths: Sequence[str | Path],
    truth_npzs: Sequence[str | Path] | Mapping[str, str | Path],
    *,
    reader_fwhm_mm: float = READER_FWHM_MM,
    progress: bool = True,
) -> pd.DataFrame:
    """:func:`measure_image` over many images. ``truth_npzs``: one per image, or participant_id → path."""
    import sys

    from tqdm import tqdm

    pet_paths = [Path(p) for p in pet_paths]
    if not isinstance(truth_npzs, Mapping) and len(truth_npzs) != len(pet_paths):
        raise PetiqInputError(
            None,
            f"{len(pet_paths)} images but {len(truth_npzs)} truth files",
            "give one truth file per image, or a mapping participant_id → truth file",
        )
    cache: dict[str, dict] = {}
    rows = []
    for i, pet in enumerate(tqdm(pet_paths, desc="measuring images", disable=not (progress and sys.stderr.isatty()))):
        if isinstance(truth_npzs, Mapping):
            pid = str(_pet_sidecar(pet).get("participant_id") or pet.name.split("_")[0])
            if pid not in truth_npzs:
                raise PetiqInputError(pet, f"no reader truth for {pid}", "add its reader-truth file")
            key = str(truth_npzs[pid])
        else:
            key = str(truth_npzs[i])
        if key not in cache:
            cache = {key: load_truth(key)}  # images come grouped by subject; keep one truth in memory
        rows.append(measure_image(pet, cache[key], reader_fwhm_mm=reader_fwhm_mm))
    return pd.DataFrame(rows)


MEASURE_COLUMNS = (
    "participant_id",
    "dose",
    "dose_per_kg",
    "diagnosis",
    "gw_cnr",
    "pattern_contrast_expected",
    "pattern_noise",
    "pattern_extent",
)

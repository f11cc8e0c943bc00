"""The virtual reader: scores an image as a clinician would (GQR, PR, DC on 0–3 in 0.5 steps).

A clinician sees only the image but brings experience: where grey and white matter are, what a
normal FDG brain looks like, and where each dementia's hypometabolism appears. petiq stands that
experience in with the phantom's ground truth, resampled onto the reconstruction grid
(:func:`write_reader_truth`, one job per subject). The reader then works in three steps:

1. **Measures** (:func:`measure_image`), all ratios, so kBq/mL and 0–1 images give the same:

   * ``noise_cov``: coefficient of variation in eroded deep white matter (uniform uptake);
   * ``gm_wm_contrast``: mean cortical grey matter / mean deep white matter (resolution, partial volume);
   * ``gw_cnr``: (GM − WM) / σ_WM, the grey/white structure against voxel noise;
   * ``fwhm_mm``: the image's effective resolution, the Gaussian blur of the true activity that fits it
     best (reported; it sets the blur of the expected images below);
   * a **deficit map** D = 1 − image / (patient's normal uptake), both seen at the reader's scale
     (a ``reader_fwhm_mm`` Gaussian, about a gyrus), scaled to agree in reference cortex (regions no
     dementia pattern touches), as in clinical z-score tools. ``pattern_contrast`` is D's mean over
     the patient's affected regions, ``pattern_contrast_expected`` what the noise-free image would give,
     ``pattern_noise`` the SD of D around that expectation over all cortex (noise blobs that mimic or
     hide hypometabolism);
   * ``pattern_extent``: share of cortex in the pattern.

2. **Internal scores** (:class:`ReaderModel`): each metric is a log contrast-to-noise ratio mapped
   through a logistic onto 0–3. GQR: log ``gw_cnr``. PR: log(pattern contrast / ``pattern_noise``);
   the contrast is the expected one for a patient with disease, and for a cognitively normal patient
   ``normal_contrast``, the smallest reduction a reader must be able to exclude (so recognising a
   normal scan also needs low noise). DC: PR's evidence plus ``extent_weight`` × log relative extent.

3. **Readings** (:func:`virtual_ratings`): the internal score plus the rater's bias, a persistent
   rater × image opinion and fresh reading noise (both partly shared across the three metrics, as a
   reader forms one impression of an image), rounded to 0.5 steps and clipped to 0–3.

:func:`calibrate_reader` fits the free parameters against the paper's Table I, rater agreement and
the dose behaviour of the scores (:func:`petiq.scoring.agreement.load_targets`).

Limits: at the lowest doses (≲ 1 % of the demo's counts) the measured grey/white contrast is itself
noisy, so GQR rises with dose in expectation, not for every patient between 0.5 % and 1 %.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from ..core.errors import PetiqInputError
from ..core.fileio import write_npz
from ..core.seeding import derive_seed

FWHM_TO_SIGMA = 1.0 / math.sqrt(8.0 * math.log(2.0))
#: Hammers name prefixes of cerebral cortex (lobes, cingulate, insula).
CORTICAL_PREFIXES = ("TL ", "FL ", "PL ", "OL ", "CG ", "insula")
#: Gaussian FWHM (mm) at which the reader judges patterns: about the width of a gyrus.
READER_FWHM_MM = 10.0
#: Candidate blurs (mm) for the effective-resolution fit of :func:`measure_image`.
FWHM_GRID_MM = (0.0, 2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0)


# ----------------------------------------------------------------------------------------------
# Ground truth on the reconstruction grid
# ----------------------------------------------------------------------------------------------


def cortical_labels(names: Mapping[int, str]) -> list[int]:
    """Hammers labels of cerebral cortex."""
    return sorted(k for k, n in names.items() if n.startswith(CORTICAL_PREFIXES))


def reference_labels(names: Mapping[int, str]) -> list[int]:
    """Cortex and cerebellum that no dementia pattern of :data:`petiq.cohort.phantom.PATTERNS` touches."""
    from ..cohort.phantom import PATTERNS

    keep = set(cortical_labels(names)) | {k for k, n in names.items() if "cerebellum" in n}
    return sorted(k for k in keep if all(p.weight(names[k]) == 0 for p in PATTERNS.values()))


def sentinel_labels(names: Mapping[int, str], min_weight: float = 0.5) -> list[int]:
    """Cortex where the common dementia patterns appear (weight ≥ ``min_weight`` in any pattern)."""
    from ..cohort.phantom import PATTERNS

    return sorted(k for k in cortical_labels(names) if max(p.weight(names[k]) for p in PATTERNS.values()) >= min_weight)


def _voxel_sizes(affine: np.ndarray) -> np.ndarray:
    return np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0))


def resample_to_grid(
    volume: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    *,
    order: int = 1,
    antialias: bool = True,
) -> np.ndarray:
    """Resample ``volume`` onto (dst_shape, dst_affine) by world coordinates.

    With ``antialias`` the source is first blurred so that each destination voxel sees a box of
    its own size (variance (d² − s²)/12 per axis), as a scanner's larger voxel averages the truth.

    >>> v = np.zeros((8, 8, 8), np.float32); v[2:6, 2:6, 2:6] = 1
    >>> a = np.eye(4); a[:3, 3] = -3.5
    >>> b = np.diag([2.0, 2.0, 2.0, 1.0]); b[:3, 3] = -3.0
    >>> out = resample_to_grid(v, a, (4, 4, 4), b, antialias=False)
    >>> out.shape, float(out[2, 2, 2])
    ((4, 4, 4), 1.0)
    """
    volume = np.asarray(volume, dtype=np.float32)
    if antialias and order > 0:
        src, dst = _voxel_sizes(src_affine), _voxel_sizes(dst_affine)
        sigma = np.sqrt(np.clip(dst**2 - src**2, 0, None) / 12.0) / src
        if np.any(sigma > 0.05):
            volume = ndimage.gaussian_filter(volume, sigma, mode="constant")
    m = np.linalg.inv(np.asarray(src_affine, float)) @ np.asarray(dst_affine, float)
    return ndimage.affine_transform(
        volume, m[:3, :3], offset=m[:3, 3], output_shape=tuple(int(s) for s in dst_shape), order=order, mode="constant"
    ).astype(np.float32)


def _bbox(mask: np.ndarray, margin: int) -> np.ndarray:
    idx = np.nonzero(mask)
    if idx[0].size == 0:
        return np.array([[0, s] for s in mask.shape], dtype=np.int64)
    return np.array(
        [[max(int(i.min()) - margin, 0), min(int(i.max()) + margin + 1, s)] for i, s in zip(idx, mask.shape)],
        dtype=np.int64,
    )


def reader_truth(
    patient,
    normal,
    names: Mapping[int, str],
    *,
    diagnosis: str,
    severity: float,
    ref_shape: Sequence[int],
    ref_affine: np.ndarray,
    participant_id: str = "",
    margin: int = 3,
) -> dict[str, np.ndarray]:
    """The reader's "experience" of one patient on the reconstruction grid (arrays for an ``.npz``).

    ``patient`` and ``normal`` are :class:`petiq.cohort.phantom.Phantom`-like objects (``activity``, ``gm``,
    ``wm``, ``labels``, ``brain_mask``, ``affine``, ``regional_gm_suv``): the patient as simulated and
    the same person without the disease. Arrays are cropped to the brain's bounding box (``bbox``).
    """
    ref_shape = tuple(int(s) for s in ref_shape)
    ref_affine = np.asarray(ref_affine, dtype=float)

    def to_ref(vol, order=1):
        return resample_to_grid(vol, patient.affine, ref_shape, ref_affine, order=order, antialias=order > 0)

    brain = to_ref(patient.brain_mask.astype(np.float32)) >= 0.5
    gm, wm = to_ref(patient.gm), to_ref(patient.wm)
    labels = to_ref(patient.labels.astype(np.float32), order=0).astype(np.uint8) * brain
    act_patient, act_normal = to_ref(patient.activity), to_ref(normal.activity)

    reduction = np.zeros(256, dtype=np.float32)
    for label, name in names.items():
        p, n = patient.regional_gm_suv.get(name), normal.regional_gm_suv.get(name)
        if p is not None and n:
            reduction[label] = max(0.0, 1.0 - p / n)
    cortex_ids = cortical_labels(names)
    cortex = brain & (gm >= 0.5) & np.isin(labels, cortex_ids)
    peak = float(reduction[cortex_ids].max()) if cortex_ids else 0.0
    if peak > 0.01:
        affected_ids = [k for k in cortex_ids if reduction[k] >= 0.5 * peak]
    else:  # no disease: the places a pattern would show, expected to look normal
        affected_ids = sentinel_labels(names)
    affected = cortex & np.isin(labels, affected_ids)
    reference = brain & (gm >= 0.5) & np.isin(labels, reference_labels(names))
    wm_core = brain & (wm >= 0.9)
    wm_deep = ndimage.binary_erosion(wm_core)
    if wm_deep.sum() < 20:  # small or coarse grids: keep the uneroded core
        wm_deep = wm_core
    for name, mask in (("deep white matter", wm_deep), ("cortex", cortex), ("reference cortex", reference)):
        if mask.sum() < 10:
            raise PetiqInputError(
                None,
                f"{participant_id or 'the patient'}: only {int(mask.sum())} voxels of {name} on the reconstruction grid",
                "use a reconstruction grid that resolves the brain (voxels of a few mm)",
            )
    box = _bbox(brain, margin)
    crop = tuple(slice(int(a), int(b)) for a, b in box)
    return {
        "participant_id": np.array(participant_id),
        "diagnosis": np.array(diagnosis),
        "severity": np.array(float(severity)),
        "ref_shape": np.array(ref_shape, dtype=np.int64),
        "ref_affine": ref_affine,
        "bbox": box,
        "patient": act_patient[crop],
        "normal": act_normal[crop],
        "gm": gm[crop],
        "wm": wm[crop],
        "labels": labels[crop],
        "brain": brain[crop],
        "wm_deep": wm_deep[crop],
        "cortex": cortex[crop],
        "affected": affected[crop],
        "reference": reference[crop],
        "label_reduction": reduction,
        "pattern_extent": np.array(float(affected.sum()) / float(cortex.sum()) if peak > 0.01 else 0.0),
    }


def _anatomy_from_sidecar(sidecar: dict, path: Path):
    from ..cohort.phantom import PatientAnatomy

    try:
        raw = dict(sidecar["Phantom"]["anatomy"])
    except (KeyError, TypeError):
        raise PetiqInputError(
            path, "the sidecar has no Phantom.anatomy", "use the JSON petiq cohort wrote for a synthetic patient"
        ) from None
    names = {f.name for f in fields(PatientAnatomy)}
    if set(raw) != names:
        raise PetiqInputError(
            path,
            f"Phantom.anatomy has fields {sorted(raw)}, expected {sorted(names)}",
            "regenerate the cohort with this petiq version",
        )
    return PatientAnatomy(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})


def write_reader_truth(
    sidecar_json: str | Path,
    anatomy_dir: str | Path,
    reference_image: str | Path,
    out_npz: str | Path,
    *,
    truth_image: str | Path | None = None,
) -> dict[str, np.ndarray]:
    """Rebuild a synthetic patient's phantom and write the reader's truth on ``reference_image``'s grid.

    ``truth_image`` (the cohort's ``pet-truth`` NIfTI), when given, is checked against the rebuilt
    activity, so a changed phantom model is caught instead of silently misleading the reader.
    """
    from ..cohort.anatomy import load_template
    from ..cohort.phantom import make_phantom

    sidecar_json, reference_image = Path(sidecar_json), Path(reference_image)
    for path in (sidecar_json, reference_image):
        if not path.is_file():
            raise PetiqInputError(path, "the file does not exist", "run the cohort and reconstruction steps first")
    sidecar = json.loads(sidecar_json.read_text())
    need = (
        "participant_id",
        "diagnosis",
        "severity",
        "injected_mbq",
        "weight_kg",
        "uptake_min",
        "ImageShape",
        "VoxelSizeMM",
    )
    missing = [k for k in need if sidecar.get(k) is None]
    if missing:
        raise PetiqInputError(
            sidecar_json, f"the sidecar lacks {missing}", "use the JSON petiq cohort wrote for a synthetic patient"
        )
    anatomy = _anatomy_from_sidecar(sidecar, sidecar_json)
    ref = nib.load(str(reference_image))
    template = load_template(str(anatomy_dir))
    grid = (tuple(int(s) for s in sidecar["ImageShape"]), tuple(float(v) for v in sidecar["VoxelSizeMM"]))
    common = dict(
        injected_mbq=float(sidecar["injected_mbq"]),
        weight_kg=float(sidecar["weight_kg"]),
        uptake_min=float(sidecar["uptake_min"]),
    )
    patient = make_phantom(
        template, anatomy, *grid, diagnosis=sidecar["diagnosis"], severity=float(sidecar["severity"]), **common
    )
    normal = make_phantom(template, anatomy, *grid, diagnosis="CN", severity=0.0, **common)
    if truth_image is not None:
        truth = np.asarray(nib.load(str(truth_image)).dataobj, dtype=np.float32)
        scale = float(np.abs(truth).max()) or 1.0
        if truth.shape != patient.activity.shape or float(np.abs(truth - patient.activity).max()) > 1e-4 * scale:
            raise PetiqInputError(
                truth_image,
                "the rebuilt phantom does not reproduce this true activity image",
                "regenerate the cohort with this petiq version (the phantom model changed since it was made)",
            )
    arrays = reader_truth(
        patient,
        normal,
        template.names,
        diagnosis=sidecar["diagnosis"],
        severity=float(sidecar["severity"]),
        ref_shape=ref.shape[:3],
        ref_affine=ref.affine,
        participant_id=str(sidecar["participant_id"]),
    )
    write_npz(out_npz, **arrays)
    return arrays


# ----------------------------------------------------------------------------------------------
# Image measures
# ----------------------------------------------------------------------------------------------


def _blur(volume: np.ndarray, fwhm_mm: float, voxel_mm: np.ndarray) -> np.ndarray:
    if fwhm_mm <= 0:
        return volume
    return ndimage.gaussian_filter(volume, fwhm_mm * FWHM_TO_SIGMA / voxel_mm, mode="nearest")


def load_truth(truth_npz: str | Path) -> dict[str, np.ndarray]:
    """Read a reader-truth ``.npz`` (as :func:`write_reader_truth` wrote it)."""
    path = Path(truth_npz)
    if not path.is_file():
        raise PetiqInputError(
            path, "the reader-truth file does not exist", "run the reader_truth step for this subject first"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


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
    voxel = _voxel_sizes(truth["ref_affine"])
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


# ----------------------------------------------------------------------------------------------
# The reader model: internal scores, raters, readings
# ----------------------------------------------------------------------------------------------

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
PLAN_COLUMNS = ("blinded_id", "participant_id", "dose", "category", "session", "reading")
#: Parameters :func:`calibrate_reader` fits (the others are physical constants of the model).
FITTED = (
    "gqr_slope",
    "gqr_mid",
    "pr_slope",
    "pr_mid",
    "dc_slope",
    "dc_mid",
    "extent_weight",
    "reading_sd",
    "opinion_sd",
    "bias_sd",
    "shared_all",
    "shared_pattern",
)


@dataclass(frozen=True)
class ReaderModel:
    """Parameters of the virtual reader (JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`).

    Internal score of metric m: 3 / (1 + exp(−slope_m · (q_m − mid_m))), q_m the log contrast-to-noise
    evidence (see the module docstring). A reading adds the rater's bias (SD ``bias_sd``, one draw per
    rater and metric), the rater's persistent opinion of the image (SD ``opinion_sd``) and fresh
    reading noise (SD ``reading_sd``); ``shared_all`` is the share of opinion and reading variance
    common to all three metrics, ``shared_pattern`` the share of the rest common to PR and DC.
    """

    gqr_slope: float = 1.3
    gqr_mid: float = 0.0
    pr_slope: float = 1.7
    pr_mid: float = -0.8
    dc_slope: float = 1.7
    dc_mid: float = -0.7
    extent_weight: float = 0.3
    extent_ref: float = 0.30  # share of cortex of a typical full-blown pattern
    normal_contrast: float = 0.10  # smallest regional reduction a reader must exclude to call a scan normal
    reading_sd: float = 0.2
    opinion_sd: float = 0.15
    bias_sd: float = 0.1
    shared_all: float = 0.5
    shared_pattern: float = 0.5
    calibration: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ReaderModel:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PetiqInputError(None, f"unknown reader parameter(s) {unknown}", f"use only {sorted(known)}")
        return cls(**dict(data))

    def write(self, path: str | Path) -> None:
        from ..core.fileio import write_json

        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> ReaderModel:
        path = Path(path)
        if not path.is_file():
            raise PetiqInputError(path, "the reader parameters do not exist", "run the reader calibration step first")
        return cls.from_dict(json.loads(path.read_text()))


def _check_measures(measures: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in MEASURE_COLUMNS if c not in measures.columns]
    if missing:
        raise PetiqInputError(
            None, f"the image measures lack {missing}", "make them with petiq.scoring.reader.measure_images"
        )
    out = measures.copy()
    out["participant_id"] = out["participant_id"].astype(str)
    out["dose"] = out["dose"].astype(float).round(4)
    if out.duplicated(["participant_id", "dose"]).any():
        row = out[out.duplicated(["participant_id", "dose"])].iloc[0]
        raise PetiqInputError(
            None, f"two measures of {row['participant_id']} at {row['dose']} %", "measure each image once"
        )
    return out.reset_index(drop=True)


def evidence(measures: pd.DataFrame, model: ReaderModel) -> np.ndarray:
    """Log contrast-to-noise evidence (n, 3) for GQR, PR and DC (see the module docstring)."""
    disease = (measures["diagnosis"].astype(str) != "CN").to_numpy()
    q_gqr = np.log(np.clip(measures["gw_cnr"].to_numpy(float), 1e-3, None))
    contrast = np.where(
        disease, np.clip(measures["pattern_contrast_expected"].to_numpy(float), 1e-3, None), model.normal_contrast
    )
    q_pr = np.log(contrast / np.clip(measures["pattern_noise"].to_numpy(float), 1e-6, None))
    extent = np.clip(measures["pattern_extent"].to_numpy(float), 1e-3, None)
    q_dc = q_pr + model.extent_weight * np.where(disease, np.log(extent / model.extent_ref), 0.0)
    return np.stack([q_gqr, q_pr, q_dc], axis=1)


def _logistic_scores(q: np.ndarray, model: ReaderModel) -> np.ndarray:
    slope = np.array([model.gqr_slope, model.pr_slope, model.dc_slope])
    mid = np.array([model.gqr_mid, model.pr_mid, model.dc_mid])
    return 3.0 / (1.0 + np.exp(-slope * (q - mid)))


def internal_scores(measures: pd.DataFrame, model: ReaderModel) -> np.ndarray:
    """Continuous internal scores (n, 3) in (0, 3) for GQR, PR, DC; rise monotonically with each CNR."""
    return _logistic_scores(evidence(measures, model), model)


def quantise(x: np.ndarray) -> np.ndarray:
    """Round to the nearest 0.5 and clip to 0–3.

    >>> quantise(np.array([-0.4, 0.24, 0.26, 1.74, 2.9, 3.6])).tolist()
    [0.0, 0.0, 0.5, 1.5, 3.0, 3.0]
    """
    return np.clip(np.floor(2.0 * np.asarray(x, float) + 0.5) / 2.0, 0.0, 3.0)


def _combine(z: np.ndarray, shared_all: float, shared_pattern: float) -> np.ndarray:
    """Five independent N(0, 1) draws (…, 5) → three unit-variance errors (…, 3) for GQR, PR, DC:
    a part common to all metrics, a part common to PR and DC, and a part of each metric's own."""
    a = float(np.clip(shared_all, 0.0, 1.0))
    b = float(np.clip(shared_pattern, 0.0, 1.0)) * (1.0 - a)
    own = math.sqrt(max(1.0 - a - b, 0.0))
    common = math.sqrt(a) * z[..., 0]
    pattern = common + math.sqrt(b) * z[..., 1]
    return np.stack(
        [common + math.sqrt(1.0 - a) * z[..., 2], pattern + own * z[..., 3], pattern + own * z[..., 4]], axis=-1
    )


def _rater_names(raters: int | Sequence[str]) -> list[str]:
    if isinstance(raters, (int, np.integer)):
        if raters < 1:
            raise PetiqInputError(None, f"{raters} raters", "use at least one rater (two for agreement statistics)")
        return [str(k) for k in range(1, int(raters) + 1)]
    names = [str(r) for r in raters]
    if not names or len(set(names)) != len(names):
        raise PetiqInputError(None, f"rater names {names} are empty or repeat", "give distinct rater names")
    return names


def check_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """Validate a reading plan (columns :data:`PLAN_COLUMNS`); return it typed."""
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise PetiqInputError(None, f"the reading plan lacks {missing}", f"give the columns {', '.join(PLAN_COLUMNS)}")
    out = plan.loc[:, list(PLAN_COLUMNS)].copy()
    out["participant_id"] = out["participant_id"].astype(str)
    out["dose"] = out["dose"].astype(float).round(4)
    out["session"] = out["session"].astype(int)
    out["reading"] = out["reading"].astype(str)
    bad = sorted(set(out["reading"]) - {"first", "repeat"})
    if bad:
        raise PetiqInputError(None, f"the reading plan has readings {bad}", "write first or repeat")
    first = out[out["reading"] == "first"]
    if first.duplicated(["participant_id", "dose"]).any():
        raise PetiqInputError(
            None, "the reading plan reads an image twice as a first reading", "give each image one first reading"
        )
    rep = out[out["reading"] == "repeat"]
    orphans = set(zip(rep["participant_id"], rep["dose"])) - set(zip(first["participant_id"], first["dose"]))
    if orphans:
        raise PetiqInputError(
            None, f"re-reads without a first reading: {sorted(orphans)[:3]}", "re-read only images that are read first"
        )
    return out.reset_index(drop=True)


def _image_index(measures: pd.DataFrame, plan: pd.DataFrame) -> np.ndarray:
    lookup = {(p, d): i for i, (p, d) in enumerate(zip(measures["participant_id"], measures["dose"]))}
    missing = [(p, d) for p, d in zip(plan["participant_id"], plan["dose"]) if (p, d) not in lookup]
    if missing:
        raise PetiqInputError(
            None,
            f"no image measures for {len(missing)} planned image(s), e.g. {missing[0][0]} at {missing[0][1]} %",
            "measure every image of the reading plan (reconstruct it first)",
        )
    return np.array([lookup[(p, d)] for p, d in zip(plan["participant_id"], plan["dose"])], dtype=np.int64)


def virtual_ratings(
    measures: pd.DataFrame,
    participants: pd.DataFrame | None,
    plan: pd.DataFrame,
    params: ReaderModel,
    raters: int | Sequence[str] = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Readings of the plan's images (columns :data:`petiq.scoring.agreement.RATINGS_COLUMNS`).

    The first rater reads every row of the plan (first readings and re-reads), the others the first
    readings. Each number is seeded from (seed, "reader", rater, participant, dose[, reading]), so an
    image's score does not depend on which other images are read.
    """
    from .agreement import RATINGS_COLUMNS

    measures, plan = _check_measures(measures), check_plan(plan)
    if participants is not None:
        unknown = sorted(set(plan["participant_id"]) - set(participants["participant_id"].astype(str)))
        if unknown:
            raise PetiqInputError(
                None,
                f"the plan reads patients not in participants.tsv: {unknown[:5]}",
                "plan readings for the cohort's patients only",
            )
    names = _rater_names(raters)
    index = _image_index(measures, plan)
    scores = internal_scores(measures, params)
    rows = []
    for k, rater in enumerate(names):
        bias = params.bias_sd * np.random.default_rng(derive_seed(seed, "reader", rater, "bias")).normal(size=3)
        for row, i in zip(plan.itertuples(index=False), index):
            if k > 0 and row.reading != "first":
                continue
            keys = (seed, "reader", rater, row.participant_id, float(row.dose))
            opinion = _combine(
                np.random.default_rng(derive_seed(*keys, "opinion")).normal(size=5),
                params.shared_all,
                params.shared_pattern,
            )
            noise = _combine(
                np.random.default_rng(derive_seed(*keys, row.reading)).normal(size=5),
                params.shared_all,
                params.shared_pattern,
            )
            x = scores[i] + bias + params.opinion_sd * opinion + params.reading_sd * noise
            rows.append((row.participant_id, float(row.dose), rater, int(row.session), row.reading, *quantise(x)))
    out = pd.DataFrame(rows, columns=list(RATINGS_COLUMNS))
    return out.sort_values(["rater", "session", "participant_id", "dose", "reading"], kind="stable").reset_index(
        drop=True
    )


# ----------------------------------------------------------------------------------------------
# Calibration
# ----------------------------------------------------------------------------------------------


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r along the last axis (NaN where either is constant)."""
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    den = np.sqrt((xc**2).sum(-1) * (yc**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (xc * yc).sum(-1) / np.where(den > 0, den, 1.0), np.nan)


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    from scipy.special import ndtr

    return ndtr(x)


@dataclass
class _Design:
    """Everything the calibration's objective needs, fixed once (common random numbers)."""

    q: np.ndarray  # (n_images, 3) evidence without the DC extent term
    extent_term: np.ndarray  # (n_images,) log relative extent (0 for CN)
    plan_first: np.ndarray  # image index per first reading
    reread: np.ndarray  # positions (into plan_first) of the re-read images
    dose_per_kg: np.ndarray  # of plan_first images
    full: np.ndarray  # image indices at full dose
    lowest: np.ndarray  # image indices at the lowest dose
    z_opinion: np.ndarray  # (R, raters, n_first, 5)
    z_first: np.ndarray  # (R, raters, n_first, 5)
    z_repeat: np.ndarray  # (R, n_reread, 5)
    z_bias: np.ndarray  # (R, raters, 3)


def _model_with(base: ReaderModel, theta: np.ndarray) -> ReaderModel:
    """Unconstrained vector → parameters (slopes and SDs positive, shares and extent weight in (0, 1))."""
    sig = lambda v: 1.0 / (1.0 + math.exp(-v))  # noqa: E731
    values = dict(
        gqr_slope=math.exp(theta[0]),
        gqr_mid=theta[1],
        pr_slope=math.exp(theta[2]),
        pr_mid=theta[3],
        dc_slope=math.exp(theta[4]),
        dc_mid=theta[5],
        extent_weight=sig(theta[6]),
        reading_sd=math.exp(theta[7]),
        opinion_sd=math.exp(theta[8]),
        bias_sd=math.exp(theta[9]),
        shared_all=sig(theta[10]),
        shared_pattern=sig(theta[11]),
    )
    return replace(base, **{k: float(v) for k, v in values.items()})


def _theta_of(model: ReaderModel) -> np.ndarray:
    logit = lambda p: math.log(min(max(p, 1e-4), 1 - 1e-4) / (1 - min(max(p, 1e-4), 1 - 1e-4)))  # noqa: E731
    return np.array(
        [
            math.log(model.gqr_slope),
            model.gqr_mid,
            math.log(model.pr_slope),
            model.pr_mid,
            math.log(model.dc_slope),
            model.dc_mid,
            logit(model.extent_weight),
            math.log(model.reading_sd),
            math.log(model.opinion_sd),
            math.log(model.bias_sd),
            logit(model.shared_all),
            logit(model.shared_pattern),
        ]
    )


def expected_statistics(design: _Design, model: ReaderModel) -> dict[str, float]:
    """The calibration quantities of :func:`petiq.scoring.agreement.load_targets`, averaged over the design's
    replicate reader panels (agreement, Table I) or in expectation (dose range, slopes)."""
    from .agreement import METRIC_PAIRS, METRICS

    q = design.q.copy()
    q[:, 2] = q[:, 2] + model.extent_weight * design.extent_term
    s = _logistic_scores(q, model)
    first = s[design.plan_first]  # (n, 3)
    bias = model.bias_sd * design.z_bias[:, :, None, :]
    opinion = model.opinion_sd * _combine(design.z_opinion, model.shared_all, model.shared_pattern)
    x1 = (
        first[None, None]
        + bias
        + opinion
        + model.reading_sd * _combine(design.z_first, model.shared_all, model.shared_pattern)
    )
    y1 = quantise(x1)  # (R, raters, n, 3)
    out: dict[str, float] = {}
    for k in range(min(2, y1.shape[1])):
        for a, b in METRIC_PAIRS:
            r = _pearson_rows(y1[:, k, :, METRICS.index(a)], y1[:, k, :, METRICS.index(b)])
            out[f"table_I.clinician{k + 1}.{a}_vs_{b}"] = float(np.nanmean(r))
    if y1.shape[1] > 1:
        for j, m in enumerate(METRICS):
            r = _pearson_rows(np.broadcast_to(y1[:, :1, :, j], y1[:, 1:, :, j].shape), y1[:, 1:, :, j])
            out[f"inter_rater.pearson.{m}"] = float(np.nanmean(r))
        out["inter_rater.pct_within_0.5"] = 100.0 * float(np.mean(np.abs(y1[:, 1:] - y1[:, :1]) <= 0.5 + 1e-9))
    if design.reread.size:
        rr = design.reread
        x_rep = (
            first[rr][None]
            + bias[:, 0]
            + opinion[:, 0, rr]
            + model.reading_sd * _combine(design.z_repeat, model.shared_all, model.shared_pattern)
        )
        diff = np.abs(quantise(x_rep) - y1[:, 0, rr])
        out["intra_rater.pct_reread_differing_ge_0.5"] = 100.0 * float(np.mean(diff >= 0.5 - 1e-9))
    total_sd = max(math.sqrt(model.bias_sd**2 + model.opinion_sd**2 + model.reading_sd**2), 1e-9)
    if design.full.size:
        out["dose.pct_full_dose_2.5_to_3"] = 100.0 * float(np.mean(1.0 - _norm_cdf((2.25 - s[design.full]) / total_sd)))
    if design.lowest.size:
        out["dose.pct_lowest_dose_0_to_1"] = 100.0 * float(np.mean(_norm_cdf((1.25 - s[design.lowest]) / total_sd)))
    x = design.dose_per_kg
    if x.size >= 2 and np.ptp(x) > 0:  # Fig. 6 on the reference rater's first readings, per replicate
        xc = x - x.mean()
        y = y1[:, 0]  # (R, n, 3)
        yc = y - y.mean(axis=1, keepdims=True)
        slopes = np.einsum("n,rnm->rm", xc, yc) / (xc @ xc)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = np.einsum("n,rnm->rm", xc, yc) / np.sqrt((xc @ xc) * (yc**2).sum(axis=1))
        out["dose.slope_ratio_GQR_over_PR_DC"] = float(
            np.nanmean(slopes[:, 0] / np.maximum(np.maximum(slopes[:, 1], slopes[:, 2]), 1e-9))
        )
        out["dose.pearson_ratio_GQR_over_PR_DC"] = float(
            np.nanmean(r[:, 0] / np.maximum(np.maximum(r[:, 1], r[:, 2]), 1e-9))
        )
    return out


def _initial_model(q: np.ndarray, extent_term: np.ndarray, doses: np.ndarray) -> ReaderModel:
    """Logistic curves through the median evidence at the lowest dose (score 0.5) and highest dose
    (GQR 2.6; PR, DC 2.8, as readers call patterns from noisier images than they call good-looking)."""
    base = ReaderModel()
    q = q.copy()
    q[:, 2] = q[:, 2] + base.extent_weight * extent_term
    lo, hi = np.isclose(doses, doses.min()), np.isclose(doses, doses.max())
    values = {}
    for j, (name, top) in enumerate((("gqr", 2.6), ("pr", 2.8), ("dc", 2.8))):
        q_lo, q_hi = float(np.median(q[lo, j])), float(np.median(q[hi, j]))
        logit_lo, logit_hi = math.log(0.5 / 2.5), math.log(top / (3.0 - top))
        slope = (logit_hi - logit_lo) / max(q_hi - q_lo, 0.1)
        values[f"{name}_slope"] = slope
        values[f"{name}_mid"] = q_lo - logit_lo / slope
    return replace(base, **values)


def _loss(stats: dict[str, float], targets: pd.DataFrame) -> float:
    total = 0.0
    for t in targets.itertuples(index=False):
        v = stats.get(t.quantity)
        if v is None or not np.isfinite(v):
            continue
        if t.rule == "min":
            # aim above the threshold: 80 % where 60 % is the minimum, a ratio of 1.15 where 1 is
            aim, scale = (t.target + 20.0, 10.0) if t.target > 5 else (t.target * 1.15, 0.1 * t.target)
            total += max(0.0, (aim - v) / scale) ** 2
        else:
            total += ((v - t.target) / t.tolerance) ** 2
    return total


def make_design(
    measures: pd.DataFrame,
    plan: pd.DataFrame,
    *,
    raters: int,
    replicates: int,
    seed: int,
    model: ReaderModel | None = None,
) -> _Design:
    """Fix the images, plan and common random numbers of a calibration."""
    model = model or ReaderModel()
    q = evidence(measures, replace(model, extent_weight=0.0))
    disease = (measures["diagnosis"].astype(str) != "CN").to_numpy()
    extent_term = np.where(
        disease, np.log(np.clip(measures["pattern_extent"].to_numpy(float), 1e-3, None) / model.extent_ref), 0.0
    )
    first = plan[plan["reading"] == "first"].reset_index(drop=True)
    first_idx = _image_index(measures, first)
    rep = plan[plan["reading"] == "repeat"]
    rep_keys = set(zip(rep["participant_id"], rep["dose"]))
    reread = np.array(
        [i for i, key in enumerate(zip(first["participant_id"], first["dose"])) if key in rep_keys], dtype=np.int64
    )
    doses = measures["dose"].to_numpy(float)
    rng = np.random.default_rng(derive_seed(seed, "reader", "calibration"))
    n = len(first_idx)
    from .agreement import FULL_DOSE, LOWEST_DOSE

    return _Design(
        q=q,
        extent_term=extent_term,
        plan_first=first_idx,
        reread=reread,
        dose_per_kg=measures["dose_per_kg"].to_numpy(float)[first_idx],
        full=np.nonzero(np.isclose(doses, FULL_DOSE))[0],
        lowest=np.nonzero(np.isclose(doses, LOWEST_DOSE))[0],
        z_opinion=rng.normal(size=(replicates, raters, n, 5)),
        z_first=rng.normal(size=(replicates, raters, n, 5)),
        z_repeat=rng.normal(size=(replicates, reread.size, 5)),
        z_bias=rng.normal(size=(replicates, raters, 3)),
    )


def calibrate_reader(
    measures: pd.DataFrame,
    participants: pd.DataFrame | None,
    plan: pd.DataFrame,
    targets: pd.DataFrame | None = None,
    seed: int = 0,
    *,
    raters: int = 2,
    replicates: int = 200,
    maxiter: int = 4000,
    restarts: int = 2,
) -> ReaderModel:
    """Fit the reader's free parameters (:data:`FITTED`) so that it meets ``targets`` (default
    :func:`petiq.scoring.agreement.load_targets`) on the plan's images, in expectation over ``replicates``
    seeded reader panels. Nelder–Mead on a weighted squared distance; writes nothing.

    Range targets (full dose mostly 2.5–3, 0.5 % mostly 0–1) use every measured image; the
    agreement targets and the ordering of slopes and correlations against dose per kg (GQR first) use
    the plan's images. One-sided targets are aimed above their bar (80 % for "mostly", ratios of
    1.15), so that one draw of raters still clears it. The returned model's ``calibration`` holds the
    expected statistics and the loss.
    """
    from scipy.optimize import minimize

    from .agreement import load_targets

    measures, plan = _check_measures(measures), check_plan(plan)
    if raters < 2:
        raise PetiqInputError(None, f"{raters} rater(s)", "calibrate with at least two raters (inter-rater targets)")
    if measures["dose_per_kg"].isna().any():
        if participants is None:
            raise PetiqInputError(
                None, "some images lack dose_per_kg and no participants table was given", "pass participants.tsv"
            )
        from .agreement import image_dose_per_kg

        measures["dose_per_kg"] = measures["dose_per_kg"].fillna(image_dose_per_kg(measures, participants))
    targets = load_targets() if targets is None else targets
    design = make_design(measures, plan, raters=raters, replicates=replicates, seed=seed)
    start = _initial_model(design.q, design.extent_term, measures["dose"].to_numpy(float))
    theta0 = _theta_of(start)
    prior = theta0.copy()

    def objective(theta: np.ndarray) -> float:
        model = _model_with(start, theta)
        return _loss(expected_statistics(design, model), targets) + 0.01 * float(((theta - prior) ** 2).sum())

    def run(theta: np.ndarray, step: float):
        # a simplex of ``step`` in every (unconstrained) direction: scipy's default of 5 % of each
        # coordinate would leave parameters starting at 0 (midpoints, shares of ½) almost unexplored
        simplex = np.vstack([theta, theta + step * np.eye(theta.size)])
        options = {"maxiter": maxiter, "xatol": 1e-3, "fatol": 1e-4, "adaptive": True, "initial_simplex": simplex}
        return minimize(objective, theta, method="Nelder-Mead", options=options)

    best = run(theta0, 0.5)
    for _ in range(
        max(restarts - 1, 0)
    ):  # restart around the optimum: the simplex collapses early on a stepped surface
        again = run(best.x, 0.2)
        if again.fun < best.fun - 1e-6:
            best = again
        else:
            break
    model = _model_with(start, best.x)
    stats = expected_statistics(design, model)
    return replace(
        model,
        calibration={
            "expected": {k: round(v, 4) for k, v in stats.items()},
            "loss": round(float(best.fun), 6),
            "replicates": replicates,
            "seed": seed,
            "raters": raters,
            "images": int(len(measures)),
            "planned_first_readings": int(design.plan_first.size),
            "rereads": int(design.reread.size),
        },
    )

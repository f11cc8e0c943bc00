"""What the virtual reader knows of a patient: the phantom's ground truth (grey and white matter,
the patient's normal uptake, the dementia pattern) resampled onto the reconstruction grid, one file
per subject (:func:`write_reader_truth`)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from ..core.errors import PetiqInputError
from ..core.fileio import write_npz

#: Hammers name prefixes of cerebral cortex (lobes, cingulate, insula).
CORTICAL_PREFIXES = ("TL ", "FL ", "PL ", "OL ", "CG ", "insula")


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


def voxel_sizes(affine: np.ndarray) -> np.ndarray:
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
        src, dst = voxel_sizes(src_affine), voxel_sizes(dst_affine)
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


def load_truth(truth_npz: str | Path) -> dict[str, np.ndarray]:
    """Read a reader-truth ``.npz`` (as :func:`write_reader_truth` wrote it)."""
    path = Path(truth_npz)
    if not path.is_file():
        raise PetiqInputError(
            path, "the reader-truth file does not exist", "run the reader_truth step for this subject first"
        )
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}

"""Digital brain FDG phantoms: one distinct person per call.

A patient is made from the 1 mm MNI template (:mod:`petiq.cohort.anatomy`) in four steps:

1. **Anatomy.** A similarity transform (head size, position, tilt) and a smooth random displacement
   field map each voxel of the patient's grid into template space. Age-related atrophy enlarges the
   ventricles (voxels within ``ventricle_growth_mm`` of them become CSF) and widens the sulci (grey
   matter within ``sulcal_widening_mm`` of CSF gives way to CSF). A skull and scalp are built as shells
   at a patient-specific thickness around the brain.
2. **FDG activity** (kBq/mL at scan start): regional standardised uptake values (SUV) for grey matter
   from the Hammers atlas (cortex, striatum, thalamus, cerebellum high; white matter ≈ 1/3 of cortex;
   CSF, bone and scalp near background), a per-patient global and regional variability, then the
   diagnosis's hypometabolism pattern scaled by the patient's severity, then SUV → kBq/mL with the
   decay-corrected injected activity and body weight.
3. **μ-map** at 511 keV (cm⁻¹): soft tissue and brain 0.096, bone 0.13–0.17 (per patient), air 0.
4. **T1-weighted-looking MR** from the tissue fractions with a smooth bias field and noise.

All four images share one grid centred on the scanner, the arrays' axes the scanner's x, y
(transaxial) and z (axial) (voxel ``(i, j, k)`` at scanner ``((i − (nx−1)/2)·dx, …)``), and its RAS+
affine (:func:`grid_affine`): the patient lies head first and supine, so scanner +x is the patient's
left, +y anterior and +z inferior (``docs/frame.md``). The template is placed in RAS (MNI) mm.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage

from ..core.decay import ISOTOPES
from ..scanner.frame import scanner_grid_affine
from .anatomy import VENTRICLE_LABELS, AnatomyTemplate

F18_HALF_LIFE_MIN = ISOTOPES["F-18"].half_life_s / 60.0  # 109.7712 (NiftyPET riLUT)
MU_WATER_511 = 0.096  # cm^-1

#: MNI point placed at the scanner's centre (roughly the middle of the head, not the AC).
HEAD_CENTRE_MNI = np.array([0.0, -18.0, 12.0])

#: Grey-matter SUV by region keyword (first match wins, checked on the Hammers name). White matter,
#: CSF and extracerebral values below. GM/WM in cortex ≈ 3.3, in keeping with normal FDG SUVR tables.
GM_SUV_RULES = (
    ("caudate", 8.6),
    ("putamen", 8.8),
    ("accumbens", 7.6),
    ("pallidum", 5.6),
    ("thalamus", 7.8),
    ("cerebellum", 6.6),
    ("brainstem", 4.0),
    ("substantia nigra", 4.5),
    ("hippocampus", 5.2),
    ("amygdala", 5.0),
    ("corpus callosum", 2.6),
    ("ventricle", 0.25),
    ("cingulate", 8.2),
    ("OL ", 8.4),
    ("", 7.8),  # any other cortex
)
WM_SUV = 2.4
CSF_SUV = 0.25
SCALP_SUV = 1.0
BONE_SUV = 0.6


@dataclass(frozen=True)
class HypometabolismPattern:
    """Relative weight (0–1) of the uptake reduction per region keyword; the first match wins."""

    name: str
    weights: tuple[tuple[str, float], ...]
    max_reduction: float = 0.35

    def weight(self, region_name: str) -> float:
        for key, w in self.weights:
            if key in region_name:
                return w
        return 0.0


#: Typical FDG hypometabolism of the memory clinic's diagnoses (see e.g. Minoshima et al. 2022, the
#: SNMMI/EANM procedure guideline for FDG brain PET).
PATTERNS = {
    "CN": HypometabolismPattern("cognitively normal", ()),
    "AD": HypometabolismPattern(
        "Alzheimer's disease: posterior cingulate/precuneus and temporoparietal",
        (
            ("posterior cingulate", 1.0),
            ("angular", 1.0),
            ("superior parietal", 0.9),
            ("supramarginal", 0.8),
            ("posterior temporal", 0.9),
            ("middle and inferior temporal", 0.7),
            ("hippocampus", 0.5),
            ("parahippocampal", 0.5),
            ("anterior temporal", 0.4),
            ("fusiform", 0.4),
            ("FL middle frontal", 0.3),
            ("FL superior frontal", 0.25),
            ("FL inferior frontal", 0.25),
        ),
    ),
    "FTD": HypometabolismPattern(
        "frontotemporal dementia: frontal and anterior temporal",
        (
            ("FL superior frontal", 1.0),
            ("FL middle frontal", 1.0),
            ("FL inferior frontal", 1.0),
            ("orbital", 1.0),
            ("straight", 0.9),
            ("subgenual", 0.9),
            ("subcallosal", 0.8),
            ("pre-subgenual", 0.9),
            ("anterior cingulate", 0.9),
            ("anterior temporal", 0.9),
            ("superior temporal gyrus anterior", 0.8),
            ("insula", 0.6),
            ("caudate", 0.4),
            ("FL precentral", 0.2),
        ),
    ),
    "DLB": HypometabolismPattern(
        "dementia with Lewy bodies: occipital, sparing the posterior cingulate (cingulate island)",
        (
            ("OL lateral", 1.0),
            ("cuneus", 1.0),
            ("lingual", 0.9),
            ("superior parietal", 0.6),
            ("angular", 0.6),
            ("supramarginal", 0.4),
            ("posterior temporal", 0.5),
            ("fusiform", 0.5),
            ("FL middle frontal", 0.2),
        ),
    ),
}


@dataclass(frozen=True)
class PatientAnatomy:
    """The per-patient parameters of a phantom (recorded in its JSON sidecar)."""

    head_scale: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]  # about x (pitch/tilt), y (roll), z (yaw)
    translation_mm: tuple[float, float, float]
    warp_amplitude_mm: float
    atrophy: float  # 0 (none) … 1 (marked)
    ventricle_growth_mm: float
    sulcal_widening_mm: float
    skull_thickness_mm: float
    scalp_thickness_mm: float
    mu_bone: float
    global_suv_scale: float
    asymmetry: float  # >0: the left hemisphere more affected
    bias_field_amplitude: float
    seeds: dict = field(default_factory=dict)


def draw_anatomy(rng: np.random.Generator, age: float, diagnosis: str, severity: float) -> PatientAnatomy:
    """Draw the anatomical parameters of one patient (age and disease drive atrophy)."""
    size = rng.normal(1.0, 0.045)
    atrophy = float(
        np.clip(
            0.55 * (age - 50.0) / 40.0 + (0.35 * severity if diagnosis != "CN" else 0.0) + rng.normal(0, 0.06), 0.0, 1.0
        )
    )
    return PatientAnatomy(
        head_scale=tuple(float(size * s) for s in rng.normal(1.0, 0.025, size=3)),
        rotation_deg=(float(rng.normal(0, 6.0)), float(rng.normal(0, 2.5)), float(rng.normal(0, 3.0))),
        translation_mm=(float(rng.normal(0, 5.0)), float(rng.normal(0, 6.0)), float(rng.normal(0, 8.0))),
        warp_amplitude_mm=float(rng.uniform(1.5, 3.5)),
        atrophy=atrophy,
        ventricle_growth_mm=float(5.0 * atrophy),
        sulcal_widening_mm=float(2.5 * atrophy),
        skull_thickness_mm=float(rng.uniform(5.0, 8.0)),
        scalp_thickness_mm=float(rng.uniform(4.0, 8.0)),
        mu_bone=float(rng.uniform(0.13, 0.17)),
        global_suv_scale=float(np.exp(rng.normal(0, 0.12))),
        asymmetry=float(rng.uniform(-0.3, 0.3)),
        bias_field_amplitude=float(rng.uniform(0.04, 0.12)),
        seeds={"warp": int(rng.integers(2**62)), "regional": int(rng.integers(2**62)), "mr": int(rng.integers(2**62))},
    )


def grid_affine(shape, voxel_size_mm) -> np.ndarray:
    """RAS+ affine of a grid centred on the scanner's axis and axial centre, arrays indexed along the
    scanner's x, y, z (:func:`petiq.scanner.frame.scanner_grid_affine`: head-first supine, +x the patient's
    left, +y anterior, +z towards the feet)."""
    return scanner_grid_affine(shape, voxel_size_mm)


def _rotation(deg) -> np.ndarray:
    ax, ay, az = np.deg2rad(deg)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth_field(rng: np.random.Generator, shape, amplitude: float, control_points: int = 6) -> np.ndarray:
    """A smooth random field of RMS ``amplitude`` on ``shape``, from a coarse grid of normal draws."""
    coarse = rng.normal(0.0, 1.0, size=(control_points,) * 3)
    zoom = [s / control_points for s in shape]
    fine = ndimage.zoom(coarse, zoom, order=3, mode="nearest")[: shape[0], : shape[1], : shape[2]]
    fine = fine - fine.mean()
    return (amplitude * fine / (fine.std() + 1e-12)).astype(np.float32)


def template_coordinates(anat: PatientAnatomy, template: AnatomyTemplate, shape, voxel_size_mm) -> np.ndarray:
    """Template voxel coordinates (3, *shape) of every voxel of the patient's grid."""
    affine = grid_affine(shape, voxel_size_mm)
    ijk = np.indices(shape, dtype=np.float32).reshape(3, -1)
    xyz = affine[:3, :3] @ ijk + affine[:3, 3:4]  # patient RAS mm (scanner frame turned by the affine)
    rot = _rotation(anat.rotation_deg)
    scale = np.asarray(anat.head_scale)
    # patient = R · S · (mni − centre) + t   ⇒   mni = S⁻¹ Rᵀ (patient − t) + centre
    mni = (rot.T @ (xyz - np.asarray(anat.translation_mm)[:, None])) / scale[:, None] + HEAD_CENTRE_MNI[:, None]
    rng = np.random.default_rng(anat.seeds["warp"])
    for axis in range(3):
        mni[axis] += _smooth_field(rng, shape, anat.warp_amplitude_mm).reshape(-1)
    to_vox = np.linalg.inv(template.affine)
    vox = to_vox[:3, :3] @ mni + to_vox[:3, 3:4]
    return vox.reshape(3, *shape).astype(np.float32)


@dataclass
class Phantom:
    """The images of one patient (arrays on the same grid) and how they were made."""

    activity: np.ndarray  # kBq/mL
    mu: np.ndarray  # cm^-1 at 511 keV
    t1: np.ndarray  # arbitrary units
    brain_mask: np.ndarray  # uint8
    gm: np.ndarray  # grey-matter fraction
    wm: np.ndarray  # white-matter fraction
    labels: np.ndarray  # Hammers labels (uint8)
    affine: np.ndarray
    anatomy: PatientAnatomy
    regional_gm_suv: dict

    def sidecar(self) -> dict:
        return {"anatomy": asdict(self.anatomy), "regional_gm_suv": self.regional_gm_suv}


def _gm_suv_table(template: AnatomyTemplate) -> np.ndarray:
    table = np.zeros(256, dtype=np.float32)
    for label, name in template.names.items():
        for key, suv in GM_SUV_RULES:
            if key in name:
                table[label] = suv
                break
    return table


def make_phantom(
    template: AnatomyTemplate,
    anat: PatientAnatomy,
    shape,
    voxel_size_mm,
    *,
    diagnosis: str,
    severity: float,
    injected_mbq: float,
    weight_kg: float,
    uptake_min: float,
) -> Phantom:
    """Build one patient's activity, μ-map, T1 and brain mask on the grid (shape, voxel_size_mm)."""
    if diagnosis not in PATTERNS:
        raise ValueError(f"unknown diagnosis {diagnosis!r}; expected one of {sorted(PATTERNS)}")
    coords = template_coordinates(anat, template, shape, voxel_size_mm)

    def sample(volume, order=1):
        return ndimage.map_coordinates(volume, coords, order=order, mode="constant", cval=0.0).astype(np.float32)

    gm, wm, csf = sample(template.gm), sample(template.wm), sample(template.csf)
    brain = sample(template.brain.astype(np.float32)) >= 0.5
    gm, wm, csf = gm * brain, wm * brain, csf * brain
    labels = np.where(brain, sample(template.labels, order=0), 0).astype(np.uint8)
    unlabelled = brain & (labels == 0)  # boundary voxels where linear and nearest sampling disagree
    if unlabelled.any():
        nearest = ndimage.distance_transform_edt(labels == 0, return_distances=False, return_indices=True)
        labels = np.where(unlabelled, labels[tuple(nearest)], labels).astype(np.uint8)
    dist_out = ndimage.map_coordinates(template.dist_outside, coords, order=1, mode="nearest")
    dist_vent = ndimage.map_coordinates(template.dist_ventricle, coords, order=1, mode="nearest")
    dist_csf = ndimage.map_coordinates(template.dist_csf, coords, order=1, mode="nearest")
    mm_per_template_mm = float(np.mean(anat.head_scale))  # distances live in template mm

    # Atrophy: enlarged ventricles, widened sulci. Lost tissue becomes CSF.
    growth = anat.ventricle_growth_mm / mm_per_template_mm
    if growth > 0:
        to_csf = np.clip((growth - dist_vent) / 1.5 + 0.5, 0.0, 1.0) * brain
        lost_gm, lost_wm = gm * to_csf, wm * to_csf
        gm, wm, csf = gm - lost_gm, wm - lost_wm, csf + lost_gm + lost_wm
        labels = np.where((to_csf > 0.5) & brain, np.uint8(VENTRICLE_LABELS[0]), labels)
    widen = anat.sulcal_widening_mm / mm_per_template_mm
    if widen > 0:
        keep = np.clip(dist_csf / widen, 0.0, 1.0)
        lost = gm * (1.0 - keep)
        gm, csf = gm - lost, csf + lost

    # Extracerebral shells (distances in template mm, scaled with the head).
    csf_shell = (dist_out > 0) & (dist_out <= 2.0 + 2.0 * anat.atrophy)
    skull_in = 2.0 + 2.0 * anat.atrophy
    skull = (dist_out > skull_in) & (dist_out <= skull_in + anat.skull_thickness_mm)
    scalp = (dist_out > skull_in + anat.skull_thickness_mm) & (
        dist_out <= skull_in + anat.skull_thickness_mm + anat.scalp_thickness_mm
    )
    csf = np.where(csf_shell, 1.0, csf).astype(np.float32)

    # Activity: regional GM SUV with per-patient variability and the disease pattern.
    suv_table = _gm_suv_table(template)
    rng = np.random.default_rng(anat.seeds["regional"])
    regional = np.ones(256, dtype=np.float32)
    regional[1:] = np.exp(rng.normal(0.0, 0.04, size=255)).astype(np.float32)
    pattern = PATTERNS[diagnosis]
    reduction = np.zeros(256, dtype=np.float32)
    for label, name in template.names.items():
        side = 1.0 + anat.asymmetry if name.endswith(" L") else 1.0 - anat.asymmetry if name.endswith(" R") else 1.0
        reduction[label] = min(pattern.max_reduction * severity * pattern.weight(name) * side, 0.6)
    gm_suv_by_label = suv_table * regional * (1.0 - reduction) * anat.global_suv_scale
    gm_suv = gm_suv_by_label[labels]
    suv = gm * gm_suv + wm * WM_SUV * anat.global_suv_scale + csf * CSF_SUV
    suv = np.where(brain | csf_shell, suv, 0.0)
    suv = suv + skull * BONE_SUV + scalp * SCALP_SUV
    decayed_mbq = injected_mbq * 0.5 ** (uptake_min / F18_HALF_LIFE_MIN)
    activity = (suv * decayed_mbq / weight_kg).astype(np.float32)  # MBq/kg = kBq/g ≈ kBq/mL

    # μ-map: water-like inside the head, bone in the skull shell.
    soft = (brain | csf_shell | scalp).astype(np.float32)
    mu = (MU_WATER_511 * soft * (1 - skull) + anat.mu_bone * skull).astype(np.float32)

    # T1-weighted look: WM bright, GM grey, CSF dark, bone darker, scalp fat bright.
    t1 = 850.0 * wm + 550.0 * gm + 120.0 * csf + 60.0 * skull + 700.0 * scalp
    mr_rng = np.random.default_rng(anat.seeds["mr"])
    bias = 1.0 + _smooth_field(mr_rng, shape, anat.bias_field_amplitude, control_points=4)
    t1 = t1 * bias + mr_rng.normal(0.0, 12.0, size=shape) * (t1 > 0)
    t1 = np.clip(t1, 0, None).astype(np.float32)

    regional_report = {
        template.names[k]: round(float(gm_suv_by_label[k]), 3) for k in sorted(template.names) if suv_table[k] > 0
    }
    return Phantom(
        activity=activity,
        mu=mu,
        t1=t1,
        brain_mask=brain.astype(np.uint8),
        gm=gm.astype(np.float32),
        wm=wm.astype(np.float32),
        labels=labels,
        affine=grid_affine(shape, voxel_size_mm),
        anatomy=anat,
        regional_gm_suv=regional_report,
    )

"""The digital patients: determinism, variety, physical ranges and consistent images."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from petiq.cohort.patients import synthesize_patient
from petiq.cohort.phantom import MU_WATER_511, PATTERNS, draw_anatomy, make_phantom

SHAPE, VOXEL = (64, 64, 60), (4.0, 4.0, 4.0)
KEYS = ("truth", "mumap", "t1w", "brainmask")


def participant(pid="sub-01", diagnosis="AD", severity=0.8, age=72.0):
    return {
        "participant_id": pid,
        "source": "synthetic",
        "diagnosis": diagnosis,
        "severity": severity,
        "age": age,
        "sex": "F",
        "weight_kg": 70.0,
        "injected_mbq": 200.0,
        "uptake_min": 35.0,
        "dose_per_kg": 200 / 70,
    }


def write(tmp_path, tag, row, seed):
    outputs = {k: tmp_path / tag / f"{k}.nii.gz" for k in KEYS} | {"json": tmp_path / tag / "s.json"}
    synthesize_patient(row, seed=seed, anatomy_dir=ANATOMY, shape=SHAPE, voxel_size_mm=VOXEL, outputs=outputs)
    return outputs


ANATOMY = None


@pytest.fixture(autouse=True)
def _anatomy(anatomy_dir):
    global ANATOMY
    ANATOMY = str(anatomy_dir)


def digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_bytes_other_seed_other_patient(tmp_path):
    a = write(tmp_path, "a", participant(), 11)
    b = write(tmp_path, "b", participant(), 11)
    c = write(tmp_path, "c", participant(), 12)
    for key in (*KEYS, "json"):
        assert digest(a[key]) == digest(b[key]), key
    assert digest(a["truth"]) != digest(c["truth"])


def test_images_share_one_centred_affine(tmp_path):
    out = write(tmp_path, "a", participant(), 3)
    affines = [nib.load(out[k]).affine for k in KEYS]
    for affine in affines[1:]:
        np.testing.assert_allclose(affine, affines[0])
    centre = affines[0] @ np.array([(SHAPE[0] - 1) / 2, (SHAPE[1] - 1) / 2, (SHAPE[2] - 1) / 2, 1.0])
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-9)
    assert nib.load(out["truth"]).shape == SHAPE


def make(template, diagnosis, severity, seed, age=70.0):
    anat = draw_anatomy(np.random.default_rng(seed), age, diagnosis, severity)
    return make_phantom(
        template,
        anat,
        SHAPE,
        VOXEL,
        diagnosis=diagnosis,
        severity=severity,
        injected_mbq=200.0,
        weight_kg=70.0,
        uptake_min=35.0,
    )


def test_values_in_physical_range(template):
    p = make(template, "CN", 0.0, 1)
    mu = p.mu[p.mu > 0]
    assert np.all((np.isclose(mu, MU_WATER_511)) | ((mu >= 0.13) & (mu <= 0.17)))
    assert (p.mu == 0).mean() > 0.3  # air around the head
    brain = p.brain_mask > 0
    gm_rich = brain & (p.gm > 0.8)
    # pure-tissue uptake by least squares over cortex voxels (partial volumes mix GM, WM and CSF)
    cortex = brain & np.isin(p.labels, [k for k, n in template.names.items() if n.startswith(("FL", "PL", "TL mid"))])
    design = np.stack([p.gm[cortex], p.wm[cortex], 1 - p.gm[cortex] - p.wm[cortex]], axis=1)
    (gm_value, wm_value, _), *_ = np.linalg.lstsq(design, p.activity[cortex], rcond=None)
    assert 3.0 < gm_value / wm_value < 4.0, gm_value / wm_value
    ventricles = np.isin(p.labels, (45, 46)) & (p.gm + p.wm < 0.1)
    assert p.activity[ventricles].mean() < 0.15 * p.activity[gm_rich].mean()
    extracerebral = (~brain) & (p.activity > 0)
    assert p.activity[extracerebral].mean() < 0.2 * p.activity[gm_rich].mean()
    # kBq/mL: SUV × decay-corrected MBq / kg; grey matter SUV of ~8 → ≈ 18 kBq/mL at 200 MBq, 70 kg
    assert 10 < p.activity[gm_rich].mean() < 30


def test_masks_consistent(template):
    p = make(template, "CN", 0.0, 2)
    brain = p.brain_mask > 0
    assert set(np.unique(p.brain_mask)) <= {0, 1}
    assert (p.gm + p.wm)[~brain].max() < 0.05 + 1e-6 or (p.gm + p.wm)[~brain].mean() < 0.01
    assert np.all(p.mu[brain] > 0)  # the brain is inside the attenuating head
    assert np.all(p.labels[~brain] == 0) and np.all(p.labels[brain] > 0)
    assert p.t1[brain].mean() > 3 * p.t1[p.mu == 0].mean()


def test_patients_differ_in_anatomy(template):
    a, b = make(template, "CN", 0.0, 10), make(template, "CN", 0.0, 20)
    ma, mb = a.brain_mask > 0, b.brain_mask > 0
    dice = 2 * (ma & mb).sum() / (ma.sum() + mb.sum())
    assert dice < 0.95, dice
    assert a.anatomy.head_scale != b.anatomy.head_scale


def test_atrophy_widens_ventricles(template):
    anat = draw_anatomy(np.random.default_rng(4), 70.0, "CN", 0.0)
    young = make_phantom(
        template,
        anat.__class__(**{**anat.__dict__, "ventricle_growth_mm": 0.0, "sulcal_widening_mm": 0.0}),
        SHAPE,
        VOXEL,
        diagnosis="CN",
        severity=0.0,
        injected_mbq=200,
        weight_kg=70,
        uptake_min=35,
    )
    old = make_phantom(
        template,
        anat.__class__(**{**anat.__dict__, "ventricle_growth_mm": 5.0, "sulcal_widening_mm": 2.5}),
        SHAPE,
        VOXEL,
        diagnosis="CN",
        severity=0.0,
        injected_mbq=200,
        weight_kg=70,
        uptake_min=35,
    )
    assert (old.gm + old.wm).sum() < 0.93 * (young.gm + young.wm).sum()


@pytest.mark.parametrize(
    "diagnosis, affected, spared",
    [
        ("AD", "CG posterior cingulate gyrus", "OL cuneus"),
        ("FTD", "FL middle frontal gyrus", "OL cuneus"),
        ("DLB", "OL cuneus", "CG posterior cingulate gyrus"),
    ],
)
def test_disease_pattern_lowers_its_regions(template, diagnosis, affected, spared):
    """Same anatomy, with and without disease: the pattern's regions lose uptake, others do not."""
    anat = draw_anatomy(np.random.default_rng(9), 70.0, diagnosis, 1.0)
    kw = dict(injected_mbq=200.0, weight_kg=70.0, uptake_min=35.0)
    sick = make_phantom(template, anat, SHAPE, VOXEL, diagnosis=diagnosis, severity=1.0, **kw)
    healthy = make_phantom(template, anat, SHAPE, VOXEL, diagnosis="CN", severity=0.0, **kw)
    names = {v: k for k, v in template.names.items()}

    def ratio(region):
        labels = [names[f"{region} L"], names[f"{region} R"]]
        mask = np.isin(sick.labels, labels) & (sick.gm > 0.5)
        return sick.activity[mask].mean() / healthy.activity[mask].mean()

    assert ratio(affected) < 0.85
    assert ratio(spared) > 0.97
    assert PATTERNS[diagnosis].weight(affected + " L") > PATTERNS[diagnosis].weight(spared + " L")

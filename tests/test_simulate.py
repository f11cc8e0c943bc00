"""List-mode simulation: count model, determinism, gaps, time order, norm scan."""

from __future__ import annotations

import hashlib

import nibabel as nib
import numpy as np
import pytest

from petiq.cohort.phantom import grid_affine
from petiq.listmode import read_listmode
from petiq.listmode.simulate import (
    AcquisitionSettings,
    expected_data,
    scanner_truth,
    simulate_norm_scan,
    simulate_patient,
)
from petiq.scanner.geometry import Scanner

SCANNER = Scanner.tiny()


def head(tmp_path, activity_kbq_ml=10.0):
    """A water ball of radius 40 mm with uniform activity, on a 2 mm grid inside the tiny scanner."""
    shape, voxel = (48, 48, 30), (2.0, 2.0, 2.0)
    affine = grid_affine(shape, voxel)
    ijk = np.indices(shape).reshape(3, -1)
    xyz = (affine[:3, :3] @ ijk + affine[:3, 3:4]).reshape(3, *shape)
    ball = (np.sqrt((xyz**2).sum(0)) <= 40.0).astype(np.float32)
    paths = {}
    for name, data in (("truth", activity_kbq_ml * ball), ("mumap", 0.096 * ball)):
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data.astype(np.float32), affine), paths[name])
    return paths, ball, voxel


PARTICIPANT = {"participant_id": "sub-01", "injected_mbq": 200.0, "weight_kg": 70.0, "uptake_min": 40.0}


def simulate(tmp_path, name, seed=1, **kw):
    paths, _, _ = head(tmp_path)
    out = tmp_path / f"{name}.l"
    summary = simulate_patient(
        truth_path=paths["truth"],
        mumap_path=paths["mumap"],
        participant=PARTICIPANT,
        scanner=SCANNER,
        scanner_seed=5,
        seed=seed,
        out_path=out,
        duration_s=60.0,
        progress=False,
        **kw,
    )
    return out, summary


def test_same_seed_same_file_other_seed_other_file(tmp_path):
    a, _ = simulate(tmp_path, "a", seed=1)
    b, _ = simulate(tmp_path, "b", seed=1)
    c, _ = simulate(tmp_path, "c", seed=2)
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert digest(a) == digest(b) != digest(c)


def test_events_time_ordered_and_no_counts_in_gaps(tmp_path):
    out, summary = simulate(tmp_path, "a")
    lm = read_listmode(out, scanner=SCANNER)
    assert lm.bins.size == summary["prompts"] + summary["delayeds"]
    assert int(lm.prompt.sum()) == summary["prompts"]
    assert np.all(np.diff(lm.time_ms) >= 0) and lm.time_ms.max() < 60_000
    ring_a, det_a, ring_b, det_b = SCANNER.bin_crystals(lm.bins)
    assert not SCANNER.is_gap(det_a).any() and not SCANNER.is_gap(det_b).any()
    assert lm.header["image duration (sec)"] == "60"


def test_expected_fractions_and_attenuation(tmp_path):
    paths, ball, voxel = head(tmp_path)
    truth = scanner_truth(SCANNER, np.random.default_rng(0))
    settings = AcquisitionSettings(duration_s=60.0, scatter_fraction=0.35)
    activity = np.asarray(nib.load(paths["truth"]).dataobj)
    mu = np.asarray(nib.load(paths["mumap"]).dataobj)
    exp = expected_data(activity, mu, voxel, SCANNER, truth, settings)
    trues, scatter = exp.emission.sum(), exp.scatter.sum()
    assert scatter / (trues + scatter) == pytest.approx(0.35, rel=1e-3)
    # activity in the field of view: 10 kBq/mL × 4/3 π (4 cm)³ = 2.68 MBq (on the voxel grid)
    assert exp.activity_mbq == pytest.approx(10 * ball.sum() * 8e-3 / 1000, rel=1e-6)
    # attenuation of 511 keV photons through ≤ 8 cm of water: between exp(-0.096·8) and 1
    assert np.exp(-0.096 * 8) < exp.summary["mean_attenuation_factor"] < 1.0
    # the same activity without attenuation gives more trues
    exp0 = expected_data(activity, 0 * mu, voxel, SCANNER, truth, settings)
    assert exp0.emission.sum() > 1.3 * trues


def test_counts_scale_with_activity_and_randoms_faster(tmp_path):
    """Trues grow like A, randoms like A² (singles-rate model): the randoms fraction rises with dose."""
    paths, _, voxel = head(tmp_path)
    truth = scanner_truth(SCANNER, np.random.default_rng(0))
    settings = AcquisitionSettings(duration_s=60.0)
    activity = np.asarray(nib.load(paths["truth"]).dataobj)
    mu = np.asarray(nib.load(paths["mumap"]).dataobj)
    low, high = (expected_data(k * activity, mu, voxel, SCANNER, truth, settings) for k in (1.0, 2.0))
    assert high.emission.sum() == pytest.approx(2 * low.emission.sum(), rel=1e-5)
    assert high.singles_cps.sum() == pytest.approx(2 * low.singles_cps.sum(), rel=1e-6)


@pytest.mark.parametrize("name", ["mmr", "demo", "tiny"])
def test_randoms_per_trues_per_lor_match_the_mmr(name):
    """The reduced presets keep the mMR's ratio of randoms to trues per LOR (so its randoms fraction)."""
    from petiq.listmode.simulate import singles_scale, trues_sensitivity

    scanner, mmr = Scanner.from_name(name), Scanner.mmr()
    ratio = lambda sc: (singles_scale(sc) ** 2) / (trues_sensitivity(sc) / sc.n_bins(1))  # noqa: E731
    assert ratio(scanner) == pytest.approx(ratio(mmr), rel=1e-9)
    assert singles_scale(mmr) == pytest.approx(1.0)


def test_norm_scan_fansums_follow_crystal_efficiency():
    scan = simulate_norm_scan(SCANNER, scanner_seed=5, seed=1, counts_per_bin=2000.0, progress=False)
    eff = scan["true_crystal_efficiency"]
    fans = scan["fansums"]
    real = eff > 0
    assert np.all(fans[~real] == 0)
    # within a ring, fan sums ∝ ε_a · Σ_b ε_b g a P x ≈ ε_a · const: they follow the efficiencies
    for ring in range(SCANNER.n_rings):
        ok = real[ring]
        ratio = fans[ring, ok] / eff[ring, ok]
        assert ratio.std() / ratio.mean() < 0.05
        assert np.corrcoef(fans[ring, ok], eff[ring, ok])[0, 1] > 0.9
    assert scan["sinogram"].sum() == fans.sum() / 2


def test_simulated_file_reports_bucket_singles_like_the_scanner(tmp_path):
    """One singles tag (``word >> 29 == 0b101``, bucket bits 19-28, rate / 8 in bits 0-18) per
    bucket every 2 s from 0 ms, right after that millisecond's time tag; the rate is the bucket's
    sum of the model's singles per crystal (NiftyPET bucket ``c // 18 + (crystals/18)·(ring // 8)``,
    ``c = det - 1``) times the ¹⁸F decay at that moment over its mean."""
    from petiq.cohort.phantom import F18_HALF_LIFE_MIN
    from petiq.listmode import histogram_listmode

    out, _ = simulate(tmp_path, "a")
    w = np.fromfile(out, dtype="<u4").astype(np.int64)
    sng = np.flatnonzero((w >> 29) == 5)
    nb = 4 * 1  # tiny: 72 / 18 buckets around, 8 rings / 8
    assert sng.size == 30 * nb
    before = w[sng.reshape(30, nb)[:, 0] - 1]
    assert np.all(before >> 29 == 4) and np.array_equal(before & 0x1FFFFFFF, np.arange(30) * 2000)
    bucket = ((w[sng] & 0x1FFFFFFF) >> 19).reshape(30, nb)
    assert np.array_equal(bucket, np.tile(np.arange(nb), (30, 1)))
    # the model's singles, summed per bucket here
    paths, _, voxel = head(tmp_path)
    truth = scanner_truth(SCANNER, np.random.default_rng(5))
    exp = expected_data(
        np.asarray(nib.load(paths["truth"]).dataobj),
        np.asarray(nib.load(paths["mumap"]).dataobj),
        voxel,
        SCANNER,
        truth,
        AcquisitionSettings(duration_s=60.0),
    )
    per_bucket = np.zeros(nb)
    for ring in range(SCANNER.n_rings):
        for det in range(SCANNER.crystals_per_ring):
            per_bucket[((det - 1) % 72) // 18 + 4 * (ring // 8)] += exp.singles_cps[ring, det]
    decay = 0.5 ** ((PARTICIPANT["uptake_min"] + np.arange(60_000) / 60_000) / F18_HALF_LIFE_MIN)
    want = np.rint(per_bucket[None, :] * (decay[::2000] / decay.mean())[:, None] / 8) * 8
    value = (w[sng] & 0x7FFFF).reshape(30, nb) << 3
    assert want.min() > 1000
    np.testing.assert_array_equal(value, want.astype(np.int64))
    h = histogram_listmode(out, SCANNER, span=11)
    np.testing.assert_array_equal(h.singles, value)
    assert np.all(h.singles_reports == 1) and h.n_singles_tags == 30 * nb

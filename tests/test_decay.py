"""Decay correction and isotope constants (petiq.core.decay) against independent derivations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from petiq.core.decay import (
    ISOTOPES,
    decay_correction_factor,
    frame_quantification,
    isotope_from_header,
)
from petiq.core.errors import PetiqInputError
from petiq.listmode.sinograms import read_sinograms, write_sinograms


def test_f18_constants_are_niftypets():
    # NiftyPET resources.riLUT: 'F18': {'BF': 0.967, 'thalf': 109.77120*60}
    assert ISOTOPES["F-18"].half_life_s == pytest.approx(6586.272)
    assert ISOTOPES["F-18"].branching_ratio == 0.967


def test_decay_correction_of_a_15_min_frame_matches_the_series():
    lam = math.log(2) / 6586.272
    x = lam * 900.0
    # x / (1 − e^{−x}) = 1 + x/2 + x²/12 − x⁴/720 + …  (Bernoulli numbers)
    series = 1 + x / 2 + x**2 / 12 - x**4 / 720
    assert decay_correction_factor(6586.272, 900.0) == pytest.approx(series, rel=1e-9)
    assert decay_correction_factor(6586.272, 900.0) == pytest.approx(1.0481, abs=1e-4)


def test_a_later_frame_is_also_corrected_for_the_decay_before_it():
    # a frame starting 1 half-life after the reference holds half the activity: twice the factor
    late = decay_correction_factor(6586.272, 60.0, start_s=6586.272)
    assert late == pytest.approx(2 * decay_correction_factor(6586.272, 60.0), rel=1e-12)
    # correcting to a reference 1 half-life *later* than the frame halves it instead
    assert decay_correction_factor(6586.272, 60.0, reference_s=6586.272) == pytest.approx(
        0.5 * decay_correction_factor(6586.272, 60.0), rel=1e-12
    )


def test_short_frames_need_almost_no_correction():
    assert decay_correction_factor(6586.272, 1e-3) == pytest.approx(1.0, abs=1e-7)


def test_isotope_from_header_prefers_the_header_and_falls_back_on_the_name():
    assert isotope_from_header({"isotope name": "F-18", "isotope branching factor": "0.97"}).branching_ratio == 0.97
    iso = isotope_from_header({"isotope name": "F-18"})
    assert (iso.half_life_s, iso.branching_ratio) == (6586.272, 0.967)
    assert isotope_from_header({"isotope name": "C-11"}).half_life_s == pytest.approx(1222.8)
    # NiftyPET's own spellings (riLUT keys 'F18', 'Ga68') name the same isotopes
    assert isotope_from_header({"isotope name": "F18"}).half_life_s == pytest.approx(109.7712 * 60)
    assert isotope_from_header({"isotope name": "Ga68"}).branching_ratio == pytest.approx(0.891)
    assert isotope_from_header({}) is None  # nothing to decay-correct with


@pytest.mark.parametrize(
    "header, words",
    [
        ({"isotope name": "F-18", "isotope branching factor": "abc"}, ["branching factor", "not a number"]),
        ({"isotope name": "F-18", "isotope gamma halflife (sec)": "-5"}, ["halflife", "> 0"]),
        ({"isotope name": "Xx-1", "isotope gamma halflife (sec)": "100"}, ["branching factor"]),
        ({"isotope name": "F-18", "isotope branching factor": "1.5"}, ["branching factor", "(0, 1]"]),
    ],
)
def test_bad_isotope_header_values_are_clear_errors(tmp_path, header, words):
    with pytest.raises(PetiqInputError) as info:
        isotope_from_header(header, tmp_path / "scan.l.hdr")
    message = str(info.value)
    assert "scan.l.hdr" in message and all(w in message for w in words) and "Fix" in message


def _histogram(header=None):
    shape = (3, 4, 5)
    out = {
        "prompts": np.ones(shape, np.uint32),
        "delayeds": np.zeros(shape, np.uint32),
        "delayed_fansums": np.zeros(8, np.int64),
        "span": 1,
        "duration_s": 600.0,
        "n_prompts": 60,
        "n_delayeds": 0,
        "n_outside_span": 0,
    }
    if header is not None:
        out["header"] = header
    return out


def test_sinogram_files_carry_the_headers_isotope_and_frame_start(tmp_path):
    header = {
        "isotope name": "F-18",
        "isotope gamma halflife (sec)": "6586.2",
        "isotope branching factor": "0.97",
        "image relative start time (sec)": "120",
    }
    write_sinograms(tmp_path / "s.npz", _histogram(header), "tiny")
    sino = read_sinograms(tmp_path / "s.npz")
    assert (sino["isotope"], sino["half_life_s"], sino["branching_ratio"], sino["frame_start_s"]) == (
        "F-18",
        6586.2,
        0.97,
        120.0,
    )
    quant = frame_quantification(sino)
    lam = math.log(2) / 6586.2
    assert quant.decay_correction_factor == pytest.approx(math.exp(lam * 120) * lam * 600 / (1 - math.exp(-lam * 600)))
    assert quant.count_scale == pytest.approx(0.97 / quant.decay_correction_factor)
    assert quant.sidecar()["DecayCorrectionFactor"] == [quant.decay_correction_factor]


def test_sinograms_without_an_isotope_are_not_decay_corrected(tmp_path):
    write_sinograms(tmp_path / "s.npz", _histogram(), "tiny")
    quant = frame_quantification(read_sinograms(tmp_path / "s.npz"), 600.0)
    assert (quant.decay_corrected, quant.count_scale) == (False, 1.0)
    assert quant.sidecar() == {"ImageDecayCorrected": False}

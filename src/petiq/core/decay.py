"""Radioactive decay of an acquisition, and the e7 quantification of its image.

A frame from ``t0`` to ``t0 + D`` seconds after the reference time (e7 and NiftyPET: the scan
start) records counts from the mean activity over the frame, ``A(tref)·e^{−λ(t0−tref)}·(1 − e^{−λD})/(λD)``.
Decay correction to ``tref`` multiplies the image by the inverse (NiftyPET ``prj/mmrrec.py``,
``dcycrr = exp(λ·tref)·λ·D / (1 − exp(−λ·D))`` with ``tref`` the frame start, i.e. the frame's
own start when no reference is given)::

    DCF = e^{λ (t0 − tref)} · λD / (1 − e^{−λD}),    λ = ln 2 / T½

and e7's quantitative image divides by the branching ratio (the fraction of decays that emit a
positron): NiftyPET scales the image by ``qf / BF / D`` with ``qf`` the norm header's *scanner
quantification factor*, ``BF`` its isotope table's branching factor. petiq's system model carries
the same factors on the forward side: expected counts of bin ``i`` =
``κ · BR · (D / DCF) · n_i · a_i · (P x)_i`` with ``x`` the activity concentration at ``tref``.

Isotope constants: the list-mode header's ``isotope gamma halflife (sec)`` and ``isotope branching
factor`` when it has them, else :data:`ISOTOPES` (NiftyPET ``resources.riLUT``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from .errors import PetiqInputError

__all__ = [
    "ISOTOPES",
    "FrameQuantification",
    "Isotope",
    "decay_correction_factor",
    "frame_quantification",
    "isotope_from_header",
    "mean_decay_fraction",
]


@dataclass(frozen=True)
class Isotope:
    name: str
    half_life_s: float
    branching_ratio: float

    @property
    def decay_constant(self) -> float:
        """λ in 1/s."""
        return decay_constant(self.half_life_s)


def decay_constant(half_life_s: float) -> float:
    """λ = ln 2 / T½ in 1/s."""
    return math.log(2.0) / half_life_s


#: NiftyPET ``resources.riLUT`` (half-lives in s, branching factors), keyed by the mMR header's
#: ``isotope name`` spelling.
ISOTOPES: dict[str, Isotope] = {
    "F-18": Isotope("F-18", 109.77120 * 60.0, 0.967),
    "C-11": Isotope("C-11", 20.38 * 60.0, 0.998),
    "O-15": Isotope("O-15", 122.2416, 0.999),
    "Ga-68": Isotope("Ga-68", 67.71 * 60.0, 0.891),
    "Ge-68": Isotope("Ge-68", 270.9516 * 24 * 60 * 60, 0.891),
}
#: :data:`ISOTOPES` by the name without its hyphen, upper case (``F18``, ``GA68``): other spellings of a header.
_BY_PLAIN_NAME = {name.replace("-", "").upper(): isotope for name, isotope in ISOTOPES.items()}


def mean_decay_fraction(half_life_s: float, duration_s: float, start_s: float = 0.0) -> float:
    """Mean activity over ``[start_s, start_s + duration_s]`` relative to the activity at 0 (the
    inverse of :func:`decay_correction_factor`)."""
    return 1.0 / decay_correction_factor(half_life_s, duration_s, start_s)


def decay_correction_factor(
    half_life_s: float, duration_s: float, start_s: float = 0.0, reference_s: float = 0.0
) -> float:
    """e7's decay correction of a frame ``[start_s, start_s + duration_s]`` to ``reference_s``
    (seconds on one clock): ``e^{λ(t0 − tref)} · λD / (1 − e^{−λD})``; 1 for no decay."""
    if not half_life_s > 0 or not duration_s > 0:
        raise ValueError(f"half-life {half_life_s} s and duration {duration_s} s must be > 0")
    lam = decay_constant(half_life_s)
    lam_d = lam * duration_s
    return math.exp(lam * (start_s - reference_s)) * lam_d / -math.expm1(-lam_d)


def isotope_from_header(header: Mapping[str, str], path=None) -> Isotope | None:
    """The isotope of a list-mode header: its half-life and branching factor, each from the header
    when present, else from :data:`ISOTOPES` by ``isotope name``. ``None`` when the header names
    no isotope and gives no half-life (nothing to decay-correct with)."""
    from ..listmode.header import header_value

    name = (header_value(header, "isotope name") or "").strip()
    known = ISOTOPES.get(name) or _BY_PLAIN_NAME.get(name.replace("-", "").upper())
    fix = "give the header numeric 'isotope gamma halflife (sec)' and 'isotope branching factor' (or a known 'isotope name')"

    def number(key: str, fallback):
        text = (header_value(header, key) or "").strip()
        if not text:
            return fallback
        try:
            value = float(text)
        except ValueError:
            raise PetiqInputError(path, f"header key {key!r} = {text!r} is not a number", fix) from None
        if not value > 0:
            raise PetiqInputError(path, f"header key {key!r} = {text!r} must be > 0", fix)
        return value

    half_life = number("isotope gamma halflife (sec)", known.half_life_s if known else None)
    branching = number("isotope branching factor", known.branching_ratio if known else None)
    if half_life is None:
        return None
    if branching is None or branching > 1:
        raise PetiqInputError(path, f"isotope branching factor {branching!r} (must be in (0, 1])", fix)
    return Isotope(name or "unknown", half_life, branching)


@dataclass(frozen=True)
class FrameQuantification:
    """What turns a frame's counts into activity concentration at the scan start (e7's order)."""

    isotope: str | None  # None: the sinograms name no isotope; the image is not decay corrected
    branching_ratio: float  # 1 when unknown
    decay_correction_factor: float  # 1 when not decay corrected
    frame_start_s: float
    duration_s: float

    @property
    def decay_corrected(self) -> bool:
        return self.isotope is not None

    @property
    def count_scale(self) -> float:
        """``BR / DCF``: expected counts per unit of κ · D · (activity at the scan start)."""
        return self.branching_ratio / self.decay_correction_factor

    def sidecar(self) -> dict:
        """PET-BIDS keys (``ImageDecayCorrected``, ``ImageDecayCorrectionTime`` in s from the scan
        start, ``DecayCorrectionFactor`` per frame) plus the radionuclide and branching ratio used."""
        out = {"ImageDecayCorrected": self.decay_corrected}
        if self.decay_corrected:
            out.update(
                {
                    "ImageDecayCorrectionTime": 0.0,
                    "DecayCorrectionFactor": [self.decay_correction_factor],
                    "TracerRadionuclide": self.isotope.replace("-", ""),
                    "BranchingRatio": self.branching_ratio,
                }
            )
        return out


def frame_quantification(sinograms: Mapping, duration_s: float | None = None) -> FrameQuantification:
    """The decay correction to the scan start and the branching ratio of a sinogram file's frame
    (keys of :data:`petiq.listmode.sinograms.DECAY_KEYS`; without them: not decay corrected, BR 1);
    ``duration_s`` defaults to the file's ``duration_s``."""
    duration_s = sinograms["duration_s"] if duration_s is None else duration_s
    if "isotope" not in sinograms:
        return FrameQuantification(None, 1.0, 1.0, 0.0, float(duration_s))
    start = float(sinograms["frame_start_s"])
    dcf = decay_correction_factor(float(sinograms["half_life_s"]), float(duration_s), start_s=start)
    return FrameQuantification(
        str(sinograms["isotope"]), float(sinograms["branching_ratio"]), dcf, start, float(duration_s)
    )

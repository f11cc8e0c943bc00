"""Sinogram files: what histogramming writes and reconstruction reads (NumPy ``.npz``).

Keys (:data:`KEYS`): ``prompts``, ``delayeds`` (uint32, ``scanner.sinogram_shape(span)``),
``delayed_fansums`` (int64, delayeds per crystal, index ``ring·crystals_per_ring + det``), ``span``,
``duration_s``, ``n_prompts``, ``n_delayeds``, ``n_outside_span`` and ``scanner`` (preset name).

Tags (:data:`TAG_KEYS`, from the list-mode's tags; see :class:`petiq.listmode.ListmodeHistogram`):
``singles`` (int64, (polling intervals, ``scanner.n_buckets``): summed reported singles rates, cps),
``singles_reports`` (int32, same shape: how many reports each sum holds), ``singles_interval_s``,
and the tag counts ``n_time_tags``, ``n_singles_tags``, ``n_singles_skipped``, ``n_gantry_tags``,
``n_gating_tags``, ``n_control_tags``. Files written before petiq kept the tags lack them: they
still read (reconstruction does not need them), and :func:`require_singles` says to histogram
again where singles are needed (dead time, singles-based randoms).

Decay (:data:`DECAY_KEYS`, from the list-mode header through :func:`petiq.core.decay.isotope_from_header`):
``isotope`` (name), ``half_life_s``, ``branching_ratio`` and ``frame_start_s`` (the header's
``image relative start time (sec)``: the frame's start after the scan start). The reconstruction
decay-corrects to the scan start and divides by the branching ratio with them; a file without them
(a header naming no isotope, or a file written before petiq kept them) gives an image that is not
decay corrected, and its sidecar says so.

Injection (optional, :data:`INJECTION_KEY`): ``injection_start_s``, the header's ``relative time of
tracer injection (sec)`` (seconds from the scan start, negative before it) when the header gives it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import PetiqInputError
from ..core.fileio import write_npz

KEYS = (
    "prompts",
    "delayeds",
    "delayed_fansums",
    "span",
    "duration_s",
    "n_prompts",
    "n_delayeds",
    "n_outside_span",
    "scanner",
)
SINGLES_KEYS = ("singles", "singles_reports", "singles_interval_s")
TAG_COUNT_KEYS = (
    "n_time_tags",
    "n_singles_tags",
    "n_singles_skipped",
    "n_gantry_tags",
    "n_gating_tags",
    "n_control_tags",
)
TAG_KEYS = SINGLES_KEYS + TAG_COUNT_KEYS
DECAY_KEYS = ("isotope", "half_life_s", "branching_ratio", "frame_start_s")
INJECTION_KEY = "injection_start_s"
_FIX = "histogram the list-mode again with `petiq histogram`"


def _has(histogram, key: str) -> bool:
    try:
        histogram[key]
    except (KeyError, AttributeError):
        return False
    return True


def write_sinograms(path: str | Path, histogram, scanner_name: str) -> None:
    """Write ``histogram`` (a :class:`~petiq.listmode.ListmodeHistogram` or a dict with
    :data:`KEYS`) to ``path``; the :data:`TAG_KEYS` are written when ``histogram`` has them
    (all of them or none)."""
    arrays = {key: np.asarray(histogram[key]) for key in KEYS if key != "scanner"}
    present = [key for key in TAG_KEYS if _has(histogram, key)]
    if present and len(present) != len(TAG_KEYS):
        missing = [key for key in TAG_KEYS if key not in present]
        raise ValueError(f"{path}: the histogram has {present} but not {missing}; give all tag keys or none")
    arrays.update({key: np.asarray(histogram[key]) for key in present})
    arrays.update({key: np.asarray(value) for key, value in decay_values(histogram).items()})
    injection = injection_start(histogram)
    if injection is not None:
        arrays[INJECTION_KEY] = np.asarray(injection)
    write_npz(path, scanner=np.asarray(scanner_name), **arrays)


def decay_values(histogram) -> dict:
    """The :data:`DECAY_KEYS` of a histogram: given directly (all of them), or from its list-mode
    ``header``; empty when neither names an isotope."""
    if all(_has(histogram, key) for key in DECAY_KEYS):
        return {key: histogram[key] for key in DECAY_KEYS}
    if not _has(histogram, "header"):
        return {}
    from ..core.decay import isotope_from_header
    from .header import header_value

    header = histogram["header"]
    isotope = isotope_from_header(header)
    if isotope is None:
        return {}
    try:
        start = float(header_value(header, "image relative start time (sec)") or 0.0)
    except ValueError:
        start = 0.0
    return {
        "isotope": isotope.name,
        "half_life_s": isotope.half_life_s,
        "branching_ratio": isotope.branching_ratio,
        "frame_start_s": start,
    }


def injection_start(histogram) -> float | None:
    """The injection time in s from the scan start: given directly, or from the list-mode ``header``'s
    ``relative time of tracer injection (sec)``; None when neither gives a number."""
    if _has(histogram, INJECTION_KEY):
        return float(histogram[INJECTION_KEY])
    if not _has(histogram, "header"):
        return None
    from .header import header_value

    try:
        value = float(header_value(histogram["header"], "relative time of tracer injection (sec)"))
    except (TypeError, ValueError):
        return None
    return value if np.isfinite(value) else None


def read_sinograms(path: str | Path) -> dict:
    """Read a sinogram file; the :data:`TAG_KEYS` are in the dict only if the file has them."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise PetiqInputError(path, f"not a petiq sinogram file ({error})", _FIX) from None
    missing = [k for k in KEYS if k not in out]
    if missing:
        raise PetiqInputError(path, f"missing arrays {missing}", _FIX)
    out["scanner"] = str(out["scanner"])
    for key in ("span", "n_prompts", "n_delayeds", "n_outside_span"):
        out[key] = int(out[key])
    out["duration_s"] = float(out["duration_s"])
    if "isotope" in out:
        out["isotope"] = str(out["isotope"])
        for key in ("half_life_s", "branching_ratio", "frame_start_s"):
            out[key] = float(out[key])
    if INJECTION_KEY in out:
        out[INJECTION_KEY] = float(out[INJECTION_KEY])
    tags = [k for k in TAG_KEYS if k in out]
    if tags:
        if len(tags) != len(TAG_KEYS):
            raise PetiqInputError(path, f"has {tags} but not {[k for k in TAG_KEYS if k not in tags]}", _FIX)
        for key in TAG_COUNT_KEYS:
            out[key] = int(out[key])
        out["singles_interval_s"] = float(out["singles_interval_s"])
        if out["singles"].ndim != 2 or out["singles"].shape != out["singles_reports"].shape:
            raise PetiqInputError(
                path,
                f"singles {out['singles'].shape} and singles_reports "
                f"{out['singles_reports'].shape} are not one (intervals, buckets) shape",
                _FIX,
            )
    return out


def require_singles(sinograms: dict, path: str | Path, n_buckets: int) -> tuple[np.ndarray, np.ndarray, float]:
    """``(singles, singles_reports, singles_interval_s)`` of a read sinogram file, with a clear
    error for a file written before petiq kept the singles tags, or one of another scanner."""
    if "singles" not in sinograms:
        raise PetiqInputError(
            path, "has no singles (it was histogrammed before petiq kept the list-mode's singles tags)", _FIX
        )
    singles = sinograms["singles"]
    if singles.shape[1] != n_buckets:
        raise PetiqInputError(path, f"singles have {singles.shape[1]} buckets, the scanner has {n_buckets}", _FIX)
    return singles, sinograms["singles_reports"], float(sinograms["singles_interval_s"])

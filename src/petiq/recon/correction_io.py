"""Reading and checking the files the reconstruction steps pass to one another.

Correction ``.npz`` files and sinograms: kind, scanner, span, shapes and values are checked, and
every error names the file, the problem and the fix (the formats: :mod:`petiq.recon.pipeline`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petiq.core.errors import PetiqInputError
from petiq.core.fileio import write_npz
from petiq.recon import corrections as corr
from petiq.scanner.geometry import Scanner

NORM_SCAN_KEYS = (
    "fansums",
    "sinogram",
    "span",
    "phantom_radius_mm",
    "phantom_mu_cm",
    "phantom_activity_bq_per_ml",
    "duration_s",
    "calibration_factor",
)


# ----------------------------------------------------------------------------- helpers
def as_scanner(scanner) -> Scanner:
    return scanner if isinstance(scanner, Scanner) else Scanner.from_name(scanner)


def load_npz(path, what: str, fix: str) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PetiqInputError(path, f"{what} file not found", fix)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, EOFError) as error:
        raise PetiqInputError(path, f"not a readable {what} file ({error})", fix) from None


def check_scanner_span(path, data: dict, scanner: Scanner, span: int, what: str, fix: str) -> None:
    got_scanner = str(data.get("scanner", ""))
    if got_scanner != scanner.name:
        raise PetiqInputError(
            path,
            f"{what} is for scanner {got_scanner or '(unknown)'!r}, this reconstruction uses {scanner.name!r}",
            fix,
        )
    if "span" in data and stored_span(path, data["span"], what, fix) != span:
        raise PetiqInputError(
            path,
            f"{what} has span {stored_span(path, data['span'], what, fix)}, this reconstruction uses span {span}",
            fix,
        )


def stored_span(path, value, what: str, fix: str) -> int:
    """The span a file stores: one whole number (0-d, or an array of one element as other writers save it)."""
    stored = np.asarray(value)
    if stored.size != 1 or stored.dtype.kind not in "iuf" or not float(stored.ravel()[0]).is_integer():
        raise PetiqInputError(path, f"{what} stores span {stored.tolist()!r}, not one whole number", fix)
    return int(stored.ravel()[0])


def read_correction(path, kind: str, scanner, span: int, keys: tuple[str, ...] = ()) -> dict:
    """Load a correction ``.npz`` of this ``kind`` and check its scanner, span and sinogram shapes."""
    scanner = as_scanner(scanner)
    span = scanner.check_span(int(span))
    fix = f"recompute the {kind} file for scanner {scanner.name!r} and span {span} (the config's scanner/span)"
    data = load_npz(path, f"{kind} correction", fix)
    if str(data.get("kind", "")) != kind:
        raise PetiqInputError(
            path, f"expected a {kind} file, got kind {str(data.get('kind', '(none)'))!r}", f"pass the {kind} file here"
        )
    check_scanner_span(path, data, scanner, span, f"the {kind} file", fix)
    missing = [k for k in keys if k not in data]
    if missing:
        raise PetiqInputError(path, f"{kind} file lacks {missing}", fix)
    shape = scanner.sinogram_shape(span)
    for key in keys:
        arr = data[key]
        if key in ("norm", "attenuation", "scatter"):
            if arr.shape != shape:
                raise PetiqInputError(path, f"{key} sinogram has shape {arr.shape}, expected {shape}", fix)
            if not np.isfinite(arr).all() or arr.min() < 0:
                raise PetiqInputError(path, f"{key} sinogram has NaN, infinite or negative values", fix)
    return data


def read_randoms(path, scanner, span: int) -> np.ndarray:
    """The expected randoms sinogram (float32, span ``span``) of a randoms file."""
    scanner = as_scanner(scanner)
    data = read_correction(path, "randoms", scanner, span, ("singles", "scale"))
    singles = data["singles"]
    if (
        singles.shape != (scanner.n_rings, scanner.crystals_per_ring)
        or not np.isfinite(singles).all()
        or singles.min() < 0
    ):
        raise PetiqInputError(
            path, f"singles have shape {singles.shape} or bad values", "recompute the randoms file for this scanner"
        )
    randoms = corr.crystal_pair_sums(scanner, singles, span) * np.float32(float(data["scale"]))
    return randoms.astype(np.float32)


def read_sinograms_checked(path, scanner: Scanner, span: int) -> dict:
    from petiq.listmode.sinograms import read_sinograms

    sino = read_sinograms(path)
    fix = f"histogram the list-mode for scanner {scanner.name!r} with span {span} (the config's scanner/span)"
    check_scanner_span(path, sino, scanner, span, "the sinogram file", fix)
    shape = scanner.sinogram_shape(span)
    for key in ("prompts", "delayeds"):
        if sino[key].shape != shape:
            raise PetiqInputError(path, f"{key} have shape {sino[key].shape}, expected {shape}", fix)
    if sino["delayed_fansums"].size != scanner.n_crystals:
        raise PetiqInputError(
            path,
            f"delayed_fansums has {sino['delayed_fansums'].size} crystals, scanner "
            f"{scanner.name!r} has {scanner.n_crystals}",
            fix,
        )
    return sino


def save_npz(out, arrays: dict) -> None:
    write_npz(out, **arrays)

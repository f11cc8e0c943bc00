"""Sinogram files: what histogramming writes and reconstruction reads (NumPy ``.npz``).

Keys: ``prompts``, ``delayeds`` (uint32, ``scanner.sinogram_shape(span)``), ``delayed_fansums``
(int64, delayeds per crystal, index ``ring·crystals_per_ring + det``), ``span``, ``duration_s``,
``n_prompts``, ``n_delayeds``, ``n_outside_span`` and ``scanner`` (preset name).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import PetiqInputError
from .fileio import write_npz

KEYS = ("prompts", "delayeds", "delayed_fansums", "span", "duration_s", "n_prompts", "n_delayeds", "n_outside_span", "scanner")


def write_sinograms(path: str | Path, histogram, scanner_name: str) -> None:
    arrays = {key: np.asarray(histogram[key]) for key in KEYS if key != "scanner"}
    write_npz(path, scanner=np.asarray(scanner_name), **arrays)


def read_sinograms(path: str | Path) -> dict:
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            out = {key: data[key] for key in data.files}
    except (OSError, ValueError) as error:
        raise PetiqInputError(path, f"not a petiq sinogram file ({error})", "histogram the list-mode again with `petiq histogram`") from None
    missing = [k for k in KEYS if k not in out]
    if missing:
        raise PetiqInputError(path, f"missing arrays {missing}", "histogram the list-mode again with `petiq histogram`")
    out["scanner"] = str(out["scanner"])
    for key in ("span", "n_prompts", "n_delayeds", "n_outside_span"):
        out[key] = int(out[key])
    out["duration_s"] = float(out["duration_s"])
    return out

"""One place for randomness: every random step takes a seed derived from the config seed and the
job's wildcards (patient, dose, repeat, ...), so any job can be rerun alone and give the same bytes."""

from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(base_seed: int, *keys: object) -> int:
    """A 63-bit seed from the config seed and any number of keys (order matters).

    >>> derive_seed(1, "sub-01", 0.5) == derive_seed(1, "sub-01", 0.5)
    True
    >>> derive_seed(1, "sub-01") != derive_seed(2, "sub-01")
    True
    """
    text = "\x1f".join([str(int(base_seed))] + [repr(k) if not isinstance(k, str) else k for k in keys])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng_for(base_seed: int, *keys: object) -> np.random.Generator:
    """A numpy Generator seeded with :func:`derive_seed`."""
    return np.random.default_rng(derive_seed(base_seed, *keys))

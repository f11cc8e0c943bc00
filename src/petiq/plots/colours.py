"""The discrete colour scale readers see (paper Fig. 3).

The clinicians in Hopson et al. (2022) read the images with a 20-step colour scale used at
Guy's and St Thomas' (GSTT). That scale's exact colours are not published, so petiq uses a
20-colour scale in the spirit of clinical PET "rainbow"-type scales: black → blue → green →
yellow → red → white, each step a flat colour so that a reader sees bands, as on the clinical
workstation.
"""

from __future__ import annotations

import numpy as np
from matplotlib.colors import LinearSegmentedColormap, ListedColormap

N_COLOURS = 20

# Anchor colours (RGB, 0–1) and where they sit on the 0–1 scale.
_ANCHORS: tuple[tuple[float, tuple[float, float, float]], ...] = (
    (0.00, (0.0, 0.0, 0.0)),  # black
    (0.20, (0.0, 0.0, 0.85)),  # blue
    (0.40, (0.0, 0.75, 0.25)),  # green
    (0.60, (1.0, 1.0, 0.0)),  # yellow
    (0.80, (1.0, 0.0, 0.0)),  # red
    (1.00, (1.0, 1.0, 1.0)),  # white
)


def reading_colormap(n: int = N_COLOURS) -> ListedColormap:
    """A ``n``-step (default 20) discrete PET colour scale: black → blue → green → yellow → red → white.

    Not the GSTT scale itself (unpublished); a stand-in of the same kind.

    >>> cmap = reading_colormap()
    >>> cmap.N
    20
    >>> [round(float(c), 2) for c in cmap(0.0)[:3]], [round(float(c), 2) for c in cmap(1.0)[:3]]
    ([0.0, 0.0, 0.0], [1.0, 1.0, 1.0])
    """
    if n < 2:
        raise ValueError(f"a colour scale needs at least 2 colours, got {n}")
    smooth = LinearSegmentedColormap.from_list("petiq_reading_smooth", list(_ANCHORS))
    colours = smooth(np.linspace(0.0, 1.0, n))
    return ListedColormap(colours, name=f"petiq_reading{n}")

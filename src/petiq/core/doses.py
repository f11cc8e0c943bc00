"""Dose fractions: the one place that spells them in paths and groups them into categories.

The paper simulates seven lower injected doses, 0.5–100 % of the acquired counts, grouped for
clinical reading into low (0.5, 1 %), medium (5, 10 %) and high (25, 50, 100 %).

>>> dose_label(0.5), dose_label(10), dose_label(100)
('000.5', '010.0', '100.0')
>>> parse_dose_label("025.0")
25.0
>>> dose_category(5)
'medium'
"""

from __future__ import annotations

PAPER_DOSES = (0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0)
CATEGORIES = {"low": (0.5, 1.0), "medium": (5.0, 10.0), "high": (25.0, 50.0, 100.0)}


def dose_label(percent: float) -> str:
    """Zero-padded, sortable, filesystem-safe spelling of a dose in percent (``dose-{label}`` in paths)."""
    percent = float(percent)
    if not 0 < percent <= 100:
        raise ValueError(f"dose {percent} % is outside (0, 100]")
    label = f"{percent:05.1f}"
    if abs(float(label) - percent) > 1e-9:
        raise ValueError(f"dose {percent} % needs more than one decimal; petiq spells doses with one")
    return label


def parse_dose_label(label: str) -> float:
    return float(label)


def dose_category(percent: float) -> str:
    """low / medium / high, as the paper groups doses for reading (nearest group for other doses)."""
    percent = float(percent)
    if percent < 2.5:
        return "low"
    if percent < 17.5:
        return "medium"
    return "high"

"""The virtual reader: scores an image as a clinician would (GQR, PR, DC on 0–3 in 0.5 steps).

A clinician sees only the image but brings experience: where grey and white matter are, what a
normal FDG brain looks like, and where each dementia's hypometabolism appears. petiq stands that
experience in with the phantom's ground truth, resampled onto the reconstruction grid
(:func:`petiq.scoring.truth.write_reader_truth`, one job per subject). The reader then works in three steps:

1. **Measures** (:func:`petiq.scoring.measures.measure_image`), all ratios, so kBq/mL and 0–1 images give the same:

   * ``noise_cov``: coefficient of variation in eroded deep white matter (uniform uptake);
   * ``gm_wm_contrast``: mean cortical grey matter / mean deep white matter (resolution, partial volume);
   * ``gw_cnr``: (GM − WM) / σ_WM, the grey/white structure against voxel noise;
   * ``fwhm_mm``: the image's effective resolution, the Gaussian blur of the true activity that fits it
     best (reported; it sets the blur of the expected images below);
   * a **deficit map** D = 1 − image / (patient's normal uptake), both seen at the reader's scale
     (a ``reader_fwhm_mm`` Gaussian, about a gyrus), scaled to agree in reference cortex (regions no
     dementia pattern touches), as in clinical z-score tools. ``pattern_contrast`` is D's mean over
     the patient's affected regions, ``pattern_contrast_expected`` what the noise-free image would give,
     ``pattern_noise`` the SD of D around that expectation over all cortex (noise blobs that mimic or
     hide hypometabolism);
   * ``pattern_extent``: share of cortex in the pattern.

2. **Internal scores** (:class:`ReaderModel`): each metric is a log contrast-to-noise ratio mapped
   through a logistic onto 0–3. GQR: log ``gw_cnr``. PR: log(pattern contrast / ``pattern_noise``);
   the contrast is the expected one for a patient with disease, and for a cognitively normal patient
   ``normal_contrast``, the smallest reduction a reader must be able to exclude (so recognising a
   normal scan also needs low noise). DC: PR's evidence plus ``extent_weight`` × log relative extent.

3. **Readings** (:func:`virtual_ratings`): the internal score plus the rater's bias, a persistent
   rater × image opinion and fresh reading noise (both partly shared across the three metrics, as a
   reader forms one impression of an image), rounded to 0.5 steps and clipped to 0–3.

:func:`petiq.scoring.calibrate.calibrate_reader` fits the free parameters against the paper's Table I,
rater agreement and the dose behaviour of the scores
(:func:`petiq.scoring.agreement.load_targets`).

Limits: at the lowest doses (≲ 1 % of the demo's counts) the measured grey/white contrast is itself
noisy, so GQR rises with dose in expectation, not for every patient between 0.5 % and 1 %.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import pandas as pd

from ..core.errors import PetiqInputError
from ..core.seeding import derive_seed
from .measures import MEASURE_COLUMNS

PLAN_COLUMNS = ("blinded_id", "participant_id", "dose", "category", "session", "reading")


#: Parameters :func:`calibrate_reader` fits (the others are physical constants of the model).
FITTED = (
    "gqr_slope",
    "gqr_mid",
    "pr_slope",
    "pr_mid",
    "dc_slope",
    "dc_mid",
    "extent_weight",
    "reading_sd",
    "opinion_sd",
    "bias_sd",
    "shared_all",
    "shared_pattern",
)


@dataclass(frozen=True)
class ReaderModel:
    """Parameters of the virtual reader (JSON-serialisable with :meth:`to_dict` / :meth:`from_dict`).

    Internal score of metric m: 3 / (1 + exp(−slope_m · (q_m − mid_m))), q_m the log contrast-to-noise
    evidence (see the module docstring). A reading adds the rater's bias (SD ``bias_sd``, one draw per
    rater and metric), the rater's persistent opinion of the image (SD ``opinion_sd``) and fresh
    reading noise (SD ``reading_sd``); ``shared_all`` is the share of opinion and reading variance
    common to all three metrics, ``shared_pattern`` the share of the rest common to PR and DC.
    """

    gqr_slope: float = 1.3
    gqr_mid: float = 0.0
    pr_slope: float = 1.7
    pr_mid: float = -0.8
    dc_slope: float = 1.7
    dc_mid: float = -0.7
    extent_weight: float = 0.3
    extent_ref: float = 0.30  # share of cortex of a typical full-blown pattern
    normal_contrast: float = 0.10  # smallest regional reduction a reader must exclude to call a scan normal
    reading_sd: float = 0.2
    opinion_sd: float = 0.15
    bias_sd: float = 0.1
    shared_all: float = 0.5
    shared_pattern: float = 0.5
    calibration: dict = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping) -> ReaderModel:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PetiqInputError(None, f"unknown reader parameter(s) {unknown}", f"use only {sorted(known)}")
        return cls(**dict(data))

    def write(self, path: str | Path) -> None:
        from ..core.fileio import write_json

        write_json(path, self.to_dict())

    @classmethod
    def read(cls, path: str | Path) -> ReaderModel:
        path = Path(path)
        if not path.is_file():
            raise PetiqInputError(path, "the reader parameters do not exist", "run the reader calibration step first")
        return cls.from_dict(json.loads(path.read_text()))


def check_measures(measures: pd.DataFrame) -> pd.DataFrame:
    missing = [c for c in MEASURE_COLUMNS if c not in measures.columns]
    if missing:
        raise PetiqInputError(
            None, f"the image measures lack {missing}", "make them with petiq.scoring.measures.measure_images"
        )
    out = measures.copy()
    out["participant_id"] = out["participant_id"].astype(str)
    out["dose"] = out["dose"].astype(float).round(4)
    if out.duplicated(["participant_id", "dose"]).any():
        row = out[out.duplicated(["participant_id", "dose"])].iloc[0]
        raise PetiqInputError(
            None, f"two measures of {row['participant_id']} at {row['dose']} %", "measure each image once"
        )
    return out.reset_index(drop=True)


def evidence(measures: pd.DataFrame, model: ReaderModel) -> np.ndarray:
    """Log contrast-to-noise evidence (n, 3) for GQR, PR and DC (see the module docstring)."""
    disease = (measures["diagnosis"].astype(str) != "CN").to_numpy()
    q_gqr = np.log(np.clip(measures["gw_cnr"].to_numpy(float), 1e-3, None))
    contrast = np.where(
        disease, np.clip(measures["pattern_contrast_expected"].to_numpy(float), 1e-3, None), model.normal_contrast
    )
    q_pr = np.log(contrast / np.clip(measures["pattern_noise"].to_numpy(float), 1e-6, None))
    extent = np.clip(measures["pattern_extent"].to_numpy(float), 1e-3, None)
    q_dc = q_pr + model.extent_weight * np.where(disease, np.log(extent / model.extent_ref), 0.0)
    return np.stack([q_gqr, q_pr, q_dc], axis=1)


def logistic_scores(q: np.ndarray, model: ReaderModel) -> np.ndarray:
    slope = np.array([model.gqr_slope, model.pr_slope, model.dc_slope])
    mid = np.array([model.gqr_mid, model.pr_mid, model.dc_mid])
    return 3.0 / (1.0 + np.exp(-slope * (q - mid)))


def internal_scores(measures: pd.DataFrame, model: ReaderModel) -> np.ndarray:
    """Continuous internal scores (n, 3) in (0, 3) for GQR, PR, DC; rise monotonically with each CNR."""
    return logistic_scores(evidence(measures, model), model)


def quantise(x: np.ndarray) -> np.ndarray:
    """Round to the nearest 0.5 and clip to 0–3.

    >>> quantise(np.array([-0.4, 0.24, 0.26, 1.74, 2.9, 3.6])).tolist()
    [0.0, 0.0, 0.5, 1.5, 3.0, 3.0]
    """
    return np.clip(np.floor(2.0 * np.asarray(x, float) + 0.5) / 2.0, 0.0, 3.0)


def combine(z: np.ndarray, shared_all: float, shared_pattern: float) -> np.ndarray:
    """Five independent N(0, 1) draws (…, 5) → three unit-variance errors (…, 3) for GQR, PR, DC:
    a part common to all metrics, a part common to PR and DC, and a part of each metric's own."""
    a = float(np.clip(shared_all, 0.0, 1.0))
    b = float(np.clip(shared_pattern, 0.0, 1.0)) * (1.0 - a)
    own = math.sqrt(max(1.0 - a - b, 0.0))
    common = math.sqrt(a) * z[..., 0]
    pattern = common + math.sqrt(b) * z[..., 1]
    return np.stack(
        [common + math.sqrt(1.0 - a) * z[..., 2], pattern + own * z[..., 3], pattern + own * z[..., 4]], axis=-1
    )


def _rater_names(raters: int | Sequence[str]) -> list[str]:
    if isinstance(raters, (int, np.integer)):
        if raters < 1:
            raise PetiqInputError(None, f"{raters} raters", "use at least one rater (two for agreement statistics)")
        return [str(k) for k in range(1, int(raters) + 1)]
    names = [str(r) for r in raters]
    if not names or len(set(names)) != len(names):
        raise PetiqInputError(None, f"rater names {names} are empty or repeat", "give distinct rater names")
    return names


def check_plan(plan: pd.DataFrame) -> pd.DataFrame:
    """Validate a reading plan (columns :data:`PLAN_COLUMNS`); return it typed."""
    missing = [c for c in PLAN_COLUMNS if c not in plan.columns]
    if missing:
        raise PetiqInputError(None, f"the reading plan lacks {missing}", f"give the columns {', '.join(PLAN_COLUMNS)}")
    out = plan.loc[:, list(PLAN_COLUMNS)].copy()
    out["participant_id"] = out["participant_id"].astype(str)
    out["dose"] = out["dose"].astype(float).round(4)
    out["session"] = out["session"].astype(int)
    out["reading"] = out["reading"].astype(str)
    bad = sorted(set(out["reading"]) - {"first", "repeat"})
    if bad:
        raise PetiqInputError(None, f"the reading plan has readings {bad}", "write first or repeat")
    first = out[out["reading"] == "first"]
    if first.duplicated(["participant_id", "dose"]).any():
        raise PetiqInputError(
            None, "the reading plan reads an image twice as a first reading", "give each image one first reading"
        )
    rep = out[out["reading"] == "repeat"]
    orphans = set(zip(rep["participant_id"], rep["dose"])) - set(zip(first["participant_id"], first["dose"]))
    if orphans:
        raise PetiqInputError(
            None, f"re-reads without a first reading: {sorted(orphans)[:3]}", "re-read only images that are read first"
        )
    return out.reset_index(drop=True)


def image_index(measures: pd.DataFrame, plan: pd.DataFrame) -> np.ndarray:
    lookup = {(p, d): i for i, (p, d) in enumerate(zip(measures["participant_id"], measures["dose"]))}
    missing = [(p, d) for p, d in zip(plan["participant_id"], plan["dose"]) if (p, d) not in lookup]
    if missing:
        raise PetiqInputError(
            None,
            f"no image measures for {len(missing)} planned image(s), e.g. {missing[0][0]} at {missing[0][1]} %",
            "measure every image of the reading plan (reconstruct it first)",
        )
    return np.array([lookup[(p, d)] for p, d in zip(plan["participant_id"], plan["dose"])], dtype=np.int64)


def virtual_ratings(
    measures: pd.DataFrame,
    participants: pd.DataFrame | None,
    plan: pd.DataFrame,
    params: ReaderModel,
    raters: int | Sequence[str] = 2,
    seed: int = 0,
) -> pd.DataFrame:
    """Readings of the plan's images (columns :data:`petiq.scoring.agreement.RATINGS_COLUMNS`).

    The first rater reads every row of the plan (first readings and re-reads), the others the first
    readings. Each number is seeded from (seed, "reader", rater, participant, dose[, reading]), so an
    image's score does not depend on which other images are read.
    """
    from .agreement import RATINGS_COLUMNS

    measures, plan = check_measures(measures), check_plan(plan)
    if participants is not None:
        unknown = sorted(set(plan["participant_id"]) - set(participants["participant_id"].astype(str)))
        if unknown:
            raise PetiqInputError(
                None,
                f"the plan reads patients not in participants.tsv: {unknown[:5]}",
                "plan readings for the cohort's patients only",
            )
    names = _rater_names(raters)
    index = image_index(measures, plan)
    scores = internal_scores(measures, params)
    rows = []
    for k, rater in enumerate(names):
        bias = params.bias_sd * np.random.default_rng(derive_seed(seed, "reader", rater, "bias")).normal(size=3)
        for row, i in zip(plan.itertuples(index=False), index):
            if k > 0 and row.reading != "first":
                continue
            keys = (seed, "reader", rater, row.participant_id, float(row.dose))
            opinion = combine(
                np.random.default_rng(derive_seed(*keys, "opinion")).normal(size=5),
                params.shared_all,
                params.shared_pattern,
            )
            noise = combine(
                np.random.default_rng(derive_seed(*keys, row.reading)).normal(size=5),
                params.shared_all,
                params.shared_pattern,
            )
            x = scores[i] + bias + params.opinion_sd * opinion + params.reading_sd * noise
            rows.append((row.participant_id, float(row.dose), rater, int(row.session), row.reading, *quantise(x)))
    out = pd.DataFrame(rows, columns=list(RATINGS_COLUMNS))
    return out.sort_values(["rater", "session", "participant_id", "dose", "reading"], kind="stable").reset_index(
        drop=True
    )

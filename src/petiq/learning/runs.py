"""One planned run of the workflow, trained: what the rules ``train_pretext``, ``train_transfer``,
``train_survey`` and ``train_baseline`` do (:func:`train_planned_run`).

A run of :mod:`petiq.learning.experiments` (backbone, initialisation, freeze level, learning rate,
patients) becomes its image tables (:func:`petiq.learning.experiments.run_tables`), a
:class:`petiq.learning.spec.TrainSpec` from the ``training`` config keys, seeds derived from the
config seed and the run's name, and the provenance its model cards record; then every repeat is
trained together (:func:`petiq.learning.train.train_repeats`, or the dose-only baseline's
:func:`petiq.learning.baseline.train_dose_baseline`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path

import nibabel as nib
import pandas as pd

from ..cohort.patients import read_participants
from ..core.bids import norm01_path
from ..core.errors import PetiqInputError
from ..core.seeding import derive_seed
from .baseline import train_dose_baseline
from .card import card_sources
from .data import PatchSet
from .experiments import Run, run_tables
from .patches import patch_paths
from .spec import CLINICAL_TARGETS, PRETEXT_TARGETS, TrainSpec
from .train import train_repeats
from .weights import find_imagenet_weights

log = logging.getLogger("petiq.learning.runs")

#: The workflow's training stages.
STAGES = ("pretext", "transfer", "survey", "baseline")


def train_planned_run(
    run: Mapping,
    stage: str,
    out_dirs: Sequence[str | Path],
    *,
    patches_dir: str | Path,
    splits_tsv: str | Path,
    participants_tsv: str | Path,
    ratings_tsv: str | Path | None,
    init_checkpoint: str | Path | None,
    recon_dir: str | Path,
    training: Mapping,
    patches: Mapping,
    doses: Sequence[float],
    seed: int,
    repeats: int,
    label_rater: str | None,
    ratings_setting: str | None,
    device: str,
) -> None:
    """Train every repeat of one planned run into ``out_dirs`` (``rep-0``, ``rep-1``, … in order).

    ``run``: the run as :meth:`petiq.learning.experiments.Run.as_dict` gives it; ``stage``: one of
    :data:`STAGES`; ``ratings_tsv``: the ratings (None for the pretext stage); ``init_checkpoint``:
    the pretext model a run initialised from one starts from; ``training``, ``patches``, ``doses``,
    ``seed``, ``label_rater``, ``device``: the config keys; ``ratings_setting``: the config's
    ``scoring.ratings`` (None: the virtual reader), recorded in the model cards.
    """
    if stage not in STAGES:
        raise PetiqInputError(None, f"unknown training stage {stage!r}", f"use one of: {', '.join(STAGES)}")
    run = Run(**run)
    ratings = None if stage == "pretext" else pd.read_csv(ratings_tsv, sep="\t", dtype={"rater": str})
    participants = read_participants(participants_tsv)
    tables = run_tables(
        run,
        splits=pd.read_csv(splits_tsv, sep="\t", dtype=str),
        participants=participants,
        ratings=ratings,
        doses=doses,
        label_rater=label_rater,
        seed=seed,
        patch_paths=partial(patch_paths, Path(patches_dir)),
    )
    for role, table in tables.items():
        log.info("%s: %d images of %s", role, len(table), ", ".join(sorted(table["participant_id"].unique())))

    targets = PRETEXT_TARGETS if stage == "pretext" else CLINICAL_TARGETS
    init, freeze_level = run.init, run.freeze_level
    # training.imagenet_weights is a checkpoint of the main backbone; survey backbones search the usual places
    weights_path = training["imagenet_weights"] if run.backbone == training["backbone"] else None
    if init.startswith("pretext/"):
        init = str(init_checkpoint)
    if stage == "survey":  # Fig. 4: a backbone without offline ImageNet weights trains from random weights, labelled so
        try:
            find_imagenet_weights(run.backbone, weights_path, training["weights_dir"])
        except PetiqInputError as missing:
            init, freeze_level = "random", 5
            log.warning(
                "no offline ImageNet weights for %s (%s): random weights, all blocks trained", run.backbone, missing
            )
    spec = TrainSpec(
        backbone=run.backbone if stage != "baseline" else training["backbone"],
        init=init,
        freeze_level=freeze_level,
        head=training["head"],
        targets=targets,
        learning_rate=run.learning_rate,
        epochs=training["epochs"],
        batch_size=training["batch_size"],
        device=device,
        precision=training["precision"],
        imagenet_weights=weights_path,
        weights_dir=training["weights_dir"],
    )
    seeds = [derive_seed(seed, "train", run.name, r) for r in range(repeats)]
    out_dirs = [str(d) for d in out_dirs]
    # the voxel size patches were cut at: `petiq predict` resamples new images to it
    sample = tables["train"].iloc[0]
    zooms = nib.load(norm01_path(recon_dir, sample["participant_id"], sample["dose"])).header.get_zooms()[:3]
    card = {
        "run": run.as_dict(),
        "experiment_stage": stage,
        "patch": dict(patches, voxel_size_mm=[float(z) for z in zooms]),
        "images": {role: table[["participant_id", "dose"]].to_dict("records") for role, table in tables.items()},
        "label_rater": label_rater,
    }
    sources = card_sources(participants, tables, stage, ratings_setting, label_rater)
    if sources is None:
        log.warning(
            "%s has no source column: the model card cannot say whether the data are real or synthetic",
            participants_tsv,
        )
    else:
        card["sources"] = sources
    evaluate = [] if stage == "pretext" else ["test"]  # Table II judges the pretext validation patient
    if stage == "baseline":
        train_dose_baseline(
            spec,
            tables["train"],
            tables["val"],
            {k: tables[k] for k in evaluate},
            seeds,
            out_dirs,
            extra_card=card,
            progress=False,
        )
    else:
        sets = {role: PatchSet.from_table(tables[role], targets) for role in ["train", "val", *evaluate]}
        train_repeats(
            spec,
            sets["train"],
            sets["val"],
            {k: sets[k] for k in evaluate},
            seeds,
            out_dirs,
            extra_card=card,
            progress=False,
        )
    log.info("trained %d repeats of %s into %s", len(seeds), run.name, ", ".join(out_dirs))

"""Rules train_pretext, train_transfer, train_survey, train_baseline: every repeat of one run
(petiq.learning.experiments.run_tables → petiq.learning.train.train_repeats / train_dose_baseline)."""

from functools import partial
from pathlib import Path

import nibabel as nib
import pandas as pd
import torch

from petiq.cohort.patients import read_participants
from petiq.core.bids import norm01_path
from petiq.core.logs import log_to
from petiq.core.seeding import derive_seed
from petiq.learning.baseline import train_dose_baseline
from petiq.learning.data import PatchSet
from petiq.learning.experiments import Run, run_tables
from petiq.learning.patches import patch_paths
from petiq.learning.spec import CLINICAL_TARGETS, PRETEXT_TARGETS, TrainSpec
from petiq.learning.train import train_repeats

log = log_to(snakemake.log[0])
torch.set_num_threads(snakemake.threads)
i, p = snakemake.input, snakemake.params  # every config value arrives as a param (training_params in common.smk)
run = Run(**p.run)
stage = p.stage
patches_dir = Path(i.patches[0]).parents[1]  # results/patches
ratings = None if stage == "pretext" else pd.read_csv(i.ratings, sep="\t", dtype={"rater": str})
participants = read_participants(i.participants)
tables = run_tables(
    run,
    splits=pd.read_csv(i.splits, sep="\t", dtype=str),
    participants=participants,
    ratings=ratings,
    doses=p.doses,
    label_rater=p.label_rater,
    seed=p.seed,
    patch_paths=partial(patch_paths, patches_dir),
)
for role, table in tables.items():
    log.info("%s: %d images of %s", role, len(table), ", ".join(sorted(table["participant_id"].unique())))

training = p.training
targets = PRETEXT_TARGETS if stage == "pretext" else CLINICAL_TARGETS
init, freeze_level = run.init, run.freeze_level
# training.imagenet_weights is a checkpoint of the main backbone; survey backbones search the usual places
weights_path = training["imagenet_weights"] if run.backbone == training["backbone"] else None
if init.startswith("pretext/"):
    init = str(i.init[0])
if stage == "survey":  # Fig. 4: a backbone without offline ImageNet weights trains from random weights, labelled so
    from petiq.core.errors import PetiqInputError
    from petiq.learning.weights import find_imagenet_weights

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
    device=p.device,
    precision=training["precision"],
    imagenet_weights=weights_path,
    weights_dir=training["weights_dir"],
)
seeds = [derive_seed(p.seed, "train", run.name, r) for r in range(p.repeats)]
out_dirs = [str(Path(f).parent) for f in snakemake.output.card_json]  # rep-0, rep-1, … in order
# the voxel size patches were cut at: `petiq predict` resamples new images to it
sample = tables["train"].iloc[0]
zooms = nib.load(norm01_path(p.recon, sample["participant_id"], sample["dose"])).header.get_zooms()[:3]
patch = dict(p.patches, voxel_size_mm=[float(z) for z in zooms])
card = {
    "run": run.as_dict(),
    "experiment_stage": stage,
    "patch": patch,
    "images": {role: table[["participant_id", "dose"]].to_dict("records") for role, table in tables.items()},
    "label_rater": p.label_rater,
}
# where the images and labels came from: the model card's intended use and data source are derived from this
if "source" in participants.columns:
    source_of = dict(zip(participants["participant_id"].astype(str), participants["source"].astype(str)))
    used = sorted({str(pid) for table in tables.values() for pid in table["participant_id"]})
    images = {}
    for pid in used:
        images.setdefault(source_of[pid], []).append(pid)
    card["sources"] = {
        "images": images,
        "labels": "dose_per_kg" if stage == "pretext" else "virtual_reader" if p.ratings is None else "clinicians",
        "ratings_file": None if stage == "pretext" else p.ratings,
        "label_rater": p.label_rater,
    }
else:
    log.warning(
        "%s has no source column: the model card cannot say whether the data are real or synthetic", i.participants
    )
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

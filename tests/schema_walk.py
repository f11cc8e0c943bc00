"""The walk over every key of the config schema (tests/test_workflow.py): a changed, valid value of
each key for the test preset, and what the schema says changing it reruns (its ``x-reruns``: the
steps that read the key; everything downstream of them reruns too)."""

from __future__ import annotations

import copy
import re
import shutil
from typing import NamedTuple


class Together(NamedTuple):
    """A key's walk value that needs other keys changed with it for a valid config (a role count
    moves a patient to another role; Fig. 9's counts need the transfer patients; another scanner
    cannot read the real patient's files); ``gone``: steps the change takes out of the workflow."""

    value: object
    others: dict
    gone: frozenset = frozenset()


def _get(config: dict, key: str):
    for part in key.split("."):
        config = config[part]
    return config


def _copy(src, dst):
    """A copy of ``src`` (a path in the site, or ``{key}`` for the path a config key holds) at ``dst``."""

    def make(site, config):
        source = site / re.sub(r"\{([\w.]+)\}", lambda m: str(_get(config, m[1])), src)
        (site / dst).parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, site / dst, dirs_exist_ok=True)
        else:
            shutil.copy(source, site / dst)
        return dst

    return make


def _synthetic_sheet(site, config):
    """The patient sheet with its real rows made synthetic (the same ids)."""
    lines = (site / config["patients"]).read_text().splitlines()
    header = lines[0].split("\t")
    rows = [line.split("\t") for line in lines[1:] if line.strip()]
    out = ["participant_id\tsource"] + [f"{r[0]}\tsynthetic" for r in rows]
    assert header[:2] == ["participant_id", "source"]
    (site / "config/patients-synthetic.tsv").write_text("\n".join(out) + "\n")
    return "config/patients-synthetic.tsv"


def _folder_of_one_image(site, config):
    (site / "to-score").mkdir(exist_ok=True)
    shutil.copy(site / "results/bids/sub-01/pet/sub-01_rec-dose100p0_pet.nii.gz", site / "to-score/a.nii.gz")
    return "to-score"


VALUES = {
    "seed": 8,
    "patients": _copy("config/patients.tsv", "config/patients-copy.tsv"),
    "doses": [1, 10, 50, 100],
    # the real patient's files are the demo scanner's: with the mMR, the sheet is all synthetic
    "scanner": Together("mmr", {"patients": _synthetic_sheet}, frozenset({"site_norm"})),
    "span": 1,
    "listmode.duration_s": 600,
    "listmode.form": "dicom",
    "listmode.norm_counts_per_bin": Together(100, {"recon.norm": "norm_scan"}),
    "device": "auto",
    "recon.iterations": 3,
    "recon.subsets": 7,
    "recon.post_filter_fwhm_mm": 4.0,
    "recon.norm": "norm_scan",
    "figures.fig01_subjects": ["sub-03", "sub-04"],
    "cohort.anatomy_dir": _copy("{cohort.anatomy_dir}", "anatomy-copy"),
    "cohort.shape": [40, 40, 38],
    "cohort.voxel_size_mm": [7.0, 7.0, 6.5],
    "cohort.diagnosis_mix.CN": 0.5,
    "cohort.diagnosis_mix.AD": 0.5,
    "cohort.diagnosis_mix.FTD": 0.5,
    "cohort.diagnosis_mix.DLB": 0.5,
    "cohort.clinic.age": {"CN": [60.0, 8.0], "AD": [74.0, 7.0], "FTD": [63.0, 7.0], "DLB": [75.0, 6.0]},
    "cohort.clinic.weight_kg": {"F": [60.0, 12.0], "M": [82.0, 13.0]},
    "cohort.clinic.injected_mbq": {"mean": 180.0, "sd": 12.0, "min": 150.0, "max": 250.0},
    "cohort.clinic.uptake_min": [35.0, 45.0],
    "cohort.clinic.severity": [0.5, 1.0],
    "splits.file": _copy("results/cohort/splits.tsv", "config/splits.tsv"),
    "splits.counts.pretext_train": Together(1, {"splits.counts.pretext_val": 2}),
    "splits.counts.pretext_val": Together(2, {"splits.counts.pretext_train": 1}),
    "splits.counts.transfer_train": Together(2, {"splits.counts.pretext_train": 1}),
    "splits.counts.transfer_val": Together(2, {"splits.counts.pretext_train": 1}),
    "splits.counts.test": Together(2, {"splits.counts.pretext_train": 1}),
    # real ratings: no virtual reader (and the split may rate real patients)
    "scoring.ratings": Together(
        _copy("results/scores/ratings.tsv", "config/ratings.tsv"), {}, frozenset({"reader_truth", "virtual_reader"})
    ),
    "scoring.design": "all_doses",
    "scoring.rated_roles": ["pretext_val", "transfer_train", "transfer_val", "test"],
    "scoring.rereads": 1,
    "scoring.sessions.count": 5,
    "scoring.sessions.min_size": 2,
    "scoring.sessions.max_size": 7,
    "scoring.raters": 3,
    "scoring.label_rater": "2",
    "patches.size": 40,
    "patches.candidates": 100,
    "patches.per_plane": 3,
    "patches.threshold": 0.2,
    "patches.dtype": "float32",
    "training.backbone": "vgg19",
    "training.epochs": 2,
    "training.batch_size": 8,
    "training.learning_rate": 2.0e-4,
    "training.repeats": 3,
    "training.head": "relu",
    "training.precision": "fp32",
    "training.imagenet_weights": _copy("{training.weights_dir}/vgg16_keras-imagenet.pth", "config/vgg16.pth"),
    "training.weights_dir": _copy("{training.weights_dir}", "weights-copy"),
    "experiments.freeze_levels": [0, 1],
    "experiments.patient_counts": Together(
        [1, 2], {"splits.counts.transfer_train": 2, "splits.counts.pretext_train": 1}
    ),
    "experiments.pretext_repeats": 2,
    "experiments.pretext_transfer_freeze_level": 2,
    "experiments.dose_baseline_learning_rates": [1.0e-3],
    "experiments.backbones": ["vgg16", "resnet18"],
    "experiments.backbone_repeats": 2,
    "score_images": _folder_of_one_image,
}


def schema_keys(schema: dict, prefix: str = "") -> dict[str, list[str]]:
    """{dotted leaf key: its x-reruns} for every key of the schema that has no sub-keys."""
    keys = {}
    for name, node in schema["properties"].items():
        key = prefix + name
        if "properties" in node:
            keys.update(schema_keys(node, key + "."))
        else:
            keys[key] = node.get("x-reruns")
    return keys


def gone_steps(key: str) -> frozenset:
    """Steps the walk's change of ``key`` takes out of the workflow."""
    return VALUES[key].gone if isinstance(VALUES[key], Together) else frozenset()


def changed_keys(key: str) -> list[str]:
    """The keys the walk changes for ``key``: itself and those it needs changed with it."""
    return [key, *(VALUES[key].others if isinstance(VALUES[key], Together) else {})]


def changed_config(config: dict, key: str, site) -> dict:
    """``config`` with ``key`` set to its walk value (files it needs made under ``site``)."""
    entry = VALUES[key]
    changes = {key: entry.value, **entry.others} if isinstance(entry, Together) else {key: entry}
    config = copy.deepcopy(config)
    for name, value in changes.items():
        value = value(site, config) if callable(value) else value
        node = config
        *parents, leaf = name.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config

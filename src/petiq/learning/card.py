"""The model card: MONAI-bundle ``metadata.json``-style keys derived from a run's provenance, and its schema.

:func:`card_metadata` reads a finished run's card (the training engine's provenance plus the caller's
``extra_card``) and returns the descriptive keys — name, task, intended use, data source, network data
format, references, licences and the ``petiq predict`` command for the checkpoint — so nothing in them is
typed in by hand: real versus synthetic data, for example, comes from the card's ``sources``
(written by the workflow from the patient sheet and the ``scoring.ratings`` setting). :func:`validate_card`
checks a card against ``petiq/data/card.schema.json`` (JSON Schema 2020-12); the engine calls it before
``card.json`` is written. Cards written before :data:`CARD_SCHEMA` existed lack these keys and are still read
by :func:`petiq.learning.checkpoints.load_run` and ``petiq predict``, which need only the provenance.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from functools import lru_cache
from importlib import resources
from pathlib import Path

from ..core.errors import PetiqInputError

#: The card's schema version (``schema`` key); a card without it predates the schema.
CARD_SCHEMA = "petiq-card/1"
#: The keys :func:`card_metadata` adds (the engine's; ``extra_card`` may not replace them).
METADATA_KEYS = frozenset(
    {
        "schema",
        "name",
        "task",
        "description",
        "intended_use",
        "data_source",
        "data_type",
        "network_data_format",
        "references",
        "authors",
        "copyright",
        "license",
        "weights_license",
        "inference",
    }
)
#: Where ``inference.argv`` has the image to score.
IMAGE_PLACEHOLDER = "IMAGE.nii.gz"

HOPSON_2022 = (
    "Hopson, J. B., Neji, R., Dunn, J. T., McGinnity, C. J., Flaus, A., Reader, A. J., & Hammers, A. (2022). "
    "Pre-training via transfer learning and pretext learning a convolutional neural network for automated "
    "assessments of clinical PET image quality. IEEE Transactions on Radiation and Plasma Medical Sciences. "
    "https://doi.org/10.1109/TRPMS.2022.3231702"
)
#: Architecture papers, by backbone name prefix.
BACKBONE_REFERENCES = (
    (
        "vgg",
        "Simonyan, K., & Zisserman, A. (2015). Very deep convolutional networks for large-scale image recognition. "
        "ICLR 2015. https://arxiv.org/abs/1409.1556",
    ),
    (
        "mobilenet_v2",
        "Sandler, M., Howard, A., Zhu, M., Zhmoginov, A., & Chen, L.-C. (2018). MobileNetV2: inverted "
        "residuals and linear bottlenecks. CVPR 2018. https://arxiv.org/abs/1801.04381",
    ),
    (
        "mobilenet_v3",
        "Howard, A., et al. (2019). Searching for MobileNetV3. ICCV 2019. https://arxiv.org/abs/1905.02244",
    ),
    (
        "resnet",
        "He, K., Zhang, X., Ren, S., & Sun, J. (2016). Deep residual learning for image recognition. CVPR 2016. "
        "https://arxiv.org/abs/1512.03385",
    ),
    (
        "resnext",
        "Xie, S., Girshick, R., Dollár, P., Tu, Z., & He, K. (2017). Aggregated residual transformations for "
        "deep neural networks. CVPR 2017. https://arxiv.org/abs/1611.05431",
    ),
    (
        "wide_resnet",
        "Zagoruyko, S., & Komodakis, N. (2016). Wide residual networks. BMVC 2016. https://arxiv.org/abs/1605.07146",
    ),
    (
        "efficientnet",
        "Tan, M., & Le, Q. V. (2019). EfficientNet: rethinking model scaling for convolutional neural "
        "networks. ICML 2019. https://arxiv.org/abs/1905.11946",
    ),
    (
        "densenet",
        "Huang, G., Liu, Z., van der Maaten, L., & Weinberger, K. Q. (2017). Densely connected "
        "convolutional networks. CVPR 2017. https://arxiv.org/abs/1608.06993",
    ),
)
CODE_LICENSE = "MIT"
AUTHORS = ["petiq contributors (open reproduction of Hopson et al. 2022)"]
COPYRIGHT = "Copyright (c) petiq contributors"
CLINICAL = {"GQR": "global quality rating, 0-3", "PR": "pattern recognition, 0-3", "DC": "diagnostic confidence, 0-3"}


# -- provenance → descriptive keys ---------------------------------------------------------------


def _ids(value) -> list[str]:
    return sorted(str(v) for v in (value or []))


def _image_summary(images: Mapping) -> tuple[str, bool | str | None]:
    """(what the images are, synthetic: True / False / 'partly' / None) from ``sources.images``."""
    synthetic, real = _ids(images.get("synthetic")), _ids(images.get("real"))
    if real and synthetic:
        return (
            f"{len(real)} real patients' reconstructions (the site's own list-mode data) and {len(synthetic)} "
            "synthetic patients simulated by petiq"
        ), "partly"
    if real:
        return f"{len(real)} real patients' reconstructions (the site's own list-mode data)", False
    if synthetic:
        return (
            f"{len(synthetic)} synthetic patients (digital brain phantoms with simulated FDG PET list-mode "
            "acquisitions, generated by petiq)"
        ), True
    return "images of unrecorded origin", None


def _label_summary(sources: Mapping, card: Mapping) -> tuple[str, bool | None]:
    """(who scored the images, synthetic labels? None when no rater is involved or unknown) from ``sources.labels``."""
    labels = sources.get("labels")
    rater = sources.get("label_rater", card.get("label_rater"))
    if labels == "virtual_reader":
        return f"scored by petiq's virtual reader (a simulated clinician, label rater {rater}), not by clinicians", True
    if labels == "clinicians":
        where = sources.get("ratings_file")
        return (
            f"scored by real clinicians (ratings imported with `petiq ratings import`"
            f"{f' from {where}' if where else ''}; label rater {rater})"
        ), False
    if labels == "dose_per_kg":
        return "labelled with each image's dose per kg (injected MBq × dose fraction / body weight; no rater)", None
    return "labels of unrecorded origin", None


def card_sources(
    participants, tables: Mapping, stage: str, ratings: str | None, label_rater: str | None
) -> dict | None:
    """The card's ``sources``: which participants' images a run used, by source (``synthetic`` or
    ``real``, the ``source`` column of ``participants.tsv``), and where its labels came from (dose per
    kg for the pretext stage; the virtual reader when ``ratings`` — the ``scoring.ratings`` setting —
    is None; clinicians otherwise). None when ``participants`` has no ``source`` column.

    >>> import pandas as pd
    >>> people = pd.DataFrame({"participant_id": ["sub-01", "sub-R1"], "source": ["synthetic", "real"]})
    >>> card_sources(people, {"train": pd.DataFrame({"participant_id": ["sub-R1", "sub-01"]})}, "transfer", None, "1")
    {'images': {'synthetic': ['sub-01'], 'real': ['sub-R1']}, 'labels': 'virtual_reader', 'ratings_file': None, 'label_rater': '1'}
    """
    if "source" not in participants.columns:
        return None
    source_of = dict(zip(participants["participant_id"].astype(str), participants["source"].astype(str)))
    used = sorted({str(pid) for table in tables.values() for pid in table["participant_id"]})
    images: dict[str, list[str]] = {}
    for pid in used:
        images.setdefault(source_of[pid], []).append(pid)
    return {
        "images": images,
        "labels": "dose_per_kg" if stage == "pretext" else "virtual_reader" if ratings is None else "clinicians",
        "ratings_file": None if stage == "pretext" else ratings,
        "label_rater": label_rater,
    }


def data_source(card: Mapping) -> dict:
    """Where the training images and labels came from, as the card's ``sources`` records them.

    ``synthetic``: True when images and labels (where a rater made them) are all synthetic, False when all
    are real, ``"partly"`` for a mix, None when the card does not say.
    """
    sources = card.get("sources")
    if not isinstance(sources, Mapping):
        return {
            "images": None,
            "labels": None,
            "ratings_file": None,
            "synthetic": None,
            "summary": "not recorded: the run was trained without petiq's workflow provenance (the card has no "
            "'sources'), so the data's origin is unknown to the card",
        }
    images, images_synthetic = _image_summary(sources.get("images") or {})
    labels, labels_synthetic = _label_summary(sources, card)
    known = {s for s in (images_synthetic, labels_synthetic) if s is not None}
    synthetic = None if not known else known.pop() if len(known) == 1 else "partly"
    return {
        "images": {k: _ids(v) for k, v in (sources.get("images") or {}).items()},
        "labels": sources.get("labels"),
        "ratings_file": sources.get("ratings_file"),
        "synthetic": synthetic,
        "summary": f"{images}, {labels}",
    }


def _task(card: Mapping) -> str:
    targets = list(card.get("targets") or [])
    if card.get("kind") == "dose_baseline":
        return f"regression of {', '.join(targets)} from the dose per kg alone (the paper's Table III baseline)"
    if targets == ["dose_per_kg"]:
        return (
            "pretext regression of the dose per kg from 2-D patches of brain FDG PET reconstructions "
            "(the paper's pretext task)"
        )
    return (
        f"regression of clinical image-quality scores ({', '.join(targets)}; 0-3) from 2-D patches of brain "
        "FDG PET reconstructions; an image's score is the mean over its patches"
    )


def _name(card: Mapping) -> str:
    run = card.get("run") if isinstance(card.get("run"), Mapping) else {}
    label = run.get("name")
    if card.get("kind") == "dose_baseline":
        what = "dose-per-kg baseline"
    else:
        init = (card.get("init") or {}).get("kind", card.get("weights_origin"))
        what = f"{card.get('backbone')} freeze level {card.get('freeze_level')}, {init} init"
    return f"petiq {label or what}, repeat {card.get('repeat')} (seed {card.get('seed')})"


def _intended_use(card: Mapping, source: Mapping) -> str:
    base = (
        "Research only: reproducing and studying Hopson et al. 2022. Not a medical device; not for clinical "
        "decisions, patient care or judging real scans' quality."
    )
    synthetic = source.get("synthetic")
    if synthetic is True:
        trained = (
            f"Trained on synthetic data ({source['summary']}): its scores imitate a simulated reader, not "
            "clinicians, and have not been validated on real patients."
        )
    elif synthetic == "partly":
        trained = (
            f"Trained on partly synthetic data ({source['summary']}): its scores are not those of clinicians "
            "throughout and have not been validated on real patients."
        )
    elif synthetic is False:
        trained = (
            f"Trained on real data ({source['summary']}); the cohort is small and from one site: "
            "validate on local data before any use beyond research."
        )
    else:
        trained = f"Training data: {source['summary']}."
    return f"{base} {trained}"


def _weights_license(card: Mapping) -> str:
    from .weights import FETCH

    init = card.get("init") if isinstance(card.get("init"), Mapping) else {}
    kind = init.get("kind")
    if kind == "random" or card.get("kind") == "dose_baseline":
        return (
            f"no third-party weights (trained from {'random initialisation' if kind == 'random' else 'scratch'}); "
            f"the trained weights are petiq outputs, released with the code ({CODE_LICENSE})"
        )
    if kind == "pretext":
        pretext = init.get("pretext") or {}
        parent = pretext.get("init") if isinstance(pretext.get("init"), Mapping) else {}
        inner = (
            _weights_license({"init": parent, "backbone": card.get("backbone")})
            if parent
            else "see source: the pretext checkpoint's card"
        )
        return f"blocks from the pretext run {pretext.get('path')}, itself started from: {inner}"
    if kind == "imagenet":
        weights = init.get("weights") or {}
        origin, path, backbone = (
            weights.get("origin"),
            weights.get("path"),
            weights.get("backbone", card.get("backbone")),
        )
        if origin == "petiq_fetch" and backbone in FETCH:
            return f"ImageNet weights: {FETCH[backbone].licence}"
        if origin == "torch_hub":
            return (
                f"see source: torchvision's ImageNet checkpoint {Path(str(path)).name} from the torch hub cache "
                "(the torchvision model zoo's terms; not recorded by petiq)"
            )
        return f"see source: the ImageNet checkpoint named in training.imagenet_weights ({path}); its licence is not recorded"
    return "see source: the card's init (weights of unrecorded origin)"


def _references(card: Mapping) -> list[str]:
    refs = [HOPSON_2022]
    backbone = str(card.get("backbone") or "")
    refs += [ref for prefix, ref in BACKBONE_REFERENCES if backbone.startswith(prefix)][:1]
    return refs


def _channel_defs(targets: list[str]) -> dict:
    return {str(i): (f"{t}: {CLINICAL[t]}" if t in CLINICAL else t) for i, t in enumerate(targets)}


def _network_data_format(card: Mapping) -> dict:
    targets = list(card.get("targets") or [])
    clinical = all(t in CLINICAL for t in targets)
    pred = {
        "type": "score",
        "format": "regression",
        "num_channels": len(targets),
        "value_range": [0, 3] if clinical else None,
        "dtype": "float32",
        "channel_def": _channel_defs(targets),
    }
    if card.get("kind") == "dose_baseline":
        inputs = {
            "dose_per_kg": {
                "type": "scalar",
                "format": "MBq per kg",
                "num_channels": 1,
                "spatial_shape": [1],
                "dtype": "float32",
                "value_range": None,
                "is_patch_data": False,
                "channel_def": {"0": "injected MBq × dose fraction / body weight (kg), not standardised"},
            }
        }
    else:
        size = int(card["patch_size"])
        prep = (card.get("preprocessing") or {}).get("name")
        inputs = {
            "image": {
                "type": "image",
                "format": "magnitude",
                "modality": "PET",
                "num_channels": 1,
                "spatial_shape": [size, size],
                "dtype": "float32",
                "value_range": [0, 1],
                "is_patch_data": True,
                "channel_def": {
                    "0": f"FDG PET activity divided by the volume's maximum (one 2-D patch; "
                    f"copied to 3 channels and {prep} preprocessing inside the model)"
                },
            }
        }
    return {"inputs": inputs, "outputs": {"pred": pred}}


def _inference(card: Mapping, out_dir: Path) -> dict:
    if card.get("kind") == "dose_baseline":
        return {
            "command": None,
            "argv": None,
            "image_placeholder": None,
            "note": "the dose baseline reads dose per kg, not images: `petiq predict` does not run it; its "
            "predictions are in predictions_images.tsv",
        }
    if not (card.get("patch") or card.get("patches")):
        return {
            "command": None,
            "argv": None,
            "image_placeholder": None,
            "note": "the card has no patch settings (the caller gave none): `petiq predict` cannot cut images "
            "as in training; retrain through the workflow",
        }
    argv = ["petiq", "predict", "--model", str(out_dir), IMAGE_PLACEHOLDER]
    outputs = ", ".join(card.get("targets") or [])
    return {
        "command": shlex.join(argv),
        "argv": argv,
        "image_placeholder": IMAGE_PLACEHOLDER,
        "note": f"replace {IMAGE_PLACEHOLDER} with NIfTI reconstructions or folders of them; prints {outputs} per "
        "image (mean over patches ± SD); --tsv FILE also writes the table, --device cpu|cuda|auto",
    }


def card_metadata(card: Mapping, out_dir: str | Path) -> dict:
    """The descriptive keys (:data:`METADATA_KEYS`) for a finished run's card, written in ``out_dir``."""
    source = data_source(card)
    fmt = _network_data_format(card)
    description = (
        f"{_task(card)}. {_name(card)}; best validation loss {card.get('best_val_loss')} at epoch "
        f"{card.get('best_epoch')} of {card.get('epochs_run')}."
    )
    metadata = {
        "schema": CARD_SCHEMA,
        "name": _name(card),
        "task": _task(card),
        "description": description,
        "intended_use": _intended_use(card, source),
        "data_source": source,
        "data_type": "tabular (dose per kg per image)"
        if card.get("kind") == "dose_baseline"
        else "NIfTI FDG PET reconstructions (brain), read as 2-D patches",
        "network_data_format": fmt,
        "references": _references(card),
        "authors": list(AUTHORS),
        "copyright": COPYRIGHT,
        "license": CODE_LICENSE,
        "weights_license": _weights_license(card),
        "inference": _inference(card, Path(out_dir)),
    }
    assert set(metadata) == METADATA_KEYS, sorted(set(metadata) ^ METADATA_KEYS)
    return metadata


# -- schema -------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def card_schema() -> dict:
    """``petiq/data/card.schema.json``."""
    return json.loads(resources.files("petiq").joinpath("data/card.schema.json").read_text(encoding="utf-8"))


def card_problems(card: Mapping) -> list[str]:
    """Every way ``card`` breaks the schema, each naming the key (empty: valid)."""
    from jsonschema import Draft202012Validator

    from ..core.fileio import json_default

    plain = json.loads(json.dumps(card, default=json_default))
    validator = Draft202012Validator(card_schema())
    problems = []
    for error in sorted(validator.iter_errors(plain), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        problems.append(f"{where}: {error.message}")
    return problems


def validate_card(card: Mapping, path: str | Path | None = None) -> None:
    """Raise :class:`PetiqInputError` listing every schema problem of ``card`` (its key and what is wrong)."""
    problems = card_problems(card)
    if problems:
        raise PetiqInputError(
            path,
            f"the model card breaks {CARD_SCHEMA} ({len(problems)} problem(s)): " + "; ".join(problems),
            "the card is built by petiq.learning.train; an extra_card key must not break the schema",
        )

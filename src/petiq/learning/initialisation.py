"""Where a run's weights start: ImageNet, random (seeded) or a pretext model's checkpoint, and the
identity of that start recorded in the card."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import PetiqInputError
from ..core.seeding import derive_seed
from .checkpoints import load_checkpoint
from .models import (
    PatchRegressor,
    build_model,
    get_backbone,
    load_backbone_state,
    load_blocks_state,
    set_freeze_level,
)
from .spec import TrainSpec


@dataclass
class Init:
    kind: str
    preprocessing: object
    state: dict | None = None
    info: dict = field(default_factory=dict)


def resolve_init(spec: TrainSpec, patch_size: int) -> Init:
    """Find the starting weights and the preprocessing before any work (missing weights stop here)."""
    from .weights import Preprocessing, find_imagenet_weights, load_imagenet_state_dict, sha256_of

    override = Preprocessing.from_name(spec.preprocessing) if spec.preprocessing else None
    if spec.init == "imagenet":
        source = find_imagenet_weights(spec.backbone, spec.imagenet_weights, spec.weights_dir)
        state = load_imagenet_state_dict(source)
        prep = override or source.preprocessing
        return Init(
            "imagenet", prep, state, {"kind": "imagenet", "weights_origin": source.origin, "weights": source.as_dict()}
        )
    if spec.init == "random":
        prep = override or Preprocessing.from_name("torchvision_rgb")
        backbone = get_backbone(spec.backbone)
        how = (
            "Keras-style Glorot-uniform weights, zero biases"
            if backbone.init == "keras"
            else "torchvision's default initialisation"
        )
        return Init(
            "random", prep, None, {"kind": "random", "weights_origin": "random", "weights": None, "random_init": how}
        )
    path = Path(spec.init)
    if path.is_dir():
        path = path / "model.pt"
    if not path.is_file():
        raise PetiqInputError(
            path,
            "init names neither 'imagenet', 'random' nor an existing pretext checkpoint",
            "give 'imagenet', 'random' or the model.pt of a finished pretext run",
        )
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "patch" or ckpt["backbone"] != spec.backbone or ckpt["patch_size"] != patch_size:
        raise PetiqInputError(
            path,
            f"is a {ckpt.get('backbone')} model of {ckpt.get('patch_size')} px, not {spec.backbone} of {patch_size} px",
            "start from a pretext run with the same backbone and patches",
        )
    prep = override or Preprocessing.from_dict(ckpt["preprocessing"])
    return Init(
        "pretext",
        prep,
        ckpt["state_dict"],
        {
            "kind": "pretext",
            "weights_origin": "pretext",
            "weights": None,
            "pretext": {
                "path": str(path),
                "sha256": sha256_of(path),
                "targets": ckpt["targets"],
                "seed": ckpt.get("seed"),
                "best_epoch": ckpt.get("best_epoch"),
                "freeze_level": ckpt.get("freeze_level"),
                "init": ckpt.get("init"),
            },
        },
    )


def init_identity(init: Init) -> dict:
    """What the starting weights are, by checksum (not by path: moving a file does not change a run)."""
    if init.kind == "imagenet":
        return {"kind": "imagenet", "sha256": init.info["weights"]["sha256"], "prep": init.preprocessing.as_dict()}
    if init.kind == "pretext":
        return {"kind": "pretext", "sha256": init.info["pretext"]["sha256"], "prep": init.preprocessing.as_dict()}
    return {"kind": "random", "prep": init.preprocessing.as_dict()}


def initial_model(spec: TrainSpec, init: Init, seed: int, patch_size: int) -> PatchRegressor:
    model = build_model(
        spec.backbone, len(spec.targets), head=spec.head, patch_size=patch_size, seed=derive_seed(seed, "init")
    )
    if init.kind == "imagenet":
        load_backbone_state(model, init.state, init.info["weights"]["path"])
    elif init.kind == "pretext":
        load_blocks_state(model, init.state, init.info["pretext"]["path"])
    return set_freeze_level(model, spec.freeze_level)

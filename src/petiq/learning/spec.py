"""What a training run is: its targets, the file formats it writes and its settings (:class:`TrainSpec`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..core.errors import PetiqInputError
from .card import METADATA_KEYS
from .models import (
    HEADS,
    N_BLOCKS,
)

CLINICAL_TARGETS = ("GQR", "PR", "DC")


PRETEXT_TARGETS = ("dose_per_kg",)


MODEL_FORMAT = "petiq-model-1"


RESUME_FORMAT = "petiq-resume-1"


PRECISIONS = ("fp32", "bf16", "auto")


#: Settings a run may change between an interruption and its resumption (``epochs``: a run can be extended).
RESUME_FREE = ("device", "stack", "checkpoint_every_s", "keep_resume_state", "eval_batch_size", "epochs")


#: Top-level model-card keys the engine writes; ``extra_card`` may add others, not replace these.
CARD_KEYS = (
    frozenset(
        {
            "kind",
            "backbone",
            "patch_size",
            "targets",
            "n_outputs",
            "head",
            "head_note",
            "init",
            "weights_origin",
            "preprocessing",
            "freeze_level",
            "trained_blocks",
            "blocks",
            "n_params",
            "training",
            "seed",
            "repeat",
            "data",
            "engine",
            "epochs_run",
            "best_epoch",
            "best_val_loss",
            "final_train_loss",
            "resumed_from_epoch",
            "training_seconds",
            "versions",
            "metrics",
            "model",
            "input",
        }
    )
    | METADATA_KEYS
)


DEVICES = ("auto", "cpu", "cuda")


ADAM_BETAS = (0.9, 0.999)


@dataclass(frozen=True)
class TrainSpec:
    """Everything that defines a training run except the data, seeds and output folders.

    ``init``: ``"imagenet"`` (weights found by :func:`petiq.learning.weights.find_imagenet_weights` from
    ``imagenet_weights`` — the config path — and ``weights_dir``), ``"random"``, or the path of a pretext
    run's ``model.pt`` (or its folder): its five blocks, a new head, its preprocessing.
    ``preprocessing`` overrides the input preprocessing by name (``caffe_bgr``, ``torchvision_rgb``,
    ``none``); by default it comes with the weights, and random initialisation uses ``torchvision_rgb``.
    ``stack``: repeats trained together in one process (0: all on CUDA, one at a time on the CPU).
    """

    backbone: str = "vgg16"
    init: str = "imagenet"
    freeze_level: int = 2
    head: str = "linear"
    targets: tuple[str, ...] = CLINICAL_TARGETS
    learning_rate: float = 1e-4
    epochs: int = 1000
    batch_size: int = 10
    device: str = "auto"
    precision: str = "auto"
    cache_frozen: bool = True
    cache_max_gb: float = 4.0
    stack: int = 0
    imagenet_weights: str | None = None
    weights_dir: str = "resources/weights"
    preprocessing: str | None = None
    adam_eps: float = 1e-7
    eval_batch_size: int = 100
    checkpoint_every_s: float = 300.0
    keep_resume_state: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "targets", tuple(str(t) for t in self.targets))
        problems = []
        if not isinstance(self.freeze_level, int) or not 0 <= self.freeze_level <= N_BLOCKS:
            problems.append(f"freeze_level {self.freeze_level!r} is not 0..{N_BLOCKS}")
        if self.head not in HEADS:
            problems.append(f"head {self.head!r} is not one of {HEADS}")
        if not self.targets or len(set(self.targets)) != len(self.targets):
            problems.append(f"targets {self.targets!r} must be distinct names")
        if not (self.learning_rate > 0 and self.epochs >= 1 and self.batch_size >= 1 and self.eval_batch_size >= 1):
            problems.append("learning_rate, epochs, batch_size and eval_batch_size must be positive")
        if self.precision not in PRECISIONS:
            problems.append(f"precision {self.precision!r} is not one of {PRECISIONS}")
        if self.device not in DEVICES:
            problems.append(f"device {self.device!r} is not one of {DEVICES}")
        if self.stack < 0 or self.cache_max_gb < 0 or self.checkpoint_every_s < 0:
            problems.append("stack, cache_max_gb and checkpoint_every_s must not be negative")
        if problems:
            raise PetiqInputError(
                None, "bad training settings: " + "; ".join(problems), "fix the training section of the config"
            )

    def as_dict(self) -> dict:
        d = asdict(self)
        d["targets"] = list(self.targets)
        return d

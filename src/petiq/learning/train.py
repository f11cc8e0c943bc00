"""The training engine: one loop for every experiment (transfer, pretext, backbone survey, dose baseline).

The paper's recipe: MSE loss, Adam (learning rate 1e-4, or 1e-3 for one baseline), batch size 10,
1000 epochs, validation every epoch, and the checkpoint with the lowest validation loss kept.
:func:`train_repeats` trains the repeats of one configuration (each with its own seed: head
initialisation and per-epoch shuffling) and writes, per repeat folder, ``model.pt``, ``curve.tsv``,
``curve.png``, ``predictions_patches.tsv``, ``predictions_images.tsv`` and ``card.json``.

How it is fast without changing the numbers:

* **Frozen blocks run once.** At freeze level ``k < 5`` the first ``5 - k`` blocks never change, so their
  output for every training and validation patch is computed once (fp32, in chunks, no autograd) and
  each step runs only the retrained blocks and the head. The result equals the plain loop's (tested).
  The cache is stored in fp32, in bf16 when fp32 would exceed ``cache_max_gb`` (logged: then the numbers
  differ slightly), and not at all when even bf16 would not fit (logged; the plain loop runs).
* **bf16 where the hardware has it** (``precision="auto"``: CUDA with bf16, CPUs with AVX512-BF16 or AMX):
  convolution and linear weights and activations in bf16, batch norms, loss and Adam in fp32;
  channels-last activations where they help (CUDA; CPU when block 1 or 2 is retrained). Not used for ``k = 0`` (a single linear layer gains nothing).
* **Repeats stacked.** The repeats' trainable parameters are stacked (``torch.func.stack_module_state``)
  and run with ``vmap`` + ``functional_call``: one launch per layer for all repeats, one fused Adam
  step for all (Adam is element-wise, so stacked Adam equals separate Adams). By default all repeats
  are stacked on CUDA and trained one after another on the CPU (stacking does not help there).
  Stacked runs equal separate ones up to rounding (grouped convolutions round differently). One
  exception, harmless: a parameter whose gradient is zero up to rounding — a convolution bias right
  before a batch norm — moves by Adam steps of the learning rate's size driven by that rounding noise, so
  such biases (and the running means after them) differ between stacked and separate runs. VGG16 has
  no batch norm. Models with stochastic depth (EfficientNet) share its masks between stacked repeats.

Same seed, same device, same thread count → the same numbers (deterministic algorithms are switched on
while training). An interrupted run resumes from ``last.pt`` (written every ``checkpoint_every_s`` and
after the last epoch) and gives the numbers of an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from .. import __version__
from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path, write_json, write_tsv
from ..core.seeding import derive_seed, rng_for
from .card import METADATA_KEYS, card_metadata, validate_card
from .models import (
    HEAD_NOTE,
    HEADS,
    N_BLOCKS,
    PatchRegressor,
    build_model,
    describe_blocks,
    get_backbone,
    load_backbone_state,
    load_blocks_state,
    set_freeze_level,
)

log = logging.getLogger("petiq.learning.train")

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


# -- configuration -----------------------------------------------------------------------------


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


# -- data --------------------------------------------------------------------------------------


@dataclass
class PatchSet:
    """Patches of some images with their targets: ``patches`` (N, H, W) in 0–1 (float16/32), ``targets``
    (N, T) float32 (an image's scores repeated for each of its patches), and per patch its
    ``participant_id``, ``dose`` (percent) and ``patch_index`` (row in the image's patch table)."""

    patches: np.ndarray
    targets: np.ndarray
    target_names: tuple[str, ...]
    participant_id: np.ndarray
    dose: np.ndarray
    patch_index: np.ndarray

    def __post_init__(self) -> None:
        self.target_names = tuple(self.target_names)
        self.targets = np.asarray(self.targets, dtype=np.float32).reshape(len(self.targets), -1)
        self.participant_id = np.asarray(self.participant_id).astype(str)
        self.dose = np.asarray(self.dose, dtype=np.float64)
        self.patch_index = np.asarray(self.patch_index, dtype=np.int64)
        n = len(self.patches)
        if self.patches.ndim != 3 or self.patches.shape[1] != self.patches.shape[2]:
            raise ValueError(f"patches must be N × size × size, got {self.patches.shape}")
        if self.targets.shape != (n, len(self.target_names)):
            raise ValueError(f"targets {self.targets.shape} do not match {n} patches × {len(self.target_names)} names")
        if not (len(self.participant_id) == len(self.dose) == len(self.patch_index) == n):
            raise ValueError("participant_id, dose and patch_index need one entry per patch")

    def __len__(self) -> int:
        return len(self.patches)

    @property
    def patch_size(self) -> int:
        return int(self.patches.shape[1])

    @property
    def patients(self) -> list[str]:
        return sorted(set(self.participant_id.tolist()))

    def images(self) -> pd.DataFrame:
        """One row per (participant_id, dose) in order of appearance: n_patches and the targets."""
        frame = pd.DataFrame({"participant_id": self.participant_id, "dose": self.dose})
        for j, name in enumerate(self.target_names):
            frame[name] = self.targets[:, j]
        grouped = frame.groupby(["participant_id", "dose"], sort=False)
        out = grouped.first().reset_index()
        out.insert(2, "n_patches", grouped.size().to_numpy())
        return out

    def describe(self) -> dict:
        """Patients, doses and counts, for the model card."""
        return {
            "patients": self.patients,
            "doses": sorted(set(self.dose.tolist())),
            "n_images": int(len(self.images())),
            "n_patches": int(len(self)),
        }

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for array in (np.ascontiguousarray(self.patches), self.targets, self.dose, self.patch_index):
            h.update(str(array.shape).encode() + str(array.dtype).encode())
            h.update(array.tobytes())
        h.update("\x1f".join(self.participant_id.tolist()).encode())
        h.update("\x1f".join(self.target_names).encode())
        return h.hexdigest()

    @classmethod
    def concat(cls, sets: Sequence[PatchSet]) -> PatchSet:
        if not sets:
            raise ValueError("nothing to concatenate")
        names = sets[0].target_names
        if any(s.target_names != names for s in sets):
            raise ValueError("patch sets with different targets")
        return cls(
            np.concatenate([s.patches for s in sets]),
            np.concatenate([s.targets for s in sets]),
            names,
            np.concatenate([s.participant_id for s in sets]),
            np.concatenate([s.dose for s in sets]),
            np.concatenate([s.patch_index for s in sets]),
        )

    @classmethod
    def from_table(
        cls, table: pd.DataFrame | str | Path, targets: Sequence[str], base_dir: str | Path | None = None
    ) -> PatchSet:
        """Load the images listed in a table with columns ``participant_id, dose, patches_npy, patches_tsv``
        and one column per target (a path to a TSV, or a DataFrame); relative paths are taken from
        ``base_dir``. Patches are read with :func:`petiq.learning.patches.read_patches`."""
        from .patches import read_patches

        where: str | None = None
        if not isinstance(table, pd.DataFrame):
            where = str(table)
            if not Path(table).is_file():
                raise PetiqInputError(
                    table, "the image table does not exist", "write it first (the workflow lists the images)"
                )
            table = pd.read_csv(table, sep="\t")
        targets = tuple(targets)
        needed = ["participant_id", "dose", "patches_npy", "patches_tsv", *targets]
        missing = [c for c in needed if c not in table.columns]
        if missing:
            raise PetiqInputError(where, f"columns {missing} are missing", f"the image table needs {', '.join(needed)}")
        if table.empty:
            raise PetiqInputError(where, "lists no images", "give at least one (participant, dose) row")
        values = table[list(targets)].apply(pd.to_numeric, errors="coerce")
        bad = values.isna().any(axis=1)
        if bad.any():
            rows = [f"{r.participant_id} dose {r.dose}" for r in table[bad].itertuples()][:4]
            raise PetiqInputError(
                where,
                f"targets missing or not numbers for {', '.join(rows)}",
                "give every image a numeric value for each target",
            )
        if table.duplicated(["participant_id", "dose"]).any():
            raise PetiqInputError(where, "an image (participant_id, dose) is listed twice", "list each image once")
        base = Path(base_dir) if base_dir is not None else None
        parts, sizes = [], set()
        for row, target_values in zip(table.itertuples(index=False), values.to_numpy(np.float32)):
            npy, tsv = Path(row.patches_npy), Path(row.patches_tsv)
            if base is not None:
                npy, tsv = base / npy, base / tsv
            array, patch_table = read_patches(npy, tsv)
            if len(array) == 0:
                raise PetiqInputError(npy, "holds no patches", "extract the patches again")
            sizes.add(array.shape[1])
            n = len(array)
            parts.append(
                cls(
                    array,
                    np.tile(target_values, (n, 1)),
                    targets,
                    np.full(n, str(row.participant_id)),
                    np.full(n, float(row.dose)),
                    patch_table["patch_index"].to_numpy(),
                )
            )
        if len(sizes) > 1:
            raise PetiqInputError(
                where, f"patches of different sizes {sorted(sizes)}", "extract all patches with one size"
            )
        return cls.concat(parts)


# -- device, precision, preprocessing -----------------------------------------------------------


def resolve_device(device: str) -> torch.device:
    """``auto`` → CUDA when present; ``cuda`` without a GPU falls back to the CPU with a log line."""
    if device in ("auto", "cuda"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        if device == "cuda":
            log.warning("device cuda requested but torch %s sees no GPU: training on the CPU", torch.__version__)
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX-BF16 on this CPU (Linux: from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_precision(precision: str, device: torch.device, freeze_level: int) -> str:
    """``fp32`` or ``bf16``; ``auto`` picks bf16 where the hardware computes it natively and a block is retrained."""
    if precision != "auto":
        return precision
    if freeze_level == 0:
        return "fp32"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_native_bf16() else "fp32"


def apply_preprocessing(prep, x: torch.Tensor) -> torch.Tensor:
    """0–1 grey patches (N, H, W) → (N, 3, H, W) network input on ``x``'s device.

    The formula of :meth:`petiq.learning.weights.Preprocessing.apply` for grey input (channel order does not
    matter for three equal channels), with the constants on the tensor's device.
    """
    x = x.float().unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x * prep.scale - mean) / std).contiguous()


@contextlib.contextmanager
def _deterministic(device: torch.device, seed: int) -> Iterator[None]:
    """Deterministic algorithms and a seeded torch RNG inside the block; the caller's settings come back after."""
    if device.type == "cuda":
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    old = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.benchmark,
    )
    devices = [torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(old[0], warn_only=old[1])
            torch.backends.cudnn.benchmark = old[2]


@dataclass(frozen=True)
class _Compute:
    device: torch.device
    dtype: torch.dtype
    channels_last: bool

    @classmethod
    def make(cls, device: torch.device, precision: str, freeze_level: int = N_BLOCKS) -> _Compute:
        """bf16 with channels-last activations on CUDA, and on the CPU when block 1 or 2 is retrained (there the
        large activations gain; for the deep blocks alone the weight-gradient layout copies cost more)."""
        bf16 = precision == "bf16"
        channels_last = bf16 and (device.type == "cuda" or freeze_level >= N_BLOCKS - 1)
        return cls(device, torch.bfloat16 if bf16 else torch.float32, channels_last)

    def autocast(self):
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x


# -- inputs of the trainable part --------------------------------------------------------------


class _Front(nn.Module):
    """The frozen blocks of a model (no parameters of their own)."""

    def __init__(self, model: PatchRegressor, cut: int):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(cut)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return x


class _Tail(nn.Module):
    """The retrained blocks and the head, with the model's own parameter names."""

    def __init__(self, model: PatchRegressor, cut: int):
        super().__init__()
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in range(cut, N_BLOCKS)})
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks.values():
            x = block(x)
        return self.head(x)


class _Inputs:
    """What the trainable part takes for given patches.

    ``cache``: precomputed (N, ...) shared by all repeats, or (R, N, ...) per repeat. Otherwise raw
    patches go through ``prep`` and the frozen ``fronts`` (one shared module, or one per repeat) each time.
    """

    def __init__(
        self,
        *,
        cache: torch.Tensor | None = None,
        per_repeat: bool = False,
        raw: torch.Tensor | None = None,
        prep=None,
        fronts: Sequence[nn.Module] = (),
        compute: _Compute | None = None,
    ):
        self.cache, self.per_repeat, self.raw, self.prep = cache, per_repeat, raw, prep
        self.fronts, self.compute = list(fronts), compute

    def _through(self, front: nn.Module | None, x: torch.Tensor) -> torch.Tensor:
        x = apply_preprocessing(self.prep, x)
        if front is None:
            return x
        with torch.no_grad(), self.compute.autocast():
            return front(self.compute.layout(x))

    def batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Inputs for index rows ``idx`` (R, B) → (R, B, ...)."""
        r, b = idx.shape
        if self.cache is not None:
            if self.per_repeat:
                return self.cache[torch.arange(r, device=idx.device)[:, None], idx]
            return self.cache[idx]
        if len(self.fronts) > 1:
            return torch.stack([self._through(front, self.raw[idx[i]]) for i, front in enumerate(self.fronts)])
        x = self._through(self.fronts[0] if self.fronts else None, self.raw[idx.reshape(-1)])
        return x.reshape(r, b, *x.shape[1:])

    def span(self, start: int, stop: int) -> tuple[torch.Tensor, bool]:
        """Inputs of patches ``start:stop`` for evaluation: (n, ...) shared (False) or (R, n, ...) per repeat (True)."""
        if self.cache is not None:
            return (self.cache[:, start:stop], True) if self.per_repeat else (self.cache[start:stop], False)
        if len(self.fronts) > 1:
            return torch.stack([self._through(front, self.raw[start:stop]) for front in self.fronts]), True
        return self._through(self.fronts[0] if self.fronts else None, self.raw[start:stop]), False


def _compute_features(
    front: nn.Module, raw: torch.Tensor, prep, dtype: torch.dtype, chunk: int, progress: bool, label: str
) -> torch.Tensor:
    """Run the frozen blocks once over all patches (fp32, no autograd) into a (N, ...) tensor of ``dtype``."""
    from tqdm import tqdm

    out = None
    front.eval()
    with torch.no_grad():
        for start in tqdm(range(0, len(raw), chunk), desc=label, disable=not progress, leave=False):
            y = front(apply_preprocessing(prep, raw[start : start + chunk]))
            if out is None:
                out = torch.empty((len(raw), *y.shape[1:]), dtype=dtype, device=raw.device)
            out[start : start + len(y)] = y
    return out


# -- stacked trainable part --------------------------------------------------------------------


def _float_norms_hooks(module: nn.Module, dtype: torch.dtype) -> None:
    """Batch/group/layer norms compute in fp32 inside a bf16 network (their outputs go back to bf16)."""
    norms = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
    for m in module.modules():
        if isinstance(m, norms):
            m.register_forward_pre_hook(lambda _m, args: tuple(a.float() for a in args))
            m.register_forward_hook(lambda _m, _args, out: out.to(dtype))


class _Stack:
    """R copies of one trainable module, stacked: parameters (R, ...), one Adam for all."""

    def __init__(self, tails: Sequence[nn.Module], compute: _Compute, learning_rate: float, eps: float):
        self.R = len(tails)
        self.compute = compute
        params, buffers = stack_module_state(list(tails))
        self.params = {k: v.detach().to(compute.device).requires_grad_(True) for k, v in params.items()}
        self.buffers = {k: v.detach().to(compute.device) for k, v in buffers.items()}
        self.base = copy.deepcopy(tails[0]).to("meta")
        self.low = set()
        if compute.dtype != torch.float32:
            for name, m in self.base.named_modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    self.low.update(f"{name}.{p}" if name else p for p, _ in m.named_parameters(recurse=False))
            _float_norms_hooks(self.base, compute.dtype)
        # torchvision's stochastic depth draws its mask in place on an unbatched tensor, which vmap allows only
        # with one draw for all repeats; everything else gets its own draw per repeat
        self.randomness = (
            "same" if any(type(m).__name__ == "StochasticDepth" for m in self.base.modules()) else "different"
        )
        if self.R > 1 and self.randomness == "same":
            log.info("stacked repeats share their stochastic-depth masks (vmap cannot draw them per repeat)")
        fused = compute.device.type in ("cpu", "cuda")
        self.opt = torch.optim.Adam(
            list(self.params.values()), lr=learning_rate, betas=ADAM_BETAS, eps=eps, fused=fused
        )

    def _call(self, p: dict, b: dict, x: torch.Tensor) -> torch.Tensor:
        dtype = self.compute.dtype
        if self.low:
            p = {k: (v.to(dtype) if k in self.low else v) for k, v in p.items()}
        return functional_call(self.base, (p, b), (x.to(dtype),)).float()

    def forward(self, x: torch.Tensor, batched: bool = True) -> torch.Tensor:
        """Outputs (R, B, T) for inputs (R, B, ...) (``batched``) or one input (B, ...) shared by all repeats."""
        if self.R == 1:
            x = self.compute.layout(x[0] if batched else x)
            p = {k: v.squeeze(0) for k, v in self.params.items()}  # a view: no zero-filled (1, ...) gradient
            b = {k: v.squeeze(0) for k, v in self.buffers.items()}
            return self._call(p, b, x).unsqueeze(0)
        return vmap(self._call, in_dims=(0, 0, 0 if batched else None), randomness=self.randomness)(
            self.params, self.buffers, x
        )

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One Adam step on MSE for a batch (R, B, ...) → the R losses."""
        self.base.train()
        out = self.forward(x)
        losses = (out - y).pow(2).mean(dim=(1, 2))
        losses.sum().backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return losses.detach()

    def sq_error(self, inputs: _Inputs, y: torch.Tensor, chunk: int) -> torch.Tensor:
        """Summed squared error (R,) over a whole set, in eval mode."""
        self.base.eval()
        total = torch.zeros(self.R, dtype=torch.float64, device=self.compute.device)
        with torch.no_grad():
            for start in range(0, len(y), chunk):
                x, batched = inputs.span(start, start + chunk)
                out = self.forward(x, batched)
                total += (out - y[start : start + chunk]).pow(2).sum(dim=(1, 2)).double()
        return total

    def slice(self, r: int) -> dict[str, dict[str, torch.Tensor]]:
        """Repeat ``r``'s parameters and buffers (detached copies)."""
        return {
            "params": {k: v.detach()[r].clone() for k, v in self.params.items()},
            "buffers": {k: v[r].clone() for k, v in self.buffers.items()},
        }

    def adam_slice(self, r: int) -> dict:
        names = list(self.params)
        state = [self.opt.state.get(self.params[k], {}) for k in names]
        if not state or "step" not in state[0]:
            return {"step": 0.0}
        return {
            "step": float(state[0]["step"]),
            "exp_avg": {k: s["exp_avg"][r].cpu().clone() for k, s in zip(names, state)},
            "exp_avg_sq": {k: s["exp_avg_sq"][r].cpu().clone() for k, s in zip(names, state)},
        }

    def restore(self, saved: Sequence[dict]) -> None:
        """Load each repeat's parameters, buffers and Adam state from its resume state."""
        with torch.no_grad():
            for k, v in self.params.items():
                v.copy_(torch.stack([s["params"][k] for s in saved]).to(v.device))
            for k, v in self.buffers.items():
                v.copy_(torch.stack([s["buffers"][k] for s in saved]).to(v.device))
        step = saved[0]["adam"]["step"]
        if step:
            sd = self.opt.state_dict()
            sd["state"] = {
                i: {
                    "step": torch.tensor(step, dtype=torch.float32),
                    "exp_avg": torch.stack([s["adam"]["exp_avg"][k] for s in saved]),
                    "exp_avg_sq": torch.stack([s["adam"]["exp_avg_sq"][k] for s in saved]),
                }
                for i, k in enumerate(self.params)
            }
            self.opt.load_state_dict(sd)


# -- the loop ----------------------------------------------------------------------------------


@dataclass
class _Repeat:
    """One repeat's progress: best state (lowest validation loss), curve, resume bookkeeping."""

    seed: int
    out_dir: Path
    fingerprint: str = ""
    curve: list[dict] = field(default_factory=list)
    best: dict | None = None
    resumed_from: int | None = None


def _to_cpu(state: dict) -> dict:
    return {
        k: (_to_cpu(v) if isinstance(v, dict) else v.cpu() if isinstance(v, torch.Tensor) else v)
        for k, v in state.items()
    }


def _save_resume(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _repeat_fingerprint(fingerprint: str, seed: int) -> str:
    return hashlib.sha256(f"{fingerprint}\x1f{int(seed)}".encode()).hexdigest()


def _read_resume(path: Path, fingerprint: str) -> dict | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # unreadable: a resume file is never trusted half-way
        raise PetiqInputError(
            path, f"the resume state cannot be read ({type(error).__name__})", "delete it to start this run over"
        ) from error
    if not isinstance(state, dict) or state.get("format") != RESUME_FORMAT or state.get("fingerprint") != fingerprint:
        raise PetiqInputError(
            path,
            "the resume state was written for other settings, seed or data",
            "delete it to start this run over, or restore the settings it was written with",
        )
    return state


def _fit(
    stack: _Stack,
    repeats: list[_Repeat],
    train_in: _Inputs,
    y_train: torch.Tensor,
    val_in: _Inputs,
    y_val: torch.Tensor,
    *,
    epochs: int,
    batch_size: int,
    eval_batch_size: int,
    resume: list[dict] | None,
    checkpoint_every_s: float,
    progress: bool,
    label: str,
    callback: Callable[[int, list[list[dict]]], None] | None,
) -> None:
    """Train the stack for ``epochs`` epochs (from a resume state when given), keeping each repeat's best."""
    from tqdm import tqdm

    device = stack.compute.device
    n, R = len(y_train), stack.R
    start_epoch, elapsed = 0, 0.0
    if resume:
        stack.restore(resume)
        start_epoch = int(resume[0]["epoch"])
        elapsed = float(resume[0]["elapsed_s"])
        for rep, state in zip(repeats, resume):
            rep.curve = list(state["curve"])
            rep.best = state["best"]
            rep.resumed_from = start_epoch
        torch.set_rng_state(resume[0]["rng"])
        if device.type == "cuda" and "cuda_rng" in resume[0]:
            torch.cuda.set_rng_state(resume[0]["cuda_rng"])
        log.info("%s: resuming after epoch %d of %d", label, start_epoch, epochs)
    y_train, y_val = y_train.to(device), y_val.to(device)
    t0 = time.perf_counter() - elapsed
    last_save = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc=label, disable=not progress, initial=start_epoch, total=epochs)
    for epoch in bar:
        order = np.stack([rng_for(rep.seed, "shuffle", epoch).permutation(n) for rep in repeats])
        order = torch.from_numpy(order).to(device)
        train_sum = torch.zeros(R, dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            idx = order[:, start : start + batch_size]
            losses = stack.step(train_in.batch(idx), y_train[idx])
            train_sum += losses.double() * idx.shape[1]
        train_loss = (train_sum / n).tolist()
        val_loss = (stack.sq_error(val_in, y_val, eval_batch_size) / y_val.numel()).tolist()
        seconds = time.perf_counter() - t0
        for r, rep in enumerate(repeats):
            rep.curve.append(
                {"epoch": epoch + 1, "train_loss": train_loss[r], "val_loss": val_loss[r], "seconds": round(seconds, 3)}
            )
            if rep.best is None or val_loss[r] < rep.best["val_loss"]:
                rep.best = {"epoch": epoch + 1, "val_loss": val_loss[r], **stack.slice(r)}  # stays on the device
        if progress:
            bar.set_postfix(train=f"{train_loss[0]:.4g}", val=f"{val_loss[0]:.4g}")
        if epoch == start_epoch or (epoch + 1) % max(1, epochs // 20) == 0 or epoch + 1 == epochs:
            log.info(
                "%s: epoch %d/%d train %s val %s (%.1f s)",
                label,
                epoch + 1,
                epochs,
                " ".join(f"{v:.4g}" for v in train_loss),
                " ".join(f"{v:.4g}" for v in val_loss),
                seconds,
            )
        if epoch + 1 == epochs or time.perf_counter() - last_save >= checkpoint_every_s:
            rng = torch.get_rng_state()
            cuda_rng = {"cuda_rng": torch.cuda.get_rng_state()} if device.type == "cuda" else {}
            for r, rep in enumerate(repeats):
                _save_resume(
                    rep.out_dir / "last.pt",
                    {
                        "format": RESUME_FORMAT,
                        "fingerprint": rep.fingerprint,
                        "seed": rep.seed,
                        "epoch": epoch + 1,
                        "elapsed_s": seconds,
                        **_to_cpu(stack.slice(r)),
                        "adam": stack.adam_slice(r),
                        "best": _to_cpu(rep.best),
                        "curve": rep.curve,
                        "rng": rng,
                        **cuda_rng,
                    },
                )
            last_save = time.perf_counter()
        if callback is not None:
            callback(epoch + 1, [rep.curve for rep in repeats])
    bar.close()


# -- initialisation ----------------------------------------------------------------------------


@dataclass
class _Init:
    kind: str
    preprocessing: object
    state: dict | None = None
    info: dict = field(default_factory=dict)


def _resolve_init(spec: TrainSpec, patch_size: int) -> _Init:
    """Find the starting weights and the preprocessing before any work (missing weights stop here)."""
    from .weights import Preprocessing, find_imagenet_weights, load_imagenet_state_dict, sha256_of

    override = Preprocessing.from_name(spec.preprocessing) if spec.preprocessing else None
    if spec.init == "imagenet":
        source = find_imagenet_weights(spec.backbone, spec.imagenet_weights, spec.weights_dir)
        state = load_imagenet_state_dict(source)
        prep = override or source.preprocessing
        return _Init(
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
        return _Init(
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
    ckpt = _load_checkpoint(path)
    if ckpt.get("kind") != "patch" or ckpt["backbone"] != spec.backbone or ckpt["patch_size"] != patch_size:
        raise PetiqInputError(
            path,
            f"is a {ckpt.get('backbone')} model of {ckpt.get('patch_size')} px, not {spec.backbone} of {patch_size} px",
            "start from a pretext run with the same backbone and patches",
        )
    prep = override or Preprocessing.from_dict(ckpt["preprocessing"])
    return _Init(
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


def _init_identity(init: _Init) -> dict:
    """What the starting weights are, by checksum (not by path: moving a file does not change a run)."""
    if init.kind == "imagenet":
        return {"kind": "imagenet", "sha256": init.info["weights"]["sha256"], "prep": init.preprocessing.as_dict()}
    if init.kind == "pretext":
        return {"kind": "pretext", "sha256": init.info["pretext"]["sha256"], "prep": init.preprocessing.as_dict()}
    return {"kind": "random", "prep": init.preprocessing.as_dict()}


def _initial_model(spec: TrainSpec, init: _Init, seed: int, patch_size: int) -> PatchRegressor:
    model = build_model(
        spec.backbone, len(spec.targets), head=spec.head, patch_size=patch_size, seed=derive_seed(seed, "init")
    )
    if init.kind == "imagenet":
        load_backbone_state(model, init.state, init.info["weights"]["path"])
    elif init.kind == "pretext":
        load_blocks_state(model, init.state, init.info["pretext"]["path"])
    return set_freeze_level(model, spec.freeze_level)


# -- outputs -----------------------------------------------------------------------------------


def _versions() -> dict:
    import torchvision

    return {
        "petiq": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "python": platform.python_version(),
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def _prediction_tables(set_name: str, ps: PatchSet, pred: np.ndarray) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per patch and per image (mean and population SD over the image's patches)."""
    patches = pd.DataFrame(
        {"set": set_name, "participant_id": ps.participant_id, "dose": ps.dose, "patch_index": ps.patch_index}
    )
    for j, t in enumerate(ps.target_names):
        patches[f"target_{t}"] = ps.targets[:, j]
    for j, t in enumerate(ps.target_names):
        patches[f"pred_{t}"] = pred[:, j].astype(np.float64)
    grouped = patches.groupby(["participant_id", "dose"], sort=False)
    images = grouped[[f"target_{t}" for t in ps.target_names]].first()
    images.insert(0, "n_patches", grouped.size())
    for t in ps.target_names:
        images[f"pred_{t}"] = grouped[f"pred_{t}"].mean()
    for t in ps.target_names:
        images[f"sd_{t}"] = grouped[f"pred_{t}"].std(ddof=0)
    images = images.reset_index()
    images.insert(0, "set", set_name)
    return patches, images


def _metrics(patches: pd.DataFrame, images: pd.DataFrame, targets: Sequence[str]) -> dict:
    err_img = {t: images[f"pred_{t}"] - images[f"target_{t}"] for t in targets}
    err_patch = np.concatenate([(patches[f"pred_{t}"] - patches[f"target_{t}"]).to_numpy() for t in targets])
    return {
        "n_images": int(len(images)),
        "n_patches": int(len(patches)),
        "patch_mse": float(np.mean(err_patch**2)),
        "image_mse": {t: float(np.mean(e**2)) for t, e in err_img.items()},
        "image_mae": {t: float(np.mean(np.abs(e))) for t, e in err_img.items()},
    }


def _check_extra_card(extra: Mapping | None) -> None:
    clash = sorted(set(extra or {}) & CARD_KEYS)
    if clash:
        raise ValueError(f"extra_card may not replace the engine's keys {clash}")


def _merge_card(card: dict, extra: Mapping | None, out_dir: Path) -> dict:
    """The engine's provenance, the caller's keys, then the descriptive keys derived from both (schema-checked)."""
    assert set(card) <= CARD_KEYS, sorted(set(card) - CARD_KEYS)
    card = {**card, **dict(extra or {})}
    card = {**card_metadata(card, out_dir), **card}
    validate_card(card, out_dir / "card.json")
    return card


def _write_curve(out_dir: Path, curve: list[dict], best_epoch: int, title: str) -> pd.DataFrame:
    from ..plots.training import plot_training_curve

    frame = pd.DataFrame(curve, columns=["epoch", "train_loss", "val_loss", "seconds"])
    write_tsv(out_dir / "curve.tsv", frame)
    plot_training_curve(frame, out_dir / "curve.png", best_epoch=best_epoch, title=title)
    return frame


def _save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise PetiqInputError(
            path,
            f"not a readable petiq checkpoint ({type(error).__name__})",
            "train the run again (model.pt is written by petiq's training rules)",
        ) from error
    if not isinstance(ckpt, dict) or ckpt.get("format") != MODEL_FORMAT:
        raise PetiqInputError(path, "is not a petiq model checkpoint", "give the model.pt of a petiq training run")
    return ckpt


# -- public API --------------------------------------------------------------------------------


def _check_sets(spec: TrainSpec, sets: Mapping[str, PatchSet], seeds: Sequence[int], out_dirs: Sequence) -> int:
    if len(seeds) == 0 or len(seeds) != len(out_dirs):
        raise PetiqInputError(
            None, f"{len(seeds)} seeds for {len(out_dirs)} output folders", "give one seed per repeat folder"
        )
    if len({str(Path(d).resolve()) for d in out_dirs}) != len(out_dirs):
        raise PetiqInputError(None, "two repeats share an output folder", "give each repeat its own folder")
    sizes = {name: ps.patch_size for name, ps in sets.items()}
    for name, ps in sets.items():
        if len(ps) == 0:
            raise PetiqInputError(None, f"the {name} set has no patches", f"give the {name} role at least one image")
        if ps.target_names != spec.targets:
            raise PetiqInputError(
                None,
                f"the {name} set has targets {ps.target_names}, the run wants {spec.targets}",
                "load the patch sets with the run's targets",
            )
        if not np.isfinite(ps.targets).all() or not np.isfinite(ps.patches).all():
            raise PetiqInputError(None, f"the {name} set holds NaN or infinite values", "check the patches and scores")
    if len(set(sizes.values())) > 1:
        raise PetiqInputError(None, f"patch sizes differ between sets: {sizes}", "use one patch size for a run")
    return next(iter(sizes.values()))


def _plan_cache(spec: TrainSpec, feature_numel: int, n_patches: int, copies: int) -> str:
    """``fp32``, ``bf16`` or ``off`` for the frozen-block cache, within ``spec.cache_max_gb``."""
    if spec.freeze_level == N_BLOCKS or not spec.cache_frozen:
        return "off"
    need = feature_numel * n_patches * copies * 4 / 1e9
    if need <= spec.cache_max_gb:
        return "fp32"
    if need / 2 <= spec.cache_max_gb:
        log.warning(
            "the frozen-block cache needs %.2f GB in fp32, over cache_max_gb = %.2f: storing it in bf16 "
            "(%.2f GB); results differ slightly from the fp32 plain loop",
            need,
            spec.cache_max_gb,
            need / 2,
        )
        return "bf16"
    log.warning(
        "the frozen-block cache would need %.2f GB even in bf16, over cache_max_gb = %.2f: recomputing the "
        "frozen blocks every step (slower; raise cache_max_gb to cache)",
        need / 2,
        spec.cache_max_gb,
    )
    return "off"


def train_repeats(
    spec: TrainSpec,
    train: PatchSet,
    val: PatchSet,
    evaluate_sets: Mapping[str, PatchSet],
    seeds: Sequence[int],
    out_dirs: Sequence[str | Path],
    extra_card: Mapping | None = None,
    progress: bool = True,
    callback: Callable[[int, list[list[dict]]], None] | None = None,
) -> list[dict]:
    """Train one configuration's repeats (one seed and output folder each); return their model cards.

    ``callback(epoch, curves)`` is called after every epoch (after any resume state is written).
    """
    evaluate_sets = dict(evaluate_sets)
    if "val" in evaluate_sets:
        raise PetiqInputError(
            None, "an evaluation set is called 'val'", "the validation set is always written; rename it"
        )
    patch_size = _check_sets(spec, {"train": train, "val": val, **evaluate_sets}, seeds, out_dirs)
    _check_extra_card(extra_card)
    out_dirs = [Path(d) for d in out_dirs]
    progress = progress and sys.stderr.isatty()
    init = _resolve_init(spec, patch_size)  # missing weights: the error comes before any work
    device = resolve_device(spec.device)
    precision = resolve_precision(spec.precision, device, spec.freeze_level)
    compute = _Compute.make(device, precision, spec.freeze_level)
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "spec": {k: v for k, v in spec.as_dict().items() if k not in RESUME_FREE},
                "init": _init_identity(init),
                "train": train.fingerprint(),
                "val": val.fingerprint(),
            },
            sort_keys=True,
            default=str,
        ).encode()
    ).hexdigest()
    resume = []
    for seed, out_dir in zip(seeds, out_dirs):
        out_dir.mkdir(parents=True, exist_ok=True)
        state = _read_resume(out_dir / "last.pt", _repeat_fingerprint(fingerprint, seed))
        resume.append(state)
    stack_size = spec.stack or (len(seeds) if device.type == "cuda" else 1)
    # repeats at different resume epochs (a crash between two last.pt writes) train in separate stacks
    by_epoch: dict[int, list[int]] = {}
    for i, state in enumerate(resume):
        by_epoch.setdefault(0 if state is None else int(state["epoch"]), []).append(i)
    chunks = [ids[j : j + stack_size] for ids in by_epoch.values() for j in range(0, len(ids), stack_size)]

    cut = N_BLOCKS - spec.freeze_level
    shared_front = init.kind != "random"
    probe = build_model(spec.backbone, len(spec.targets), spec.head, patch_size, device="meta")
    feat_numel = 0
    if cut > 0:
        x = torch.zeros(1, 3, patch_size, patch_size, device="meta")
        for block in probe.blocks[:cut]:
            x = block(x)
        feat_numel = int(x[0].numel())
    copies = 1 if shared_front else min(stack_size, len(seeds))
    cache_mode = _plan_cache(spec, feat_numel, len(train) + len(val), copies)
    log.info(
        "%d repeat(s) of %s, init %s, freeze level %d (%d frozen blocks), %s head, targets %s on %s, %s, "
        "frozen-block cache %s, stacks of %d; %d train / %d val patches of %d px, %d epochs",
        len(seeds),
        spec.backbone,
        init.kind,
        spec.freeze_level,
        cut,
        spec.head,
        ",".join(spec.targets),
        _device_name(device),
        precision,
        cache_mode,
        stack_size,
        len(train),
        len(val),
        patch_size,
        spec.epochs,
    )

    raw_train = torch.from_numpy(np.ascontiguousarray(train.patches)).to(device)
    raw_val = torch.from_numpy(np.ascontiguousarray(val.patches)).to(device)
    y_train = torch.from_numpy(train.targets).to(device)
    y_val = torch.from_numpy(val.targets).to(device)
    cache_dtype = torch.bfloat16 if cache_mode == "bf16" else torch.float32
    shared_cache: dict[str, torch.Tensor] = {}
    cards: list[dict | None] = [None] * len(seeds)
    with _deterministic(device, derive_seed(seeds[0], "torch")):
        for chunk in chunks:
            t_start = time.perf_counter()
            torch.manual_seed(derive_seed(seeds[chunk[0]], "torch"))  # dropout-like randomness, per stack
            models = [_initial_model(spec, init, seeds[i], patch_size).to(device) for i in chunk]
            fronts = [_Front(m, cut).eval() for m in models]
            if cache_mode == "off":
                use = [] if cut == 0 else fronts[:1] if shared_front else fronts
                train_in, val_in = (
                    _Inputs(raw=raw, prep=init.preprocessing, fronts=use, compute=compute)
                    for raw in (raw_train, raw_val)
                )
            elif shared_front:  # one cache for all repeats, kept for the next stacks
                for name, raw in (("train", raw_train), ("val", raw_val)):
                    if name not in shared_cache:
                        shared_cache[name] = _compute_features(
                            fronts[0], raw, init.preprocessing, cache_dtype, 64, progress, f"frozen blocks ({name})"
                        )
                train_in, val_in = _Inputs(cache=shared_cache["train"]), _Inputs(cache=shared_cache["val"])
            else:  # random frozen blocks differ between repeats: one cache each
                train_in, val_in = (
                    _Inputs(
                        cache=torch.stack(
                            [
                                _compute_features(
                                    f, raw, init.preprocessing, cache_dtype, 64, progress, "frozen blocks"
                                )
                                for f in fronts
                            ]
                        ),
                        per_repeat=True,
                    )
                    for raw in (raw_train, raw_val)
                )
            stack = _Stack([_Tail(m, cut) for m in models], compute, spec.learning_rate, spec.adam_eps)
            repeats = [_Repeat(seeds[i], out_dirs[i], _repeat_fingerprint(fingerprint, seeds[i])) for i in chunk]
            label = f"{spec.backbone} k={spec.freeze_level} seed(s) {','.join(str(seeds[i]) for i in chunk)}"
            states = [resume[i] for i in chunk]
            _fit(
                stack,
                repeats,
                train_in,
                y_train,
                val_in,
                y_val,
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                eval_batch_size=spec.eval_batch_size,
                resume=states if states[0] is not None else None,
                checkpoint_every_s=spec.checkpoint_every_s,
                progress=progress,
                label=label,
                callback=callback,
            )
            train_seconds = time.perf_counter() - t_start
            engine = {
                "device": str(device),
                "device_name": _device_name(device),
                "precision": precision,
                "memory_format": "channels_last" if compute.channels_last and len(chunk) == 1 else "contiguous",
                "frozen_cache": cache_mode,
                "stacked_repeats": len(chunk),
                "deterministic": True,
                "stacked_randomness": stack.randomness if len(chunk) > 1 else None,
                "session_seconds": round(train_seconds, 2),
            }
            for r, i in enumerate(chunk):
                cards[i] = _finish_patch_run(
                    spec, init, models[r], cut, repeats[r], i, val, evaluate_sets, train, engine, extra_card, device
                )
            del stack, train_in, val_in, models, fronts
    _drop_resume_states(spec, out_dirs)
    return cards


def _training_info(spec: TrainSpec) -> dict:
    return {
        "optimizer": "Adam",
        "learning_rate": spec.learning_rate,
        "betas": list(ADAM_BETAS),
        "eps": spec.adam_eps,
        "loss": "MSE, mean over the batch's patches and outputs",
        "batch_size": spec.batch_size,
        "epochs": spec.epochs,
        "shuffle": "every epoch, a permutation seeded from (seed, 'shuffle', epoch)",
        "checkpoint": "the epoch with the lowest validation loss (MSE over all validation patches)",
    }


def _finish_run(
    out_dir: Path,
    rep: _Repeat,
    title: str,
    sets: Mapping[str, PatchSet],
    predict: Callable,
    checkpoint: dict,
    card: dict,
    extra_card: Mapping | None,
) -> dict:
    """Write curve, predictions, model.pt and card.json of one finished repeat (each file atomically)."""
    curve = _write_curve(out_dir, rep.curve, rep.best["epoch"], title)
    patch_tables, image_tables, metrics = [], [], {}
    for name, ps in sets.items():
        patches, images = _prediction_tables(name, ps, predict(ps))
        patch_tables.append(patches)
        image_tables.append(images)
        metrics[name] = _metrics(patches, images, ps.target_names)
    write_tsv(out_dir / "predictions_patches.tsv", pd.concat(patch_tables, ignore_index=True))
    write_tsv(out_dir / "predictions_images.tsv", pd.concat(image_tables, ignore_index=True))
    card = _merge_card(
        {
            **card,
            "epochs_run": int(curve["epoch"].max()),
            "best_epoch": int(rep.best["epoch"]),
            "best_val_loss": float(rep.best["val_loss"]),
            "final_train_loss": float(curve["train_loss"].iloc[-1]),
            "resumed_from_epoch": rep.resumed_from,
            "training_seconds": float(curve["seconds"].iloc[-1]),
            "versions": _versions(),
            "metrics": metrics,
        },
        extra_card,
        out_dir,
    )
    _save_checkpoint(out_dir / "model.pt", checkpoint)  # after the card passed its schema
    write_json(out_dir / "card.json", card)
    return card


def _drop_resume_states(spec: TrainSpec, out_dirs: Sequence[Path]) -> None:
    """Once every repeat's outputs are written (a crash before leaves each repeat resumable)."""
    if not spec.keep_resume_state:
        for d in out_dirs:
            (d / "last.pt").unlink(missing_ok=True)


def _finish_patch_run(
    spec: TrainSpec,
    init: _Init,
    model: PatchRegressor,
    cut: int,
    rep: _Repeat,
    index: int,
    val: PatchSet,
    evaluate_sets: Mapping[str, PatchSet],
    train: PatchSet,
    engine: dict,
    extra_card: Mapping | None,
    device: torch.device,
) -> dict:
    state = model.state_dict()
    state.update(rep.best["params"])
    state.update(rep.best["buffers"])
    model.load_state_dict(state)
    model.eval()
    prep = init.preprocessing
    sets = {"val": val, **evaluate_sets}
    blocks = describe_blocks(model, spec.freeze_level)
    checkpoint = {
        "format": MODEL_FORMAT,
        "kind": "patch",
        **model.describe(),
        "targets": list(spec.targets),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "preprocessing": prep.as_dict(),
        "spec": spec.as_dict(),
        "init": init.info,
        "seed": int(rep.seed),
        "best_epoch": int(rep.best["epoch"]),
        "best_val_loss": float(rep.best["val_loss"]),
    }
    card = {
        "kind": "patch_regressor",
        "backbone": spec.backbone,
        "patch_size": model.patch_size,
        "targets": list(spec.targets),
        "n_outputs": model.n_outputs,
        "head": spec.head,
        "head_note": HEAD_NOTE[spec.head],
        "init": init.info,
        "weights_origin": init.info["weights_origin"],
        "preprocessing": prep.as_dict(),
        "freeze_level": spec.freeze_level,
        "trained_blocks": [i + 1 for i in range(cut, N_BLOCKS)],
        "blocks": blocks,
        "n_params": {
            "total": sum(b["n_params"] for b in blocks),
            "trained": sum(b["n_params"] for b in blocks if b["trained"]),
        },
        "training": _training_info(spec),
        "seed": int(rep.seed),
        "repeat": index,
        "data": {"train": train.describe(), **{k: v.describe() for k, v in sets.items()}},
        "engine": engine,
    }
    title = f"{spec.backbone}, freeze level {spec.freeze_level}, {init.kind} init, seed {rep.seed}"
    return _finish_run(
        rep.out_dir,
        rep,
        title,
        sets,
        lambda ps: predict_patches(model, ps.patches, prep, device, spec.eval_batch_size),
        checkpoint,
        card,
        extra_card,
    )


def predict_patches(
    model: PatchRegressor, patches: np.ndarray, preprocessing, device: str | torch.device = "cpu", batch_size: int = 100
) -> np.ndarray:
    """Predictions (N, T) float32 for 0–1 grey patches (N, H, W), in fp32 and eval mode."""
    patches = np.asarray(patches)
    if patches.ndim != 3 or patches.shape[1:] != (model.patch_size, model.patch_size):
        raise PetiqInputError(
            None,
            f"patches of shape {patches.shape}, the model takes N × {model.patch_size} × {model.patch_size}",
            f"extract {model.patch_size} px patches",
        )
    device = resolve_device(device) if str(device) in ("auto", "cuda") else torch.device(device)
    was_training = model.training
    model.to(device).eval()
    out = [np.zeros((0, model.n_outputs), np.float32)]
    try:
        with torch.no_grad():
            for start in range(0, len(patches), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(patches[start : start + batch_size])).to(device)
                out.append(model(apply_preprocessing(preprocessing, x)).float().cpu().numpy())
    finally:
        model.train(was_training)
    return np.concatenate(out)


def load_run(run_dir: str | Path) -> tuple[nn.Module, dict, object]:
    """A finished run's best model (eval mode, CPU), its card and its preprocessing (None for the dose baseline)."""
    from .weights import Preprocessing

    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise PetiqInputError(path, "the run has no model.pt", "give the folder of a finished training run")
    ckpt = _load_checkpoint(path)
    card_path = run_dir / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if ckpt["kind"] == "dose_baseline":
        model = _baseline_module(len(ckpt["targets"]), ckpt["head"], seed=0)
        model.load_state_dict(ckpt["state_dict"])
        return model.eval(), card, None
    model = build_model(ckpt["backbone"], ckpt["n_outputs"], ckpt["head"], ckpt["patch_size"], device="meta")
    model.load_state_dict(ckpt["state_dict"], assign=True)
    set_freeze_level(model, int(ckpt["freeze_level"]))
    return model.eval(), card, Preprocessing.from_dict(ckpt["preprocessing"])


# -- Table III baseline: dose per kg → scores --------------------------------------------------


def _baseline_module(n_outputs: int, head: str, seed: int) -> nn.Sequential:
    """One fully connected layer from dose/kg to the scores (Keras init: Glorot-uniform, zero bias)."""
    layers: list[nn.Module] = [nn.Linear(1, n_outputs)]
    if head == "relu":
        layers.append(nn.ReLU())
    module = nn.Sequential(*layers)
    generator = torch.Generator().manual_seed(int(seed))
    nn.init.xavier_uniform_(module[0].weight, generator=generator)
    nn.init.zeros_(module[0].bias)
    return module


def dose_set(table: pd.DataFrame, targets: Sequence[str], name: str = "table") -> PatchSet:
    """Images (participant_id, dose, dose_per_kg, targets) as a set of 1 × 1 "patches" holding dose/kg."""
    needed = ["participant_id", "dose", "dose_per_kg", *targets]
    missing = [c for c in needed if c not in table.columns]
    if missing:
        raise PetiqInputError(None, f"the {name} table lacks columns {missing}", f"give {', '.join(needed)}")
    values = table[["dose_per_kg", *targets]].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    if len(table) == 0 or not np.isfinite(values).all():
        raise PetiqInputError(
            None,
            f"the {name} table is empty or has missing/non-numeric values",
            "give every image its dose per kg and scores",
        )
    n = len(table)
    return PatchSet(
        values[:, 0].astype(np.float32).reshape(n, 1, 1),
        values[:, 1:].astype(np.float32),
        tuple(targets),
        table["participant_id"].astype(str).to_numpy(),
        table["dose"].to_numpy(np.float64),
        np.zeros(n, np.int64),
    )


def train_dose_baseline(
    spec: TrainSpec,
    train: pd.DataFrame,
    val: pd.DataFrame,
    evaluate_sets: Mapping[str, pd.DataFrame],
    seeds: Sequence[int],
    out_dirs: Sequence[str | Path],
    extra_card: Mapping | None = None,
    progress: bool = True,
    callback: Callable[[int, list[list[dict]]], None] | None = None,
) -> list[dict]:
    """Table III's baseline: Linear(1 → scores) on dose per kg, per image, with the same loop and outputs.

    Tables: one row per image with ``participant_id, dose, dose_per_kg`` and the targets. Of ``spec``
    it uses targets, head, learning rate, epochs, batch size, device and the checkpoint settings; the
    input is not standardised (as in the paper). Outputs as :func:`train_repeats`' (n_patches = 1).
    """
    sets = {
        "train": dose_set(train, spec.targets, "train"),
        "val": dose_set(val, spec.targets, "val"),
        **{k: dose_set(v, spec.targets, k) for k, v in evaluate_sets.items()},
    }
    if "val" in evaluate_sets:
        raise PetiqInputError(
            None, "an evaluation set is called 'val'", "the validation set is always written; rename it"
        )
    _check_sets(spec, sets, seeds, out_dirs)
    _check_extra_card(extra_card)
    out_dirs = [Path(d) for d in out_dirs]
    progress = progress and sys.stderr.isatty()
    device = resolve_device(spec.device)
    compute = _Compute.make(device, "fp32")
    keys = ("targets", "head", "learning_rate", "batch_size", "adam_eps")
    fingerprint = hashlib.sha256(
        json.dumps(
            {
                "baseline": {k: spec.as_dict()[k] for k in keys},
                "train": sets["train"].fingerprint(),
                "val": sets["val"].fingerprint(),
            },
            sort_keys=True,
        ).encode()
    ).hexdigest()
    x = {k: torch.from_numpy(v.patches.reshape(-1, 1)).to(device) for k, v in sets.items()}
    y = {k: torch.from_numpy(v.targets).to(device) for k, v in sets.items()}
    cards = []
    with _deterministic(device, derive_seed(seeds[0], "torch")):
        for i, (seed, out_dir) in enumerate(zip(seeds, out_dirs)):  # a tiny model: stacking gains nothing
            out_dir.mkdir(parents=True, exist_ok=True)
            rep = _Repeat(seed, out_dir, _repeat_fingerprint(fingerprint, seed))
            state = _read_resume(out_dir / "last.pt", rep.fingerprint)
            module = _baseline_module(len(spec.targets), spec.head, derive_seed(seed, "init")).to(device)
            stack = _Stack([module], compute, spec.learning_rate, spec.adam_eps)
            _fit(
                stack,
                [rep],
                _Inputs(cache=x["train"]),
                y["train"],
                _Inputs(cache=x["val"]),
                y["val"],
                epochs=spec.epochs,
                batch_size=spec.batch_size,
                eval_batch_size=spec.eval_batch_size,
                resume=[state] if state is not None else None,
                checkpoint_every_s=spec.checkpoint_every_s,
                progress=progress,
                label=f"dose baseline seed {seed}",
                callback=callback,
            )
            best = rep.best
            module.load_state_dict({**best["params"], **best["buffers"]})
            module.eval()

            def predict(ps: PatchSet, module=module) -> np.ndarray:
                with torch.no_grad():
                    return module(torch.from_numpy(ps.patches.reshape(-1, 1)).to(device)).float().cpu().numpy()

            checkpoint = {
                "format": MODEL_FORMAT,
                "kind": "dose_baseline",
                "n_outputs": len(spec.targets),
                "head": spec.head,
                "targets": list(spec.targets),
                "input": "dose_per_kg",
                "state_dict": {k: v.detach().cpu() for k, v in module.state_dict().items()},
                "spec": spec.as_dict(),
                "seed": int(seed),
                "best_epoch": int(best["epoch"]),
                "best_val_loss": float(best["val_loss"]),
            }
            card = {
                "kind": "dose_baseline",
                "model": f"Linear 1→{len(spec.targets)}" + (" + ReLU" if spec.head == "relu" else ""),
                "input": "dose_per_kg: injected MBq × dose fraction / body weight (kg), per image, not standardised",
                "targets": list(spec.targets),
                "head": spec.head,
                "head_note": HEAD_NOTE[spec.head],
                "training": _training_info(spec),
                "seed": int(seed),
                "repeat": i,
                "data": {k: v.describe() for k, v in sets.items()},
                "engine": {
                    "device": str(device),
                    "device_name": _device_name(device),
                    "precision": "fp32",
                    "deterministic": True,
                },
            }
            eval_sets = {k: v for k, v in sets.items() if k != "train"}
            cards.append(
                _finish_run(
                    out_dir,
                    rep,
                    f"dose/kg baseline, lr {spec.learning_rate:g}, seed {seed}",
                    eval_sets,
                    predict,
                    checkpoint,
                    card,
                    extra_card,
                )
            )
    _drop_resume_states(spec, out_dirs)
    return cards

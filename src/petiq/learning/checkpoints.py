"""Checkpoints and resume states: ``model.pt`` (the best epoch) and ``last.pt`` (to resume), read back
only when their format and fingerprint match; :func:`load_run` for prediction."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path
from .models import (
    build_model,
    set_freeze_level,
)
from .spec import MODEL_FORMAT, RESUME_FORMAT, TrainSpec


@dataclass
class Repeat:
    """One repeat's progress: best state (lowest validation loss), curve, resume bookkeeping."""

    seed: int
    out_dir: Path
    fingerprint: str = ""
    curve: list[dict] = field(default_factory=list)
    best: dict | None = None
    resumed_from: int | None = None


def to_cpu(state: dict) -> dict:
    return {
        k: (to_cpu(v) if isinstance(v, dict) else v.cpu() if isinstance(v, torch.Tensor) else v)
        for k, v in state.items()
    }


def save_resume(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def repeat_fingerprint(fingerprint: str, seed: int) -> str:
    return hashlib.sha256(f"{fingerprint}\x1f{int(seed)}".encode()).hexdigest()


def read_resume(path: Path, fingerprint: str) -> dict | None:
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


def save_checkpoint(path: Path, payload: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> dict:
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


def drop_resume_states(spec: TrainSpec, out_dirs: Sequence[Path]) -> None:
    """Once every repeat's outputs are written (a crash before leaves each repeat resumable)."""
    if not spec.keep_resume_state:
        for d in out_dirs:
            (d / "last.pt").unlink(missing_ok=True)


def load_run(run_dir: str | Path) -> tuple[nn.Module, dict, object]:
    """A finished run's best model (eval mode, CPU), its card and its preprocessing (None for the dose baseline)."""
    from .weights import Preprocessing

    run_dir = Path(run_dir)
    path = run_dir / "model.pt"
    if not path.is_file():
        raise PetiqInputError(path, "the run has no model.pt", "give the folder of a finished training run")
    ckpt = load_checkpoint(path)
    card_path = run_dir / "card.json"
    card = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if ckpt["kind"] == "dose_baseline":
        from .baseline import baseline_module  # the baseline's module (baseline imports this module)

        model = baseline_module(len(ckpt["targets"]), ckpt["head"], seed=0)
        model.load_state_dict(ckpt["state_dict"])
        return model.eval(), card, None
    model = build_model(ckpt["backbone"], ckpt["n_outputs"], ckpt["head"], ckpt["patch_size"], device="meta")
    model.load_state_dict(ckpt["state_dict"], assign=True)
    set_freeze_level(model, int(ckpt["freeze_level"]))
    return model.eval(), card, Preprocessing.from_dict(ckpt["preprocessing"])

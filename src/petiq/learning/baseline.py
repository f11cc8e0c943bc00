"""The dose-only baseline: a one-input network from dose per kg to the scores (how much of each score
dose alone explains)."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from ..core.errors import PetiqInputError
from ..core.seeding import derive_seed
from .checkpoints import Repeat, drop_resume_states, read_resume, repeat_fingerprint
from .data import PatchSet
from .models import (
    HEAD_NOTE,
)
from .outputs import check_extra_card, finish_run, training_info
from .precision import Compute, deterministic, device_name, resolve_device
from .spec import MODEL_FORMAT, TrainSpec
from .stack import Inputs, Stack
from .train import check_sets, fit


def baseline_module(n_outputs: int, head: str, seed: int) -> nn.Sequential:
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
    check_sets(spec, sets, seeds, out_dirs)
    check_extra_card(extra_card)
    out_dirs = [Path(d) for d in out_dirs]
    progress = progress and sys.stderr.isatty()
    device = resolve_device(spec.device)
    compute = Compute.make(device, "fp32")
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
    with deterministic(device, derive_seed(seeds[0], "torch")):
        for i, (seed, out_dir) in enumerate(zip(seeds, out_dirs)):  # a tiny model: stacking gains nothing
            out_dir.mkdir(parents=True, exist_ok=True)
            rep = Repeat(seed, out_dir, repeat_fingerprint(fingerprint, seed))
            state = read_resume(out_dir / "last.pt", rep.fingerprint)
            module = baseline_module(len(spec.targets), spec.head, derive_seed(seed, "init")).to(device)
            stack = Stack([module], compute, spec.learning_rate, spec.adam_eps)
            fit(
                stack,
                [rep],
                Inputs(cache=x["train"]),
                y["train"],
                Inputs(cache=x["val"]),
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
                "training": training_info(spec),
                "seed": int(seed),
                "repeat": i,
                "data": {k: v.describe() for k, v in sets.items()},
                "engine": {
                    "device": str(device),
                    "device_name": device_name(device),
                    "precision": "fp32",
                    "deterministic": True,
                },
            }
            eval_sets = {k: v for k, v in sets.items() if k != "train"}
            cards.append(
                finish_run(
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
    drop_resume_states(spec, out_dirs)
    return cards

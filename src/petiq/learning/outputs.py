"""What a finished run writes beside its checkpoint: predictions per patch and per image, metrics,
the learning curve and the model card."""

from __future__ import annotations

import platform
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import __version__
from ..core.errors import PetiqInputError
from ..core.fileio import write_json, write_tsv
from .card import card_metadata, validate_card
from .checkpoints import Repeat, save_checkpoint
from .data import PatchSet, apply_preprocessing
from .initialisation import Init
from .models import (
    HEAD_NOTE,
    N_BLOCKS,
    PatchRegressor,
    describe_blocks,
)
from .precision import resolve_device
from .spec import ADAM_BETAS, CARD_KEYS, MODEL_FORMAT, TrainSpec


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


def check_extra_card(extra: Mapping | None) -> None:
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


def training_info(spec: TrainSpec) -> dict:
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


def finish_run(
    out_dir: Path,
    rep: Repeat,
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
    save_checkpoint(out_dir / "model.pt", checkpoint)  # after the card passed its schema
    write_json(out_dir / "card.json", card)
    return card


def finish_patch_run(
    spec: TrainSpec,
    init: Init,
    model: PatchRegressor,
    cut: int,
    rep: Repeat,
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
        "training": training_info(spec),
        "seed": int(rep.seed),
        "repeat": index,
        "data": {"train": train.describe(), **{k: v.describe() for k, v in sets.items()}},
        "engine": engine,
    }
    title = f"{spec.backbone}, freeze level {spec.freeze_level}, {init.kind} init, seed {rep.seed}"
    return finish_run(
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

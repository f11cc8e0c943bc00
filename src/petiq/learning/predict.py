"""Scoring new reconstructions with a trained model (``petiq predict``).

An image is treated exactly as the training images were: resampled (linear) to the model's voxel size, divided by
its maximum (petiq's ``desc-norm01`` images are the reconstruction over its maximum, at the reconstruction grid),
cut into patches by the paper's rule with the model card's patch settings (size, candidates, per plane, background
threshold), and every patch predicted. The image's score is the mean over its patches; ``sd_<score>`` is the SD
over the patches (ddof 0, as in the training engine's ``predictions_images.tsv``).

Every image is checked before any model is loaded: it exists, is a 3-D NIfTI, holds only finite values and has a
brain (voxels above one eighth of the image mean, the paper's background rule).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ..core.errors import PetiqInputError
from ..core.fileio import write_tsv
from ..core.seeding import derive_seed

NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
DEFAULT_TARGETS = {3: ("GQR", "PR", "DC"), 1: ("dose_per_kg",)}


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error.

    >>> resolve_device("cpu")
    'cpu'
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not str(device).startswith("cuda:"):
        raise PetiqInputError(None, f"unknown device {device!r}", "use cpu, cuda or auto")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PetiqInputError(None, "device cuda asked for, but torch sees no GPU", "use --device cpu (or auto)")
    return str(device)


def model_dir(run_dir: str | Path) -> Path:
    """The folder holding ``model.pt``: ``run_dir`` itself, or its ``rep-<r>`` with the lowest best validation loss."""
    from ..evaluation.metrics import read_card

    run_dir = Path(run_dir)
    if (run_dir / "model.pt").is_file():
        return run_dir
    reps = sorted((p for p in run_dir.glob("rep-*") if (p / "model.pt").is_file()), key=lambda p: p.name)
    if not reps:
        raise PetiqInputError(
            run_dir,
            "no model.pt here nor in rep-*/ folders",
            "train the run first, or give results/models/<run> (or one of its rep-<r> folders)",
        )

    def loss(rep: Path) -> tuple[float, str]:
        value = read_card(rep).get("best_val_loss")
        return (float(value) if value is not None and np.isfinite(float(value)) else float("inf"), rep.name)

    return min(reps, key=loss)


def patch_settings(card: dict, source: str | Path | None = None) -> dict:
    """The model card's patch settings: size, voxel_size_mm, candidates, per_plane, threshold_fraction, dtype."""
    patch = card.get("patch") or card.get("patches")
    if not isinstance(patch, dict):
        raise PetiqInputError(
            source, "the model card has no patch settings", "retrain the model with petiq (its card records them)"
        )
    missing = [k for k in ("size", "voxel_size_mm", "candidates", "per_plane") if k not in patch]
    if missing:
        raise PetiqInputError(source, f"the model card's patch settings lack {missing}", "retrain the model with petiq")
    voxel = np.broadcast_to(np.asarray(patch["voxel_size_mm"], dtype=float), (3,))
    if not (np.isfinite(voxel).all() and (voxel > 0).all()):
        raise PetiqInputError(
            source, f"voxel_size_mm {patch['voxel_size_mm']!r} in the model card", "retrain the model with petiq"
        )
    return {
        "size": int(patch["size"]),
        "voxel_size_mm": tuple(float(v) for v in voxel),
        "candidates": int(patch["candidates"]),
        "per_plane": int(patch["per_plane"]),
        "threshold_fraction": float(patch.get("threshold_fraction", patch.get("threshold", 0.125))),
        "dtype": str(patch.get("dtype", "float32")),
    }


def check_image(path: str | Path) -> nib.Nifti1Image:
    """Open an image to score, or raise :class:`PetiqInputError` naming the file, the problem and the fix."""
    from .patches import load_volume

    img = load_volume(path)  # exists, readable NIfTI, 3-D (a single-frame 4-D image is accepted)
    zooms = np.asarray(img.header.get_zooms()[:3], dtype=float)
    if not (np.isfinite(zooms).all() and (zooms > 0).all()):
        raise PetiqInputError(
            path, f"voxel sizes {zooms.tolist()} mm in the header", "give an image whose header holds its voxel sizes"
        )
    data = np.asarray(img.dataobj, dtype=np.float32)
    if data.size == 0:
        raise PetiqInputError(path, f"the image has no voxels (shape {data.shape})", "give a reconstructed 3-D volume")
    bad = int((~np.isfinite(data)).sum())
    if bad:
        raise PetiqInputError(
            path, f"{bad} voxel(s) are NaN or infinite", "fix the reconstruction (or replace them by 0) and score again"
        )
    peak, mean = float(data.max()), float(data.mean(dtype=np.float64))
    if not peak > 0 or not mean > 0:
        raise PetiqInputError(
            path, f"the image is empty (maximum {peak:g}, mean {mean:g})", "give a PET reconstruction with activity"
        )
    if float(data.min()) == peak:  # every voxel passes the 1/8-mean rule: nothing tells brain from background
        raise PetiqInputError(
            path, f"the image is constant ({peak:g}): no brain against a background", "give a PET reconstruction"
        )
    return img


def _predict_one(
    path: Path, img: nib.Nifti1Image, model, preprocessing, settings: dict, device: str, seed: int, batch_size: int
) -> tuple[np.ndarray, np.ndarray, dict]:
    from .outputs import predict_patches
    from .patches import extract_patches, resample_to_voxel_size

    volume = resample_to_voxel_size(img, settings["voxel_size_mm"])
    peak = float(volume.max())
    if not peak > 0:
        raise PetiqInputError(path, "the image is empty after resampling", "give a PET reconstruction with activity")
    volume = (volume / peak).astype(np.float32)  # as the desc-norm01 images the model was trained on
    patches, _ = extract_patches(
        volume,
        size=settings["size"],
        candidates=settings["candidates"],
        per_plane=settings["per_plane"],
        threshold_fraction=settings["threshold_fraction"],
        seed=derive_seed(seed, "predict", path.name),
        dtype=settings["dtype"],
        source=path,
    )
    pred = np.asarray(predict_patches(model, patches, preprocessing, device, batch_size), dtype=np.float64)
    if pred.ndim == 1:
        pred = pred[:, None]
    facts = {
        "shape": "x".join(map(str, volume.shape)),
        "source_shape": "x".join(map(str, img.shape[:3])),
        "source_voxel_size_mm": "x".join(f"{z:.4g}" for z in img.header.get_zooms()[:3]),
    }
    return pred.mean(axis=0), pred.std(axis=0), {**facts, "n_patches": int(pred.shape[0])}


def predict_images(
    run_dir: str | Path,
    image_paths: Sequence[str | Path],
    *,
    device: str = "cpu",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Score reconstructions with a trained run: one row per image with each score's patch mean and SD.

    Columns: image, <scores> (GQR, PR, DC for a clinical-score model), sd_<score>…, n_patches, voxel_size_mm (the
    model's, which the image was resampled to), shape, source_voxel_size_mm, source_shape, model. ``run_dir`` is a
    run's ``rep-<r>`` folder, or the run folder (then the repeat with the lowest best validation loss is used).
    Patches are drawn with seed ``derive_seed(seed, "predict", <file name>)``.
    """
    from tqdm import tqdm

    paths = [Path(p) for p in image_paths]
    if not paths:
        raise PetiqInputError(None, "no images to score", "name one or more NIfTI reconstructions")
    images = [check_image(p) for p in paths]  # every image checked before any work
    where = model_dir(run_dir)
    from ..evaluation.metrics import read_card

    card = read_card(where)
    if card.get("kind", "patch_regressor") != "patch_regressor":
        raise PetiqInputError(
            where,
            f"this run is a {card['kind']} model, which does not read images",
            "give a run trained on image patches (e.g. pipeline b)",
        )
    settings = patch_settings(card, where / "card.json")
    device = resolve_device(device)
    from .checkpoints import load_run

    model, card, preprocessing = load_run(where)
    rows = []
    bar = tqdm(
        list(zip(paths, images)), desc="scoring images", unit="image", disable=not progress or not sys.stderr.isatty()
    )
    for path, img in bar:
        mean, sd, facts = _predict_one(path, img, model, preprocessing, settings, device, seed, batch_size)
        targets = _targets(card, mean.size, where)
        row = {"image": str(path)}
        row.update({t: float(v) for t, v in zip(targets, mean)})
        row.update({f"sd_{t}": float(v) for t, v in zip(targets, sd)})
        row.update(
            {
                "n_patches": facts["n_patches"],
                "voxel_size_mm": "x".join(f"{v:.4g}" for v in settings["voxel_size_mm"]),
                "shape": facts["shape"],
                "source_voxel_size_mm": facts["source_voxel_size_mm"],
                "source_shape": facts["source_shape"],
                "model": str(where),
            }
        )
        rows.append(row)
    return pd.DataFrame(rows)


def _targets(card: dict, n: int, where: Path) -> tuple[str, ...]:
    spec = card.get("spec") if isinstance(card.get("spec"), dict) else {}
    targets = card.get("targets", spec.get("targets"))
    if targets is None:
        targets = DEFAULT_TARGETS.get(n)
    targets = tuple(str(t) for t in (targets or ()))
    if len(targets) != n:
        raise PetiqInputError(
            where / "card.json",
            f"the model gives {n} outputs but its card names targets {list(targets)}",
            "retrain the model with petiq",
        )
    return targets


def find_images(folder: str | Path, patterns: Sequence[str] = NIFTI_PATTERNS) -> list[Path]:
    """The NIfTI files directly in ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PetiqInputError(folder, "not a folder", "point score_images at a folder of NIfTI reconstructions")
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if not found:
        raise PetiqInputError(
            folder, f"no images matching {', '.join(patterns)}", "put the reconstructions to score there"
        )
    return found


def predict_folder(
    run_dir: str | Path,
    folder: str | Path,
    out_tsv: str | Path,
    *,
    device: str = "auto",
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> pd.DataFrame:
    """Score every NIfTI in ``folder`` (config ``score_images:``) and write the table to ``out_tsv`` atomically."""
    table = predict_images(
        run_dir, find_images(folder), device=device, seed=seed, batch_size=batch_size, progress=progress
    )
    write_tsv(out_tsv, table)
    return table


def format_table(table: pd.DataFrame) -> str:
    """A readable table: each score as ``mean ± patch SD``.

    >>> print(format_table(pd.DataFrame({"image": ["a.nii"], "GQR": [2.04], "sd_GQR": [0.312], "n_patches": [300]})))
    image GQR (± patch SD)  patches
    a.nii      2.04 ± 0.31      300
    """
    scores = [c for c in table.columns if f"sd_{c}" in table.columns]
    out = pd.DataFrame({"image": table["image"].map(lambda p: Path(p).name)})
    for s in scores:
        out[f"{s} (± patch SD)"] = [f"{m:.2f} ± {d:.2f}" for m, d in zip(table[s], table[f"sd_{s}"])]
    out["patches"] = table["n_patches"]
    return out.to_string(index=False)

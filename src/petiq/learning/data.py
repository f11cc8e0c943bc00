"""The patches a run learns from (:class:`PatchSet`) and their network input (:func:`apply_preprocessing`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..core.errors import PetiqInputError


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


def apply_preprocessing(prep, x: torch.Tensor) -> torch.Tensor:
    """0–1 grey patches (N, H, W) → (N, 3, H, W) network input on ``x``'s device.

    The formula of :meth:`petiq.learning.weights.Preprocessing.apply` for grey input (channel order does not
    matter for three equal channels), with the constants on the tensor's device.
    """
    x = x.float().unsqueeze(1).expand(-1, 3, -1, -1)
    mean = torch.tensor(prep.mean, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(prep.std, dtype=torch.float32, device=x.device).view(1, 3, 1, 1)
    return ((x * prep.scale - mean) / std).contiguous()

"""Training curves: training and validation loss per epoch, with the kept (lowest validation loss) epoch."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from . import save_figure


def plot_training_curve(
    curve: pd.DataFrame, path: str | Path, *, best_epoch: int | None = None, title: str | None = None
) -> None:
    """Loss (MSE) against epoch for ``curve`` (columns epoch, train_loss, val_loss), log scale when positive.

    ``best_epoch`` defaults to the epoch with the lowest validation loss; it is marked and labelled.
    """
    if curve.empty:
        raise ValueError("an empty training curve")
    if best_epoch is None:
        best_epoch = int(curve.loc[curve["val_loss"].idxmin(), "epoch"])
    fig, ax = plt.subplots(figsize=(6.0, 3.6))
    ax.plot(curve["epoch"], curve["train_loss"], lw=1.2, label="training")
    ax.plot(curve["epoch"], curve["val_loss"], lw=1.2, label="validation")
    best = curve[curve["epoch"] == best_epoch]
    if not best.empty:
        value = float(best["val_loss"].iloc[0])
        ax.plot([best_epoch], [value], "o", color="black", ms=5, label=f"kept: epoch {best_epoch} (val {value:.3g})")
    losses = curve[["train_loss", "val_loss"]].to_numpy()
    if np.all(losses > 0):
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss (MSE)")
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_figure(fig, path)

"""Diagrams drawn from the code and the config, not by hand: Fig. 5 (the VGG16 and its freeze levels) and
Fig. 7 (the four pre-training pipelines).

Fig. 5 reads the network's blocks from a ``petiq.learning.models`` regressor (``petiq.learning.models.describe_blocks``: layers,
parameters, output shapes), from that function's output, or from a torchvision VGG (``.features`` split after each
max-pool, output sizes from a zero patch). Which blocks are retrained at freeze level k comes from
``petiq.learning.models.trainable_blocks``, the rule the training engine applies (the last k blocks; the head always trains).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from ..core.errors import PetiqInputError  # noqa: E402
from . import save_figure  # noqa: E402

TRAINED, FROZEN = "#fdae6b", "#c6dbef"
N_BLOCKS = 5


# --------------------------------------------------------------------------------------------------------------------
# Reading the network


def _layer_text(module) -> str | None:
    import torch.nn as nn

    if isinstance(module, nn.Conv2d):
        k = module.kernel_size
        return f"conv {k[0]}×{k[1]}, {module.out_channels}"
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        k = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
        return f"{'max' if isinstance(module, nn.MaxPool2d) else 'avg'}-pool {k}×{k}"
    if isinstance(module, nn.BatchNorm2d):
        return "batch norm"
    return None  # activations, dropout and containers are not listed


def _summarise_layers(texts: list[str]) -> list[str]:
    """Collapse runs of identical layers: ['conv 3×3, 64', 'conv 3×3, 64'] -> ['2 × conv 3×3, 64'].

    >>> _summarise_layers(["conv 3×3, 64", "conv 3×3, 64", "max-pool 2×2"])
    ['2 × conv 3×3, 64', 'max-pool 2×2']
    """
    out: list[list] = []
    for text in texts:
        if out and out[-1][0] == text:
            out[-1][1] += 1
        else:
            out.append([text, 1])
    return [f"{n} × {t}" if n > 1 else t for t, n in out]


def _split_vgg_features(features) -> list:
    import torch.nn as nn

    blocks, current = [], []
    for module in features:
        current.append(module)
        if isinstance(module, nn.MaxPool2d):
            blocks.append(nn.Sequential(*current))
            current = []
    if current:
        blocks.append(nn.Sequential(*current))
    return blocks


def describe_network(model, patch_size: int = 80) -> dict:
    """Blocks and head of a model: {"blocks": [{name, layers, n_params, out_shape}], "head": str, "input": str}.

    A ``petiq.learning.models`` regressor is described by ``petiq.learning.models.describe_blocks`` (any device, meta included); a
    torchvision VGG by its ``.features`` split after each max-pool, with output sizes from a zero patch.
    """
    import torch

    if hasattr(model, "blocks") and hasattr(model, "head"):
        from ..learning.models import describe_blocks

        return _normalise_description(describe_blocks(model), int(getattr(model, "patch_size", patch_size)))[0]
    if not hasattr(model, "features"):
        raise PetiqInputError(
            None,
            f"{type(model).__name__} has neither .blocks nor .features",
            "pass a petiq.learning.models model or a torchvision VGG",
        )
    blocks = _split_vgg_features(model.features)
    if len(blocks) != N_BLOCKS:
        raise PetiqInputError(
            None, f"the model has {len(blocks)} blocks, not {N_BLOCKS}", "pass a VGG-style model with five blocks"
        )
    x = torch.zeros(1, 3, patch_size, patch_size)
    described = []
    with torch.no_grad():
        for i, block in enumerate(blocks, start=1):
            x = block(x)
            texts = [t for m in block.modules() if (t := _layer_text(m)) is not None]
            described.append(
                {
                    "name": f"block {i}",
                    "layers": _summarise_layers(texts),
                    "n_params": int(sum(p.numel() for p in block.parameters())),
                    "out_shape": tuple(int(s) for s in x.shape[1:]),
                }
            )
    return {"blocks": described, "head": f"flatten {x[0].numel()} → FC (new head)", "input": _input_text(patch_size)}


def _input_text(patch_size: int) -> str:
    return f"{patch_size}×{patch_size} patch, grey ×3 channels"


def trained_blocks(model, level: int) -> list[bool]:
    """Which of the five blocks train at a freeze level: ``petiq.learning.models.trainable_blocks``, the rule the engine uses
    (the last ``level`` blocks; the head always trains).

    >>> trained_blocks(None, 2)
    [False, False, False, True, True]
    """
    if not 0 <= level <= N_BLOCKS:
        raise PetiqInputError(
            None, f"freeze level {level} is outside 0–{N_BLOCKS}", "use 0 (head only) to 5 (everything)"
        )
    try:
        from ..learning.models import trainable_blocks
    except ImportError:  # pragma: no cover - petiq.learning.models ships with petiq
        return [i >= N_BLOCKS - level for i in range(N_BLOCKS)]
    retrained = set(trainable_blocks(level))
    return [i in retrained for i in range(N_BLOCKS)]


_NOT_LISTED = {"ReLU", "ReLU6", "SiLU", "GELU", "Dropout", "Identity", "Flatten"}


def _tidy_layer(text: str) -> str | None:
    """describe_blocks' layer names, shortened for the diagram (activations are not listed).

    >>> _tidy_layer("Conv2d 3→64 3×3"), _tidy_layer("MaxPool2d 2×2"), _tidy_layer("ReLU")
    ('conv 3×3, 64', 'max-pool 2×2', None)
    """
    name, _, rest = text.partition(" ")
    if name in _NOT_LISTED:
        return None
    if name == "Conv2d":
        channels, _, extra = rest.partition(" ")
        return f"conv {extra}, {channels.split('→')[-1]}"
    if name == "MaxPool2d":
        return f"max-pool {rest}"
    return text


def _normalise_description(blocks: Any, patch_size: int) -> tuple[dict, Any]:
    """A model or a list of block dicts (``petiq.learning.models.describe_blocks``) -> (description, model or None)."""
    if hasattr(blocks, "parameters"):
        return describe_network(blocks, patch_size), blocks
    if isinstance(blocks, Mapping) and "blocks" in blocks:
        blocks = blocks["blocks"]
    blocks = [dict(b) for b in blocks]
    head = [b for b in blocks if str(b.get("name", "")).lower() == "head"]
    blocks = [b for b in blocks if str(b.get("name", "")).lower() != "head"]
    if len(blocks) != N_BLOCKS:
        raise PetiqInputError(
            None, f"{len(blocks)} block descriptions, not {N_BLOCKS}", "pass describe_blocks(model) of a VGG16"
        )
    described, size = [], patch_size
    for i, b in enumerate(blocks, start=1):
        layers = b.get("layers", [])
        layers = [layers] if isinstance(layers, str) else [str(t) for t in layers]
        size //= 2
        shape = b.get("out_shape", b.get("output_shape"))
        channels = b.get("out_channels", b.get("channels"))
        name = str(b.get("name", f"block {i}"))
        described.append(
            {
                "name": name.replace("block", "block ") if name.startswith("block") and " " not in name else name,
                "layers": _summarise_layers([t for t in map(_tidy_layer, layers) if t]),
                "n_params": int(b.get("n_params", b.get("parameters", 0)) or 0),
                "out_shape": tuple(int(v) for v in shape)
                if shape
                else ((int(channels), size, size) if channels else None),
            }
        )
    head_text = "flatten → FC (new head)"
    if head:
        layers = [str(t) for t in head[0].get("layers", [])]
        linear = [t for t in layers if t.startswith("Linear")]
        if linear:
            head_text = (
                "flatten " + linear[-1].split(" ")[1].replace("→", " → FC ") + (" + ReLU" if "ReLU" in layers else "")
            )
    return {"blocks": described, "head": head_text, "input": _input_text(patch_size)}, None


# --------------------------------------------------------------------------------------------------------------------
# Drawing helpers


def _box(ax, x, y, w, h, text, colour, *, fontsize=7.5, weight="normal", text_y=0.5):
    ax.add_patch(
        FancyBboxPatch(
            (x, y),
            w,
            h,
            boxstyle="round,pad=0.02,rounding_size=0.08",
            facecolor=colour,
            edgecolor="black",
            linewidth=0.9,
        )
    )
    ax.text(x + w / 2, y + text_y * h, text, ha="center", va="center", fontsize=fontsize, weight=weight)


def _arrow(ax, x0, y0, x1, y1):
    ax.add_patch(FancyArrowPatch((x0, y0), (x1, y1), arrowstyle="-|>", mutation_scale=11, color="black", linewidth=1.0))


def _format_params(n: int) -> str:
    """
    >>> _format_params(38720), _format_params(7079424), _format_params(0)
    ('38.7 k', '7.08 M', '')
    """
    if n <= 0:
        return ""
    return f"{n / 1e6:.3g} M" if n >= 1e6 else f"{n / 1e3:.3g} k"


# --------------------------------------------------------------------------------------------------------------------
# Fig. 5


def plot_fig05_vgg16(
    blocks,
    freeze_levels: int | Sequence[int],
    path: str | Path,
    *,
    patch_size: int = 80,
    n_outputs: int = 3,
    outputs: Sequence[str] = ("GQR", "PR", "DC"),
) -> None:
    """Fig. 5: the network's five blocks (layers, output size, parameters) and, per freeze level, which are retrained.

    ``blocks``: a model (petiq regressor or torchvision VGG16) or ``describe_blocks`` output (a list of five dicts with
    ``layers`` and optionally ``name``, ``n_params``, ``out_channels``/``out_shape``).
    """
    patch_size = int(getattr(blocks, "patch_size", patch_size))
    description, model = _normalise_description(blocks, patch_size)
    levels = [int(freeze_levels)] if isinstance(freeze_levels, int) else [int(k) for k in freeze_levels]
    if not levels:
        raise PetiqInputError(None, "no freeze levels to draw", "pass e.g. [0, 1, 2, 3, 4, 5]")
    masks = {k: trained_blocks(model, k) for k in levels}
    n_outputs = int(getattr(blocks, "n_outputs", n_outputs))

    fig = plt.figure(figsize=(13.5, 3.6 + 0.42 * len(levels)))
    top = fig.add_axes((0.01, 0.42 if len(levels) > 1 else 0.3, 0.98, 0.56 if len(levels) > 1 else 0.68))
    top.set_xlim(0, 13.5)
    top.set_ylim(0, 4.2)
    top.axis("off")
    _box(top, 0.05, 1.4, 1.25, 1.4, description["input"].replace(", ", "\n"), "#f0f0f0")
    x, w, gap = 1.65, 1.6, 0.3
    sizes = [b["out_shape"][1] if b["out_shape"] else None for b in description["blocks"]]
    biggest = max([s for s in sizes if s] or [1])
    single = masks[levels[0]] if len(levels) == 1 else None
    for i, block in enumerate(description["blocks"]):
        size = sizes[i]
        h = 1.5 + 2.4 * (size / biggest) ** 0.5 if size else 2.5
        y = 2.1 - h / 2
        lines = [block["name"]] + block["layers"]
        if block["out_shape"]:
            c, hh, ww = block["out_shape"]
            lines.append(f"→ {hh}×{ww}×{c}")
        if block["n_params"]:
            lines.append(f"{_format_params(block['n_params'])} params")
        colour = "#e5f5e0" if single is None else (TRAINED if single[i] else FROZEN)
        _box(top, x, y, w, h, "\n".join(lines), colour, fontsize=7)
        _arrow(top, x - gap + 0.02, 2.1, x - 0.02, 2.1)
        x += w + gap
    _box(top, x, 1.5, 1.55, 1.2, description["head"].replace(" → ", "\n→ "), TRAINED, fontsize=7)
    _arrow(top, x - gap + 0.02, 2.1, x - 0.02, 2.1)
    _arrow(top, x + 1.57, 2.1, x + 1.85, 2.1)
    top.text(
        x + 1.9,
        2.1,
        "\n".join(outputs[:n_outputs]) if n_outputs == len(outputs) else f"{n_outputs} outputs",
        va="center",
        fontsize=8,
        weight="bold",
    )

    if len(levels) > 1:
        grid = fig.add_axes((0.12, 0.04, 0.66, 0.34))
        names = [b["name"] for b in description["blocks"]] + ["FC head"]
        for r, k in enumerate(levels):
            for c in range(len(names)):
                trained = True if c == N_BLOCKS else masks[k][c]
                grid.add_patch(
                    plt.Rectangle(
                        (c, len(levels) - 1 - r),
                        0.96,
                        0.9,
                        facecolor=TRAINED if trained else FROZEN,
                        edgecolor="black",
                        linewidth=0.6,
                    )
                )
                grid.text(
                    c + 0.48,
                    len(levels) - 1 - r + 0.45,
                    "retrained" if trained else "frozen",
                    ha="center",
                    va="center",
                    fontsize=7,
                )
        grid.set_xlim(-0.05, len(names))
        grid.set_ylim(-0.05, len(levels))
        grid.set_xticks([c + 0.48 for c in range(len(names))], names, fontsize=8)
        grid.xaxis.tick_top()
        grid.set_yticks(
            [len(levels) - 1 - r + 0.45 for r in range(len(levels))],
            [f"freeze level {k}" + (" (head only)" if k == 0 else " (all)" if k == N_BLOCKS else "") for k in levels],
            fontsize=8,
        )
        grid.tick_params(length=0)
        for side in grid.spines.values():
            side.set_visible(False)
    net = str(getattr(blocks, "backbone", "vgg16"))
    title = f"Fig. 5 — transfer-learned {net.upper() if net.startswith('vgg') else net}: five blocks, a new fully connected head"
    if single is not None:
        title += f"; freeze level {levels[0]}: orange retrained, blue frozen"
    fig.suptitle(title, fontsize=10, y=1.0)
    save_figure(fig, path)


# --------------------------------------------------------------------------------------------------------------------
# Fig. 7


def _get(obj, *names, default=None):
    for name in names:
        if isinstance(obj, Mapping) and name in obj:
            return obj[name]
        if not isinstance(obj, Mapping) and hasattr(obj, name):
            return getattr(obj, name)
    return default


def _stage(spec, what: str) -> dict:
    init = _get(spec, "init", "weights", default="random")
    level = _get(spec, "freeze_level", "trainable_blocks")
    lr = _get(spec, "learning_rate", "lr")
    if level is None:
        raise PetiqInputError(
            None, f"{what}: no freeze_level (trainable blocks)", "give each pipeline a freeze_level 0–5"
        )
    return {
        "init": str(init),
        "freeze_level": int(level),
        "learning_rate": None if lr is None else float(lr),
        "backbone": str(_get(spec, "backbone", default="vgg16")),
    }


def pipeline_stages(pipelines: Mapping[str, Any], runs: Mapping[str, Any] | None = None) -> dict[str, dict]:
    """Each pipeline as {"init", "pretext": stage | None, "transfer": stage}; a stage has init, freeze_level, learning_rate.

    A pipeline is a mapping or object (``petiq.learning.experiments.Run``) with ``init`` (random | imagenet | pretext/<run>),
    ``freeze_level`` and ``learning_rate``; its pretext stage is its ``pretext`` entry or, for ``init: pretext/<run>``,
    ``runs[<run>]``.

    >>> pipeline_stages({"b": {"init": "imagenet", "freeze_level": 2, "learning_rate": 1e-4}})["b"]["transfer"]["freeze_level"]
    2
    """
    out = {}
    for label, spec in pipelines.items():
        transfer = _stage(spec, f"pipeline {label}")
        pretext = _get(spec, "pretext")
        if pretext is None and transfer["init"].startswith("pretext"):
            name = transfer["init"].split("/", 1)[1] if "/" in transfer["init"] else None
            if runs is None or name not in runs:
                raise PetiqInputError(
                    None,
                    f"pipeline {label} starts from pretext run {name!r}, which is not described",
                    "pass runs= with the pretext runs (ExperimentPlan.runs)",
                )
            pretext = runs[name]
        pretext_stage = _stage(pretext, f"pipeline {label} pretext") if pretext else None
        first = pretext_stage or transfer
        out[str(label)] = {
            "init": first["init"],
            "backbone": first["backbone"],
            "pretext": pretext_stage,
            "transfer": transfer,
        }
    return out


def _trainable_text(level: int) -> str:
    """
    >>> _trainable_text(0), _trainable_text(2), _trainable_text(5)
    ('blocks frozen, head only', 'retrains last 2 blocks', 'retrains all 5 blocks')
    """
    if level == 0:
        return "blocks frozen, head only"
    if level == N_BLOCKS:
        return "retrains all 5 blocks"
    return f"retrains last {level} block{'s' if level > 1 else ''}"


def _strip(ax, x, y, level, width):
    """Five small squares (blocks) + one (head): orange = retrained."""
    cell = width / 6.6 * 0.8
    for c in range(6):
        trained = c == N_BLOCKS or c >= N_BLOCKS - level
        ax.add_patch(
            plt.Rectangle(
                (x + 0.1 * width + c * cell * 1.25, y),
                cell,
                cell * 0.9,
                facecolor=TRAINED if trained else FROZEN,
                edgecolor="black",
                linewidth=0.5,
            )
        )


def plot_fig07_pipelines(
    pipelines: Mapping[str, Any],
    path: str | Path,
    *,
    runs: Mapping[str, Any] | None = None,
    default_learning_rate: float | None = None,
) -> None:
    """Fig. 7: the pre-training pipelines (a–d), one row each: weights → [dose-per-weight pretext] → clinical scores.

    Each training box names its trainable blocks and learning rate, with a strip of the five blocks and the head
    (orange retrained, blue frozen). ``pipelines`` as :func:`pipeline_stages` reads them.
    """
    stages = pipeline_stages(pipelines, runs)
    if not stages:
        raise PetiqInputError(None, "no pipelines to draw", "pass the config's pipelines (a–d)")
    n = len(stages)
    fig, ax = plt.subplots(figsize=(12.5, 1.25 * n + 0.8))
    ax.set_xlim(0, 12.5)
    ax.set_ylim(-0.35, 1.25 * n)
    ax.axis("off")

    def lr_text(stage):
        lr = stage["learning_rate"] if stage["learning_rate"] is not None else default_learning_rate
        return "" if lr is None else f"\nAdam, lr {lr:.0e}"

    for r, (label, p) in enumerate(stages.items()):
        y = 1.25 * (n - 1 - r) + 0.12
        h = 1.05
        ax.text(0.02, y + h / 2, label, fontsize=9, weight="bold", va="center")
        init, net = p["init"], p["backbone"].upper() if p["backbone"].startswith("vgg") else p["backbone"]
        _box(
            ax,
            2.0,
            y,
            1.8,
            h,
            {"imagenet": f"ImageNet weights\n({net})", "random": f"random weights\n({net})"}.get(init, init),
            "#e5f5e0" if init == "imagenet" else "#f0f0f0",
            fontsize=8,
        )
        x = 4.2
        if p["pretext"]:
            s = p["pretext"]
            _arrow(ax, 3.82, y + h / 2, x - 0.02, y + h / 2)
            _box(
                ax,
                x,
                y,
                2.6,
                h,
                f"pretext: dose per weight\n{_trainable_text(s['freeze_level'])}, head FC(1){lr_text(s)}",
                "#fee6ce",
                fontsize=7.5,
                text_y=0.64,
            )
            _strip(ax, x + 0.35, y + 0.05, s["freeze_level"], 1.9)
            _arrow(ax, x + 2.62, y + h / 2, x + 3.0, y + h / 2)
            ax.text(x + 2.81, y + h / 2 + 0.08, "new head", fontsize=6.5, ha="center", va="bottom")
            x += 3.0
        else:
            _arrow(ax, 3.82, y + h / 2, x - 0.02, y + h / 2)
        t = p["transfer"]
        _box(
            ax,
            x,
            y,
            2.8,
            h,
            f"clinical scores\n{_trainable_text(t['freeze_level'])}, new head FC(3){lr_text(t)}",
            "#fdd0a2",
            fontsize=7.5,
            text_y=0.64,
        )
        _strip(ax, x + 0.4, y + 0.05, t["freeze_level"], 2.0)
        _arrow(ax, x + 2.82, y + h / 2, x + 3.2, y + h / 2)
        ax.text(x + 3.25, y + h / 2, "GQR, PR, DC", fontsize=8, va="center")
    ax.text(
        0.02,
        -0.3,
        "block strips: five convolutional blocks then the FC head; orange = retrained, blue = frozen",
        fontsize=7.5,
        color="#444444",
    )
    fig.suptitle("Fig. 7 — pre-training pipelines (from the experiment configuration)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)

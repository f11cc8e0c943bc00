"""Backbones cut into five blocks, a one-layer regression head, and freeze levels.

Every backbone in :data:`BACKBONES` is a torchvision architecture whose convolutional part is cut into
five sequential blocks, one per halving of the resolution (output strides 2, 4, 8, 16, 32), so a
freeze level means the same thing for all of them: level ``k`` retrains the last ``k`` blocks and the
head (``k = 0``: head only; ``k = 5``: everything). For VGG16 the blocks are exactly the paper's five
convolutional blocks, each ending in its max-pool (Fig. 5).

The head is Keras' ``include_top=False`` + ``Flatten`` + one ``Dense`` layer: the block-5 feature map
is flattened (512 × 2 × 2 = 2048 numbers for an 80 × 80 VGG16 patch) into one fully connected layer
with 3 outputs (GQR, PR, DC) or 1 (the pretext task, injected dose per kg). ``head="relu"`` adds the
paper's ReLU on the output; the default ``"linear"`` leaves it off, because a ReLU on a regression
output passes no gradient once a unit's output is negative, and a unit stuck below zero for every
patch never recovers (a "dead" output that predicts 0 forever).

Initialisation (seeded): VGG backbones and every head follow Keras, as the paper did (Glorot-uniform
weights, zero biases); the other backbones keep torchvision's own initialisation. ImageNet (or
pretext) weights replace the backbone's with :func:`load_backbone_state` / :func:`load_blocks_state`.

>>> m = build_model("vgg16", 3, patch_size=80, device="meta")
>>> [list(s) for s in block_output_shapes(m)]
[[64, 40, 40], [128, 20, 20], [256, 10, 10], [512, 5, 5], [512, 2, 2]]
>>> m.head
Sequential(
  (0): Flatten(start_dim=1, end_dim=-1)
  (1): Linear(in_features=2048, out_features=3, bias=True)
)
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import PetiqInputError

N_BLOCKS = 5
HEADS = ("linear", "relu")
MIN_PATCH = 32
#: Why the default head is linear (recorded in the model card).
HEAD_NOTE = {
    "linear": "one fully connected layer, no output activation (petiq default: a ReLU on a regression output "
    "stops the gradient of any output that goes negative)",
    "relu": "one fully connected layer with ReLU on the output, as in the paper (Fig. 5)",
}

Split = list[list[tuple[str, nn.Module]]]


@dataclass(frozen=True)
class BackboneSpec:
    """How to build a torchvision backbone and cut it into five blocks.

    ``build`` returns the torchvision model (no weights); ``split`` returns, per block, its layers as
    (torchvision module path, module); ``init`` is ``"keras"`` (Glorot-uniform, zero biases: the model is
    built on the meta device and initialised here) or ``"torchvision"`` (torchvision's own init).
    """

    name: str
    build: Callable[[], nn.Module]
    split: Callable[[nn.Module], Split]
    init: str = "torchvision"


# -- splitters ---------------------------------------------------------------------------------


def split_vgg(model: nn.Module) -> Split:
    """VGG: a block ends after each max-pool of ``features``."""
    blocks: Split = [[]]
    for name, layer in model.features.named_children():
        blocks[-1].append((f"features.{name}", layer))
        if isinstance(layer, nn.MaxPool2d):
            blocks.append([])
    blocks = [b for b in blocks if b]
    if len(blocks) != N_BLOCKS:
        raise ValueError(f"a VGG with {len(blocks)} max-pools, not {N_BLOCKS}")
    return blocks


def split_resnet(model: nn.Module) -> Split:
    """ResNet: stem convolution | max-pool + layer1 | layer2 | layer3 | layer4."""
    return [
        [("conv1", model.conv1), ("bn1", model.bn1), ("relu", model.relu)],
        [("maxpool", model.maxpool), ("layer1", model.layer1)],
        [("layer2", model.layer2)],
        [("layer3", model.layer3)],
        [("layer4", model.layer4)],
    ]


def split_by_stride(model: nn.Module, final_relu: bool = False) -> Split:
    """``features`` Sequential (MobileNet, EfficientNet, DenseNet): group its children by output stride.

    A child starts a new block when its output is smaller than the previous child's. DenseNet applies a
    functional ReLU after ``features``; ``final_relu`` adds it to block 5 as a module.
    """
    size = 64
    x = torch.zeros(1, 3, size, size, device=next(model.parameters()).device)
    blocks: Split = []
    previous = size
    for name, layer in model.features.named_children():
        x = layer(x)
        if not blocks or x.shape[-1] < previous:
            blocks.append([])
        previous = x.shape[-1]
        blocks[-1].append((f"features.{name}", layer))
    if len(blocks) != N_BLOCKS:
        raise ValueError(f"features has {len(blocks)} resolution stages, not {N_BLOCKS}")
    if final_relu:
        blocks[-1].append(("relu_final", nn.ReLU()))
    return blocks


def _tv(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import torchvision

        return torchvision.models.get_model(name, weights=None)

    return build


def _registry() -> dict[str, BackboneSpec]:
    specs: list[BackboneSpec] = []
    for name in ("vgg11", "vgg13", "vgg16", "vgg19", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"):
        specs.append(BackboneSpec(name, _tv(name), split_vgg, "keras"))
    for name in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "wide_resnet50_2"):
        specs.append(BackboneSpec(name, _tv(name), split_resnet))
    for name in (
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "efficientnet_b1",
        "efficientnet_b2",
        "efficientnet_b3",
    ):
        specs.append(BackboneSpec(name, _tv(name), split_by_stride))
    for name in ("densenet121", "densenet161", "densenet169", "densenet201"):
        specs.append(BackboneSpec(name, _tv(name), lambda m: split_by_stride(m, final_relu=True)))
    return {s.name: s for s in specs}


#: Backbones by torchvision name.
BACKBONES: dict[str, BackboneSpec] = _registry()


def get_backbone(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise PetiqInputError(None, f"unknown backbone {name!r}", f"use one of {', '.join(BACKBONES)}")
    return BACKBONES[name]


# -- the model ---------------------------------------------------------------------------------


class PatchRegressor(nn.Module):
    """Five backbone blocks and a head; ``forward`` takes the 3-channel network input (N, 3, H, W).

    ``freeze_level`` (set with :func:`set_freeze_level`) also decides the mode: frozen blocks stay in
    eval mode (batch-norm statistics fixed, as in Keras) even when the model is put in training mode.
    ``tv_keymap`` maps torchvision state-dict names (``features.0.weight``) to this model's.
    """

    def __init__(
        self,
        blocks: list[nn.Sequential],
        head: nn.Sequential,
        *,
        backbone: str,
        patch_size: int,
        n_outputs: int,
        head_kind: str,
        tv_keymap: dict[str, str],
    ):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.backbone = backbone
        self.patch_size = patch_size
        self.n_outputs = n_outputs
        self.head_kind = head_kind
        self.tv_keymap = tv_keymap
        self.freeze_level = N_BLOCKS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    def train(self, mode: bool = True) -> PatchRegressor:
        super().train(mode)
        for block in self.blocks[: N_BLOCKS - self.freeze_level]:
            block.train(False)
        return self

    def describe(self) -> dict:
        """Constructor arguments, for checkpoints."""
        return {
            "backbone": self.backbone,
            "n_outputs": self.n_outputs,
            "head": self.head_kind,
            "patch_size": self.patch_size,
            "freeze_level": self.freeze_level,
        }


def _keras_init(module: nn.Module, generator: torch.Generator) -> None:
    """Glorot-uniform weights and zero biases for convolutions and linear layers; fresh batch norms."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight, generator=generator)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_parameters()


@contextlib.contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's global CPU generator inside the block, leaving the caller's state untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def build_model(
    backbone: str | BackboneSpec,
    n_outputs: int,
    head: str = "linear",
    patch_size: int = 80,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> PatchRegressor:
    """A :class:`PatchRegressor`: ``backbone`` cut into five blocks, a Flatten + Linear(n_outputs) head.

    Weights are initialised from ``seed`` (see the module docstring); ``device="meta"`` builds the
    structure only (no memory, no initialisation), e.g. for diagrams or before ``load_state_dict(assign=True)``.
    """
    spec = backbone if isinstance(backbone, BackboneSpec) else get_backbone(backbone)
    if head not in HEADS:
        raise PetiqInputError(None, f"unknown head {head!r}", f"use one of {', '.join(HEADS)}")
    if int(patch_size) < MIN_PATCH:
        raise PetiqInputError(
            None,
            f"patches of {patch_size} px are too small for {spec.name}: five halvings need at least {MIN_PATCH} px",
            f"extract patches of {MIN_PATCH} px or more",
        )
    if int(n_outputs) < 1:
        raise ValueError("n_outputs must be at least 1")
    device = torch.device(device)
    on_meta = device.type == "meta" or spec.init == "keras"
    with _seeded(seed):
        if on_meta:
            with torch.device("meta"):
                tv = spec.build()
        else:
            tv = spec.build()
    tv.eval()
    split = spec.split(tv)
    blocks = [nn.Sequential(OrderedDict((path.replace(".", "_"), layer) for path, layer in layers)) for layers in split]
    with torch.no_grad():
        x = torch.zeros(1, 3, patch_size, patch_size, device="meta" if on_meta else "cpu")
        for block in blocks:
            x = block(x)
    if x.shape[-1] < 1 or x.shape[-2] < 1:
        raise PetiqInputError(None, f"{spec.name} reduces a {patch_size} px patch to nothing", "use larger patches")
    with torch.device("meta"):
        layers = [nn.Flatten(), nn.Linear(int(x[0].numel()), int(n_outputs))]
        if head == "relu":
            layers.append(nn.ReLU())
        head_module = nn.Sequential(*layers)
    model = PatchRegressor(
        blocks,
        head_module,
        backbone=spec.name,
        patch_size=int(patch_size),
        n_outputs=int(n_outputs),
        head_kind=head,
        tv_keymap={},
    )
    ours = {id(t): name for name, t in model.state_dict(keep_vars=True).items()}
    model.tv_keymap = {name: ours[id(t)] for name, t in tv.state_dict(keep_vars=True).items() if id(t) in ours}
    del tv
    if device.type != "meta":
        generator = torch.Generator().manual_seed(int(seed))
        if on_meta:
            model.to_empty(device="cpu")
            _keras_init(model, generator)
        else:
            model.head.to_empty(device="cpu")
            _keras_init(model.head, generator)
        model.to(device)
    set_freeze_level(model, N_BLOCKS)
    model.train()
    return model


# -- weights -----------------------------------------------------------------------------------


def load_backbone_state(
    model: PatchRegressor, state_dict: dict[str, torch.Tensor], source: str | None = None
) -> list[str]:
    """Copy a torchvision-layout state dict (e.g. ImageNet ``features.*``) into the model's five blocks.

    Every backbone tensor must be present with its shape (a missing ``num_batches_tracked`` is allowed);
    keys outside the blocks (a classifier, ``fc``) are ignored and returned.
    """
    own = model.state_dict()
    missing = [k for k in model.tv_keymap if k not in state_dict and not k.endswith("num_batches_tracked")]
    wrong = [
        k for k, v in model.tv_keymap.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(own[v].shape)
    ]
    if missing or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("wrong shape", wrong))
            if keys
        )
        raise PetiqInputError(
            source,
            f"does not fit the {model.backbone} backbone ({detail})",
            f"give a {model.backbone} checkpoint in torchvision layout",
        )
    with torch.no_grad():
        for tv_name, name in model.tv_keymap.items():
            if tv_name in state_dict:
                own[name].copy_(state_dict[tv_name])
    return sorted(set(state_dict) - set(model.tv_keymap))


def load_blocks_state(model: PatchRegressor, state_dict: dict[str, torch.Tensor], source: str | None = None) -> None:
    """Copy the five blocks (``blocks.*``) of another :class:`PatchRegressor`'s state dict; the head stays.

    Used to start a transfer run from a pretext run's best checkpoint.
    """
    own = {k: v for k, v in model.state_dict().items() if k.startswith("blocks.")}
    theirs = {k: v for k, v in state_dict.items() if k.startswith("blocks.")}
    if set(own) != set(theirs) or any(tuple(own[k].shape) != tuple(theirs[k].shape) for k in own):
        raise PetiqInputError(
            source,
            f"its blocks do not fit a {model.backbone} model of {model.patch_size} px",
            "start from a checkpoint of the same backbone and patch size",
        )
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(theirs[k])


# -- freezing ----------------------------------------------------------------------------------


def set_freeze_level(model: PatchRegressor, k: int) -> PatchRegressor:
    """Retrain the last ``k`` blocks and the head: exactly their parameters require gradients.

    >>> m = set_freeze_level(build_model("vgg16", 3, device="meta"), 2)
    >>> sorted({n.split(".")[1] for n, p in m.named_parameters() if p.requires_grad and n.startswith("blocks")})
    ['3', '4']
    """
    if not isinstance(k, int) or not 0 <= k <= N_BLOCKS:
        raise PetiqInputError(
            None,
            f"freeze level {k!r} is not one of 0..{N_BLOCKS}",
            f"give the number of convolutional blocks to retrain, 0 (head only) to {N_BLOCKS} (all)",
        )
    for i, block in enumerate(model.blocks):
        block.requires_grad_(i >= N_BLOCKS - k)
    model.head.requires_grad_(True)
    model.freeze_level = k
    model.train(model.training)
    return model


def trainable_blocks(k: int) -> list[int]:
    """Indices (0-based) of the blocks retrained at freeze level ``k``.

    >>> trainable_blocks(0), trainable_blocks(2)
    ([], [3, 4])
    """
    return list(range(N_BLOCKS - k, N_BLOCKS))


def block_output_shapes(model: PatchRegressor) -> list[tuple[int, ...]]:
    """(C, H, W) after each block for one ``model.patch_size`` patch (shape inference on the meta device)."""
    shapes = []
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            x = torch.zeros(1, 3, model.patch_size, model.patch_size, device=device)
            for block in model.blocks:
                x = block(x)
                shapes.append(tuple(x.shape[1:]))
    finally:
        model.train(was_training)
    return shapes


def _layer_text(layer: nn.Module) -> str:
    if isinstance(layer, nn.Conv2d):
        k = "×".join(str(v) for v in layer.kernel_size)
        text = f"Conv2d {layer.in_channels}→{layer.out_channels} {k}"
        if layer.stride != (1, 1):
            text += f" stride {layer.stride[0]}"
        if layer.groups > 1:
            text += f" groups {layer.groups}"
        return text
    if isinstance(layer, (nn.MaxPool2d, nn.AvgPool2d)):
        k = layer.kernel_size if isinstance(layer.kernel_size, int) else layer.kernel_size[0]
        return f"{type(layer).__name__} {k}×{k}"
    if isinstance(layer, nn.modules.batchnorm._BatchNorm):
        return f"{type(layer).__name__} {layer.num_features}"
    if isinstance(layer, nn.Linear):
        return f"Linear {layer.in_features}→{layer.out_features}"
    return type(layer).__name__


def _layers(module: nn.Module) -> list[str]:
    out = []
    for layer in module.children():
        if type(layer) is nn.Sequential:
            out.extend(_layers(layer))
        else:
            out.append(_layer_text(layer))
    return out


def describe_blocks(model: PatchRegressor, k: int | None = None) -> list[dict]:
    """Per block (and the head): its layers, parameter count, output shape and whether level ``k`` retrains it.

    ``k`` defaults to the model's freeze level. For the model card and the Fig. 5 diagram.

    >>> d = describe_blocks(build_model("vgg16", 3, device="meta"), 2)
    >>> [(b["name"], b["n_params"], b["trained"]) for b in d]  # doctest: +NORMALIZE_WHITESPACE
    [('block1', 38720, False), ('block2', 221440, False), ('block3', 1475328, False),
     ('block4', 5899776, True), ('block5', 7079424, True), ('head', 6147, True)]
    >>> d[0]["layers"]
    ['Conv2d 3→64 3×3', 'ReLU', 'Conv2d 64→64 3×3', 'ReLU', 'MaxPool2d 2×2']
    """
    k = model.freeze_level if k is None else k
    trained = set(trainable_blocks(k))
    shapes = block_output_shapes(model)
    out = []
    for i, block in enumerate(model.blocks):
        out.append(
            {
                "name": f"block{i + 1}",
                "layers": _layers(block),
                "n_params": sum(p.numel() for p in block.parameters()),
                "trained": i in trained,
                "output_shape": list(shapes[i]),
            }
        )
    out.append(
        {
            "name": "head",
            "layers": _layers(model.head),
            "n_params": sum(p.numel() for p in model.head.parameters()),
            "trained": True,
            "output_shape": [model.n_outputs],
        }
    )
    return out

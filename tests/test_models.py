"""Backbones cut into five blocks, heads, freeze levels and weight loading (petiq.learning.models)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from petiq.core.errors import PetiqInputError
from petiq.learning.models import (
    BACKBONES,
    HEAD_NOTE,
    block_output_shapes,
    build_model,
    describe_blocks,
    get_backbone,
    load_backbone_state,
    load_blocks_state,
    set_freeze_level,
)

#: torchvision ``vgg16().features`` indices of each block's convolutions (Fig. 5 of the paper).
VGG16_CONVS = {1: (0, 2), 2: (5, 7), 3: (10, 12, 14), 4: (17, 19, 21), 5: (24, 26, 28)}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def torchvision_model(name: str, seed: int = 0):
    import torchvision

    torch.manual_seed(seed)
    return torchvision.models.get_model(name, weights=None).eval()


def torchvision_features(name: str, tv, x: torch.Tensor) -> torch.Tensor:
    """The torchvision model's own convolutional output (what Keras' include_top=False gives)."""
    if name.startswith("resnet"):
        x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
        return tv.layer4(tv.layer3(tv.layer2(tv.layer1(x))))
    if name.startswith("densenet"):
        return F.relu(tv.features(x))
    return tv.features(x)


def test_vgg16_freeze_levels_train_exactly_the_last_k_blocks_and_the_head():
    model = build_model("vgg16", 3, patch_size=80, device="meta")
    head = {"head.1.weight", "head.1.bias"}
    for k in range(6):
        set_freeze_level(model, k)
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        expected = head | {
            f"blocks.{b - 1}.features_{i}.{w}"
            for b in range(6 - k, 6)
            for i in VGG16_CONVS[b]
            for w in ("weight", "bias")
        }
        assert trained == expected, k
        assert model.freeze_level == k
    assert len(list(model.named_parameters())) == 28  # 13 convolutions and the head, weight and bias each
    for bad in (6, -1, 2.0, "2"):
        with pytest.raises(PetiqInputError, match="freeze level"):
            set_freeze_level(model, bad)


def test_frozen_blocks_stay_in_eval_mode_when_the_model_trains():
    model = set_freeze_level(build_model("vgg16_bn", 3, patch_size=32, device="meta"), 2)
    model.train()
    assert [b.training for b in model.blocks] == [False, False, False, True, True]
    norms = [m for m in model.blocks[0].modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and not any(m.training for m in norms)
    assert all(m.training for m in model.blocks[4].modules())
    model.eval()
    assert not any(m.training for m in model.modules())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_has_five_blocks_each_halving_the_resolution(name):
    model = build_model(name, 3, patch_size=64, device="meta")
    assert len(model.blocks) == 5
    assert [s[-1] for s in block_output_shapes(model)] == [32, 16, 8, 4, 2]
    assert model.head[1].in_features == math.prod(block_output_shapes(model)[-1])
    # every backbone tensor of torchvision's layout has a place in the blocks (classifier excepted)
    with torch.device("meta"):
        tv = get_backbone(name).build()
    backbone_keys = {k for k in tv.state_dict() if not k.startswith(("classifier", "fc."))}
    assert set(model.tv_keymap) == backbone_keys
    assert set(model.tv_keymap.values()) == {k for k in model.state_dict() if k.startswith("blocks.")}


@pytest.mark.parametrize("name", ["vgg16", "resnet18", "mobilenet_v2", "densenet121", "efficientnet_b0"])
def test_blocks_compute_what_torchvision_computes(name):
    tv = torchvision_model(name, seed=3)
    model = build_model(name, 3, patch_size=64, seed=1).eval()
    ignored = load_backbone_state(model, tv.state_dict(), "tv")
    assert ignored and all(k.startswith(("classifier", "fc.")) for k in ignored)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = x
        for block in model.blocks:
            ours = block(ours)
        theirs = torchvision_features(name, tv, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_head_is_flatten_then_one_linear_layer_and_the_paper_relu_head_is_available():
    for size, n_in in ((80, 2048), (32, 512), (224, 25088)):
        model = build_model("vgg16", 3, patch_size=size, device="meta")
        assert [type(m).__name__ for m in model.head] == ["Flatten", "Linear"]
        assert (model.head[1].in_features, model.head[1].out_features) == (n_in, 3)
    pretext = build_model("vgg16", 1, patch_size=80, device="meta")
    assert pretext.head[1].out_features == 1

    paper = build_model("vgg16", 3, head="relu", patch_size=32, seed=0)
    assert isinstance(paper.head[-1], torch.nn.ReLU) and paper.head_kind == "relu"
    linear = build_model("vgg16", 3, patch_size=32, seed=0)
    with torch.no_grad():
        linear.head[1].bias.fill_(-100.0)
        paper.head[1].bias.fill_(-100.0)
        x = torch.rand(2, 3, 32, 32)
        assert (linear(x) < 0).all() and (paper(x) == 0).all()  # the ReLU head is stuck at zero here
    assert "paper" in HEAD_NOTE["relu"] and "gradient" in HEAD_NOTE["linear"]
    with pytest.raises(PetiqInputError, match="unknown head"):
        build_model("vgg16", 3, head="sigmoid", device="meta")


def test_bad_backbone_and_patch_size_are_refused():
    with pytest.raises(PetiqInputError, match="unknown backbone 'vgg17'.*vgg16"):
        build_model("vgg17", 3)
    with pytest.raises(PetiqInputError, match="at least 32 px"):
        build_model("vgg16", 3, patch_size=31, device="meta")


def test_initialisation_is_seeded_keras_like_and_leaves_the_global_rng_alone():
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = build_model("vgg16", 3, patch_size=32, seed=1)
    assert torch.equal(torch.rand(3), expected)
    b = build_model("vgg16", 3, patch_size=32, seed=1)
    c = build_model("vgg16", 3, patch_size=32, seed=2)
    for (name, va), vb, vc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert torch.equal(va, vb), name
        if name.endswith("weight"):
            assert not torch.equal(va, vc), name
    conv = a.blocks[2].features_12
    limit = math.sqrt(6 / (256 * 9 + 256 * 9))  # Glorot-uniform bound
    assert conv.weight.abs().max() <= limit and conv.weight.abs().max() > 0.9 * limit
    assert torch.count_nonzero(conv.bias) == 0 and torch.count_nonzero(a.head[1].bias) == 0
    # torchvision-initialised backbones are seeded too
    r1, r2 = build_model("resnet18", 3, patch_size=32, seed=4), build_model("resnet18", 3, patch_size=32, seed=4)
    assert all(torch.equal(x, y) for x, y in zip(r1.state_dict().values(), r2.state_dict().values()))


def test_loading_weights_checks_keys_and_shapes():
    model = build_model("vgg16", 3, patch_size=32, seed=0)
    tv = torchvision_model("vgg16")
    state = {k: v for k, v in tv.state_dict().items() if k.startswith("features.")}  # as petiq.learning.weights gives
    assert load_backbone_state(model, state) == []
    assert torch.equal(model.blocks[4].features_28.weight, tv.features[28].weight)
    assert torch.equal(model.blocks[0].features_0.bias, tv.features[0].bias)

    missing = {k: v for k, v in state.items() if k != "features.24.weight"}
    with pytest.raises(PetiqInputError, match=r"w.pth: .*missing: features.24.weight"):
        load_backbone_state(model, missing, "w.pth")
    wrong = dict(state, **{"features.0.weight": torch.zeros(64, 1, 3, 3)})
    with pytest.raises(PetiqInputError, match="wrong shape: features.0.weight"):
        load_backbone_state(model, wrong)


def test_blocks_come_from_another_model_and_the_head_stays():
    pretext = build_model("vgg16", 1, patch_size=32, seed=7)
    model = build_model("vgg16", 3, patch_size=32, seed=8)
    head_before = model.head[1].weight.clone()
    load_blocks_state(model, pretext.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(model.blocks.parameters(), pretext.blocks.parameters()))
    assert torch.equal(model.head[1].weight, head_before)
    with pytest.raises(PetiqInputError, match="same backbone"):
        load_blocks_state(model, build_model("vgg19", 1, patch_size=32, device="meta").state_dict(), "pretext.pt")


def test_describe_blocks_gives_layers_parameters_shapes_and_what_is_retrained():
    model = build_model("vgg16", 3, patch_size=80, device="meta")
    d = describe_blocks(model, 2)
    assert [b["output_shape"] for b in d] == [[64, 40, 40], [128, 20, 20], [256, 10, 10], [512, 5, 5], [512, 2, 2], [3]]
    assert sum(b["n_params"] for b in d[:5]) == 14_714_688  # VGG16's convolutional part
    assert d[5]["n_params"] == 2048 * 3 + 3
    assert [b["trained"] for b in d] == [False, False, False, True, True, True]
    assert d[4]["layers"] == ["Conv2d 512→512 3×3", "ReLU"] * 3 + ["MaxPool2d 2×2"]
    assert [b["trained"] for b in describe_blocks(set_freeze_level(model, 0))] == [False] * 5 + [True]
    resnet = describe_blocks(build_model("resnet18", 3, patch_size=64, device="meta"), 5)
    assert resnet[0]["layers"] == ["Conv2d 3→64 7×7 stride 2", "BatchNorm2d 64", "ReLU"]
    assert resnet[1]["layers"] == ["MaxPool2d 3×3", "BasicBlock", "BasicBlock"]

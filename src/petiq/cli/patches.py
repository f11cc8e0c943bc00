"""``petiq patches``: one reconstructed volume → its training patches (.npy) and their table (.tsv)."""

from __future__ import annotations

import json


def _patches(args) -> None:
    from ..learning.patches import extract_patches_file

    summary = extract_patches_file(
        args.image,
        args.npy,
        args.tsv,
        size=args.size,
        candidates=args.candidates,
        per_plane=args.per_plane,
        threshold_fraction=args.threshold,
        seed=args.seed,
        dtype=args.dtype,
    )
    print(json.dumps(summary, default=float))


def register(commands) -> None:
    p = commands.add_parser("patches", help="cut the paper's random training patches from one reconstructed volume")
    p.add_argument("image", help="reconstructed volume, 0-1 (NIfTI, *_desc-norm01_pet.nii.gz)")
    p.add_argument("--npy", required=True, help="output patches, N x size x size (.npy)")
    p.add_argument("--tsv", required=True, help="output table: plane, slice, row, column, mean, seed per patch (.tsv)")
    p.add_argument("--size", type=int, default=80, help="patch edge in voxels (paper: 80 on the mMR grid)")
    p.add_argument("--candidates", type=int, default=1000, help="random candidates per volume, over three planes")
    p.add_argument("--per-plane", type=int, default=100, help="patches kept per plane (paper: 100)")
    p.add_argument(
        "--threshold",
        type=float,
        default=0.125,
        help="reject a candidate whose mean is below this fraction of the volume mean (paper: 1/8)",
    )
    p.add_argument("--seed", type=int, required=True, help="seed of this (patient, dose) job")
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"), help="dtype of the .npy")
    p.set_defaults(func=_patches)

"""``petiq predict``: score new reconstructions with a trained model."""

from __future__ import annotations


def _predict(args) -> None:
    from pathlib import Path

    from ..core.fileio import check_output, write_tsv
    from ..learning.predict import find_images, format_table, predict_images

    images = [image for given in args.images for image in (find_images(given) if Path(given).is_dir() else [given])]
    if args.tsv:
        check_output(args.tsv, [*images, args.model], force=args.force, what="table")
    table = predict_images(
        args.model, images, device=args.device, seed=args.seed, batch_size=args.batch_size, progress=not args.quiet
    )
    print(f"model: {table['model'].iloc[0]} (images resampled to {table['voxel_size_mm'].iloc[0]} mm)")
    print(format_table(table))
    if args.tsv:
        write_tsv(args.tsv, table)
        print(f"-> {args.tsv}")


def register(commands) -> None:
    predict = commands.add_parser(
        "predict",
        help="score reconstructions (GQR, PR, DC) with a trained model",
        description="Score NIfTI reconstructions of any size: each is resampled to the model's voxel size, normalised "
        "to its maximum, cut into patches as in training, and every patch predicted; the score is the mean "
        "over the patches, shown with their SD.",
    )
    predict.add_argument(
        "--model", required=True, help="a trained run: results/models/<run> (best repeat) or its rep-<r>"
    )
    predict.add_argument("images", nargs="+", help="NIfTI images (.nii, .nii.gz), or folders of them")
    predict.add_argument("--tsv", help="also write the table here (TSV)")
    predict.add_argument(
        "--device", default="auto", choices=["cpu", "cuda", "auto"], help="where to run the model (default auto)"
    )
    predict.add_argument("--seed", type=int, default=0, help="seed of the patch draw (default 0)")
    predict.add_argument("--batch-size", type=int, default=64, help="patches per forward pass (default 64)")
    predict.add_argument("--force", action="store_true", help="replace an existing --tsv table")
    predict.add_argument("--quiet", action="store_true", help="no progress bar")
    predict.set_defaults(func=_predict)

"""``petiq recon``: one acquisition through the whole e7-style chain, without Snakemake."""

from __future__ import annotations


def _metadata(path) -> dict | None:
    import json
    from pathlib import Path

    from ..core.errors import PetiqInputError

    if path is None:
        return None
    path = Path(path)
    fix = 'give a JSON object of sidecar keys, e.g. {"InjectedRadioactivity": 200, "BodyWeight": 70}'
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise PetiqInputError(path, "the --metadata file does not exist", "check the path") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PetiqInputError(path, f"not readable JSON ({error})", fix) from None
    if not isinstance(data, dict):
        raise PetiqInputError(path, f"holds a JSON {type(data).__name__}, not an object", fix)
    return data


def _recon(args) -> None:
    import logging
    import sys

    from ..recon.chain import reconstruct_acquisition

    handler = None
    if not args.log and not args.quiet:  # with --log the steps go to the log file
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger = logging.getLogger("petiq.recon")
        logger.addHandler(handler)
        old_level = logger.level
        logger.setLevel(logging.INFO)
    try:
        result = reconstruct_acquisition(
            args.acquisition,
            norm=args.norm,
            mumap=args.mumap,
            out_nii=args.out,
            out_json=args.sidecar,
            out_norm01_nii=args.norm01,
            scanner=args.scanner,
            span=args.span,
            n_iterations=args.iterations,
            n_subsets=args.subsets,
            post_filter_fwhm_mm=args.post_filter_fwhm_mm,
            backend=args.device,
            metadata=_metadata(args.metadata),
            work_dir=args.work_dir,
            keep_intermediate=args.keep_intermediate,
            threads=args.threads,
            force=args.force,
            progress=not args.quiet,
            hardware_mumaps=args.hardware_mumap or (),
            bed_position_mm=args.bed_position_mm,
            table_position_origin_mm=args.table_position_origin_mm,
            gantry_table_home_offset_mm=args.gantry_table_home_offset_mm,
        )
    finally:
        if handler is not None:
            logger.removeHandler(handler)
            logger.setLevel(old_level)
    sidecar = result["sidecar"]
    steps = ", ".join(f"{k} {v:.1f} s" for k, v in result["timings_s"].items())
    print(
        f"{args.acquisition}: max {sidecar['ImageMaximum_kBq_per_mL']:.4g} kBq/mL, scatter fraction "
        f"{sidecar['EstimatedScatterFraction']:.3f} -> {', '.join(str(p) for p in result['outputs'])} ({steps})"
    )
    if result["intermediate"]:
        print(f"intermediate files: {', '.join(str(p) for p in result['intermediate'])}")


def register(commands) -> None:
    from ..recon.chain import DEFAULTS

    recon = commands.add_parser(
        "recon",
        help="one list-mode (or sinogram file) -> image, as the workflow's reconstruction rules do",
        description="Histogram, norm, attenuation, randoms, scatter and OP-OSEM of one acquisition, by the "
        "functions the workflow's rules call (petiq.recon.chain). Every input is checked before "
        "any step runs; image, sidecar and 0-1 image appear together or not at all.",
    )
    recon.add_argument(
        "acquisition",
        metavar="LISTMODE_OR_SINOGRAMS",
        help="list-mode .l (its .l.hdr beside it), the .dcm of a DICOM export (its .bf beside it), "
        "or a sinogram .npz from `petiq histogram`",
    )
    recon.add_argument(
        "--norm",
        required=True,
        help="the norm .npz (rule norm's output) or the norm scan .npz (`petiq simulate --norm`)",
    )
    recon.add_argument(
        "--mumap",
        required=True,
        help="the patient μ-map: NIfTI (cm⁻¹, RAS+ affine), e7 Interfile (.v + .v.hdr, cm⁻¹) or the "
        "scanner's DICOM μ-map (file or series folder, 10⁴ x cm⁻¹); see docs/mumaps.md",
    )
    recon.add_argument(
        "--hardware-mumap",
        action="append",
        default=None,
        metavar="PATH",
        help="a hardware μ-map (head coil, table; e7 Interfile .v.hdr or NIfTI), added to the patient "
        "μ-map; repeat for each",
    )
    recon.add_argument(
        "--bed-position-mm",
        type=float,
        default=None,
        metavar="MM",
        help="start horizontal bed position (mm) placing the hardware μ-maps (default: the list-mode "
        "header's; needed for a sinogram input)",
    )
    recon.add_argument(
        "--table-position-origin-mm",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="TablePositionOrigin for the hardware μ-maps (default: a list-mode .dcm's CSA header)",
    )
    recon.add_argument(
        "--gantry-table-home-offset-mm",
        type=float,
        nargs=3,
        default=None,
        metavar=("X", "Y", "Z"),
        help="GantryTableHomeOffset for the hardware μ-maps (default: the DICOM μ-map's CSA header)",
    )
    recon.add_argument("--out", required=True, metavar="IMAGE.nii.gz", help="the image (kBq/mL)")
    recon.add_argument(
        "--sidecar", default=None, metavar="JSON", help="the PET-BIDS sidecar (default: IMAGE with .json)"
    )
    recon.add_argument(
        "--norm01",
        default=None,
        metavar="NII",
        help="the image divided by its maximum (default: IMAGE with _desc-norm01 before its suffix)",
    )
    recon.add_argument("--metadata", default=None, metavar="JSON", help="a JSON object of keys to add to the sidecar")
    recon.add_argument(
        "--scanner",
        default=DEFAULTS["scanner"],
        help=f"scanner preset: mmr, demo or tiny (default {DEFAULTS['scanner']})",
    )
    recon.add_argument(
        "--span", type=int, default=DEFAULTS["span"], help=f"axial compression (default {DEFAULTS['span']})"
    )
    recon.add_argument(
        "--iterations",
        type=int,
        default=DEFAULTS["n_iterations"],
        help=f"OSEM iterations (config recon.iterations; default {DEFAULTS['n_iterations']})",
    )
    recon.add_argument(
        "--subsets",
        type=int,
        default=DEFAULTS["n_subsets"],
        help=f"OSEM subsets (config recon.subsets; default {DEFAULTS['n_subsets']})",
    )
    recon.add_argument(
        "--post-filter-fwhm-mm",
        type=float,
        default=DEFAULTS["post_filter_fwhm_mm"],
        help=f"Gaussian post-filter FWHM in mm, 0 = off (config recon.post_filter_fwhm_mm; default "
        f"{DEFAULTS['post_filter_fwhm_mm']:g})",
    )
    recon.add_argument(
        "--device",
        default=DEFAULTS["backend"],
        help=f"auto, cpu, cuda or torch-cpu (config device; default {DEFAULTS['backend']})",
    )
    recon.add_argument(
        "--threads", type=int, default=None, help="histogram threads: 1, 2 or 4 (default: 2 where a core is free)"
    )
    recon.add_argument(
        "--work-dir",
        default=None,
        metavar="DIR",
        help="folder of the intermediate step files (default: a temporary folder beside IMAGE)",
    )
    recon.add_argument(
        "--keep-intermediate",
        action="store_true",
        help="keep the step files (sinograms, norm, randoms, attenuation, scatter .npz) in --work-dir, "
        "or in IMAGE_work/ without it",
    )
    recon.add_argument("--force", action="store_true", help="replace existing outputs")
    recon.add_argument("--quiet", action="store_true", help="no step lines and no progress bar")
    recon.set_defaults(func=_recon)

"""The ``petiq`` command line. Each sub-command is a thin shell over one library function.

The data commands live here; every other module of this package defines ``register(commands)``
and adds its own sub-commands (found by name, so a new stage adds a module and touches nothing else).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..core.errors import PetiqInputError


def _resources_fetch(args) -> None:
    from ..cohort.anatomy import fetch_anatomy

    folder = fetch_anatomy(args.dest, wheel=args.wheel)
    print(f"anatomy ready in {folder}")


def _check_patients(args) -> None:
    from ..cohort.patients import read_patients

    sheet = read_patients(args.sheet, scanner=args.scanner)
    counts = sheet["source"].value_counts().to_dict()
    print(f"{args.sheet}: {len(sheet)} patients ({counts}); no problems found")


def _check_config(args) -> None:
    from ..core.config import read_config_file

    keys = read_config_file(args.config)
    print(
        f"{args.config}: valid YAML, {len(keys)} top-level key(s); `snakemake -n --configfile {args.config}` checks the values"
    )


def _check_simulate_args(args) -> None:
    """A patient simulation needs its truth, μ-map, participants table and subject, and a duration > 0."""
    from pathlib import Path

    for flag, value in (
        ("--truth", args.truth),
        ("--mumap", args.mumap),
        ("--participants", args.participants),
        ("--subject", args.subject),
    ):
        if not value:
            raise PetiqInputError(
                None, f"petiq simulate needs {flag} for a patient", f"give {flag} (or --norm for the norm scan)"
            )
    for flag, value in (("--truth", args.truth), ("--mumap", args.mumap), ("--participants", args.participants)):
        if not Path(value).is_file():
            raise PetiqInputError(
                value, f"the {flag} file does not exist", "check the path (the cohort stage writes these)"
            )
    if not args.duration > 0:
        raise PetiqInputError(
            None, f"--duration is {args.duration:g} s", "give the acquisition duration in seconds (> 0), e.g. 900"
        )


def _simulate(args) -> None:
    import json

    from ..cohort.patients import read_participants
    from ..core.fileio import write_json
    from ..listmode.simulate import simulate_norm_scan, simulate_patient
    from ..scanner.geometry import Scanner

    scanner = Scanner.from_name(args.scanner)
    if args.norm and args.out.lower().endswith((".n", ".dcm", ".ima")):
        from ..listmode.simulate import scanner_component_norm
        from .recon.norm_writer import write_component_norm

        written = write_component_norm(args.out, scanner_component_norm(scanner, args.scanner_seed, args.span), scanner)
        print(f"component norm of the simulated {scanner.name}: -> {written}")
        return
    if args.norm:
        import numpy as np

        from ..core.fileio import write_npz

        if not args.norm_counts_per_bin > 0:
            raise PetiqInputError(
                None,
                f"--norm-counts-per-bin is {args.norm_counts_per_bin:g}",
                "give the mean trues per span-1 bin, > 0 (default 200)",
            )
        scan = simulate_norm_scan(
            scanner,
            args.scanner_seed,
            args.seed,
            span=args.span,
            counts_per_bin=args.norm_counts_per_bin,
            progress=not args.quiet,
        )
        write_npz(args.out, scanner=np.asarray(scanner.name), **scan)
        print(f"norm scan of {scanner.name}: {int(scan['sinogram'].sum())} counts -> {args.out}")
        return
    _check_simulate_args(args)
    participants = read_participants(args.participants)
    if args.subject not in set(participants["participant_id"]):
        raise PetiqInputError(
            args.participants,
            f"--subject {args.subject} is not a participant here",
            f"use one of {', '.join(participants['participant_id'][:8])}…"
            if len(participants) > 8
            else f"use one of {', '.join(participants['participant_id'])}",
        )
    row = participants.set_index("participant_id", drop=False).loc[args.subject].to_dict()
    summary = simulate_patient(
        truth_path=args.truth,
        mumap_path=args.mumap,
        participant=row,
        scanner=scanner,
        scanner_seed=args.scanner_seed,
        seed=args.seed,
        out_path=args.out,
        duration_s=args.duration,
        span=args.span,
        progress=not args.quiet,
    )
    if args.summary:
        write_json(args.summary, summary)
    print(json.dumps(summary, indent=1, default=float))


def _thin(args) -> None:
    from ..listmode import thin_listmode

    summary = thin_listmode(args.src, args.dst, args.fraction, args.seed)
    print(summary.as_dict())


def _histogram(args) -> None:
    from ..recon.chain import histogram_file
    from ..scanner.geometry import Scanner

    scanner = Scanner.from_name(args.scanner)
    if args.threads is not None and args.threads < 1:
        raise PetiqInputError(None, f"--threads is {args.threads}", "give 1 or more threads, or leave it out")
    hist = histogram_file(args.src, args.out, scanner, args.span, threads=args.threads)  # also `petiq recon`'s step
    print(f"{args.src}: {hist.n_prompts} prompts, {hist.n_delayeds} delayeds, {hist.duration_s:g} s -> {args.out}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petiq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"petiq {__version__}")
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="write output, progress and any traceback to FILE; a failure is reported on the console "
        "in one line (how the workflow's jobs call petiq)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    resources = commands.add_parser("resources", help="offline resources (anatomy atlas)")
    resources_sub = resources.add_subparsers(dest="action", required=True)
    fetch = resources_sub.add_parser("fetch", help="take the Hammers atlas and CSF map from the t1prep wheel on PyPI")
    fetch.add_argument("--dest", default="resources/anatomy", help="folder to write to (config key cohort.anatomy_dir)")
    fetch.add_argument("--wheel", default=None, help="a local t1prep-0.8.1 wheel instead of downloading it")
    fetch.set_defaults(func=_resources_fetch)

    check = commands.add_parser("check-patients", help="validate a patient sheet and report the first problem")
    check.add_argument("sheet", help="the patient sheet (TSV)")
    check.add_argument(
        "--scanner",
        default="mmr",
        choices=["mmr", "demo", "tiny"],
        help="the scanner real rows' files must be for (config key scanner; default mmr)",
    )
    check.set_defaults(func=_check_patients)
    check_config = commands.add_parser(
        "check-config", help="read a config file; a YAML error names its line (Snakemake's does not)"
    )
    check_config.add_argument("config", help="a YAML config file, e.g. config/demo.yaml")
    check_config.set_defaults(func=_check_config)
    simulate = commands.add_parser("simulate", help="a cohort patient -> 100 %% list-mode (or the scanner's norm scan)")
    simulate.add_argument("--scanner", default="mmr", help="scanner preset: mmr, demo or tiny")
    simulate.add_argument("--span", type=int, default=11, help="axial compression of the simulated expectation")
    simulate.add_argument("--seed", type=int, required=True, help="seed of this acquisition")
    simulate.add_argument("--scanner-seed", type=int, required=True, help="seed of the scanner's normalisation truth")
    simulate.add_argument(
        "--out",
        required=True,
        help="output .l file (its .l.hdr is written beside it); a .dcm writes the scanner's DICOM form (.dcm + .bf); with --norm: .npz the norm scan, .n (+ .n.hdr) or .dcm the scanner's component norm",
    )
    simulate.add_argument(
        "--norm",
        action="store_true",
        help="the scanner's normalisation instead: its norm scan of a uniform cylinder (--out .npz) or its truth as the mMR's component norm file (--out .n or .dcm)",
    )
    simulate.add_argument(
        "--norm-counts-per-bin",
        type=float,
        default=200.0,
        help="with --norm: mean trues per span-1 bin inside the cylinder (config listmode.norm_counts_per_bin)",
    )
    simulate.add_argument("--truth", help="the patient's true activity (NIfTI, kBq/mL)")
    simulate.add_argument("--mumap", help="the patient's μ-map (NIfTI, cm^-1)")
    simulate.add_argument("--participants", help="participants.tsv with the patient's metadata")
    simulate.add_argument("--subject", help="participant_id")
    simulate.add_argument("--duration", type=float, default=900.0, help="acquisition duration in seconds")
    simulate.add_argument("--summary", help="write the simulation summary (JSON) here")
    simulate.add_argument("--quiet", action="store_true", help="no progress bar")
    simulate.set_defaults(func=_simulate)

    thin = commands.add_parser("thin", help="keep each prompt and delayed with probability F (a lower dose)")
    thin.add_argument("src", help="list-mode file (.l; or the .dcm of a DICOM export, its .bf beside it)")
    thin.add_argument("dst", help="thinned list-mode file (.l; .dcm writes the DICOM form, .dcm + .bf)")
    thin.add_argument("--fraction", type=float, required=True, help="kept fraction, 0 < F <= 1")
    thin.add_argument("--seed", type=int, required=True, help="seed (same seed, same file)")
    thin.set_defaults(func=_thin)

    histogram = commands.add_parser("histogram", help="list-mode -> prompts and delayeds sinograms (.npz)")
    histogram.add_argument("src", help="list-mode file (.l; or the .dcm of a DICOM export, its .bf beside it)")
    histogram.add_argument("out", help="sinogram file (.npz)")
    histogram.add_argument("--span", type=int, default=11, help="axial compression (mMR: 11)")
    histogram.add_argument("--scanner", default="mmr", help="scanner preset: mmr, demo or tiny")
    histogram.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads of the histogram pass (default: 2 where a second core is idle, else 1)",
    )
    histogram.set_defaults(func=_histogram)

    for module in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
        importlib.import_module(f"{__name__}.{module}").register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one sub-command; bad input exits 2 with one line naming the file, the problem and the fix.

    With ``--log FILE`` everything goes to FILE (:func:`petiq.core.logs.log_to`) and only a failure reaches
    the console, as one line; an unexpected error exits 1 with its traceback in FILE."""
    args = build_parser().parse_args(argv)
    console = sys.stderr
    if args.log:
        from ..core.logs import failure_line, log_to

        log_to(args.log).info("petiq %s", " ".join(sys.argv[1:] if argv is None else argv))
    try:
        args.func(args)
    except PetiqInputError as error:
        print(f"petiq: error: {error}", file=sys.stderr)
        if args.log:
            print(failure_line(error, args.log), file=console)
        return 2
    except Exception as error:
        if not args.log:
            raise
        import traceback

        traceback.print_exc()
        print(failure_line(error, args.log), file=console)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

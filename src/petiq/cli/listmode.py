"""``petiq simulate``, ``petiq thin``, ``petiq histogram``: list-mode made, thinned to a dose and
histogrammed into sinograms."""

from __future__ import annotations

from ..core.errors import PetiqInputError


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
        from ..recon.norm_writer import write_component_norm

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


def register(commands) -> None:
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

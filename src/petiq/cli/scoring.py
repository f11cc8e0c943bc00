"""``petiq sessions plan|sheets`` and ``petiq ratings import|check``: reading sessions for real clinicians."""

from __future__ import annotations

import argparse

from ..core import paths


def _rated_patients(args) -> list[str]:
    """Patients from --patients, or from --splits filtered by --roles."""
    if args.patients:
        return list(args.patients)
    from pathlib import Path

    from ..core.errors import PetiqInputError
    from ..core.fileio import read_tsv_frame

    if not Path(args.splits).is_file():
        raise PetiqInputError(
            args.splits, "the splits file does not exist", "run the cohort stage first, or pass --patients"
        )
    splits = read_tsv_frame(args.splits, "splits file")
    if not {"participant_id", "role"} <= set(splits.columns):
        raise PetiqInputError(
            args.splits, f"columns are {list(splits.columns)}", "give the splits.tsv petiq wrote (participant_id, role)"
        )
    return list(splits.loc[splits["role"].isin(args.roles), "participant_id"])


def _plan(args) -> None:
    from ..core.fileio import check_output
    from ..scoring.sessions import plan_sessions, session_summary, write_plan

    check_output(args.out, [args.splits] if args.splits else [], force=args.force, what="unblinding key")
    plan = plan_sessions(
        _rated_patients(args),
        args.doses,
        design=args.design,
        rereads=args.rereads,
        n_sessions=args.n_sessions,
        min_images=args.min_images,
        max_images=args.max_images,
        seed=args.seed,
        time_limit_s=args.time_limit,
        names={name: "--" + name.replace("_", "-") for name in ("rereads", "n_sessions", "min_images", "max_images")},
    )
    write_plan(plan, args.out)
    print(session_summary(plan).to_string(index=False))
    print(
        f"{len(plan)} readings in {plan['session'].nunique()} sessions -> {args.out} (private: keep it from the readers)"
    )


def _sheets(args) -> None:
    from functools import partial
    from pathlib import Path

    from ..core.bids import norm01_path
    from ..core.errors import PetiqInputError
    from ..scoring.sessions import read_plan, write_session_materials

    filled = sorted(Path(args.out_dir).glob("session-*/*_ratings-form.tsv")) if Path(args.out_dir).is_dir() else []
    if filled and not args.force:
        raise PetiqInputError(
            filled[0],
            f"{len(filled)} ratings form(s) exist already under {args.out_dir} (first shown) and may be filled in",
            "pass --force to replace them with blank forms, or write the sessions to another folder",
        )

    folders = write_session_materials(
        read_plan(args.key), partial(norm01_path, args.recon_dir), args.out_dir, progress=not args.quiet
    )
    print(f"{len(folders)} session folders under {args.out_dir}")


def _import(args) -> None:
    from ..core.fileio import check_output
    from ..scoring.ratings import collect_forms, import_ratings, rater_summary

    check_output(args.out, [args.key, *collect_forms(args.forms, args.key)], force=args.force, what="ratings table")
    ratings = import_ratings(args.forms, args.key, args.out, partial=args.partial)
    print(rater_summary(ratings).to_string(index=False))
    print(f"{len(ratings)} ratings -> {args.out}")


def _check(args) -> None:
    from ..scoring.ratings import check_ratings_table, rater_summary

    ratings = check_ratings_table(args.table)
    print(rater_summary(ratings).to_string(index=False))
    print(f"{args.table}: {len(ratings)} ratings; no problems found")


def register(commands: argparse._SubParsersAction) -> None:
    sessions = commands.add_parser("sessions", help="blinded reading sessions for clinicians")
    sessions_sub = sessions.add_subparsers(dest="action", required=True)
    plan = sessions_sub.add_parser(
        "plan", help="choose the images and place them in sessions (writes the private unblinding key)"
    )
    who = plan.add_mutually_exclusive_group(required=True)
    who.add_argument("--patients", nargs="+", help="rated participant ids")
    who.add_argument("--splits", help="splits.tsv; rate the patients of --roles")
    plan.add_argument(
        "--roles", nargs="+", default=["transfer_train", "transfer_val", "test"], help="roles rated (with --splits)"
    )
    plan.add_argument("--doses", nargs="+", type=float, required=True, help="reconstructed doses in percent")
    plan.add_argument(
        "--design", choices=["paper", "all_doses"], default="paper", help="paper: one dose per category per patient"
    )
    plan.add_argument("--rereads", type=int, default=0, help="images read a second time, in a later session")
    plan.add_argument("--n-sessions", type=int, required=True, help="number of reading sessions")
    plan.add_argument("--min-images", type=int, default=1, help="fewest readings in a session")
    plan.add_argument("--max-images", type=int, required=True, help="most readings in a session")
    plan.add_argument("--seed", type=int, required=True, help="config seed")
    plan.add_argument("--time-limit", type=float, default=120.0, help="solver time limit in seconds")
    plan.add_argument(
        "--out", required=True, help="unblinding key (TSV), e.g. results/scores/sessions/private/unblinding_key.tsv"
    )
    plan.add_argument("--force", action="store_true", help="replace an existing unblinding key")
    plan.set_defaults(func=_plan)

    sheets = sessions_sub.add_parser("sheets", help="reading sheets (PNG, PDF) and blank ratings forms per session")
    sheets.add_argument("--key", required=True, help="the unblinding key from `petiq sessions plan`")
    sheets.add_argument(
        "--recon-dir",
        default=paths.RECON,
        help="the BIDS dataset of the reconstructions (0-1 images in its derivatives/petiq)",
    )
    sheets.add_argument("--out-dir", required=True, help="sessions folder, e.g. results/scores/sessions")
    sheets.add_argument("--quiet", action="store_true", help="no progress bar")
    sheets.add_argument("--force", action="store_true", help="replace existing (perhaps filled) ratings forms")
    sheets.set_defaults(func=_sheets)

    ratings = commands.add_parser("ratings", help="clinicians' ratings")
    ratings_sub = ratings.add_subparsers(dest="action", required=True)
    imp = ratings_sub.add_parser("import", help="check filled forms, unblind them and write ratings.tsv")
    imp.add_argument("--forms", nargs="+", required=True, help="filled forms, or folders of them (*.tsv)")
    imp.add_argument("--key", required=True, help="the private unblinding key")
    imp.add_argument("--out", required=True, help="ratings table, e.g. results/scores/ratings.tsv")
    imp.add_argument("--partial", action="store_true", help="allow sessions that no form scores yet")
    imp.add_argument("--force", action="store_true", help="replace an existing ratings table")
    imp.set_defaults(func=_import)
    check = ratings_sub.add_parser("check", help="check a ratings table in the final format and report every problem")
    check.add_argument("table", help="ratings TSV (participant_id, dose, rater, session, reading, GQR, PR, DC)")
    check.set_defaults(func=_check)

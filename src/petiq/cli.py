"""The ``petiq`` command line. Each sub-command is a thin shell over one library function."""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import PetiqInputError


def _resources_fetch(args) -> None:
    from .anatomy import fetch_anatomy

    folder = fetch_anatomy(args.dest, wheel=args.wheel)
    print(f"anatomy ready in {folder}")


def _check_patients(args) -> None:
    from .cohort import read_patients

    sheet = read_patients(args.sheet)
    counts = sheet["source"].value_counts().to_dict()
    print(f"{args.sheet}: {len(sheet)} patients ({counts}); no problems found")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petiq", description=__doc__)
    parser.add_argument("--version", action="version", version=f"petiq {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    resources = commands.add_parser("resources", help="offline resources (anatomy atlas)")
    resources_sub = resources.add_subparsers(dest="action", required=True)
    fetch = resources_sub.add_parser("fetch", help="take the Hammers atlas and CSF map from the t1prep wheel on PyPI")
    fetch.add_argument("--dest", default="resources/anatomy", help="folder to write to (config key cohort.anatomy_dir)")
    fetch.add_argument("--wheel", default=None, help="a local t1prep-0.8.1 wheel instead of downloading it")
    fetch.set_defaults(func=_resources_fetch)

    check = commands.add_parser("check-patients", help="validate a patient sheet and report the first problem")
    check.add_argument("sheet", help="the patient sheet (TSV)")
    check.set_defaults(func=_check_patients)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except PetiqInputError as error:
        print(f"petiq: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

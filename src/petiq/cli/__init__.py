"""The ``petiq`` command line. Each sub-command is a thin shell over one library function.

This module is the framework: the parser, ``--log`` and the one-line errors. Every other module of
this package is one stage's commands: it defines ``register(commands)`` and adds its own
sub-commands (found by name, so a new stage adds a module and touches nothing else).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from .. import __version__
from ..core.errors import PetiqInputError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="petiq", description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", action="version", version=f"petiq {__version__}")
    parser.add_argument(
        "--log",
        metavar="FILE",
        help="write output, progress and any traceback to FILE; a failure is reported on the console "
        "in one line (how the workflow's jobs call petiq)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

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

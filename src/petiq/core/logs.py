"""Logging for workflow jobs: everything a job says goes to its rule's ``log:`` file, and a job that
fails says why on the console in one line (the traceback stays in the log)."""

from __future__ import annotations

import logging
import platform
import sys
import traceback
from pathlib import Path

from .. import __version__
from .errors import PetiqInputError


def failure_line(error: BaseException, log_path: str | Path) -> str:
    """The one console line of a failed job: the error's own message for bad input, the exception's
    type and message otherwise, and where the whole story is.

    >>> failure_line(PetiqInputError("a.tsv", "row 2: weight_kg is -1", "give kg > 0"), "logs/x.log")
    'petiq: error: a.tsv: row 2: weight_kg is -1. Fix: give kg > 0. (log: logs/x.log)'
    >>> failure_line(KeyError("sub-99"), "logs/x.log")
    "petiq: unexpected KeyError: 'sub-99' (traceback in logs/x.log)"
    """
    message = " ".join(str(error).split())
    if isinstance(error, PetiqInputError):
        return f"petiq: error: {message} (log: {log_path})"
    return f"petiq: unexpected {type(error).__name__}: {message} (traceback in {log_path})"


def log_to(path: str | Path, name: str = "petiq") -> logging.Logger:
    """Send this process's log records, stdout and stderr (tqdm progress bars, warnings) to ``path``.

    The first lines record the petiq and Python versions, so a log explains the run that wrote it. An
    exception that ends the process is written to the log with its traceback and reported on the
    console (the stderr the process started with, which Snakemake shows) as one line.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    console = sys.stderr
    stream = open(path, "w", buffering=1)  # noqa: SIM115 (the log stays open for the life of the job)
    sys.stderr = stream
    sys.stdout = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )

    def report(kind, error, tb):
        traceback.print_exception(kind, error, tb, file=stream)
        stream.flush()
        if issubclass(kind, Exception):
            print(failure_line(error, path), file=console, flush=True)

    sys.excepthook = report
    logger = logging.getLogger(name)
    logger.info("petiq %s, Python %s on %s", __version__, platform.python_version(), platform.node())
    return logger

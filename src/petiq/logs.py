"""Logging for workflow jobs: everything a job says goes to its rule's ``log:`` file."""

from __future__ import annotations

import logging
import platform
import sys
from pathlib import Path

from . import __version__


def log_to(path: str | Path, name: str = "petiq") -> logging.Logger:
    """Send this process's log records and stderr (tqdm progress bars, warnings) to ``path``.

    The first lines record the petiq and Python versions, so a log explains the run that wrote it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "w", buffering=1)
    sys.stderr = stream
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[logging.StreamHandler(stream)],
        force=True,
    )
    logger = logging.getLogger(name)
    logger.info("petiq %s, Python %s on %s", __version__, platform.python_version(), platform.node())
    return logger

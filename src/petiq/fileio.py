"""Atomic writes: nothing is ever left half-written.

Every writer writes to a temporary file in the destination folder, then renames it into place
(``os.replace`` is atomic on POSIX within one filesystem). A crash leaves at most a hidden
``.tmp`` file that no rule takes for an output.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    ``suffix`` defaults to the destination's full suffix (``.nii.gz`` stays ``.nii.gz``) so
    libraries that choose a format by extension behave.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix is None:
        suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _same_path(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output(path: str | Path, inputs: Iterable[str | Path] = (), *, force: bool = False, what: str = "output",
                 flag: str = "--force") -> Path:
    """Refuse, before any work, an output that is one of the inputs, or that exists already unless ``force``.

    Compares resolved paths (and inodes, for links), so ``./a.tsv`` and ``a.tsv`` are one file.

    >>> check_output("ratings.tsv", ["./ratings.tsv"])
    Traceback (most recent call last):
    ...
    petiq.errors.PetiqInputError: ratings.tsv: the output would overwrite the input ./ratings.tsv. Fix: write the output to another path.
    """
    from .errors import PetiqInputError

    out = Path(path)
    for given in inputs:
        if _same_path(out, Path(given)):
            raise PetiqInputError(out, f"the {what} would overwrite the input {given}", f"write the {what} to another path")
    if out.exists() and not force:
        raise PetiqInputError(out, f"the {what} exists already", f"pass {flag} to replace it, or write to another path")
    return out


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def write_tsv(path: str | Path, frame) -> None:
    """Write a pandas DataFrame as TSV (no index), atomically."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, lineterminator="\n")


def write_npz(path: str | Path, **arrays) -> None:
    """Write arrays as a compressed ``.npz``, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **arrays)


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

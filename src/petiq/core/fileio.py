"""Atomic writes: nothing is ever left half-written.

Every writer writes to a temporary file in the destination folder, then renames it into place
(``os.replace`` is atomic on POSIX within one filesystem). A crash leaves at most a hidden
``.tmp`` file that no rule takes for an output, named after its host and process, and the next
write of the same file removes it (:func:`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

_UMASK = os.umask(0)
os.umask(_UMASK)


_HOST = socket.gethostname().replace("/", "_")


def _temp_prefix(path: Path) -> str:
    """``.<name>.<host>.``: a temporary of ``path`` is ``<prefix><pid>.<random>.tmp<suffix>``."""
    return f".{path.name}.{_HOST}."


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Remove the temporaries of ``path`` left by killed writers on this host (their process is
    gone); return them. A killed job's half-written output never outlives the next run of the job.
    Temporaries of live processes and of other hosts (a shared filesystem) are left alone."""
    path = Path(path)
    prefix = _temp_prefix(path)
    removed = []
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp*"):
        pid = tmp.name[len(prefix) :].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
                removed.append(tmp)
    return removed


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
    remove_stale_temporaries(path)
    fd, tmp = tempfile.mkstemp(prefix=f"{_temp_prefix(path)}{os.getpid()}.", suffix=".tmp" + suffix, dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the file the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file: equal once resolved, or the same inode (hard links)."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        return True
    return a.exists() and b.exists() and os.path.samefile(a, b)


def check_output(
    path: str | Path,
    inputs: Iterable[str | Path] = (),
    *,
    force: bool = False,
    what: str = "output",
    flag: str = "--force",
) -> Path:
    """Refuse, before any work, an output that is one of the inputs, or that exists already unless ``force``.

    Compares resolved paths (and inodes, for links), so ``./a.tsv`` and ``a.tsv`` are one file.

    >>> check_output("ratings.tsv", ["./ratings.tsv"])
    Traceback (most recent call last):
    ...
    petiq.core.errors.PetiqInputError: ratings.tsv: the output would overwrite the input ./ratings.tsv. Fix: write the output to another path.
    """
    from .errors import PetiqInputError

    out = Path(path)
    for given in inputs:
        if same_file(out, given):
            raise PetiqInputError(
                out, f"the {what} would overwrite the input {given}", f"write the {what} to another path"
            )
    if out.exists() and not force:
        raise PetiqInputError(out, f"the {what} exists already", f"pass {flag} to replace it, or write to another path")
    return out


def read_text_table(path: str | Path, what: str = "table") -> str:
    """The text of a tab-separated file a person may have edited: UTF-8 with or without a BOM, or
    UTF-16 with its BOM (Excel's "Unicode text"); Windows line ends are fine. An empty file, or text
    in another encoding, is a :class:`~petiq.core.errors.PetiqInputError` naming the file and the fix."""
    from .errors import PetiqInputError

    path = Path(path)
    if not path.is_file():
        raise PetiqInputError(path, f"the {what} does not exist", "check the path")
    data = path.read_bytes()
    if not data.strip():
        raise PetiqInputError(path, f"the {what} is empty", f"give a tab-separated {what} with a header line")
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return data.decode("utf-16")
    if b"\x00" in data:
        raise PetiqInputError(
            path,
            f"the {what} holds NUL bytes (it looks like UTF-16 without a byte-order mark)",
            "save it as UTF-8 tab-separated text",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise PetiqInputError(
            path,
            f"the {what} is not UTF-8 text: byte {error.start} is {data[error.start]:#04x}",
            "save it as UTF-8 tab-separated text (Excel: Save As, 'Tab delimited text', then convert, or "
            "'UTF-16 Unicode text')",
        ) from None


def read_tsv_frame(path: str | Path, what: str = "table", *, comment: str | None = None):
    """A person-edited TSV as a pandas DataFrame of strings (see :func:`read_text_table`): blank lines
    (and lines starting with ``comment``) skipped, cells and headers stripped, empty columns from
    trailing tabs dropped; a row with more filled cells than the header is an error naming its line."""
    import csv
    import io

    import pandas as pd

    from .errors import PetiqInputError

    text = read_text_table(path, what)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t")
    rows = []
    for cells in reader:
        cells = [c.strip() for c in cells]
        if any(cells) and not (comment and cells[0].startswith(comment)):
            rows.append((reader.line_num, cells))
    if not rows:
        raise PetiqInputError(path, f"the {what} is empty", f"give a tab-separated {what} with a header line")
    header = rows[0][1]
    while header and header[-1] == "":
        header = header[:-1]
    for line, cells in rows[1:]:
        extra = [c for c in cells[len(header) :] if c]
        if extra:
            raise PetiqInputError(
                path,
                f"line {line} has {len(header) + len(extra)} filled cells but the header names {len(header)} "
                f"columns" + (" (a value under no header)" if len(cells) <= len(rows[0][1]) else ""),
                "give every row as many tab-separated cells as the header, and name every column",
            )
    if "" in header:
        raise PetiqInputError(
            path, f"column {header.index('') + 1} of the {what} has no name", "name every column in the header line"
        )
    body = [(cells + [""] * len(header))[: len(header)] for _, cells in rows[1:]]
    return pd.DataFrame(body, columns=header, dtype=str)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: object) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=json_default) + "\n")


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


def json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")

"""Small helpers shared by the tests."""

from __future__ import annotations

from pathlib import Path


def write_sheet(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\t".join(header) + "\n" + "".join("\t".join(r) + "\n" for r in rows))
    return path

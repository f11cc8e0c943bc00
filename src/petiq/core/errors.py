"""Errors that teach: each names the file, what was wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path


class PetiqInputError(ValueError):
    """Bad input found before (or instead of) doing any work.

    >>> str(PetiqInputError("config/patients.tsv", "row 3: weight_kg is -2", "give the weight in kg (> 0)"))
    'config/patients.tsv: row 3: weight_kg is -2. Fix: give the weight in kg (> 0).'
    """

    def __init__(self, path: str | Path | None, problem: str, fix: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}. Fix: {fix}.")

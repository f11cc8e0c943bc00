"""Shared fixtures. Tests run from the repository root; the anatomy comes from resources/anatomy
(`make test` fetches it first with `petiq resources fetch`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ANATOMY_DIR = Path(os.environ.get("PETIQ_ANATOMY_DIR", ROOT / "resources" / "anatomy"))


@pytest.fixture(scope="session")
def anatomy_dir() -> Path:
    from petiq.anatomy import check_anatomy_dir

    return check_anatomy_dir(ANATOMY_DIR)  # fails with the fix (`petiq resources fetch`) when absent


@pytest.fixture(scope="session")
def template(anatomy_dir):
    from petiq.anatomy import load_template

    return load_template(str(anatomy_dir))

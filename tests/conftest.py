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
    from petiq.cohort.anatomy import check_anatomy_dir

    return check_anatomy_dir(ANATOMY_DIR)  # fails with the fix (`petiq resources fetch`) when absent


@pytest.fixture(scope="session")
def template(anatomy_dir):
    from petiq.cohort.anatomy import load_template

    return load_template(str(anatomy_dir))


@pytest.fixture
def one_torch_thread():
    """One intra-op thread (training tests): on a shared 2-core machine OpenMP barriers stall tiny convolutions."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

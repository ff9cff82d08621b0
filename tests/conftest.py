"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder: $FEDAUDIT_DATA_DIR, else ../shared/data next to the repo."""
    path = Path(os.environ.get("FEDAUDIT_DATA_DIR") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        pytest.skip(f"shared data folder not found at {path}; set FEDAUDIT_DATA_DIR")
    return path

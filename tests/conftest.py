from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared/ folder (beside the checkout): data and CRDs."""
    path = Path(os.environ.get("TIDEWATCH_SHARED", REPO.parent / "shared"))
    if not path.is_dir():
        pytest.fail(f"shared/ not found at {path}; set TIDEWATCH_SHARED")
    return path

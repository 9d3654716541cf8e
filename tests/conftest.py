"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

# The repository sits beside `shared/` (…/main and …/shared), which CI always provides.
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def c2r_data() -> Path:
    """The C2R paper's reference data (../shared/data/c2r); missing data is a failure, not a skip."""
    path = SHARED_DATA / "c2r"
    assert path.is_dir(), f"C2R reference data not found at {path}"
    return path

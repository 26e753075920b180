"""Shared pytest fixtures: repository root and the ground-truth folder ../shared."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def root() -> Path:
    """The repository root."""
    return ROOT


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ground-truth folder beside the repository (SPEC, conformance, test sets)."""
    if not SHARED.is_dir():
        pytest.fail(f"ground-truth folder not found: {SHARED} (expected ../shared beside the repo)")
    return SHARED

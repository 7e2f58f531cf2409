"""Shared test fixtures."""

from pathlib import Path

import pytest

# Real CIFAR-10 photos beside the repository (`../shared/data/cifar10-subset/{train,val}`);
# present on the project's machines and CI, absent for users, where these tests skip.
CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


@pytest.fixture
def cifar_subset() -> Path:
    """The real-photo folder, or a skip when it is absent."""
    if not CIFAR_SUBSET.is_dir():
        pytest.skip(f"real CIFAR-10 subset not present at {CIFAR_SUBSET}")
    return CIFAR_SUBSET

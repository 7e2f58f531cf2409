"""Shared test fixtures."""

from pathlib import Path

import pytest
import torch

# Real CIFAR-10 photos beside the repository (`../shared/data/cifar10-subset/{train,val}`);
# present on the project's machines and CI, absent for users, where these tests skip.
CIFAR_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-subset"


@pytest.fixture
def cifar_subset() -> Path:
    """The real-photo folder, or a skip when it is absent."""
    if not CIFAR_SUBSET.is_dir():
        pytest.skip(f"real CIFAR-10 subset not present at {CIFAR_SUBSET}")
    return CIFAR_SUBSET


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny models on single games are many times
    faster that way on a busy machine (no waiting for a second thread at every small op)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

"""Test defaults: float64 and seeded generators, as the style guide asks."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture(autouse=True)
def _float64_and_seed():
    """Every test runs in float64 with the global RNG seeded; restores float32 after."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    torch.manual_seed(0)
    yield
    torch.set_default_dtype(previous)


@pytest.fixture
def generator() -> torch.Generator:
    """A seeded generator for tests that draw random numbers."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture
def forkable() -> None:
    """Skip unless this process can fork now: CUDA, once started (perhaps by an earlier test
    in the same worker), does not survive a fork."""
    if not hasattr(os, "fork") or torch.cuda.is_initialized():
        pytest.skip("needs os.fork, in a process that has not started CUDA")

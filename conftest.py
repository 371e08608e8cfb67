"""Shared by both test folders (tests/ for the product, research/tests/ for the research package)."""

from __future__ import annotations

import os

os.environ.setdefault("MPLBACKEND", "Agg")

import pytest


@pytest.fixture
def one_torch_thread():
    """One torch intra-op thread for the test: on a shared 2-core machine two threads stall in OpenMP spin-waits.

    Modules in either folder opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

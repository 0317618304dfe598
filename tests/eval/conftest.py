"""Evaluation tests run single-threaded: propagation issues many small tensor ops per tile, and on a shared
2-core machine two OpenMP threads waiting on each other make them ~10x slower than one thread."""

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _own_folder(tmp_path, monkeypatch):
    """Each test runs in its own folder: an eval without a checkpoint writes its table to ./eval."""
    monkeypatch.chdir(tmp_path)

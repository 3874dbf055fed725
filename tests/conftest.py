"""Fixtures shared across test modules (helpers that subprocesses import too live in tiny_runs.py)."""

import pytest
import torch


@pytest.fixture
def one_thread():
    # Tiny matrices gain nothing from a second thread, and OpenMP spin-waits make them many times slower
    # when the other core is busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

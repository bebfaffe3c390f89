"""Fixtures for the whole test tree."""
import pytest

from fastopt import config


@pytest.fixture
def small_threshold(monkeypatch):
    """Force the multi-threaded CPU kernels on every size."""
    monkeypatch.setenv("FASTOPT_PARALLEL_THRESHOLD", "1")
    config._reset()
    yield
    monkeypatch.delenv("FASTOPT_PARALLEL_THRESHOLD")
    config._reset()

"""tests/cuda: the 'cuda' backend on a real GPU (``make test-gpu``) or numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, part of ``make test``).

Without either, every test here that needs CUDA is skipped with the reason.  A test module that
needs no CUDA at all (pure-Python pieces of bench/gpu.py) sets ``NEEDS_CUDA = False``.
"""
import os
import pathlib

import pytest


_HERE = pathlib.Path(__file__).resolve().parent


def cuda_unavailable_reason():
    """None when numba.cuda can run kernels here (a GPU, or the simulator), else why not."""
    try:
        from numba import cuda
    except ImportError as exc:
        return f"numba.cuda cannot be imported ({exc}); install fastopt[cuda]"
    try:
        if cuda.is_available():
            return None
    except Exception as exc:  # a broken driver install
        return f"numba.cuda.is_available() raised {type(exc).__name__}: {exc}"
    sim = os.environ.get("NUMBA_ENABLE_CUDASIM", "")
    return (f"no CUDA GPU found (numba.cuda.is_available() is False) and the simulator is off "
            f"(NUMBA_ENABLE_CUDASIM={sim!r}); run `make test` (simulator) or `make test-gpu`")


def pytest_collection_modifyitems(config, items):
    reason = None
    checked = False
    for item in items:
        path = pathlib.Path(str(item.fspath)).resolve()
        if _HERE not in path.parents:
            continue
        if not getattr(item.module, "NEEDS_CUDA", True):
            continue
        if not checked:
            reason, checked = cuda_unavailable_reason(), True
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"CUDA unavailable: {reason}"))


@pytest.fixture
def small_grid(monkeypatch):
    """Shrink the CUDA launch so tiny arrays take several blocks and grid-stride iterations."""
    from fastopt import config
    monkeypatch.setenv("FASTOPT_CUDA_THREADS_PER_BLOCK", "16")
    monkeypatch.setenv("FASTOPT_CUDA_BLOCKS_PER_SM", "1")
    monkeypatch.setenv("FASTOPT_CUDA_MAX_BLOCKS", "2")
    config._reset()
    yield
    monkeypatch.undo()
    config._reset()

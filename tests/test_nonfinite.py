"""NaN and Inf behave identically on every host backend and as torch.optim.

Planted in gradients (several steps), in the parameter and in every state buffer, they must end
up in the same positions, with the same signs, in the parameters and every state buffer, on the
NumPy reference, Numba and Cython, and in torch.optim's own step: every family and option (each
spec's cases, plus lerp's other branch), with ``nonfinite="propagate"``.  (The CUDA backend is
checked the same way in tests/cuda/test_nonfinite_cuda.py.)"""
import numpy as np
import pytest

from _nonfinite import cases, compare, run_fastopt, run_torch
from _support import HOST_BACKENDS

ALL = cases()
TORCH = cases(torch_only=True)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case_id, spec, kw", ALL, ids=[c[0] for c in ALL])
def test_backends_agree_with_the_reference(case_id, spec, kw, backend, dtype):
    want = run_fastopt(spec, kw, "numpy", dtype)
    got = run_fastopt(spec, kw, backend, dtype)
    compare(got, want, f"{case_id} {backend}")
    assert np.isnan(want[0]).any() and np.isfinite(want[0]).any()  # the plants did something


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case_id, spec, kw", TORCH, ids=[c[0] for c in TORCH])
def test_backends_agree_with_torch(case_id, spec, kw, backend):
    pytest.importorskip("torch")
    want = run_torch(spec, kw)
    got = run_fastopt(spec, kw, backend)
    compare(got, want, f"{case_id} {backend} vs torch")

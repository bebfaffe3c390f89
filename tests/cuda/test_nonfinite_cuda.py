"""NaN and Inf on the CUDA backend (a GPU or the simulator): the same positions as the NumPy
reference and torch.optim (see tests/test_nonfinite.py)."""
import numpy as np
import pytest
from numba import cuda

from _nonfinite import FASTOPT_ONLY, cases, compare, run_fastopt, run_torch

ALL = cases()


def _dev(a):
    return cuda.to_device(a)


def _host(d):
    return d.copy_to_host()


@pytest.mark.parametrize("case_id, spec, kw", ALL, ids=[c[0] for c in ALL])
def test_cuda_agrees_with_reference_and_torch(case_id, spec, kw, small_grid):
    got = run_fastopt(spec, kw, "cuda", to_device=_dev, to_host=_host)
    compare(got, run_fastopt(spec, kw, "numpy"), f"{case_id} cuda")
    if spec.torch and not FASTOPT_ONLY & set(kw):
        pytest.importorskip("torch")
        compare(got, run_torch(spec, kw), f"{case_id} cuda vs torch")

"""Single-buffer benchmarks: every optimizer family, sizes 2**12 ... 2**26, every host backend.

One parameter array of ``n`` elements, stepped through the optimizer classes (``opt.step``, so the
Python overhead of a step is included, as a user pays it).  Implementations:

``numba``, ``cython`` (skipped cleanly when the extension is not built), ``numpy`` (the reference
backend), ``course`` (the naive course-notes NumPy class, for the families the course has),
``torch-forloop`` / ``torch-foreach`` / ``torch-fused`` (``torch.optim.Adam``/``AdamW`` on
``torch.from_numpy`` views of the same data; skipped without torch).

float32 at every even exponent 12..26, float64 at a few sizes.  A second set,
``test_threshold``, times the serial and the threaded loops of the numba and cython backends
directly (a bound kernel call, ``backend.bind(kernel, [row])``, no optimizer; the loop forced by
setting ``fastopt.config.PARALLEL_THRESHOLD`` to 0 or 2**62) at sizes around the threshold to
measure where threads start paying off on each backend.

Each case records in ``extra_info``: suite, family, impl, n, dtype, bytes_moved, GBps,
fraction_of_floor (DRAM in-place triad, this run) and fraction_of_cache_floor (triad at the same
working set).  ``bench/report.py`` turns the JSON into the ratio tables.
"""
from __future__ import annotations

import gc
import pathlib
import sys

import numpy as np
import pytest


sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _bench_import import sibling  # noqa: E402

H = sibling("conftest.py", "fastopt_bench_conftest")

F32_EXPONENTS = list(range(12, 27, 2))          # 2**12 ... 2**26
F64_EXPONENTS = [16, 20, 24]
F64_FAMILIES = ["sgd", "adam"]
FAMILIES = list(H.ARRAY_PASSES)
TORCH_FAMILIES = {"adam", "adamw"}
HOST_IMPLS = ["numba", "cython", "numpy"]
TORCH_IMPLS = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
               "torch-fused": dict(fused=True)}


def _cases():
    out = []
    for e in F32_EXPONENTS:
        for fam in FAMILIES:
            impls = list(HOST_IMPLS)
            if fam in H.COURSE:
                impls.append("course")
            out += [(e, "float32", fam, impl) for impl in impls]
        if e in F64_EXPONENTS:
            out += [(e, "float64", fam, impl) for fam in F64_FAMILIES for impl in HOST_IMPLS]
    return out


def torch_cases():
    """The torch baselines.  They run at the end of the session (``bench_models.py``'s
    ``test_torch_kernel``): torch's OpenMP pool and Numba's are two thread teams on the same
    cores, and once torch has run, Numba's threaded kernels can stall for a scheduler tick
    (4-12 ms per call on a 2-core VM; see bench/README.md).  Running them last keeps every
    fastopt number free of that; the ratios are still medians of one run."""
    return [(e, "float32", fam, impl) for e in F32_EXPONENTS for fam in FAMILIES
            if fam in TORCH_FAMILIES for impl in TORCH_IMPLS]


# Base data of the current size (the cases are ordered by size: one size alive at a time).
_data: dict = {}


def data(n, dtype):
    key = (n, dtype)
    if key not in _data:
        _data.clear()
        gc.collect()
        rng = np.random.default_rng(n)
        p0 = (rng.standard_normal(n, dtype=np.float32) * 0.02).astype(dtype, copy=False)
        g = (rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(dtype, copy=False)
        _data[key] = (p0, g)
    return _data[key]


def make_step(family, impl, p, g):
    """-> a no-argument callable doing one step of ``family`` with ``impl`` on ``p`` (in place)."""
    if impl in HOST_IMPLS:
        cls, kw = H.family_cases()[family]
        opt = cls([p], backend=impl, **kw)
        glist = [g]
        return lambda: opt.step(glist)
    if impl == "course":
        ccls, ckw, _, _ = H.COURSE[family]
        params, grads = {"W": p}, {"W": g}
        opt = ccls(params, **ckw)
        return lambda: opt.step(params, grads)
    if impl in TORCH_IMPLS:
        torch = H.torch_or_none()
        tp = torch.from_numpy(p)
        tp.grad = torch.from_numpy(g)
        cls = torch.optim.AdamW if family == "adamw" else torch.optim.Adam
        kw = dict(weight_decay=1e-2) if family == "adamw" else {}
        opt = cls([tp], lr=1e-3, **TORCH_IMPLS[impl], **kw)
        return opt.step
    raise ValueError(impl)


def skip_unavailable(impl):
    if impl == "cython" and not H.backend_available("cython"):
        pytest.skip("cython backend not built")
    if impl.startswith("torch") and H.torch_or_none() is None:
        pytest.skip("torch not installed")


@pytest.mark.parametrize("exponent,dtype,family,impl", _cases(),
                         ids=[f"e{e}-{d}-{f}-{i}" for e, d, f, i in _cases()])
def test_kernel(benchmark, floor, exponent, dtype, family, impl):
    kernel_case(benchmark, floor, exponent, dtype, family, impl)


def kernel_case(benchmark, floor, exponent, dtype, family, impl):
    skip_unavailable(impl)
    n = 1 << exponent
    p0, g = data(n, np.dtype(dtype))
    p = p0.copy()
    step = make_step(family, impl, p, g)
    benchmark.group = f"kernel 2^{exponent} {dtype} {family}"
    budget = 0.6 if exponent >= 24 else 0.3
    H.run(benchmark, step, budget=budget, min_rounds=3 if exponent < 26 else 2)
    bpe = H.bytes_per_element(family, dtype)
    H.record(benchmark, floor, bytes_moved=bpe * n,
             working_set=H.ARRAYS_RESIDENT[family] * np.dtype(dtype).itemsize * n,
             suite="kernels", family=family, impl=impl, n=n, dtype=dtype)
    del step
    gc.collect()


# --------------------------------------------------------------------------------------------
# the parallel threshold: serial vs parallel loops of the numba and cython backends, bound calls
# --------------------------------------------------------------------------------------------

THRESHOLD_SIZES = sorted({int(2 ** (k / 2)) for k in range(22, 45)})   # 2**11 ... 2**22, x sqrt2
THRESHOLD_BACKENDS = ["numba", "cython"]
THRESHOLD_FAMILIES = ["sgd", "adam"]
#: PARALLEL_THRESHOLD forced per kind: 0 = always the threaded loop, 2**62 = always the serial one
THRESHOLD_FORCED = {"serial": 1 << 62, "parallel": 0}


def _threshold_cases():
    return [(fam, n, be, kind) for fam in THRESHOLD_FAMILIES for n in THRESHOLD_SIZES
            for be in THRESHOLD_BACKENDS for kind in THRESHOLD_FORCED]


def threshold_case(backend, family, n, seed=0):
    """-> (no-argument callable, p): ``family``'s kernel on ``backend`` bound to one float32
    buffer of ``n`` elements (``p``, updated in place), called with the scalars of step 2 built
    by the spec.  Which loop runs (serial or threaded) is decided by the bound call from
    ``fastopt.config.PARALLEL_THRESHOLD`` at every call, so the caller forces it by setting that."""
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3)
    call, scalars = H.bound_case(backend, family, p, g, t=2)
    return (lambda: call(scalars)), p


@pytest.mark.parametrize("family,n,backend,kind", _threshold_cases(),
                         ids=[f"{f}-{n}-{b}-{k}" for f, n, b, k in _threshold_cases()])
def test_threshold(benchmark, floor, monkeypatch, family, n, backend, kind):
    """The backend's bound kernel call (``backend.bind(kernel, [row])``, one buffer, no
    optimizer) with the threshold forced: 0 (always the threaded loop) or 2**62 (always the
    serial one).  impl = ``<backend>-<serial|parallel>``."""
    from fastopt import config
    skip_unavailable(backend)
    fn, _ = threshold_case(backend, family, n)
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", THRESHOLD_FORCED[kind])
    benchmark.group = f"threshold {family} {n}"
    H.run(benchmark, fn, budget=0.15, min_rounds=5)
    bpe = H.bytes_per_element(family)
    H.record(benchmark, floor, bytes_moved=bpe * n, suite="threshold", family=family,
             backend=backend, kind=kind, impl=f"{backend}-{kind}", n=n, dtype="float32")

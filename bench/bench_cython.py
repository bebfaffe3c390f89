"""Cython vs Numba CPU kernels at 16M float32 elements, against a STREAM-triad floor.

Run (pytest-benchmark)::

    .venv/bin/python -m pytest bench/bench_cython.py -p no:cacheprovider \
        --benchmark-columns=min,median,max --benchmark-sort=name

Every benchmark records in ``extra_info``: ``bytes`` moved per step (SPEC.md table),
``GB_per_s`` (bytes / median time), ``triad_GB_per_s`` (the floor, measured in this run) and
``fraction_of_floor`` (floor time / median time, 1.0 = as fast as memory allows).  The Cython
ones also get ``cython_over_numba_throughput`` (Numba median / Cython median: >1 means Cython is
faster), and the last test prints the table of ratios.  ``cython`` is the build the backend
uses here (AVX2 where built and supported); ``cython-baseline`` is the portable build, for
comparison.  On a shared or noisy machine compare the min columns too (the summary prints both).
"""
import time

import numpy as np
import pytest

from fastopt import config
from fastopt.kernels import _scalars

cy = pytest.importorskip("fastopt.kernels.cython", reason="Cython extension not built")
cpu = pytest.importorskip("fastopt.kernels.cpu", reason="Numba CPU backend not present")
numba = pytest.importorskip("numba")

N = 1 << 24
DTYPE = np.float32
ITEM = np.dtype(DTYPE).itemsize
ROUNDS = 15
TRIAD_N = 1 << 26     # 256 MiB per buffer, well beyond the last-level cache (as bench/conftest.py)

#: (id, family, bytes per element, scalars for step 2 (not the first step))
CASES = {
    "adam": ("adam", 7 * ITEM, _scalars.adam(
        DTYPE, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
        decoupled_weight_decay=False, amsgrad=False, maximize=False,
        bias_correction1=1 - 0.9 ** 2, bias_correction2=1 - 0.999 ** 2)),
    "sgd_momentum": ("sgd", 5 * ITEM, _scalars.sgd(
        DTYPE, lr=0.01, momentum=0.9, dampening=0.0, weight_decay=0.0, nesterov=False,
        maximize=False, first_step=False)),
    "rmsprop": ("rmsprop", 5 * ITEM, _scalars.rmsprop(
        DTYPE, lr=0.01, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
        maximize=False)),
}

_results = {}   # (case, backend) -> (min, median) seconds
BACKENDS = ["numba", "cython", "cython-baseline"]     # numba first: the others compare to it


@numba.njit(parallel=True, nogil=True)
def _triad(a, b, c, s):
    # In-place form a = a + s*c (b is a): reads 2, writes 1 = 12 bytes/element with no
    # write-allocate traffic, like the kernels (which write only what they read), and like the
    # floor of bench/conftest.py.  The textbook a = b + s*c moves 16 bytes for the 12 it counts.
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


def _arrays(family):
    rng = np.random.default_rng(0)
    p = rng.standard_normal(N, dtype=DTYPE)
    g = rng.standard_normal(N, dtype=DTYPE)
    one = lambda: np.abs(rng.standard_normal(N, dtype=DTYPE))  # noqa: E731
    empty = np.zeros(0, DTYPE)
    if family == "adam":
        return [p, g, one(), one(), empty]
    if family == "sgd":
        return [p, g, one()]
    return [p, g, one(), empty, empty]       # rmsprop: square_avg, no grad_avg, no momentum


@pytest.fixture(scope="module")
def triad_bandwidth():
    """Bytes/s of a parallel STREAM triad, in place (a = a + s*c: 12 bytes/element), best of 20."""
    a, c = np.ones(TRIAD_N, DTYPE), np.ones(TRIAD_N, DTYPE)
    b = a
    s = DTYPE(1e-7)
    _triad(a, b, c, s)                           # compile
    best = float("inf")
    for _ in range(20):
        t0 = time.perf_counter()
        _triad(a, b, c, s)
        best = min(best, time.perf_counter() - t0)
    return 3 * ITEM * TRIAD_N / best


def _median(benchmark):
    return benchmark.stats.stats.median


def test_triad(benchmark, triad_bandwidth):
    a, c = np.ones(TRIAD_N, DTYPE), np.ones(TRIAD_N, DTYPE)
    s = DTYPE(1e-7)
    b = a
    benchmark.pedantic(_triad, args=(a, b, c, s), rounds=ROUNDS, warmup_rounds=2)
    nbytes = 3 * ITEM * TRIAD_N
    benchmark.extra_info.update(bytes=nbytes, GB_per_s=nbytes / _median(benchmark) / 1e9,
                                triad_GB_per_s=triad_bandwidth / 1e9,
                                fraction_of_floor=nbytes / triad_bandwidth / _median(benchmark))


@pytest.fixture
def kernels(request):
    backend = request.param
    if backend == "numba":
        yield cpu
        return
    if backend == "cython":
        yield cy
        return
    before = cy.ISA
    cy._use("baseline")
    yield cy
    cy._use(before)


@pytest.mark.parametrize("kernels", BACKENDS, indirect=True)
@pytest.mark.parametrize("case", list(CASES))
def test_kernel(benchmark, triad_bandwidth, case, kernels, request):
    backend = request.node.callspec.id.split("-", 1)[1]
    assert N >= config.PARALLEL_THRESHOLD           # the threaded kernels
    family, per_elem, scalars = CASES[case]
    fn = getattr(kernels, family)
    arrays = _arrays(family)
    fn(*arrays, scalars)                            # compile / warm the pages
    benchmark.group = case
    benchmark.pedantic(fn, args=(*arrays, scalars), rounds=ROUNDS, warmup_rounds=2)
    med, low = _median(benchmark), benchmark.stats.stats.min
    _results[case, backend] = (low, med)
    nbytes = per_elem * N
    info = dict(bytes=nbytes, GB_per_s=nbytes / med / 1e9,
                triad_GB_per_s=triad_bandwidth / 1e9,
                fraction_of_floor=nbytes / triad_bandwidth / med,
                detail=kernels.DETAIL() if callable(kernels.DETAIL) else kernels.DETAIL)
    if backend != "numba" and (case, "numba") in _results:
        info["cython_over_numba_throughput"] = _results[case, "numba"][1] / med
        info["cython_over_numba_throughput_min"] = _results[case, "numba"][0] / low
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("case", list(CASES))
def test_interleaved(benchmark, triad_bandwidth, case):
    """One round = the triad and one call of each backend, back to back, so a busy machine slows
    them alike; ``extra_info`` gets each backend's best time and the throughput ratios from them
    (the timing of this benchmark itself is the sum of the three)."""
    family, per_elem, scalars = CASES[case]
    arrays = _arrays(family)
    before = cy.ISA
    calls = {"numba": (None, getattr(cpu, family)), "cython": (before, None),
             "cython-baseline": ("baseline", None)}
    times = {name: [] for name in calls}
    ta, tc = np.ones(TRIAD_N, DTYPE), np.ones(TRIAD_N, DTYPE)
    triad_times = []

    def one_round():
        t0 = time.perf_counter()
        _triad(ta, ta, tc, DTYPE(1e-7))
        triad_times.append(time.perf_counter() - t0)
        for name, (isa, fn) in calls.items():
            if isa is not None:
                cy._use(isa)
                fn = getattr(cy, family)
            t0 = time.perf_counter()
            fn(*arrays, scalars)
            times[name].append(time.perf_counter() - t0)
        cy._use(before)

    one_round()
    benchmark.group = "interleaved"
    benchmark.pedantic(one_round, rounds=2 * ROUNDS, warmup_rounds=1)
    best = {name: min(ts) for name, ts in times.items()}
    nbytes = per_elem * N
    # The floor measured in these same rounds (a busy machine slows it alike), or the fixture's.
    triad_bandwidth = max(triad_bandwidth, 3 * ITEM * TRIAD_N / min(triad_times))
    info = dict(bytes=nbytes, triad_GB_per_s=triad_bandwidth / 1e9)
    for name, t in best.items():
        info[f"{name}_min_ms"] = t * 1e3
        info[f"{name}_GB_per_s"] = nbytes / t / 1e9
        info[f"{name}_fraction_of_floor"] = nbytes / triad_bandwidth / t
    info["cython_over_numba_throughput"] = best["numba"] / best["cython"]
    info["cython_baseline_over_numba_throughput"] = best["numba"] / best["cython-baseline"]
    benchmark.extra_info.update(info)
    _interleaved[case] = info


_interleaved = {}


def test_zz_summary(triad_bandwidth, capsys):
    """Print the ratios measured in this run (no timing here; a report, never a pass/fail)."""
    lines = [f"triad floor: {triad_bandwidth / 1e9:.2f} GB/s (2**26 float32), kernels at N = 2**24 ("
             f"cython = {cy.DETAIL()})",
             f"{'case':13s} {'backend':16s} {'min ms':>7s} {'med ms':>7s} {'GB/s':>6s} "
             f"{'floor':>5s}  cython/numba throughput (median, min)"]
    for case, (_, per_elem, _) in CASES.items():
        for backend in BACKENDS:
            if (case, backend) not in _results:
                continue
            low, med = _results[case, backend]
            row = (f"{case:13s} {backend:16s} {low * 1e3:7.2f} {med * 1e3:7.2f} "
                   f"{per_elem * N / med / 1e9:6.2f} {per_elem * N / triad_bandwidth / med:5.2f}")
            if backend != "numba" and (case, "numba") in _results:
                nlow, nmed = _results[case, "numba"]
                row += f"  {nmed / med:.2f}x, {nlow / low:.2f}x"
            lines.append(row)
    if _interleaved:
        lines.append("interleaved (best of rounds, each round calls all three back to back):")
    for case, info in _interleaved.items():
        lines.append(f"{case:13s} triad floor in these rounds {info['triad_GB_per_s']:.2f} GB/s")
        lines.append(f"{case:13s} numba {info['numba_min_ms']:6.2f} ms  cython "
                     f"{info['cython_min_ms']:6.2f} ms  baseline {info['cython-baseline_min_ms']:6.2f}"
                     f" ms  cython/numba {info['cython_over_numba_throughput']:.2f}x  "
                     f"baseline/numba {info['cython_baseline_over_numba_throughput']:.2f}x  "
                     f"cython floor {info['cython_fraction_of_floor']:.2f}")
    with capsys.disabled():
        print("\n" + "\n".join(lines))

"""Cython vs Numba CPU kernels at 16M float32 elements, against a STREAM-triad floor.

Run (pytest-benchmark)::

    .venv/bin/python -m pytest bench/bench_cython.py -p no:cacheprovider \
        --benchmark-columns=min,median,max --benchmark-sort=name

Each backend's kernel is bound once per case through the backends' API
(``backend.bind(backend.kernel(rule, dtype, flags), [row])``, one row over the case's arrays)
and the benchmark times the bound ``call(scalars)``: no optimizer, no per-call argument checks.
The scalars are the spec's (``spec.scalars(group, t=2, lr)``, not the first step), the flags and
the bytes per element (SPEC.md table) too (``fastopt.specs``).

Every benchmark records in ``extra_info``: ``bytes`` moved per step, ``GB_per_s`` (bytes /
median time), ``triad_GB_per_s`` (the floor, measured in this run), ``fraction_of_floor`` (floor
time / median time, 1.0 = as fast as memory allows) and ``detail`` (``backend.detail()``).  The
Cython ones also get ``cython_over_numba_throughput`` (Numba median / Cython median: >1 means
Cython is faster), and the last test prints the table of ratios.  ``cython`` is the build the
backend uses here (AVX2 where built and supported); ``cython-baseline`` is the portable build,
for comparison (bound while the backend is switched to it).  On a shared or noisy machine compare
the min columns too (the summary prints both), and the interleaved rounds.

``FASTOPT_BENCH_CYTHON_N`` sets the kernel size (default 2**24; the triad runs on 4x as many
elements); it must be at least ``fastopt.config.PARALLEL_THRESHOLD`` (the threaded loops).
"""
import contextlib
import os
import time

import numpy as np
import pytest

from fastopt import config
from fastopt.kernels import get_backend
from fastopt.specs import SPECS

numba = pytest.importorskip("numba")
try:
    CY = get_backend("cython")
    NB = get_backend("numba")
except RuntimeError as exc:
    pytest.skip(f"needs the cython and numba backends: {exc}", allow_module_level=True)
from fastopt.kernels import cython as cy  # noqa: E402 - the build switch (cy._use, cy.ISA)

N = int(os.environ.get("FASTOPT_BENCH_CYTHON_N", "") or 1 << 24)
DTYPE = np.float32
ITEM = np.dtype(DTYPE).itemsize
ROUNDS = 15
TRIAD_N = 4 * N       # 2**26 by default: 256 MiB per buffer, well beyond the last-level cache
T = 2                 # the step whose scalars are used (not the first: SGD's momentum differs)

#: case id -> (spec, kwargs): the specs' benchmark cases (``Spec.bench``) measured here
_BENCH = {case: (spec, kw) for spec in SPECS if not spec.own_step
          for case, kw in spec.bench.items()}
#: (``lamb``: LAMB's first pass, the reduction -- the rule a spec's kernel is -- at its own bytes)
CASE_IDS = ["adam", "sgd_momentum", "rmsprop", "lamb"]


def _case(case):
    """-> (spec, group, bytes per element): the case's validated param group; a two-pass spec
    (LAMB) counts its first pass only, the one bound here."""
    spec, kw = _BENCH[case]
    group = spec.defaults() | dict(kw)
    spec.validate(group)
    if spec.apply_rule:
        used = spec.signature.used(spec.flags(group))
        return spec, group, ITEM * (len(used) + sum(a in used for a in spec.signature.written))
    return spec, group, spec.bytes_per_element(group, itemsize=ITEM)


#: case id -> bytes moved per element (float32)
CASES = {case: _case(case)[2] for case in CASE_IDS}

_results = {}   # (case, backend) -> (min, median) seconds
BACKENDS = ["numba", "cython", "cython-baseline"]     # numba first: the others compare to it


@numba.njit(parallel=True, nogil=True)
def _triad(a, b, c, s):
    # In-place form a = a + s*c (b is a): reads 2, writes 1 = 12 bytes/element with no
    # write-allocate traffic, like the kernels (which write only what they read), and like the
    # floor of bench/conftest.py.  The textbook a = b + s*c moves 16 bytes for the 12 it counts.
    for i in numba.prange(a.size):
        a[i] = b[i] + s * c[i]


_data = {}   # (case, n) -> its arrays (made once; every backend binds the same ones)


def _arrays(case, n=None):
    """The row of ``case`` in the rule's array order: param, grad and the used state buffers
    (positive values, so square roots see what they see in training), None for unused ones."""
    n = N if n is None else n
    key = (case, n)
    if key not in _data:
        spec, group, _ = _case(case)
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n, dtype=DTYPE)
        g = rng.standard_normal(n, dtype=DTYPE)
        needed = spec.needed(group)
        state = [np.abs(rng.standard_normal(n, dtype=DTYPE)) if needed[name] else None
                 for name in spec.state_names]
        _data[key] = (p, g, *state)
    return _data[key]


@contextlib.contextmanager
def _build(backend):
    """The Cython extension build ``backend`` names in use inside the block."""
    before = cy.ISA
    if backend == "cython-baseline":
        cy._use("baseline")
    try:
        yield CY if backend.startswith("cython") else NB
    finally:
        cy._use(before)


def bind(case, backend, n=None):
    """-> (call, scalars, detail): ``case``'s kernel on ``backend`` ("numba", "cython" or
    "cython-baseline") bound once to the case's arrays, the scalars of step ``T`` and the
    backend's ``detail()``.  Timing ``call(scalars)`` times the kernel loop and nothing else."""
    spec, group, _ = _case(case)
    with _build(backend) as be:
        kernel = be.kernel(spec.rule, DTYPE, spec.flags(group))
        call = be.bind(kernel, [_arrays(case, n)])
        detail = be.detail()
    scalars = tuple(float(x) for x in spec.scalars(group, T, group["lr"]))
    return call, scalars, detail


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


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASE_IDS)
def test_kernel(benchmark, triad_bandwidth, case, backend):
    assert N >= config.PARALLEL_THRESHOLD           # the threaded kernels
    per_elem = CASES[case]
    call, scalars, detail = bind(case, backend)
    call(scalars)                                   # warm the pages (and the thread team)
    benchmark.group = case
    benchmark.pedantic(call, args=(scalars,), rounds=ROUNDS, warmup_rounds=2)
    med, low = _median(benchmark), benchmark.stats.stats.min
    _results[case, backend] = (low, med)
    nbytes = per_elem * N
    info = dict(bytes=nbytes, GB_per_s=nbytes / med / 1e9,
                triad_GB_per_s=triad_bandwidth / 1e9,
                fraction_of_floor=nbytes / triad_bandwidth / med, detail=detail)
    if backend != "numba" and (case, "numba") in _results:
        info["cython_over_numba_throughput"] = _results[case, "numba"][1] / med
        info["cython_over_numba_throughput_min"] = _results[case, "numba"][0] / low
    benchmark.extra_info.update(info)


@pytest.mark.parametrize("case", CASE_IDS)
def test_interleaved(benchmark, triad_bandwidth, case):
    """One round = the triad and one call of each backend, back to back, so a busy machine slows
    them alike; ``extra_info`` gets each backend's best time and the throughput ratios from them
    (the timing of this benchmark itself is the sum of the three)."""
    per_elem = CASES[case]
    calls = {name: bind(case, name)[:2] for name in BACKENDS}   # bound once, before the rounds
    times = {name: [] for name in calls}
    ta, tc = np.ones(TRIAD_N, DTYPE), np.ones(TRIAD_N, DTYPE)
    triad_times = []

    def one_round():
        t0 = time.perf_counter()
        _triad(ta, ta, tc, DTYPE(1e-7))
        triad_times.append(time.perf_counter() - t0)
        for name, (call, scalars) in calls.items():
            t0 = time.perf_counter()
            call(scalars)
            times[name].append(time.perf_counter() - t0)

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
    lines = [f"triad floor: {triad_bandwidth / 1e9:.2f} GB/s ({TRIAD_N:,} float32), kernels at "
             f"N = {N:,} (cython = {CY.detail()}; numba = {NB.detail()})",
             f"{'case':13s} {'backend':16s} {'min ms':>7s} {'med ms':>7s} {'GB/s':>6s} "
             f"{'floor':>5s}  cython/numba throughput (median, min)"]
    for case, per_elem in CASES.items():
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

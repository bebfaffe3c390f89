"""Shared pieces of the fastopt benchmark suite (pytest-benchmark).

* Collection: pytest only collects ``test_*.py`` by default; the hook below also collects
  ``bench_*.py`` under ``bench/`` so that ``pytest bench --benchmark-only`` runs every suite
  (files named on the command line are collected by pytest itself and are not collected twice).
* The floor: a STREAM-triad-like, in-place read-modify-write kernel ``a[i] = a[i] + s*b[i]``
  (reads 2, writes 1: 12 bytes per float32 element, no write-allocate traffic) over two 2**26
  float32 buffers (256 MiB each, 16x the 32 MiB L3), threaded, timed in *this* run: the
  session-scoped :func:`floor` fixture holds the median GB/s of 20 runs.  ``cache_floor`` gives the
  same triad at a smaller working set (for cache-resident sizes, best of serial and parallel).
* The cases come from the specs (:mod:`fastopt.specs`): the family case ids are the specs'
  ``bench`` keys (:data:`BENCH_SPECS`, :func:`family_cases`), the bytes per element are
  ``Spec.bytes_per_element`` (SPEC.md's table, derived from the arrays the rule reads and writes)
  and the resident working set is the number of arrays the case's variant uses.
  :func:`bound_case` binds a case's kernel on one buffer through a backend's ``bind`` (the
  threshold and Cython-vs-Numba benchmarks time that call, without an optimizer around it).
* :func:`record` puts ``bytes_moved``, ``GBps`` and ``fraction_of_floor`` (and what the report
  needs to group cases) in ``benchmark.extra_info`` from the benchmark's median, after the run.
* :func:`run` picks rounds/iterations from a probe call so that tiny and huge cases both take a
  fraction of a second (``benchmark.pedantic`` with a warm-up round, which also compiles).
* The naive "course" optimizers are :mod:`fastopt.course.naive` (``GDNaive``, ``MomentumNaive``,
  ``RMSpropNaive``, ``AdamNaive``; the demo's baseline too): NumPy code written the way the course
  notes write it (a class, a dict loop, NumPy expressions with temporaries).  :data:`COURSE` pairs
  each with the fastopt optimizer computing the same update (the smoke test
  ``tests/test_bench_smoke.py`` checks it), so a speed-up over them is meaningful.

Nothing here times anything at import; nothing here is a test.  Standalone bench files
(``bench_cython.py``, ``bench_torch_adapter.py``, ``gpu.py``) do not depend on this module.
"""
from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
import time

import numpy as np
import pytest

# --------------------------------------------------------------------------------------------
# collection
# --------------------------------------------------------------------------------------------


def pytest_collect_file(file_path, parent):
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


# --------------------------------------------------------------------------------------------
# the benchmark cases, from the specs (fastopt.specs): bytes per element, working set, kernels
# --------------------------------------------------------------------------------------------

def _spec_cases():
    """family case -> (spec, kwargs): every spec's ``bench`` entries, in spec order."""
    from fastopt.specs import SPECS
    return {case: (spec, dict(kw)) for spec in SPECS for case, kw in spec.bench.items()}


#: family case -> (spec, kwargs); the case ids are the specs' ``bench`` keys (sgd, sgd_momentum,
#: momentum, rmsprop, adagrad, adam, adam_amsgrad, adamw)
BENCH_SPECS = _spec_cases()


def case_group(case):
    """A validated param group of ``case``: the spec's defaults updated with its kwargs."""
    spec, kw = BENCH_SPECS[case]
    group = spec.defaults() | kw
    spec.validate(group)
    return group


def _used_arrays(case):
    from fastopt.kernels import rule_signature
    spec, _ = BENCH_SPECS[case]
    return rule_signature(spec.rule).used(spec.flags(case_group(case)))


#: family case -> number of array passes (reads + writes) per element (SPEC.md's table, derived
#: from the arrays the spec's rule reads and writes with the case's flags)
ARRAY_PASSES = {case: spec.bytes_per_element(case_group(case), itemsize=1)
                for case, (spec, _) in BENCH_SPECS.items()}

#: family case -> arrays resident (the working set, for the cache-resident floor): the arrays
#: the variant uses
ARRAYS_RESIDENT = {case: len(_used_arrays(case)) for case in BENCH_SPECS}


def bytes_per_element(case, dtype=np.float32):
    spec, _ = BENCH_SPECS[case]
    return spec.bytes_per_element(case_group(case), itemsize=np.dtype(dtype).itemsize)


def bound_case(backend, case, p, g, t=2):
    """-> (bound call, scalars): ``case``'s kernel on ``backend`` (a name) bound to one row
    over ``p`` (updated in place) and ``g``, with freshly initialised state, and the scalars of
    step ``t`` (the default 2: not the first step, whose SGD momentum scalars differ).  No
    optimizer in between: ``call(scalars)`` is the backend's bound kernel call."""
    from fastopt.kernels import get_backend
    spec, _ = BENCH_SPECS[case]
    be = get_backend(backend)
    group = case_group(case)
    needed = spec.needed(group)
    state = [be.full(p.size, p.dtype, spec.initial(name, group)) if needed[name] else None
             for name in spec.state_names]
    kernel = be.kernel(spec.rule, p.dtype, spec.flags(group))
    call = be.bind(kernel, [(p, g, *state)])
    return call, tuple(float(x) for x in spec.scalars(group, t, group["lr"]))


# --------------------------------------------------------------------------------------------
# the floor: in-place triad
# --------------------------------------------------------------------------------------------

FLOOR_N = 1 << 26          # 256 MiB per float32 buffer
FLOOR_REPEATS = 20
TRIAD_BYTES_PER_ELEM = 12  # float32: read a, b; write a

_triads = None


def _triad_kernels():
    """(parallel, serial) in-place triads; compiled on first use (cache=False: they are tiny)."""
    global _triads
    if _triads is None:
        import numba
        from numba import njit, prange

        def triad(a, b, s):
            for i in prange(a.size):
                a[i] = a[i] + s * b[i]

        par = njit(parallel=True, nogil=True, fastmath=True)(triad)
        ser = njit(nogil=True, fastmath=True)(triad)
        _triads = (par, ser, numba)
    return _triads


def _median_time(fn, repeats, inner=1):
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        ts.append((time.perf_counter() - t0) / inner)
    return float(np.median(ts))


def interleaved_medians(fns, rounds):
    """``{name: median seconds}`` of the callables ``fns`` (a dict), timed one call each per
    round, in turn, for ``rounds`` rounds (so a drift of the machine hits every one alike)."""
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


class Floor:
    """The bandwidth floor measured in this run (GB/s = 1e9 bytes/s)."""

    def __init__(self, n=FLOOR_N, repeats=FLOOR_REPEATS):
        par, ser, numba = _triad_kernels()
        a = np.ones(n, np.float32)
        b = np.full(n, 0.5, np.float32)
        s = np.float32(1e-7)
        par(a, b, s)
        ser(a, b, s)
        nbytes = TRIAD_BYTES_PER_ELEM * n
        self.n = n
        self.threads = numba.get_num_threads()
        # Interleaved, so that drift on a shared machine hits both alike.
        tp, ts = [], []
        for _ in range(repeats):
            tp.append(_median_time(lambda: par(a, b, s), 1))
            ts.append(_median_time(lambda: ser(a, b, s), 1))
        self.seconds = float(np.median(tp))
        self.gbps = nbytes / self.seconds / 1e9
        self.serial_seconds = float(np.median(ts))
        self.serial_gbps = nbytes / self.serial_seconds / 1e9
        self._cache = {}
        self._bufs = (a, b)

    def time_for(self, nbytes):
        """Seconds the floor takes to move ``nbytes``."""
        return nbytes / (self.gbps * 1e9)

    def cache_gbps(self, working_set_bytes):
        """Best GB/s of the triad (serial or parallel) at this working set (cached per size).

        The triad's working set is two buffers, so it runs on ``working_set_bytes / 8`` float32
        elements.  Below the LLC this is far above the DRAM floor: a kernel on a cache-resident
        buffer should be compared with this, not with :attr:`gbps`."""
        n = max(256, int(working_set_bytes) // 8)
        n = 1 << round(math.log2(n))
        if n >= self.n:
            return self.gbps
        hit = self._cache.get(n)
        if hit is None:
            par, ser, _ = _triad_kernels()
            a = np.ones(n, np.float32)
            b = np.full(n, 0.5, np.float32)
            s = np.float32(1e-7)
            inner = max(1, int(2e5 // n))
            best = min(_median_time(lambda: k(a, b, s), 15, inner) for k in (par, ser))
            hit = self._cache[n] = TRIAD_BYTES_PER_ELEM * n / best / 1e9
        return hit

    def local_gbps(self, repeats=5):
        """The floor again, now (median of ``repeats``): the bandwidth of a shared VM drifts
        by tens of percent over minutes, so large cases are compared with the floor measured
        next to them, not only with the one from the start of the session."""
        par, _, _ = _triad_kernels()
        if self._bufs is None:
            self._bufs = (np.ones(self.n, np.float32), np.full(self.n, 0.5, np.float32))
        a, b = self._bufs
        s = np.float32(1e-7)
        return TRIAD_BYTES_PER_ELEM * self.n / _median_time(lambda: par(a, b, s), repeats) / 1e9

    def as_dict(self):
        return dict(floor_GBps=self.gbps, floor_serial_GBps=self.serial_gbps,
                    floor_n=self.n, floor_threads=self.threads)


@pytest.fixture(scope="session")
def floor():
    """The in-place triad floor of this machine, measured once per session (median of 20)."""
    return Floor()


# --------------------------------------------------------------------------------------------
# running and recording
# --------------------------------------------------------------------------------------------

def plan_rounds(seconds_per_call, budget=0.4, min_rounds=3, max_rounds=60, round_floor=2e-3):
    """-> (rounds, iterations): iterations so one round lasts >= ``round_floor`` seconds (the
    timer's resolution and Python's overhead then vanish), rounds to fill ``budget``."""
    seconds_per_call = max(seconds_per_call, 1e-7)
    iterations = max(1, int(math.ceil(round_floor / seconds_per_call)))
    rounds = int(budget / (seconds_per_call * iterations))
    return max(min_rounds, min(max_rounds, rounds)), iterations


def run(benchmark, fn, *, budget=0.4, min_rounds=3, max_rounds=60):
    """Warm ``fn`` (compiles, faults pages in), probe its time, then ``benchmark.pedantic``
    with explicit rounds and iterations and one warm-up round."""
    fn()
    t0 = time.perf_counter()
    fn()
    probe = time.perf_counter() - t0
    if probe < 1e-3:  # tiny: a better probe
        probe = _median_time(fn, 5, max(1, int(1e-3 / max(probe, 1e-7))))
    rounds, iterations = plan_rounds(probe, budget, min_rounds, max_rounds)
    benchmark.pedantic(fn, rounds=rounds, iterations=iterations, warmup_rounds=1)
    return benchmark


def median_seconds(benchmark):
    return float(benchmark.stats.stats.median)


#: cases moving at least this many bytes per step (DRAM-bound) get a floor measured right after
#: them (:meth:`Floor.local_gbps`) for their ``fraction_of_floor``
LOCAL_FLOOR_BYTES = 256 << 20


def record(benchmark, floor, *, bytes_moved, working_set=None, **info):
    """Put bytes moved, GB/s, the floor and the fraction of it in ``benchmark.extra_info``.

    ``fraction_of_floor`` = floor time / measured median (1.0: as fast as the DRAM triad moves
    the same bytes; > 1 is possible for cache-resident sizes).  DRAM-bound cases (>= 256 MiB
    moved) use a floor re-measured right after them; smaller ones the session's.  ``fraction_of_cache_floor``
    compares with the triad at the same working set when ``working_set`` is given."""
    med = median_seconds(benchmark)
    extra = benchmark.extra_info
    extra.update(info)
    fgbps = floor.gbps
    if bytes_moved >= LOCAL_FLOOR_BYTES:
        fgbps = floor.local_gbps()
    extra.update(bytes_moved=int(bytes_moved), median_s=med,
                 GBps=bytes_moved / med / 1e9, floor_GBps=fgbps,
                 session_floor_GBps=floor.gbps, floor_local=bytes_moved >= LOCAL_FLOOR_BYTES,
                 fraction_of_floor=bytes_moved / fgbps / 1e9 / med)
    if working_set is not None:
        cg = floor.cache_gbps(working_set)
        extra.update(cache_floor_GBps=cg, fraction_of_cache_floor=bytes_moved / med / 1e9 / cg)
    return extra


# --------------------------------------------------------------------------------------------
# machine description (used by the floor benchmark and by report.py)
# --------------------------------------------------------------------------------------------

def cpu_model():
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info():
    import numba
    info = dict(cpu_model=cpu_model(), cores=os.cpu_count(), isa=kernel_isa(),
                python=sys.version.split()[0],
                numpy=np.__version__, numba=numba.__version__,
                numba_threads=numba.get_num_threads(),
                loadavg=list(os.getloadavg()) if hasattr(os, "getloadavg") else None)
    try:
        import torch
        info.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
    except ImportError:
        info.update(torch=None)
    try:
        from fastopt import config
        info.update(parallel_threshold=config.PARALLEL_THRESHOLD)
    except ImportError:
        pass
    try:
        from fastopt import backend_status
        info.update(default_backend=default_backend(),
                    backends={k: v[1] for k, v in backend_status().items() if v[0]})
    except Exception:  # noqa: BLE001 - the description must not fail the floor benchmark
        pass
    return info


def kernel_isa():
    """The ISA of the Cython build fastopt uses here (bench_formats.kernel_isa)."""
    from _bench_import import sibling
    return sibling("bench_formats.py", "bench_formats").kernel_isa()


def machine_name(info=None):
    """A stable machine label, e.g. ``cpu-amd-epyc-avx2-2c`` (no host name; the kernels' ISA
    where the run recorded it: results before it are labelled without)."""
    info = info or dict(cpu_model=cpu_model(), cores=os.cpu_count(), isa=kernel_isa())
    model = info["cpu_model"].lower()
    for junk in ("(r)", "(tm)", "processor", "cpu @", "with radeon graphics"):
        model = model.replace(junk, " ")
    slug = "-".join(w for w in "".join(c if c.isalnum() else " " for c in model).split()
                    if not w.endswith("ghz"))[:40].strip("-")
    isa = f"-{info['isa']}" if info.get("isa") else ""
    return f"cpu-{slug}{isa}-{info['cores']}c"


# --------------------------------------------------------------------------------------------
# the naive course baselines: fastopt.course.naive (shared with the demo)
# --------------------------------------------------------------------------------------------

from fastopt.course.naive import AdamNaive, GDNaive, MomentumNaive, RMSpropNaive  # noqa: E402

#: fastopt family case -> (course class, its kwargs, fastopt class name, fastopt kwargs):
#: pairs computing the same update
COURSE = {
    "sgd": (GDNaive, dict(lr=1e-3), "SGD", dict(lr=1e-3)),
    "momentum": (MomentumNaive, dict(lr=1e-3, beta=0.9), "Momentum", dict(lr=1e-3, beta=0.9)),
    "rmsprop": (RMSpropNaive, dict(lr=1e-3, beta2=0.99, eps=1e-8), "RMSprop",
                dict(lr=1e-3, alpha=0.99, eps=1e-8)),
    "adam": (AdamNaive, dict(lr=1e-3), "Adam", dict(lr=1e-3)),
}


# --------------------------------------------------------------------------------------------
# fastopt optimizer cases and data
# --------------------------------------------------------------------------------------------

def family_cases():
    """family case -> (fastopt class, kwargs), from the specs' ``bench`` entries.  One case per
    bytes-moved row of SPEC.md."""
    import fastopt
    return {case: (getattr(fastopt, spec.name), dict(kw))
            for case, (spec, kw) in BENCH_SPECS.items()}


def default_backend():
    """The backend ``backend=None`` gives host arrays here (cython where built, else numba)."""
    from fastopt.kernels import resolve_backend
    return resolve_backend([], None).name


def backend_available(name):
    from fastopt import backend_status
    try:
        from fastopt.kernels import get_backend
        get_backend(name)
        return True
    except RuntimeError:
        return False
    except Exception:  # noqa: BLE001 - a broken optional build counts as unavailable
        return bool(backend_status().get(name, (False,))[0])


def torch_or_none():
    try:
        import torch
    except ImportError:
        return None
    return torch


def random_set(shapes, dtype=np.float32, seed=0):
    """(params, grads): lists of arrays of ``shapes``; values like a trained net's (small)."""
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal(s, dtype=np.float32) * 0.02).astype(dtype, copy=False)
              for s in shapes]
    grads = [(rng.standard_normal(s, dtype=np.float32) * 1e-3).astype(dtype, copy=False)
             for s in shapes]
    return params, grads


def startup_seconds(python=sys.executable, repeats=5, env=None, warm=True):
    """Median seconds of ``import fastopt`` + building Adam + its first step, measured inside a
    fresh interpreter, on the default backend (``backend=None``: the Cython extension where it
    is built, else Numba with its kernels already in Numba's on-disk cache after the first
    run), and the median wall time of the whole process.
    -> (inner median, process median, all inner, backend name)."""
    code = ("import time; t0 = time.perf_counter()\n"
            "import fastopt, numpy as np\n"
            "p = np.zeros(1000, np.float32); g = np.ones(1000, np.float32)\n"
            "opt = fastopt.Adam([p], lr=1e-3); opt.step([g])\n"
            "t = time.perf_counter() - t0\n"
            "print(opt.backend); print(repr(t))\n")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    inner, outer, backend = [], [], None
    if warm:  # one process fills Numba's on-disk cache
        subprocess.run([python, "-c", code], check=True, env=env, capture_output=True)
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = subprocess.run([python, "-c", code], check=True, env=env, capture_output=True,
                             text=True)
        outer.append(time.perf_counter() - t0)
        lines = out.stdout.strip().splitlines()
        backend = lines[-2].strip()
        inner.append(float(lines[-1]))
    return float(np.median(inner)), float(np.median(outer)), inner, backend

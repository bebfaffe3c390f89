"""Model-shaped benchmarks: one Adam step over a whole model's parameter set.

Sets (``fastopt._shapes``): the course MLP (6 tiny tensors, 2,762 values), ResNet-50 (161 tensors,
25.6M values) and GPT-2 small (148 tensors, 124M values), float32.

Implementations (all on the same data, in the same run):

``numba`` / ``cython``            fastopt on the separate arrays (one kernel call per tensor)
``numba-arena`` / ``cython-arena`` fastopt on an :class:`fastopt.Arena` (one call per dtype)
``numpy``                         fastopt's NumPy reference backend (separate arrays)
``course``                        the naive course-notes Adam class (dict loop, temporaries)
``torch-forloop`` / ``torch-foreach`` / ``torch-fused``
                                  ``torch.optim.Adam(foreach=False / foreach=True / fused=True)``
                                  on ``torch.from_numpy`` views (skipped without torch)

Only one optimizer (and one model's data) is alive at a time: GPT-2 needs ~2 GB per optimizer.

Also here:

``test_overhead``  where the microseconds of a small step go: a no-op Numba function with the
                   kernel's signature (pure dispatch), the serial kernel called directly, the
                   ``cpu.adam`` wrapper, and ``Optimizer.step``, on the course MLP's 6 tensors
                   and on its Arena (1 buffer).
``test_startup``   ``import fastopt`` + first Adam step in a fresh interpreter, after one warm
                   process has filled Numba's on-disk cache.
``test_floor``     the in-place triad floor itself, with the machine description.
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
K = sibling("bench_kernels.py", "fastopt_bench_kernels")

MODELS = ["course_mlp", "resnet50", "gpt2_small"]
FASTOPT_AND_NUMPY = ["numba", "numba-arena", "cython", "cython-arena", "numpy", "course"]
TORCH = ["torch-forloop", "torch-foreach", "torch-fused"]
IMPLS = FASTOPT_AND_NUMPY + TORCH
TORCH_IMPLS = {"torch-forloop": dict(foreach=False), "torch-foreach": dict(foreach=True),
               "torch-fused": dict(fused=True)}
ADAM = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8)


def shapes_of(model):
    from fastopt import _shapes
    return getattr(_shapes, model)()


_data: dict = {}


def model_data(model):
    """(base params, grads) of ``model``; one model alive at a time (cases ordered by model)."""
    if model not in _data:
        _data.clear()
        gc.collect()
        _data[model] = H.random_set(shapes_of(model))
    return _data[model]


def make_step(impl, params0, grads):
    """-> (step callable, params it updates).  Copies params0 (or builds an Arena of it)."""
    import fastopt
    if impl.endswith("-arena"):
        arena = fastopt.Arena(params0)
        for dst, src in zip(arena.grads, grads):
            np.copyto(dst, src)
        opt = fastopt.Adam(arena.params, backend=impl[:-len("-arena")], **ADAM)
        g = arena.grads
        return (lambda: opt.step(g)), arena.params
    params = [p.copy() for p in params0]
    if impl in ("numba", "cython", "numpy"):
        opt = fastopt.Adam(params, backend=impl, **ADAM)
        return (lambda: opt.step(grads)), params
    if impl == "course":
        pd = dict(enumerate(params))
        gd = dict(enumerate(grads))
        opt = H.AdamNaive(pd, lr=ADAM["lr"], beta1=0.9, beta2=0.999, eps=ADAM["eps"])
        return (lambda: opt.step(pd, gd)), params
    if impl in TORCH_IMPLS:
        torch = H.torch_or_none()
        tps = []
        for p, g in zip(params, grads):
            tp = torch.from_numpy(p)
            tp.grad = torch.from_numpy(g)
            tps.append(tp)
        opt = torch.optim.Adam(tps, **ADAM, **TORCH_IMPLS[impl])
        return opt.step, params
    raise ValueError(impl)


def _cases(impls):
    return [(m, i) for m in MODELS for i in impls]


@pytest.mark.parametrize("model,impl", _cases(FASTOPT_AND_NUMPY),
                         ids=[f"{m}-{i}" for m, i in _cases(FASTOPT_AND_NUMPY)])
def test_model(benchmark, floor, model, impl):
    model_case(benchmark, floor, model, impl)


def model_case(benchmark, floor, model, impl):
    if impl.startswith("cython") and not H.backend_available("cython"):
        pytest.skip("cython backend not built")
    if impl.startswith("torch") and H.torch_or_none() is None:
        pytest.skip("torch not installed")
    params0, grads = model_data(model)
    n = sum(p.size for p in params0)
    step, _ = make_step(impl, params0, grads)
    benchmark.group = f"model {model} adam"
    big = n > 50_000_000
    H.run(benchmark, step, budget=1.5 if big else 0.5, min_rounds=3 if big else 5)
    H.record(benchmark, floor, bytes_moved=H.bytes_per_element("adam") * n, suite="models",
             family="adam", impl=impl, model=model, n=int(n), tensors=len(params0),
             dtype="float32")
    del step
    gc.collect()


# --------------------------------------------------------------------------------------------
# per-call overhead on the course MLP
# --------------------------------------------------------------------------------------------

OVERHEAD_LEVELS = ["noop-dispatch", "kernel-direct", "cpu.adam", "step"]


def capture_kernel_calls(module, fn):
    """Run ``fn()`` with every Numba dispatcher of ``module`` wrapped; -> [(dispatcher, args)]
    of the calls made (what the backend wrapper really passes, whatever its internals)."""
    from numba.core.registry import CPUDispatcher
    calls = []
    real = {k: v for k, v in vars(module).items() if isinstance(v, CPUDispatcher)}

    def recorder(disp):
        def rec(*args):
            calls.append((disp, args))
            return disp(*args)
        return rec

    try:
        for k, v in real.items():
            setattr(module, k, recorder(v))
        fn()
    finally:
        for k, v in real.items():
            setattr(module, k, v)
    return calls


def noop_like(nargs):
    """A Numba function of ``nargs`` arguments that does nothing: pure dispatch cost."""
    from numba import njit
    names = ", ".join(f"a{i}" for i in range(nargs))
    ns = {}
    exec(f"def noop({names}):\n    return None\n", ns)  # noqa: S102 - fixed template
    return njit(nogil=True, cache=False)(ns["noop"])


@pytest.mark.parametrize("layout", ["separate", "arena"])
@pytest.mark.parametrize("level", OVERHEAD_LEVELS)
def test_overhead(benchmark, floor, level, layout):
    import fastopt
    from fastopt.kernels import cpu
    params0, grads0 = H.random_set(shapes_of("course_mlp"))

    def build():
        if layout == "arena":
            arena = fastopt.Arena(params0)
            for dst, src in zip(arena.grads, grads0):
                np.copyto(dst, src)
            return arena.params, arena.grads
        return [p.copy() for p in params0], grads0

    # what one step hands the backend (a probe optimizer built while cpu.adam records) ...
    backend_calls = []
    real_adam = cpu.adam
    try:
        cpu.adam = lambda *a: (backend_calls.append(a), real_adam(*a))
        probe_params, probe_grads = build()
        probe = fastopt.Adam(probe_params, backend="numba", **ADAM)
        probe.step(probe_grads)
    finally:
        cpu.adam = real_adam
    params, grads = build()
    opt = fastopt.Adam(params, backend="numba", **ADAM)
    opt.step(grads)
    # ... and what the wrapper hands Numba
    kernel_calls = capture_kernel_calls(cpu, lambda: [real_adam(*a) for a in backend_calls])
    if level == "step":
        fn = lambda: opt.step(grads)  # noqa: E731
    elif level == "cpu.adam":
        def fn():
            for a in backend_calls:
                real_adam(*a)
    elif level == "kernel-direct":
        def fn():
            for disp, a in kernel_calls:
                disp(*a)
    else:
        noops = {len(a): noop_like(len(a)) for _, a in kernel_calls}
        calls = [(noops[len(a)], a) for _, a in kernel_calls]

        def fn():
            for disp, a in calls:
                disp(*a)
    benchmark.group = f"overhead course_mlp {layout}"
    H.run(benchmark, fn, budget=0.3, min_rounds=10)
    n = sum(p.size for p in params0)
    H.record(benchmark, floor, bytes_moved=H.bytes_per_element("adam") * n, suite="overhead",
             family="adam", impl=level, layout=layout, model="course_mlp",
             calls=len(kernel_calls), n=int(n), dtype="float32")


# --------------------------------------------------------------------------------------------
# start-up: import + first step in a fresh process (kernels cached on disk)
# --------------------------------------------------------------------------------------------

def test_startup(benchmark, floor):
    inner = []

    def once():
        med, _, _ = H.startup_seconds(repeats=1, warm=False)
        inner.append(med)

    H.startup_seconds(repeats=1)  # a warm process fills Numba's cache
    benchmark.pedantic(once, rounds=5, iterations=1, warmup_rounds=0)
    benchmark.group = "startup"
    benchmark.extra_info.update(suite="startup", impl="numba", family="adam",
                                import_and_first_step_s=float(np.median(inner)),
                                import_and_first_step_all=inner,
                                note="median is the whole subprocess (interpreter start incl.); "
                                     "import_and_first_step_s is measured inside it")


# --------------------------------------------------------------------------------------------
# the floor itself, and what machine this is
# --------------------------------------------------------------------------------------------

def test_floor(benchmark, floor):
    par, _, _ = H._triad_kernels()
    n = H.FLOOR_N
    a = np.ones(n, np.float32)
    b = np.full(n, 0.5, np.float32)
    s = np.float32(1e-7)
    par(a, b, s)
    benchmark.group = "floor"
    benchmark.pedantic(par, args=(a, b, s), rounds=10, iterations=1, warmup_rounds=1)
    H.record(benchmark, floor, bytes_moved=H.TRIAD_BYTES_PER_ELEM * n, suite="floor",
             impl="triad-inplace", n=n, dtype="float32")
    info = H.machine_info()
    benchmark.extra_info.update(machine=H.machine_name(info), machine_info=info,
                                **floor.as_dict())


# --------------------------------------------------------------------------------------------
# torch baselines, last in the session (see bench_kernels.torch_cases for why)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("exponent,dtype,family,impl", K.torch_cases(),
                         ids=[f"e{e}-{d}-{f}-{i}" for e, d, f, i in K.torch_cases()])
def test_zz_torch_kernel(benchmark, floor, exponent, dtype, family, impl):
    K.kernel_case(benchmark, floor, exponent, dtype, family, impl)


@pytest.mark.parametrize("model,impl", _cases(TORCH),
                         ids=[f"{m}-{i}" for m, i in _cases(TORCH)])
def test_zz_torch_model(benchmark, floor, model, impl):
    model_case(benchmark, floor, model, impl)

"""Model-shaped benchmarks: one Adam step over a whole model's parameter set.

Sets (``fastopt._shapes``): the course MLP (6 tiny tensors, 2,762 values), ResNet-50 (161 tensors,
25.6M values) and GPT-2 small (148 tensors, 124M values), float32.

Implementations (all on the same data, in the same run):

``numba`` / ``cython``            fastopt on the separate arrays (one bound kernel call with a
                                  row per tensor)
``numba-arena`` / ``cython-arena`` fastopt on an :class:`fastopt.Arena` (one bound call, one row)
``numpy``                         fastopt's NumPy reference backend (separate arrays)
``course``                        the naive course-notes Adam class (dict loop, temporaries)
``torch-forloop`` / ``torch-foreach`` / ``torch-fused``
                                  ``torch.optim.Adam(foreach=False / foreach=True / fused=True)``
                                  on ``torch.from_numpy`` views (skipped without torch)

Only one optimizer (and one model's data) is alive at a time: GPT-2 needs ~2 GB per optimizer.

Also here:

``test_overhead``  where the microseconds of a small step go, per backend (the default one,
                   cython, numba): ``bound-call``, the step's bound kernel call(s) alone (the
                   optimizer's plan after one step, called with the step's scalars), and
                   ``step``, the whole ``Optimizer.step``; the difference is the Python cost of
                   a step.  On the course MLP's 6 tensors and on its Arena (1 buffer).
``test_startup``   ``import fastopt`` + first Adam step in a fresh interpreter on the default
                   backend, after one warm process has filled Numba's on-disk cache.
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
# per-step overhead on the course MLP: the bound kernel calls alone vs the whole step
# --------------------------------------------------------------------------------------------

#: "default" is what ``backend=None`` picks here (cython where built, else numba)
OVERHEAD_BACKENDS = ["default", "cython", "numba"]
OVERHEAD_LAYOUTS = ["separate", "arena"]
#: ``bound-call``: the bound kernel call(s) of one step (``opt._plan.calls`` after a step) with
#: the step's scalars; ``step``: ``opt.step(grads)``.  step - bound-call = the step's Python cost.
OVERHEAD_LEVELS = ["bound-call", "step"]


def _overhead_id(backend):
    return f"default-{H.default_backend()}" if backend == "default" else backend


def overhead_case(backend, layout, level, model="course_mlp"):
    """-> (no-argument callable, info): one Adam step of ``model`` on ``backend`` (a name, or
    "default" for ``backend=None``) over separate arrays or an Arena, at ``level``.

    The optimizer takes one step first (it builds and binds its plan); ``bound-call`` then
    calls the bound calls of that plan with the scalars the next step would compute (the spec's
    ``scalars(group, t, lr)``), nothing else; ``step`` calls ``opt.step``."""
    import fastopt
    params0, grads0 = H.random_set(shapes_of(model))
    if layout == "arena":
        arena = fastopt.Arena(params0)
        for dst, src in zip(arena.grads, grads0):
            np.copyto(dst, src)
        params, grads = arena.params, arena.grads
    elif layout == "separate":
        params, grads = [p.copy() for p in params0], grads0
    else:
        raise ValueError(layout)
    opt = fastopt.Adam(params, backend=None if backend == "default" else backend, **ADAM)
    opt.step(grads)
    plan = opt._plan
    if level == "step":
        def fn():
            opt.step(grads)
    elif level == "bound-call":
        scalars = []
        for gi, group in enumerate(opt.param_groups):
            lr = group["lr"]
            assert not callable(lr), "the overhead case uses a constant lr"
            scalars.append(tuple(opt.spec.scalars(group, opt._steps[gi] + 1, lr)))
        calls = [(call, scalars[gi]) for gi, call in plan.calls]
        if len(calls) == 1:
            call, sc = calls[0]

            def fn():
                call(sc)
        else:
            def fn():
                for call, sc in calls:
                    call(sc)
    else:
        raise ValueError(level)
    info = dict(backend=backend, resolved=opt.backend, layout=layout, level=level, model=model,
                bound_calls=len(plan.calls), rows=sum(len(r) for r in opt.kernel_rows),
                n=int(sum(p.size for p in params0)), tensors=len(params0))
    fn.keep = (opt, params, grads)
    return fn, info


@pytest.mark.parametrize("level", OVERHEAD_LEVELS)
@pytest.mark.parametrize("layout", OVERHEAD_LAYOUTS)
@pytest.mark.parametrize("backend", OVERHEAD_BACKENDS,
                         ids=[_overhead_id(b) for b in OVERHEAD_BACKENDS])
def test_overhead(benchmark, floor, backend, layout, level):
    if backend == "cython" and not H.backend_available("cython"):
        pytest.skip("cython backend not built")
    fn, info = overhead_case(backend, layout, level)
    benchmark.group = f"overhead course_mlp {info['resolved']} {layout}"
    H.run(benchmark, fn, budget=0.3, min_rounds=10)
    H.record(benchmark, floor, bytes_moved=H.bytes_per_element("adam") * info["n"],
             suite="overhead", family="adam", impl=level, dtype="float32", **info)


# --------------------------------------------------------------------------------------------
# start-up: import + first step in a fresh process (default backend; Numba kernels cached on disk)
# --------------------------------------------------------------------------------------------

def test_startup(benchmark, floor):
    inner, backends = [], []

    def once():
        med, _, _, be = H.startup_seconds(repeats=1, warm=False)
        inner.append(med)
        backends.append(be)

    H.startup_seconds(repeats=1)  # a warm process fills Numba's cache
    benchmark.pedantic(once, rounds=5, iterations=1, warmup_rounds=0)
    benchmark.group = "startup"
    backend = backends[-1] if backends else H.default_backend()
    benchmark.extra_info.update(suite="startup", impl=backend, backend=backend, family="adam",
                                import_and_first_step_s=float(np.median(inner)),
                                import_and_first_step_all=inner,
                                note="median is the whole subprocess (interpreter start incl.); "
                                     "import_and_first_step_s is measured inside it; default "
                                     "backend (backend=None)")


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

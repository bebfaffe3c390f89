"""fastopt.torch.Adam vs torch.optim.Adam on model-shaped parameter sets (CPU).

Run (pytest-benchmark; standalone, needs nothing from bench/conftest.py)::

    PYTHONPATH=. .venv/bin/python -m pytest bench/bench_torch_adapter.py -p no:cacheprovider \
        --benchmark-min-rounds=3 --benchmark-columns=min,median,max --benchmark-sort=name -s

Parameter sets from :mod:`fastopt._shapes`: ``course_mlp`` (6 tensors), ``resnet50`` (161
tensors, 25.6M values) and ``gpt2_small`` (148 tensors, 124.4M values).  Implementations:
``torch-forloop`` (``foreach=False``), ``torch-foreach``, ``torch-fused`` (``fused=True``),
``fastopt`` (one kernel call per tensor) and ``fastopt-flatten`` (``flatten=True``: one kernel
call per step).  Each case times ``opt.step()`` after one untimed step (state allocated, kernels
compiled); gradients are fixed random tensors.  Only one optimizer (with its parameters,
gradients and state: about 4 x 4 bytes x N, ~2 GB for GPT-2 small) is alive at a time.

``extra_info``: ``tensors``, ``values``, ``bytes_moved`` (28 bytes per float32 value: reads p,
g, m, v, writes p, m, v), ``GB_per_s`` (from the median) and, for every case after the
``torch-fused`` one of its set, ``median_over_torch_fused`` (< 1: faster than torch fused).  The
last test prints the ratio table (run with ``-s`` to see it).
"""
import gc

import pytest

torch = pytest.importorskip("torch")

from fastopt import _shapes  # noqa: E402

import fastopt.torch as ft  # noqa: E402

SETS = {"course_mlp": _shapes.course_mlp, "resnet50": _shapes.resnet50,
        "gpt2_small": _shapes.gpt2_small}
IMPLS = ["torch-fused", "torch-foreach", "torch-forloop", "fastopt", "fastopt-flatten"]
CASES = [(s, i) for s in SETS for i in IMPLS]
BYTES_PER_VALUE = 7 * 4  # Adam, float32

_MEDIANS = {}


def make_optimizer(impl, params):
    kw = dict(lr=1e-3)
    if impl == "torch-fused":
        return torch.optim.Adam(params, fused=True, **kw)
    if impl == "torch-foreach":
        return torch.optim.Adam(params, foreach=True, **kw)
    if impl == "torch-forloop":
        return torch.optim.Adam(params, foreach=False, **kw)
    return ft.Adam(params, flatten=(impl == "fastopt-flatten"), **kw)


@pytest.mark.parametrize("shape_set,impl", CASES, ids=[f"{s}-{i}" for s, i in CASES])
def test_adam_step(benchmark, shape_set, impl):
    shapes = SETS[shape_set]()
    gen = torch.Generator().manual_seed(0)
    params = []
    for s in shapes:
        p = torch.nn.Parameter(torch.randn(s, generator=gen) * 0.02)
        p.grad = torch.randn(s, generator=gen) * 1e-3
        params.append(p)
    opt = make_optimizer(impl, params)
    opt.step()  # allocate state, compile
    benchmark(opt.step)
    n = sum(p.numel() for p in params)
    median = benchmark.stats.stats.median
    _MEDIANS[(shape_set, impl)] = median
    info = benchmark.extra_info
    info.update(set=shape_set, impl=impl, tensors=len(params), values=n,
                bytes_moved=BYTES_PER_VALUE * n, GB_per_s=BYTES_PER_VALUE * n / median / 1e9)
    fused = _MEDIANS.get((shape_set, "torch-fused"))
    if fused:
        info["median_over_torch_fused"] = median / fused
    del opt, params
    gc.collect()


def test_zz_ratio_table():
    """Prints median step time / torch fused Adam's, per set (needs the cases above)."""
    if not _MEDIANS:
        pytest.skip("no benchmark ran (--benchmark-disable or -k)")
    lines = [f"{'set':<12}" + "".join(f"{i:>17}" for i in IMPLS)]
    for s in SETS:
        fused = _MEDIANS.get((s, "torch-fused"))
        row = f"{s:<12}"
        for i in IMPLS:
            m = _MEDIANS.get((s, i))
            row += f"{(f'{m * 1e3:8.3f}ms x{m / fused:5.2f}') if m and fused else '-':>17}"
        lines.append(row)
    print("\nmedian step time, and ratio to torch.optim.Adam(fused=True):\n" + "\n".join(lines))

"""Adafactor on the 'cuda' backend: its grid kernels (a block of threads per row, the row and
column sums added atomically) against the NumPy reference, and the optimizer's exact and
separable passes against the host; LAMB and Adafactor with 16-bit parameters and 16-bit or 8-bit
state.  Small sizes: the simulator runs every thread in Python."""
import numpy as np
import pytest
from numba import cuda

import fastopt
from fastopt.kernels import get_backend

RULES = [("adafactor_sq", 2, (1.5,)), ("adafactor_factored", 4, (-1.0, 1e-30, 1.0)),
         ("adafactor_factored_apply", 5, (-1.0, 1e-30, 1.0, 0.99, -0.01)),
         ("adafactor_separable", 3, ()), ("adafactor_separable_apply", 4, (0.99,))]


def _inputs(dtype, B, n, m, rule, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(B * n * m).astype(dtype)
    g = rng.standard_normal(B * n * m).astype(dtype)
    rv = (rng.random(B * n) + 0.1).astype(dtype)
    rm = np.repeat(rv.reshape(B, n).mean(axis=1), n).astype(dtype)
    cv = (rng.random(B * m) + 0.1).astype(dtype)
    return {"adafactor_sq": (p, g), "adafactor_factored": (g, rv, rm, cv),
            "adafactor_factored_apply": (p, g, rv, rm, cv),
            "adafactor_separable": (g, rv, cv),
            "adafactor_separable_apply": (p, g, rv, cv)}[rule]


@pytest.mark.parametrize("shape", [(1, 3, 5), (2, 5, 7), (1, 1, 40)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("rule, _, scalars", RULES, ids=[r[0] for r in RULES])
def test_grid_kernels_match_the_reference(rule, _, scalars, dtype, shape):
    B, n, m = shape
    host = _inputs(dtype, B, n, m, rule)
    dev = [cuda.to_device(a) for a in host]
    ref = [a.copy() for a in host]
    cu, np_ = get_backend("cuda"), get_backend("numpy")
    got = cu.run_grid(cu.grid(rule, dtype), dev, n, m, scalars)
    want = np_.run_grid(np_.grid(rule, dtype), ref, n, m, scalars)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, **tol)
    for d, r in zip(dev, ref):         # what the kernel wrote (apply: the parameter)
        np.testing.assert_allclose(d.copy_to_host(), r, **tol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_exact_and_separable_passes(dtype):
    rng = np.random.default_rng(2)
    shapes = [(4, 6), (2, 3, 5), (7,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(6)]
    for gs in grads:
        gs[0][:, 2] = 0.0       # a dead column: the exact passes for this one
    host = [p.copy() for p in params]
    dev = [cuda.to_device(p) for p in params]
    ho = fastopt.Adafactor(host, lr=0.05, weight_decay=0.1, backend="numpy")
    do = fastopt.Adafactor(dev, lr=0.05, weight_decay=0.1, backend="cuda")
    for gs in grads:
        ho.step(gs)
        do.step([cuda.to_device(g) for g in gs])
    assert [c.separable for _, c in do._plan.calls] == [False, True, None]
    tol = dict(rtol=3e-5, atol=3e-6) if dtype == np.float32 else dict(rtol=1e-11, atol=1e-12)
    for d, h in zip(dev, host):
        np.testing.assert_allclose(d.copy_to_host(), h, **tol)
    sd = do.state_dict()["state"]
    for i, want in ho.state.items():
        for k, v in want.items():
            if k != "step":
                np.testing.assert_allclose(sd[i][k], v, **tol, err_msg=f"{i} {k}")


# -- storage formats: bfloat16/float16 parameters, 16-bit and 8-bit state ----------------------
def _close_units(a, b, units):
    """Parameters or state of the same format at most ``units`` units of their last place
    apart (the sums are added atomically in another order than the host's: a trust ratio or
    RMS a few float64 units away can move a stored value by one unit of its format)."""
    a64, b64 = np.asarray(a).astype(np.float64).ravel(), np.asarray(b).astype(np.float64).ravel()
    mant = {2: 8 if np.asarray(a).dtype.name == "bfloat16" else 11, 4: 24, 8: 53}[
        np.asarray(a).dtype.itemsize]
    floor = 0.1 * np.sqrt(np.mean(b64 ** 2)) if b64.size else 0.0
    ulp = np.maximum(np.abs(b64), max(floor, 1e-30)) * 2.0 ** (1 - mant)
    return np.abs(a64 - b64) / ulp <= units


@pytest.mark.parametrize("state_dtype, rounding", [(None, "stochastic"), ("int8", "nearest")])
@pytest.mark.parametrize("name", ["Adafactor", "LAMB"])
def test_half_parameters_and_state_formats(name, state_dtype, rounding, small_grid):
    """bfloat16 parameters (a float32 gradient on one), bfloat16 or 8-bit state: the host
    NumPy backend's values (bit for bit where no sum is involved; the per-tensor sums are
    added atomically here, so within a unit of the format)."""
    import ml_dtypes
    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(5)
    shapes = [(7, 40), (300,), (5,)]
    params = [rng.standard_normal(s).astype(bf16) for s in shapes]
    grads = [[(rng.standard_normal(s) * 0.5).astype(np.float32 if i == 0 else bf16)
              for i, s in enumerate(shapes)] for _ in range(3)]
    cls = getattr(fastopt, name)
    options = dict(lr=0.05, weight_decay=0.01, state_dtype=state_dtype, rounding=rounding,
                   seed=4, min_8bit_size=256)
    host = [p.copy() for p in params]
    dev = [cuda.to_device(p) for p in params]
    ho = cls(host, backend="numpy", **options)
    do = cls(dev, backend="cuda", **options)
    for gs in grads:
        ho.step(gs)
        do.step([cuda.to_device(g) for g in gs])
    for i, (d, h) in enumerate(zip(dev, host)):
        got = d.copy_to_host().view(bf16)
        assert _close_units(got, h, 1).mean() >= 0.98, i
        assert (got.view(np.uint16) == h.view(np.uint16)).mean() >= 0.9, i
    sd = do.state_dict()["state"]
    for i, want in ho.state.items():
        for k, v in want.items():
            if k == "step":
                continue
            got = np.asarray(sd[i][k])
            if v.dtype == np.uint8:       # 8-bit codes (LAMB's moments, a vector's variance)
                assert (got == v).mean() >= 0.97, (i, k)
            elif k.endswith("_absmax"):
                np.testing.assert_allclose(got, v, rtol=1e-2, err_msg=f"{i} {k}")
            else:
                got = got.view(v.dtype) if got.dtype.kind == "V" else got.astype(v.dtype)
                assert _close_units(got, v, 2).mean() >= 0.98, (i, k)

"""Storage formats on the CUDA backend (a GPU or the simulator): bfloat16/float16 parameters,
float32 gradients of half parameters, float32/bfloat16 state, stochastic rounding -- the NumPy
backend's bits, with a non-finite check, an Arena and a checkpoint that converts.

On the simulator the kernels run as Python with NumPy float32 scalars (IEEE, no FMA), so the
bits must be the NumPy backend's exactly.  On a GPU NVVM may contract ``a*b + c`` into one fused
multiply-add, which can move a value that lands next to a rounding boundary by one unit; those
runs compare within one unit of the storage format (never run on a GPU yet)."""
import ml_dtypes
import numpy as np
import pytest
from numba import config as numba_config
from numba import cuda

import fastopt
from fastopt.specs import SPECS

BF16 = np.dtype(ml_dtypes.bfloat16)
SIM = bool(numba_config.ENABLE_CUDASIM)
LAYOUTS = [(BF16, np.float32, "float32"), (BF16, BF16, None), (np.float16, np.float32, "bfloat16"),
           (np.float32, np.float32, "bfloat16")]
# two cases of the first six families, the defaults of the later ones (see _support.FORMAT_CASES;
# not LAMB and Adafactor: their per-tensor sums are added atomically here, in another order than
# the host's, so they are compared within a unit: tests/cuda/test_adafactor_cuda.py)
CASES = [(s.name, kw) for i, s in enumerate(SPECS) if not s.apply_rule
         for kw in list(s.cases.values())[:2 if i < 6 else 1]]


def _problem(pdtype, gdtype, n=700, seed=0):
    rng = np.random.default_rng(seed)
    p = [rng.standard_normal(n).astype(pdtype), rng.standard_normal(5).astype(pdtype)]
    g = [[(rng.standard_normal(a.shape) * 0.5).astype(gdtype) for a in p] for _ in range(3)]
    return p, g


def _compare(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype, what
    if SIM:
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8), err_msg=what)
    else:  # pragma: no cover - a real GPU
        np.testing.assert_allclose(a.astype(np.float64), b.astype(np.float64),
                                   rtol=2.0 ** -7 if a.itemsize == 2 else 1e-5, atol=1e-6,
                                   err_msg=what)


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("pdtype, gdtype, state_dtype", LAYOUTS,
                         ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}-{i % 2}" for i, (n, _) in
                                                 enumerate(CASES)])
def test_cuda_gives_the_numpy_backends_bits(name, kw, pdtype, gdtype, state_dtype, rounding,
                                            small_grid):
    cls = getattr(fastopt, name)
    options = dict(state_dtype=state_dtype, rounding=rounding, seed=3)
    hp, grads = _problem(pdtype, gdtype)
    dp = [cuda.to_device(a) for a in hp]
    ref = cls(hp, backend="numpy", **kw, **options)
    opt = cls(dp, backend="cuda", **kw, **options)
    for t in range(4):
        g = grads[t % 3]
        ref.step(g)
        opt.step([cuda.to_device(x) for x in g])
    for i, (a, d) in enumerate(zip(hp, dp)):
        _compare(d.copy_to_host(), a, f"param {i}")
        for k, v in ref.state[i].items():
            if k != "step":
                _compare(opt.state[i][k].copy_to_host(), v, f"param {i} {k}")


@pytest.mark.parametrize("dtype", [BF16, np.float16])
def test_nonfinite_half_gradient_is_skipped(dtype):
    p = cuda.to_device(np.ones(300, dtype))
    opt = fastopt.Adam([p], lr=0.1, backend="cuda", nonfinite="skip")
    g = np.zeros(300, dtype)
    g[-1] = np.inf
    assert opt.step([cuda.to_device(g)]) is False
    assert (p.copy_to_host().astype(np.float32) == 1).all()
    g[-1] = 0
    assert opt.step([cuda.to_device(g)]) is True


def test_arena_of_bfloat16_and_a_checkpoint_that_converts():
    rng = np.random.default_rng(0)
    model = {"w": rng.standard_normal(300).astype(BF16), "b": rng.standard_normal(10).astype(BF16)}
    arena = fastopt.Arena(model, device="cuda")
    opt = fastopt.AdamW(arena.params, lr=0.01, backend="cuda", state_dtype="bfloat16",
                        rounding="stochastic")
    ref = fastopt.AdamW({k: v.copy() for k, v in model.items()}, lr=0.01, backend="numpy",
                        state_dtype="bfloat16", rounding="stochastic")
    g = {k: rng.standard_normal(v.shape).astype(BF16) for k, v in model.items()}
    for k in g:
        arena.grads[k].copy_to_device(g[k])
    opt.step(arena.grads)
    ref.step(g)
    assert opt.kernel_rows == [[310]]
    for k in model:
        _compare(arena.params[k].copy_to_host(), ref.params[list(model).index(k)], k)
    # a float32-state checkpoint loads into this bfloat16-state optimizer, rounded to nearest
    f32 = fastopt.AdamW({k: v.copy() for k, v in model.items()}, lr=0.01, backend="numpy",
                        state_dtype="float32")
    f32.step(g)
    sd = f32.state_dict()
    opt.load_state_dict(sd)
    got = opt.state["w"]["exp_avg"].copy_to_host()
    np.testing.assert_array_equal(got.view(np.uint16),
                                  sd["state"][0]["exp_avg"].astype(BF16).view(np.uint16))


def test_weight_ema_of_bfloat16_parameters():
    """WeightEMA of a device Arena's bfloat16 views: float32 averages (the NumPy backend's
    bits), swapped() writes them rounded and gives the parameters back, copy_to rounds."""
    rng = np.random.default_rng(1)
    model = {"w": rng.standard_normal(300).astype(BF16), "b": rng.standard_normal(10).astype(BF16)}
    arena = fastopt.Arena(model, device="cuda")
    host = {k: v.copy() for k, v in model.items()}
    ema = fastopt.WeightEMA(arena.params, decay=0.75, backend="cuda")
    ref = fastopt.WeightEMA(host, decay=0.75, backend="numpy")
    for _ in range(3):
        for k in model:
            host[k][...] = (host[k].astype(np.float32) + np.float32(0.5)).astype(BF16)
            arena.params[k].copy_to_device(host[k])
        ema.update()
        ref.update()
    for k in model:
        _compare(ema.averages[k].copy_to_host(), ref.averages[k], k)
    with ema.swapped():
        for k in model:
            _compare(arena.params[k].copy_to_host(), ref.averages[k].astype(BF16), k)
    for k in model:
        _compare(arena.params[k].copy_to_host(), host[k], k)


# (the simulator runs each of a block's 256 threads in Python: a few cases, small arrays)
INT8 = [(s.name, kw) for s in SPECS for kw in s.cases.values()
        if any(s.needed(s.defaults() | kw).values()) and not s.from_param
        and not s.apply_rule][::3]
INT8_CASES = [(n, kw, BF16) for n, kw in INT8] + [("AdamW", {}, np.float32)]


@pytest.mark.parametrize("name, kw, pdtype", INT8_CASES,
                         ids=[f"{n}-{i}" for i, (n, _, _) in enumerate(INT8_CASES)])
def test_int8_state_gives_the_numpy_backends_bits(name, kw, pdtype):
    """8-bit state: one thread block per block of 256 elements, its absmax a shared-memory
    reduction; codes, absmax and parameters as the NumPy backend's."""
    cls = getattr(fastopt, name)
    options = dict(state_dtype="int8", min_8bit_size=0, rounding="stochastic", seed=1)
    hp, grads = _problem(pdtype, pdtype, n=300)
    dp = [cuda.to_device(a) for a in hp]
    ref = cls(hp, backend="numpy", **kw, **options)
    opt = cls(dp, backend="cuda", **kw, **options)
    for t in range(3):
        g = grads[t % 3]
        ref.step(g)
        opt.step([cuda.to_device(x) for x in g])
    for i, (a, d) in enumerate(zip(hp, dp)):
        _compare(d.copy_to_host(), a, f"param {i}")
        for k, v in ref.state[i].items():
            if k != "step":
                got = opt.state[i][k].copy_to_host()
                if v.dtype == np.uint8:
                    if SIM:
                        np.testing.assert_array_equal(got, v, err_msg=f"param {i} {k}")
                    else:  # pragma: no cover - a real GPU: a value next to a boundary may move
                        assert (got == v).mean() > 0.99
                else:
                    _compare(got, v, f"param {i} {k}")

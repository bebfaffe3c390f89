"""Storage formats: bfloat16/float16 parameters, float32/bfloat16 state, stochastic rounding.

* the compiled backends' scalar codecs (:mod:`fastopt.kernels._codecs`, run here as Python with
  NumPy scalars) against the independent NumPy oracle (:mod:`fastopt.kernels.formats`: NumPy's
  and ml_dtypes' own conversions);
* stochastic rounding is unbiased, and its bits depend on (seed, step, element) only;
* every family and option, for each layout, on every host backend, against a float64
  reference of the same format (decode -> the update in float64 -> encode, written plainly),
  and bit for bit against the NumPy backend (the layout loops use IEEE arithmetic: no FMA);
* the same bits with threads, for an Arena and separate arrays, and after a resume;
* mixed dtypes in an Arena and in param groups, checkpoints that convert, bad input.
"""
import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt import kernels
from fastopt.kernels import _codecs as C
from fastopt.kernels import formats as F
from fastopt.specs import SPECS
from _support import FORMAT_CASES, HOST_BACKENDS, kernel_group, reference_step

BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
F32 = np.dtype(np.float32)
F64 = np.dtype(np.float64)

# (id, parameter dtype, gradient dtype, state_dtype)
LAYOUTS = [
    ("bf16-f32grad-f32state", BF16, F32, "float32"),
    ("bf16-all", BF16, BF16, None),
    ("f16-all", F16, F16, None),
    ("f16-f32grad-bf16state", F16, F32, "bfloat16"),
    ("f32-bf16state", F32, F32, "bfloat16"),
    ("f64-f32state", F64, F64, "float32"),
]
LAYOUT_IDS = [lay[0] for lay in LAYOUTS]
ROUNDINGS = ["nearest", "stochastic"]
STEPS = 6
N = 4099          # not a multiple of anything the loops block by
CASES = [pytest.param(cls, kw, id=name) for name, cls, kw in FORMAT_CASES]
COMPILED = [b for b in HOST_BACKENDS if b != "numpy"]


# -- the scalar codecs against the oracle ---------------------------------------------------------

def _codec_env():
    """The codec functions with the NumPy scalar types and bit casts the backends provide."""
    g = vars(C)
    g.update(u32=np.uint32, u64=np.uint64, f32=np.float32,
             f32_bits=lambda x: np.array(x, np.float32).view(np.uint32)[()],
             f32_from_bits=lambda u: np.array(u, np.uint32).view(np.float32)[()])
    return C


def _awkward_values():
    rng = np.random.default_rng(0)
    scale = np.float32(10.0) ** rng.integers(-9, 6, 1500).astype(np.float32)
    special = [0.0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519, 65520, 65536, 6e-8, 2.98e-8,
               2.9802322e-8, 5.96e-8, 6.1e-5, 1e-30, 1e-40, 3.4e38, -3.4e38, 1.00390625,
               1.01171875, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8]
    return np.concatenate([rng.standard_normal(1500).astype(np.float32) * scale,
                           np.array(special, np.float32)])


def test_codecs_round_to_nearest_as_numpy_and_ml_dtypes():
    c = _codec_env()
    x = _awkward_values()
    with np.errstate(all="ignore"):
        want_b = x.astype(BF16).view(np.uint16)
        want_h = x.astype(F16).view(np.uint16)
    got_b = np.array([c.bf16_encode(v, False, np.uint32(0)) for v in x], np.uint32)
    got_h = np.array([c.f16_encode(v, False, np.uint32(0)) for v in x], np.uint32)
    np.testing.assert_array_equal(got_b.astype(np.uint16), want_b)
    np.testing.assert_array_equal(got_h.astype(np.uint16), want_h)
    assert (got_b < 2 ** 16).all() and (got_h < 2 ** 16).all()


def test_codecs_decode_exactly():
    c = _codec_env()
    every = np.arange(2 ** 16, dtype=np.uint16)
    got_b = np.array([c.bf16_decode(np.uint32(h)) for h in every[::7]], np.float32)
    got_h = np.array([c.f16_decode(np.uint32(h)) for h in every[::7]], np.float32)
    np.testing.assert_array_equal(got_b, every[::7].view(BF16).astype(np.float32))
    np.testing.assert_array_equal(got_h, every[::7].view(F16).astype(np.float32))


@pytest.mark.parametrize("fmt", [F.BF16, F.F16])
def test_codecs_stochastic_match_the_oracle(fmt):
    c = _codec_env()
    x = _awkward_values()
    idx = np.arange(x.size, dtype=np.uint64) + np.uint64(2 ** 33 - 5)  # high bits used too
    bits = F.random_bits(idx, 7, 3, 1)
    assert np.array_equal(bits, [c.random_bits(np.uint64(i), np.uint32(7), np.uint32(3),
                                               np.uint32(1)) for i in idx])
    want = np.empty(x.size, F.storage_dtype(fmt))
    F.encode(fmt, x, want, "stochastic", bits)
    enc = c.bf16_encode if fmt == F.BF16 else c.f16_encode
    got = np.array([enc(v, True, b) for v, b in zip(x, bits)], np.uint32).astype(np.uint16)
    np.testing.assert_array_equal(got, want.view(np.uint16))


@pytest.mark.parametrize("fmt, x", [(F.BF16, 1.0 + 2.0 ** -10), (F.BF16, -3.3e-3),
                                    (F.F16, 1.0 + 2.0 ** -13), (F.F16, 3.1e-7)])  # f16 subnormal
def test_stochastic_rounding_is_unbiased(fmt, x):
    n = 200_000
    v = np.full(n, x, np.float32)
    out = np.empty(n, F.storage_dtype(fmt))
    F.encode(fmt, v, out, "stochastic", F.random_bits(np.arange(n, dtype=np.uint64), 1, 0, 0))
    vals = out.astype(np.float64)
    lo, hi = np.unique(vals)                      # only the two neighbours appear
    assert lo < float(np.float32(x)) < hi
    p_up = (float(np.float32(x)) - lo) / (hi - lo)
    assert abs((vals == hi).mean() - p_up) < 4 * np.sqrt(p_up * (1 - p_up) / n)
    assert abs(vals.mean() - float(np.float32(x))) < 4 * (hi - lo) * np.sqrt(p_up / n)


def test_random_bits_depend_on_seed_step_element_and_array():
    idx = np.arange(10_000, dtype=np.uint64)
    base = F.random_bits(idx, 3, 7, 2)
    assert np.array_equal(base, F.random_bits(idx, 3, 7, 2))
    for other in (F.random_bits(idx, 4, 7, 2), F.random_bits(idx, 3, 8, 2),
                  F.random_bits(idx, 3, 7, 3), F.random_bits(idx + np.uint64(1), 3, 7, 2)):
        assert (other == base).mean() < 0.01
    # roughly uniform: every 16-bit half-word bucket of 16 about equally full
    counts = np.bincount((base >> np.uint32(28)).astype(np.int64), minlength=16)
    assert counts.min() > 0.8 * idx.size / 16


# -- every family, every layout, every host backend --------------------------------------------

def _problem(pdtype, gdtype, seed=0, sizes=(N, 5, 3 * 333)):
    rng = np.random.default_rng(seed)
    params = {f"p{k}": rng.standard_normal(n).astype(pdtype) for k, n in enumerate(sizes)}
    grads = [{k: (rng.standard_normal(v.shape) * 0.5).astype(gdtype) for k, v in params.items()}
             for _ in range(3)]
    return params, grads


def _copy(params):
    return {k: v.copy() for k, v in params.items()}


def _run(cls, kwargs, params, grads, backend, steps=STEPS, **options):
    opt = cls(params, backend=backend, **kwargs, **options)
    for t in range(steps):
        assert opt.step(grads[t % len(grads)])
    return opt


def _reference(cls, kwargs, params, grads, state_dtype, rounding, seed, steps=STEPS):
    """The float64 reference of the same format, written plainly: per parameter, decode its
    storage to float64, apply the update (NumPy's reference rule in float64), encode back with
    the same rounding and random bits.  Returns (params, {name: {state: array}})."""
    spec = cls.spec
    group = kernel_group(spec, kwargs)
    be = kernels.get_backend("numpy")
    flags = spec.flags(group)
    needed = spec.needed(group)
    params = _copy(params)
    state, offsets, seen = {}, {}, {}
    for k, p in params.items():
        offsets[k] = seen.get(p.dtype, 0)
        seen[p.dtype] = offsets[k] + p.size
        sfmt = F.state_format(state_dtype, F.tag(p.dtype))
        state[k] = {n: np.full(p.size, spec.initial(n, group), F.storage_dtype(sfmt))
                    for n, need in needed.items() if need}
        for n in spec.from_param:      # Schedule-Free's z: the parameter, in the state's format
            F.encode(sfmt, F.decode(F.tag(p.dtype), p.reshape(-1), np.float64), state[k][n])
    for t in range(1, steps + 1):
        g = grads[(t - 1) % len(grads)]
        sc = spec.scalars(group, t, float(group["lr"]))
        for k, p in params.items():
            sfmt = F.state_format(state_dtype, F.tag(p.dtype))
            st = [state[k].get(n) for n in spec.state_names]
            formats = (F.tag(p.dtype), F.tag(g[k].dtype), *[sfmt if a is not None else None
                                                            for a in st])
            reference_step(be, spec, group, flags, t, [p, g[k], *st], formats, sc,
                           rounding=rounding, base=offsets[k], seed=seed, step=t)
        spec.advance(group, t, float(group["lr"]))
    return params, state


def _ulps(a, b):
    """|a - b| in units of the last place of a's storage format at b's magnitude (at least 10%
    of b's RMS: near a cancellation one unit of the inputs is many of the result's)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    mant = {BF16: 8, F16: 11, F32: 24, F64: 53}[np.dtype(a.dtype)]
    finite = np.isfinite(b64)
    floor = 0.1 * np.sqrt(np.mean(b64[finite] ** 2)) if finite.any() else 0.0
    ulp = np.maximum(np.abs(b64), max(floor, 1e-30)) * 2.0 ** (1 - mant)
    return np.abs(a64 - b64) / ulp


#: rules whose update is a sign (Lion): a last-bit difference of the interpolated momentum
#: near 0 flips a whole step, so a few elements may be far apart; the rest must be close
SIGN_RULES = {"lion"}


def _assert_near_reference(got, want, what, coarse, units=4, sign_rule=False):
    """Float32 arithmetic against float64 arithmetic, both rounded to the same formats: most
    elements are the same, the rest a few units of the coarsest format in the layout apart
    (``coarse``: a float32 parameter moved by bfloat16 state carries that state's rounding).
    Stochastic rounding turns a last-bit difference before rounding into a whole unit, now and
    then, which later steps carry on (momentum sums them): ``units`` is larger for it."""
    got, want = np.asarray(got).reshape(-1), np.asarray(want).reshape(-1)
    assert got.dtype == want.dtype, what
    if got.dtype.itemsize == 2:
        same = got.view(np.uint16) == want.view(np.uint16)
        u = _ulps(got, want)
    else:
        tol = 1e-4 if got.dtype == F32 else 1e-9
        same = np.isclose(got, want, rtol=tol, atol=tol)
        u = _ulps(got.astype(coarse), want.astype(coarse)) if coarse.itemsize == 2 else \
            np.where(same, 0, np.inf)
    assert same.mean() >= 0.97, f"{what}: only {same.mean():.1%} of elements equal"
    if sign_rule:
        near = np.mean(np.nan_to_num(u, nan=0.0) <= units)
        assert near >= 0.995, f"{what}: only {near:.2%} within {units} units"
        return
    assert np.nanmax(u) <= units, f"{what}: {np.nanmax(u)} units apart"


@pytest.mark.parametrize("rounding", ROUNDINGS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=LAYOUT_IDS)
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_numpy_backend_matches_float64_reference_of_the_same_format(cls, kwargs, layout,
                                                                      rounding):
    _, pdtype, gdtype, state_dtype = layout
    params, grads = _problem(pdtype, gdtype)
    before = _copy(params)
    opt = _run(cls, kwargs, params, grads, "numpy", state_dtype=state_dtype, rounding=rounding,
               seed=11)
    ref_params, ref_state = _reference(cls, kwargs, before, grads, state_dtype, rounding, 11)
    sdtype = F.storage_dtype(F.state_format(state_dtype, F.tag(pdtype)))
    coarse = min((pdtype, gdtype, sdtype), key=lambda d: (d.itemsize, d == F16))
    units = 4 if rounding == "nearest" else 32
    for k in params:
        assert params[k].dtype == pdtype
        sign_rule = cls.spec.rule in SIGN_RULES
        _assert_near_reference(params[k], ref_params[k], k, coarse, units, sign_rule)
        for name, buf in ref_state[k].items():
            live = opt.state[k][name]
            assert live.dtype == sdtype
            _assert_near_reference(live, buf, f"{k}.{name}", coarse, units, sign_rule)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint16) if a.dtype.itemsize == 2 else a


def _assert_same_bits(opt_a, params_a, opt_b, params_b):
    for k in params_a:
        np.testing.assert_array_equal(_bits(params_a[k]), _bits(params_b[k]), err_msg=k)
        for name, v in opt_a.state[k].items():
            if name != "step":
                np.testing.assert_array_equal(_bits(v), _bits(opt_b.state[k][name]),
                                              err_msg=f"{k}.{name}")


# the compiled loops of a storage layout: every option of every family for the two layouts that
# matter most, every layout for each family's default
# (a layout with 32/64-bit parameters and gradients and no state in use is not one: that is the
# native loop, whose Numba build uses fastmath, tested in test_conformance.py)
def _is_layout(case, layout):
    cls, kwargs = case.values
    stateful = any(cls.spec.needed(kernel_group(cls.spec, kwargs)).values())
    return stateful or layout[1].itemsize == 2 or layout[2].itemsize == 2


_BACKEND_CASES = [(c, lay) for c in CASES for lay in (LAYOUTS[0], LAYOUTS[3])] + [
    (c, lay) for c in CASES if c.id in {s.name.lower() for s in SPECS} for lay in LAYOUTS
    if lay not in (LAYOUTS[0], LAYOUTS[3]) and _is_layout(c, lay)]


# Cython (compiled at install) runs every (case, layout) with both roundings; Numba compiles a
# module per (rule, flags, layout, rounding) on first use (several seconds each, most of this
# file's CI time), so it runs each (case, layout) with one rounding, alternating: every family
# and layout still meets both roundings' encoders.
_BITS_CASES = [pytest.param(c, lay, rounding, backend, id=f"{c.id}-{lay[0]}-{rounding}-{backend}")
               for k, (c, lay) in enumerate(_BACKEND_CASES) for backend in COMPILED
               for j, rounding in enumerate(ROUNDINGS) if backend != "numba" or j == k % 2]


@pytest.mark.parametrize("case, layout, rounding, backend", _BITS_CASES)
def test_compiled_backends_give_the_numpy_backends_bits(case, layout, rounding, backend):
    cls, kwargs = case.values
    _, pdtype, gdtype, state_dtype = layout
    options = dict(state_dtype=state_dtype, rounding=rounding, seed=5)
    pa, grads = _problem(pdtype, gdtype)
    pb = _copy(pa)
    a = _run(cls, kwargs, pa, grads, "numpy", **options)
    b = _run(cls, kwargs, pb, grads, backend, **options)
    _assert_same_bits(a, pa, b, pb)


@pytest.mark.parametrize("backend", COMPILED)
def test_threads_do_not_change_the_bits(backend, small_threshold):
    pa, grads = _problem(BF16, F32)
    pb = _copy(pa)
    options = dict(state_dtype="bfloat16", rounding="stochastic", seed=9)
    a = _run(fastopt.AdamW, {"lr": 0.01}, pa, grads, "numpy", **options)
    b = _run(fastopt.AdamW, {"lr": 0.01}, pb, grads, backend, **options)   # threaded loops
    _assert_same_bits(a, pa, b, pb)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_arena_and_separate_arrays_give_the_same_bits(backend):
    pa, grads = _problem(BF16, BF16)
    arena = fastopt.Arena(_copy(pa))
    options = dict(rounding="stochastic", seed=1)
    a = _run(fastopt.Adam, {"lr": 0.01}, pa, grads, backend, **options)
    opt = fastopt.Adam(arena.params, lr=0.01, backend=backend, **options)
    for t in range(STEPS):
        for k, g in grads[t % len(grads)].items():
            arena.grads[k][...] = g
        opt.step(arena.grads)
    assert opt.kernel_rows == [[sum(p.size for p in pa.values())]]   # one row, one call
    assert arena.grads["p0"].dtype == BF16
    _assert_same_bits(a, pa, opt, arena.params)


def test_the_seed_changes_stochastic_rounding_and_only_it():
    runs = []
    for seed in (0, 0, 1):
        params, grads = _problem(BF16, F32)
        _run(fastopt.AdamW, {"lr": 1e-3}, params, grads, "numpy", rounding="stochastic",
             seed=seed)
        runs.append(params["p0"].view(np.uint16))
    assert np.array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_stochastic_rounding_keeps_small_updates_nearest_loses_them(backend):
    """bf16 parameters at 1.0 have a unit of 2**-7 above; updates of 1e-4 per step are below
    half of it: round to nearest never moves, stochastic rounding moves on average."""
    out = {}
    for rounding in ROUNDINGS:
        p = np.ones(20_000, BF16)
        opt = fastopt.SGD([p], lr=1e-4, backend=backend, rounding=rounding, seed=3)
        g = np.ones(20_000, np.float32)
        for _ in range(50):
            opt.step([g])
        out[rounding] = p.astype(np.float64).mean()
    assert out["nearest"] == 1.0
    assert abs(out["stochastic"] - (1.0 - 50 * 1e-4)) < 2e-4


# -- resume, checkpoints ---------------------------------------------------------------------------

@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("state_dtype", [None, "float32", "bfloat16"])
def test_resume_is_bit_exact(backend, state_dtype, tmp_path):
    options = dict(state_dtype=state_dtype, rounding="stochastic", seed=4)
    pa, grads = _problem(BF16, F32)
    a = _run(fastopt.AdamW, {"lr": 0.01, "amsgrad": True}, pa, grads, backend, steps=6,
             **options)
    pb, _ = _problem(BF16, F32)
    b = _run(fastopt.AdamW, {"lr": 0.01, "amsgrad": True}, pb, grads, backend, steps=3,
             **options)
    path = tmp_path / "ckpt.npz"
    fastopt.save(b, path)
    pc = _copy(pb)
    c = fastopt.AdamW(pc, lr=0.01, amsgrad=True, backend=backend, **options)
    fastopt.load(c, path)
    sd = c.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == F.storage_dtype(
        F.state_format(state_dtype, F.BF16))
    for t in range(3, 6):
        c.step(grads[t % len(grads)])
    _assert_same_bits(a, pa, c, pc)


def test_loading_converts_between_state_dtypes():
    params, grads = _problem(F32, F32)
    src = _run(fastopt.Adam, {"lr": 0.01}, _copy(params), grads, "numpy")
    sd = src.state_dict()
    dst = fastopt.Adam(_copy(params), lr=0.01, state_dtype="bfloat16")
    dst.load_state_dict(sd)
    got = dst.state["p0"]["exp_avg_sq"]
    assert got.dtype == BF16
    np.testing.assert_array_equal(got.view(np.uint16),
                                  sd["state"][0]["exp_avg_sq"].astype(BF16).view(np.uint16))
    # and back: bfloat16 state into a float32 optimizer (exact)
    back = fastopt.Adam(_copy(params), lr=0.01)
    back.load_state_dict(dst.state_dict())
    np.testing.assert_array_equal(back.state["p0"]["exp_avg_sq"], got.astype(np.float32))
    assert back.step_count == src.step_count


def test_checkpoint_with_bad_state_dtype_is_rejected_and_changes_nothing():
    params, grads = _problem(BF16, F32)
    opt = _run(fastopt.Adam, {"lr": 0.01}, params, grads, "numpy", state_dtype="bfloat16")
    before = {k: v.copy() for k, v in opt.state["p0"].items() if k != "step"}
    sd = opt.state_dict()
    sd["state"][1]["exp_avg"] = sd["state"][1]["exp_avg"].view(np.uint16)
    with pytest.raises(TypeError, match=r"'exp_avg' of parameter 1 has dtype uint16"):
        opt.load_state_dict(sd)
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state["p0"][k].view(np.uint16), v.view(np.uint16))


# -- mixed dtypes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_arena_of_mixed_dtypes_one_call_per_dtype_and_format(backend):
    rng = np.random.default_rng(0)
    model = {"a": rng.standard_normal(300).astype(BF16), "b": rng.standard_normal(70),
             "c": rng.standard_normal(50).astype(BF16), "d": rng.standard_normal(9).astype(F16)}
    arena = fastopt.Arena(model)
    opt = fastopt.AdamW(arena.params, lr=0.01, backend=backend, state_dtype="float32",
                        rounding="stochastic")
    for k, p in arena.grads.items():
        p[...] = 1.0
    opt.step(arena.grads)
    assert sorted(map(tuple, opt.kernel_rows)) == [(9,), (70,), (350,)]
    separate = {k: v.copy() for k, v in model.items()}
    ref = fastopt.AdamW(separate, lr=0.01, backend="numpy", state_dtype="float32",
                        rounding="stochastic")
    ref.step({k: np.ones_like(v) for k, v in separate.items()})
    for k in model:
        np.testing.assert_array_equal(_bits(arena.params[k]), _bits(separate[k]), err_msg=k)
        assert opt.state[k]["exp_avg"].dtype == F32


def test_param_groups_with_their_own_dtypes_and_float32_grads_of_half_params():
    rng = np.random.default_rng(1)
    w = rng.standard_normal(100).astype(BF16)
    b = rng.standard_normal(10).astype(np.float32)
    opt = fastopt.Adam([{"params": [w]}, {"params": [b], "lr": 0.1}], lr=0.01)
    gw = rng.standard_normal(100).astype(np.float32)      # float32 gradient of a bf16 param
    gb = rng.standard_normal(10).astype(np.float32)
    w0, b0 = w.copy(), b.copy()
    opt.step([gw, gb])
    assert w.dtype == BF16 and not np.array_equal(w.view(np.uint16), w0.view(np.uint16))
    assert np.abs(b - b0).max() == pytest.approx(0.1, rel=1e-3)
    assert opt.state[0]["exp_avg"].dtype == BF16      # state_dtype=None: the parameter's


# -- bad input ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw, exc, match", [
    (dict(state_dtype="float16"), ValueError, r"state_dtype must be one of None, 'float32', "
                                              r"'bfloat16', 'int8'; got 'float16'"),
    (dict(state_dtype=3), ValueError, "state_dtype must be one of"),
    (dict(rounding="up"), ValueError, r"rounding must be 'nearest' or 'stochastic', got 'up'"),
    (dict(seed=-1), ValueError, r"seed must be in \[0, 2\*\*32\), got -1"),
    (dict(seed=1.5), TypeError, "seed must be an integer, got float"),
])
def test_bad_options_are_rejected(kw, exc, match):
    with pytest.raises(exc, match=match):
        fastopt.Adam([np.zeros(3, BF16)], **kw)


def test_state_dtype_spellings():
    p = [np.zeros(3, np.float32)]
    assert fastopt.Adam(p, state_dtype=np.float32).state_dtype == "float32"
    assert fastopt.Adam(p, state_dtype=ml_dtypes.bfloat16).state_dtype == "bfloat16"
    assert fastopt.Adam(p, state_dtype="bfloat16").state_dtype == "bfloat16"


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("pdtype, gdtype", [(BF16, F16), (BF16, F64), (F32, BF16), (F16, BF16),
                                            (F32, F16)])
def test_gradient_of_another_dtype_is_rejected_before_anything_changes(backend, pdtype, gdtype):
    p = np.ones(5, pdtype)
    opt = fastopt.Adam([p], lr=0.1, backend=backend, state_dtype="float32")
    with pytest.raises(TypeError, match=r"grads\[0\] has dtype"):
        opt.step([np.ones(5, gdtype)])
    assert opt.step_count == 0 and (p.astype(np.float32) == 1).all()
    assert not opt.state[0]["exp_avg"].any()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype", [BF16, F16])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_nonfinite_half_gradients_are_found(backend, dtype, bad):
    p = np.ones(70_000, dtype)
    g = np.zeros(70_000, dtype)
    g[69_999] = bad
    opt = fastopt.Adam([p], lr=0.1, backend=backend, nonfinite="skip")
    assert opt.step([g]) is False and opt.skipped_steps == 1
    assert (p.astype(np.float32) == 1).all()
    g[69_999] = 0
    assert opt.step([g]) is True


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_all_finite_on_half_arrays(backend, small_threshold):
    be = kernels.get_backend(backend)
    for dtype in (BF16, F16):
        x = np.linspace(-60000, 60000, 1000).astype(dtype)
        assert be.all_finite(x)
        for bad in (np.inf, np.nan):
            y = x.copy()
            y[500] = bad
            assert not be.all_finite(y)

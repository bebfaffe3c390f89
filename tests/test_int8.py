"""8-bit block-wise state (``state_dtype="int8"``, bitsandbytes' format).

* the maps are bitsandbytes' ``create_dynamic_map`` (and the formula), the compiled codecs'
  nearest code is exact (against searchsorted on the midpoints);
* every family and option, on every host backend, against a float64 reference of the same
  format (dequantize -> update in float64 -> requantize, written plainly), and bit for bit
  across backends, threads and layouts (bfloat16 parameters, stochastic rounding);
* ``min_8bit_size``, non-finite values, resume, conversions between state dtypes, bad input.
"""
import ml_dtypes
import numpy as np
import pytest

import fastopt
from fastopt import kernels
from fastopt.kernels import _codecs as C
from fastopt.kernels import _qmaps as Q
from fastopt.kernels import formats as F
from _support import FORMAT_CASES, HOST_BACKENDS, kernel_group, reference_step

BF16 = np.dtype(ml_dtypes.bfloat16)
COMPILED = [b for b in HOST_BACKENDS if b != "numpy"]
# every option of every family that keeps state
STATEFUL = [pytest.param(cls, kw, id=name) for name, cls, kw in FORMAT_CASES
            if any(cls.spec.needed(kernel_group(cls.spec, kw)).values())
            and not cls.spec.from_param]   # Schedule-Free's z is a copy of the weights: no int8
N = 4096 + 300          # 8-bit (>= min_8bit_size), with a partial last block


# -- the maps and the nearest code ----------------------------------------------------------------

def _formula_map(signed):
    """create_dynamic_map's construction in float64 (bitsandbytes rounds it through float32)."""
    data = []
    for i in range(7):
        k = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = np.linspace(0.1, 1, k)
        means = (b[:-1] + b[1:]) / 2
        data += list(10.0 ** (i - 6) * means) + (list(-10.0 ** (i - 6) * means) if signed else [])
    return np.sort(np.array(data + [0.0, 1.0]))


@pytest.mark.parametrize("signed", [True, False])
def test_maps_follow_the_formula(signed):
    q = Q.qmap(signed)
    assert q.dtype == np.float32 and q.shape == (256,) and (np.diff(q) > 0).all()
    np.testing.assert_allclose(q, _formula_map(signed), rtol=2 ** -22, atol=0)


@pytest.mark.parametrize("signed", [True, False])
def test_maps_are_bitsandbytes(signed):
    torch = pytest.importorskip("torch")
    bnbf = pytest.importorskip("bitsandbytes.functional")
    theirs = bnbf.create_dynamic_map(signed=signed).numpy()
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        np.testing.assert_array_equal(Q.qmap(signed), theirs)
    else:  # torch.linspace's last bit depends on the CPU kernel (see _qmaps.py)
        np.testing.assert_allclose(Q.qmap(signed), theirs, rtol=2 ** -23)


def _codec_env():
    g = vars(C)
    g.update(u32=np.uint32, u64=np.uint64, f32=np.float32,
             f32_bits=lambda x: np.array(x, np.float32).view(np.uint32)[()],
             f32_from_bits=lambda u: np.array(u, np.uint32).view(np.float32)[()])
    for tag, signed in (("S", True), ("U", False)):
        mid, lo = Q.tables(signed)
        g[f"QMID_{tag}"], g[f"QLO_{tag}"] = mid, lo
    g.update(QB0=Q.B0, QBMAX=Q.BMAX, QNB=Q.NB)
    return C


@pytest.mark.parametrize("fmt", [F.Q8S, F.Q8U])
def test_compiled_codec_gives_the_exact_nearest_code(fmt):
    c = _codec_env()
    signed = fmt == F.Q8S
    mid = Q.midpoints(signed)[:-1]
    rng = np.random.default_rng(0)
    y = np.concatenate([
        rng.uniform(-1 if signed else 0, 1, 3000), rng.uniform(-1, 1, 3000) * 10.0 **
        rng.uniform(-9, 0, 3000), mid, np.nextafter(mid, np.float32(2)),
        np.nextafter(mid, np.float32(-2)), Q.qmap(signed), [0.0, -0.0, 1.0, -1.0, 1e-40]
    ]).astype(np.float32)
    if not signed:
        y = np.abs(y)
    enc = c.q8s_encode if signed else c.q8u_encode
    got = np.array([enc(v, np.float32(1)) for v in y])
    want = np.searchsorted(mid, y, side="left")
    np.testing.assert_array_equal(got, want)
    # and that code's value is the nearest one (in exact arithmetic, but for a value within a
    # unit in the last place of a midpoint: the boundaries are float32)
    q = Q.qmap(signed).astype(np.float64)
    y64 = y.astype(np.float64)
    dist = np.abs(q[got] - y64)
    best = np.abs(q[None, :] - y64[:, None]).min(axis=1)
    assert (dist - best <= np.spacing(np.abs(y)).astype(np.float64) + 1e-45).all()


def _cython_paths():
    """The Cython extension's 8-bit codec paths runnable here: (build, AVX-512 on)."""
    if "cython" not in HOST_BACKENDS:
        return []
    from fastopt.kernels import cython as cy
    paths = [("baseline", False, False)]
    for build in ("avx2", "avx512"):
        if build in cy.variants():
            ext = cy.variants()[build]
            paths.append((build, False, False))
            if ext.q8_avx512():      # on by default where the CPU has it
                paths.append((build, True, False))
                if ext.q8_vbmi():    # likewise: the decoder's byte-permute path
                    paths.append((build, True, True))
    return paths


CYTHON_PATHS = [pytest.param(p, id=f"{p[0]}{'-avx512' if p[1] else ''}{'-vbmi' if p[2] else ''}")
                for p in _cython_paths()]


@pytest.fixture
def cython_path(request):
    """Bind the Cython backend to one build and 8-bit SIMD path; restored afterwards."""
    from fastopt.kernels import cython as cy
    build, avx512, vbmi = request.param
    isa = cy.ISA
    cy._use(build)
    before = (cy.extension.q8_avx512(avx512), cy.extension.q8_vbmi(vbmi)) \
        if build != "baseline" else None
    yield cy.extension
    if before is not None:
        cy.extension.q8_avx512(before[0])
        cy.extension.q8_vbmi(before[1])
    cy._use(isa)


@pytest.mark.parametrize("cython_path", CYTHON_PATHS, indirect=True)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_cython_decoder_gives_map_times_absmax(cython_path, signed):
    """Every path of the compiled block decoder (scalar, AVX2 gathers, AVX-512 register
    permutes, VBMI byte permutes): every code in every position of a block, each block its
    own absmax (NaN, zero, infinite and subnormal ones among them), odd lengths for the
    tails."""
    rng = np.random.default_rng(11)
    qmap = Q.qmap(signed).astype(np.float32)
    for n in (4096, 256 * 3 + 77, 63, 1):
        codes = rng.integers(0, 256, n).astype(np.uint8)
        codes[:256 * (n // 256)] = np.tile(np.arange(256, dtype=np.uint8), n // 256)[
            rng.permutation(256 * (n // 256))]
        nblocks = -(-n // 256)
        absmax = (rng.uniform(0, 2, nblocks) * 10.0 ** rng.integers(-40, 3, nblocks)).astype(
            np.float32)
        absmax[:4] = [np.nan, 0.0, np.inf, 1e-40][:min(4, nblocks)]
        got = np.empty(n, np.float32)
        cython_path.decode_q8(codes.ctypes.data, n, absmax.ctypes.data, got.ctypes.data, signed)
        with np.errstate(all="ignore"):
            want = qmap[codes] * np.repeat(absmax, 256)[:n]
        np.testing.assert_array_equal(got, want, err_msg=f"n={n}")


def _want_codes(signed, x, m):
    """The nearest code of x / m in float32 (searchsorted on the midpoints), with the codecs'
    rules: a zero or NaN m, or a NaN ratio, gives the code of 0 (and, unsigned, so does
    anything not above 0)."""
    mid = Q.midpoints(signed)[:-1]
    with np.errstate(all="ignore"):
        y = (x / np.float32(m)).astype(np.float32) if m > 0 else np.zeros_like(x)
    y = np.where(np.isnan(y), np.float32(0), y) if signed else np.where(y > 0, y, np.float32(0))
    return np.searchsorted(mid, y, side="left").astype(np.uint8)


@pytest.mark.parametrize("cython_path", CYTHON_PATHS, indirect=True)
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_cython_encoder_gives_the_exact_nearest_code(cython_path, signed):
    """Every path of the compiled block encoder (scalar, AVX2 tables, AVX-512 arithmetic) on
    the values where a code changes: every midpoint and the 300 float32 either side, both
    signs, and random values, for several block maxima; odd lengths exercise the tails."""
    rng = np.random.default_rng(5)
    mid = Q.midpoints(signed)[:-1]
    near = (mid.view(np.int32)[:, None] + np.arange(-300, 301)[None, :]).ravel()
    near = np.abs(near.view(np.float32))
    near = near[near <= 1]
    for m in (1.0, 0.0073, 3.0, 2.5e-30, 0.61803, 1.7e-7, 4.9e3, 2.0 ** -125, 3e-39):
        f = np.float32(m)
        x = np.concatenate([near * f, -near * f, rng.uniform(-m, m, 20011),
                            (rng.uniform(-1, 1, 20011) * 10.0 ** rng.uniform(-9, 0, 20011)) * m,
                            [0.0, -0.0, m, -m, np.nan]]).astype(np.float32)
        x = x[np.isnan(x) | (np.abs(x) <= f)]
        got = np.empty(x.size, np.uint8)
        cython_path.encode_q8(x.ctypes.data, x.size, f, got.ctypes.data, signed)
        np.testing.assert_array_equal(got, _want_codes(signed, x, f), err_msg=f"m={m}")
    x = np.array([1.0, -1.0, 0.5, np.nan, 0.0], np.float32)
    for m in (0.0, np.nan, np.inf):
        got = np.empty(x.size, np.uint8)
        cython_path.encode_q8(x.ctypes.data, x.size, np.float32(m), got.ctypes.data, signed)
        np.testing.assert_array_equal(got, _want_codes(signed, x, np.float32(m)), err_msg=m)


@pytest.mark.skipif(not any(p[1] for p in _cython_paths()), reason="no AVX-512 on this CPU")
@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
@pytest.mark.parametrize("m", [1.0, 0.7301, 3.1e-3], ids=["m=1", "m=0.7301", "m=3.1e-3"])
def test_avx512_encoder_equals_the_table_path_on_every_float32(signed, m):
    """The AVX-512 encoder computes codes arithmetically (_qmaps.level_tables), from x times
    1/m where a division would be exact: it is compared with the AVX2 table path (x / m) on
    every float32 x in [-m, m] (about 2.1e9 values each, some seconds), for a block maximum of
    1 (1/m exact) and two whose reciprocal is rounded."""
    from fastopt.kernels import cython as cy
    ext = cy.variants()["avx2"]
    before = ext.q8_avx512()
    chunk = 1 << 23
    a, b = np.empty(chunk, np.uint8), np.empty(chunk, np.uint8)
    m = np.float32(m)
    top = int(m.view(np.uint32))
    try:
        for sign in (0, 1 << 31):
            for start in range(0, top + 1, chunk):
                bits = np.arange(start, min(start + chunk, top + 1), dtype=np.uint32) | sign
                x = bits.view(np.float32)
                ext.q8_avx512(False)
                ext.encode_q8(x.ctypes.data, x.size, m, a.ctypes.data, signed)
                ext.q8_avx512(True)
                ext.encode_q8(x.ctypes.data, x.size, m, b.ctypes.data, signed)
                bad = np.flatnonzero(a[:x.size] != b[:x.size])
                assert bad.size == 0, (f"{bad.size} codes differ, first at {x[bad[0]]!r}: "
                                       f"table path {a[bad[0]]}, AVX-512 {b[bad[0]]}")
    finally:
        ext.q8_avx512(before)


@pytest.mark.parametrize("cython_path", CYTHON_PATHS, indirect=True)
@pytest.mark.parametrize("layout", ["f32", "bf16-stochastic"])
def test_cython_simd_paths_give_the_numpy_backends_bits(cython_path, layout):
    """The whole 8-bit step (decode, update, absmax, encode) on each compiled path."""
    pdtype, rounding = (np.float32, "nearest") if layout == "f32" else (BF16, "stochastic")
    for cls, kwargs in ((fastopt.AdamW, {"lr": 0.01, "amsgrad": True}),
                        (fastopt.RMSprop, {"lr": 0.01, "momentum": 0.9, "centered": True})):
        pa, grads = _problem(pdtype)
        pb = _copy(pa)
        a = _run(cls, kwargs, pa, grads, "numpy", rounding=rounding, seed=3, min_8bit_size=0)
        b = _run(cls, kwargs, pb, grads, "cython", rounding=rounding, seed=3, min_8bit_size=0)
        _assert_same_bits(a, pa, b, pb)


def test_quantize_dequantize_roundtrip_and_specials():
    x = np.concatenate([np.random.default_rng(1).standard_normal(600), [0.0] * 256])
    codes, absmax = F.quantize(F.Q8S, x)
    assert codes.dtype == np.uint8 and absmax.shape == (4,) and absmax[3] == 0
    back = F.dequantize(F.Q8S, codes, absmax)
    assert (back[-256:] == 0).all()
    assert np.abs(back[:600] - x[:600]).max() <= 0.02 * np.abs(x).max()
    c2, a2 = F.quantize(F.Q8S, back)                 # requantizing keeps the codes
    np.testing.assert_array_equal(c2, codes)
    # and the absmax, but where a block's largest magnitude is negative: the signed map's most
    # negative value is -0.99297, not -1
    neg = np.array([x[i * 256:(i + 1) * 256][np.abs(x[i * 256:(i + 1) * 256]).argmax()] < 0
                    for i in range(4)])
    np.testing.assert_array_equal(a2[~neg], absmax[~neg])
    np.testing.assert_allclose(a2[neg], absmax[neg] * Q.qmap(True)[0] * -1, rtol=1e-6)
    x[5] = np.nan
    codes, absmax = F.quantize(F.Q8S, x)
    assert np.isnan(absmax[0]) and not np.isnan(absmax[1:]).any()


# -- every family with state, every host backend --------------------------------------------------

def _problem(pdtype, gdtype=None, seed=0):
    rng = np.random.default_rng(seed)
    gdtype = gdtype or pdtype
    params = {"w": rng.standard_normal(N).astype(pdtype),
              "m": rng.standard_normal((64, 70)).astype(pdtype),       # 4480: 8-bit
              "b": rng.standard_normal(37).astype(pdtype)}             # small: float32 state
    grads = [{k: (rng.standard_normal(v.shape) * 0.3).astype(gdtype) for k, v in params.items()}
             for _ in range(3)]
    return params, grads


def _copy(params):
    return {k: v.copy() for k, v in params.items()}


def _run(cls, kwargs, params, grads, backend, steps=5, **options):
    opt = cls(params, backend=backend, state_dtype="int8", **kwargs, **options)
    for t in range(steps):
        assert opt.step(grads[t % len(grads)])
    return opt


def _reference(cls, kwargs, params, grads, steps=5, min_8bit_size=4096):
    """The float64 reference of the same format: per parameter, dequantize its state (8-bit:
    map[code] * absmax), apply the update in float64 (NumPy's reference rule), requantize
    (absmax of the new float32 values per block, nearest code) -- the NumPy backend's plain
    path with a float64 compute dtype."""
    spec = cls.spec
    group = kernel_group(spec, kwargs)
    be = kernels.get_backend("numpy")
    flags, needed = spec.flags(group), spec.needed(group)
    params = _copy(params)
    state = {}
    for k, p in params.items():
        q8 = p.size >= min_8bit_size
        state[k] = {}
        for n, need in needed.items():
            if not need:
                continue
            fmt = (F.Q8U if n in spec.nonneg else F.Q8S) if q8 else F.F32
            init = np.full(p.size, spec.initial(n, group), np.float32)
            state[k][n] = (fmt, *F.quantize(fmt, init)) if q8 else (fmt, init, None)
    for t in range(1, steps + 1):
        g = grads[(t - 1) % len(grads)]
        sc = spec.scalars(group, t, float(group["lr"]))
        for k, p in params.items():
            st = [state[k].get(n) for n in spec.state_names]
            formats = (F.tag(p.dtype), F.tag(g[k].dtype), *[s[0] if s else None for s in st])
            arrays = [p.reshape(-1), g[k].reshape(-1), *[s[1] if s else None for s in st]]
            arrays += [s[2] for s in st if s and s[2] is not None]
            reference_step(be, spec, group, flags, t, arrays, formats, sc)
        spec.advance(group, t, float(group["lr"]))
    return params, state


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls, kwargs", STATEFUL)
def test_matches_float64_reference_of_the_same_format(cls, kwargs, backend):
    params, grads = _problem(np.float32)
    before = _copy(params)
    opt = _run(cls, kwargs, params, grads, backend)
    ref_params, ref_state = _reference(cls, kwargs, before, grads)
    for k in params:
        moved = np.abs(ref_params[k] - before[k]).mean()
        assert np.abs(params[k] - ref_params[k]).mean() <= 0.01 * moved + 1e-7, k
        for name, (fmt, codes, absmax) in ref_state[k].items():
            live = opt.state[k][name]
            if fmt in F.QUANTIZED:
                assert live.dtype == np.uint8 and live.shape == params[k].shape
                assert (live.reshape(-1) == codes).mean() >= 0.97, f"{k}.{name}"
                np.testing.assert_allclose(opt.state[k][name + "_absmax"], absmax, rtol=1e-3,
                                           atol=1e-7)
            else:
                assert live.dtype == np.float32 and name + "_absmax" not in opt.state[k]
                np.testing.assert_allclose(live.reshape(-1), codes, rtol=1e-4, atol=1e-6)


def _bits(a):
    a = np.asarray(a)
    return a.view(np.uint8).reshape(-1)


def _assert_same_bits(a, pa, b, pb):
    for k in pa:
        np.testing.assert_array_equal(_bits(pa[k]), _bits(pb[k]), err_msg=k)
        for name, v in a.state[k].items():
            if name != "step":
                np.testing.assert_array_equal(_bits(v), _bits(b.state[k][name]),
                                              err_msg=f"{k}.{name}")


# Cython (compiled at install) runs every case in the three half-precision layouts; Numba
# compiles a module per (rule, flags, layout) on first use (10-40 s each with 8-bit state: most
# of this file's CI time), so it runs each case in one of them, in turn: every layout still meets
# several families and every family one layout (float32 parameters: the test below).
_LAYOUTS8 = ["bf16-stochastic", "bf16-f32grad", "f16"]
_BITS_CASES = [pytest.param(case.values[0], case.values[1], layout, backend,
                            id=f"{case.id}-{layout}-{backend}")
               for k, case in enumerate(STATEFUL) for backend in COMPILED
               for j, layout in enumerate(_LAYOUTS8) if backend != "numba" or j == k % 3]


@pytest.mark.parametrize("cls, kwargs, layout, backend", _BITS_CASES)
def test_compiled_backends_give_the_numpy_backends_bits(cls, kwargs, layout, backend):
    pdtype, gdtype, rounding = {"bf16-stochastic": (BF16, BF16, "stochastic"),
                                "bf16-f32grad": (BF16, np.float32, "nearest"),
                                "f16": (np.float16, np.float16, "stochastic")}[layout]
    pa, grads = _problem(pdtype, gdtype)
    pb = _copy(pa)
    a = _run(cls, kwargs, pa, grads, "numpy", rounding=rounding, seed=3)
    b = _run(cls, kwargs, pb, grads, backend, rounding=rounding, seed=3)
    _assert_same_bits(a, pa, b, pb)


@pytest.mark.parametrize("backend", COMPILED)
def test_float32_params_same_bits_and_threads(backend, small_threshold):
    pa, grads = _problem(np.float32)
    pb = _copy(pa)
    a = _run(fastopt.AdamW, {"lr": 0.01, "amsgrad": True}, pa, grads, "numpy", min_8bit_size=0)
    b = _run(fastopt.AdamW, {"lr": 0.01, "amsgrad": True}, pb, grads, backend, min_8bit_size=0)
    _assert_same_bits(a, pa, b, pb)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_min_8bit_size_and_arena(backend):
    params, grads = _problem(np.float32)
    arena = fastopt.Arena(_copy(params))
    opt = fastopt.Adam(arena.params, lr=0.01, backend=backend, state_dtype="int8")
    for k, g in grads[0].items():
        arena.grads[k][...] = g
    opt.step(arena.grads)
    st = opt.state
    assert st["w"]["exp_avg"].dtype == np.uint8 and st["w"]["exp_avg_absmax"].shape == (18,)
    assert st["m"]["exp_avg_sq"].dtype == np.uint8
    assert st["b"]["exp_avg"].dtype == np.float32 and "exp_avg_absmax" not in st["b"]
    # 8-bit parameters are rows of their own (blocks start at their first element)
    assert sorted(r for rows in opt.kernel_rows for r in rows) == [37, N, 4480]
    every = fastopt.Adam(_copy(params), lr=0.01, backend=backend, state_dtype="int8",
                         min_8bit_size=0)
    assert every.state["b"]["exp_avg"].dtype == np.uint8
    assert every.min_8bit_size == 0


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_nonfinite_gradient_poisons_only_its_block(backend):
    p = np.zeros(2048, np.float32)
    opt = fastopt.Adam([p], lr=0.01, backend=backend, state_dtype="int8", min_8bit_size=0)
    g = np.ones(2048, np.float32)
    g[300] = np.nan                                    # block 1
    opt.step([g])
    m = F.dequantize(F.Q8S, opt.state[0]["exp_avg"], opt.state[0]["exp_avg_absmax"])
    assert np.isnan(opt.state[0]["exp_avg_absmax"][1])
    assert np.isnan(m[256:512]).all() and np.isfinite(m[:256]).all() and np.isfinite(m[512:]).all()
    assert np.isnan(p[300]) and np.isfinite(np.delete(p, 300)).all()
    skip = fastopt.Adam([np.zeros(2048, np.float32)], lr=0.01, backend=backend,
                        state_dtype="int8", nonfinite="skip", min_8bit_size=0)
    assert skip.step([g]) is False and (skip.state[0]["exp_avg_absmax"] == 0).all()


# -- checkpoints, conversions -------------------------------------------------------------------

@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_resume_is_bit_exact(backend, tmp_path):
    pa, grads = _problem(BF16, np.float32)
    options = dict(rounding="stochastic", seed=2)
    a = _run(fastopt.AdamW, {"lr": 0.01}, pa, grads, backend, steps=6, **options)
    pb, _ = _problem(BF16, np.float32)
    b = _run(fastopt.AdamW, {"lr": 0.01}, pb, grads, backend, steps=3, **options)
    fastopt.save(b, tmp_path / "c.npz")
    pc = _copy(pb)
    c = fastopt.AdamW(pc, lr=0.01, backend=backend, state_dtype="int8", **options)
    fastopt.load(c, tmp_path / "c.npz")
    assert c.state_dict()["state"][0]["exp_avg"].dtype == np.uint8
    for t in range(3, 6):
        c.step(grads[t % 3])
    _assert_same_bits(a, pa, c, pc)


@pytest.mark.parametrize("to", [None, "bfloat16"])
def test_checkpoints_convert_between_int8_and_float_state(to):
    params, grads = _problem(np.float32)
    q = _run(fastopt.Adam, {"lr": 0.01}, _copy(params), grads, "numpy")
    sd = q.state_dict()
    assert sd["state_dtype"] == "int8"
    f = fastopt.Adam(_copy(params), lr=0.01, state_dtype=to)
    f.load_state_dict(sd)                                  # dequantized
    want = F.dequantize(F.Q8S, sd["state"][0]["exp_avg"], sd["state"][0]["exp_avg_absmax"])
    got = f.state["w"]["exp_avg"]
    np.testing.assert_array_equal(got, want.astype(got.dtype))
    back = fastopt.Adam(_copy(params), lr=0.01, state_dtype="int8")
    back.load_state_dict(f.state_dict())                   # quantized again
    same = (back.state["w"]["exp_avg"] == q.state["w"]["exp_avg"]).mean()
    assert same == 1.0 if to is None else same > 0.95      # float32: the codes come back
    np.testing.assert_array_equal(back.state["b"]["exp_avg"], q.state["b"]["exp_avg"]) \
        if to is None else None


def test_checkpoint_whose_codes_or_absmax_do_not_fit_changes_nothing():
    params, grads = _problem(np.float32)
    opt = _run(fastopt.Adam, {"lr": 0.01}, params, grads, "numpy")
    before = {k: v.copy() for k, v in opt.state["w"].items() if k != "step"}
    good = opt.state_dict()
    for mutate, exc, match in [
        (lambda e: e.update(exp_avg_absmax=e["exp_avg_absmax"][:-1]), ValueError,
         r"'exp_avg_absmax' must be float32 of shape \(18,\)"),
        (lambda e: e.update(exp_avg_absmax=e["exp_avg_absmax"].astype(np.float64)), ValueError,
         "must be float32"),
        (lambda e: e.pop("exp_avg_sq_absmax"), ValueError, "has no 'exp_avg_sq_absmax'"),
        (lambda e: e.update(exp_avg=e["exp_avg"].astype(np.int16)), TypeError,
         "dtype int16"),
    ]:
        sd = opt.state_dict()
        mutate(sd["state"][0])
        with pytest.raises(exc, match=match):
            opt.load_state_dict(sd)
        for k, v in before.items():
            np.testing.assert_array_equal(opt.state["w"][k], v)
    opt.load_state_dict(good)


def test_bad_options():
    with pytest.raises(ValueError, match="state_dtype='int8': SGD with these options keeps no "
                                         "state"):
        fastopt.SGD([np.zeros(5000, np.float32)], lr=0.1, state_dtype="int8")
    with pytest.raises(ValueError, match="min_8bit_size must be >= 0"):
        fastopt.Adam([np.zeros(3, np.float32)], state_dtype="int8", min_8bit_size=-1)
    with pytest.raises(TypeError, match="min_8bit_size must be an integer"):
        fastopt.Adam([np.zeros(3, np.float32)], state_dtype="int8", min_8bit_size=1.5)
    # with momentum SGD has state: accepted
    assert fastopt.SGD([np.zeros(3, np.float32)], lr=0.1, momentum=0.9,
                       state_dtype="int8").state_dtype == "int8"


def test_state_bytes_per_parameter():
    """The state memory the docs quote: 2 bytes per element plus 4 per 256 for AdamW."""
    p = np.zeros(1 << 16, np.float32)
    opt = fastopt.AdamW([p], state_dtype="int8")
    st = opt.state[0]
    nbytes = sum(v.nbytes for k, v in st.items() if k != "step")
    assert nbytes == 2 * p.size + 2 * 4 * (p.size // 256)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_lamb_8bit_second_pass_uses_this_steps_moments(backend):
    """LAMB's second pass with 8-bit state computes the moments again from the stored codes and
    the gradient (``spec.q8_rules``) instead of reading back what the first pass stored: a
    gradient 1e-4 of its block's largest has a second moment under the unsigned map's smallest
    code (it is stored as 0) but a first moment the signed map keeps, and ``m/(sqrt(0) + eps)``
    would move that element about 100 times too far.  Its moves here are float32 state's."""
    n = 4096
    g = np.full(n, 1e-4, np.float32)
    g[::256] = 1.0                          # each block: one large gradient, the rest tiny
    runs = {}
    for state_dtype in ("float32", "int8"):
        p = np.ones(n, np.float32)
        opt = fastopt.LAMB([p], lr=0.01, backend=backend, state_dtype=state_dtype)
        start = p.copy()
        for _ in range(3):
            opt.step([g])
        runs[state_dtype] = p - start
    tiny = np.ones(n, bool)
    tiny[::256] = False
    assert opt.state[0]["exp_avg_sq"].dtype == np.uint8
    assert (opt.state[0]["exp_avg_sq"][tiny] == 0).all()    # (the stored second moment: 0)
    ratio = runs["int8"][tiny] / runs["float32"][tiny]
    assert 0.8 < ratio.min() and ratio.max() < 1.25, (ratio.min(), ratio.max())

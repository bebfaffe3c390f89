"""Exponentially weighted averages and the parameter EMA (fastopt.averaging)."""
import subprocess
import sys

import numpy as np
import pytest

import fastopt
from _support import HOST_BACKENDS
from fastopt.averaging import EWA, WeightEMA, ewa


def ewa_loop(theta, beta, bias_correction=False):
    """The course's loop, in float64: v = beta*v + (1-beta)*theta_t."""
    theta = np.asarray(theta, dtype=np.float64)
    v = np.zeros(theta.shape[1:])
    out = np.empty(theta.shape)
    for t in range(theta.shape[0]):
        v = beta * v + (1 - beta) * theta[t]
        out[t] = v / (1 - beta ** (t + 1)) if bias_correction else v
    return out


@pytest.mark.parametrize("beta", [0.0, 0.5, 0.9, 0.98])
@pytest.mark.parametrize("bias_correction", [False, True])
def test_ewa_matches_the_course_loop(beta, bias_correction):
    theta = np.random.default_rng(1).normal(10, 3, size=365)
    np.testing.assert_allclose(ewa(theta, beta, bias_correction),
                               ewa_loop(theta, beta, bias_correction), rtol=1e-12)


def test_ewa_first_values_by_hand():
    np.testing.assert_allclose(ewa([10.0, 20.0], beta=0.5), [5.0, 12.5])
    # bias-corrected: v2 / (1 - 0.25) = 12.5 / 0.75
    np.testing.assert_allclose(ewa([10.0, 20.0], 0.5, bias_correction=True), [10.0, 12.5 / 0.75])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("beta", [0.9, 0.98, 0.999])
def test_bias_correction_is_exact_at_t1(dtype, beta):
    theta = np.random.default_rng(2).normal(5, 2, size=(50, 7)).astype(dtype)
    v = ewa(theta, beta)
    vc = ewa(theta, beta, bias_correction=True)
    rtol = 4 * np.finfo(dtype).eps
    # v1 = (1-beta) theta1, so v1 / (1 - beta) == theta1 (up to the rounding of one product and
    # one quotient)
    np.testing.assert_allclose(v[0] / (dtype(1) - dtype(beta)), theta[0], rtol=rtol)
    np.testing.assert_allclose(vc[0], theta[0], rtol=rtol)
    # and it fades out: after many steps both agree
    long = ewa(np.ones(5000, dtype), beta, bias_correction=True)
    np.testing.assert_allclose(long, 1.0, rtol=1e-11 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("shape", [(30,), (30, 1), (30, 4), (30, 3, 5), (1, 2, 2), (0, 3), (4, 0)])
def test_ewa_trailing_shapes(shape):
    theta = np.random.default_rng(3).normal(size=shape)
    out = ewa(theta, 0.8, bias_correction=True)
    assert out.shape == shape
    if theta.size:
        np.testing.assert_allclose(out, ewa_loop(theta, 0.8, True), rtol=1e-12)


def test_ewa_dtypes_and_non_contiguous_input():
    x32 = np.random.default_rng(4).normal(size=(20, 3)).astype(np.float32)
    assert ewa(x32).dtype == np.float32
    assert ewa(np.arange(5)).dtype == np.float64
    xt = np.asfortranarray(np.random.default_rng(5).normal(size=(20, 3)))
    np.testing.assert_allclose(ewa(xt, 0.7), ewa_loop(xt, 0.7), rtol=1e-12)
    np.testing.assert_allclose(ewa(xt[::2], 0.7), ewa_loop(xt[::2], 0.7), rtol=1e-12)
    x = np.ones(4)
    ewa(x, 0.5)
    assert np.all(x == 1)          # input untouched


@pytest.mark.parametrize("kw, exc, name", [
    (dict(beta=1.0), ValueError, "beta"), (dict(beta=-0.1), ValueError, "beta"),
    (dict(beta="0.9"), TypeError, "beta"), (dict(bias_correction=1), TypeError,
                                             "bias_correction")])
def test_ewa_bad_arguments(kw, exc, name):
    with pytest.raises(exc, match=name):
        ewa(np.ones(3), **kw)


def test_ewa_rejects_scalars_and_complex():
    with pytest.raises(TypeError, match="theta"):
        ewa(3.0)
    with pytest.raises(TypeError, match="theta"):
        ewa(np.ones(3, dtype=complex))


@pytest.mark.parametrize("bias_correction", [False, True])
def test_streaming_equals_ewa_scalars(bias_correction):
    theta = np.random.default_rng(6).normal(size=200)
    avg = EWA(0.9, bias_correction=bias_correction)
    assert avg.value is None and avg.count == 0
    got = [avg.update(float(x)) for x in theta]
    assert avg.count == 200
    assert isinstance(got[0], float)
    np.testing.assert_allclose(got, ewa(theta, 0.9, bias_correction), rtol=1e-13)
    assert avg.value == got[-1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streaming_equals_ewa_arrays(dtype):
    theta = np.random.default_rng(7).normal(size=(100, 2, 3)).astype(dtype)
    avg = EWA(0.95)
    for x in theta:
        last = avg.update(x)
    assert last.dtype == dtype and last.shape == (2, 3)
    np.testing.assert_allclose(last, ewa(theta, 0.95, True)[-1],
                               rtol=1e-5 if dtype == np.float32 else 1e-12)
    last[...] = 0                        # the returned value is not the internal state
    assert not np.all(avg.value == 0)
    with pytest.raises(ValueError, match="shape"):
        avg.update(np.ones(3))
    avg.reset()
    assert avg.count == 0 and avg.value is None


def test_streaming_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        EWA(1.5)
    with pytest.raises(TypeError, match="bias_correction"):
        EWA(0.9, bias_correction="no")


# -- WeightEMA ---------------------------------------------------------------------------------
def make_params(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return {"W1": rng.normal(size=(4, 3)).astype(dtype),
            "b1": rng.normal(size=(4, 1)).astype(dtype),
            "W2": rng.normal(size=(2, 4)).astype(dtype)}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("arena", [False, True])
def test_weight_ema_matches_formula(dtype, arena):
    params = make_params(dtype)
    if arena:
        params = fastopt.Arena(params).params
    ema = WeightEMA(params, decay=0.9)
    expect = {k: v.copy() for k, v in params.items()}
    rng = np.random.default_rng(1)
    d, omd = dtype(0.9), dtype(1) - dtype(0.9)
    for _ in range(25):
        for k, p in params.items():
            p += rng.normal(size=p.shape).astype(dtype)
            expect[k] = d * expect[k] + omd * p          # float32 arithmetic for float32
        ema.update()
    assert ema.num_updates == 25
    for k in params:
        assert ema.averages[k].dtype == dtype and ema.averages[k].shape == params[k].shape
        if dtype == np.float32:
            np.testing.assert_allclose(ema.averages[k], expect[k], rtol=2e-6, atol=2e-6)
        else:
            np.testing.assert_allclose(ema.averages[k], expect[k], rtol=1e-13)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_weight_ema_every_backend_serial_and_threaded(backend, threaded, monkeypatch):
    """WeightEMA is a kernel family like the optimizers: the same numbers on every backend, on
    the serial and the threaded loops, update and swap."""
    from fastopt import config
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 1 if threaded else 1 << 62)
    params = fastopt.Arena({**make_params(np.float32), "big": np.arange(5000, dtype=np.float32)
                            }).params
    ref = {k: v.copy() for k, v in params.items()}
    ema = WeightEMA(params, decay=0.75, backend=backend)
    assert ema.backend == backend
    ref_ema = WeightEMA(ref, decay=0.75, backend="numpy")
    rng = np.random.default_rng(2)
    for _ in range(4):
        for k in params:
            step = rng.normal(size=params[k].shape).astype(np.float32)
            params[k] += step
            ref[k] += step
        ema.update()
        ref_ema.update()
    for k in params:   # float32: the compiled loops may fuse multiply-adds
        np.testing.assert_allclose(ema.averages[k], ref_ema.averages[k], rtol=1e-6, atol=1e-6)
    with ema.swapped():
        for k in params:
            np.testing.assert_allclose(params[k], ref_ema.averages[k], rtol=1e-6, atol=1e-6)
    for k in params:
        np.testing.assert_array_equal(params[k], ref[k])
    with pytest.raises(ValueError, match="unknown backend"):
        WeightEMA(params, backend="nope")


def test_weight_ema_arena_is_one_kernel_call_per_dtype():
    arena = fastopt.Arena(make_params())
    assert WeightEMA(arena.params).num_kernel_calls == 1
    assert WeightEMA(make_params()).num_kernel_calls == 3        # separate arrays
    mixed = fastopt.Arena({**make_params(), "x": np.ones(3, np.float32)})
    assert WeightEMA(mixed.params).num_kernel_calls == 2
    # averages of an Arena live in one buffer laid out like the parameters
    ema = WeightEMA(arena.params)
    a = list(ema.averages.values())
    assert a[1].__array_interface__["data"][0] == (a[0].__array_interface__["data"][0]
                                                   + a[0].nbytes)


def test_weight_ema_list_params_and_copy_swap():
    params = [np.zeros(3), np.ones((2, 2))]
    ema = WeightEMA(params, decay=0.5)
    params[0][:] = 2.0
    ema.update()
    assert isinstance(ema.averages, list)
    np.testing.assert_array_equal(ema.averages[0], [1.0, 1.0, 1.0])
    with ema.swapped():
        np.testing.assert_array_equal(params[0], [1.0, 1.0, 1.0])
    np.testing.assert_array_equal(params[0], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(ema.averages[0], [1.0, 1.0, 1.0])
    other = [np.empty(3), np.empty((2, 2))]
    ema.copy_to(other)
    np.testing.assert_array_equal(other[0], ema.averages[0])
    ema.copy_to()
    np.testing.assert_array_equal(params[0], [1.0, 1.0, 1.0])


def test_weight_ema_state_dict_round_trip():
    params = make_params()
    ema = WeightEMA(params, decay=0.8)
    for _ in range(3):
        for p in params.values():
            p += 1.0
        ema.update()
    sd = ema.state_dict()
    ema2 = WeightEMA(make_params(seed=5), decay=0.1)
    ema2.load_state_dict(sd)
    assert ema2.decay == 0.8 and ema2.num_updates == 3
    for k in params:
        np.testing.assert_array_equal(ema2.averages[k], ema.averages[k])
    sd["averages"]["W1"] = np.zeros((9, 9))
    before = {k: v.copy() for k, v in ema2.averages.items()}
    with pytest.raises(ValueError, match="shape"):
        ema2.load_state_dict(sd)
    for k in before:                               # nothing changed
        np.testing.assert_array_equal(ema2.averages[k], before[k])


def test_weight_ema_validation_before_mutation():
    with pytest.raises(ValueError, match="decay"):
        WeightEMA(make_params(), decay=1.5)
    with pytest.raises(TypeError, match="decay"):
        WeightEMA(make_params(), decay=None)
    with pytest.raises(TypeError, match=r"params\['a'\]"):
        WeightEMA({"a": np.ones(3, dtype=np.int64)})
    with pytest.raises(ValueError, match=r"params\['a'\].*C-contiguous"):
        WeightEMA({"a": np.ones((3, 4)).T})
    with pytest.raises(TypeError, match="params"):
        WeightEMA(np.ones(3))
    with pytest.raises(ValueError, match="params"):
        WeightEMA({})
    params = make_params()
    ema = WeightEMA(params)
    targets = {k: np.full_like(v, 7.0) for k, v in params.items()}
    targets["W2"] = np.zeros((3, 3))
    with pytest.raises(ValueError, match="W2"):
        ema.copy_to(targets)
    assert np.all(targets["W1"] == 7.0)            # nothing written
    with pytest.raises(ValueError, match="keys"):
        ema.copy_to({"W1": targets["W1"]})


def test_import_is_lazy():
    code = ("import sys, fastopt.averaging, fastopt.schedules, fastopt.data; "
            "print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"


def _half(name):
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(np.float16)


@pytest.mark.parametrize("threaded", [False, True])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("half", ["bfloat16", "float16"])
def test_weight_ema_of_half_precision_parameters(half, backend, threaded, monkeypatch):
    """16-bit parameters are averaged in float32 (their averages are float32 arrays, read from
    the parameters exactly): a float32 EMA of their values; copy_to and swapped() write the
    averages rounded to nearest (NumPy's / ml_dtypes' conversion), the second swap gives the
    parameters back bit for bit and leaves the averages as they were; float32 parameters in
    the same average work as before; state_dict round-trips."""
    from fastopt import config
    monkeypatch.setattr(config, "PARALLEL_THRESHOLD", 1 if threaded else 1 << 62)
    dt = _half(half)
    rng = np.random.default_rng(0)
    params = {"w": rng.normal(size=(7, 5)).astype(dt), "b": rng.normal(size=4097).astype(dt),
              "f": rng.normal(size=6).astype(np.float32)}
    ema = WeightEMA(params, decay=0.9, backend=backend)
    assert all(a.dtype == np.float32 for a in ema.averages.values())
    ref = {k: v.astype(np.float32) for k, v in params.items()}     # exact
    for k in params:
        np.testing.assert_array_equal(ema.averages[k], ref[k])
    for _ in range(5):
        for k in params:
            params[k][...] = (params[k].astype(np.float32) + rng.normal(
                size=params[k].shape).astype(np.float32)).astype(params[k].dtype)
        ema.update()
        for k in ref:
            ref[k] = np.float32(0.9) * ref[k] + np.float32(0.1) * params[k].astype(np.float32)
    for k in params:    # (the compiled loops may fuse the multiply-add)
        np.testing.assert_allclose(ema.averages[k], ref[k], rtol=1e-6, atol=1e-6)

    orig = {k: v.copy() for k, v in params.items()}
    before = {k: v.copy() for k, v in ema.averages.items()}
    with ema.swapped():
        for k in ("w", "b"):
            np.testing.assert_array_equal(params[k], before[k].astype(dt))
        np.testing.assert_array_equal(params["f"], before["f"])
    for k in params:
        np.testing.assert_array_equal(params[k], orig[k])
        np.testing.assert_array_equal(ema.averages[k], before[k])

    other = {k: np.zeros_like(v) for k, v in params.items()}
    ema.copy_to(other)
    for k in params:
        np.testing.assert_array_equal(other[k], before[k].astype(params[k].dtype))
    with pytest.raises(ValueError, match="dtype"):
        ema.copy_to({**other, "w": np.zeros((7, 5), np.float32)})
    twin = WeightEMA({k: v.copy() for k, v in params.items()}, backend=backend)
    twin.load_state_dict(ema.state_dict())
    for k in params:
        np.testing.assert_array_equal(twin.averages[k], ema.averages[k])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_weight_ema_keeps_updates_below_half_a_bfloat16_unit(backend):
    """A bfloat16 parameter one unit (2**-7) above its average, decay 0.999: each update moves
    the average by 2**-7/1000, far below bfloat16's half unit (2**-8) -- a bfloat16 average would
    stay at 1.0 forever; the float32 one follows the parameter."""
    dt = _half("bfloat16")
    w = np.ones(64, dt)
    ema = WeightEMA([w], decay=0.999, backend=backend)
    w[...] = np.float32(1 + 2 ** -7)
    for _ in range(200):
        ema.update()
    expect = 1 + 2 ** -7 * (1 - 0.999 ** 200)
    np.testing.assert_allclose(ema.averages[0], expect, rtol=1e-5)
    assert ema.averages[0].min() > 1.001

"""The 'cuda' backend: every optimizer x option x dtype against the float64 NumPy reference, on
device arrays, with a shrunken grid (several blocks, several grid-stride iterations per thread).

Runs unchanged on a GPU (``make test-gpu``) and in numba's simulator (``make test``): sizes are
small because the simulator executes every CUDA thread in Python.
"""
import numpy as np
import pytest
from numba import cuda

import fastopt
from fastopt import config
from fastopt.kernels import get_backend
from _support import OPTIMIZERS_UNDER_TEST, TOL, make_problem

STEPS = 20
# with small_grid's 2 blocks of 16 threads every size above 32 takes grid-stride iterations
# (33: one thread gets a second element); the simulator runs each thread in Python, so sizes
# stay small
SIZES = [0, 1, 7, 33, 1000]
CASES = [pytest.param(cls, kw, id=name) for name, cls, kw in OPTIMIZERS_UNDER_TEST]


@pytest.fixture(scope="module")
def ck():
    from fastopt.kernels import cuda as cuda_kernels
    return cuda_kernels


def to_dev(d):
    return {k: cuda.to_device(v) for k, v in d.items()}


def to_host(d):
    return {k: v.copy_to_host() for k, v in d.items()}


def reference(cls, kwargs, params, grads, steps=STEPS):
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    g64 = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    opt = cls(p64, backend="numpy", **kwargs)
    for t in range(steps):
        opt.step(g64[t % len(g64)])
    return p64, opt


def check_against(opt, dparams, ref_params, ref_opt, dtype, steps=STEPS):
    for k, d in dparams.items():
        np.testing.assert_allclose(d.copy_to_host(), ref_params[k], **TOL[dtype], err_msg=k)
    sd, want = opt.state_dict()["state"], ref_opt.state
    for i, k in enumerate(dparams):
        assert sd[i]["step"] == steps
        assert set(sd[i]) == set(want[k])
        for name, arr in sd[i].items():
            if name != "step":
                assert isinstance(arr, np.ndarray) and arr.dtype == dtype
                np.testing.assert_allclose(arr, want[k][name], **TOL[dtype],
                                           err_msg=f"{k}.{name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_matches_float64_reference(cls, kwargs, dtype, small_grid):
    params, grads = make_problem(SIZES, dtype)
    ref_params, ref_opt = reference(cls, kwargs, params, grads)
    dparams, dgrads = to_dev(params), [to_dev(g) for g in grads]
    opt = cls(dparams, backend="cuda", **kwargs)
    assert opt.backend == "cuda"
    for t in range(STEPS):
        assert opt.step(dgrads[t % len(dgrads)]) is True
    check_against(opt, dparams, ref_params, ref_opt, dtype)
    assert not np.allclose(dparams["p3"].copy_to_host(), params["p3"])  # it really moved


@pytest.mark.parametrize("tpb, blocks_per_sm, max_blocks", [(32, 4, 3), (1, 1, 1), (64, 1, 0)])
def test_launch_shapes_cover_every_element(ck, monkeypatch, tpb, blocks_per_sm, max_blocks):
    monkeypatch.setenv("FASTOPT_CUDA_THREADS_PER_BLOCK", str(tpb))
    monkeypatch.setenv("FASTOPT_CUDA_BLOCKS_PER_SM", str(blocks_per_sm))
    monkeypatch.setenv("FASTOPT_CUDA_MAX_BLOCKS", str(max_blocks))
    config._reset()
    try:
        for n in (1, 31, 33, 200):
            blocks, threads = ck.launch_config(n)
            assert threads == tpb
            assert 1 <= blocks <= -(-n // tpb)
            if max_blocks:
                assert blocks <= max_blocks
            p = cuda.to_device(np.zeros(n, np.float32))
            g = cuda.to_device(np.arange(1, n + 1, dtype=np.float32))
            # plain SGD, lr 1: p = 0 - g
            get_backend("cuda").run("sgd", np.float32, (False, False, False), [p, g, None],
                                    (-1.0, 1.0, 0.0, 0.0, 1.0, 0.0))
            np.testing.assert_array_equal(p.copy_to_host(), -np.arange(1, n + 1))
    finally:
        monkeypatch.undo()
        config._reset()


def test_launch_config_uses_sm_count(ck, monkeypatch):
    monkeypatch.setattr(ck, "_sm_count", 10)
    monkeypatch.setenv("FASTOPT_CUDA_THREADS_PER_BLOCK", "256")
    monkeypatch.setenv("FASTOPT_CUDA_BLOCKS_PER_SM", "4")
    monkeypatch.delenv("FASTOPT_CUDA_MAX_BLOCKS", raising=False)
    config._reset()
    try:
        assert ck.launch_config(1) == (1, 256)
        assert ck.launch_config(257) == (2, 256)
        assert ck.launch_config(10**8) == (40, 256)
        monkeypatch.setenv("FASTOPT_CUDA_MAX_BLOCKS", "7")
        config._reset()
        assert ck.launch_config(10**8) == (7, 256)
    finally:
        monkeypatch.undo()
        config._reset()


# -- all_finite -----------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_finite(ck, dtype, small_grid):
    assert get_backend("cuda").all_finite(cuda.device_array(0, dtype)) is True
    x = np.linspace(-1, 1, 300).astype(dtype)
    assert get_backend("cuda").all_finite(cuda.to_device(x)) is True
    for pos in (0, 17, 299):
        for bad in (np.nan, np.inf, -np.inf):
            y = x.copy()
            y[pos] = bad
            assert get_backend("cuda").all_finite(cuda.to_device(y)) is False
    assert get_backend("cuda").all_finite(cuda.to_device(x)) is True  # the flag is reset between calls


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_nonfinite_gradient_changes_nothing(mode, small_grid):
    p0 = np.arange(50, dtype=np.float32)
    dp = cuda.to_device(p0)
    opt = fastopt.Adam([dp], lr=0.1, backend="cuda", nonfinite=mode)
    g = np.ones(50, np.float32)
    g[37] = np.nan
    if mode == "raise":
        with pytest.raises(FloatingPointError):
            opt.step([cuda.to_device(g)])
    else:
        assert opt.step([cuda.to_device(g)]) is False
        assert opt.skipped_steps == 1
    np.testing.assert_array_equal(dp.copy_to_host(), p0)
    assert opt.step_count == 0
    assert opt.step([cuda.to_device(np.ones(50, np.float32))]) is True
    assert opt.step_count == 1


# -- validation ---------------------------------------------------------------------------------
def test_host_arrays_with_cuda_backend_raise_typeerror():
    with pytest.raises(TypeError, match="slowdown"):
        fastopt.Adam([np.zeros(3, np.float32)], backend="cuda")


def test_mixing_host_and_device_raises():
    d, h = cuda.to_device(np.zeros(3)), np.zeros(3)
    with pytest.raises(TypeError):
        fastopt.SGD([d, h], lr=0.1, backend="cuda")
    with pytest.raises(TypeError):
        fastopt.SGD([d, h], lr=0.1)
    opt = fastopt.SGD([d], lr=0.1, backend="cuda")
    with pytest.raises(TypeError, match="GPU array"):
        opt.step([np.ones(3)])  # host gradient for a device parameter
    with pytest.raises(TypeError):
        opt.step([None])


def test_bad_device_params_and_grads():
    with pytest.raises(TypeError, match="float64, float32, bfloat16"):
        fastopt.SGD([cuda.to_device(np.zeros(3, np.int32))], lr=0.1, backend="cuda")
    strided = cuda.to_device(np.zeros(10))[::2]
    with pytest.raises(ValueError, match="contiguous"):
        fastopt.SGD([strided], lr=0.1, backend="cuda")
    with pytest.raises(TypeError, match="GPU array"):
        fastopt.SGD([[1.0, 2.0]], lr=0.1, backend="cuda")
    p = cuda.to_device(np.zeros(4))
    opt = fastopt.SGD([p], lr=0.1, backend="cuda")
    with pytest.raises(TypeError, match="dtype"):
        opt.step([cuda.to_device(np.zeros(4, np.float32))])
    with pytest.raises(ValueError, match="shape"):
        opt.step([cuda.to_device(np.zeros(5))])
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([p])
    np.testing.assert_array_equal(p.copy_to_host(), 0)


def test_unavailable_backend_message(ck, monkeypatch):
    monkeypatch.setattr(ck.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
        ck.make_backend()


def test_backend_shape_and_detail(ck):
    be = get_backend("cuda")
    assert be.name == "cuda" and be.device == "cuda" and isinstance(be, ck.CudaBackend)
    from fastopt.kernels import _codegen
    gen = ck.module()
    assert gen.SOURCE_HASH == _codegen.source_hash()   # generated from the rules here
    for rule in ("sgd", "momentum", "rmsprop", "adagrad", "adam", "ema", "swap"):
        sig = _codegen.signatures(_codegen.load_rules())[rule]
        k = be.kernel(rule, np.float32, (False,) * len(sig.flags))
        assert k.impl is getattr(gen, k.name)
    detail = be.detail()
    assert "numba-cuda" in detail
    assert ("simulator" in detail) == ck.SIMULATOR
    assert fastopt.backend_status()["cuda"][0] is True


def test_zeros_full_flat_to_numpy_copy_from_numpy():
    be = get_backend("cuda")
    z = be.zeros(5, np.float32)
    np.testing.assert_array_equal(be.to_numpy(z), np.zeros(5, np.float32))
    f = be.full(4, np.float64, 0.25)
    np.testing.assert_array_equal(be.to_numpy(f), np.full(4, 0.25))
    assert be.zeros(0, np.float32).size == 0
    d2 = cuda.to_device(np.arange(6.0).reshape(2, 3))
    assert be.flat(d2).shape == (6,)
    be.copy_from_numpy(d2, np.ones(6, np.float32))  # same_kind cast, reshaped
    np.testing.assert_array_equal(be.to_numpy(d2), np.ones((2, 3)))


def test_span(ck):
    be = get_backend("cuda")
    a = cuda.to_device(np.zeros(3, np.float32))
    b = cuda.to_device(np.zeros(4, np.float32))
    assert be.span([a, b]) is None  # two allocations
    assert be.span([]) is None
    arena = fastopt.Arena([np.zeros(3, np.float32), np.zeros((2, 2), np.float32),
                           np.zeros(0, np.float32), np.zeros(5, np.float32)], device="cuda")
    v = be.span(arena.params)
    assert v is not None and v.shape == (12,)
    assert be.span(arena.params[1:]).shape == (9,)
    assert be.span([arena.params[0], arena.params[3]]) is None  # a gap
    assert be.span([arena.params[1], arena.params[0]]) is None  # out of order
    ck._fill(v, 2.0)
    np.testing.assert_array_equal(arena.params[1].copy_to_host(), np.full((2, 2), 2.0))
    ck.fill_zero(v)
    arena.params[3].copy_to_device(np.arange(5, dtype=np.float32))
    np.testing.assert_array_equal(be.to_numpy(be.span(arena.params))[-5:], np.arange(5))


# -- optimizers end to end -----------------------------------------------------------------------
@pytest.mark.parametrize("cls, kwargs", [c for c in CASES if c.id in
                                         ("sgd-nesterov", "rmsprop-centered-mom", "adam-wd-ams",
                                          "adagrad-decay-init-wd-max", "momentum-bc-wd")])
def test_device_arena_one_launch_per_dtype(ck, cls, kwargs, monkeypatch, small_grid):
    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal(30),
              "c": rng.standard_normal((4, 10)).astype(np.float32), "d": rng.standard_normal(4),
              "e": rng.standard_normal(1).astype(np.float32)}
    grads = [{k: rng.standard_normal(v.shape).astype(v.dtype) for k, v in params.items()}
             for _ in range(3)]
    arena = fastopt.Arena(params, device="cuda")
    assert arena.device == "cuda"
    assert set(arena.buffers) == {np.dtype(np.float32), np.dtype(np.float64)}
    assert arena.size == 80
    opt = cls(arena.params, backend="cuda", **kwargs)
    launches = []
    real = ck.launch_config
    monkeypatch.setattr(ck, "launch_config", lambda n: (launches.append(n), real(n))[1])
    for t in range(6):
        for k, g in grads[t % 3].items():
            arena.grads[k].copy_to_device(g)
        opt.step(arena.grads)
    assert sorted(launches) == sorted([46, 34] * 6)  # one launch per dtype per step
    ref_params, ref_opt = reference(cls, kwargs, params, grads, steps=6)
    for k in params:
        got = arena.params[k].copy_to_host()
        assert got.dtype == params[k].dtype and got.shape == params[k].shape
        np.testing.assert_allclose(got, ref_params[k], **TOL[params[k].dtype.type], err_msg=k)
    arena.zero_grad()
    for g in arena.grads.values():
        np.testing.assert_array_equal(g.copy_to_host(), 0)


def test_device_arena_from_device_arrays_and_separate_grads(small_grid):
    rng = np.random.default_rng(4)
    host = [rng.standard_normal(n).astype(np.float32) for n in (7, 30, 2)]
    arena = fastopt.Arena([cuda.to_device(h) for h in host], device="cuda")
    for h, d in zip(host, arena.params):
        np.testing.assert_array_equal(d.copy_to_host(), h)
    separate = [cuda.to_device(h) for h in host]
    a = fastopt.Adam(arena.params, lr=0.1, backend="cuda")
    b = fastopt.Adam(separate, lr=0.1, backend="cuda")
    for t in range(3):
        gs = [cuda.to_device(rng.standard_normal(h.size).astype(np.float32)) for h in host]
        a.step(gs)  # gradients not laid out like the arena: one launch per parameter
        b.step(gs)
    for x, y in zip(arena.params, separate):
        np.testing.assert_array_equal(x.copy_to_host(), y.copy_to_host())


def test_state_dict_round_trip_on_device(small_grid):
    params, grads = make_problem([7, 12], np.float32, seed=5)
    kw = dict(lr=0.01, amsgrad=True, weight_decay=0.01)
    d1 = to_dev(params)
    dg = [to_dev(g) for g in grads]
    o1 = fastopt.Adam(d1, backend="cuda", **kw)
    for t in range(3):
        o1.step(dg[t])
    sd = o1.state_dict()
    d2 = {k: cuda.to_device(v.copy_to_host()) for k, v in d1.items()}
    o2 = fastopt.Adam(d2, backend="cuda", **kw)
    o2.load_state_dict(sd)
    for t in range(3, 5):
        o1.step(dg[t])
        o2.step(dg[t])
    for k in params:
        np.testing.assert_array_equal(d1[k].copy_to_host(), d2[k].copy_to_host())
    assert o2.step_count == 5


def test_param_groups_and_schedule_on_device(small_grid):
    w = cuda.to_device(np.zeros(10))
    b = cuda.to_device(np.zeros(3))
    opt = fastopt.SGD([{"params": [w], "lr": lambda n: 0.1 / (1 + n)}, {"params": [b],
                                                                       "lr": 0.5}],
                      backend="cuda")
    g = [cuda.to_device(np.ones(10)), cuda.to_device(np.ones(3))]
    opt.step(g)
    opt.step(g)
    np.testing.assert_allclose(w.copy_to_host(), -0.15)
    np.testing.assert_allclose(b.copy_to_host(), -1.0)


def test_backend_none_picks_cuda_for_device_arrays():
    opt = fastopt.SGD([cuda.to_device(np.zeros(3))], lr=0.1)
    assert opt.backend == "cuda"
    with pytest.raises(TypeError, match="mix GPU arrays and host arrays"):
        fastopt.SGD([cuda.to_device(np.zeros(3)), np.zeros(3)], lr=0.1)


# -- WeightEMA on device ---------------------------------------------------------------------------
def test_weight_ema_on_a_device_arena(small_grid):
    """WeightEMA is a kernel family like the optimizers: device arrays, one row per Arena
    buffer, the same numbers as the host reference."""
    rng = np.random.default_rng(6)
    host = {"w": rng.standard_normal((3, 5)).astype(np.float32),
            "b": rng.standard_normal(7).astype(np.float32)}
    arena = fastopt.Arena(host, device="cuda")
    ema = fastopt.WeightEMA(arena.params, decay=0.9)
    ref = fastopt.WeightEMA({k: v.copy() for k, v in host.items()}, decay=0.9, backend="numpy")
    assert ema.backend == "cuda" and ema.num_kernel_calls == 1
    for t in range(4):
        new = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()}
        for k in host:
            arena.params[k].copy_to_device(new[k])
            ref._params[list(host).index(k)][...] = new[k]
        ema.update()
        ref.update()
    for k in host:
        np.testing.assert_allclose(ema.averages[k].copy_to_host(), ref.averages[k],
                                   rtol=1e-6, atol=1e-7)
    before = {k: arena.params[k].copy_to_host() for k in host}
    with ema.swapped():
        for k in host:
            np.testing.assert_allclose(arena.params[k].copy_to_host(), ref.averages[k],
                                       rtol=1e-6, atol=1e-7)
    for k in host:
        np.testing.assert_array_equal(arena.params[k].copy_to_host(), before[k])
    ema.copy_to()
    for k in host:
        np.testing.assert_allclose(arena.params[k].copy_to_host(), ref.averages[k],
                                   rtol=1e-6, atol=1e-7)
    sd = ema.state_dict()
    assert isinstance(sd["averages"]["w"], np.ndarray)


def test_max_grad_norm_and_clip_grad_norm_on_device(small_grid):
    """The norm's device reduction and the folded clip factor, against the host reference."""
    params, grads = make_problem(SIZES, np.float32, seed=5)
    grads = [{k: v * 10 for k, v in g.items()} for g in grads]
    ref = {k: v.copy() for k, v in params.items()}
    dparams = to_dev(params)
    opt = fastopt.AdamW(dparams, backend="cuda", max_grad_norm=1.0)
    ref_opt = fastopt.AdamW(ref, backend="numpy", max_grad_norm=1.0)
    for g in grads:
        opt.step(to_dev(g))
        ref_opt.step(g)
        assert opt.last_grad_norm == pytest.approx(ref_opt.last_grad_norm, rel=1e-5)
        assert opt.last_grad_norm > 1.0
    for k, d in dparams.items():
        np.testing.assert_allclose(d.copy_to_host(), ref[k], **TOL[np.float32], err_msg=k)
    host = [v.copy() for v in grads[0].values()]
    dev = [cuda.to_device(v) for v in grads[0].values()]
    want = fastopt.clip_grad_norm(host, 1.0, backend="numpy")
    assert fastopt.clip_grad_norm(dev, 1.0) == pytest.approx(want, rel=1e-5)
    for d, h in zip(dev, host):
        np.testing.assert_allclose(d.copy_to_host(), h, rtol=1e-6)


def test_schedule_free_train_eval_on_device(small_grid):
    params, grads = make_problem([7, 1000], np.float32, seed=6)
    ref = {k: v.copy() for k, v in params.items()}
    dparams = to_dev(params)
    opt = fastopt.AdamWScheduleFree(dparams, backend="cuda", lr=0.01, warmup_steps=2)
    ref_opt = fastopt.AdamWScheduleFree(ref, backend="numpy", lr=0.01, warmup_steps=2)
    for g in grads:
        opt.step(to_dev(g))
        ref_opt.step(g)
    opt.eval()
    ref_opt.eval()
    for k, d in dparams.items():
        np.testing.assert_allclose(d.copy_to_host(), ref[k], **TOL[np.float32], err_msg=k)
    opt.train()
    ref_opt.train()
    for k, d in dparams.items():
        np.testing.assert_allclose(d.copy_to_host(), ref[k], **TOL[np.float32], err_msg=k)

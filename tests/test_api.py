"""Bad input is rejected before anything changes; state_dict round trips; non-finite policy."""
import math
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastopt
from _support import HOST_BACKENDS, OPTIMIZERS_UNDER_TEST, make_problem

CASES = [pytest.param(cls, kw, id=name) for name, cls, kw in OPTIMIZERS_UNDER_TEST]


def snapshot(opt):
    return ([p.copy() for p in opt.params],
            {k: {n: (v.copy() if n != "step" else v) for n, v in e.items()}
             for k, e in opt.state.items()}, opt.skipped_steps)


def assert_unchanged(opt, snap):
    params, state, skipped = snap
    for a, b in zip(opt.params, params):
        np.testing.assert_array_equal(a, b)
    for k, e in opt.state.items():
        for n, v in e.items():
            if n == "step":
                assert v == state[k][n]
            else:
                np.testing.assert_array_equal(v, state[k][n])
    assert opt.skipped_steps == skipped


def stepped(cls=fastopt.Adam, backend="numba", **kw):
    params, grads = make_problem([5, 6], np.float32)
    opt = cls(params, backend=backend, **({"lr": 0.01} | kw))
    opt.step(grads[0])
    return opt, params, grads


# -- constructor validation --------------------------------------------------------------------
@pytest.mark.parametrize("cls, kw, match", [
    (fastopt.Adam, dict(lr=-1), "Invalid lr: -1"),
    (fastopt.Adam, dict(eps=-1e-8), "Invalid eps"),
    (fastopt.Adam, dict(betas=(1.0, 0.9)), r"Invalid betas\[0\]"),
    (fastopt.Adam, dict(betas=(0.9, -0.1)), r"Invalid betas\[1\]"),
    (fastopt.Adam, dict(betas=(0.9,)), "Invalid betas"),
    (fastopt.Adam, dict(weight_decay=-0.1), "Invalid weight_decay"),
    (fastopt.AdamW, dict(lr=float("nan")), "Invalid lr"),
    (fastopt.SGD, dict(momentum=-0.5), "Invalid momentum"),
    (fastopt.SGD, dict(dampening=1.5), "Invalid dampening"),
    (fastopt.SGD, dict(nesterov=True), "Nesterov momentum requires"),
    (fastopt.SGD, dict(nesterov=True, momentum=0.9, dampening=0.1), "Nesterov"),
    (fastopt.Momentum, dict(beta=1.0), "Invalid beta"),
    (fastopt.RMSprop, dict(alpha=-0.1), "Invalid alpha"),
    (fastopt.RMSprop, dict(momentum=-1), "Invalid momentum"),
    (fastopt.Adagrad, dict(lr_decay=-1), "Invalid lr_decay"),
    (fastopt.Adagrad, dict(initial_accumulator_value=-1), "Invalid initial_accumulator_value"),
])
def test_invalid_hyperparameters(cls, kw, match):
    w = np.zeros(3)
    with pytest.raises(ValueError, match=match):
        cls([w], **kw)


def test_invalid_hyperparameter_types():
    with pytest.raises(TypeError, match="lr must be a number"):
        fastopt.Adam([np.zeros(2)], lr="0.1")


@pytest.mark.parametrize("make, exc, match", [
    (lambda: [np.zeros(3, dtype=np.int64)], TypeError, r"params\[0\] has dtype int64"),
    (lambda: [np.zeros(3, dtype=np.complex64)], TypeError, r"parameters must be float64, "
     r"float32, bfloat16 \(ml_dtypes.bfloat16\) or float16"),
    (lambda: [np.zeros((4, 4))[:, 0]], ValueError, r"params\[0\] must be C-contiguous"),
    (lambda: {"w": np.zeros(3)[::2]}, ValueError, r"params\['w'\] must be C-contiguous"),
    (lambda: [[1.0, 2.0]], TypeError, r"params\[0\] must be a numpy.ndarray"),
    (lambda: [], ValueError, "params is empty"),
    (lambda: 3.0, TypeError, "params must be"),
    (lambda: [{"lr": 1}], ValueError, "has no 'params'"),
])
def test_invalid_params(make, exc, match):
    with pytest.raises(exc, match=match):
        fastopt.SGD(make(), lr=0.1)


def test_read_only_param():
    w = np.zeros(3)
    w.setflags(write=False)
    with pytest.raises(ValueError, match="read-only"):
        fastopt.Adam([w])


def test_same_array_twice_and_overlapping_views():
    w = np.zeros(6)
    with pytest.raises(ValueError, match="the same array given twice"):
        fastopt.Adam([w, w])
    with pytest.raises(ValueError, match="shares memory"):
        fastopt.Adam([w[:4], w[2:]])
    fastopt.Adam([w[:3], w[3:]])  # adjacent, not overlapping: fine


def test_unknown_and_unavailable_backend():
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        fastopt.Adam([np.zeros(2)], backend="jax")
    if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":
        try:
            from numba import cuda
            has_gpu = cuda.is_available()
        except Exception:
            has_gpu = False
        if not has_gpu:
            with pytest.raises(RuntimeError, match="backend 'cuda' is not available"):
                fastopt.Adam([np.zeros(2)], backend="cuda")


def test_unknown_group_key():
    with pytest.raises(ValueError, match="unknown keys"):
        fastopt.SGD([{"params": [np.zeros(2)], "lr": 0.1, "momentun": 0.9}])


# -- step validation: nothing changes ----------------------------------------------------------
BAD_GRADS = [
    ("wrong dtype", lambda g: {**g, "p0": g["p0"].astype(np.float64)}, TypeError,
     r"grads\['p0'\] has dtype float64, its parameter has float32"),
    ("wrong shape", lambda g: {**g, "p1": g["p1"][:1]}, ValueError, r"grads\['p1'\] has shape"),
    ("None", lambda g: {**g, "p0": None}, TypeError, r"grads\['p0'\] is None"),
    ("missing key", lambda g: {"p0": g["p0"]}, ValueError, r"missing keys \['p1'\]"),
    ("extra key", lambda g: {**g, "q": g["p0"]}, ValueError, r"unexpected keys \['q'\]"),
    ("wrong count", lambda g: [g["p0"]], ValueError, "grads has 1 entries"),
    ("not arrays", lambda g: {**g, "p1": list(g["p1"])}, TypeError, "must be a numpy.ndarray"),
    ("non-contiguous", lambda g: {**g, "p1": np.asfortranarray(g["p1"])}, ValueError,
     "C-contiguous"),
    ("grads None", lambda g: None, TypeError, "grads is None"),
]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("name, bad, exc, match", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_grads_change_nothing(name, bad, exc, match, backend):
    opt, params, grads = stepped(backend=backend)
    snap = snapshot(opt)
    with pytest.raises(exc, match=match):
        opt.step(bad(grads[1]))
    assert_unchanged(opt, snap)
    assert opt.step_count == 1
    opt.step(grads[1])  # and the optimizer still works afterwards
    assert opt.step_count == 2


def test_grad_is_param_memory():
    w = np.zeros(4)
    opt = fastopt.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="shares memory with its parameter"):
        opt.step([w])
    with pytest.raises(ValueError, match="shares memory with its parameter"):
        opt.step([w.reshape(2, 2).reshape(4)])


def test_bad_group_change_between_steps_changes_nothing():
    opt, params, grads = stepped(fastopt.SGD, momentum=0.9)
    snap = snapshot(opt)
    opt.param_groups[0]["momentum"] = -1.0
    with pytest.raises(ValueError, match="Invalid momentum"):
        opt.step(grads[1])
    assert_unchanged(opt, snap)
    opt.lr = 0.02
    with pytest.raises(ValueError, match="Invalid lr"):
        opt.lr = -1.0


def test_bad_schedule_changes_nothing():
    opt, params, grads = stepped()
    snap = snapshot(opt)
    opt.lr = lambda n: -1.0
    with pytest.raises(ValueError, match="schedule returned -1.0 at count 1"):
        opt.step(grads[1])
    assert_unchanged(opt, snap)


def test_replaced_grad_is_validated_despite_cached_plan():
    params, grads = make_problem([4], np.float64)
    opt = fastopt.Adam(params)
    opt.step(grads[0])
    g = grads[0]["p0"]
    opt.step(grads[0])  # cached plan for these gradient objects
    grads[0]["p0"] = g.view(np.float32)  # a new object of the wrong dtype: must be re-checked
    with pytest.raises((TypeError, ValueError)):
        opt.step(grads[0])


# -- non-finite gradients ------------------------------------------------------------------------
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raise_and_skip(backend, bad):
    for mode in ("raise", "skip"):
        opt, params, grads = stepped(backend=backend, nonfinite=mode)
        g = {k: v.copy() for k, v in grads[1].items()}
        g["p1"].flat[3] = bad
        snap = snapshot(opt)
        if mode == "raise":
            with pytest.raises(FloatingPointError):
                opt.step(g)
        else:
            assert opt.step(g) is False
            snap = (snap[0], snap[1], snap[2] + 1)
        assert_unchanged(opt, snap)
        assert opt.step_count == 1


def test_nonfinite_propagate_is_default():
    opt, params, grads = stepped()
    g = {k: v.copy() for k, v in grads[1].items()}
    g["p0"][0] = np.nan
    assert opt.step(g) is True
    assert np.isnan(params["p0"][0]) and np.isfinite(params["p0"][1:]).all()


def test_nonfinite_invalid_option():
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        fastopt.Adam([np.zeros(2)], nonfinite="ignore")


# -- state_dict ----------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_state_dict_resume_is_bit_exact(cls, kwargs, backend, tmp_path):
    params, grads = make_problem([7, 12, 4097], np.float32, seed=7)
    opt = cls(params, backend=backend, **kwargs)
    for t in range(4):
        opt.step(grads[t])
    sd = opt.state_dict()
    assert set(sd) >= {"state", "param_groups"}
    assert all(e["step"] == 4 for e in sd["state"].values())
    fastopt.save(opt, tmp_path / "opt.npz")
    copies = [{k: v.copy() for k, v in params.items()} for _ in range(2)]
    for t in range(4, 9):
        opt.step(grads[t % 5])
    for copy, how in zip(copies, ("dict", "file")):
        fresh = cls(copy, backend=backend, **{**kwargs, "lr": 123.0})
        if how == "dict":
            fresh.load_state_dict(sd)
        else:
            fastopt.load(fresh, tmp_path / "opt.npz")
        assert fresh.param_groups[0]["lr"] == kwargs["lr"]
        for t in range(4, 9):
            fresh.step(grads[t % 5])
        for k in params:
            np.testing.assert_array_equal(copy[k], params[k])


def test_state_dict_names_match_torch():
    opt, _, _ = stepped(fastopt.Adam, amsgrad=True)
    assert set(opt.state_dict()["state"][0]) == {"step", "exp_avg", "exp_avg_sq",
                                                   "max_exp_avg_sq"}
    opt, _, _ = stepped(fastopt.SGD, momentum=0.9)
    assert set(opt.state_dict()["state"][0]) == {"step", "momentum_buffer"}
    opt, _, _ = stepped(fastopt.RMSprop, centered=True)
    assert set(opt.state_dict()["state"][0]) == {"step", "square_avg", "grad_avg"}
    opt, _, _ = stepped(fastopt.Adagrad)
    assert set(opt.state_dict()["state"][0]) == {"step", "sum"}


def test_state_dict_is_a_copy():
    opt, params, grads = stepped()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"][...] = 99
    assert not (opt.state["p0"]["exp_avg"] == 99).any()


def test_bad_state_dict_changes_nothing():
    opt, params, grads = stepped()
    good = opt.state_dict()
    snap = snapshot(opt)
    bad_shape = opt.state_dict()
    bad_shape["state"][1]["exp_avg"] = np.zeros(99, np.float32)
    missing = opt.state_dict()
    del missing["state"][1]["exp_avg_sq"]
    count = opt.state_dict()
    del count["state"][1]
    groups = opt.state_dict()
    groups["param_groups"].append(dict(groups["param_groups"][0]))
    badhyper = opt.state_dict()
    badhyper["param_groups"][0]["eps"] = -1.0
    unknown = opt.state_dict()
    unknown["param_groups"][0]["foo"] = 1
    for sd, exc, match in [(bad_shape, ValueError, "has shape"),
                           (missing, ValueError, "has no 'exp_avg_sq'"),
                           (count, ValueError, "state for 1 parameters"),
                           (groups, ValueError, "2 param groups"),
                           (badhyper, ValueError, "Invalid eps"),
                           (unknown, ValueError, "unknown key 'foo'"),
                           ({"state": {}}, ValueError, "no 'param_groups'"),
                           ([], TypeError, "must be a dict")]:
        with pytest.raises(exc, match=match):
            opt.load_state_dict(sd)
        assert_unchanged(opt, snap)
    opt.load_state_dict(good)
    assert_unchanged(opt, snap)


def test_load_wrong_class_file(tmp_path):
    opt, _, _ = stepped()
    fastopt.save(opt, tmp_path / "a.npz")
    other, _, _ = stepped(fastopt.SGD)
    with pytest.raises(ValueError, match="holds Adam state, not SGD"):
        fastopt.load(other, tmp_path / "a.npz")


# -- properties ----------------------------------------------------------------------------------
HYPER = {
    "adam": (fastopt.Adam, lambda d: dict(lr=d(st.floats(1e-4, 0.1)),
                                          betas=(d(st.floats(0, 0.99)), d(st.floats(0, 0.999))),
                                          eps=d(st.floats(1e-8, 1e-3)),
                                          weight_decay=d(st.floats(0, 0.1)),
                                          amsgrad=d(st.booleans()), maximize=d(st.booleans()))),
    "sgd": (fastopt.SGD, lambda d: dict(lr=d(st.floats(1e-4, 0.1)),
                                        momentum=d(st.floats(0, 0.99)),
                                        weight_decay=d(st.floats(0, 0.1)),
                                        maximize=d(st.booleans()))),
    "rmsprop": (fastopt.RMSprop, lambda d: dict(lr=d(st.floats(1e-4, 0.1)),
                                                alpha=d(st.floats(0.5, 0.999)),
                                                momentum=d(st.floats(0, 0.9)),
                                                centered=d(st.booleans()))),
    "adagrad": (fastopt.Adagrad, lambda d: dict(lr=d(st.floats(1e-4, 0.1)),
                                                lr_decay=d(st.floats(0, 0.1)))),
    "momentum": (fastopt.Momentum, lambda d: dict(lr=d(st.floats(1e-4, 0.1)),
                                                  beta=d(st.floats(0, 0.99)),
                                                  bias_correction=d(st.booleans()))),
}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), family=st.sampled_from(sorted(HYPER)),
       sizes=st.lists(st.integers(0, 300), min_size=1, max_size=4),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_property_backends_agree(data, family, sizes, dtype):
    cls, hyper = HYPER[family]
    kw = hyper(data.draw)
    params, grads = make_problem(sizes, dtype, seed=len(sizes))
    results = {}
    for backend in HOST_BACKENDS:
        p = {k: v.copy() for k, v in params.items()}
        opt = cls(p, backend=backend, **kw)
        for t in range(5):
            opt.step(grads[t])
        results[backend] = p
    tol = dict(rtol=1e-4, atol=1e-5) if dtype == np.float32 else dict(rtol=1e-9, atol=1e-10)
    for backend, p in results.items():
        for k in params:
            np.testing.assert_allclose(p[k], results["numpy"][k], **tol, err_msg=backend)


@settings(max_examples=25, deadline=None)
@given(data=st.data(), family=st.sampled_from(sorted(HYPER)), split=st.integers(1, 5))
def test_property_state_dict_round_trip(data, family, split):
    cls, hyper = HYPER[family]
    kw = hyper(data.draw)
    params, grads = make_problem([3, 50], np.float32, seed=split)
    opt = cls(params, **kw)
    for t in range(split):
        opt.step(grads[t % 5])
    sd = opt.state_dict()
    copy = {k: v.copy() for k, v in params.items()}
    for t in range(split, split + 4):
        opt.step(grads[t % 5])
    fresh = cls(copy, **kw)
    fresh.load_state_dict(sd)
    for t in range(split, split + 4):
        fresh.step(grads[t % 5])
    for k in params:
        np.testing.assert_array_equal(copy[k], params[k])


@settings(max_examples=30, deadline=None)
@given(family=st.sampled_from(sorted(HYPER)), which=st.integers(0, len(BAD_GRADS) - 1),
       nonfinite=st.booleans())
def test_property_rejected_step_changes_nothing(family, which, nonfinite):
    cls, _ = HYPER[family]
    params, grads = make_problem([4, 9], np.float32, seed=which)
    opt = cls(params, lr=0.01, nonfinite="raise")
    opt.step(grads[0])
    snap = snapshot(opt)
    if nonfinite:
        bad = {k: v.copy() for k, v in grads[1].items()}
        bad["p1"].flat[-1] = math.inf
        with pytest.raises(FloatingPointError):
            opt.step(bad)
    else:
        _, make_bad, exc, _ = BAD_GRADS[which]
        with pytest.raises(exc):
            opt.step(make_bad(grads[1]))
    assert_unchanged(opt, snap)

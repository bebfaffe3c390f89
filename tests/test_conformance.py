"""Every optimizer x option x backend x dtype against the float64 NumPy reference."""
import numpy as np
import pytest

import fastopt
from _support import HOST_BACKENDS, OPTIMIZERS_UNDER_TEST, TOL, make_problem

STEPS = 20
SIZES = [0, 1, 7, 4097]
CASES = [pytest.param(cls, kw, id=name) for name, cls, kw in OPTIMIZERS_UNDER_TEST]


def run(cls, kwargs, params, grads, backend, steps=STEPS):
    opt = cls(params, backend=backend, **kwargs)
    for t in range(steps):
        assert opt.step(grads[t % len(grads)]) is True
    return opt


def reference_run(cls, kwargs, params, grads, steps=STEPS):
    p64 = {k: v.astype(np.float64) for k, v in params.items()}
    g64 = [{k: v.astype(np.float64) for k, v in g.items()} for g in grads]
    opt = run(cls, kwargs, p64, g64, "numpy", steps)
    return p64, opt


def assert_close_to_reference(opt, params, ref_opt, ref_params, dtype):
    for k in params:
        np.testing.assert_allclose(params[k], ref_params[k], **TOL[dtype], err_msg=k)
    got, want = opt.state, ref_opt.state
    for k in params:
        assert set(got[k]) == set(want[k])
        assert got[k]["step"] == want[k]["step"] == STEPS
        for name in got[k]:
            if name != "step":
                assert got[k][name].dtype == dtype
                np.testing.assert_allclose(got[k][name], want[k][name], **TOL[dtype],
                                           err_msg=f"{k}.{name}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_matches_float64_reference(cls, kwargs, backend, dtype):
    params, grads = make_problem(SIZES + [12], dtype)
    ref_params, ref_opt = reference_run(cls, kwargs, params, grads)
    opt = run(cls, kwargs, params, grads, backend)
    assert opt.backend == backend
    assert_close_to_reference(opt, params, ref_opt, ref_params, dtype)
    # The update really moved the parameters (a no-op kernel would fail here).
    before, _ = make_problem(SIZES + [12], dtype)
    assert not np.allclose(before["p2"], params["p2"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", [b for b in HOST_BACKENDS if b != "numpy"])
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_threaded_path_matches_reference(cls, kwargs, backend, dtype, small_threshold):
    """The parallel kernels, forced onto small buffers, and on a large one."""
    params, grads = make_problem([5, 1000, 200003], dtype, seed=1)
    ref_params, ref_opt = reference_run(cls, kwargs, params, grads, steps=STEPS)
    opt = run(cls, kwargs, params, grads, backend)
    assert_close_to_reference(opt, params, ref_opt, ref_params, dtype)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("cls, kwargs", CASES)
def test_arena_is_one_call_and_same_numbers(cls, kwargs, backend):
    params, grads = make_problem([7, 30, 1, 4097], np.float32, seed=2)
    separate = {k: v.copy() for k, v in params.items()}
    arena = fastopt.Arena(params)
    opt_sep = cls(separate, backend=backend, **kwargs)
    opt_ar = cls(arena.params, backend=backend, **kwargs)
    for t in range(6):
        g = grads[t % len(grads)]
        for k in g:
            np.copyto(arena.grads[k], g[k])
        opt_ar.step(arena.grads)
        opt_sep.step(g)
        # arena: one call over one buffer; separate arrays: one call, one row per array
        # (LAMB's per-tensor norms: one row per parameter in an Arena too)
        whole = [v.size for v in params.values()] if cls.spec.apply_rule else \
            [sum(v.size for v in params.values())]
        assert opt_ar.kernel_rows == [whole]
        assert opt_sep.kernel_rows == [[v.size for v in params.values()]]
    for k in params:
        np.testing.assert_array_equal(arena.params[k], separate[k])


def test_arena_mixed_dtypes_one_call_per_dtype():
    rng = np.random.default_rng(3)
    params = {"a": rng.standard_normal(5).astype(np.float32), "b": rng.standard_normal(3),
              "c": rng.standard_normal((2, 2)).astype(np.float32), "d": rng.standard_normal(4)}
    arena = fastopt.Arena(params)
    assert set(arena.buffers) == {np.dtype(np.float32), np.dtype(np.float64)}
    opt = fastopt.Adam(arena.params, lr=0.1, backend="numba")
    for k in arena.grads:
        arena.grads[k][...] = 1.0
    opt.step(arena.grads)
    assert sorted(opt.kernel_rows) == [[7], [9]]
    for k in params:
        assert arena.params[k].dtype == params[k].dtype
        np.testing.assert_allclose(arena.params[k], params[k] - 0.1, rtol=1e-6)


def test_grads_not_laid_out_like_arena_still_correct():
    params, grads = make_problem([7, 30], np.float64, seed=4)
    arena = fastopt.Arena(params)
    separate = {k: v.copy() for k, v in params.items()}
    a, b = fastopt.Adam(arena.params, lr=0.1), fastopt.Adam(separate, lr=0.1)
    for t in range(3):
        a.step(grads[t])  # separate gradient arrays, not the arena's
        b.step(grads[t])
    for k in params:
        np.testing.assert_array_equal(arena.params[k], separate[k])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_param_groups_and_schedule(backend):
    rng = np.random.default_rng(5)
    w, b = rng.standard_normal(10), rng.standard_normal(3)
    w0, b0 = w.copy(), b.copy()
    sched = lambda n: 0.1 / (1 + n)  # noqa: E731
    opt = fastopt.SGD([{"params": [w], "lr": sched}, {"params": [b], "lr": 0.5}],
                      backend=backend)
    g = [np.ones(10), np.ones(3)]
    opt.step(g)
    opt.step(g)
    np.testing.assert_allclose(w, w0 - 0.1 - 0.05)
    np.testing.assert_allclose(b, b0 - 1.0)
    opt.lr = 0.0
    opt.step(g)
    np.testing.assert_allclose(w, w0 - 0.15)


def test_list_params_and_tuple_grads_and_dict_grads_for_names():
    w = np.zeros(3)
    opt = fastopt.SGD([w], lr=1.0)
    opt.step((np.ones(3),))
    assert (w == -1).all()
    d = {"w": np.zeros(2)}
    opt = fastopt.SGD(d, lr=1.0)
    opt.step([np.ones(2)])
    opt.step({"w": np.ones(2)})
    assert (d["w"] == -2).all()


def test_default_backend_and_import_is_cheap():
    """``import fastopt`` loads no backend; the default host backend is the compiled Cython
    extension where it was built (it starts in milliseconds), else Numba."""
    import subprocess
    import sys
    code = ("import sys, fastopt; heavy=[m for m in ('numba','numba.cuda','torch','matplotlib',"
            "'ml_dtypes','fastopt.kernels.cpu','fastopt.kernels.cython','fastopt.course') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    opt = fastopt.Adam([np.zeros(2, np.float32)])
    assert opt.backend == ("numba" if "cython" not in HOST_BACKENDS else "cython")
    # and the default's first step does not import numba
    code = ("import sys, numpy as np, fastopt; fastopt.Adam([np.zeros(2, np.float32)])"
            ".step([np.ones(2, np.float32)]); print('numba' in sys.modules, "
            "'ml_dtypes' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # (ml_dtypes, whose import takes ~0.5 s, only for bfloat16 arrays)
    assert out.stdout.strip() == ("True" if "cython" not in HOST_BACKENDS else "False") + " False"

"""Adafactor: its grid kernels (row and column sums) on every host backend, the NumPy API and
fastopt.torch against torch.optim.Adafactor on matrices, batches of matrices, vectors and
scalars, checkpoints both ways, max_grad_norm, and bad input.  (The generic suites run it too:
the two-group conformance of tests/test_torch_conformance.py, non-finite values, docs.)"""
import numpy as np
import pytest

import fastopt
from _support import HOST_BACKENDS
from fastopt import config
from fastopt.kernels import get_backend
from fastopt.kernels._codegen import GRID_ROWS

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

#: a matrix of several row blocks with a ragged last one and m not a multiple of the lanes,
#: a batch of matrices, a vector, a scalar, a one-row matrix
SHAPES = [(2 * GRID_ROWS + 5, 67), (3, 4, 6), (9,), (), (1, 130)]
STEPS = 20
TOL = {np.float32: dict(rtol=5e-5, atol=5e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
CASES = [dict(lr=0.01),
         dict(lr=0.05, beta2_decay=-0.5, eps=(1e-30, 1e-2), d=2.0, weight_decay=0.1,
              maximize=True),
         dict(lr=0.2, eps=(1e-3, 1e-3), d=1.0)]     # update clipping active, eps1 given


def _problem(dtype, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [[rng.standard_normal(s).astype(dtype) for s in shapes] for _ in range(STEPS)]
    return params, grads


def _torch_run(params, grads, kw, steps=STEPS):
    tps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    opt = torch.optim.Adafactor(tps, foreach=False, **kw)
    for g in grads[:steps]:
        for tp, gi in zip(tps, g):
            tp.grad = torch.from_numpy(gi.copy())
        opt.step()
    return tps, opt


# -- the grid kernels ----------------------------------------------------------------------------
def _grid_inputs(dtype, B=2, n=2 * GRID_ROWS + 3, m=131, seed=0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(B * n * m).astype(dtype)
    g = rng.standard_normal(B * n * m).astype(dtype)
    rv = (rng.random(B * n) + 0.1).astype(dtype)
    rm = np.repeat(rv.reshape(B, n).mean(axis=1), n).astype(dtype)
    cv = (rng.random(B * m) + 0.1).astype(dtype)
    return B, n, m, p, g, rv, rm, cv


def _grid_all(be, dtype, B, n, m, p, g, rv, rm, cv):
    k1, k2, k3 = (be.grid(r, dtype) for r in ("adafactor_sq", "adafactor_factored",
                                               "adafactor_factored_apply"))
    rows1, cols1 = be.run_grid(k1, (p, g), n, m, (-1.0,))
    rows2, cols2 = be.run_grid(k2, (g, rv, rm, cv), n, m, (-1.0, 1e-30, 1.0))
    q = p.copy()
    rows3, cols3 = be.run_grid(k3, (q, g, rv, rm, cv), n, m, (-1.0, 1e-30, 1.0, 0.99, -0.01))
    assert rows1.shape == (B * n, 2) and cols1.shape == (B, 1, m)
    assert rows2.shape == (B * n, 1) and cols2.shape == (B, 0, m)
    assert rows3.shape == (B * n, 0)
    k4, k5 = be.grid("adafactor_separable", dtype), be.grid("adafactor_separable_apply", dtype)
    rows4, _ = be.run_grid(k4, (g, rv, cv), n, m, ())
    q2 = p.copy()
    be.run_grid(k5, (q2, g, rv, cv), n, m, (0.99,))
    return rows1, cols1, rows2, q, rows4, q2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", [b for b in HOST_BACKENDS if b != "numpy"])
def test_grid_kernels_match_the_reference(backend, dtype):
    args = _grid_inputs(dtype)
    B, n, m, p, g, rv, rm, cv = args
    got = _grid_all(get_backend(backend), dtype, *args)
    want = _grid_all(get_backend("numpy"), dtype, *args)
    # (float32: the sums fold 8 terms in float32 before float64, the column sums a block's
    # 64 rows: a few float32 roundings)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=rtol)
    # the sums are what they say: row sums of p*p and g*g, column sums of g*g per matrix
    g2 = (g.astype(np.float64) ** 2).reshape(B, n, m)
    np.testing.assert_allclose(got[0][:, 1], g2.sum(axis=2).ravel(), rtol=max(rtol, 1e-7))
    np.testing.assert_allclose(got[1][:, 0], g2.sum(axis=1), rtol=max(rtol, 1e-7))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grid_sums_are_the_same_bits_everywhere(dtype, monkeypatch):
    """Numba and Cython, serial and split over threads: bit for bit the same sums and
    update (the blocks of GRID_ROWS rows are added in a fixed order)."""
    args = _grid_inputs(dtype, seed=3)
    backends = [b for b in HOST_BACKENDS if b != "numpy"]
    out = []
    for threshold in (1, 1 << 40):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        for b in backends:
            out.append(_grid_all(get_backend(b), dtype, *args))
    for other in out[1:]:
        for a, b in zip(out[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_bound_grid_is_run_grid(backend):
    """Backend.bind_grid: the same sums as run_grid, call after call (its outputs are reused),
    and its size check."""
    be = get_backend(backend)
    B, n, m, p, g, rv, rm, cv = _grid_inputs(np.float32, seed=4)
    k = be.grid("adafactor_sq", np.float32)
    call = be.bind_grid(k, n, m, B * n)
    for sign in (1.0, -1.0):
        rows, cols = call((p, g * sign), (sign,))
        want = be.run_grid(k, (p, g * sign), n, m, (sign,))
        np.testing.assert_array_equal(rows, want[0])
        np.testing.assert_array_equal(cols, want[1])
    if backend != "numpy":
        with pytest.raises(ValueError, match="matrices"):
            be.bind_grid(k, n, m, B * n + 1)


def test_grid_run_checks_its_arrays():
    be = get_backend("numba")
    k = be.grid("adafactor_sq", np.float32)
    p = np.zeros(12, np.float32)
    with pytest.raises(ValueError, match="not matrices of 5 x 4"):
        be.run_grid(k, (p, p.copy()), 5, 4, (1.0,))
    with pytest.raises(ValueError, match="grad must be a 1-D float32 array of 12"):
        be.run_grid(k, (p, np.zeros(12)), 3, 4, (1.0,))
    with pytest.raises(ValueError, match="not a grid rule"):
        be.grid("adam", np.float32)


# -- the NumPy API against torch.optim.Adafactor --------------------------------------------------
@pytest.mark.parametrize("kw", CASES, ids=["defaults", "options", "clipped-update"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_numpy_api_matches_torch(backend, dtype, kw):
    params, grads = _problem(dtype)
    tps, topt = _torch_run(params, grads, kw)
    opt = fastopt.Adafactor(params, backend=backend, **kw)
    for g in grads:
        assert opt.step(g) is True
    for i, (p, tp) in enumerate(zip(params, tps)):
        np.testing.assert_allclose(p, tp.detach().numpy(), **TOL[dtype], err_msg=f"param {i}")
        want = {k: v.numpy() for k, v in topt.state[tp].items() if k != "step"}
        got = {k: v for k, v in opt.state[i].items() if k != "step"}
        assert set(got) == set(want)
        for k in want:
            assert got[k].shape == want[k].shape
            np.testing.assert_allclose(got[k], want[k], **TOL[dtype], err_msg=f"{i} {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_exact_and_separable_passes(backend, dtype):
    """Where torch's clamp max(r*c/rmean, eps1**2) can act (a column whose gradient is always
    zero), the exact passes run, operation for operation torch's; elsewhere the separable
    ones: both match torch."""
    shapes = [(6, 9), (70, 5)]
    params, grads = _problem(dtype, seed=7, shapes=shapes)
    for gs in grads:
        gs[0][:, 4] = 0.0                 # a dead column: its factor stays 0
    tps, topt = _torch_run(params, grads, dict(lr=0.05))
    opt = fastopt.Adafactor(params, lr=0.05, backend=backend)
    for g in grads:
        opt.step(g)
    assert [call.separable for _, call in opt._plan.calls] == [False, True]
    for p, tp in zip(params, tps):
        np.testing.assert_allclose(p, tp.detach().numpy(), **TOL[dtype])
    assert np.all(params[0][:, 4] != 0)



def _factor_inputs(dtype, B, n, m, seed, kind):
    rng = np.random.default_rng(seed)
    g_rows = rng.random(B * n) * 10.0 ** rng.integers(-12, 4, B * n)
    g_cols = rng.random(B * m) * 10.0 ** rng.integers(-12, 4, B * m)
    rv = rng.random(B * n).astype(dtype)
    cv = rng.random(B * m).astype(dtype)
    if kind == "dead":          # a dead row and column: the clamp can act
        g_rows[0] = g_cols[-1] = 0.0
        rv[0] = cv[-1] = 0.0
    elif kind == "nonfinite":
        g_rows[1 % (B * n)] = np.nan
        g_cols[0] = np.inf
    return g_rows, g_cols, rv, cv


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["plain", "dead", "nonfinite"])
@pytest.mark.parametrize("w", [0.3, 0.9])
def test_compiled_factor_helpers_give_the_numpy_twins_bits(dtype, kind, w):
    """The host arithmetic between a matrix's passes (the factors' lerp, the sums of the row
    factors, the separable scales): the Cython helpers and their NumPy twins give the same
    bits (so every backend does, with or without the extension), separable or not."""
    from fastopt.optimizers import _adafactor as A
    if A._ext() is None:
        pytest.skip("the Cython extension is not built")
    for B, n, m in [(1, 5, 7), (3, 17, 4), (2, 1, 130)]:
        g_rows, g_cols, rv, cv = _factor_inputs(dtype, B, n, m, B * n * m, kind)
        out = {}
        for compiled in (True, False):
            r, c = rv.copy(), cv.copy()
            sums = A._factors(g_rows, g_cols, r, c, B, n, m, w, m, n, compiled=compiled)
            mean = np.maximum((sums / n).astype(dtype), dtype(1e-3))
            rm, rs, cs = (np.full(B * n, 7, dtype), np.full(B * n, 7, dtype),
                          np.full(B * m, 7, dtype))
            sep = A._scales(r, c, mean, B, n, m, 1e-30, -1.0, rm, rs, cs, compiled=compiled)
            out[compiled] = (r, c, sums, sep, rm, rs, cs)
        for a, b in zip(out[True], out[False]):
            np.testing.assert_array_equal(a, b)
        assert out[True][3] is (kind == "plain")
        # the lerp as written: torch's lerp_ of row_var towards sqrt(g)**2 / m in the dtype
        norm = np.sqrt(g_rows).astype(dtype)
        with np.errstate(all="ignore"):
            want = rv + dtype(w) * (norm * norm / dtype(m) - rv) if w < 0.5 else \
                norm * norm / dtype(m) - (norm * norm / dtype(m) - rv) * (dtype(1) - dtype(w))
        np.testing.assert_array_equal(out[True][0], want)


def test_state_shapes_and_bytes():
    w, b = np.zeros((4, 3, 5), np.float32), np.zeros(5, np.float32)
    opt = fastopt.Adafactor({"w": w, "b": b})
    opt.step({"w": np.ones_like(w), "b": np.ones_like(b)})
    st = opt.state
    assert st["w"]["row_var"].shape == (4, 3, 1) and st["w"]["col_var"].shape == (4, 1, 5)
    assert st["b"]["variance"].shape == (5,) and set(st["b"]) == {"step", "variance"}
    # the factored state is n + m values per matrix, not n*m
    assert st["w"]["row_var"].size + st["w"]["col_var"].size == 4 * (3 + 5)


def test_checkpoint_resumes_bit_for_bit(tmp_path):
    params, grads = _problem(np.float32, seed=4)
    a = [p.copy() for p in params]
    opt = fastopt.Adafactor(a, lr=0.05, weight_decay=0.01)
    for g in grads[:7]:
        opt.step(g)
    fastopt.save(opt, tmp_path / "ada.npz")
    b = [p.copy() for p in a]
    opt2 = fastopt.Adafactor(b, lr=0.05, weight_decay=0.01)
    fastopt.load(opt2, tmp_path / "ada.npz")
    for g in grads[7:]:
        opt.step(g)
        opt2.step(g)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_load_state_dict_checks_the_factored_shapes():
    w = np.zeros((3, 4))
    opt = fastopt.Adafactor([w])
    opt.step([np.ones((3, 4))])
    sd = opt.state_dict()
    sd["state"][0]["row_var"] = np.zeros((3, 4))
    before = opt.state[0]["row_var"].copy()
    with pytest.raises(ValueError, match=r"'row_var' of parameter 0 has shape \(3, 4\), "
                                         r"expected \(3, 1\)"):
        opt.load_state_dict(sd)
    np.testing.assert_array_equal(opt.state[0]["row_var"], before)


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_nonfinite_gradient_changes_nothing(mode):
    w = np.random.default_rng(0).standard_normal((5, 6))
    opt = fastopt.Adafactor([w], nonfinite=mode)
    opt.step([np.ones((5, 6))])
    before = w.copy(), {k: np.copy(v) for k, v in opt.state[0].items() if k != "step"}
    g = np.ones((5, 6))
    g[2, 3] = np.nan
    if mode == "raise":
        with pytest.raises(FloatingPointError):
            opt.step([g])
    else:
        assert opt.step([g]) is False
    np.testing.assert_array_equal(w, before[0])
    for k, v in before[1].items():
        np.testing.assert_array_equal(opt.state[0][k], v)
    assert opt.step_count == 1


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_max_grad_norm_equals_clip_grad_norm_then_torch(backend):
    params, grads = _problem(np.float64, seed=5)
    grads = [[np.asarray(10 * g) for g in gs] for gs in grads]
    tps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    topt = torch.optim.Adafactor(tps, lr=0.05, foreach=False)
    opt = fastopt.Adafactor(params, lr=0.05, backend=backend, max_grad_norm=3.0)
    fps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    fopt = ft.Adafactor(fps, lr=0.05, max_grad_norm=3.0)
    for gs in grads[:8]:
        for tp, fp, g in zip(tps, fps, gs):
            tp.grad, fp.grad = torch.from_numpy(g.copy()), torch.from_numpy(g.copy())
        norm = float(torch.nn.utils.clip_grad_norm_(tps, 3.0))
        assert norm > 3.0
        topt.step()
        opt.step(gs)
        fopt.step()
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
    for p, tp, fp in zip(params, tps, fps):
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(fp.detach().numpy(), tp.detach().numpy(), rtol=1e-10,
                                   atol=1e-12)


def test_empty_parameter_is_left_alone():
    w, e = np.ones((2, 3)), np.ones((0, 4))
    opt = fastopt.Adafactor([w, e])
    opt.step([np.ones((2, 3)), np.ones((0, 4))])
    assert opt.state[1]["row_var"].shape == (0, 1) and opt.state[1]["col_var"].shape == (1, 4)
    assert not np.allclose(w, 1.0)


# -- fastopt.torch.Adafactor ----------------------------------------------------------------------
@pytest.mark.parametrize("kw", CASES, ids=["defaults", "options", "clipped-update"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_torch_adapter_matches_torch_and_hands_over(dtype, kw):
    params, grads = _problem(dtype, seed=1)
    tps, topt = _torch_run(params, grads, kw, steps=STEPS // 2)
    fps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    fopt = ft.Adafactor(fps, **kw)
    for g in grads[:STEPS // 2]:
        for fp, gi in zip(fps, g):
            fp.grad = torch.from_numpy(gi.copy())
        fopt.step()
    for fp, tp in zip(fps, tps):
        np.testing.assert_allclose(fp.detach().numpy(), tp.detach().numpy(), **TOL[dtype])
    want, got = topt.state_dict(), fopt.state_dict()
    for i, entry in want["state"].items():
        assert set(got["state"][i]) == set(entry)
        for k, v in entry.items():
            assert got["state"][i][k].shape == v.shape and got["state"][i][k].dtype == v.dtype
            np.testing.assert_allclose(got["state"][i][k].numpy(), v.numpy(), **TOL[dtype])
    # each continues from the other's checkpoint along the same trajectory
    cont_t = [fp.detach().clone().requires_grad_() for fp in fps]
    topt2 = torch.optim.Adafactor(cont_t, foreach=False, **kw)
    topt2.load_state_dict(got)
    cont_f = [tp.detach().clone().requires_grad_() for tp in tps]
    fopt2 = ft.Adafactor(cont_f, **kw)
    fopt2.load_state_dict(want)
    for g in grads[STEPS // 2:]:
        for ps in (cont_t, cont_f, tps):
            for p, gi in zip(ps, g):
                p.grad = torch.from_numpy(gi.copy())
        topt2.step()
        fopt2.step()
        topt.step()
    for a, b, ref in zip(cont_t, cont_f, tps):
        np.testing.assert_allclose(a.detach().numpy(), ref.detach().numpy(), **TOL[dtype])
        np.testing.assert_allclose(b.detach().numpy(), ref.detach().numpy(), **TOL[dtype])


def test_torch_adapter_trains_a_model_and_non_contiguous_params():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    twin = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    twin.load_state_dict(model.state_dict())
    ours, theirs = ft.Adafactor(model.parameters()), torch.optim.Adafactor(twin.parameters())
    x, y = torch.randn(64, 8), torch.randn(64, 1)
    for _ in range(10):
        for m, o in ((model, ours), (twin, theirs)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=5e-5, atol=5e-6)
    # a transposed (non-contiguous) parameter is stepped in its own memory
    p = torch.randn(5, 7).t().requires_grad_()    # a (7, 5) view, strides (1, 7)
    q = p.detach().clone().requires_grad_()
    assert not p.is_contiguous()
    o1, o2 = ft.Adafactor([p]), torch.optim.Adafactor([q])
    for _ in range(3):
        g = torch.randn(7, 5)
        p.grad, q.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    torch.testing.assert_close(p, q, rtol=5e-5, atol=5e-6)


def test_torch_adapter_keeps_its_steps_but_not_stale_views_or_gradients():
    """fastopt.torch.Adafactor keeps each parameter's bound passes across steps: a parameter
    whose ``.data`` moved, a state tensor replaced (and one of them edited in place), fresh
    gradient tensors every step all follow torch's trajectory, and no gradient of a past step
    is kept alive by the optimizer."""
    rng = np.random.default_rng(5)
    shapes = [(70, 9), (11,)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = [torch.from_numpy(x.copy()).requires_grad_() for x in init]
    theirs = [torch.from_numpy(x.copy()).requires_grad_() for x in init]
    o1, o2 = ft.Adafactor(ours, lr=0.05), torch.optim.Adafactor(theirs, lr=0.05, foreach=False)
    for i in range(8):
        for p, q in zip(ours, theirs):
            g = torch.from_numpy(rng.standard_normal(p.shape).astype(np.float32))
            p.grad, q.grad = g.clone(), g.clone()
        if i == 3:       # the parameters re-homed (as model.to(...) or a bucket view does)
            for p in ours:
                p.data = p.data.clone()
        if i == 5:       # a state tensor replaced, another edited in place, in both
            for a, b in zip(o1.state.values(), o2.state.values()):
                for name in ("row_var", "variance"):
                    if name in a:
                        a[name] = a[name].clone() * 2
                        b[name] = b[name].clone() * 2
                if "col_var" in a:
                    a["col_var"].mul_(0.5)
                    b["col_var"].mul_(0.5)
        o1.step()
        o2.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=5e-5, atol=5e-6, msg=f"step {i}")
    # (the kept steps hold no gradient array: a NumPy view would keep its memory alive)
    kept = [hit[1] for key, hit in o1._calls.items() if key[0] == "adafactor"]
    assert len(kept) == 2 and all(step.grad is None for step in kept)
    # a kept state tensor resized in place is caught before anything changes
    before = [p.detach().clone() for p in ours]
    o1.state[ours[0]]["row_var"].resize_(3, 1)
    for p in ours:
        p.grad = torch.ones_like(p)
    with pytest.raises(ValueError, match="row_var"):
        o1.step()
    for p, b in zip(ours, before):
        assert torch.equal(p.detach(), b)


def test_torch_adapter_rejects_before_changing_anything():
    a = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(4, requires_grad=True)
    opt = ft.Adafactor([a, b])
    a.grad, b.grad = torch.randn(3, 4), torch.randn(4)
    opt.step()
    opt.state[b]["variance"] = torch.zeros(5)      # a broken checkpoint, say
    before = a.detach().clone(), {k: v.clone() for k, v in opt.state[a].items()}
    with pytest.raises(ValueError, match=r"state 'variance' must be a torch.float32 tensor of "
                                         r"shape \(4,\)"):
        opt.step()
    torch.testing.assert_close(a.detach(), before[0], rtol=0, atol=0)
    for k, v in before[1].items():          # step count and factors unchanged
        torch.testing.assert_close(opt.state[a][k], v, rtol=0, atol=0)
    c = torch.randn(3, requires_grad=True)
    opt2 = ft.Adafactor([c])
    c.grad = torch.randn(3).to_sparse()
    with pytest.raises(RuntimeError, match="sparse"):
        opt2.step()
    assert not opt2.state     # no state was created either
    with pytest.raises(TypeError, match="float32 or float64"):
        ft.Adafactor([torch.zeros(3, 4, dtype=torch.bfloat16, requires_grad=True)])
    with pytest.raises(ValueError, match="flatten=True"):
        ft.Adafactor.__mro__[1](([a]), dict(ft.Adafactor([a]).defaults), flatten=True)
    with pytest.raises(ValueError, match="state_dtype='int8'"):
        ft.Adafactor([a], state_dtype="int8")
    with pytest.raises(ValueError, match=r"has shape \(3, 4\), expected \(3, 1\)"):
        opt.load_state_dict({"state": {0: {"step": torch.tensor(1.0),
                                           "row_var": torch.zeros(3, 4),
                                           "col_var": torch.zeros(1, 4)}},
                             "param_groups": opt.state_dict()["param_groups"]})


# -- bad input -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, exc, match", [
    (dict(lr=-1.0), ValueError, "Invalid lr"),
    (dict(beta2_decay=0.5), ValueError, "Invalid beta2_decay"),
    (dict(beta2_decay=float("nan")), ValueError, "Invalid beta2_decay"),
    (dict(eps=1e-3), TypeError, "eps must be a pair"),
    (dict(eps=(-1.0, 1e-3)), ValueError, r"Invalid eps\[0\]"),
    (dict(eps=(None, -1e-3)), ValueError, r"Invalid eps\[1\]"),
    (dict(eps=(None, "x")), TypeError, r"eps\[1\] must be a number"),
    (dict(d=0.5), ValueError, "Invalid d"),
    (dict(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
    (dict(maximize="no"), TypeError, "maximize"),
    (dict(state_dtype="int8"), ValueError, "state_dtype='int8'"),
    (dict(state_dtype="bfloat16"), ValueError, "state_dtype='bfloat16'"),
])
@pytest.mark.parametrize("api", ["numpy", "torch"])
def test_invalid_hyperparameters(api, kw, exc, match):
    if api == "numpy":
        with pytest.raises(exc, match=match):
            fastopt.Adafactor([np.zeros((2, 3))], **kw)
    else:
        with pytest.raises(exc, match=match):
            ft.Adafactor([torch.zeros(2, 3, requires_grad=True)], **kw)


def test_half_precision_parameters_are_refused():
    import ml_dtypes
    with pytest.raises(TypeError, match="float32 or float64"):
        fastopt.Adafactor([np.zeros((2, 3), ml_dtypes.bfloat16)])
    with pytest.raises(ValueError, match="state_dtype='float32'"):
        fastopt.Adafactor([np.zeros((2, 3))], state_dtype="float32")    # float64 params

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
    with pytest.raises(ValueError, match="flatten=True"):
        ft.Adafactor.__mro__[1](([a]), dict(ft.Adafactor([a]).defaults), flatten=True)
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
    (dict(state_dtype="int4"), ValueError, "state_dtype must be one of"),
    (dict(rounding="down"), ValueError, "rounding must be 'nearest' or"),
    (dict(seed=-1), ValueError, "seed must be in"),
])
@pytest.mark.parametrize("api", ["numpy", "torch"])
def test_invalid_hyperparameters(api, kw, exc, match):
    if api == "numpy":
        with pytest.raises(exc, match=match):
            fastopt.Adafactor([np.zeros((2, 3))], **kw)
    else:
        with pytest.raises(exc, match=match):
            ft.Adafactor([torch.zeros(2, 3, requires_grad=True)], **kw)


# -- storage formats: 16-bit parameters and gradients, 16-bit and 8-bit state -------------------
def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


#: a matrix of several row blocks, a batch of matrices, a vector long enough for 8-bit state
#: (min_8bit_size=1000 below), a short vector, a scalar
FMT_SHAPES = [(GRID_ROWS + 5, 67), (3, 4, 6), (1500,), (9,), ()]
FMT_KW = dict(lr=0.05, eps=(1e-3, 1e-3), weight_decay=0.1)


def _fmt_layouts():
    bf16 = _bf16()
    return [  # (id, parameter dtype, gradient dtype, state_dtype, rounding)
        ("bf16-all-nearest", bf16, bf16, None, "nearest"),
        ("bf16-f32grad-f32state-stochastic", bf16, np.dtype(np.float32), "float32",
         "stochastic"),
        ("f16-bf16state-stochastic", np.dtype(np.float16), np.dtype(np.float16), "bfloat16",
         "stochastic"),
        ("f32-bf16state-nearest", np.dtype(np.float32), np.dtype(np.float32), "bfloat16",
         "nearest"),
        ("bf16-int8-stochastic", bf16, bf16, "int8", "stochastic"),
        ("f32-int8-nearest", np.dtype(np.float32), np.dtype(np.float32), "int8", "nearest"),
    ]


FMT_LAYOUTS = [pytest.param(*lay[1:], id=lay[0]) for lay in _fmt_layouts()]


def _fmt_problem(pdtype, gdtype, seed=0, steps=6):
    rng = np.random.default_rng(seed)
    params = [np.array(rng.standard_normal(s), dtype=pdtype) for s in FMT_SHAPES]
    grads = [[np.array(rng.standard_normal(s) * 0.5, dtype=gdtype) for s in FMT_SHAPES]
             for _ in range(steps)]
    return params, grads


def _fmt_reference(params, grads, kw, state_dtype, rounding, seed, min_8bit_size=1000):
    """The float64 reference of the same formats, written plainly from torch.optim.Adafactor's
    algorithm: per parameter and step, everything decoded to float64; the factors of a
    matrix updated, rounded into their storage and used as stored (their mean too); a vector's
    second moment used as computed and stored rounded (8-bit: requantized); the parameter
    rounded into its storage -- stochastic rounding with the counter-based bits of (seed, step,
    the element's index among the parameters of its dtype, array: 0 the parameter, 2 the
    variance or row factors, 3 the column factors)."""
    from fastopt.kernels import formats as F
    from fastopt.optimizers._adafactor import eps1_of, state_formats
    params = [p.copy() for p in params]
    offsets, seen = [], {}
    for p in params:
        offsets.append(seen.get(p.dtype, 0))
        seen[p.dtype] = offsets[-1] + p.size
    group = fastopt.Adafactor.spec.defaults() | kw
    sign = -1.0 if group.get("maximize") else 1.0
    lr, wd, d = group["lr"], group["weight_decay"], group["d"]
    state = []
    for p in params:
        fmts = state_formats(p.shape, F.tag(p.dtype), state_dtype, min_8bit_size)
        if p.ndim >= 2:
            B, n, m = int(np.prod(p.shape[:-2])), p.shape[-2], p.shape[-1]
            state.append({name: np.zeros(size, F.storage_dtype(fmts[name]))
                          for name, size in (("row_var", B * n), ("col_var", B * m))})
        elif fmts["variance"] in F.QUANTIZED:
            state.append({"variance": F.quantize(F.Q8U, np.zeros(p.size, np.float32))})
        else:
            state.append({"variance": np.zeros(p.size, F.storage_dtype(fmts["variance"]))})
        state[-1]["fmts"] = fmts

    def store(fmt, x, out, base, t, salt):
        bits = None
        if rounding == "stochastic":
            bits = F.random_bits(np.arange(base, base + x.size, dtype=np.uint64), t, seed, salt)
        F.encode(fmt, x, out, rounding, bits)

    def lerp(a, b, w):
        return a + w * (b - a)

    for t in range(1, len(grads) + 1):
        w = float(t) ** group["beta2_decay"]
        rho = min(lr, 1.0 / np.sqrt(t))
        for i, (p, st) in enumerate(zip(params, state)):
            pfmt, fmts = F.tag(p.dtype), st["fmts"]
            x = F.decode(pfmt, p.reshape(-1), np.float64)
            g = sign * F.decode(F.tag(grads[t - 1][i].dtype), grads[t - 1][i].reshape(-1),
                                np.float64)
            eps1 = eps1_of(group, p.dtype)
            alpha = max(group["eps"][1], np.sqrt(np.mean(x * x)) if x.size else 0.0) * rho
            x = x * (1.0 - lr * wd)
            if p.ndim >= 2:
                B, n, m = int(np.prod(p.shape[:-2])), p.shape[-2], p.shape[-1]
                g2 = (g * g).reshape(B, n, m)
                for name, new, salt in (("row_var", g2.mean(axis=2).ravel(), 2),
                                        ("col_var", g2.mean(axis=1).ravel(), 3)):
                    old = F.decode(fmts[name], st[name], np.float64)
                    store(fmts[name], lerp(old, new, w), st[name], offsets[i], t, salt)
                r = F.decode(fmts["row_var"], st["row_var"], np.float64).reshape(B, n, 1)
                c = F.decode(fmts["col_var"], st["col_var"], np.float64).reshape(B, 1, m)
                mean = np.maximum(r.mean(axis=1, keepdims=True), eps1)
                var = (r * c / mean).ravel()
            else:
                v = st["variance"]
                q8 = isinstance(v, tuple)
                old = F.dequantize(F.Q8U, *v, np.float64) if q8 else \
                    F.decode(fmts["variance"], v, np.float64)
                var = lerp(old, g * g, w)
                if q8:
                    F.quantize(F.Q8U, var, *v)
                else:
                    store(fmts["variance"], var, v, offsets[i], t, 2)
            u = g / np.sqrt(np.maximum(var, eps1 * eps1))
            rms_u = np.sqrt(np.mean(u * u)) if u.size else 0.0
            x = x - alpha / max(1.0, rms_u / d) * u
            out = p.reshape(-1)
            store(pfmt, x, out, offsets[i], t, 0)
    return params, state


def _raw(a):
    """An array's bytes (any shape, 0-d included)."""
    return np.asarray(a).reshape(-1).view(np.uint8)


def _units(a, b):
    """|a - b| in units of the last place of a's format, at b's magnitude (at least 10% of b's
    RMS: near zero one unit of the inputs is many of the result's)."""
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    mant = {1: 4, 2: 8 if a.dtype == _bf16() else 11, 4: 24, 8: 53}[a.dtype.itemsize]
    floor = 0.1 * np.sqrt(np.mean(b64 ** 2)) if b64.size else 0.0
    return np.abs(a64 - b64) / (np.maximum(np.abs(b64), max(floor, 1e-30)) * 2.0 ** (1 - mant))


#: the NumPy backend and the Cython extension against the reference; Numba gives Cython's bits
#: (the next test: every layout, serial and threaded), so it is not run a third time here (its
#: loops compile on first use, several seconds per layout and pass)
REFERENCE_BACKENDS = [b for b in HOST_BACKENDS if b != "numba"] or HOST_BACKENDS


@pytest.mark.parametrize("pdtype, gdtype, state_dtype, rounding", FMT_LAYOUTS)
@pytest.mark.parametrize("backend", REFERENCE_BACKENDS)
def test_storage_formats_match_the_float64_reference_of_the_same_formats(
        backend, pdtype, gdtype, state_dtype, rounding):
    """Every layout against :func:`_fmt_reference`: the parameters and the stored state most
    often the reference's bits, the rest a few units of their format apart (float32
    arithmetic against float64, both rounded to the same formats with the same random bits;
    stochastic rounding turns a last-bit difference into a whole unit now and then)."""
    from fastopt.kernels import formats as F
    params, grads = _fmt_problem(pdtype, gdtype)
    before = [p.copy() for p in params]
    opt = fastopt.Adafactor(params, backend=backend, state_dtype=state_dtype,
                            rounding=rounding, seed=13, min_8bit_size=1000, **FMT_KW)
    for g in grads:
        opt.step(g)
    ref, ref_state = _fmt_reference(before, grads, FMT_KW, state_dtype, rounding, 13)
    units = 2 if rounding == "nearest" else 8
    for i, (p, r) in enumerate(zip(params, ref)):
        assert p.dtype == pdtype
        if pdtype.itemsize == 2:
            same = p.reshape(-1).view(np.uint16) == r.reshape(-1).view(np.uint16)
            assert same.mean() >= 0.9, (i, same.mean())
            assert (_units(p, r) <= units).mean() >= 0.999 and _units(p, r).max() <= 64, i
        else:     # (float32 parameters: float32 arithmetic against float64's)
            assert np.isclose(p, r, rtol=1e-5, atol=1e-6).mean() >= 0.999, i
        live = opt.state[i]
        for name, want in ref_state[i].items():
            if name == "fmts":
                continue
            fmt = ref_state[i]["fmts"][name]
            got = live[name].reshape(-1)
            if fmt in F.QUANTIZED:
                assert got.dtype == np.uint8 and live[name + "_absmax"].dtype == np.float32
                assert (got == want[0]).mean() >= 0.97, (i, name)
                np.testing.assert_allclose(live[name + "_absmax"], want[1], rtol=1e-3)
                continue
            assert got.dtype == F.storage_dtype(fmt), (i, name)
            assert (_units(got, want) <= units).mean() >= 0.99, (i, name)
            if got.dtype.itemsize == 2:   # (the same random bits: mostly the same rounding)
                assert (_raw(got) == _raw(want)).reshape(-1, 2).all(axis=1).mean() >= 0.9, \
                    (i, name)


@pytest.mark.parametrize("pdtype, gdtype, state_dtype, rounding", FMT_LAYOUTS)
def test_storage_formats_same_bits_on_the_compiled_backends_and_threads(
        pdtype, gdtype, state_dtype, rounding, monkeypatch):
    """Numba and Cython, serial and split over threads: the same parameters and state, bit for
    bit (the same sums in the same order, the same codecs and random bits)."""
    backends = [b for b in HOST_BACKENDS if b != "numpy"]
    runs = []
    for threshold in (1, 1 << 40):
        monkeypatch.setattr(config, "PARALLEL_THRESHOLD", threshold)
        for b in backends:
            params, grads = _fmt_problem(pdtype, gdtype, seed=2)
            opt = fastopt.Adafactor(params, backend=b, state_dtype=state_dtype,
                                    rounding=rounding, seed=5, min_8bit_size=1000, **FMT_KW)
            for g in grads:
                opt.step(g)
            runs.append((params, opt.state))
    for params, st in runs[1:]:
        for i, (a, b) in enumerate(zip(runs[0][0], params)):
            np.testing.assert_array_equal(_raw(a), _raw(b), err_msg=str(i))
            for name, v in runs[0][1][i].items():
                if name != "step":
                    np.testing.assert_array_equal(_raw(v), _raw(st[i][name]), err_msg=name)


@pytest.mark.parametrize("backend", REFERENCE_BACKENDS)
def test_storage_formats_resume_bit_for_bit_and_convert(backend, tmp_path):
    """bfloat16 parameters with 8-bit and bfloat16 state, stochastic rounding: a checkpoint
    written half-way and loaded into a fresh optimizer continues bit for bit; loaded into one
    with another ``state_dtype`` it converts (dequantized, rounded) instead of failing."""
    bf16 = _bf16()
    for state_dtype in ("int8", "bfloat16"):
        options = dict(backend=backend, state_dtype=state_dtype, rounding="stochastic",
                       seed=3, min_8bit_size=1000, **FMT_KW)
        params, grads = _fmt_problem(bf16, bf16, seed=4, steps=8)
        a = [p.copy() for p in params]
        opt = fastopt.Adafactor(a, **options)
        for g in grads[:4]:
            opt.step(g)
        fastopt.save(opt, tmp_path / "ada.npz")
        b = [p.copy() for p in a]
        opt2 = fastopt.Adafactor(b, **options)
        fastopt.load(opt2, tmp_path / "ada.npz")
        for g in grads[4:]:
            opt.step(g)
            opt2.step(g)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(_raw(x), _raw(y))
        if state_dtype == "int8":
            assert opt.state[2]["variance"].dtype == np.uint8
        other = fastopt.Adafactor([p.copy() for p in a], **{**options, "state_dtype": "float32"})
        other.load_state_dict(opt.state_dict())
        from fastopt.kernels import formats as F
        for i, st in opt.state.items():
            for name, v in st.items():
                if name == "step" or name.endswith("_absmax"):
                    continue
                got = other.state[i][name]
                assert got.dtype == np.float32
                want = F.dequantize(F.Q8U, v, st[name + "_absmax"]).reshape(v.shape) \
                    if v.dtype == np.uint8 else v.astype(np.float32)
                np.testing.assert_array_equal(got, want)
        assert other.step(grads[0])


@pytest.mark.parametrize("backend", REFERENCE_BACKENDS)
def test_state_formats_and_bytes(backend):
    """Where each format keeps what: the factors of a matrix in the state dtype (float32 under
    int8: n + m values), a vector's variance as 8-bit codes from min_8bit_size elements."""
    bf16 = _bf16()
    params, grads = _fmt_problem(bf16, bf16)
    for state_dtype, want in ((None, bf16), ("float32", np.float32), ("bfloat16", bf16),
                              ("int8", np.float32)):
        opt = fastopt.Adafactor([p.copy() for p in params], backend=backend,
                                state_dtype=state_dtype, min_8bit_size=1000, **FMT_KW)
        opt.step(grads[0])
        st = opt.state
        assert st[0]["row_var"].dtype == want and st[0]["col_var"].dtype == want
        assert st[3]["variance"].dtype == want              # 9 elements: never 8-bit
        if state_dtype == "int8":
            assert st[2]["variance"].dtype == np.uint8
            assert st[2]["variance_absmax"].shape == (6,)   # ceil(1500 / 256)
        else:
            assert st[2]["variance"].dtype == want and "variance_absmax" not in st[2]


def test_eps1_none_is_the_parameters_own_epsilon():
    """torch's eps1=None is the parameter dtype's machine epsilon: bfloat16's is 2**-7."""
    from fastopt.optimizers._adafactor import eps1_of
    group = {"eps": (None, 1e-3)}
    assert eps1_of(group, _bf16()) == 2.0 ** -7
    assert eps1_of(group, np.float16) == 2.0 ** -10
    assert eps1_of(group, np.float32) == 2.0 ** -23


@pytest.mark.parametrize("backend", REFERENCE_BACKENDS)
@pytest.mark.parametrize("state_dtype, rounding", [(None, "stochastic"), ("int8", "nearest")])
def test_torch_adapter_half_tensors_match_the_numpy_api(backend, state_dtype, rounding):
    """fastopt.torch.Adafactor on bfloat16 tensors (float32 gradients on one): the NumPy API's
    bits, state for state (torch's names; 8-bit ``variance`` with ``variance_absmax``)."""
    bf16 = _bf16()
    params, grads = _fmt_problem(bf16, bf16, seed=6)
    options = dict(backend=backend, state_dtype=state_dtype, rounding=rounding, seed=9,
                   min_8bit_size=1000, **FMT_KW)
    ref = fastopt.Adafactor([p.copy() for p in params], **options)
    tps = [torch.from_numpy(p.reshape(-1).view(np.int16).copy()).view(torch.bfloat16)
           .reshape(p.shape).requires_grad_() for p in params]
    if hasattr(tps[0], "grad_dtype"):
        tps[0].grad_dtype = None
    opt = ft.Adafactor(tps, **options)
    for gs in grads:
        gs = list(gs)
        gs[0] = gs[0].astype(np.float32)                    # a float32 gradient
        ref.step(gs)
        for tp, g in zip(tps, gs):
            tp.grad = torch.from_numpy(g.copy()) if g.dtype == np.float32 else \
                torch.from_numpy(g.reshape(-1).view(np.int16).copy()).view(torch.bfloat16) \
                .reshape(g.shape)
        opt.step()
    for i, tp in enumerate(tps):
        got = tp.detach().view(torch.int16).numpy()
        np.testing.assert_array_equal(_raw(got), _raw(ref.params[i]), err_msg=str(i))
        for name, v in ref.state[i].items():
            if name == "step":
                continue
            t = opt.state[tp][name]
            h = t.view(torch.int16).numpy() if t.dtype is torch.bfloat16 else t.numpy()
            assert np.asarray(v).dtype.itemsize == h.dtype.itemsize, (i, name)
            np.testing.assert_array_equal(_raw(h), _raw(v), err_msg=f"{i} {name}")

"""The optimizers beyond the first six: bad input, Lion and LAMB against their papers, Schedule-Free's
train()/eval() against ``schedulefree``, and ``max_grad_norm`` / ``clip_grad_norm`` against
torch's ``clip_grad_norm_`` (their trajectories against torch.optim and schedulefree are in
tests/test_torch_conformance.py; against the float64 reference, NaN/Inf included, in
tests/test_conformance.py and tests/test_nonfinite.py)."""
import numpy as np
import pytest

import fastopt
from _support import HOST_BACKENDS, TOL, make_problem
from fastopt.specs import SPECS

W = lambda: [np.zeros(3)]  # noqa: E731


# -- bad input: every new hyperparameter, before anything is built ------------------------------
@pytest.mark.parametrize("cls, kw, exc, match", [
    (fastopt.Adamax, dict(betas=(0.9, 1.0)), ValueError, r"Invalid betas\[1\]"),
    (fastopt.Adamax, dict(eps=-1), ValueError, "Invalid eps"),
    (fastopt.NAdam, dict(momentum_decay=-1e-3), ValueError, "Invalid momentum_decay"),
    (fastopt.NAdam, dict(decoupled_weight_decay="yes"), TypeError, "decoupled_weight_decay"),
    (fastopt.RAdam, dict(betas=(-0.1, 0.9)), ValueError, r"Invalid betas\[0\]"),
    (fastopt.RAdam, dict(weight_decay=float("inf")), ValueError, "Invalid weight_decay"),
    (fastopt.Adadelta, dict(rho=1.5), ValueError, "Invalid rho"),
    (fastopt.Adadelta, dict(eps=-1e-6), ValueError, "Invalid eps"),
    (fastopt.ASGD, dict(lambd=-1), ValueError, "Invalid lambd"),
    (fastopt.ASGD, dict(alpha=-0.75), ValueError, "Invalid alpha"),
    (fastopt.ASGD, dict(t0=float("nan")), ValueError, "Invalid t0"),
    (fastopt.ASGD, dict(t0="10"), TypeError, "t0 must be a number"),
    (fastopt.Rprop, dict(etas=(1.2, 0.5)), ValueError, "Invalid etas"),
    (fastopt.Rprop, dict(etas=(0.5,)), ValueError, "Invalid etas"),
    (fastopt.Rprop, dict(step_sizes=(1.0, 0.1)), ValueError, "Invalid step_sizes"),
    (fastopt.Rprop, dict(step_sizes=(-1.0, 0.1)), ValueError, r"Invalid step_sizes\[0\]"),
    (fastopt.Lion, dict(betas=(0.9, 1.5)), ValueError, r"Invalid betas\[1\]"),
    (fastopt.Lion, dict(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
    (fastopt.AdamWScheduleFree, dict(warmup_steps=-1), ValueError, "Invalid warmup_steps"),
    (fastopt.AdamWScheduleFree, dict(warmup_steps=2.5), ValueError, "Invalid warmup_steps"),
    (fastopt.AdamWScheduleFree, dict(r=-1.0), ValueError, "Invalid r"),
    (fastopt.AdamWScheduleFree, dict(weight_lr_power=-2.0), ValueError,
     "Invalid weight_lr_power"),
    (fastopt.AdamWScheduleFree, dict(betas=(0.0, 0.999)), ValueError, "betas\\[0\\] > 0"),
    (fastopt.AdamWScheduleFree, dict(state_dtype="int8"), ValueError, "copy of the parameters"),
    (fastopt.LAMB, dict(betas=(0.9, 1.0)), ValueError, r"Invalid betas\[1\]"),
    (fastopt.LAMB, dict(eps=-1e-6), ValueError, "Invalid eps"),
    (fastopt.LAMB, dict(weight_decay=float("nan")), ValueError, "Invalid weight_decay"),
    (fastopt.LAMB, dict(state_dtype="int4"), ValueError, "state_dtype must be one of"),
    (fastopt.LAMB, dict(rounding="up"), ValueError, "rounding must be 'nearest' or"),
    (fastopt.Adam, dict(max_grad_norm=0.0), ValueError, "Invalid max_grad_norm: 0"),
    (fastopt.Adam, dict(max_grad_norm=-1.0), ValueError, "Invalid max_grad_norm"),
    (fastopt.Lion, dict(max_grad_norm=float("nan")), ValueError, "Invalid max_grad_norm"),
    (fastopt.SGD, dict(max_grad_norm="1"), TypeError, "max_grad_norm must be a number"),
])
def test_invalid_hyperparameters(cls, kw, exc, match):
    with pytest.raises(exc, match=match):
        cls(W(), **kw)


def test_bad_param_group_change_rejected_before_the_step():
    w = np.ones(4)
    opt = fastopt.Rprop([w], lr=0.1)
    opt.step([np.ones(4)])
    before, state = w.copy(), {k: v.copy() for k, v in opt.state[0].items() if k != "step"}
    opt.param_groups[0]["etas"] = (0.5, 0.9)
    with pytest.raises(ValueError, match="Invalid etas"):
        opt.step([np.ones(4)])
    np.testing.assert_array_equal(w, before)
    for k, v in state.items():
        np.testing.assert_array_equal(opt.state[0][k], v)


# -- Lion: the paper's Algorithm 2, written out here ------------------------------------------------
def _lion_paper(p, grads, lr, beta1, beta2, wd):
    m = np.zeros_like(p)
    for g in grads:
        c = beta1 * m + (1 - beta1) * g
        p = p - lr * (np.sign(c) + wd * p)
        m = beta2 * m + (1 - beta2) * g
    return p, m


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("wd", [0.0, 0.1])
def test_lion_matches_the_paper(backend, dtype, wd):
    rng = np.random.default_rng(7)
    p0 = rng.standard_normal(4099).astype(dtype)
    grads = [rng.standard_normal(4099).astype(dtype) for _ in range(30)]
    grads[3][:5] = 0.0       # sign(0) = 0: no update from the sign there
    want, m = _lion_paper(p0.astype(np.float64), [g.astype(np.float64) for g in grads],
                          3e-3, 0.9, 0.99, wd)
    p = p0.copy()
    opt = fastopt.Lion([p], lr=3e-3, betas=(0.9, 0.99), weight_decay=wd, backend=backend)
    for g in grads:
        opt.step([g])
    # sign() flips where the interpolation is within rounding of 0: compare robustly
    close = np.isclose(p, want, **TOL[dtype])
    assert close.mean() > 0.999, close.mean()
    np.testing.assert_allclose(opt.state[0]["exp_avg"], m, **TOL[dtype])
    assert np.abs(p - p0).max() > 0.05


def test_lion_update_is_a_sign():
    """Each coordinate moves by exactly lr (no weight decay) whatever the gradient's scale."""
    p = np.zeros(5)
    opt = fastopt.Lion([p], lr=0.5)
    opt.step([np.array([1e-9, -3.0, 0.0, 1e6, -1e-30])])
    np.testing.assert_array_equal(p, [-0.5, 0.5, 0.0, -0.5, 0.5])


# -- LAMB: the paper's Algorithm 2 (phi = identity, bias correction on), written out here ----------
def _lamb_paper(params, grads, lr, beta1, beta2, eps, wd, maximize=False):
    params = [p.astype(np.float64) for p in params]
    ms = [np.zeros_like(p) for p in params]
    vs = [np.zeros_like(p) for p in params]
    for t, gs in enumerate(grads, 1):
        for k, (p, g) in enumerate(zip(params, gs)):
            g = -g.astype(np.float64) if maximize else g.astype(np.float64)
            ms[k] = beta1 * ms[k] + (1 - beta1) * g
            vs[k] = beta2 * vs[k] + (1 - beta2) * g * g
            m_hat, v_hat = ms[k] / (1 - beta1 ** t), vs[k] / (1 - beta2 ** t)
            u = m_hat / (np.sqrt(v_hat) + eps) + wd * p
            pn, un = np.linalg.norm(p), np.linalg.norm(u)
            r = pn / un if pn > 0 and un > 0 else 1.0
            params[k] = p - lr * r * u
    return params, ms, vs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("kw", [dict(), dict(weight_decay=0.1, maximize=True, betas=(0.8, 0.95))],
                         ids=["defaults", "wd-max-betas"])
def test_lamb_matches_the_paper(backend, dtype, kw, small_threshold):
    """Per-tensor trust ratios: tensors of very different scales (and a zero one, whose ratio is
    1), on the threaded path (small_threshold) and in an Arena (one row per tensor)."""
    rng = np.random.default_rng(11)
    sizes, scales = [5, 4097, 300, 0, 64], [1.0, 0.01, 30.0, 1.0, 0.0]
    p0 = [(s * rng.standard_normal(n)).astype(dtype) for n, s in zip(sizes, scales)]
    grads = [[rng.standard_normal(n).astype(dtype) for n in sizes] for _ in range(20)]
    want, ms, vs = _lamb_paper(p0, grads, 0.02, *kw.get("betas", (0.9, 0.999)), 1e-6,
                               kw.get("weight_decay", 0.0), kw.get("maximize", False))
    for arena in (False, True):
        ps = [p.copy() for p in p0]
        if arena:
            ar = fastopt.Arena({str(k): p for k, p in enumerate(ps)})
            ps = [ar.params[str(k)] for k in range(len(sizes))]
        opt = fastopt.LAMB(ps, lr=0.02, backend=backend, **kw)
        for gs in grads:
            assert opt.step(gs) is True
        assert opt.kernel_rows == [[n for n in sizes if n]]
        for k, (p, w) in enumerate(zip(ps, want)):
            np.testing.assert_allclose(p, w, **TOL[dtype], err_msg=f"param {k} arena={arena}")
            np.testing.assert_allclose(opt.state[k]["exp_avg"], ms[k], **TOL[dtype])
            np.testing.assert_allclose(opt.state[k]["exp_avg_sq"], vs[k], **TOL[dtype])
    # the trust ratio really acted: the 30x tensor moved ~30x as far as the unit one
    moved = [np.abs(w - p.astype(np.float64)).mean() if p.size else 0.0
             for w, p in zip(want, p0)]
    assert moved[2] > 10 * moved[0] > 100 * moved[1]
    assert moved[4] > 0      # zero tensor: ratio 1, it moves by lr*u


def _lane_sum(terms):
    """The host backends' order of a reduction (``_codegen.SUM_BLOCK``, ``SUM_LANES``): per block,
    element i into float64 lane i % SUM_LANES, the lanes in order; then the blocks in order."""
    from fastopt.kernels._codegen import SUM_BLOCK, SUM_LANES
    total = 0.0
    for b in range(0, terms.size, SUM_BLOCK):
        block = terms[b:b + SUM_BLOCK].astype(np.float64)
        lanes = [0.0] * SUM_LANES
        for i, x in enumerate(block.tolist()):
            lanes[i % SUM_LANES] += x
        acc = 0.0
        for x in lanes:
            acc += x
        total += acc
    return total


@pytest.mark.parametrize("threads", [False, True], ids=["serial", "threaded"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lamb_sums_in_one_fixed_order(dtype, threads, request):
    """LAMB's per-tensor sums on the compiled host backends: exactly the documented order
    (``sum(p*p)`` against a Python loop in that order), and the same bits on Numba and Cython
    (``sum(u*u)`` too), serial or threaded, on sizes with partial lanes and blocks."""
    from fastopt.kernels import formats as F, get_backend
    if threads:
        request.getfixturevalue("small_threshold")
    backends = [b for b in HOST_BACKENDS if b != "numpy"]
    rng = np.random.default_rng(4)
    f = F.tag(np.dtype(dtype))
    sc = (1.0, 0.9, 0.1, 0.999, 0.001, 10.0, 1 / np.sqrt(0.001), 1e-6, 0.01)
    for n in (1, 63, 64, 4096, 2 * 4096 + 77):
        p = rng.standard_normal(n).astype(dtype)
        g = rng.standard_normal(n).astype(dtype)
        got = []
        for name in backends:
            be = get_backend(name)
            m, v = np.zeros(n, dtype), np.zeros(n, dtype)
            kernel = be.kernel("lamb", np.dtype(dtype), (True,), (f, f, f, f), "nearest")
            (sums,) = be.bind(kernel, [(p, g, m, v)])(sc, 1)
            got.append(sums)
        assert got[0][0] == _lane_sum(p * p), n
        assert len(set(got)) == 1, (n, dict(zip(backends, got)))


def test_lamb_two_passes_bytes():
    """40 bytes per float32 element: pass 1 reads p, g, m, v and writes m, v; pass 2 reads p, m,
    v and writes p."""
    spec = fastopt.LAMB.spec
    assert spec.bytes_per_element(spec.defaults()) == 40


def test_lamb_8bit_bytes():
    """With 8-bit state LAMB's passes are ``q8_rules``: the first only reads p, g and the codes,
    the second reads them and writes p and the codes: 26 bytes per float32 element (the absmax
    aside), against 40 with float32 state."""
    from fastopt.kernels import rule_signature
    first, second = fastopt.LAMB.spec.q8_rules
    reads = lambda sig: len(sig.arrays)                     # noqa: E731
    writes = lambda sig: len(sig.written)                   # noqa: E731
    a, b = rule_signature(first), rule_signature(second)
    assert writes(a) == 0 and a.sums == ("param_sq", "update_sq")
    assert b.written == ("param", "exp_avg", "exp_avg_sq")
    itemsize = {"param": 4, "grad": 4, "exp_avg": 1, "exp_avg_sq": 1}
    total = sum(itemsize[x] for x in a.arrays) + sum(itemsize[x] for x in b.arrays) + \
        sum(itemsize[x] for x in b.written)
    assert total == 26


# -- Schedule-Free AdamW: train()/eval() and checkpoints, against schedulefree --------------------
def _sf_pair(kw, backend="numpy"):
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(33)
    grads = [rng.standard_normal(33) for _ in range(12)]
    p = p0.copy()
    ours = fastopt.AdamWScheduleFree([p], backend=backend, **kw)
    tp = torch.tensor(p0.copy(), requires_grad=True)
    theirs = schedulefree.AdamWScheduleFree([tp], foreach=False, **kw)
    return torch, p, ours, tp, theirs, grads


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_schedule_free_train_eval_matches_schedulefree(backend):
    torch, p, ours, tp, theirs, grads = _sf_pair(dict(lr=0.05, warmup_steps=3,
                                                      weight_decay=0.01), backend)
    ours.train()
    theirs.train()
    for i, g in enumerate(grads):
        ours.step([g])
        tp.grad = torch.tensor(g)
        theirs.step()
        if i in (4, 9):      # evaluate at x, then back to y
            ours.eval()
            theirs.eval()
            np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
            before = p.copy()
            with pytest.raises(RuntimeError, match="call train"):
                ours.step([g])
            np.testing.assert_array_equal(p, before)      # nothing changed
            ours.eval()                                   # a no-op when already there
            np.testing.assert_array_equal(p, before)
            ours.train()
            theirs.train()
        np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-12, atol=1e-14)
    for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
        assert ours.param_groups[0][key] == pytest.approx(theirs.param_groups[0][key]), key
    np.testing.assert_allclose(ours.state[0]["z"], theirs.state[tp]["z"].numpy(), rtol=1e-12)


def test_schedule_free_checkpoint_resumes_bit_for_bit(tmp_path):
    rng = np.random.default_rng(4)
    p = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(8)]
    opt = fastopt.AdamWScheduleFree([p], lr=0.02, warmup_steps=2)
    for g in grads[:4]:
        opt.step([g])
    opt.eval()
    fastopt.save(opt, tmp_path / "sf.npz")
    saved = p.copy()
    opt.train()
    for g in grads[4:]:
        opt.step([g])
    q = saved.copy()
    fresh = fastopt.AdamWScheduleFree([q], lr=0.02, warmup_steps=2)
    fastopt.load(fresh, tmp_path / "sf.npz")
    assert fresh.param_groups[0]["train_mode"] is False and fresh.param_groups[0]["k"] == 4
    fresh.train()
    for g in grads[4:]:
        fresh.step([g])
    np.testing.assert_array_equal(q, p)


def test_schedule_free_torch_adapter_train_eval():
    torch = pytest.importorskip("torch")
    schedulefree = pytest.importorskip("schedulefree")
    import fastopt.torch as ft
    torch.manual_seed(0)
    a = torch.randn(4, 5, requires_grad=True)
    b = a.detach().clone().requires_grad_()
    ours, theirs = ft.AdamWScheduleFree([a], lr=0.03), schedulefree.AdamWScheduleFree(
        [b], lr=0.03, foreach=False)
    ours.train()
    theirs.train()
    for i in range(6):
        g = torch.randn(4, 5)
        a.grad, b.grad = g.clone(), g.clone()
        ours.step()
        theirs.step()
    ours.eval()
    theirs.eval()
    torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="call train"):
        ours.step()
    sd = ours.state_dict()
    assert set(sd["state"][0]) == set(theirs.state_dict()["state"][0]) == {"z", "exp_avg_sq"}
    assert sd["param_groups"][0]["k"] == 6 and sd["param_groups"][0]["train_mode"] is False


# -- max_grad_norm and clip_grad_norm ---------------------------------------------------------------
def _clip_problem(dtype, scale=10.0, seed=0):
    params, grads = make_problem([7, 12, 4097], dtype, seed=seed)
    grads = [{k: (v * scale).astype(dtype) for k, v in g.items()} for g in grads]
    return params, grads


FIRST_CASES = [pytest.param(s, next(iter(s.cases.values())), id=s.name) for s in SPECS]


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("spec, kw", FIRST_CASES)
def test_max_grad_norm_equals_clip_then_step(spec, kw, backend):
    """Every optimizer: clipping inside the step = clip_grad_norm on copies, then the step; the
    gradients themselves are never written."""
    cls = getattr(fastopt, spec.name)
    params, grads = _clip_problem(np.float64)
    ref = {k: v.copy() for k, v in params.items()}
    opt = cls(params, backend=backend, max_grad_norm=1.5, **kw)
    ref_opt = cls(ref, backend="numpy", **kw)
    for t in range(6):
        g = grads[t % len(grads)]
        kept = {k: v.copy() for k, v in g.items()}
        assert opt.step(g) is True
        clipped = {k: v.copy() for k, v in g.items()}
        norm = fastopt.clip_grad_norm(clipped, 1.5)
        assert opt.last_grad_norm == pytest.approx(norm, rel=1e-12)
        assert norm > 1.5       # the clip really acted
        ref_opt.step(clipped)
        for k in g:
            np.testing.assert_array_equal(g[k], kept[k])   # not written
    for k in params:
        np.testing.assert_allclose(params[k], ref[k], rtol=1e-10, atol=1e-12, err_msg=k)


def test_max_grad_norm_below_threshold_changes_nothing():
    params, grads = _clip_problem(np.float64, scale=1e-3)
    a = {k: v.copy() for k, v in params.items()}
    opt_a = fastopt.AdamW(a, max_grad_norm=100.0)
    opt_b = fastopt.AdamW(params)
    for g in grads:
        opt_a.step(g)
        opt_b.step(g)
    for k in params:
        np.testing.assert_array_equal(a[k], params[k])


@pytest.mark.parametrize("name", ["Adam", "AdamW", "SGD", "NAdam", "RAdam", "Adagrad"])
def test_max_grad_norm_matches_torch_clip_grad_norm(name):
    torch = pytest.importorskip("torch")
    import fastopt.torch as ft
    spec = next(s for s in SPECS if s.name == name)
    kw = next(iter(spec.cases.values()))
    params, grads = _clip_problem(np.float32, seed=1)
    tps = [torch.from_numpy(v.copy()).requires_grad_() for v in params.values()]
    fps = [torch.from_numpy(v.copy()).requires_grad_() for v in params.values()]
    tcls = getattr(torch.optim, name)
    topt = tcls(tps, foreach=False, **kw)
    fopt = getattr(ft, name)(fps, max_grad_norm=2.0, **kw)
    nopt = getattr(fastopt, name)(params, max_grad_norm=2.0, **kw)
    for g in grads:
        for tp, fp, v in zip(tps, fps, g.values()):
            tp.grad, fp.grad = torch.from_numpy(v.copy()), torch.from_numpy(v.copy())
        want_norm = float(torch.nn.utils.clip_grad_norm_(tps, 2.0))
        topt.step()
        fopt.step()
        nopt.step(g)
        assert fopt.last_grad_norm == pytest.approx(want_norm, rel=1e-5)
        assert nopt.last_grad_norm == pytest.approx(want_norm, rel=1e-5)
        for fp, v in zip(fps, g.values()):
            np.testing.assert_array_equal(fp.grad.numpy(), v)     # fastopt never wrote it
    for tp, fp, v in zip(tps, fps, params.values()):
        np.testing.assert_allclose(fp.detach().numpy(), tp.detach().numpy(), **TOL[np.float32])
        np.testing.assert_allclose(v, tp.detach().numpy(), **TOL[np.float32])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, "overflow"])
def test_max_grad_norm_nonfinite(backend, bad):
    params, grads = _clip_problem(np.float32)
    g = {k: v.copy() for k, v in grads[0].items()}
    if isinstance(bad, str):      # "overflow": every value finite, the sum of squares is not
        g["p2"][:] = np.float32(3e38)
    else:
        g["p1"].flat[3] = bad
    for mode in ("skip", "raise"):
        ps = {k: v.copy() for k, v in params.items()}
        opt = fastopt.Adam(ps, max_grad_norm=1.0, nonfinite=mode, backend=backend)
        opt.step(grads[1])
        before = {k: v.copy() for k, v in ps.items()}
        st = {k: v.copy() for k, v in opt.state["p2"].items() if k != "step"}
        if mode == "raise":
            with pytest.raises(FloatingPointError, match="non-finite gradient norm"):
                opt.step(g)
        else:
            assert opt.step(g) is False and opt.skipped_steps == 1
        for k in ps:
            np.testing.assert_array_equal(ps[k], before[k])
        for k, v in st.items():
            np.testing.assert_array_equal(opt.state["p2"][k], v)
        assert opt.step_count == 1
    # propagate: torch's factor (NaN for a NaN norm: every parameter becomes NaN; 0 for Inf)
    ps = {k: v.copy() for k, v in params.items()}
    opt = fastopt.SGD(ps, lr=0.1, max_grad_norm=1.0, backend=backend)
    assert opt.step(g) is True
    if bad is np.nan:
        assert all(np.isnan(v).all() for v in ps.values())
    else:   # factor 0: g*0 is 0 for finite values (NaN where g was Inf)
        np.testing.assert_array_equal(ps["p0"], params["p0"])


def test_clip_grad_norm_matches_torch():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) * 5 for s in [(3, 4), (100,), (1,)]]
    tg = [torch.from_numpy(g.copy()) for g in grads]
    params = [torch.zeros_like(x, requires_grad=True) for x in tg]
    for p, g in zip(params, tg):
        p.grad = g.clone()
    want = float(torch.nn.utils.clip_grad_norm_(params, 1.0))
    got = fastopt.clip_grad_norm(grads, 1.0)
    assert got == pytest.approx(want, rel=1e-6)
    for g, p in zip(grads, params):
        np.testing.assert_allclose(g, p.grad.numpy(), rtol=1e-6)
    small = [np.array([0.1, 0.2])]
    assert fastopt.clip_grad_norm(small, 1.0) == pytest.approx(np.sqrt(0.05))
    np.testing.assert_array_equal(small[0], [0.1, 0.2])        # below the threshold: unscaled
    with pytest.raises(ValueError, match="Invalid max_norm"):
        fastopt.clip_grad_norm(small, -1.0)
    with pytest.raises(TypeError, match=r"grads\[0\] must be an array"):
        fastopt.clip_grad_norm([[1.0, 2.0]], 1.0)
    nan = [np.array([np.nan, 1.0])]
    with pytest.raises(FloatingPointError):
        fastopt.clip_grad_norm(nan, 1.0, error_if_nonfinite=True)
    assert nan[0][1] == 1.0                                        # nothing scaled

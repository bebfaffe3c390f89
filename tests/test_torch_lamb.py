"""fastopt.torch.LAMB: the NumPy API's LAMB bit for bit (same kernels, one row per tensor),
the paper's Algorithm 2 with non-contiguous and gradient-less parameters, checkpoints that
resume bit for bit, ``max_grad_norm`` against ``clip_grad_norm_``, 16-bit parameters and
16-bit or 8-bit state as the NumPy API's, and a re-typed parameter refused before anything
changes (DDP and FSDP2: tests/test_torch_distributed.py)."""
import io

import numpy as np
import pytest

from _support import HOST_BACKENDS, TOL
from test_new_optimizers import _lamb_paper

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

SHAPES = [(5,), (70, 60), (3,), (0,), (64,)]
SCALES = [1.0, 0.01, 30.0, 1.0, 0.0]   # very different norms; the last tensor is zero
STEPS = 12


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    p0 = [(s * rng.standard_normal(shape)).astype(dtype) for shape, s in zip(SHAPES, SCALES)]
    grads = [[rng.standard_normal(shape).astype(dtype) for shape in SHAPES]
             for _ in range(STEPS)]
    return p0, grads


def _tensors(arrays):
    return [torch.tensor(a, requires_grad=True) for a in arrays]


def _set_grads(ps, gs):
    for p, g in zip(ps, gs):
        p.grad = torch.tensor(g)


KW = [dict(lr=0.02), dict(lr=0.02, weight_decay=0.1, maximize=True, betas=(0.8, 0.95), eps=1e-8)]


@pytest.mark.parametrize("flatten", [False, True], ids=["tensors", "flatten"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("kw", KW, ids=["defaults", "wd-max-betas-eps"])
def test_matches_numpy_api_bit_for_bit(kw, backend, dtype, flatten):
    """Two param groups (the second with half the lr); the NumPy API's LAMB on the same arrays:
    the same parameters and state, bit for bit (each tensor is its own row either way, even in
    one flat buffer, so the sums are added in the same order)."""
    p0, grads = _problem(dtype)
    nps = [p.copy() for p in p0]
    groups = lambda ps: [{"params": ps[:2]}, {"params": ps[2:], "lr": kw["lr"] / 2}]  # noqa
    ref = fastopt.LAMB(groups(nps), backend=backend, **kw)
    tps = _tensors(p0)
    opt = ft.LAMB(groups(tps), backend=backend, flatten=flatten, **kw)
    for gs in grads:
        ref.step(gs)
        _set_grads(tps, gs)
        opt.step()
    sd = opt.state_dict()["state"]
    for k, (a, t) in enumerate(zip(nps, tps)):
        np.testing.assert_array_equal(t.detach().numpy(), a, err_msg=f"param {k}")
        for name in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_array_equal(sd[k][name].numpy().reshape(-1),
                                          ref.state[k][name].reshape(-1), err_msg=name)
        assert int(sd[k]["step"]) == STEPS
    assert not np.array_equal(tps[1].detach().numpy(), p0[1])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_matches_the_paper_with_odd_tensors(backend):
    """A transposed (non-contiguous) parameter, stepped in place; a parameter without a gradient
    on some steps (skipped, its step count does not advance, so its bias corrections lag)."""
    p0, grads = _problem(np.float64, seed=3)
    tps = _tensors(p0)
    t1 = torch.tensor(p0[1].T.copy()).t().requires_grad_()   # values of p0[1], transposed memory
    assert not t1.is_contiguous()
    tps[1] = t1
    opt = ft.LAMB(tps, lr=0.05, weight_decay=0.01, backend=backend)
    skip = {2, 5}          # steps where parameter 0 has no gradient
    for i, gs in enumerate(grads):
        _set_grads(tps, gs)
        if i in skip:
            tps[0].grad = None
        opt.step()
    for k in range(len(SHAPES)):
        gk = [gs[k] for i, gs in enumerate(grads) if not (k == 0 and i in skip)]
        want, ms, vs = _lamb_paper([p0[k]], [[g] for g in gk], 0.05, 0.9, 0.999, 1e-6, 0.01)
        np.testing.assert_allclose(tps[k].detach().numpy(), want[0], **TOL[np.float64],
                                   err_msg=f"param {k}")
        np.testing.assert_allclose(opt.state[tps[k]]["exp_avg"].numpy(), ms[0],
                                   **TOL[np.float64])
    assert int(opt.state[tps[0]]["step"]) == STEPS - len(skip)
    assert t1.stride() == (1, 70)          # still the caller's layout


@pytest.mark.parametrize("flatten", [False, True], ids=["tensors", "flatten"])
def test_checkpoint_resumes_bit_for_bit(flatten):
    p0, grads = _problem(np.float32, seed=5)
    a, b = _tensors(p0), _tensors(p0)
    oa = ft.LAMB(a, lr=0.01, weight_decay=0.05, flatten=flatten)
    for gs in grads[:5]:
        _set_grads(a, gs)
        oa.step()
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in a], "optim": oa.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)
    with torch.no_grad():
        for p, q in zip(b, ckpt["params"]):
            p.copy_(q)
    ob = ft.LAMB(b, lr=0.01, weight_decay=0.05, flatten=flatten)
    ob.load_state_dict(ckpt["optim"])
    for gs in grads[5:]:
        _set_grads(a, gs)
        _set_grads(b, gs)
        oa.step()
        ob.step()
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    for p, q in zip(a, b):
        for name in ("step", "exp_avg", "exp_avg_sq"):
            assert torch.equal(oa.state[p][name], ob.state[q][name]), name


def test_max_grad_norm_matches_clip_grad_norm():
    """The clip factor folded into the first pass: the same step as ``clip_grad_norm_`` then
    LAMB, to rounding; the gradients are never written."""
    p0, grads = _problem(np.float32, seed=7)
    a, b = _tensors(p0), _tensors(p0)
    oa = ft.LAMB(a, lr=0.01, max_grad_norm=5.0)
    ob = ft.LAMB(b, lr=0.01)
    clipped = 0
    for gs in grads:
        _set_grads(a, gs)
        _set_grads(b, gs)
        norm = float(torch.nn.utils.clip_grad_norm_(b, 5.0))
        clipped += norm > 5.0
        oa.step()
        ob.step()
        assert oa.last_grad_norm == pytest.approx(norm, rel=1e-5)
        for p, g in zip(a, gs):
            np.testing.assert_array_equal(p.grad.numpy(), g)
    assert clipped == STEPS      # every step was clipped (the norm is ~75)
    for p, q in zip(a, b):
        np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), **TOL[np.float32])


def _np(t):
    """A tensor's values as a NumPy array of its dtype (bfloat16 as ml_dtypes')."""
    import ml_dtypes
    t = t.detach()
    if t.dtype is torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


# (the adapter's path is the same on every backend; the NumPy API's layouts are compared across
# backends in tests/test_formats.py and tests/test_int8.py: Numba's compile on first use is not
# run again here)
@pytest.mark.parametrize("backend", [b for b in HOST_BACKENDS if b != "numba"] or HOST_BACKENDS)
@pytest.mark.parametrize("pdtype, gdtype, state_dtype, rounding", [
    (torch.bfloat16, torch.bfloat16, None, "stochastic"),
    (torch.bfloat16, torch.float32, "int8", "nearest"),
    (torch.float16, torch.float16, "bfloat16", "stochastic"),
    (torch.float32, torch.float32, "int8", "stochastic"),
], ids=["bf16", "bf16-f32grad-int8", "f16-bf16state", "f32-int8"])
def test_storage_formats_match_numpy_api_bit_for_bit(backend, pdtype, gdtype, state_dtype,
                                                     rounding):
    """bfloat16/float16 parameters, 16-bit and 8-bit state, stochastic rounding: the NumPy
    API's LAMB on the same values, bit for bit (the same kernels; the 8-bit state in
    bitsandbytes' keys here, ``exp_avg``/``exp_avg_absmax`` there)."""
    p0, grads = _problem(np.float32, seed=3)
    tps = [torch.tensor(a).to(pdtype).requires_grad_() for a in p0]
    for t in tps:
        if gdtype is not pdtype and hasattr(t, "grad_dtype"):
            t.grad_dtype = None        # torch >= 2.10: allow a float32 .grad on a half tensor
    nps = [_np(t) for t in tps]
    options = dict(lr=0.02, weight_decay=0.01, state_dtype=state_dtype, rounding=rounding,
                   seed=7, min_8bit_size=1000)
    ref = fastopt.LAMB(nps, backend=backend, **options)
    opt = ft.LAMB(tps, backend=backend, **options)
    for gs in grads[:6]:
        tg = [torch.tensor(g).to(gdtype) for g in gs]
        ref.step([_np(g) for g in tg])
        for p, g in zip(tps, tg):
            p.grad = g
        opt.step()
    for k, (t, a) in enumerate(zip(tps, nps)):
        assert t.dtype is pdtype
        np.testing.assert_array_equal(_np(t).view(np.uint8), a.view(np.uint8), err_msg=str(k))
        st, want = opt.state[t], ref.state[k]
        q8 = state_dtype == "int8"
        for j, name in enumerate(("exp_avg", "exp_avg_sq"), start=1):
            got = st[f"state{j}" if q8 else name]
            np.testing.assert_array_equal(_np(got).view(np.uint8), want[name].view(np.uint8),
                                          err_msg=f"{k} {name}")
            if name + "_absmax" in want:
                assert got.dtype is torch.uint8
                np.testing.assert_array_equal(st[f"absmax{j}"].numpy(), want[name + "_absmax"])


@pytest.mark.parametrize("cls", [ft.LAMB, ft.Adam])
def test_retyped_parameter_is_refused_before_anything_changes(cls):
    """``p.data`` turned bfloat16 after a step, its float32 state left behind: the next step
    raises naming the parameter, and no parameter or state (of any tensor, in any param group)
    has changed."""
    p0, grads = _problem(np.float32, seed=9)
    ps = _tensors(p0)
    opt = cls([{"params": ps[:3]}, {"params": ps[3:]}], lr=0.01)
    _set_grads(ps, grads[0])
    opt.step()
    ps[4].grad = None
    ps[4].data = ps[4].data.to(torch.bfloat16)
    _set_grads(ps[:4], grads[1])
    ps[4].grad = torch.tensor(grads[1][4]).to(torch.bfloat16)
    before = [p.detach().clone() for p in ps]
    state = {k: {n: v.clone() for n, v in opt.state[p].items()} for k, p in enumerate(ps)}
    with pytest.raises(TypeError, match=r"param_groups\[1\].*bfloat16.*has state 'exp_avg' of "
                                        r"dtype torch.float32.*nothing was changed"):
        opt.step()
    for k, p in enumerate(ps):
        assert torch.equal(p.detach(), before[k])
        for n, v in state[k].items():
            assert torch.equal(opt.state[p][n], v), (k, n)

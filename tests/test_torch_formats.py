"""fastopt.torch with bfloat16/float16 tensors, float32 gradients of half parameters,
``state_dtype`` and ``rounding``: the same bits as the NumPy classes, torch's fused bfloat16 step,
checkpoints that convert, and bad input."""
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from _support import HOST_BACKENDS  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)


def _np(t):
    t = t.detach()
    return t.view(torch.int16).numpy().view(BF16) if t.dtype == torch.bfloat16 else t.numpy()


def _bits(t):
    return t.detach().view(torch.int16) if t.element_size() == 2 else t.detach()


CASES = [("AdamW", {}), ("Adam", {"amsgrad": True, "weight_decay": 0.01}),
         ("SGD", {"momentum": 0.9, "nesterov": True}), ("SGD", {}),
         ("RMSprop", {"centered": True, "momentum": 0.5}), ("Adagrad", {"lr_decay": 0.01}),
         ("Momentum", {})]


# (dtype, gradient dtype, state_dtype, flatten); flatten mode keeps gradients in the
# parameters' dtype
LAYOUTS = [(torch.bfloat16, torch.bfloat16, None, False),
           (torch.bfloat16, torch.bfloat16, None, True),
           (torch.bfloat16, torch.float32, "float32", False),
           (torch.float16, torch.float32, "bfloat16", False),
           (torch.float16, torch.float16, "float32", True),
           (torch.float32, torch.float32, "bfloat16", False),
           (torch.float32, torch.float32, "bfloat16", True)]


@pytest.mark.parametrize("rounding", ["nearest", "stochastic"])
@pytest.mark.parametrize("dtype, gdtype, state_dtype, flatten", LAYOUTS,
                         ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("name, kw", CASES, ids=[f"{n}{'-' if k else ''}{'-'.join(k)}"
                                                 for n, k in CASES])
def test_same_bits_as_the_numpy_classes(name, kw, dtype, gdtype, state_dtype, flatten, rounding):
    torch.manual_seed(0)
    ps = [torch.randn(n).to(dtype).requires_grad_() for n in (3000, 7, 300)]
    if gdtype != dtype:
        for p in ps:
            p.grad_dtype = None        # torch >= 2.10: allow a float32 .grad on a half tensor
    arrays = [_np(p).copy() for p in ps]
    options = dict(state_dtype=state_dtype, rounding=rounding, seed=7)
    topt = getattr(ft, name)(ps, lr=1e-2, flatten=flatten, **options, **kw)
    nopt = getattr(fastopt, name)(arrays, lr=1e-2, backend="numpy", **options, **kw)
    for _ in range(4):
        gs = [torch.randn(p.shape).to(gdtype) for p in ps]
        for p, g in zip(ps, gs):
            if flatten:
                p.grad.copy_(g)
            else:
                p.grad = g
        topt.step()
        nopt.step([_np(g) for g in gs])
    for i, (p, a) in enumerate(zip(ps, arrays)):
        assert p.dtype == dtype
        np.testing.assert_array_equal(_np(p).view(np.uint16) if p.element_size() == 2
                                      else _np(p), a.view(np.uint16) if a.itemsize == 2 else a)
        for k, v in nopt.state[i].items():
            if k == "step":
                continue
            tv = topt.state[p][k]
            assert np.dtype(_np(tv).dtype) == v.dtype
            np.testing.assert_array_equal(_np(tv).reshape(-1).view(np.uint8),
                                          v.reshape(-1).view(np.uint8))


@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_all_bfloat16_adam_agrees_with_torch_fused(name):
    """torch's fused CPU Adam(W) on bfloat16 parameters keeps bfloat16 state and rounds to
    nearest, computing in float32: fastopt's all-bfloat16 step is the same update."""
    torch.manual_seed(0)
    p0 = torch.randn(50_000).bfloat16()
    a, b = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    oa = getattr(ft, name)([a], lr=1e-3, weight_decay=0.01)
    ob = getattr(torch.optim, name)([b], lr=1e-3, weight_decay=0.01, fused=True)
    for _ in range(10):
        g = torch.randn(50_000).bfloat16()
        a.grad, b.grad = g.clone(), g.clone()
        oa.step()
        ob.step()
    assert (_bits(a) == _bits(b)).float().mean() > 0.999
    torch.testing.assert_close(a.float(), b.float(), rtol=2 ** -7, atol=1e-3)
    for k in ("exp_avg", "exp_avg_sq"):
        assert oa.state[a][k].dtype == torch.bfloat16
        assert (_bits(oa.state[a][k]) == _bits(ob.state[b][k])).float().mean() > 0.999


def test_float32_grads_of_bfloat16_params_and_state_dtype_float32():
    model = torch.nn.Linear(20, 5).to(torch.bfloat16)
    for p in model.parameters():
        p.grad_dtype = None
    opt = ft.AdamW(model.parameters(), lr=1e-2, state_dtype="float32", rounding="stochastic")
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.ones(p.shape, dtype=torch.float32)
    opt.step()
    for p, b in zip(model.parameters(), before):
        assert p.dtype == torch.bfloat16 and not torch.equal(p, b)
        assert opt.state[p]["exp_avg"].dtype == torch.float32
        torch.testing.assert_close(opt.state[p]["exp_avg"], torch.full(p.shape, 0.1))


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_resume_with_stochastic_rounding_is_bit_exact(backend, tmp_path):
    def model():
        torch.manual_seed(3)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                   torch.nn.Linear(16, 2)).to(torch.bfloat16)

    def train(m, opt, steps, start=0):
        for i in range(start, start + steps):
            g = torch.Generator().manual_seed(i)
            x = torch.randn(4, 8, generator=g).bfloat16()
            opt.zero_grad()
            m(x).float().pow(2).mean().backward()
            opt.step()

    options = dict(backend=backend, rounding="stochastic", seed=2, state_dtype="bfloat16")
    a = model()
    oa = ft.AdamW(a.parameters(), lr=1e-2, **options)
    train(a, oa, 6)
    b = model()
    ob = ft.AdamW(b.parameters(), lr=1e-2, **options)
    train(b, ob, 3)
    torch.save({"model": b.state_dict(), "opt": ob.state_dict()}, tmp_path / "ck.pt")
    ck = torch.load(tmp_path / "ck.pt")
    c = model()
    c.load_state_dict(ck["model"])
    oc = ft.AdamW(c.parameters(), lr=1e-2, **options)
    oc.load_state_dict(ck["opt"])
    train(c, oc, 3, start=3)
    for pa, pc in zip(a.parameters(), c.parameters()):
        assert torch.equal(_bits(pa), _bits(pc))


def test_loading_converts_between_state_dtypes():
    torch.manual_seed(0)
    w = torch.randn(100, requires_grad=True)
    src = ft.Adam([w], lr=1e-2)
    w.grad = torch.randn(100)
    src.step()
    sd = src.state_dict()
    v = torch.randn(100, requires_grad=True)
    dst = ft.Adam([v], lr=1e-2, state_dtype="bfloat16")
    dst.load_state_dict(sd)
    assert dst.state[v]["exp_avg"].dtype == torch.bfloat16
    assert torch.equal(dst.state[v]["exp_avg"], sd["state"][0]["exp_avg"].bfloat16())
    assert dst.state[v]["exp_avg"].data_ptr() != sd["state"][0]["exp_avg"].data_ptr()


@pytest.mark.parametrize("kw, exc, match", [
    (dict(state_dtype="float64"), ValueError, "state_dtype must be one of"),
    (dict(state_dtype=torch.float16), ValueError, "got 'float16'"),
    (dict(rounding="floor"), ValueError, "rounding must be 'nearest' or 'stochastic'"),
    (dict(seed=2 ** 32), ValueError, r"seed must be in \[0, 2\*\*32\)"),
])
def test_bad_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        ft.AdamW([torch.zeros(3, requires_grad=True)], **kw)


def test_state_dtype_as_a_torch_dtype():
    assert ft.AdamW([torch.zeros(3, requires_grad=True)],
                    state_dtype=torch.bfloat16).state_dtype == "bfloat16"


def test_gradient_of_another_dtype_changes_nothing():
    w = torch.ones(5, dtype=torch.bfloat16, requires_grad=True)
    w.grad_dtype = None
    opt = ft.Adam([w], lr=0.1)
    w.grad = torch.ones(5, dtype=torch.float16)
    with pytest.raises(TypeError, match=r"gradient has dtype torch.float16, the parameter "
                                        r"torch.bfloat16 \(a gradient has its parameter's dtype "
                                        r"or float32\)"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(5, dtype=torch.bfloat16))
    assert not opt.state.get(w)

"""fastopt.torch with bfloat16/float16 tensors, float32 gradients of half parameters,
``state_dtype`` and ``rounding``: the same bits as the NumPy classes, torch's fused bfloat16 step,
checkpoints that convert, and bad input."""
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt.kernels import formats as F  # noqa: E402
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


# -- 8-bit state: bitsandbytes' layout, interchangeable with bitsandbytes ------------------------

INT8_CASES = [("AdamW", {}), ("Adam", {"weight_decay": 0.01}), ("SGD", {"momentum": 0.9}),
              ("RMSprop", {}), ("Adagrad", {}), ("Momentum", {})]


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name, kw", INT8_CASES, ids=[n for n, _ in INT8_CASES])
def test_int8_same_bits_as_the_numpy_classes(name, kw, dtype, flatten):
    torch.manual_seed(0)
    ps = [torch.randn(n).to(dtype).requires_grad_() for n in (5000, 30)]
    arrays = [_np(p).copy() for p in ps]
    options = dict(state_dtype="int8", rounding="stochastic", seed=1)
    topt = getattr(ft, name)(ps, lr=1e-2, flatten=flatten, **options, **kw)
    nopt = getattr(fastopt, name)(arrays, lr=1e-2, backend="numpy", **options, **kw)
    for _ in range(4):
        gs = [torch.randn(p.shape).to(dtype) for p in ps]
        for p, g in zip(ps, gs):
            if flatten:
                p.grad.copy_(g)
            else:
                p.grad = g
        topt.step()
        nopt.step([_np(g) for g in gs])
    for i, (p, a) in enumerate(zip(ps, arrays)):
        np.testing.assert_array_equal(_np(p).reshape(-1).view(np.uint8), a.view(np.uint8))
        st = topt.state[p]
        used = [n for n in nopt.state[i] if n != "step" and not n.endswith("_absmax")]
        for k, n in enumerate(used, start=1):
            np.testing.assert_array_equal(st[f"state{k}"].numpy().reshape(-1),
                                          nopt.state[i][n].reshape(-1))
            if i == 0:   # 8-bit
                assert st[f"state{k}"].dtype == torch.uint8
                np.testing.assert_array_equal(st[f"absmax{k}"].numpy(),
                                              nopt.state[i][n + "_absmax"])
                assert st[f"qmap{k}"].shape == (256,)
            else:        # under min_8bit_size: float32, as bitsandbytes
                assert st[f"state{k}"].dtype == torch.float32


def _bnb():
    bnb = pytest.importorskip("bitsandbytes")
    import warnings
    warnings.filterwarnings("ignore", module="bitsandbytes")
    return bnb


def _train(opt, ps, grads, steps, start=0):
    for t in range(start, start + steps):
        for p, g in zip(ps, grads[t]):
            p.grad = g.clone()
        opt.step()


@pytest.fixture
def bnb_problem():
    torch.manual_seed(0)
    n = 1 << 16
    p0 = [torch.randn(n), torch.randn(100)]          # 8-bit, and float32 (under 4096)
    grads = [[torch.randn(n) * 0.1, torch.randn(100) * 0.1] for _ in range(20)]
    return p0, grads


def _fresh(p0):
    return [p.clone().requires_grad_() for p in p0]


def test_int8_adamw_follows_bitsandbytes_adamw8bit(bnb_problem):
    """The issue's acceptance test: over 10 steps the mean parameter difference is at most 1%
    of the mean movement, and nearly all first-moment codes are equal.  bitsandbytes' CPU
    requantizer is approximate (0.17% of its signed codes after the first step are not the
    nearest; fastopt writes the nearest), and a code once different stays different, so the
    codes drift apart by about 0.1% per step: measured 98.8% (this seed), 99.0-99.3% (seeds
    1-4).  The next test shows the whole gap is that quantizer."""
    bnb = _bnb()
    p0, grads = bnb_problem
    bp, fp = _fresh(p0), _fresh(p0)
    bo = bnb.optim.AdamW8bit(bp, lr=1e-3, weight_decay=0.01)
    fo = ft.AdamW(fp, lr=1e-3, weight_decay=0.01, state_dtype="int8")
    _train(bo, bp, grads, 10)
    _train(fo, fp, grads, 10)
    moved = (bp[0].detach() - p0[0]).abs().mean()
    assert (bp[0] - fp[0]).abs().mean() <= 0.01 * moved
    bs, fs = bo.state[bp[0]], fo.state[fp[0]]
    assert set(bs) == set(fs)
    assert torch.equal(bs["qmap1"], fs["qmap1"]) and torch.equal(bs["qmap2"], fs["qmap2"])
    assert (bs["state1"] == fs["state1"]).float().mean() >= 0.98
    assert (bs["state2"] == fs["state2"]).float().mean() >= 0.97
    assert fs["state1"].dtype == torch.uint8 and fo.state[fp[1]]["state1"].dtype == torch.float32


def test_int8_adamw_codes_equal_bitsandbytes_with_exact_requantization(bnb_problem,
                                                                      monkeypatch):
    """bitsandbytes' own CPU update with its requantizer replaced by the exact nearest code
    (fastopt's NumPy reference quantizer): then the codes agree to within float32 rounding of
    the moments (measured 99.998%), and the parameters to 1e-6 of their movement."""
    bnb = _bnb()
    import bitsandbytes.backends.cpu.ops as cpu_ops
    if not hasattr(cpu_ops, "_quant_blockwise_fp32_direct"):
        pytest.skip("this bitsandbytes has no _quant_blockwise_fp32_direct (added in 0.49)")

    def exact(a, code, absmax_out, out_uint8, blocksize):
        assert blocksize == 256
        fmt = "q8s" if code.min() < 0 else "q8u"
        codes, absmax = F.quantize(fmt, a.detach().numpy().ravel())
        out_uint8.copy_(torch.from_numpy(codes).view(out_uint8.shape))
        absmax_out.copy_(torch.from_numpy(absmax))

    monkeypatch.setattr(cpu_ops, "_quant_blockwise_fp32_direct", exact)
    p0, grads = bnb_problem
    bp, fp = _fresh(p0), _fresh(p0)
    bo = bnb.optim.AdamW8bit(bp, lr=1e-3, weight_decay=0.01)
    fo = ft.AdamW(fp, lr=1e-3, weight_decay=0.01, state_dtype="int8")
    _train(bo, bp, grads, 10)
    _train(fo, fp, grads, 10)
    moved = (bp[0].detach() - p0[0]).abs().mean()
    assert (bp[0] - fp[0]).abs().mean() <= 1e-4 * moved
    bs, fs = bo.state[bp[0]], fo.state[fp[0]]
    assert (bs["state1"] == fs["state1"]).float().mean() >= 0.999
    assert (bs["state2"] == fs["state2"]).float().mean() >= 0.999


def test_bitsandbytes_checkpoint_resumes_in_fastopt_and_back(bnb_problem):
    bnb = _bnb()
    p0, grads = bnb_problem
    bp = _fresh(p0)
    bo = bnb.optim.AdamW8bit(bp, lr=1e-3, weight_decay=0.01)
    _train(bo, bp, grads, 10)
    sd = bo.state_dict()                       # quantization state wrapped (for FSDP)
    cp = [p.detach().clone().requires_grad_() for p in bp]
    co = ft.AdamW(cp, lr=1e-3, weight_decay=0.01, state_dtype="int8")
    co.load_state_dict(sd)
    assert torch.equal(co.state[cp[0]]["state1"], bo.state[bp[0]]["state1"])   # code for code
    assert co.state[cp[0]]["step"] == 10
    _train(co, cp, grads, 10, start=10)
    _train(bo, bp, grads, 10, start=10)
    moved = (bp[0].detach() - p0[0]).abs().mean()
    assert (bp[0] - cp[0]).abs().mean() <= 0.01 * moved
    # and fastopt's state dict loads into bitsandbytes
    dp = [p.detach().clone().requires_grad_() for p in cp]
    do = bnb.optim.AdamW8bit(dp, lr=1e-3, weight_decay=0.01)
    do.load_state_dict(co.state_dict())
    _train(do, dp, grads, 5, start=0)
    _train(co, cp, grads, 5, start=0)
    moved = (cp[0].detach() - p0[0]).abs().mean()
    assert (dp[0] - cp[0]).abs().mean() <= 0.01 * moved


def test_int8_torch_resume_is_bit_exact_and_converts(tmp_path):
    torch.manual_seed(0)
    p0 = [torch.randn(5000), torch.randn(10)]
    grads = [[torch.randn(5000), torch.randn(10)] for _ in range(6)]
    a = _fresh(p0)
    oa = ft.AdamW(a, lr=1e-2, state_dtype="int8")
    _train(oa, a, grads, 6)
    b = _fresh(p0)
    ob = ft.AdamW(b, lr=1e-2, state_dtype="int8")
    _train(ob, b, grads, 3)
    torch.save(ob.state_dict(), tmp_path / "o.pt")
    c = [p.detach().clone().requires_grad_() for p in b]
    oc = ft.AdamW(c, lr=1e-2, state_dtype="int8")
    oc.load_state_dict(torch.load(tmp_path / "o.pt"))
    _train(oc, c, grads, 3, start=3)
    assert all(torch.equal(x, y) for x, y in zip(a, c))
    # an int8 checkpoint into float32 state (dequantized), and float32 state into int8
    f = ft.AdamW(_fresh(p0), lr=1e-2)
    f.load_state_dict(ob.state_dict())
    fs = f.state[f.param_groups[0]["params"][0]]
    assert fs["exp_avg"].dtype == torch.float32 and "state1" not in fs
    s1, am = ob.state[b[0]]["state1"], ob.state[b[0]]["absmax1"]
    want = fastopt.kernels.formats.dequantize("q8s", s1.numpy(), am.numpy())
    np.testing.assert_array_equal(fs["exp_avg"].numpy(), want)
    q = ft.AdamW(_fresh(p0), lr=1e-2, state_dtype="int8")
    q.load_state_dict(f.state_dict())
    # (requantized: a block whose largest value is negative gets a smaller absmax, the signed
    # map's most negative value being -0.99297, so some of its codes move)
    assert (q.state[q.param_groups[0]["params"][0]]["state1"] == s1).float().mean() > 0.95


def test_int8_checkpoint_with_bad_absmax_changes_nothing():
    torch.manual_seed(0)
    p = [torch.randn(5000, requires_grad=True)]
    opt = ft.AdamW(p, lr=1e-2, state_dtype="int8")
    p[0].grad = torch.randn(5000)
    opt.step()
    sd = opt.state_dict()
    before = opt.state[p[0]]["state1"].clone()
    bad = {**sd, "state": {0: {**sd["state"][0], "absmax1": sd["state"][0]["absmax1"][:-1]}}}
    with pytest.raises(ValueError, match=r"needs a float32 absmax of shape \(20,\)"):
        opt.load_state_dict(bad)
    assert torch.equal(opt.state[p[0]]["state1"], before)


def test_bfloat16_params_with_float32_state_survive_a_checkpoint():
    """torch's loader casts float state to the parameter's dtype; fastopt keeps its own."""
    torch.manual_seed(0)
    w = torch.randn(100).bfloat16().requires_grad_()
    opt = ft.AdamW([w], lr=1e-2, state_dtype="float32")
    w.grad = torch.randn(100).bfloat16()
    opt.step()
    sd = opt.state_dict()
    v = w.detach().clone().requires_grad_()
    o2 = ft.AdamW([v], lr=1e-2, state_dtype="float32")
    o2.load_state_dict(sd)
    assert o2.state[v]["exp_avg"].dtype == torch.float32
    assert torch.equal(o2.state[v]["exp_avg"], opt.state[w]["exp_avg"])

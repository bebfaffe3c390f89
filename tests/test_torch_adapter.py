"""fastopt.torch against torch.optim: same trajectories, state_dict both ways, flatten mode."""
import copy
import io
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from _support import HOST_BACKENDS  # noqa: E402

STEPS = 50
#: measured: the largest deviation over CASES x flatten is 2.2e-6 relative (1.5e-5 absolute on
#: values ~7, sgd-max-wd); everything else is within ~2e-7 absolute
TOL32 = dict(rtol=1e-5, atol=1e-6)
TOL64 = dict(rtol=1e-10, atol=1e-12)

#: (id, torch class, fastopt class, kwargs) -- every class and its main options
CASES = [
    ("sgd", torch.optim.SGD, ft.SGD, dict(lr=0.05)),
    ("sgd-mom", torch.optim.SGD, ft.SGD, dict(lr=0.05, momentum=0.9)),
    ("sgd-mom-damp-wd", torch.optim.SGD, ft.SGD,
     dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01)),
    ("sgd-nesterov", torch.optim.SGD, ft.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    ("sgd-max-wd", torch.optim.SGD, ft.SGD, dict(lr=0.05, weight_decay=0.1, maximize=True)),
    ("rmsprop", torch.optim.RMSprop, ft.RMSprop, dict(lr=0.01)),
    ("rmsprop-centered", torch.optim.RMSprop, ft.RMSprop, dict(lr=0.01, centered=True)),
    ("rmsprop-mom", torch.optim.RMSprop, ft.RMSprop, dict(lr=0.01, momentum=0.9)),
    ("rmsprop-centered-mom-wd-max", torch.optim.RMSprop, ft.RMSprop,
     dict(lr=0.01, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01, maximize=True)),
    ("adagrad", torch.optim.Adagrad, ft.Adagrad, dict(lr=0.1)),
    ("adagrad-decay-init-wd", torch.optim.Adagrad, ft.Adagrad,
     dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1, weight_decay=0.01)),
    ("adagrad-max", torch.optim.Adagrad, ft.Adagrad, dict(lr=0.1, maximize=True)),
    ("adam", torch.optim.Adam, ft.Adam, dict(lr=0.01)),
    ("adam-amsgrad", torch.optim.Adam, ft.Adam, dict(lr=0.01, amsgrad=True)),
    ("adam-wd", torch.optim.Adam, ft.Adam, dict(lr=0.01, weight_decay=0.1)),
    ("adam-max-betas", torch.optim.Adam, ft.Adam, dict(lr=0.01, maximize=True,
                                                       betas=(0.8, 0.99))),
    ("adam-ams-wd-max", torch.optim.Adam, ft.Adam,
     dict(lr=0.01, amsgrad=True, weight_decay=0.01, maximize=True)),
    ("adam-decoupled", torch.optim.Adam, ft.Adam,
     dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)),
    ("adamw", torch.optim.AdamW, ft.AdamW, dict(lr=0.01)),
    ("adamw-ams-wd", torch.optim.AdamW, ft.AdamW, dict(lr=0.01, weight_decay=0.1,
                                                       amsgrad=True)),
]
CASE_IDS = [c[0] for c in CASES]


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 3)).to(dtype)


def batch(i, dtype=torch.float32):
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(16, 10, generator=g, dtype=dtype)
    y = torch.randn(16, 3, generator=g, dtype=dtype)
    return x, y


def loss_fn(model, i):
    x, y = batch(i, next(model.parameters()).dtype)
    return torch.nn.functional.mse_loss(model(x), y)


def backward(model, i):
    for p in model.parameters():
        p.grad = None
    loss_fn(model, i).backward()


def copy_grads(src, dst):
    """dst's .grad := src's .grad, in place when dst has a grad (keeps flatten's views)."""
    for a, b in zip(src.parameters(), dst.parameters()):
        if a.grad is None:
            b.grad = None
        elif b.grad is None:
            b.grad = a.grad.clone()
        else:
            b.grad.copy_(a.grad)


def train_same_grads(ref_model, ref_opt, model, opt, steps, start=0):
    """Gradients computed once per step from ref_model, used by both optimizers."""
    for i in range(start, start + steps):
        backward(ref_model, i)
        copy_grads(ref_model, model)
        ref_opt.step()
        opt.step()


def assert_params_close(a, b, tol=TOL32):
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pb.detach().numpy(), pa.detach().numpy(), **tol)


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_matches_torch(case, flatten):
    _, tcls, fcls, kw = case
    ref = make_model()
    model = copy.deepcopy(ref)
    ref_opt = tcls(ref.parameters(), **kw)
    opt = fcls(model.parameters(), flatten=flatten, **kw)
    train_same_grads(ref, ref_opt, model, opt, STEPS)
    assert_params_close(ref, model)
    # same state, same names
    ts, fs = ref_opt.state_dict()["state"], opt.state_dict()["state"]
    assert ts.keys() == fs.keys()
    for k in ts:
        assert ts[k].keys() == fs[k].keys()
        for name, v in ts[k].items():
            assert fs[k][name].dtype == v.dtype and fs[k][name].shape == v.shape, name
            np.testing.assert_allclose(fs[k][name].numpy(), v.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("sgd-mom", "rmsprop-centered",
                                                              "adagrad-decay-init-wd",
                                                              "adam-ams-wd-max", "adamw")],
                         ids=lambda c: c[0])
def test_float64(case):
    _, tcls, fcls, kw = case
    ref = make_model(torch.float64)
    model = copy.deepcopy(ref)
    ref_opt, opt = tcls(ref.parameters(), **kw), fcls(model.parameters(), **kw)
    train_same_grads(ref, ref_opt, model, opt, STEPS)
    assert_params_close(ref, model, TOL64)
    assert next(model.parameters()).dtype == torch.float64


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("bias_correction,weight_decay", [(False, 0.0), (True, 0.01)])
def test_momentum_matches_reference(flatten, bias_correction, weight_decay):
    lr, beta = 0.1, 0.8
    model = make_model()
    params = [p.detach().numpy().astype(np.float64) for p in model.parameters()]
    velocity = [np.zeros_like(p) for p in params]
    opt = ft.Momentum(model.parameters(), lr=lr, beta=beta, bias_correction=bias_correction,
                      weight_decay=weight_decay, flatten=flatten)
    for i in range(STEPS):
        opt.zero_grad()
        loss_fn(model, i).backward()
        t = i + 1
        for p, v, tp in zip(params, velocity, model.parameters()):
            g = tp.grad.numpy().astype(np.float64) + weight_decay * p
            v *= beta
            v += (1 - beta) * g
            p -= lr * v / ((1 - beta ** t) if bias_correction else 1.0)
        opt.step()
        # keep the reference on the same trajectory (grads come from the torch model)
        for p, tp in zip(params, model.parameters()):
            np.testing.assert_allclose(tp.detach().numpy(), p, rtol=1e-5, atol=1e-6)
            p[...] = tp.detach().numpy()
    assert float(opt.state[next(model.parameters())]["step"]) == STEPS
    assert set(opt.state_dict()["state"][0]) == {"step", "velocity"}


def test_momentum_matches_numpy_fastopt():
    model = make_model()
    arrays = [p.detach().numpy().copy() for p in model.parameters()]
    np_opt = fastopt.Momentum(arrays, lr=0.1, beta=0.9, bias_correction=True)
    opt = ft.Momentum(model.parameters(), lr=0.1, beta=0.9, bias_correction=True)
    for i in range(STEPS):
        opt.zero_grad()
        loss_fn(model, i).backward()
        np_opt.step([p.grad.numpy().copy() for p in model.parameters()])
        opt.step()
    for a, p in zip(arrays, model.parameters()):
        # same kernels; only the gradients' trajectory differs (they are taken at the torch
        # model), so compare loosely
        np.testing.assert_allclose(p.detach().numpy(), a, rtol=1e-3, atol=1e-3)


# -- state_dict interchange ------------------------------------------------------------------

def checkpoint(opt):
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)
    buf.seek(0)
    return torch.load(buf)


SWAP_CASES = [c for c in CASES if c[0] in ("sgd-mom-damp-wd", "rmsprop-centered-mom-wd-max",
                                          "adagrad-decay-init-wd", "adam-ams-wd-max",
                                          "adamw")]


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("case", SWAP_CASES, ids=lambda c: c[0])
def test_state_dict_torch_to_fastopt(case, flatten):
    _, tcls, fcls, kw = case
    ref = make_model()
    ref_opt = tcls(ref.parameters(), **kw)
    for i in range(20):
        backward(ref, i)
        ref_opt.step()
    model = copy.deepcopy(ref)
    opt = fcls(model.parameters(), flatten=flatten, **kw)
    opt.load_state_dict(checkpoint(ref_opt))
    if opt.state and "step" in next(iter(opt.state.values())):
        assert all(s["step"].dtype == torch.float32 and float(s["step"]) == 20
                   for s in opt.state.values())
    train_same_grads(ref, ref_opt, model, opt, 20, start=20)
    assert_params_close(ref, model)


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("case", SWAP_CASES, ids=lambda c: c[0])
def test_state_dict_fastopt_to_torch(case, flatten):
    _, tcls, fcls, kw = case
    model = make_model()
    opt = fcls(model.parameters(), flatten=flatten, **kw)
    for i in range(20):
        opt.zero_grad()
        loss_fn(model, i).backward()
        opt.step()
    ref = copy.deepcopy(model)
    ref_opt = tcls(ref.parameters(), **kw)
    ref_opt.load_state_dict(checkpoint(opt))
    train_same_grads(ref, ref_opt, model, opt, 20, start=20)
    assert_params_close(ref, model)


def test_state_dict_layout_matches_torch():
    ref, model = make_model(), make_model()
    ref_opt, opt = torch.optim.Adam(ref.parameters()), ft.Adam(model.parameters())
    assert opt.state_dict()["state"] == {} == ref_opt.state_dict()["state"]
    backward(ref, 0)
    copy_grads(ref, model)
    ref_opt.step()
    opt.step()
    ts, fs = ref_opt.state_dict(), opt.state_dict()
    # fastopt's own bias_correction is left out at its default: torch's keys exactly
    assert set(fs["param_groups"][0]) == set(ts["param_groups"][0])
    off = ft.Adam(model.parameters(), bias_correction=False)
    assert off.state_dict()["param_groups"][0]["bias_correction"] is False
    # loading a dict without it (torch's, or fastopt's at the default) gives the default
    off.load_state_dict(fs)
    assert off.param_groups[0]["bias_correction"] is True
    off.load_state_dict(ft.Adam(model.parameters(), bias_correction=False).state_dict())
    assert off.param_groups[0]["bias_correction"] is False
    st = fs["state"][0]
    assert st["step"].dtype == torch.float32 and st["step"].dim() == 0
    assert st["step"].device.type == "cpu"
    assert ft.SGD(model.parameters(), momentum=0.9).state_dict()["state"] == {}


def test_load_state_dict_rejects_bad_shapes():
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    backward(model, 0)
    opt.step()
    sd = checkpoint(opt)
    sd["state"][0]["exp_avg"] = torch.zeros(3)
    before = {k: v.clone() for k, v in opt.state[next(model.parameters())].items()}
    with pytest.raises(ValueError, match="exp_avg"):
        opt.load_state_dict(sd)
    for k, v in opt.state[next(model.parameters())].items():
        assert torch.equal(v, before[k])


def test_load_state_dict_copies():
    ref = make_model()
    ref_opt = torch.optim.Adam(ref.parameters())
    backward(ref, 0)
    ref_opt.step()
    model = copy.deepcopy(ref)
    opt = ft.Adam(model.parameters())
    sd = ref_opt.state_dict()  # live tensors of ref_opt
    opt.load_state_dict(sd)
    p = next(model.parameters())
    assert opt.state[p]["exp_avg"].data_ptr() != sd["state"][0]["exp_avg"].data_ptr()


# -- flatten mode --------------------------------------------------------------------------------

def count_kernel_calls(monkeypatch, rule):
    """Record the length of every buffer (kernel row) a step of ``rule`` walks, on the CPU
    backend the adapter uses (its ``bind`` is wrapped)."""
    from fastopt.kernels import resolve_backend
    be = resolve_backend([])
    calls = []

    def spying(real):
        def spy(kernel, rows, **kw):
            call = real(kernel, rows, **kw)
            if kernel.sig.name != rule:
                return call

            def counted(scalars, step=0):
                calls.extend(call.rows)
                return call(scalars, step)
            counted.rows = call.rows
            return counted
        return spy
    for method in ("bind", "bind_addresses"):
        if hasattr(be, method):
            monkeypatch.setattr(be, method, spying(getattr(be, method)))
    return calls


def test_flatten_layout_and_real_backward(monkeypatch):
    """Two identical models fed the same batches; the flat one's grads come from autograd."""
    ref = make_model()
    model = copy.deepcopy(ref)
    params = list(model.parameters())
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    opt = ft.Adam(model.parameters(), lr=0.01, flatten=True)
    assert [p is q for p, q in zip(params, model.parameters())] == [True] * len(params)
    (flat,) = opt._flats[0]
    n = sum(p.numel() for p in params)
    assert flat.param.numel() == n
    for p in params:  # params and grads are views into the flat buffers
        assert p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
        assert p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
    calls = count_kernel_calls(monkeypatch, "adam")
    for i in range(STEPS):
        ref_opt.zero_grad()
        opt.zero_grad()  # set_to_none=True by default: must keep the views
        assert all(p.grad is not None for p in params)
        loss_fn(ref, i).backward()
        loss_fn(model, i).backward()
        ref_opt.step()
        opt.step()
    assert calls == [n] * STEPS  # one kernel call per step over the whole flat buffer
    assert_params_close(ref, model)
    # state entries are views into flat state buffers
    st = opt.state[params[0]]
    assert st["exp_avg"].untyped_storage().data_ptr() == \
        flat.state["exp_avg"].untyped_storage().data_ptr()


def test_flatten_grad_replaced_falls_back(monkeypatch):
    ref = make_model()
    model = copy.deepcopy(ref)
    params = list(model.parameters())
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    opt = ft.Adam(model.parameters(), lr=0.01, flatten=True)
    calls = count_kernel_calls(monkeypatch, "adam")
    for i in range(10):
        backward(ref, i)
        copy_grads(ref, model)
        if i == 3:
            params[0].grad = params[0].grad.clone() * 1.0  # a new tensor, not the view
        ref_opt.step()
        opt.step()
        if i == 3:
            # the replaced gradient is not in the flat run any more: a row of its own, the
            # others still one row
            assert calls[3:] == [params[0].numel(), sum(p.numel() for p in params[1:])]
            opt.zero_grad()  # re-attaches the views
            assert params[0].grad is opt._flats[0][0].grads[0]
    assert len(calls) == 9 + 2
    assert_params_close(ref, model)


def test_flatten_mixed_dtypes_and_groups():
    torch.manual_seed(0)
    a, b = torch.randn(5, requires_grad=True), torch.randn(3, 2, requires_grad=True)
    c = torch.randn(4, dtype=torch.float64, requires_grad=True)
    refs = [x.detach().clone().requires_grad_() for x in (a, b, c)]
    opt = ft.SGD([{"params": [a, c]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9,
                 flatten=True)
    ref_opt = torch.optim.SGD([{"params": [refs[0], refs[2]]}, {"params": [refs[1]], "lr": 0.5}],
                              lr=0.1, momentum=0.9)
    assert [len(f) for f in opt._flats] == [2, 1]
    for _ in range(5):
        for x, r in zip((a, b, c), refs):
            g = torch.randn_like(x)
            x.grad.copy_(g)
            r.grad = g.clone()
        opt.step()
        ref_opt.step()
    for x, r in zip((a, b, c), refs):
        torch.testing.assert_close(x, r)


def test_flatten_frozen_param_is_skipped():
    w = torch.ones(3, requires_grad=True)
    frozen = torch.ones(2)  # requires_grad=False: not flattened, no grad, skipped
    opt = ft.AdamW([w, frozen], lr=0.1, weight_decay=0.5, flatten=True)
    assert frozen.grad is None and w.grad is not None
    w.grad.fill_(1.0)
    opt.step()
    opt.zero_grad()
    assert frozen.grad is None
    torch.testing.assert_close(frozen, torch.ones(2))
    assert not opt.state.get(frozen)
    torch.testing.assert_close(w.detach(), torch.full((3,), 0.95 - 0.1))


def test_flatten_state_reinitialized_after_load():
    """A param with no state in a loaded dict restarts from the initial value, as in torch."""
    a, b = torch.ones(2, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = ft.Adagrad([a, b], lr=0.1, initial_accumulator_value=0.5, flatten=True)
    a.grad.fill_(1.0)
    b.grad.fill_(1.0)
    opt.step()
    sd = checkpoint(opt)
    del sd["state"][1]
    opt.load_state_dict(sd)
    assert not opt.state.get(b)
    opt.step()
    torch.testing.assert_close(opt.state[b]["sum"], torch.full((3,), 1.5))
    torch.testing.assert_close(opt.state[a]["sum"], torch.full((2,), 2.5))


def test_add_param_group():
    w1, w2 = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = ft.Adam([w1], lr=0.1, flatten=True)
    opt.add_param_group({"params": [w2], "lr": 0.2})
    assert opt.param_groups[1]["lr"] == 0.2 and opt.param_groups[1]["betas"] == (0.9, 0.999)
    w1.grad.fill_(1.0)
    w2.grad.fill_(-1.0)
    opt.step()
    torch.testing.assert_close(w1.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(w2.detach(), torch.full((2,), 1.2))
    with pytest.raises(TypeError, match="int64"):
        opt.add_param_group({"params": [torch.ones(2, dtype=torch.int64)]})
    assert len(opt.param_groups) == 2


# -- skipping, errors, dtypes -------------------------------------------------------------------

@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("sgd-mom", "rmsprop-mom",
                                                              "adagrad-decay-init-wd",
                                                              "adam-ams-wd-max", "adamw")],
                         ids=lambda c: c[0])
def test_params_without_grad_are_skipped(case):
    _, tcls, fcls, kw = case
    ref = make_model()
    model = copy.deepcopy(ref)
    ref_opt, opt = tcls(ref.parameters(), **kw), fcls(model.parameters(), **kw)
    rp, mp = list(ref.parameters()), list(model.parameters())
    for i in range(12):
        backward(ref, i)
        if i % 3 == 1:  # the last layer's bias gets no gradient on some steps
            rp[-1].grad = None
        if i < 2:  # and the first layer's weight none on the first two
            rp[0].grad = None
        copy_grads(ref, model)
        ref_opt.step()
        opt.step()
    assert_params_close(ref, model)
    for a, b in zip(rp, mp):
        sa, sb = ref_opt.state.get(a, {}), opt.state.get(b, {})
        assert sa.keys() == sb.keys()
        if "step" in sa:
            assert float(sa["step"]) == float(sb["step"])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_an_empty_parameter_first_in_a_run(backend):
    """An empty tensor joins any run of tensors laid end to end; first in one, its data_ptr()
    (0, or anywhere) was taken as the run's address, and the kernel wrote the next tensors'
    elements there (a segmentation fault): the run's address is its first non-empty tensor's.
    Stepped as torch.optim.Adam, alone in a group and after another parameter."""
    rng = np.random.default_rng(0)
    for layout in ("alone", "after"):
        vals = [rng.standard_normal(5).astype(np.float32), np.zeros(0, np.float32),
                rng.standard_normal(64).astype(np.float32)]
        mine = [torch.tensor(v, requires_grad=True) for v in vals]
        ref = [torch.tensor(v, requires_grad=True) for v in vals]
        groups = (lambda ps: [{"params": ps[:1]}, {"params": ps[1:]}]) if layout == "alone" \
            else (lambda ps: ps)
        opt = ft.Adam(groups(mine), lr=0.1, backend=backend)
        tref = torch.optim.Adam(groups(ref), lr=0.1)
        for step in range(3):
            for a, b in zip(mine, ref):
                a.grad = torch.randn(a.shape, generator=torch.Generator().manual_seed(step))
                b.grad = a.grad.clone()
            opt.step()
            tref.step()
        for a, b in zip(mine, ref):
            torch.testing.assert_close(a.detach(), b.detach())


def test_untouched_param_keeps_no_state():
    w, unused = torch.ones(3, requires_grad=True), torch.ones(2, requires_grad=True)
    opt = ft.Adam([w, unused], lr=0.1)
    (w * 2).sum().backward()
    opt.step()
    assert unused not in opt.state or not opt.state[unused]
    torch.testing.assert_close(unused.detach(), torch.ones(2))


@pytest.mark.parametrize("dtype", [torch.int32, torch.complex64])
@pytest.mark.parametrize("cls", [ft.SGD, ft.Adam, ft.Momentum])
def test_non_float_parameters_raise(cls, dtype):
    model = make_model()
    with torch.no_grad():
        model[0].weight = torch.nn.Parameter(model[0].weight.to(dtype), requires_grad=False)
    with pytest.raises(TypeError, match=r"'params'\]\[0\].*" + str(dtype).split(".")[1]):
        cls(model.parameters())
    named = list(model.named_parameters())
    with pytest.raises(TypeError, match="0.weight"):
        cls(named)


def test_errors():
    w = torch.ones(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="sharing memory"):   # non-contiguous: stepped
        ft.Adam([torch.ones(4, 1).expand(4, 3).requires_grad_()])
    with pytest.raises(ValueError, match="lr"):
        ft.Adam([w], lr=-1.0)
    with pytest.raises(ValueError, match="capturable"):
        ft.Adam([w], capturable=True)
    with pytest.raises(ValueError, match="backend"):
        ft.Adam([w], backend="nope")
    # CPU tensors with backend="cuda": ValueError where CUDA works, RuntimeError where not
    with pytest.raises((ValueError, RuntimeError), match="CPU tensor|not available"):
        ft.Adam([w], backend="cuda")
    emb = torch.nn.Embedding(10, 3, sparse=True)
    opt = ft.Adam(emb.parameters())
    emb(torch.tensor([1, 2])).sum().backward()
    before = emb.weight.detach().clone()
    with pytest.raises(RuntimeError, match="sparse"):
        opt.step()
    assert torch.equal(emb.weight.detach(), before)


def test_non_contiguous_grad_is_copied():
    w = torch.ones(3, 4, requires_grad=True)
    r = w.detach().clone().requires_grad_()
    g = torch.arange(12.0).reshape(4, 3).t()  # non-contiguous
    w.grad, r.grad = g, g.contiguous()
    ft.Adam([w], lr=0.1).step()
    torch.optim.Adam([r], lr=0.1).step()
    torch.testing.assert_close(w, r)


def test_zero_copy_views():
    t = torch.arange(6.0).reshape(2, 3)
    a = ft._host(t)
    assert a.__array_interface__["data"][0] == t.data_ptr()
    a[0] = 42.0
    assert t[0, 0] == 42.0


def test_closure():
    ref = make_model()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    opt = ft.Adam(model.parameters(), lr=0.01)

    def closure_for(m, o):
        def closure():
            o.zero_grad()
            loss = loss_fn(m, 0)
            loss.backward()
            return loss
        return closure

    for _ in range(5):
        with torch.no_grad():  # the closure still runs with grad enabled
            loss = opt.step(closure_for(model, opt))
        ref_loss = ref_opt.step(closure_for(ref, ref_opt))
        torch.testing.assert_close(loss, ref_loss)
    assert opt.step() is None and ref_opt.step() is None
    assert_params_close(ref, model)


def test_lr_scheduler_works():
    ref = make_model()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1, momentum=0.9)
    opt = ft.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ref_s = torch.optim.lr_scheduler.StepLR(ref_opt, step_size=3, gamma=0.5)
    s = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    for i in range(10):
        backward(ref, i)
        copy_grads(ref, model)
        ref_opt.step()
        opt.step()
        ref_s.step()
        s.step()
    assert opt.param_groups[0]["lr"] == ref_opt.param_groups[0]["lr"]
    assert_params_close(ref, model)


def test_import_fastopt_does_not_import_torch():
    code = ("import sys, fastopt, numpy as np; fastopt.Adam([np.zeros(3)]); "
            "assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'fastopt.torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_grad_scaler_and_one_cycle_schedule_as_torch():
    """Mixed precision as torch trains it: ``torch.amp.GradScaler`` (an overflowing step is
    skipped, the scale backs off) and ``OneCycleLR``, which cycles the learning rate and
    ``betas[0]`` in ``param_groups`` every step: the same parameters as torch.optim.AdamW."""
    def run(cls):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = cls(m.parameters(), lr=0.01, weight_decay=0.1)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=20)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
        g = torch.Generator().manual_seed(1)
        for i in range(12):
            x, y = torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g)
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = torch.nn.functional.mse_loss(m(x), y)
            if i == 3:
                loss = loss * float("inf")      # overflow: the scaler skips this step
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            sched.step()
        return m, opt, scaler
    ref, ref_opt, ref_scaler = run(torch.optim.AdamW)
    got, opt, scaler = run(ft.AdamW)
    assert scaler.get_scale() == ref_scaler.get_scale() < 2.0 ** 10
    assert opt.param_groups[0]["betas"] == ref_opt.param_groups[0]["betas"]
    for p, q in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        assert opt.state[q]["step"].item() == ref_opt.state[p]["step"].item() == 11


def test_step_hooks_and_the_profiler_as_torch():
    """torch.optim's step wrapper is skipped when it has nothing to do (it costs ~10 us a step);
    with a hook registered -- the optimizer's pre/post hooks, the global ones -- or the profiler
    on, it runs as torch's: hooks in torch's order with ``(optimizer, args, kwargs)``, a pre-hook
    may replace the arguments, and the profiler records ``Optimizer.step#AdamW.step``."""
    from torch.optim.optimizer import (register_optimizer_step_post_hook,
                                       register_optimizer_step_pre_hook)
    w = torch.nn.Parameter(torch.ones(3))
    w.grad = torch.ones(3)
    opt = ft.AdamW([w], lr=0.1)
    calls = []
    closure_ran = []

    def closure():
        closure_ran.append(1)
        return torch.tensor(2.0)

    def pre(o, args, kwargs):
        calls.append(("pre", o))
        return (o, closure), kwargs

    handles = [
        register_optimizer_step_pre_hook(lambda o, a, k: calls.append(("global pre", o, a))),
        opt.register_step_pre_hook(pre),
        opt.register_step_post_hook(lambda o, a, k: calls.append(("post", len(a)))),
        register_optimizer_step_post_hook(lambda o, a, k: calls.append(("global post",)))]
    loss = opt.step()
    assert loss.item() == 2.0 and closure_ran == [1]     # the pre-hook's new arguments
    assert [c[0] for c in calls] == ["global pre", "pre", "post", "global post"]
    assert calls[0][1] is opt and calls[1][1] is opt and calls[2][1] == 2
    for h in handles:
        h.remove()
    calls.clear()
    before = w.detach().clone()
    opt.step()
    assert not calls and not torch.equal(w, before)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        opt.step()
    assert "Optimizer.step#AdamW.step" in {e.key for e in prof.key_averages()}

    class Mine(ft.AdamW):     # a subclass's own step: torch wraps that one; hooks run once
        def step(self, closure=None):
            return super().step(closure)
    mine = Mine([w], lr=0.1)
    mine.register_step_pre_hook(lambda o, a, k: calls.append("mine"))
    mine.step()
    assert calls == ["mine"]


def test_step_inside_torch_compile():
    """A training step compiled whole with ``torch.compile`` (forward, backward and
    ``opt.step()``): dynamo does not trace into fastopt's step (kernels called through raw
    addresses; it failed in inductor before), which runs eagerly outside the graph; the
    parameters are torch.optim.AdamW's."""
    def run(cls):
        torch.manual_seed(0)
        m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
        opt = cls(m.parameters(), lr=0.01, weight_decay=0.1)

        def train_step(x, y):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(m(x), y)
            loss.backward()
            opt.step()
            return loss
        step = torch.compile(train_step) if cls is ft.AdamW else train_step
        g = torch.Generator().manual_seed(1)
        for _ in range(4):
            step(torch.randn(4, 8, generator=g), torch.randn(4, 2, generator=g))
        return m, opt
    ref, _ = run(torch.optim.AdamW)
    got, opt = run(ft.AdamW)
    for p, q in zip(ref.parameters(), got.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
        assert opt.state[q]["step"].item() == 4


def test_training_calls_do_not_import_dynamo():
    """Construction, step, zero_grad, state_dict, load_state_dict and add_param_group do not
    import ``torch._dynamo`` (torch.optim's methods do, on their first call: 1-2 s of a fresh
    process's first step), and in a process that has imported it they are torch's decorated
    methods (so dynamo never traces into them)."""
    code = """
import io, sys, torch, fastopt.torch as ft
from fastopt.torch import _optimizer
def loop():
    m = torch.nn.Linear(8, 4)
    for cls, kw in ((ft.AdamW, dict(state_dtype="int8", min_8bit_size=1)),
                    (ft.SGD, dict(momentum=0.9, flatten=True)), (ft.Adam, {})):
        o = cls(m.parameters(), lr=0.1, **kw)
        m(torch.ones(2, 8)).sum().backward(); o.step(); o.zero_grad()
        buf = io.BytesIO(); torch.save(o.state_dict(), buf); buf.seek(0)
        o.load_state_dict(torch.load(buf))
        o.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))]})
loop()
assert "torch._dynamo" not in sys.modules, "torch._dynamo imported"
import torch._dynamo
fn = torch.optim.Optimizer.add_param_group
assert _optimizer._torch("add_param_group") is fn and fn is not fn.__wrapped__
loop()
"""
    subprocess.run([sys.executable, "-c", code], check=True)


# -- CUDA (needs a real GPU) --------------------------------------------------------------------

gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("case", [c for c in CASES if c[0] in ("sgd-nesterov",
                                                              "rmsprop-centered-mom-wd-max",
                                                              "adagrad-decay-init-wd",
                                                              "adam-ams-wd-max", "adamw")],
                         ids=lambda c: c[0])
def test_cuda_matches_torch(case, flatten):
    _, tcls, fcls, kw = case
    ref = make_model().cuda()
    model = copy.deepcopy(ref)
    ref_opt, opt = tcls(ref.parameters(), **kw), fcls(model.parameters(), flatten=flatten, **kw)
    for i in range(STEPS):
        for p in ref.parameters():
            p.grad = None
        x, y = (t.cuda() for t in batch(i))
        torch.nn.functional.mse_loss(ref(x), y).backward()
        copy_grads(ref, model)
        ref_opt.step()
        opt.step()
    for a, b in zip(ref.parameters(), model.parameters()):
        assert b.is_cuda
        np.testing.assert_allclose(b.detach().cpu().numpy(), a.detach().cpu().numpy(), **TOL32)


@pytest.mark.gpu
@gpu
def test_cuda_state_dict_roundtrip():
    ref = make_model().cuda()
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    x, y = (t.cuda() for t in batch(0))
    torch.nn.functional.mse_loss(ref(x), y).backward()
    ref_opt.step()
    model = copy.deepcopy(ref)
    opt = ft.Adam(model.parameters(), lr=0.01)
    opt.load_state_dict(checkpoint(ref_opt))
    assert all(s["exp_avg"].is_cuda for s in opt.state.values())


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
def test_rehomed_data_and_grads_between_steps(flatten):
    """The adapter keeps its bound kernel calls between steps: moving ``.data`` (as
    ``model.to``, ZeRO's bucket views or FSDP do), replacing ``.grad`` or shrinking a view in
    place must all be seen, with torch's numbers."""
    ref = make_model()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.01)
    opt = ft.Adam(model.parameters(), lr=0.01, flatten=flatten)
    for i in range(8):
        backward(ref, i)
        copy_grads(ref, model)
        if i == 2:      # re-home every parameter's memory
            for p in model.parameters():
                p.data = p.data.clone()
        if i == 4:      # a fresh gradient tensor for one parameter
            p0 = next(model.parameters())
            p0.grad = p0.grad.clone()
        if i == 6:      # the same storage, another view of it
            for p in model.parameters():
                p.data = p.data.reshape(-1).view(p.shape)
        ref_opt.step()
        opt.step()
        assert_params_close(ref, model)

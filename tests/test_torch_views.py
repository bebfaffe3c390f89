"""fastopt.torch where tensors are not where they were: non-contiguous parameters and
gradients stepped in place, and every way ``.data``, ``.grad`` and the state can be re-homed
between steps, each against torch.optim with the same gradients.

The adapter keeps bound kernel calls between steps (on the Cython backend, built from the
tensors' addresses); each test here fails if that cache ignored the change it makes (a planted
bug that keeps the old call when ``p.data`` moved writes the old memory and leaves the
parameter unchanged)."""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastopt.torch as ft  # noqa: E402
from fastopt.kernels import get_backend  # noqa: E402

from test_torch_adapter import CASES, CASE_IDS, TOL32  # noqa: E402


def _backend(name):
    try:
        get_backend(name)
    except RuntimeError as exc:
        return pytest.param(name, marks=pytest.mark.skip(reason=str(exc)[:120]))
    return name


#: host backends: the Cython one keeps its bound calls between steps (the cache under test),
#: the others rebuild them each step
BACKENDS = [_backend("cython"), _backend("numba")]

SOME = [c for c in CASES if c[0] in ("sgd", "sgd-mom", "rmsprop-centered-mom-wd-max",
                                     "adagrad-decay-init-wd", "adam-ams-wd-max", "adamw")]


def grads_for(params, i):
    g = torch.Generator().manual_seed(100 + i)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def assert_close(ref, got, tol=TOL32):
    for a, b in zip(ref, got):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(b.detach().double().numpy(), a.detach().double().numpy(),
                                   **tol)


# -- non-contiguous parameters and gradients ----------------------------------------------------

def odd_params():
    """``(params, bases)``: a transposed matrix, a strided slice of a larger tensor, a
    channels-last conv weight, a contiguous one, a scalar; bases hold what must not change."""
    torch.manual_seed(0)
    big = torch.randn(9, 12)
    conv = torch.randn(4, 3, 3, 3).to(memory_format=torch.channels_last)
    params = [torch.randn(7, 5).t(), big[1:8:2, 3:10:3], conv, torch.randn(6), torch.randn(())]
    return params, big


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", SOME, ids=[c[0] for c in SOME])
def test_non_contiguous_params_are_stepped_in_place(case, backend):
    _, tcls, fcls, kw = case
    ref, big_ref = odd_params()
    got, big = odd_params()
    assert not ref[0].is_contiguous() and not ref[1].is_contiguous() \
        and not ref[2].is_contiguous()
    ref = [p.requires_grad_() for p in ref]
    got = [p.requires_grad_() for p in got]
    ptrs = [p.data_ptr() for p in got]
    strides = [p.stride() for p in got]
    ref_opt, opt = tcls(ref, **kw), fcls(got, backend=backend, **kw)
    for i in range(6):
        gs = grads_for(ref, i)
        for p, q, g in zip(ref, got, gs):
            p.grad = g
            q.grad = g.t().contiguous().t() if g.dim() == 2 and i % 2 else g.clone()
        ref_opt.step()
        opt.step()
        assert_close(ref, got)
    # the parameters' own memory was updated: same addresses and strides, and the larger
    # tensor the slice lives in changed exactly where torch's did (nowhere else)
    assert [p.data_ptr() for p in got] == ptrs and [p.stride() for p in got] == strides
    np.testing.assert_allclose(big.numpy(), big_ref.detach().numpy(), **TOL32)
    untouched = torch.ones_like(big, dtype=torch.bool)
    untouched[1:8:2, 3:10:3] = False
    torch.manual_seed(0)
    assert torch.equal(big[untouched], torch.randn(9, 12)[untouched])


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
def test_non_contiguous_params_flatten_and_state_dict(flatten):
    """A non-contiguous parameter's state is contiguous, loads from torch's (strided) state
    and goes back into torch."""
    ref, _ = odd_params()
    got, _ = odd_params()
    ref = [p.requires_grad_() for p in ref]
    got = [p.requires_grad_() for p in got]
    ref_opt = torch.optim.AdamW(ref, lr=0.05, amsgrad=True)
    opt = ft.AdamW(got, lr=0.05, amsgrad=True, flatten=flatten)
    for i in range(3):
        for p, q, g in zip(ref, got, grads_for(ref, i)):
            p.grad, q.grad = g, g.clone()
        ref_opt.step()
        opt.step()
    assert_close(ref, got)
    # torch's state (with the parameters' strides) into fastopt, and continue
    opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
    for i in range(3, 6):
        for p, q, g in zip(ref, got, grads_for(ref, i)):
            p.grad, q.grad = g, g.clone()
        ref_opt.step()
        opt.step()
    assert_close(ref, got)
    # and back
    back = torch.optim.AdamW(ref, lr=0.05, amsgrad=True)
    back.load_state_dict(copy.deepcopy(opt.state_dict()))
    for k, st in ref_opt.state.items():
        for name, v in st.items():
            torch.testing.assert_close(back.state[k][name], v, rtol=1e-5, atol=1e-6)


def test_overlapping_parameter_is_rejected():
    p = torch.zeros(4, 1).expand(4, 3).requires_grad_()
    with pytest.raises(ValueError, match="sharing memory"):
        ft.SGD([p], lr=0.1)


def test_non_contiguous_param_error_changes_nothing():
    """A bad gradient on a later parameter stops the step before any parameter changes."""
    a = torch.randn(5, 4).t().requires_grad_()
    b = torch.randn(3).requires_grad_()
    opt = ft.Adam([a, b], lr=0.1)
    b.grad_dtype = None
    a.grad, b.grad = torch.randn(4, 5), torch.randn(3, dtype=torch.float64)
    before = a.detach().clone()
    with pytest.raises(TypeError, match="dtype"):
        opt.step()
    assert torch.equal(a.detach(), before) and not opt.state


# -- re-homed .data, .grad and state between steps ----------------------------------------------

def net(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(),
                               torch.nn.Linear(4 * 4 * 4, 5), torch.nn.Tanh(),
                               torch.nn.Linear(5, 5), torch.nn.Linear(5, 2))


def data(i):
    g = torch.Generator().manual_seed(500 + i)
    return torch.randn(8, 3, 6, 6, generator=g), torch.randn(8, 2, generator=g)


def backward(model, i, set_to_none=True):
    dtype = next(model.parameters()).dtype
    if set_to_none:
        for p in model.parameters():
            p.grad = None
    elif any(p.grad is not None for p in model.parameters()):
        for p in model.parameters():
            p.grad.zero_()
    x, y = data(i)
    torch.nn.functional.mse_loss(model(x.to(dtype)), y.to(dtype)).backward()


def _bucket(model):
    """ZeRO's ``parameters_as_bucket_view``: every parameter a view into one buffer, end to
    end (so the adapter may join them into one kernel row)."""
    ps = list(model.parameters())
    buf = torch.cat([p.detach().reshape(-1) for p in ps])
    a = 0
    for p in ps:
        p.data = buf[a:a + p.numel()].view_as(p)
        a += p.numel()


def _channels_last(model):
    model.to(memory_format=torch.channels_last)   # the conv weight becomes non-contiguous
    assert not model[0].weight.is_contiguous()


def _new_values(model):
    for p in model.parameters():
        p.data = p.data * 0.5 + 0.25                   # new memory, new values


def _same_storage_other_view(model):
    for p in model.parameters():
        p.data = p.data.reshape(-1).view(p.shape)


def _transposed(model):
    for p in model.parameters():
        if p.dim() == 2:
            p.data = p.data.t().contiguous().t()      # same values, non-contiguous


def _dtype_round_trip(model):
    model.to(torch.float64)
    model.to(torch.float32)


def _clone(model):
    for p in model.parameters():
        p.data = p.data.clone()


#: (id, what is done to the model between two steps, the same on both sides)
REHOMES = [
    ("data-clone", _clone),
    ("data-new-values", _new_values),
    ("model.to-float64-and-back", _dtype_round_trip),
    ("channels-last", _channels_last),
    ("transposed-data", _transposed),
    ("same-storage-new-view", _same_storage_other_view),
    ("bucket-view", _bucket),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("rehome", REHOMES, ids=[r[0] for r in REHOMES])
def test_rehomed_data(rehome, flatten, backend):
    _, move = rehome
    ref = net()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.02, weight_decay=0.01)
    opt = ft.Adam(model.parameters(), lr=0.02, weight_decay=0.01, flatten=flatten,
                  backend=backend)
    for i in range(6):
        if i in (2, 4):
            move(ref)
            move(model)
            if i == 4:   # once more, back to fresh memory
                _clone(ref)
                _clone(model)
        backward(ref, i)
        backward(model, i)
        ref_opt.step()
        opt.step()
        assert_close(list(ref.parameters()), list(model.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
def test_swapped_data_between_two_parameters(flatten, backend):
    """Two parameters exchange their ``.data``: every address the cached call knew is still
    in use, only who owns which changed."""
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(4, 3)) for _ in range(3)]
    got = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt = torch.optim.SGD(ref, lr=0.1, momentum=0.9)
    opt = ft.SGD(got, lr=0.1, momentum=0.9, flatten=flatten, backend=backend)
    for i in range(6):
        if i in (2, 3):
            for ps in (ref, got):
                ps[0].data, ps[2].data = ps[2].data, ps[0].data
        for p, q, g in zip(ref, got, grads_for(ref, i)):
            p.grad = g
            if q.grad is None:
                q.grad = g.clone()
            else:
                q.grad.copy_(g)
        ref_opt.step()
        opt.step()
        assert_close(ref, got)


def _grad_clone(model):
    p = model[2].weight
    p.grad = p.grad.clone()


def _grad_transposed(model):
    p = model[2].weight
    p.grad = p.grad.t().contiguous().t()


def _grad_into_one_buffer(model):
    """DDP's ``gradient_as_bucket_view``: every gradient a view into one buffer."""
    ps = list(model.parameters())
    buf = torch.cat([p.grad.reshape(-1) for p in ps])
    a = 0
    for p in ps:
        p.grad = buf[a:a + p.numel()].view_as(p)
        a += p.numel()


def _grad_none_one(model):
    model[4].weight.grad = None     # skipped this step, state kept (as torch)


GRAD_CHANGES = [("new-grad-tensor", _grad_clone), ("non-contiguous-grad", _grad_transposed),
                ("grads-in-one-buffer", _grad_into_one_buffer), ("one-grad-none", _grad_none_one)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("change", GRAD_CHANGES, ids=[c[0] for c in GRAD_CHANGES])
def test_rehomed_grads(change, flatten, backend):
    """Gradients after ``zero_grad(set_to_none=False)`` (the same tensors), after
    ``set_to_none=True`` (fresh ones from backward), and replaced by hand."""
    _, edit = change
    ref = net()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=0.02)
    opt = ft.AdamW(model.parameters(), lr=0.02, flatten=flatten, backend=backend)
    for i in range(7):
        set_to_none = i % 3 != 1
        ref_opt.zero_grad(set_to_none=set_to_none)
        opt.zero_grad(set_to_none=set_to_none)
        backward(ref, i, set_to_none=False)
        backward(model, i, set_to_none=False)
        if i in (2, 5):
            edit(ref)
            edit(model)
        ref_opt.step()
        opt.step()
        assert_close(list(ref.parameters()), list(model.parameters()))


@pytest.mark.parametrize("backend", BACKENDS)
def test_replaced_and_loaded_state(backend):
    """State tensors replaced in ``opt.state`` (a clone, a loaded checkpoint) are the ones
    the next step updates."""
    ref = net()
    model = copy.deepcopy(ref)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=0.02)
    opt = ft.Adam(model.parameters(), lr=0.02, backend=backend)
    for i in range(6):
        if i == 2:
            for o in (ref_opt, opt):
                for st in o.state.values():
                    st["exp_avg"] = st["exp_avg"].clone()
                    st["exp_avg_sq"] = st["exp_avg_sq"] * 1.0
        if i == 4:
            opt.load_state_dict(copy.deepcopy(ref_opt.state_dict()))
        backward(ref, i)
        backward(model, i)
        ref_opt.step()
        opt.step()
        assert_close(list(ref.parameters()), list(model.parameters()))
        for p, q in zip(ref.parameters(), model.parameters()):
            torch.testing.assert_close(opt.state[q]["exp_avg"], ref_opt.state[p]["exp_avg"],
                                       rtol=1e-4, atol=1e-6)


def test_state_of_another_dtype_raises_before_changing_anything():
    """``model.to(float64)`` after a step leaves torch's state float32: torch raises at the
    next step, so does fastopt (no kernel reads a float32 buffer as float64)."""
    model = net()
    opt = ft.Adam(model.parameters(), lr=0.02)
    backward(model, 0)
    opt.step()
    model.to(torch.float64)
    backward(model, 1)
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises((TypeError, RuntimeError), match="dtype"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("kw", [dict(state_dtype="int8"), dict(state_dtype="bfloat16"),
                                dict(rounding="stochastic", seed=4)],
                         ids=["int8-state", "bf16-state", "stochastic"])
def test_non_contiguous_param_same_bits_as_its_contiguous_twin(kw):
    """A transposed parameter is stepped in its logical (row-major) order: bit for bit what a
    contiguous parameter holding the same values gets, 8-bit blocks and random bits included."""
    dtype = torch.bfloat16 if "rounding" in kw else torch.float32
    torch.manual_seed(1)
    base = torch.randn(80, 70).to(dtype)          # 5600 elements: 8-bit state (>= 4096)
    odd = base.clone().t().requires_grad_()       # (70, 80), non-contiguous
    twin = base.t().contiguous().requires_grad_()
    assert not odd.is_contiguous() and torch.equal(odd, twin)
    o1, o2 = ft.AdamW([odd], lr=0.01, **kw), ft.AdamW([twin], lr=0.01, **kw)
    for i in range(3):
        g = grads_for([twin], i)[0]
        odd.grad, twin.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert torch.equal(odd.detach(), twin.detach())
    for name, v in o2.state[twin].items():
        assert torch.equal(o1.state[odd][name], v), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_replaced_in_param_groups(backend):
    """A parameter swapped into ``param_groups`` by hand (torch steps it with fresh state)."""
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(3, 2)), torch.nn.Parameter(torch.randn(4))]
    got = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    ref_opt = torch.optim.Adam(ref, lr=0.05)
    opt = ft.Adam(got, lr=0.05, backend=backend)
    for i in range(5):
        if i == 2:
            new = torch.randn(5, 5)
            for ps, o in ((ref, ref_opt), (got, opt)):
                ps[1] = torch.nn.Parameter(new.clone())
                o.param_groups[0]["params"][1] = ps[1]
        for p, q, g in zip(ref, got, grads_for(ref, i)):
            p.grad, q.grad = g, g.clone()
        ref_opt.step()
        opt.step()
        assert_close(ref, got)
    assert opt.state[got[1]]["step"].item() == 3

"""The step's kept plan (fastopt/torch/_plan.py): whatever changes between two steps, a step
through the plan is bit for bit the generic step (plans disabled), matches torch.optim where
torch can do the same, and raises the generic path's errors before changing anything."""
import copy
import gc
import weakref

import pytest

torch = pytest.importorskip("torch")

import fastopt.specs  # noqa: E402
import fastopt.torch as ft  # noqa: E402

STEPS = 8
TOL32 = dict(rtol=1e-5, atol=1e-6)


class _NoPlans(dict):
    """An optimizer's ``_plans`` that keeps nothing: every step takes the generic path."""

    def __setitem__(self, key, value):
        pass


def make_model(dtype=torch.float32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.Tanh(),
                               torch.nn.Linear(32, 3)).to(dtype)


def make_extra(dtype=torch.float32):
    return torch.nn.Parameter(torch.linspace(-1, 1, 5, dtype=torch.float32).to(dtype))


def backward(model, extra, i, fresh, held):
    """Gradients of step ``i``: new tensors (``fresh``, as ``zero_grad()`` + ``backward()``)
    or written into the first step's gradient tensors (the same objects every step)."""
    dtype = next(model.parameters()).dtype
    g = torch.Generator().manual_seed(1000 + i)
    x = torch.randn(16, 10, generator=g).to(dtype)
    y = torch.randn(16, 3, generator=g).to(dtype)
    for p in model.parameters():
        p.grad = None
    torch.nn.functional.mse_loss(model(x), y).backward()
    if extra is not None:
        extra.grad = (torch.cos(torch.arange(5.0) + i) * 0.1).to(dtype) if i >= 3 else None
    if not fresh:
        for p in [*model.parameters(), extra]:
            if p is None or p.grad is None:
                continue
            if p in held and held[p].dtype == p.grad.dtype and held[p].shape == p.grad.shape:
                held[p].copy_(p.grad)
                p.grad = held[p]
            else:
                held[p] = p.grad


def snapshot(model, extra, opt):
    params = [p.detach().clone() for p in model.parameters()]
    if extra is not None:
        params.append(extra.detach().clone())
    state = [{k: v.detach().clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
             for st in opt.state.values()]
    return params, state


def train(make_opt, mutate=None, *, plans=True, dtype=torch.float32, fresh=True, extra=None,
          steps=STEPS):
    """Snapshots after every step.  ``extra``: None, "param" (in the optimizer, a gradient
    from step 3 on) or "late" (added by add_param_group at step 3)."""
    model = make_model(dtype)
    x = make_extra(dtype) if extra else None
    opt = make_opt([*model.parameters(), x] if extra == "param" else model.parameters())
    if not plans:
        opt._plans = _NoPlans()
    if getattr(opt, "spec", None) is not None and opt.spec.switch:
        opt.train()
    held, out = {}, []
    for i in range(steps):
        backward(model, x, i, fresh, held)
        if extra == "late" and i == 3:
            opt.add_param_group({"params": [x], "lr": 0.02})
        if mutate is not None:
            mutate(i, model, x, opt)
        opt.step()
        out.append(snapshot(model, x, opt))
    return out


def assert_same(a, b):
    """Bit for bit, every step, every parameter and state tensor."""
    assert len(a) == len(b)
    for (pa, sa), (pb, sb) in zip(a, b):
        assert len(pa) == len(pb) and len(sa) == len(sb)
        for x, y in zip(pa, pb):
            assert torch.equal(x, y)
        for x, y in zip(sa, sb):
            assert x.keys() == y.keys()
            for k in x:
                assert x[k].dtype == y[k].dtype and torch.equal(x[k], y[k]), k


def assert_close(a, b):
    for (pa, _), (pb, _) in zip(a, b):
        for x, y in zip(pa, pb):
            torch.testing.assert_close(x, y, **TOL32)


# -- what changes between steps ------------------------------------------------------------------

def _at(step, fn):
    def mutate(i, model, extra, opt):
        if i == step:
            fn(model, extra, opt)
    return mutate


def _from(step, fn):
    def mutate(i, model, extra, opt):
        if i >= step:
            fn(model, extra, opt)
    return mutate


def _clone_data(model, extra, opt):
    for p in model.parameters():
        p.data = p.data.clone()


def _new_values(model, extra, opt):
    for p in model.parameters():
        p.data = p.data * 0.5 + 0.25


def _transposed(model, extra, opt):
    w = model[0].weight
    w.data = w.data.t().contiguous().t()


def _lr(model, extra, opt):
    opt.param_groups[0]["lr"] = 0.001


def _lr_tensor(model, extra, opt):
    opt.param_groups[0]["lr"] = torch.tensor(0.02)


def _hypers(model, extra, opt):
    g = opt.param_groups[0]
    g["weight_decay"] = 0.1
    g["betas"] = (0.8, 0.99)
    g["eps"] = 1e-6


def _maximize(model, extra, opt):       # a step scalar (the gradient's sign)
    opt.param_groups[0]["maximize"] = True


def _weight_decay_off(model, extra, opt):   # compile-time flags of the kernel
    opt.param_groups[0]["weight_decay"] = 0.0


def _decoupled(model, extra, opt):
    opt.param_groups[0]["decoupled_weight_decay"] = True


def _grad_none(model, extra, opt):     # one parameter sits a step out: step counts differ
    model[0].bias.grad = None


def _grad_clone(model, extra, opt):
    p = model[2].weight
    p.grad = p.grad.clone()


def _grad_transposed(model, extra, opt):     # read through a contiguous copy
    p = model[0].weight
    p.grad = p.grad.t().contiguous().t()


def _state_replaced(model, extra, opt):
    st = opt.state[model[0].weight]
    st["exp_avg"] = st["exp_avg"].clone() * 0.5


def _state_values_edited(model, extra, opt):
    opt.state[model[0].weight]["exp_avg_sq"].mul_(2.0)


def _steps_all_edited(model, extra, opt):
    for p in model.parameters():
        opt.state[p]["step"].fill_(20.0)


def _step_one_edited(model, extra, opt):
    opt.state[model[2].bias]["step"].fill_(20.0)


def _step_replaced(model, extra, opt):
    st = opt.state[model[0].bias]
    st["step"] = st["step"].clone()


def _params_popped(model, extra, opt):
    opt.param_groups[0]["params"].pop()


def _reload(model, extra, opt):
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))


def _two_edits(model, extra, opt):
    _clone_data(model, extra, opt)
    _lr(model, extra, opt)


#: (id, what happens before a step, extra, torch.optim.Adam can do it too)
SCENARIOS = [
    ("nothing", None, None),
    ("data-clone", _at(3, _clone_data), None),
    ("data-new-values", _at(3, _new_values), None),
    ("data-transposed", _at(3, _transposed), None),
    ("lr", _at(3, _lr), None),
    ("lr-tensor", _at(2, _lr_tensor), None),
    ("hyperparameters", _at(3, _hypers), None),
    ("maximize", _at(3, _maximize), None),
    ("weight-decay-off-flag", _at(3, _weight_decay_off), None),
    ("decoupled-flag", _at(3, _decoupled), None),
    ("grad-none-once", _at(3, _grad_none), None),
    ("grad-new-tensor", _at(4, _grad_clone), None),
    ("grad-non-contiguous", _from(3, _grad_transposed), None),
    ("state-tensor-replaced", _at(3, _state_replaced), None),
    ("state-values-edited", _at(3, _state_values_edited), None),
    ("steps-edited", _at(3, _steps_all_edited), None),
    ("one-step-edited", _at(3, _step_one_edited), None),
    ("step-tensor-replaced", _at(3, _step_replaced), None),
    ("params-popped", _at(3, _params_popped), None),
    ("load-state-dict", _at(4, _reload), None),
    ("clone-and-lr", _at(5, _two_edits), None),
    ("frozen-then-grad", None, "param"),
    ("add-param-group", None, "late"),
]
SCENARIO_IDS = [s[0] for s in SCENARIOS]


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-grads", "same-grads"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=SCENARIO_IDS)
def test_plan_is_the_generic_step_and_torch(scenario, fresh):
    _, mutate, extra = scenario
    kw = dict(lr=0.01, weight_decay=0.01)
    got = train(lambda ps: ft.Adam(ps, **kw), mutate, fresh=fresh, extra=extra)
    generic = train(lambda ps: ft.Adam(ps, **kw), mutate, fresh=fresh, extra=extra,
                    plans=False)
    assert_same(got, generic)
    ref = train(lambda ps: torch.optim.Adam(ps, **kw), mutate, fresh=fresh, extra=extra)
    assert_close(got, ref)


@pytest.mark.parametrize("flatten", [False, True], ids=["per-param", "flatten"])
@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if s[0] in (
    "nothing", "data-clone", "lr", "grad-new-tensor", "load-state-dict", "params-popped",
    "steps-edited")], ids=lambda s: s[0])
def test_flatten_and_amsgrad(scenario, flatten):
    _, mutate, extra = scenario
    kw = dict(lr=0.01, amsgrad=True)
    mk = lambda ps: ft.AdamW(ps, flatten=flatten, **kw)    # noqa: E731
    got = train(mk, mutate, fresh=False, extra=extra)
    assert_same(got, train(mk, mutate, fresh=False, extra=extra, plans=False))
    assert_close(got, train(lambda ps: torch.optim.AdamW(ps, **kw), mutate, fresh=False,
                            extra=extra))


def _amsgrad_on(model, extra, opt):    # a flag that adds state: fastopt creates it
    opt.param_groups[0]["amsgrad"] = True


def _nesterov_on(model, extra, opt):
    opt.param_groups[0]["nesterov"] = True


@pytest.mark.parametrize("fresh", [True, False], ids=["fresh-grads", "same-grads"])
@pytest.mark.parametrize("cls, kw, mutate", [
    (ft.Adam, dict(lr=0.01), _at(3, _amsgrad_on)),
    (ft.SGD, dict(lr=0.05, momentum=0.9), _at(3, _nesterov_on)),
], ids=["adam-amsgrad-on", "sgd-nesterov-on"])
def test_flag_that_changes_the_state(cls, kw, mutate, fresh):
    mk = lambda ps: cls(ps, **kw)    # noqa: E731
    assert_same(train(mk, mutate, fresh=fresh), train(mk, mutate, fresh=fresh, plans=False))


@pytest.mark.parametrize("spec", fastopt.specs.SPECS,
                         ids=lambda s: s.name)
def test_every_optimizer(spec):
    """Each family through its plan: fresh gradients (rebinds), a re-homed ``.data``, an lr
    change and a reload, bit for bit the generic step."""
    cls = getattr(ft, spec.name)

    def mutate(i, model, extra, opt):
        if i == 2:
            _clone_data(model, extra, opt)
        if i == 4:
            opt.param_groups[0]["lr"] = opt.param_groups[0]["lr"] * 0.5
        if i == 6:
            _reload(model, extra, opt)
    mk = lambda ps: cls(ps)    # noqa: E731
    assert_same(train(mk, mutate), train(mk, mutate, plans=False))
    assert_same(train(mk, mutate, fresh=False, extra="param"),
                train(mk, mutate, fresh=False, extra="param", plans=False))


def _any_grad_dtype(p):
    if hasattr(p, "grad_dtype"):
        p.grad_dtype = None        # torch >= 2.10: allow a float32 .grad on a half tensor


def _grads_float32(model, extra, opt):
    for p in model.parameters():
        _any_grad_dtype(p)
        p.grad = p.grad.float()


def _set_grad(p, g):
    _any_grad_dtype(p)
    p.grad = g


@pytest.mark.parametrize("state_dtype, rounding", [(None, "stochastic"), ("float32", "nearest"),
                                                   ("int8", "stochastic")])
def test_bfloat16_grad_dtype_change(state_dtype, rounding):
    """bfloat16 parameters: the gradient dtype (bfloat16 or float32: a kernel format) changes
    between steps; stochastic rounding's bits follow the step."""
    kw = dict(lr=0.01, state_dtype=state_dtype, rounding=rounding, min_8bit_size=16)

    def mutate(i, model, extra, opt):
        if i in (2, 3):
            _grads_float32(model, extra, opt)
        if i == 5:
            _clone_data(model, extra, opt)
    mk = lambda ps: ft.Adam(ps, **kw)   # noqa: E731
    for fresh in (True, False):
        assert_same(train(mk, mutate, dtype=torch.bfloat16, fresh=fresh),
                    train(mk, mutate, dtype=torch.bfloat16, fresh=fresh, plans=False))


def _stepped(dtype=torch.float32, **kw):
    model = make_model(dtype)
    opt = ft.Adam(model.parameters(), lr=0.01, **kw)
    held = {}
    for i in range(3):
        backward(model, None, i, False, held)
        opt.step()
    assert opt._plans[0] is not None
    return model, opt


def _frozen_copy(model, opt):
    return [p.detach().clone() for p in model.parameters()], copy.deepcopy(
        {k: dict(v) for k, v in opt.state_dict()["state"].items()})


def _assert_unchanged(before, model, opt):
    params, state = before
    for a, b in zip(params, model.parameters()):
        assert torch.equal(a, b)
    for k, v in opt.state_dict()["state"].items():
        for n, t in v.items():
            assert torch.equal(t, state[k][n])


@pytest.mark.parametrize("bad, error", [
    (lambda m: _set_grad(m[2].weight, m[2].weight.grad.double()), TypeError),
    (lambda m: setattr(m[2].weight.grad, "data", torch.zeros(2, 2)), ValueError),
    (lambda m: setattr(m[2].weight, "grad", m[2].weight.grad.to_sparse()), RuntimeError),
    (lambda m: setattr(m[2].weight, "data", m[2].weight.data.double()), TypeError),
    (lambda m: setattr(m[0].bias.grad, "data", m[0].bias.grad.data[:4]), ValueError),
], ids=["grad-float64", "grad-shape", "grad-sparse", "data-float64", "grad-data-shrunk"])
def test_bad_input_after_a_plan_raises_before_any_change(bad, error):
    model, opt = _stepped()
    before = _frozen_copy(model, opt)
    bad(model)
    with pytest.raises(error):
        opt.step()
    _assert_unchanged(before, model, opt)


def test_bad_lr_after_a_plan_raises_before_any_change():
    model, opt = _stepped()
    before = _frozen_copy(model, opt)
    opt.param_groups[0]["lr"] = -1.0
    with pytest.raises(ValueError):
        opt.step()
    _assert_unchanged(before, model, opt)


def test_steady_state_takes_the_plan(monkeypatch):
    """After the first step neither fresh gradients (``zero_grad()`` + ``backward()``) nor
    the same ones send a group through the generic path; a change does, once."""
    for fresh in (True, False):
        model = make_model()
        opt = ft.Adam(model.parameters(), lr=0.01)
        generic = []
        real = opt._plan_group
        monkeypatch.setattr(opt, "_plan_group", lambda gi, g: generic.append(gi) or real(gi, g))
        held = {}
        for i in range(6):
            backward(model, None, i, fresh, held)
            if i == 3:
                opt.param_groups[0]["amsgrad"] = True
            opt.step()
        assert generic == [0, 0]    # the first step, the flag change


def test_flatten_steady_state_takes_the_plan(monkeypatch):
    model = make_model()
    opt = ft.Adam(model.parameters(), lr=0.01, flatten=True)
    generic = []
    real = opt._plan_group
    monkeypatch.setattr(opt, "_plan_group", lambda gi, g: generic.append(gi) or real(gi, g))
    for i in range(5):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(torch.ones(2, 10) * i), torch.zeros(2, 3)).backward()
        opt.step()
    assert generic == [0]


def test_a_rebound_call_is_not_reused_for_the_old_gradient():
    """A plan rebinds its calls to fresh gradients by writing their addresses into the bound
    table in place; the generic path's cache held that same call under the first gradient's
    identity and address.  Giving the parameter its first (still live) gradient back while the
    plan cannot run (``opt.state`` replaced by an equal dict) must step with that gradient, as
    torch does, not with the address the table was rewritten to."""
    from collections import defaultdict
    torch.manual_seed(0)
    w = torch.randn(40, requires_grad=True)
    ref_w = w.detach().clone().requires_grad_()
    opt = ft.Adam([w], lr=0.1)
    ref = torch.optim.Adam([ref_w], lr=0.1)
    g1, g2 = torch.randn(40), torch.randn(40)
    for grad, replace_state in ((g1, False), (g2.clone(), False), (g1, True)):
        w.grad, ref_w.grad = grad, grad.clone()
        if replace_state:
            opt.state = defaultdict(dict, opt.state)
        opt.step()
        ref.step()
        torch.testing.assert_close(w, ref_w, **TOL32)


def test_plan_keeps_no_gradient_alive():
    model, opt = _stepped()
    refs = [weakref.ref(p.grad) for p in model.parameters()]
    opt.zero_grad()      # set_to_none
    gc.collect()
    assert all(r() is None for r in refs)


@pytest.mark.parametrize("default", [torch.float32, torch.float64])
def test_step_counts_are_torch_tensors(default):
    """``step`` is advanced in place through its address: still torch's 0-d tensor of the
    default dtype's kind, with torch's value."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(default)
    try:
        model, opt = _stepped(dtype=default)
        ref_model = make_model(default)
        ref = torch.optim.Adam(ref_model.parameters(), lr=0.01)
        held = {}
        for i in range(3):
            backward(ref_model, None, i, False, held)
            ref.step()
        for p, q in zip(model.parameters(), ref_model.parameters()):
            a, b = opt.state[p]["step"], ref.state[q]["step"]
            assert a.dtype == b.dtype and a.shape == b.shape and a.item() == b.item() == 3
        sd = opt.state_dict()
        torch.testing.assert_close(sd["state"][0]["step"], ref.state_dict()["state"][0]["step"])
    finally:
        torch.set_default_dtype(old)


def test_checkpoint_round_trip_through_plans():
    """Save after plan steps, load into a new optimizer, continue: bit for bit the run that
    never stopped."""
    kw = dict(lr=0.01, weight_decay=0.01)
    whole = train(lambda ps: ft.AdamW(ps, **kw), steps=STEPS)
    model = make_model()
    opt = ft.AdamW(model.parameters(), **kw)
    held = {}
    for i in range(4):
        backward(model, None, i, True, held)
        opt.step()
    saved = copy.deepcopy(opt.state_dict())
    values = [p.detach().clone() for p in model.parameters()]
    model2 = make_model()
    with torch.no_grad():
        for p, v in zip(model2.parameters(), values):
            p.copy_(v)
    opt2 = ft.AdamW(model2.parameters(), **kw)
    opt2.load_state_dict(saved)
    for i in range(4, STEPS):
        backward(model2, None, i, True, held)
        opt2.step()
    for a, b in zip(whole[-1][0], model2.parameters()):
        assert torch.equal(a, b)

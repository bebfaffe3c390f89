"""A fastopt.torch optimizer deep-copied, pickled or saved whole with ``torch.save`` (as
Lightning's and Hugging Face's checkpoint and EMA code, or a user's ``copy.deepcopy`` of a
training state, do): the copy keeps every constructor option, steps its own tensors (never the
original's: the bound calls are addresses, and are not copied), and continues bit for bit as the
original does; in flatten mode its parameters, gradients and state are views into its own flat
buffers again, so its step is still one kernel row.  torch's ``Optimizer.__getstate__`` keeps
only ``defaults``, ``state`` and ``param_groups``: before fastopt kept its own options too, a
copy's first step raised ``AttributeError``."""
import copy
import io
import pickle

import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

HOW = {
    "deepcopy": lambda obj: copy.deepcopy(obj),
    "pickle": lambda obj: pickle.loads(pickle.dumps(obj)),
    "torch.save": lambda obj: _torch_roundtrip(obj),
}

CASES = {
    "adamw-clip": (ft.AdamW, dict(lr=0.01, weight_decay=0.1, max_grad_norm=0.5)),
    "sgd-nesterov": (ft.SGD, dict(lr=0.05, momentum=0.9, nesterov=True)),
    "lamb": (ft.LAMB, dict(lr=0.01, weight_decay=0.01)),
    "schedulefree": (ft.AdamWScheduleFree, dict(lr=0.01, warmup_steps=2)),
    "adam-int8": (ft.Adam, dict(lr=0.01, state_dtype="int8", min_8bit_size=64)),
    "adamw-bf16-stochastic": (ft.AdamW, dict(lr=0.01, state_dtype="bfloat16",
                                            rounding="stochastic", seed=7)),
}


def _torch_roundtrip(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=False)


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(16, 12), torch.nn.Tanh(), torch.nn.Linear(12, 3))


def _batches(n, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 16, generator=g), torch.randn(8, 3, generator=g)) for _ in range(n)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            {k: {n: (v.clone() if isinstance(v, torch.Tensor) else v) for n, v in st.items()}
             for k, st in opt.state_dict()["state"].items()})


def _assert_same(a, b):
    (pa, sa), (pb, sb) = a, b
    for x, y in zip(pa, pb):
        assert torch.equal(x, y)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].keys() == sb[k].keys()
        for n in sa[k]:
            x, y = sa[k][n], sb[k][n]
            assert torch.equal(x, y) if isinstance(x, torch.Tensor) else x == y, (k, n)


@pytest.mark.parametrize("flatten", [False, True], ids=["tensors", "flatten"])
@pytest.mark.parametrize("how", HOW)
@pytest.mark.parametrize("case", CASES)
def test_copy_continues_bit_for_bit_and_leaves_the_original(case, how, flatten):
    cls, kw = CASES[case]
    if flatten and kw.get("state_dtype") == "int8":
        kw = dict(kw, min_8bit_size=4096)     # flatten: the small tensors keep flat state
    model = _model()
    opt = cls(model.parameters(), flatten=flatten, **kw)
    batches = _batches(6)
    _train(model, opt, batches[:3])
    model2, opt2 = HOW[how]((model, opt))
    assert type(opt2) is cls
    for name in ("max_grad_norm", "state_dtype", "rounding", "seed", "min_8bit_size"):
        assert getattr(opt2, name) == getattr(opt, name), name
    assert opt2._flatten == flatten
    assert all(p is q for p, q in zip(opt2.param_groups[0]["params"], model2.parameters()))

    before = _snapshot(model, opt)
    _train(model2, opt2, batches[3:])            # the copy first: the original must not move
    _assert_same(_snapshot(model, opt), before)
    _train(model, opt, batches[3:])
    _assert_same(_snapshot(model2, opt2), _snapshot(model, opt))
    if flatten:
        flat = opt2._flats[0][0]
        assert flat.intact()
        params = list(model2.parameters())
        assert all(p.untyped_storage().data_ptr() == flat.param.untyped_storage().data_ptr()
                   for p in params)
        assert all(p.grad.untyped_storage().data_ptr() == flat.grad.untyped_storage().data_ptr()
                   for p in params)
        for st in opt2.state.values():
            for v in st.values():
                if isinstance(v, torch.Tensor) and v.dim() and v.dtype.is_floating_point:
                    assert any(v.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
                               for b in flat.state.values())


def test_gradients_come_along_and_a_none_stays_none():
    """flatten=True, leaf tensors as parameters (a deep copy of a tensor keeps its ``.grad``;
    of an ``nn.Parameter`` it does not: torch's), gradients replaced by tensors of their own
    and one set to None: the copy steps with those gradients (copied into its flat buffer) and
    skips that parameter, as the original does (re-attaching a zero gradient would let weight
    decay move it)."""
    g = torch.Generator().manual_seed(3)
    params = [torch.randn(shape, generator=g).requires_grad_() for shape in [(7, 5), (4,), (9,)]]
    opt = ft.AdamW(params, lr=0.01, weight_decay=0.5, flatten=True)
    for _ in range(2):
        for p in params:
            p.grad.copy_(torch.randn(p.shape, generator=g))
        opt.step()
    params[0].grad = torch.randn(params[0].shape, generator=g)
    params[1].grad = None
    params[2].grad = torch.ones_like(params[2])
    params2, opt2 = copy.deepcopy((params, opt))
    assert params2[1].grad is None and torch.equal(params2[2].grad, params[2].grad)
    frozen = params2[1].detach().clone()
    opt2.step()
    opt.step()
    assert torch.equal(params2[1], frozen)
    for a, b in zip(params, params2):
        assert torch.equal(a, b)
    flat = opt2._flats[0][0]
    assert params2[0].grad.data_ptr() == flat.grad.data_ptr()   # copied into the flat buffer
    opt2.zero_grad()                                             # re-attaches every view
    assert flat.intact()


def test_a_pickle_with_torchs_three_keys_only_gets_the_defaults():
    """An optimizer pickled before fastopt kept its options (``defaults``, ``state`` and
    ``param_groups`` only) loads with the constructor's defaults and steps."""
    model = _model()
    opt = ft.Adam(model.parameters(), lr=0.01)
    _train(model, opt, _batches(2))
    bare = ft.Adam.__new__(ft.Adam)
    bare.__setstate__({"defaults": opt.defaults, "state": opt.state,
                       "param_groups": opt.param_groups})
    assert bare.max_grad_norm is None and bare.state_dtype is None and not bare._flatten
    ref = copy.deepcopy((model, opt))
    _train(model, bare, _batches(2, seed=5))
    _train(ref[0], ref[1], _batches(2, seed=5))
    for a, b in zip(model.parameters(), ref[0].parameters()):
        assert torch.equal(a, b)

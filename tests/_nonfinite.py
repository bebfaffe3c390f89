"""Shared pieces of the non-finite tests (tests/test_nonfinite.py on the host backends,
tests/cuda/test_nonfinite_cuda.py on the CUDA backend): NaN and Inf planted in gradients,
parameters and state, stepped by fastopt and by torch.optim, compared position by position."""
import numpy as np

import fastopt
from fastopt.specs import SPECS

N = 24
STEPS = 5
#: (step, index, value) planted in the gradient before that step (1-based)
GRAD_BAD = [(1, 1, np.nan), (1, 2, np.inf), (2, 3, -np.inf), (3, 4, np.inf), (4, 4, 1.0)]
#: (index, value) planted in the parameter before the first step
PARAM_BAD = [(6, np.nan), (7, np.inf), (8, -np.inf)]
#: (index, value) planted in every state buffer after the first step
STATE_BAD = [(11, np.nan), (12, np.inf), (13, -np.inf)]

#: extra option combinations beyond each spec's cases: the lerp's other branch (weight >= 0.5)
EXTRA = {"Adam": {"beta1-0.3-ams": dict(lr=0.01, betas=(0.3, 0.9), amsgrad=True)},
         "AdamW": {"beta1-0.2": dict(lr=0.01, betas=(0.2, 0.9))},
         "RMSprop": {"centered-alpha-0.4-mom": dict(lr=0.01, alpha=0.4, centered=True,
                                                    momentum=0.5)}}


#: fastopt-only options (torch has no such argument)
FASTOPT_ONLY = {"bias_correction"}


def cases(torch_only=False):
    """(id, spec, kwargs) of every case; ``torch_only``: those torch.optim can run too."""
    out = []
    for s in SPECS:
        if torch_only and not s.torch:
            continue
        for k, kw in {**s.cases, **EXTRA.get(s.name, {})}.items():
            if torch_only and FASTOPT_ONLY & set(kw):
                continue
            out.append((f"{s.name.lower()}-{k}" if k else s.name.lower(), s, kw))
    return out


def problem(dtype=np.float32, seed=0):
    rng = np.random.default_rng(seed)
    p0 = rng.standard_normal(N).astype(dtype)
    for i, v in PARAM_BAD:
        p0[i] = v
    grads = []
    for t in range(1, STEPS + 1):
        g = rng.standard_normal(N).astype(dtype)
        for step, i, v in GRAD_BAD:
            if step == t:
                g[i] = v
        grads.append(g)
    return p0, grads


def run_fastopt(spec, kw, backend, dtype=np.float32, to_device=None, to_host=None):
    """-> (param, {state name: array}) after STEPS steps, with the plants."""
    to_device = to_device or (lambda a: a)
    to_host = to_host or (lambda a: a)
    p0, grads = problem(dtype)
    p = to_device(p0.copy())
    opt = getattr(fastopt, spec.name)([p], backend=backend, **kw)
    for t, g in enumerate(grads, 1):
        opt.step([to_device(g)])
        if t == 1:
            sd = opt.state_dict()
            for name, arr in sd["state"][0].items():
                if name != "step":
                    for i, v in STATE_BAD:
                        arr[i] = v
            opt.load_state_dict(sd)
    state = {k: v for k, v in opt.state_dict()["state"][0].items() if k != "step"}
    return np.asarray(to_host(p)), state


def torch_class(spec):
    """The peer class of ``spec.torch`` ("torch.optim.Adam", "schedulefree.AdamWScheduleFree")."""
    import importlib
    module, _, name = spec.torch.rpartition(".")
    return getattr(importlib.import_module(module), name)


def run_torch(spec, kw, dtype=np.float32):
    import torch
    p0, grads = problem(dtype)
    tp = torch.from_numpy(p0.copy()).requires_grad_()
    opt = torch_class(spec)([tp], foreach=False, **kw)
    if hasattr(opt, "train"):       # schedulefree starts in eval mode
        opt.train()
    for t, g in enumerate(grads, 1):
        tp.grad = torch.from_numpy(g.copy())
        opt.step()
        if t == 1:
            for name, v in opt.state[tp].items():
                if name != "step" and v.dim():        # not the 0-d eta, mu, mu_product
                    for i, bad in STATE_BAD:
                        v[i] = bad
    state = {k: v.detach().numpy().copy() for k, v in opt.state[tp].items()
             if k != "step" and v.dim()}
    return tp.detach().numpy().copy(), state


def assert_same_nonfinite(got, want, what, rtol=2e-4, atol=1e-5):
    """NaN where ``want`` has NaN, the same infinities, finite values close."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(np.isposinf(got), np.isposinf(want),
                                  err_msg=f"{what}: +Inf positions")
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(want),
                                  err_msg=f"{what}: -Inf positions")
    fin = np.isfinite(want)
    np.testing.assert_allclose(got[fin], want[fin], rtol=rtol, atol=atol, err_msg=what)


def compare(got, want, label):
    p, st = got
    rp, rst = want
    assert_same_nonfinite(p, rp, f"{label}: param")
    assert set(st) == set(rst), f"{label}: state names {sorted(st)} != {sorted(rst)}"
    for name in rst:
        assert_same_nonfinite(st[name], rst[name], f"{label}: {name}")

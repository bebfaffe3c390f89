"""Every spec with a peer class (torch.optim, schedulefree), every option, against the peer.

Derived from the specs (:mod:`fastopt.specs`): for each spec's cases, 30 steps on two param
groups (the second with its own ``lr``), float32 and float64, compared with the same torch.optim
class (``foreach=False``, its single-tensor reference code):

* the NumPy API (:mod:`fastopt`) on every host backend, parameters and every state buffer;
* :mod:`fastopt.torch`, parameters and the whole ``state_dict`` (the same keys as torch, the
  0-d ``mu_product``/``eta``/``mu`` included), which torch's class then loads and continues from
  to the same trajectory.

float64 runs set torch's default dtype to float64 so that torch keeps its 0-d state (``eta``,
``mu_product``) in float64 too."""
import numpy as np
import pytest

from _nonfinite import FASTOPT_ONLY, torch_class
from _support import HOST_BACKENDS
from fastopt.specs import SPECS

torch = pytest.importorskip("torch")
import fastopt  # noqa: E402
import fastopt.torch as ft  # noqa: E402

STEPS = 30
SHAPES = [(7,), (3, 5), (1,)]
TOL = {np.float32: dict(rtol=2e-5, atol=2e-6), np.float64: dict(rtol=1e-11, atol=1e-13)}
CASES = [pytest.param(s, kw, id=f"{s.name.lower()}-{k}" if k else s.name.lower())
         for s in SPECS if s.torch for k, kw in s.cases.items() if not FASTOPT_ONLY & set(kw)]


@pytest.fixture
def default_dtype(request):
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64 if request.param == np.float64 else torch.float32)
    yield request.param
    torch.set_default_dtype(old)


def _problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(STEPS)]
    return params, grads


def _groups(params, kw):
    lr2 = kw.get("lr", 1e-3) * 0.5
    return [{"params": params[:2]}, {"params": params[2:], "lr": lr2}]


def _torch_cls(spec):
    cls = torch_class(spec)

    def make(*args, **kw):
        opt = cls(*args, **kw)
        if hasattr(opt, "train"):     # schedulefree starts in eval mode
            opt.train()
        return opt
    return make


def _run_torch(spec, kw, dtype, steps=STEPS):
    params, grads = _problem(dtype)
    tps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    opt = _torch_cls(spec)(_groups(tps, kw), foreach=False, **kw)
    for g in grads[:steps]:
        for tp, gi in zip(tps, g):
            tp.grad = torch.from_numpy(gi.copy())
        opt.step()
    return tps, opt


@pytest.mark.parametrize("default_dtype", [np.float32, np.float64], indirect=True)
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("spec, kw", CASES)
def test_numpy_api_matches_torch(spec, kw, backend, default_dtype):
    dtype = default_dtype
    tps, topt = _run_torch(spec, kw, dtype)
    params, grads = _problem(dtype)
    opt = getattr(fastopt, spec.name)(_groups(params, kw), backend=backend, **kw)
    for g in grads:
        assert opt.step(g) is True
    for i, (p, tp) in enumerate(zip(params, tps)):
        np.testing.assert_allclose(p, tp.detach().numpy(), **TOL[dtype], err_msg=f"param {i}")
        want = topt.state[tp]
        got = opt.state[i]
        assert got["step"] == STEPS and int(want.get("step", STEPS)) == STEPS
        for name in sorted(set(got) - {"step"}):   # every buffer (Adafactor: its factors)
            if name in want:
                np.testing.assert_allclose(got[name], want[name].numpy(), **TOL[dtype],
                                           err_msg=f"param {i} {name}")
        assert set(got) - {"step"} == {k for k, v in want.items()
                                        if k != "step" and v.dim() > 0}
    before, _ = _problem(dtype)
    assert not np.allclose(before[0], params[0])     # the step moved the parameters


@pytest.mark.parametrize("default_dtype", [np.float32, np.float64], indirect=True)
@pytest.mark.parametrize("spec, kw", CASES)
def test_fastopt_torch_matches_torch_and_hands_over(spec, kw, default_dtype):
    dtype = default_dtype
    tps, topt = _run_torch(spec, kw, dtype, steps=STEPS // 2)
    params, grads = _problem(dtype)
    fps = [torch.from_numpy(p.copy()).requires_grad_() for p in params]
    fopt = getattr(ft, spec.name)(_groups(fps, kw), **kw)
    for g in grads[:STEPS // 2]:
        for fp, gi in zip(fps, g):
            fp.grad = torch.from_numpy(gi.copy())
        fopt.step()
    for i, (fp, tp) in enumerate(zip(fps, tps)):
        np.testing.assert_allclose(fp.detach().numpy(), tp.detach().numpy(), **TOL[dtype],
                                   err_msg=f"param {i}")
    want, got = topt.state_dict(), fopt.state_dict()
    assert [g["params"] for g in got["param_groups"]] == [g["params"] for g in
                                                          want["param_groups"]]
    for i in want["state"]:
        assert set(got["state"][i]) == set(want["state"][i]), i
        for name, v in want["state"][i].items():
            np.testing.assert_allclose(got["state"][i][name].double().numpy(),
                                       v.double().numpy(), **TOL[dtype], err_msg=f"{i} {name}")
    # torch continues from fastopt's checkpoint, fastopt from torch's: the same trajectory
    cont_t = [fp.detach().clone().requires_grad_() for fp in fps]
    topt2 = _torch_cls(spec)(_groups(cont_t, kw), foreach=False, **kw)
    topt2.load_state_dict(got)
    cont_f = [tp.detach().clone().requires_grad_() for tp in tps]
    fopt2 = getattr(ft, spec.name)(_groups(cont_f, kw), **kw)
    fopt2.load_state_dict(want)
    for g in grads[STEPS // 2:]:
        for ps in (cont_t, cont_f, tps):
            for p, gi in zip(ps, g):
                p.grad = torch.from_numpy(gi.copy())
        topt2.step()
        fopt2.step()
        topt.step()
    for i in range(len(tps)):
        ref = tps[i].detach().numpy()
        np.testing.assert_allclose(cont_t[i].detach().numpy(), ref, **TOL[dtype])
        np.testing.assert_allclose(cont_f[i].detach().numpy(), ref, **TOL[dtype])
    for name, v in topt.state[tps[0]].items():
        np.testing.assert_allclose(fopt2.state[cont_f[0]][name].double().numpy(),
                                   v.double().numpy(), **TOL[dtype], err_msg=name)

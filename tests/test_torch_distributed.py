"""fastopt.torch under torch.distributed, against torch.optim.AdamW under the same wrapper:
DDP (``gradient_as_bucket_view=True``), ZeroRedundancyOptimizer (with and without
``parameters_as_bucket_view``, a rank with an empty param group, hyperparameters changed
through ``param_groups``, ``consolidate_state_dict`` and a reload), FSDP2 (``fully_shard``:
DTensor parameters, one with an empty local shard; DCP save -> fresh model -> load ->
continue; full state dicts), ``_apply_optimizer_in_backward``, LAMB under DDP and FSDP2
(against one process on the mean gradient: its trust ratios from the whole tensors' norms),
Adafactor under DDP, FSDP2 (DCP and full state dicts) and other placements (its row and
column sums over the shards), LAMB and Adafactor as ZeRO's local optimizer, and FSDP1
(``FullyShardedDataParallel``, flat and original parameters, its full optimizer state dict).

The multi-process scenarios run in one pair of gloo processes on localhost
(``torch.multiprocessing`` spawn, ``file://`` rendezvous in a temporary directory), started
once for the module and bounded in time; each test below reads its scenario's outcome.
"""
import copy
import datetime
import os
import time
import traceback

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():  # pragma: no cover
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import fastopt.torch as ft  # noqa: E402

WORLD = 2
#: the whole spawned run (every scenario) must end within this many seconds
DEADLINE_S = 240
TOL = dict(rtol=1e-5, atol=1e-6)
LR, WD = 0.02, 0.05


def _close(a, b, what):
    torch.testing.assert_close(b, a, **TOL, msg=lambda m: f"{what}: {m}")


def _model(seed=0):
    torch.manual_seed(seed)
    # Linear(6, 1)'s bias has one element: under FSDP2 on two ranks one local shard is empty
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 6),
                               torch.nn.Tanh(), torch.nn.Linear(6, 1))


def _batch(rank, i):
    g = torch.Generator().manual_seed(1000 * rank + i)
    return torch.randn(4, 5, generator=g), torch.randn(4, 1, generator=g)


def _train(model, opt, rank, steps, start=0, set_to_none=True):
    for i in range(start, start + steps):
        opt.zero_grad(set_to_none=set_to_none or i % 2 == 0)
        x, y = _batch(rank, i)
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _params(model):
    out = []
    for p in model.parameters():
        p = p.detach()
        out.append(p.full_tensor() if hasattr(p, "full_tensor") else p.clone())
    return out


def _same_params(ref, got, what):
    for k, (a, b) in enumerate(zip(_params(ref), _params(got))):
        _close(a, b, f"{what}: parameter {k}")


# -- scenarios (run on every rank) ------------------------------------------------------------

def scenario_ddp_bucket_view(rank, tmp):
    from torch.nn.parallel import DistributedDataParallel as DDP
    ref = DDP(_model(), gradient_as_bucket_view=True)
    got = DDP(_model(), gradient_as_bucket_view=True)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    opt = ft.AdamW(got.parameters(), lr=LR, weight_decay=WD)
    _train(ref, ref_opt, rank, 6, set_to_none=False)   # set_to_none alternates
    _train(got, opt, rank, 6, set_to_none=False)
    _same_params(ref, got, "DDP")


def _zero(params, cls, bucket_view):
    from torch.distributed.optim import ZeroRedundancyOptimizer
    return ZeroRedundancyOptimizer(params, optimizer_class=cls, lr=LR, weight_decay=WD,
                                   parameters_as_bucket_view=bucket_view)


def _groups(model):
    """Two param groups, the first a single tensor: ZeRO gives it to one rank, so the other
    rank's local optimizer has an empty param group."""
    ps = list(model.parameters())
    return [{"params": ps[-1:]}, {"params": ps[:-1], "betas": (0.8, 0.99)}]


def _zero_resumed(rank, tmp, name, got, opt, make):
    """ZeRO's checkpoint round trip: ``opt`` consolidated on rank 0, saved with ``got``'s
    weights, loaded by every rank into a fresh DDP model and the optimizer ``make(model)``;
    -> (model, optimizer)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    opt.consolidate_state_dict(to=0)
    path = os.path.join(tmp, f"{name}.pt")
    if rank == 0:
        torch.save({"model": got.module.state_dict(), "optim": opt.state_dict()}, path)
    dist.barrier()
    ckpt = torch.load(path, weights_only=True)
    again = DDP(_model(seed=1))
    again.module.load_state_dict(ckpt["model"])
    opt2 = make(again)
    opt2.load_state_dict(ckpt["optim"])
    return again, opt2


def _zero_run(rank, tmp, bucket_view):
    from torch.nn.parallel import DistributedDataParallel as DDP
    ref, got = DDP(_model()), DDP(_model())
    ref_opt = _zero(_groups(ref), torch.optim.AdamW, bucket_view)
    opt = _zero(_groups(got), ft.AdamW, bucket_view)
    local = [len(g["params"]) for g in opt.optim.param_groups]
    assert local == [len(g["params"]) for g in ref_opt.optim.param_groups]
    _train(ref, ref_opt, rank, 3)
    _train(got, opt, rank, 3)
    _same_params(ref, got, "ZeRO")
    for o in (ref_opt, opt):        # hyperparameters changed through param_groups
        o.param_groups[0]["lr"] = LR / 2
        o.param_groups[1]["weight_decay"] = 0.0
        o.param_groups[1]["betas"] = (0.7, 0.95)
    _train(ref, ref_opt, rank, 3, start=3)
    _train(got, opt, rank, 3, start=3)
    _same_params(ref, got, "ZeRO after changing hyperparameters")
    # consolidate on rank 0, save, reload into a fresh model and optimizer, continue
    again, opt2 = _zero_resumed(rank, tmp, f"zero-{bucket_view}", got, opt,
                                lambda m: _zero(_groups(m), ft.AdamW, bucket_view))
    assert opt2.param_groups[1]["betas"] == (0.7, 0.95)
    _train(ref, ref_opt, rank, 3, start=6)
    _train(again, opt2, rank, 3, start=6)
    _same_params(ref, again, "ZeRO resumed from a consolidated checkpoint")


def scenario_zero(rank, tmp):
    _zero_run(rank, tmp, bucket_view=False)


def scenario_zero_bucket_view(rank, tmp):
    _zero_run(rank, tmp, bucket_view=True)


def _fsdp(seed=0):
    from torch.distributed.fsdp import fully_shard
    model = _model(seed)
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer)
    return fully_shard(model)


def scenario_fsdp2(rank, tmp):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        set_model_state_dict, set_optimizer_state_dict)
    from torch.distributed.tensor import DTensor

    ref, got = _fsdp(), _fsdp()
    locals_ = [p.to_local().numel() for p in got.parameters()]
    assert all(isinstance(p, DTensor) for p in got.parameters())
    assert 0 in locals_ or rank == 0, locals_      # rank 1 holds an empty shard
    for kw in ({"flatten": True}, {"state_dtype": "int8"}):   # plain tensors only
        try:
            ft.AdamW(got.parameters(), **kw)
        except ValueError as exc:
            assert "DTensor" in str(exc), exc
        else:
            raise AssertionError(f"{kw} accepted DTensor parameters")
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    opt = ft.AdamW(got.parameters(), lr=LR, weight_decay=WD)
    _train(ref, ref_opt, rank, 4)
    _train(got, opt, rank, 4)
    _same_params(ref, got, "FSDP2")
    for p, q in zip(ref.parameters(), got.parameters()):     # state: DTensors, as torch
        for name in ("exp_avg", "exp_avg_sq"):
            a, b = ref_opt.state[p][name], opt.state[q][name]
            assert isinstance(b, DTensor) and b.placements == q.placements, name
            _close(a.full_tensor(), b.full_tensor(), f"FSDP2 state {name}")
        assert opt.state[q]["step"].item() == 4

    # DCP: save (every rank its shards) -> a fresh model and optimizer -> load -> continue
    ckpt = os.path.join(tmp, "dcp")
    dcp.save({"model": get_model_state_dict(got), "optim": get_optimizer_state_dict(got, opt)},
             checkpoint_id=ckpt)
    fresh = _fsdp(seed=1)
    fresh_opt = ft.AdamW(fresh.parameters(), lr=LR, weight_decay=WD)
    sd = {"model": get_model_state_dict(fresh),
          "optim": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp.load(sd, checkpoint_id=ckpt)
    set_model_state_dict(fresh, sd["model"])
    set_optimizer_state_dict(fresh, fresh_opt, sd["optim"])   # load_state_dict(state_dict=...)
    for q, r in zip(got.parameters(), fresh.parameters()):
        for name in ("exp_avg", "exp_avg_sq"):
            b = fresh_opt.state[r][name]
            assert isinstance(b, DTensor) and b.placements == r.placements
            assert torch.equal(b.to_local(), opt.state[q][name].to_local()), name
        assert fresh_opt.state[r]["step"].item() == 4
    # a full (unsharded, plain-tensor) optimizer state dict into another fresh pair
    full = get_optimizer_state_dict(got, opt, options=StateDictOptions(full_state_dict=True))
    assert not any(isinstance(v, DTensor) for st in full["state"].values() for v in st.values())
    third = _fsdp(seed=2)
    set_model_state_dict(third, get_model_state_dict(got))
    third_opt = ft.AdamW(third.parameters(), lr=LR, weight_decay=WD)
    set_optimizer_state_dict(third, third_opt, full,
                             options=StateDictOptions(full_state_dict=True))
    _train(ref, ref_opt, rank, 3, start=4)
    _train(fresh, fresh_opt, rank, 3, start=4)
    _train(third, third_opt, rank, 3, start=4)
    _same_params(ref, fresh, "FSDP2 resumed from DCP")
    _same_params(ref, third, "FSDP2 resumed from a full state dict")


def scenario_fsdp2_torch_checkpoint(rank, tmp):
    """torch.optim.AdamW's sharded checkpoint resumes in fastopt (same names, same layout)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    ref = _fsdp()
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR, weight_decay=WD)
    _train(ref, ref_opt, rank, 2)
    ckpt = os.path.join(tmp, "dcp-torch")
    dcp.save({"model": get_model_state_dict(ref),
              "optim": get_optimizer_state_dict(ref, ref_opt)}, checkpoint_id=ckpt)
    got = _fsdp(seed=1)
    opt = ft.AdamW(got.parameters(), lr=LR, weight_decay=WD)
    sd = {"model": get_model_state_dict(got), "optim": get_optimizer_state_dict(got, opt)}
    # strict: fastopt's state dict has torch's keys (bias_correction left out at its default)
    dcp.load(sd, checkpoint_id=ckpt)
    set_model_state_dict(got, sd["model"])
    set_optimizer_state_dict(got, opt, sd["optim"])
    assert opt.param_groups[0]["bias_correction"] is True
    _train(ref, ref_opt, rank, 3, start=2)
    _train(got, opt, rank, 3, start=2)
    _same_params(ref, got, "torch's FSDP2 checkpoint resumed in fastopt")
    # and back: fastopt's sharded checkpoint resumes in torch.optim.AdamW
    ckpt2 = os.path.join(tmp, "dcp-fastopt")
    dcp.save({"model": get_model_state_dict(got),
              "optim": get_optimizer_state_dict(got, opt)}, checkpoint_id=ckpt2)
    back = _fsdp(seed=2)
    back_opt = torch.optim.AdamW(back.parameters(), lr=LR, weight_decay=WD)
    sd = {"model": get_model_state_dict(back),
          "optim": get_optimizer_state_dict(back, back_opt)}
    dcp.load(sd, checkpoint_id=ckpt2)
    set_model_state_dict(back, sd["model"])
    set_optimizer_state_dict(back, back_opt, sd["optim"])
    _train(ref, ref_opt, rank, 2, start=5)
    _train(back, back_opt, rank, 2, start=5)
    _same_params(ref, back, "fastopt's FSDP2 checkpoint resumed in torch")


def _sharded_and_plain(cls, shapes, steps, seed):
    """``cls`` (stochastic rounding) on bfloat16 parameters of ``shapes``, once as plain tensors
    and once as DTensors sharded on dim 0, ``steps`` steps of the same gradients: -> (the
    initial values, the plain parameters, the sharded ones, their two optimizers)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(seed)
    fulls = [torch.randn(s, generator=gen).to(torch.bfloat16) for s in shapes]
    grads = [[torch.randn(f.shape, generator=gen).to(torch.bfloat16) for f in fulls]
             for _ in range(steps)]
    plain = [torch.nn.Parameter(f.clone()) for f in fulls]
    sharded = [torch.nn.Parameter(distribute_tensor(f.clone(), mesh, [Shard(0)]))
               for f in fulls]
    kw = dict(lr=0.01, rounding="stochastic", seed=3)
    ref, opt = cls(plain, **kw), cls(sharded, **kw)
    for gs in grads:
        for p, q, g in zip(plain, sharded, gs):
            p.grad = g.clone()
            q.grad = distribute_tensor(g.clone(), mesh, [Shard(0)])
        ref.step()
        opt.step()
    return fulls, plain, sharded, ref, opt


def scenario_dtensor_stochastic_rounding(rank, tmp):
    """bfloat16 DTensors sharded on dim 0 (one shard empty) with stochastic rounding: the same
    bits as the unsharded parameters (each shard draws its elements' own random bits)."""
    fulls, plain, sharded, _, _ = _sharded_and_plain(ft.AdamW, ((7, 3), (5,), (1, 4), (300,)),
                                                     3, 5)
    for k, (p, q) in enumerate(zip(plain, sharded)):
        assert not torch.equal(p.detach(), fulls[k])
        assert torch.equal(q.detach().full_tensor(), p.detach()), k


def scenario_dtensor_half_lamb_adafactor(rank, tmp):
    """LAMB and Adafactor on bfloat16 DTensors sharded on dim 0 (one shard empty), stochastic
    rounding, bfloat16 state (Adafactor: its factors rounded into bfloat16 on each rank, each
    factor's random bits from its position in the whole tensor, so the column factors, whole
    on every rank, round alike on each): the unsharded parameters' values -- bit for bit but
    where the all-reduced sums (added in another order than one process's) moved a value next
    to a rounding boundary, by one unit."""
    for cls in (ft.LAMB, ft.Adafactor):
        fulls, plain, sharded, ref, opt = _sharded_and_plain(
            cls, ((70, 30), (9,), (1, 40), (300,)), 4, 6)
        for k, (p, q) in enumerate(zip(plain, sharded)):
            a, b = q.detach().full_tensor().float(), p.detach().float()
            assert not torch.equal(b, fulls[k].float()), (cls.__name__, k)
            same = (a == b).float().mean().item()
            ulp = b.abs().clamp(min=1e-3) * 2.0 ** -7
            assert same >= 0.98 and ((a - b).abs() <= ulp).all(), (cls.__name__, k, same)
            st = opt.state[q]
            for name, v in ref.state[p].items():
                if name == "step":
                    continue
                assert st[name].dtype == torch.bfloat16, (cls.__name__, name)
                got = st[name].full_tensor().float()
                assert (got == v.float()).float().mean().item() >= 0.98, (cls.__name__, name)
                if name == "col_var":   # replicated on every rank: the same rounding on each
                    import torch.distributed as dist
                    loc = st[name].to_local().float()
                    first = loc.clone()
                    dist.broadcast(first, src=0)
                    assert torch.equal(first, loc), (cls.__name__, k, "replicas differ")


def _reference_step(ref, ref_opt, i):
    """One step of one process on the ranks' mean gradient (the loss averaged over their
    batches), as DDP and FSDP2 (which average the ranks' gradients) step."""
    ref_opt.zero_grad()
    loss = sum(torch.nn.functional.mse_loss(ref(x), y) for x, y in
               (_batch(r, i) for r in range(WORLD))) / WORLD
    loss.backward()
    ref_opt.step()


def _train_against_one_process(cls, got, ref, rank, **kw):
    """Five steps of ``cls`` on the distributed model ``got`` (each rank its own batch) and on
    the single-process twin ``ref`` (the ranks' mean gradient); -> the two optimizers."""
    opt, ref_opt = cls(got.parameters(), **kw), cls(ref.parameters(), **kw)
    for i in range(5):
        opt.zero_grad()
        x, y = _batch(rank, i)
        torch.nn.functional.mse_loss(got(x), y).backward()
        opt.step()
        _reference_step(ref, ref_opt, i)
    return opt, ref_opt


def scenario_lamb(rank, tmp):
    """LAMB under DDP: the same trajectory as one process stepping the ranks' mean gradient (its
    per-tensor trust ratios on the all-reduced gradients)."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    got, ref = DDP(_model()), _model()
    _train_against_one_process(ft.LAMB, got, ref, rank, lr=LR, weight_decay=WD)
    for k, (a, b) in enumerate(zip(ref.parameters(), got.module.parameters())):
        _close(a.detach(), b.detach(), f"LAMB under DDP: parameter {k}")


def scenario_adafactor(rank, tmp):
    """Adafactor under DDP (its factored state per rank, from the all-reduced gradients): one
    process's trajectory on the mean gradient."""
    from torch.nn.parallel import DistributedDataParallel as DDP
    got, ref = DDP(_model()), _model()
    opt, ref_opt = _train_against_one_process(ft.Adafactor, got, ref, rank, lr=0.05,
                                              weight_decay=WD)
    for k, (a, b) in enumerate(zip(ref.parameters(), got.module.parameters())):
        _close(a.detach(), b.detach(), f"Adafactor under DDP: parameter {k}")
    for p, q in zip(ref.parameters(), got.module.parameters()):
        for name, v in ref_opt.state[p].items():
            _close(v, opt.state[q][name], f"Adafactor under DDP: {name}")


def _adafactor_state_placed(opt, params, what):
    """Adafactor's DTensor state: row_var as the parameter (FSDP2 shards rows), col_var
    replicated (every rank the whole column factor), variance as the parameter."""
    from torch.distributed.tensor import DTensor, Replicate
    for q in params:
        st = opt.state[q]
        for name in ("row_var", "col_var", "variance"):
            if name in st:
                v = st[name]
                want = (Replicate(),) if name == "col_var" else tuple(q.placements)
                assert isinstance(v, DTensor) and tuple(v.placements) == want, \
                    (what, name, getattr(v, "placements", None))


def scenario_adafactor_fsdp2(rank, tmp):
    """Adafactor under FSDP2 (DTensor parameters sharded on their rows, one local shard
    empty): the column sums, the row factors' mean and the RMS sums all-reduced over the
    shards, so the trajectory is one process's on the mean gradient (torch.optim.Adafactor's,
    to rounding: the sums are added in another order); its state DTensors (row_var as the
    parameter, col_var replicated); DCP save -> fresh model -> load -> continue, and a full
    state dict (whose factors set_optimizer_state_dict places as the parameters: redistributed
    at the next step) into another fresh model."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
        set_model_state_dict, set_optimizer_state_dict)
    kw = dict(lr=0.05, weight_decay=WD)
    got, ref = _fsdp(), _model()
    assert 0 in [p.to_local().numel() for p in got.parameters()] or rank == 0
    opt = ft.Adafactor(got.parameters(), **kw)
    ref_opt = torch.optim.Adafactor(ref.parameters(), **kw)
    for i in range(4):
        opt.zero_grad()
        x, y = _batch(rank, i)
        torch.nn.functional.mse_loss(got(x), y).backward()
        opt.step()
        _reference_step(ref, ref_opt, i)
    for k, (a, b) in enumerate(zip(_params(ref), _params(got))):
        _close(a, b, f"Adafactor under FSDP2: parameter {k}")
    _adafactor_state_placed(opt, got.parameters(), "FSDP2")
    for p, q in zip(ref.parameters(), got.parameters()):
        for name, v in ref_opt.state[p].items():
            if name != "step":
                _close(v, opt.state[q][name].full_tensor(), f"Adafactor under FSDP2: {name}")
        assert opt.state[q]["step"].item() == 4
    ckpt = os.path.join(tmp, "dcp-adafactor")
    dcp.save({"model": get_model_state_dict(got), "optim": get_optimizer_state_dict(got, opt)},
             checkpoint_id=ckpt)
    fresh = _fsdp(seed=1)
    fresh_opt = ft.Adafactor(fresh.parameters(), **kw)
    sd = {"model": get_model_state_dict(fresh),
          "optim": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp.load(sd, checkpoint_id=ckpt)
    set_model_state_dict(fresh, sd["model"])
    set_optimizer_state_dict(fresh, fresh_opt, sd["optim"])
    full = get_optimizer_state_dict(got, opt, options=StateDictOptions(full_state_dict=True))
    third = _fsdp(seed=2)
    set_model_state_dict(third, get_model_state_dict(got))
    third_opt = ft.Adafactor(third.parameters(), **kw)
    set_optimizer_state_dict(third, third_opt, full,
                             options=StateDictOptions(full_state_dict=True))
    for i in range(4, 7):
        for m, o in ((got, opt), (fresh, fresh_opt), (third, third_opt)):
            o.zero_grad()
            x, y = _batch(rank, i)
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for what, m, o in (("DCP", fresh, fresh_opt), ("a full state dict", third, third_opt)):
        _adafactor_state_placed(o, m.parameters(), f"resumed from {what}")
        for k, (a, b) in enumerate(zip(_params(got), _params(m))):
            _close(a, b, f"Adafactor under FSDP2 resumed from {what}: parameter {k}")


def scenario_adafactor_placements(rank, tmp):
    """Adafactor on DTensors sharded otherwise (tensor parallelism's): a matrix sharded on its
    columns (the row sums all-reduced, row_var replicated), a batch of matrices sharded on
    their rows and another on the batch (only the RMS sums all-reduced), a replicated one;
    against torch.optim.Adafactor on the whole tensors with the same gradients; a Partial
    DTensor is refused."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import (DTensor, Partial, Replicate, Shard,
                                          distribute_tensor)
    mesh = init_device_mesh("cpu", (WORLD,))
    gen = torch.Generator().manual_seed(7)
    shapes = [((6, 9), Shard(1)), ((3, 5, 4), Shard(1)), ((3, 5, 4), Shard(0)),
              ((4, 3), Replicate()), ((7,), Shard(0))]
    whole = [torch.randn(s, generator=gen) for s, _ in shapes]
    grads = [[torch.randn(s, generator=gen) for s, _ in shapes] for _ in range(4)]
    ref = [torch.nn.Parameter(w.clone()) for w in whole]
    got = [torch.nn.Parameter(distribute_tensor(w.clone(), mesh, [pl]))
           for w, (_, pl) in zip(whole, shapes)]
    kw = dict(lr=0.05, weight_decay=WD, maximize=True)
    ref_opt, opt = torch.optim.Adafactor(ref, **kw), ft.Adafactor(got, **kw)
    for gs in grads:
        for p, q, g, (_, pl) in zip(ref, got, gs, shapes):
            p.grad = g.clone()
            q.grad = distribute_tensor(g.clone(), mesh, [pl])
        ref_opt.step()
        opt.step()
    for k, (p, q) in enumerate(zip(ref, got)):
        _close(p.detach(), q.detach().full_tensor(), f"Adafactor on {shapes[k]}: parameter")
        for name, v in ref_opt.state[p].items():
            if name != "step":
                st = opt.state[q][name]
                assert isinstance(st, DTensor), name
                _close(v, st.full_tensor(), f"Adafactor on {shapes[k]}: {name}")
    st = opt.state[got[0]]          # sharded on its columns: row_var whole on every rank
    assert tuple(st["row_var"].placements) == (Replicate(),)
    assert tuple(st["col_var"].placements) == (Shard(1),)
    partial = torch.nn.Parameter(DTensor.from_local(torch.ones(3, 2), mesh, [Partial()]))
    try:
        ft.Adafactor([partial])
    except ValueError as e:
        assert "placements" in str(e) and "whole tensor" in str(e), e
    else:
        raise AssertionError("fastopt.torch.Adafactor accepted a Partial DTensor")


def scenario_zero_lamb_adafactor(rank, tmp):
    """LAMB and Adafactor as ZeroRedundancyOptimizer's local optimizer (with bucket views):
    each rank steps whole tensors of its shard, so the trajectory is one process's on the mean
    gradient (Adafactor: torch.optim.Adafactor's; LAMB: fastopt's, tested against its written-
    out reference elsewhere), and a consolidated checkpoint resumes it."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP
    for cls, ref_cls, kw in ((ft.LAMB, ft.LAMB, dict(lr=LR, weight_decay=WD)),
                             (ft.Adafactor, torch.optim.Adafactor,
                              dict(lr=0.05, weight_decay=WD))):
        def zero(model):
            return ZeroRedundancyOptimizer(model.parameters(), optimizer_class=cls,
                                           parameters_as_bucket_view=True, **kw)

        def train(model, o, start, steps):
            for i in range(start, start + steps):
                o.zero_grad()
                x, y = _batch(rank, i)
                torch.nn.functional.mse_loss(model(x), y).backward()
                o.step()
                _reference_step(ref, ref_opt, i)

        ref, got = _model(), DDP(_model())
        ref_opt, opt = ref_cls(ref.parameters(), **kw), zero(got)
        train(got, opt, 0, 4)
        for k, (a, b) in enumerate(zip(ref.parameters(), got.module.parameters())):
            _close(a.detach(), b.detach(), f"ZeRO with {cls.__name__}: parameter {k}")
        again, opt2 = _zero_resumed(rank, tmp, f"zero-{cls.__name__}", got, opt, zero)
        train(again, opt2, 4, 3)
        for k, (a, b) in enumerate(zip(ref.parameters(), again.module.parameters())):
            _close(a.detach(), b.detach(), f"ZeRO with {cls.__name__}, resumed: parameter {k}")


def scenario_lamb_fsdp2(rank, tmp):
    """LAMB under FSDP2 (DTensor parameters, one local shard empty): each tensor's trust ratio
    from the norms of the whole tensor (the shards' sums all-reduced), so the trajectory is one
    process's on the mean gradient, to rounding (the sums are added in another order); the
    state is DTensors placed as the parameters; a Partial DTensor is refused."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Partial
    got, ref = _fsdp(), _model()
    assert 0 in [p.to_local().numel() for p in got.parameters()] or rank == 0
    opt, ref_opt = _train_against_one_process(ft.LAMB, got, ref, rank, lr=LR, weight_decay=WD)
    for k, (a, b) in enumerate(zip(_params(ref), _params(got))):
        _close(a, b, f"LAMB under FSDP2: parameter {k}")
    for p, q in zip(ref.parameters(), got.parameters()):
        for name in ("exp_avg", "exp_avg_sq"):
            st = opt.state[q][name]
            assert isinstance(st, DTensor) and st.placements == q.placements, name
            _close(ref_opt.state[p][name], st.full_tensor(), f"LAMB under FSDP2: {name}")
    mesh = init_device_mesh("cpu", (WORLD,))
    partial = torch.nn.Parameter(DTensor.from_local(torch.ones(3), mesh, [Partial()]))
    try:
        ft.LAMB([partial])
    except ValueError as e:
        assert "placements" in str(e) and "norms of the whole tensor" in str(e), e
    else:
        raise AssertionError("fastopt.torch.LAMB accepted a Partial DTensor")



def _fsdp1(use_orig_params, seed=0):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    return FSDP(_model(seed), device_id=torch.device("cpu"), use_orig_params=use_orig_params)


def _fsdp1_full(model):
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    with FSDP.summon_full_params(model):
        return [p.detach().clone() for p in model.parameters()]


def _fsdp1_run(rank, cls, use_orig_params):
    """Four steps under FSDP1, its full optimizer state dict (``FSDP.optim_state_dict``) into
    a fresh model's optimizer (``optim_state_dict_to_load``), three more steps there: the
    parameters after each part, the loaded state and the uninterrupted run's parameters."""
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    model = _fsdp1(use_orig_params)
    opt = cls(model.parameters(), lr=LR, weight_decay=WD)
    _train(model, opt, rank, 4, set_to_none=False)
    first = _fsdp1_full(model)
    osd = FSDP.optim_state_dict(model, opt)
    fresh = _fsdp1(use_orig_params, seed=1)
    fresh.load_state_dict(model.state_dict())
    opt2 = cls(fresh.parameters(), lr=LR, weight_decay=WD)
    opt2.load_state_dict(FSDP.optim_state_dict_to_load(fresh, opt2, osd))
    loaded = [{k: v.clone() for k, v in opt2.state[p].items()} for p in fresh.parameters()
              if p in opt2.state]
    _train(fresh, opt2, rank, 3, start=4, set_to_none=False)
    _train(model, opt, rank, 3, start=4, set_to_none=False)
    return first, loaded, _fsdp1_full(fresh), _fsdp1_full(model)


def scenario_fsdp1(rank, tmp):
    """FSDP1 (``FullyShardedDataParallel`` on CPU): flat parameters (``use_orig_params=False``)
    and the original parameters as views of the local shard, some empty
    (``use_orig_params=True``): the trajectory, the state loaded from FSDP1's full optimizer
    state dict and the run resumed from it are torch.optim.AdamW's.  (With
    ``use_orig_params=True`` torch's own ``exp_avg`` comes back from that round trip holding
    ``exp_avg_sq``'s values on torch 2.13 with gloo, so neither resumes the uninterrupted run
    exactly there; fastopt does what torch does.)"""
    for orig in (False, True):
        ref = _fsdp1_run(rank, torch.optim.AdamW, orig)
        got = _fsdp1_run(rank, ft.AdamW, orig)
        what = f"FSDP1 use_orig_params={orig}"
        for part, name in ((0, "trained"), (2, "resumed"), (3, "uninterrupted")):
            for k, (a, b) in enumerate(zip(ref[part], got[part])):
                _close(a, b, f"{what}, {name}: parameter {k}")
        assert len(got[1]) == len(ref[1]) and len(got[1]) > 0, what
        for a, b in zip(ref[1], got[1]):
            assert set(a) == set(b), what
            for key in a:
                _close(a[key], b[key], f"{what}, loaded {key}")
        if not orig:    # the flat parameters' round trip is exact: the resumed run is the
            for k, (a, b) in enumerate(zip(got[3], got[2])):    # uninterrupted one
                _close(a, b, f"{what}: resumed against uninterrupted, parameter {k}")

SCENARIOS = {name[len("scenario_"):]: fn for name, fn in dict(globals()).items()
             if name.startswith("scenario_")}


def _worker(rank, tmp):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method="file://" + os.path.join(tmp, "rendezvous"),
                            rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=60))
    try:
        for name, fn in SCENARIOS.items():
            outcome = "ok"
            try:
                fn(rank, tmp)
            except BaseException:   # (DCP's CheckpointException is one) recorded per
                # scenario; the others still run
                outcome = traceback.format_exc()
            with open(os.path.join(tmp, f"{name}.{rank}.txt"), "w") as f:
                f.write(outcome)
            dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    import torch.multiprocessing as mp
    tmp = str(tmp_path_factory.mktemp("dist"))
    ctx = mp.start_processes(_worker, args=(tmp,), nprocs=WORLD, join=False,
                             start_method="spawn")
    deadline = time.monotonic() + DEADLINE_S
    try:
        while not ctx.join(timeout=2):
            if time.monotonic() > deadline:
                pytest.fail(f"the distributed scenarios did not finish in {DEADLINE_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    out = {}
    for name in SCENARIOS:
        texts = []
        for rank in range(WORLD):
            path = os.path.join(tmp, f"{name}.{rank}.txt")
            texts.append(open(path).read() if os.path.exists(path) else "did not run")
        out[name] = texts
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_distributed(outcomes, name):
    bad = [f"rank {r}:\n{t}" for r, t in enumerate(outcomes[name]) if t != "ok"]
    assert not bad, "\n".join(bad)


# -- single process ----------------------------------------------------------------------------

def test_apply_optimizer_in_backward():
    """One optimizer per parameter, built from a class and kwargs, stepped by backward."""
    from torch.distributed.optim import _apply_optimizer_in_backward
    ref, got = _model(), _model()
    _apply_optimizer_in_backward(torch.optim.AdamW, ref.parameters(),
                                 {"lr": LR, "weight_decay": WD})
    _apply_optimizer_in_backward(ft.AdamW, got.parameters(), {"lr": LR, "weight_decay": WD})
    for i in range(4):
        for m in (ref, got):
            x, y = _batch(0, i)
            torch.nn.functional.mse_loss(m(x), y).backward()
    for a, b in zip(ref.parameters(), got.parameters()):
        _close(a.detach(), b.detach(), "_apply_optimizer_in_backward")
    assert all(isinstance(o, ft.AdamW) for p in got.parameters()
               for o in p._in_backward_optimizers)


def test_load_state_dict_by_keyword():
    ref, got = _model(), copy.deepcopy(_model())
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=LR)
    x, y = _batch(0, 0)
    torch.nn.functional.mse_loss(ref(x), y).backward()
    ref_opt.step()
    opt = ft.AdamW(got.parameters(), lr=LR)
    opt.load_state_dict(state_dict=copy.deepcopy(ref_opt.state_dict()))
    assert opt.state[next(got.parameters())]["step"].item() == 1

"""Checkpoints of the torch adapter: torch's ``state_dict`` layout, checked before loading, and
loaded values converted into the optimizer's own buffers (its ``state_dtype``; flat ones in
flatten mode).

torch's ``Optimizer.load_state_dict`` casts every floating state tensor to its parameter's
dtype (and would turn 8-bit codes into floats), so the state tensors are set aside before it
runs and converted here afterwards: a float32 state of a bfloat16 parameter stays float32, and
8-bit state moves between formats by dequantizing and quantizing.

With ``state_dtype="int8"`` the per-parameter state is bitsandbytes' layout (``state1``,
``state2``, ... for the used state in rule order, uint8 codes with ``absmaxK``/``qmapK``, or
float32 below ``min_8bit_size``), so a ``bitsandbytes.optim.AdamW8bit`` state dict loads (its
FSDP wrapping undone) and ours loads into bitsandbytes.
"""
from __future__ import annotations

import numpy as np
import torch

from ..kernels import formats as F
from . import _tensors as T

__all__ = ["after_setstate", "check_state_dict", "split_state_dict", "rehome_state",
           "BNB_WRAP"]

#: where bitsandbytes' ``state_dict()`` hides its quantization tensors (from FSDP)
BNB_WRAP = "__bnb_optimizer_quant_state__"


def fastopt_only(spec):
    """``{name: default}`` of the hyperparameters a torch.optim twin of ``spec`` lacks (Adam's
    ``bias_correction``): ``state_dict()`` leaves them out at their defaults."""
    if not spec.torch or not spec.torch_order:
        return {}
    return {h.name: h.default for h in spec.hypers if h.name not in spec.torch_order}


def after_setstate(opt):
    """After unpickling or loading: defaults for keys the saved groups lack (an older pickle;
    fastopt's own hyperparameters, left out of a state dict at their defaults and absent from
    torch's: the spec's default, which is what torch's twin computes), ``step`` as a
    tensor."""
    own = fastopt_only(opt.spec)
    for group in opt.param_groups:
        for k, v in own.items():
            group.setdefault(k, v)
        for k, v in opt.defaults.items():
            group.setdefault(k, v)
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st and not isinstance(st["step"], torch.Tensor):
                st["step"] = torch.tensor(float(st["step"]), dtype=T.scalar_dtype())


def _unwrap(entry):
    if isinstance(entry, dict) and BNB_WRAP in entry:
        entry = dict(entry)
        entry.update(entry.pop(BNB_WRAP))
    return entry


def _bnb_style(entry):
    return any(k.startswith("state") and k[5:].isdigit() for k in entry)


def _saved_values(opt, group, entry):
    """``{rule state name: tensor or (codes, absmax, qmap)}`` of a saved entry, whichever of
    torch's or bitsandbytes' layouts it is in."""
    needed = opt.spec.needed(group)
    used = [n for n, need in needed.items() if need]
    out = {}
    if _bnb_style(entry):
        for k, name in enumerate(used, start=1):
            v = entry.get(f"state{k}")
            if v is None:
                continue
            out[name] = (v, entry.get(f"absmax{k}"), entry.get(f"qmap{k}")) \
                if v.dtype == torch.uint8 else v
    else:
        for name in used:
            if isinstance(entry.get(name), torch.Tensor):
                out[name] = entry[name]
    return out


def check_state_dict(opt, state_dict):
    """Every state tensor has its parameter's shape, 8-bit codes come with a float32 absmax per
    block and a 256-entry map (torch checks the rest itself).  Nothing changes here."""
    groups, saved = opt.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, saved)):
        return  # torch's load_state_dict raises its own ValueError
    saved_state = state_dict["state"]
    for gi, (group, sg) in enumerate(zip(groups, saved)):
        for i, (p, pid) in enumerate(zip(group["params"], sg["params"])):
            entry = _unwrap(saved_state.get(pid, {}))
            label = T.label(group, gi, i, p)
            for name, v in _saved_values(opt, {**group, **{k: w for k, w in sg.items()
                                                            if k != "params"}},
                                         entry).items():
                codes = v[0] if isinstance(v, tuple) else v
                if codes.shape != p.shape:
                    raise ValueError(f"state_dict: state {name!r} of {label} has shape "
                                     f"{tuple(codes.shape)}")
                if isinstance(v, tuple):
                    _, absmax, qmap = v
                    blocks = (F.nblocks(p.numel()),)
                    if not isinstance(absmax, torch.Tensor) or absmax.dtype != torch.float32 \
                            or tuple(absmax.shape) != blocks:
                        raise ValueError(f"state_dict: the 8-bit {name!r} of {label} needs a "
                                         f"float32 absmax of shape {blocks} (one per block "
                                         f"of {F.BLOCK})")
                    if not isinstance(qmap, torch.Tensor) or qmap.numel() != 256:
                        raise ValueError(f"state_dict: the 8-bit {name!r} of {label} needs "
                                         f"its 256-entry qmap")


def split_state_dict(opt, state_dict):
    """``(state_dict for torch's loader, {param: saved entry})``: the loader gets each entry's
    ``step`` (as a tensor) and non-tensor values; the state tensors wait for
    :func:`rehome_state`."""
    saved_groups = state_dict["param_groups"]
    params = [p for g in opt.param_groups for p in g["params"]]
    ids = [pid for g in saved_groups for pid in g["params"]]
    aside, stripped = {}, {}
    for pid, p in zip(ids, params):
        entry = state_dict["state"].get(pid)
        if entry is None:
            continue
        entry = _unwrap(entry)
        aside[p] = entry
        keep = {k: v for k, v in entry.items() if not isinstance(v, torch.Tensor)}
        if "step" in entry:
            s = entry["step"]
            keep["step"] = s.detach().to("cpu", T.scalar_dtype()).clone() \
                if isinstance(s, torch.Tensor) else torch.tensor(float(s), dtype=T.scalar_dtype())
        stripped[pid] = keep
    return {**state_dict, "state": stripped}, aside


def _floats(v, name, opt):
    """A saved value as a float32 CPU tensor (8-bit codes dequantized with their own map)."""
    if isinstance(v, tuple):
        codes, absmax, qmap = v
        c = codes.detach().to("cpu").reshape(-1).long()
        scale = absmax.detach().to("cpu", torch.float32).repeat_interleave(F.BLOCK)[:c.numel()]
        return (qmap.detach().to("cpu", torch.float32)[c] * scale).reshape(codes.shape)
    return v.detach().to("cpu")


@torch.no_grad()
def rehome_state(opt, aside):
    """After torch's ``load_state_dict``: each parameter's saved state converted into buffers of
    this optimizer's own -- its ``state_dtype``, contiguous (a view into the flat state buffer
    in flatten mode) -- so the loaded dict is never aliased.  8-bit state whose map is ours is
    copied code for code (a resume is bit-exact); otherwise values are quantized or
    dequantized."""
    for group in opt.param_groups:
        needed = opt.spec.needed(group)
        keys = opt._state_keys(needed)
        for p in group["params"]:
            entry = aside.get(p)
            st = opt.state.get(p)
            if entry is None or st is None:
                continue
            for k in [k for k, v in st.items() if isinstance(v, torch.Tensor) and k != "step"]:
                del st[k]                         # whatever torch's loader kept
            if opt.spec.torch_scalar_state:      # NAdam's mu_product, ASGD's eta: from the step
                t = opt._steps_taken(st)
                lr = group["lr"]
                lr = float(lr.item() if isinstance(lr, torch.Tensor) else
                           (lr(max(t - 1, 0)) if callable(lr) else lr))
                for name, value in opt.spec.torch_scalar_state.items():
                    st[name] = torch.tensor(value(group, t, lr), dtype=T.scalar_dtype())
            values = _saved_values(opt, group, entry)
            q8 = opt._quantized(p)
            for name, v in values.items():
                key = keys[name]
                if q8:
                    fmt = F.Q8U if name in opt.spec.nonneg else F.Q8S
                    ours = torch.from_numpy(F.qmap(fmt).copy())
                    if isinstance(v, tuple) and torch.equal(v[2].detach().cpu().float(), ours):
                        codes = v[0].detach().to("cpu").reshape(-1).numpy()
                        absmax = v[1].detach().to("cpu").numpy()
                    else:
                        codes, absmax = F.quantize(fmt, _floats(v, name, opt).float().reshape(-1)
                                                   .numpy())
                    k = key[len("state"):]
                    st[key] = torch.from_numpy(np.array(codes, np.uint8)).reshape(p.shape) \
                        .to(p.device)
                    st["absmax" + k] = torch.from_numpy(np.array(absmax, np.float32)).to(p.device)
                    st["qmap" + k] = ours.to(p.device)
                    continue
                slot = opt._slot.get(id(p))
                dtype = opt._state_torch_dtype(p)
                if slot is not None:
                    buf = slot[0].state_view(slot[1], name, 0.0, dtype)
                else:
                    buf = (torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format)
                           if T.is_dtensor(p) else T.advise_huge(
                               torch.empty(p.shape, dtype=dtype, device=p.device)))
                buf.copy_(_floats(v, name, opt).reshape(p.shape))
                st[key] = buf

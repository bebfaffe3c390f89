"""Checkpoints of the torch adapter: torch's ``state_dict`` layout, checked before loading, and
loaded values copied into the optimizer's own buffers (flat ones in flatten mode)."""
from __future__ import annotations

import torch

from . import _tensors as T

__all__ = ["after_setstate", "check_state_dict", "rehome_state"]


def after_setstate(opt):
    """After unpickling: defaults for keys an older pickle lacks, ``step`` as a tensor."""
    for group in opt.param_groups:
        for k, v in opt.defaults.items():
            group.setdefault(k, v)
        for p in group["params"]:
            st = opt.state.get(p)
            if st and "step" in st and not isinstance(st["step"], torch.Tensor):
                st["step"] = torch.tensor(float(st["step"]), dtype=T.scalar_dtype())


def check_state_dict(opt, state_dict):
    """Every state tensor has its parameter's shape (torch checks the rest itself)."""
    groups, saved = opt.param_groups, state_dict["param_groups"]
    if len(groups) != len(saved) or any(
            len(a["params"]) != len(b["params"]) for a, b in zip(groups, saved)):
        return  # torch's load_state_dict raises its own ValueError
    saved_state = state_dict["state"]
    for gi, (group, sg) in enumerate(zip(groups, saved)):
        for i, (p, pid) in enumerate(zip(group["params"], sg["params"])):
            for name, v in saved_state.get(pid, {}).items():
                if name != "step" and isinstance(v, torch.Tensor) and v.shape != p.shape:
                    raise ValueError(f"state_dict: state {name!r} of "
                                     f"{T.label(group, gi, i, p)} has shape {tuple(v.shape)}")


def rehome_state(opt):
    """After torch's ``load_state_dict``: ``step`` as a CPU scalar of torch's dtype, every
    state tensor copied into a buffer of this optimizer's own (contiguous, or a view into the
    flat state buffer in flatten mode), so the loaded dict is never aliased."""
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p)
            if not st:
                continue
            for name, v in list(st.items()):
                if name == "step":
                    if isinstance(v, torch.Tensor):
                        st[name] = v.detach().to("cpu", T.scalar_dtype()).clone()
                    continue
                if not isinstance(v, torch.Tensor):
                    continue
                slot = opt._slot.get(id(p))
                dtype = opt._state_torch_dtype(p)   # a loaded state of another dtype converts
                if slot is not None:
                    buf = slot[0].state_view(slot[1], name, 0.0, dtype)
                else:
                    buf = torch.empty_like(p, dtype=dtype, memory_format=torch.contiguous_format)
                buf.copy_(v)
                st[name] = buf

"""``fastopt.torch.Adafactor``: torch.optim.Adafactor's step on fastopt's fused passes.

Its state is torch's, tensor for tensor (``step``, and ``row_var``/``col_var`` or
``variance`` with torch's shapes), so a ``state_dict`` goes either way between the two
classes.  Each parameter is stepped by :class:`fastopt.optimizers._adafactor.TensorStep` on
zero-copy views of the parameter, its gradient and its state (NumPy views of CPU tensors,
numba device arrays of CUDA ones).  Everything is checked before any parameter or state
changes.  Plain tensors only (a DTensor's row and column sums would need an all-reduce over
its shards: not built); ``flatten=True`` and 16-bit or 8-bit state are refused.
"""
from __future__ import annotations

import torch

from .. import _checks
from ..optimizers._adafactor import TensorStep, factored_shapes
from . import _checkpoint, _tensors as T
from ._optimizer import FusedOptimizer, _torch

__all__ = ["AdafactorBase"]

_NATIVE = (torch.float32, torch.float64)


class AdafactorBase(FusedOptimizer):
    """FusedOptimizer's construction, checks, clipping, hooks and pickling; Adafactor's own
    state and step."""

    def __init__(self, params, defaults, *, backend=None, flatten=False, state_dtype=None,
                 max_grad_norm=None):
        if flatten:
            raise ValueError("Adafactor: flatten=True is not supported (its state is not "
                             "shaped like the parameters)")
        super().__init__(params, defaults, backend=backend, state_dtype=state_dtype,
                         max_grad_norm=max_grad_norm)

    def add_param_group(self, param_group):
        n = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if T.is_dtensor(p):
                self.param_groups.pop()
                self._flats.pop()
                raise TypeError(f"{T.label(group, n, i, p)} is a DTensor: fastopt.torch."
                                f"Adafactor steps plain tensors (its row and column sums "
                                f"are not all-reduced over shards)")

    def _step(self):
        clip = self._clip_factor() if self.max_grad_norm is not None else 1.0
        work = []          # everything checked before anything changes
        for gi, group in enumerate(self.param_groups):
            lr = group["lr"]
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            for i, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                label = T.label(group, gi, i, p)
                if torch.is_complex(p):   # pragma: no cover - check_param refuses complex
                    raise RuntimeError(f"{label}: Adafactor does not support complex tensors")
                g = T.check_grad(label, p, p.grad)
                if p.dtype not in _NATIVE or g.dtype != p.dtype:
                    raise TypeError(f"{label}: Adafactor steps float32 or float64 parameters "
                                    f"with gradients of their dtype, got {p.dtype} and "
                                    f"{g.dtype}")
                be = self._backend_for(label, p.device.type)
                state = self.state.get(p)
                if state:
                    for name, shape in factored_shapes(p.shape).items():
                        t = state.get(name)
                        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape \
                                or t.dtype != p.dtype or t.device != p.device:
                            raise ValueError(f"{label}: state {name!r} must be a {p.dtype} "
                                             f"tensor of shape {shape} on {p.device}")
                work.append((group, lr, p, g, be))
        for group, lr, p, g, be in work:
            state = self.state[p]
            if not state:      # torch's initial state
                state["step"] = torch.tensor(0.0, dtype=T.scalar_dtype())
                for name, shape in factored_shapes(p.shape).items():
                    state[name] = torch.zeros(shape, dtype=p.dtype, device=p.device)
            for name in factored_shapes(p.shape):
                if not state[name].is_contiguous():
                    state[name] = state[name].contiguous()
            state["step"] += 1
            t = float(state["step"])
            work_p, back = T.kernel_params([p])
            arrays = [self._array(x, p.device) for x in (work_p[0], g)]
            views = {name: self._array(state[name], p.device)
                     for name in factored_shapes(p.shape)}
            TensorStep(be, p.shape, arrays[0], arrays[1], views)(
                group, _checks.lr_value(lr, t) if callable(lr) else lr, t,
                (-1.0 if group["maximize"] else 1.0) * clip)
            for dst, src in back:
                dst.copy_(src)

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """As torch's (the same layout), after checking the state's shapes.  The tensors are
        copied (torch's loader keeps a float32 ``step`` tensor as it is: two optimizers loaded
        from one state dict would count each other's steps)."""
        state_dict = {**state_dict, "state": {
            k: {n: v.clone() if isinstance(v, torch.Tensor) else v
                for n, v in _checkpoint._unwrap(e).items()}
            for k, e in state_dict["state"].items()}}
        groups, saved = self.param_groups, state_dict["param_groups"]
        if len(groups) == len(saved) and all(len(a["params"]) == len(b["params"])
                                             for a, b in zip(groups, saved)):
            for gi, (group, sg) in enumerate(zip(groups, saved)):
                for i, (p, pid) in enumerate(zip(group["params"], sg["params"])):
                    entry = state_dict["state"].get(pid, {})
                    for name, shape in factored_shapes(p.shape).items():
                        v = entry.get(name)
                        if v is not None and tuple(v.shape) != shape:
                            raise ValueError(f"state_dict: state {name!r} of "
                                             f"{T.label(group, gi, i, p)} has shape "
                                             f"{tuple(v.shape)}, expected {shape}")
        _torch("load_state_dict")(self, state_dict)
        self._calls.clear()
        self._plans.clear()

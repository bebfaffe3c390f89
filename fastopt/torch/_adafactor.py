"""``fastopt.torch.Adafactor``: torch.optim.Adafactor's step on fastopt's fused passes.

Its state is torch's, tensor for tensor (``step``, and ``row_var``/``col_var`` or
``variance`` with torch's shapes), so a ``state_dict`` goes either way between the two
classes.  Each parameter is stepped by :class:`fastopt.optimizers._adafactor.TensorStep` on
zero-copy views of the parameter, its gradient and its state (NumPy views of CPU tensors,
numba device arrays of CUDA ones).  Everything is checked before any parameter or state
changes.  bfloat16/float16 parameters (gradients of their dtype or float32), ``state_dtype``
and ``rounding`` as :class:`fastopt.Adafactor`'s (with ``"int8"`` a vector of at least
``min_8bit_size`` elements keeps ``variance`` as uint8 codes with ``variance_absmax``, one
float32 per block of 256); ``flatten=True`` is refused.

DTensor parameters (FSDP2's ``fully_shard``, tensor parallelism: Shard and Replicate
placements) are stepped through their local shards, with the sums torch's step takes over the
whole tensor all-reduced (float64) over the mesh dimensions that shard it
(:func:`_reducer`): the sums of ``p*p`` and ``u*u`` over every shard, a row's sum of ``g*g``
over the shards of its last dimension, a column's (and the row factors' mean) over the shards
of the second-to-last -- at most four small all-reduces per tensor and step, every rank in the
same order, an empty shard included.  The state is DTensors (so ``torch.distributed.
checkpoint`` saves every shard): ``row_var`` placed as the parameter but replicated where the
parameter is sharded on its last dimension (which ``row_var`` reduces to 1), ``col_var``
likewise for the second-to-last, ``variance`` as the parameter.  (torch 2.13's own Adafactor
fails on FSDP2's DTensors: ``aten.pow_`` on a norm's partial placement.)
"""
from __future__ import annotations

import torch

import numpy as np

from .. import _checks
from ..kernels import formats as F
from ..optimizers._adafactor import TensorStep, factored_shapes, state_formats
from . import _checkpoint, _tensors as T
from ._optimizer import FusedOptimizer, _torch

__all__ = ["AdafactorBase"]


class AdafactorBase(FusedOptimizer):
    """FusedOptimizer's construction, checks, clipping, hooks and pickling; Adafactor's own
    state and step."""

    def __init__(self, params, defaults, *, backend=None, flatten=False, state_dtype=None,
                 rounding="nearest", seed=0, min_8bit_size=4096, max_grad_norm=None):
        if flatten:
            raise ValueError("Adafactor: flatten=True is not supported (its state is not "
                             "shaped like the parameters)")
        super().__init__(params, defaults, backend=backend, state_dtype=state_dtype,
                         rounding=rounding, seed=seed, min_8bit_size=min_8bit_size,
                         max_grad_norm=max_grad_norm)

    def _formats(self, p):
        """``{state name: storage format}`` of parameter ``p``'s state."""
        return state_formats(p.shape, F.tag(T.NP_DTYPE[p.dtype]), self._state_dtype,
                             self._min_8bit_size)

    def add_param_group(self, param_group):
        n = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        for i, p in enumerate(group["params"]):
            if T.is_dtensor(p) and not all(pl.is_shard() or pl.is_replicate()
                                           for pl in p.placements):
                self.param_groups.pop()
                self._flats.pop()
                raise ValueError(f"{T.label(group, n, i, p)} is a DTensor with placements "
                                 f"{tuple(p.placements)}: Adafactor's factors need the sums "
                                 f"of the whole tensor, from shards (Shard) or copies "
                                 f"(Replicate) of it only")

    def _step(self):
        clip = self._clip_factor() if self.max_grad_norm is not None else 1.0
        work = []          # everything checked before anything changes
        for gi, group in enumerate(self.param_groups):
            lr = group["lr"]
            lr = lr.item() if isinstance(lr, torch.Tensor) else lr
            for i, p in enumerate(group["params"]):
                g = p.grad
                if g is None:
                    continue
                hit = self._calls.get(("adafactor", id(p)))
                if T.fast_ok(p, g) and hit is not None and hit[5] is g.dtype \
                        and self._same_state(hit, p):
                    # (the common case: plain tensors, the state this step was built on,
                    # checked then; no error label built)
                    work.append((group, lr, p, g, hit[2]))
                    continue
                label = T.label(group, gi, i, p)
                if torch.is_complex(p):   # pragma: no cover - check_param refuses complex
                    raise RuntimeError(f"{label}: Adafactor does not support complex tensors")
                T.check_param(label, p)
                g = T.check_grad(label, p, g)
                be = self._backend_for(label, p.device.type)
                state = self.state.get(p)
                if state:
                    self._check_state(label, p, state)
                work.append((group, lr, p, g, be))
        steps = []
        try:
            for group, lr, p, g, be in work:
                state = self.state[p]
                names = factored_shapes(p.shape)
                placed = _state_placements(p)
                if not state:      # torch's initial state (in the state's formats)
                    state["step"] = torch.tensor(0.0, dtype=T.scalar_dtype())
                    for name, fmt in self._formats(p).items():
                        shape = names[name]
                        dtype = _TORCH[fmt]
                        state[name] = (_dzeros(shape, p, placed[name], dtype) if placed else
                                       torch.zeros(shape, dtype=dtype, device=p.device))
                        if fmt in F.QUANTIZED:    # (zeros: the code of 0, absmax 0)
                            codes, _ = F.quantize(fmt, np.zeros(p.numel(), np.float32))
                            state[name].copy_(torch.from_numpy(codes).reshape(shape))
                            state[name + "_absmax"] = torch.zeros(
                                F.nblocks(p.numel()), dtype=torch.float32, device=p.device)
                for name in names:
                    if placed:     # (a loaded state: a full tensor, or placed as the parameter)
                        state[name] = _placed(state[name], p, placed[name])
                    if not T.local(state[name]).is_contiguous():
                        state[name] = _contiguous(state[name])
                t = float(state["step"]) + 1.0     # (the step tensors counted up at the end)
                steps.append(state["step"])
                work_p, back = T.kernel_params([p]) if not p.is_contiguous() or T.is_dtensor(p) \
                    else ((p,), ())
                step = self._tensor_step(p, work_p[0], state, names, be, g.dtype)
                step(group, _checks.lr_value(lr, t) if callable(lr) else lr, t,
                     (-1.0 if group["maximize"] else 1.0) * clip,
                     grad=self._array(T.local(g) if g.is_contiguous() else T.local(g).contiguous(),
                                      p.device))
                step.release()      # (the gradient is not kept past the step)
                for dst, src in back:
                    dst.copy_(src)
        finally:    # torch's foreach path: _foreach_add_(steps, 1), the same float32
            if steps:   # counts (those of the tensors stepped, should one fail)
                torch._foreach_add_(steps, 1.0)

    def _check_state(self, label, p, state):
        """Each state tensor of ``p`` as this optimizer keeps it (a loaded or edited state
        included), before anything changes."""
        names = factored_shapes(p.shape)
        for name, fmt in self._formats(p).items():
            shape, dtype = names[name], _TORCH[fmt]
            t = state.get(name)
            if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape \
                    or t.dtype != dtype or t.device != p.device:
                raise ValueError(f"{label}: state {name!r} must be a {dtype} tensor of shape "
                                 f"{shape} on {p.device}")
            if T.is_dtensor(t) and not T.is_dtensor(p):
                raise ValueError(f"{label}: state {name!r} is a DTensor, the parameter a "
                                 f"plain tensor")
            if fmt in F.QUANTIZED:
                a = state.get(name + "_absmax")
                want = (F.nblocks(p.numel()),)
                if not isinstance(a, torch.Tensor) or tuple(a.shape) != want \
                        or a.dtype != torch.float32 or a.device != p.device \
                        or not a.is_contiguous():
                    raise ValueError(f"{label}: state {name + '_absmax'!r} must be a "
                                     f"contiguous torch.float32 tensor of shape {want} on "
                                     f"{p.device} (one per block of {F.BLOCK})")

    def state_dict(self):
        """As torch's (``step`` kept a tensor whatever ``state_dtype``)."""
        sd = _torch("state_dict")(self)
        own = _checkpoint.fastopt_only(self.spec)
        if own:
            sd["param_groups"] = [{k: v for k, v in g.items() if k not in own or v != own[k]}
                                  for g in sd["param_groups"]]
        return sd

    def _same_state(self, hit, p):
        """Whether the kept step ``hit`` was built on the state tensors ``p`` has now (the
        same objects, of the same shapes: checked when it was built) and on its memory."""
        state = self.state.get(p)
        return bool(state) and hit[3] == p.data_ptr() and all(
            state.get(name) is t and t.shape == shape for name, t, shape in hit[4])

    def _tensor_step(self, p, work, state, names, be, gdtype):
        """The parameter's :class:`TensorStep`, kept across steps (in the bound-call cache,
        which a ``load_state_dict``, a copy or edited param groups clear) while the memory it
        views is the same: the parameter (or its contiguous copy: rebuilt each step), its
        state tensors, the backend."""
        fmts = self._formats(p)
        keys = list(names) + [n + "_absmax" for n, f in fmts.items() if f in F.QUANTIZED]
        st = [T.local(state[name]) for name in keys]
        ident = (work.data_ptr(), tuple(x.data_ptr() for x in st), tuple(work.shape),
                 tuple(p.shape), work.dtype, work.device, id(be), gdtype)
        key = ("adafactor", id(p))
        hit = self._calls.get(key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        offsets = self._element_offsets()
        if id(p) not in offsets:      # (param_groups edited in place)
            self._offsets = None
            offsets = self._element_offsets()
        pfmt = F.tag(T.NP_DTYPE[p.dtype])
        step = TensorStep(be, work.shape, self._array(work, p.device), None,
                          {name: self._array(x, p.device) for name, x in zip(keys, st)},
                          whole=p.shape, reduce=_reducer(p),
                          formats={"param": pfmt, "grad": F.tag(T.NP_DTYPE[gdtype]), **fmts},
                          rounding=self._rounding, base=offsets[id(p)] + T.shard_start(p),
                          seed=self._seed, factor_base=offsets[id(p)],
                          factor_index=T.factor_indices(p, work.shape) if T.is_dtensor(p)
                          and len(names) == 2 else None)
        # (kept: the step, its backend, the parameter's address, its state tensors and the
        # gradient's dtype, for the next step's check-free path in _step)
        self._calls[key] = (ident, step, be, p.data_ptr(),
                            tuple((name, state[name], state[name].shape) for name in keys),
                            gdtype)
        return step

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


# -- DTensors ------------------------------------------------------------------------------------

def _state_placements(p):
    """``{state name: placements}`` of a DTensor parameter's state (None for a plain tensor):
    the parameter's, with Replicate where it shards the dimension the factor reduces to 1
    (the last for ``row_var``, the second-to-last for ``col_var``)."""
    if not T.is_dtensor(p):
        return None
    from torch.distributed.tensor import Replicate
    nd = p.dim()
    out = {}
    for name in factored_shapes(p.shape):
        cut = {"row_var": nd - 1, "col_var": nd - 2}.get(name)
        out[name] = tuple(Replicate() if pl.is_shard() and pl.dim % nd == cut else pl
                          for pl in p.placements)
    return out


#: the torch dtype of each state format
_TORCH = {F.F64: torch.float64, F.F32: torch.float32, F.BF16: torch.bfloat16,
          F.F16: torch.float16, F.Q8U: torch.uint8}


def _dzeros(shape, p, placements, dtype):
    from torch.distributed.tensor import zeros
    return zeros(shape, dtype=dtype, device_mesh=p.device_mesh, placements=placements)


def _placed(t, p, placements):
    """The state tensor ``t`` of DTensor parameter ``p`` as a DTensor with ``placements``: as
    it is when it has them; redistributed (a collective: every rank steps the same
    parameters) when it is placed otherwise, as ``set_optimizer_state_dict`` places a loaded
    state (the parameter's placements); distributed from a full tensor loaded by
    ``load_state_dict``."""
    if T.is_dtensor(t):
        if tuple(t.placements) == tuple(placements) and t.device_mesh == p.device_mesh:
            return t
        return t.redistribute(p.device_mesh, placements)
    from torch.distributed.tensor import distribute_tensor
    return distribute_tensor(t, p.device_mesh, placements)


def _contiguous(t):
    if not T.is_dtensor(t):
        return t.contiguous()
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(T.local(t).contiguous(), t.device_mesh, t.placements,
                              run_check=False, shape=t.shape, stride=t.stride())


def _reducer(p):
    """For a DTensor parameter, :class:`TensorStep`'s ``reduce``: the float64 values summed
    (``all_reduce``) over the process group of each mesh dimension that shards the tensor --
    any dimension for ``"total"``, the last for ``"rows"``, the second-to-last for
    ``"cols"``; a replicated mesh dimension holds copies, and is not added.  None for a plain
    tensor."""
    if not T.is_dtensor(p):
        return None
    import numpy as np
    import torch.distributed as dist
    nd = max(p.dim(), 1)
    groups = {"total": [], "rows": [], "cols": []}
    for i, pl in enumerate(p.placements):
        if pl.is_shard():
            d = pl.dim % nd
            grp = p.device_mesh.get_group(i)
            groups["total"].append(grp)
            if d == nd - 1:
                groups["rows"].append(grp)
            if d == nd - 2:
                groups["cols"].append(grp)
    device = p.device

    def reduce(kind, values):
        if not groups[kind]:
            return values
        buf = torch.tensor(np.asarray(values, dtype=np.float64), device=device)
        for grp in groups[kind]:
            dist.all_reduce(buf, group=grp)
        return buf.cpu().numpy()

    return reduce


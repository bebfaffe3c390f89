"""The ``torch.optim.Optimizer`` subclass every fastopt.torch class is made from.

Per step and param group: the parameters that have a gradient are grouped by (device, dtype,
step scalars) -- the scalars come from the family's spec with each parameter's own ``step`` --
then, within a group, tensors laid end to end (a ``flatten=True`` buffer, or any such layout)
are joined by :func:`fastopt._layout.joint_runs` into one kernel row, and each (device, dtype,
scalars) group is one bound kernel call over its rows.  Everything is checked before any
kernel runs.  After such a generic step a group keeps a plan (:mod:`fastopt.torch._plan`): while
the plan's checks pass, the next steps skip the grouping, the state lookups and the binding.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch.optim import Optimizer as _TorchOptimizer
from torch.optim.optimizer import _global_optimizer_post_hooks as _POST_HOOKS
from torch.optim.optimizer import _global_optimizer_pre_hooks as _PRE_HOOKS

from .. import _checks, _layout
from ..kernels import formats as F, get_backend, resolve_backend
from ..specs import TORCH_ONLY
from . import _checkpoint, _tensors as T
from ._flat import Flat
from ._plan import GroupPlan

__all__ = ["FusedOptimizer"]


def _locate(t):
    """``(allocation key, start, nbytes)`` of a tensor, for :mod:`fastopt._layout`."""
    if t is None:
        return None, 0, 0
    n = t.numel() * t.element_size()
    if not n:
        return None, 0, 0
    return (t.untyped_storage().data_ptr(), t.dtype, t.device), t.data_ptr(), n


def _join(tensors):
    """One flat tensor over a run of tensors laid end to end (a view, no copy)."""
    full = [t for t in tensors if t.numel()]
    if not full:
        return tensors[0].reshape(-1)
    if len(full) == 1:
        return full[0].reshape(-1)
    first, last = full[0], full[-1]
    n = (last.data_ptr() + last.numel() * last.element_size() - first.data_ptr()) \
        // first.element_size()
    return torch.as_strided(first, (n,), (1,))


def _check_addresses(columns, kernel):
    """Before a kernel is bound to raw addresses (no NumPy view checks them): every tensor has
    its column's storage dtype and is contiguous, and each array has its parameter's number of
    elements -- a state buffer left float32 by ``model.to(torch.float64)``, or of a parameter
    whose ``.data`` changed shape, raises here (as torch's step raises) instead of being read
    out of bounds."""
    if kernel.formats is None:  # pragma: no cover - the adapter always names formats
        return
    arrays = len(kernel.formats)
    for c, col in enumerate(columns):
        fmt = kernel.formats[c] if c < arrays else "absmax"
        if fmt is None:
            continue
        want = np.dtype(np.float32) if c >= arrays else F.storage_dtype(fmt)
        for k, t in enumerate(col):
            if t is None:
                continue
            if T.NP_DTYPE.get(t.dtype, _NP_OTHER.get(t.dtype)) != want or not t.is_contiguous():
                raise TypeError(f"fastopt.torch: {_COLUMN[min(c, 2)]} {k} of a kernel call has "
                                f"dtype {t.dtype} (contiguous: {t.is_contiguous()}); the "
                                f"kernel needs contiguous {want} (state of another dtype than "
                                f"its parameter: move the optimizer's state too)")
            if c < arrays and t.numel() != columns[0][k].numel():
                raise ValueError(f"fastopt.torch: {_COLUMN[min(c, 2)]} {k} of a kernel call has "
                                 f"{t.numel()} elements, its parameter {columns[0][k].numel()}")


def _torch(name):
    """``torch.optim.Optimizer``'s method ``name`` -- undecorated while nothing has imported
    ``torch._dynamo``: its ``_disable_dynamo`` decorator imports dynamo on the first call (1-2 s
    in a fresh process: most of a first step's time) only to keep dynamo from tracing the call,
    and nothing can be tracing while dynamo is not loaded."""
    fn = getattr(_TorchOptimizer, name)
    if "torch._dynamo" not in sys.modules:
        fn = getattr(fn, "__wrapped__", fn)
    return fn


_COLUMN = ("parameter", "gradient", "state tensor")
_NP_OTHER = {torch.uint8: np.dtype(np.uint8)}


class FusedOptimizer(_TorchOptimizer):
    """Shared machinery; each subclass sets :attr:`spec` (see :mod:`fastopt.specs`)."""

    spec = None

    def __init__(self, params, defaults, *, backend=None, flatten=False, state_dtype=None,
                 rounding="nearest", seed=0, min_8bit_size=4096, max_grad_norm=None):
        from ..optimizers.core import check_max_grad_norm
        self.max_grad_norm = check_max_grad_norm("max_grad_norm", max_grad_norm)
        self.last_grad_norm = None
        self._clip = 1.0          # this step's clip factor (max_grad_norm), folded into the rule
        if backend is not None:
            get_backend(backend)  # unknown -> ValueError, unavailable -> RuntimeError
        self._state_dtype = F.check_state_dtype("state_dtype", state_dtype)
        self._rounding = F.check_rounding("rounding", rounding)
        self._seed = F.check_seed("seed", seed)
        self._min_8bit_size = F.check_min_8bit_size("min_8bit_size", min_8bit_size)
        if self._state_dtype == "int8" and self.spec.from_param:
            raise ValueError(f"state_dtype='int8': {type(self).__name__}'s "
                             f"{', '.join(self.spec.from_param)} is a copy of the parameters "
                             f"(use 'bfloat16' or 'float32')")
        # stochastic rounding draws per step: SGD (no torch "step") keeps one then
        self._needs_step = self.spec.torch_step or rounding == "stochastic"
        self._offsets = None      # id(param) -> first element among params of its dtype
        self._requested_backend = backend
        self._flatten = bool(flatten)
        self._flats = []          # per group index: [Flat, ...] (flatten mode)
        self._slot = {}           # id(param) -> (Flat, index)
        self._backends = {}
        self._calls = {}          # (group, device, dtype, flags, n) -> (tensor identities, call)
        self._plans = {}          # group index -> GroupPlan: the step's fast path (._plan)
        self._odd = False         # this step has DTensor or non-contiguous parameters
        super().__init__(params, defaults)

    # -- construction --------------------------------------------------------------------------
    def _check_group(self, group):
        for key in ("capturable", "differentiable"):
            if group.get(key):
                raise ValueError(f"{type(self).__name__}: {key}=True is not supported by "
                                 f"fastopt.torch")
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            group["lr"] = lr.item()
        betas = group.get("betas")
        if betas is not None and any(isinstance(b, torch.Tensor) for b in betas):
            group["betas"] = tuple(float(b) for b in betas)
        self.spec.validate(group)

    def _check_two_pass(self, label, p):
        """LAMB (a spec with a per-tensor reduction): a DTensor sharded or replicated on each
        mesh dimension (its shards' sums are all-reduced over the sharded ones:
        :meth:`_global_sums`)."""
        name = type(self).__name__
        if T.is_dtensor(p) and not all(pl.is_shard() or pl.is_replicate()
                                       for pl in p.placements):
            raise ValueError(f"{label} is a DTensor with placements {tuple(p.placements)}: "
                             f"{name}'s trust ratio needs the norms of the whole tensor, from "
                             f"shards (Shard) or copies (Replicate) of it only")

    def _backend_for(self, label, device_type):
        be = self._backends.get(device_type)
        if be is None:
            req = self._requested_backend
            if device_type == "cuda":
                if req not in (None, "cuda"):
                    raise ValueError(f"{label} is a CUDA tensor; backend={req!r} steps CPU "
                                     f"tensors (use backend=None or 'cuda')")
                be = get_backend("cuda")
            else:
                if req == "cuda":
                    raise ValueError(f"{label} is a CPU tensor; backend='cuda' steps CUDA "
                                     f"tensors")
                be = resolve_backend([], req)
            self._backends[device_type] = be
        return be

    @property
    def state_dtype(self):
        """The ``state_dtype`` given (``None``: each state buffer in its parameter's dtype)."""
        return self._state_dtype

    @property
    def rounding(self):
        """``"nearest"`` or ``"stochastic"``: how writes into 16-bit storage round."""
        return self._rounding

    @property
    def seed(self):
        """The seed of stochastic rounding."""
        return self._seed

    @property
    def min_8bit_size(self):
        """Parameters with fewer elements keep float32 state under ``state_dtype="int8"``."""
        return self._min_8bit_size

    def _state_torch_dtype(self, p):
        if self._state_dtype == "int8":
            return torch.float32     # a parameter under min_8bit_size (8-bit ones: uint8 codes)
        return p.dtype if self._state_dtype is None else T.STATE_DTYPE[self._state_dtype]

    def _quantized(self, p):
        """True when p's state is 8-bit (``state_dtype="int8"`` and at least min_8bit_size)."""
        return self._state_dtype == "int8" and p.numel() >= self._min_8bit_size

    def _state_keys(self, needed):
        """``{rule state name: key in the per-parameter state}``: torch's names, or with
        ``state_dtype="int8"`` bitsandbytes' (``state1``, ``state2``, ... for the used state in
        rule order; the codes' ``absmaxK``/``qmapK`` next to them)."""
        if self._state_dtype != "int8":
            return {n: n for n in needed}
        used = [n for n, need in needed.items() if need]
        return {n: f"state{used.index(n) + 1}" if n in used else n for n in needed}

    def _element_offsets(self):
        """``id(param) -> position of its first element among the trainable parameters of its
        dtype`` (param-group order): the element index of stochastic rounding's bits."""
        if self._offsets is None:
            seen, out = {}, {}
            for group in self.param_groups:
                for p in group["params"]:
                    if p.requires_grad and id(p) not in out:
                        out[id(p)] = seen.get(p.dtype, 0)
                        seen[p.dtype] = out[id(p)] + p.numel()
            self._offsets = out
        return self._offsets

    def add_param_group(self, param_group):
        self._offsets = None
        self._plans.clear()
        n_before = len(self.param_groups)
        _torch("add_param_group")(self, param_group)
        group = self.param_groups[-1]
        gi = n_before
        try:
            self._check_group(group)
            for i, p in enumerate(group["params"]):
                label = T.label(group, gi, i, p)
                T.check_param(label, p)
                self._backend_for(label, p.device.type)
                if T.is_dtensor(p) and (self._flatten or self._state_dtype == "int8"):
                    raise ValueError(f"{label} is a DTensor (FSDP2); flatten=True and "
                                     f"state_dtype='int8' step plain tensors only")
                if self.spec.apply_rule:
                    self._check_two_pass(label, p)
        except Exception:
            self.param_groups.pop()  # leave the optimizer as it was
            raise
        if self._flatten:
            self._flatten_group(group)
        else:
            self._flats.append([])
        if self.spec.torch_eager_state:
            for p in group["params"]:
                self._ensure_state(p, group)

    @torch.no_grad()
    def _flatten_group(self, group):
        buckets = {}
        for p in group["params"]:
            if p.requires_grad:  # frozen parameters stay where they are (and get no grad)
                buckets.setdefault((p.device, p.dtype), []).append(p)
        flats = []
        for params in buckets.values():
            flat = Flat(params)
            for i, p in enumerate(params):
                self._slot[id(p)] = (flat, i)
            flats.append(flat)
        self._flats.append(flats)

    # -- state ----------------------------------------------------------------------------------
    def _new_buffer(self, p, name, init):
        slot = self._slot.get(id(p))
        dtype = self._state_torch_dtype(p)
        if slot is not None:  # a view into the flat state buffer, (re)initialized
            return slot[0].state_view(slot[1], name, init, dtype).fill_(init)
        if T.is_dtensor(p):
            return (torch.full_like(p, init, dtype=dtype, memory_format=torch.contiguous_format)
                    if init else
                    torch.zeros_like(p, dtype=dtype, memory_format=torch.contiguous_format))
        return T.filled(p.shape, init, dtype, p.device)   # (contiguous; huge pages advised)

    def _ensure_state(self, p, group, needed=None):
        """Create the state torch.optim would create on p's first step; return it."""
        spec = self.spec
        needed = spec.needed(group) if needed is None else needed
        if not self._needs_step and not any(needed.values()):
            return self.state.get(p, {})  # SGD without momentum keeps no state (as torch)
        state = self.state[p]
        if self._needs_step and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=T.scalar_dtype())
        for name, value in spec.torch_scalar_state.items():   # NAdam's mu_product, ASGD's eta
            if name not in state:
                lr = group["lr"]
                lr = _checks.lr_value(lr.item() if isinstance(lr, torch.Tensor) else lr, 1)
                state[name] = torch.tensor(value(group, 0, lr), dtype=T.scalar_dtype())
        keys = self._state_keys(needed)
        q8 = self._quantized(p)
        for name, need in needed.items():
            key = keys[name]
            if need and state.get(key) is None:
                init = spec.initial(name, group)
                if name in spec.from_param:     # Schedule-Free's z: a copy of the parameter
                    buf = self._new_buffer(p, name, 0.0)
                    buf.copy_(p.detach())
                    state[key] = buf
                    continue
                if q8:
                    self._new_codes(p, state, key, name, init)
                else:
                    state[key] = self._new_buffer(p, name, init)
        return state

    def _new_codes(self, p, state, key, name, init):
        """8-bit state (bitsandbytes' layout): uint8 codes shaped like p, float32 absmax per
        block of 256, the map -- the initial value quantized."""
        fmt = F.Q8U if name in self.spec.nonneg else F.Q8S
        codes, absmax = F.quantize(fmt, np.full(p.numel(), init, np.float32))
        k = key[len("state"):]
        state[key] = torch.from_numpy(codes).reshape(p.shape).to(p.device)
        state["absmax" + k] = torch.from_numpy(absmax).to(p.device)
        state["qmap" + k] = torch.from_numpy(F.qmap(fmt).copy()).to(p.device)

    def _count(self, p):
        """Steps p has taken (SGD, whose torch state has no step: 1 once it has a buffer)."""
        state = self.state.get(p)
        if not state:
            return 0
        if self.spec.torch_step:
            return self._steps_taken(state)
        key = "state1" if self._state_dtype == "int8" else "momentum_buffer"
        return 0 if state.get(key) is None else 1

    @staticmethod
    def _steps_taken(state):
        s = state.get("step") if state else None
        return 0 if s is None else int(s.item() if isinstance(s, torch.Tensor) else s)

    # -- the step ---------------------------------------------------------------------------------
    def _params_edited(self):
        """A group's ``params`` list changed: stochastic rounding's element offsets of the
        later groups too; every plan and bound call is rebuilt."""
        self._offsets = None
        self._plans.clear()
        self._calls.clear()

    def _plan_group(self, gi, group):
        """-> {(device, dtype, grad dtype, scalars, step): [(p, grad)]}; validates, mutates
        nothing.  ``step`` (1-based) feeds stochastic rounding's bits."""
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        if not callable(lr):
            _checks.lr("lr", lr)
        scalars = self.spec.scalars
        by_t = {}
        known = {id(p) for flat in (self._flats[gi] if gi < len(self._flats) else ())
                 if flat.intact() for p in flat.params}   # flatten: checked at construction
        needed = self.spec.needed(group)
        keys = [key for n, key in self._state_keys(needed).items() if needed[n]]
        for i, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if id(p) not in known and not T.fast_ok(p, g):   # no label formatting when valid
                label = T.label(group, gi, i, p)
                T.check_param(label, p)
                g = T.check_grad(label, p, g)
                self._odd = self._odd or T.is_dtensor(p) or not p.is_contiguous()
            state = self.state.get(p)
            if state and keys:
                self._check_state_dtypes(group, gi, i, p, state, keys)
            if self.spec.group_step:     # Schedule-Free: the group counts the steps
                t = r = group[self.spec.group_step] + 1
            else:
                t = self._count(p) + 1
                r = t if self.spec.torch_step else self._steps_taken(self.state.get(p)) + 1
            by_t.setdefault((t, r), []).append((p, g))
        buckets = {}
        for (t, r), pairs in by_t.items():
            sc = scalars(group, t, _checks.lr_value(lr, t))
            if self._clip != 1.0:
                sc = self.spec.scale_grad(sc, self._clip)
            for p, g in pairs:
                buckets.setdefault((p.device, p.dtype, g.dtype, sc, r, self._quantized(p)),
                                   []).append((p, g))
        return buckets

    def _check_state_dtypes(self, group, gi, i, p, state, keys):
        """The state ``p`` has (``keys``: its used state's keys) is of the dtype this optimizer
        keeps for it -- checked when a step is planned, before any parameter is stepped (a
        ``p.data`` re-typed without its state raises naming the parameter, with nothing
        changed)."""
        want = torch.uint8 if self._quantized(p) else self._state_torch_dtype(p)
        for key in keys:
            t = state.get(key)
            if t is not None and t.dtype is not want:
                raise TypeError(f"{T.label(group, gi, i, p)} ({p.dtype}) has state {key!r} of "
                                f"dtype {t.dtype}; this optimizer keeps {want} for it (state "
                                f"of another dtype than its parameter: move the optimizer's "
                                f"state with the parameter, or load a state dict); nothing "
                                f"was changed")

    def step(self, closure=None):
        """Perform one optimization step; returns ``closure()``'s loss (evaluated with grad
        enabled) or None.  Inside a function compiled with ``torch.compile`` the step runs
        eagerly, outside the graph (dynamo cannot trace kernels called through raw
        addresses): a graph break, as for any function dynamo is told to skip."""
        if "torch._dynamo" in sys.modules:   # torch.compile may be tracing or running a
            return _step_outside_graph(self, closure)   # frame that calls this
        return self._step_with_hooks(closure)

    def _step_with_hooks(self, closure=None):
        """torch.optim's step wrapper (step pre/post hooks, the profiler's ``record_function``
        and ``_optimizer_step_code``) when a hook is registered or the profiler is on; else
        the step alone (that wrapper costs ~10 us a step, a third of a small model's step)."""
        if ((_PRE_HOOKS or _POST_HOOKS or self._optimizer_step_pre_hooks
                or self._optimizer_step_post_hooks or torch.autograd._profiler_enabled())
                and type(self).step is _STEP):   # (an overriding step: torch wrapped that one)
            return _hooked_step(self, closure)
        return self._eager_step(closure)

    def _eager_step(self, closure=None):
        # torch.no_grad() as a decorator costs ~3 us a call: the same switch, by hand
        enabled = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)
        try:
            loss = None
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            self._step()
            return loss
        finally:
            torch._C._set_grad_enabled(enabled)

    def _step(self):
        spec = self.spec
        if spec.switch and not all(g["train_mode"] for g in self.param_groups):
            raise RuntimeError(f"{type(self).__name__}: call train() before step() (and eval() "
                               f"before evaluating or saving); nothing was changed")
        self._clip = self._clip_factor() if self.max_grad_norm is not None else 1.0
        # every group checked before any is stepped: its kept plan where nothing changed
        # (._plan), else the generic path's buckets (and whether it has odd tensors)
        work = []
        for gi, group in enumerate(self.param_groups):
            plan = self._plans.get(gi)
            if plan is not None and plan.group is group and plan.ready(self, group):
                work.append((plan, False))
            else:
                self._odd = False   # set by _plan_group: a DTensor or non-contiguous parameter
                work.append((self._plan_group(gi, group), self._odd))
        for gi, (group, (todo, odd)) in enumerate(zip(self.param_groups, work)):
            if isinstance(todo, GroupPlan):
                todo.run(self, group)
            elif todo:
                self._odd = odd
                built = self._run_group(gi, group, todo)
                self._plans[gi] = GroupPlan.build(self, gi, group, built)
            if spec.after_step is not None:     # Schedule-Free's k, weight_sum, lr_max
                t = group[spec.group_step] + 1
                lr = group["lr"]
                lr = lr.item() if isinstance(lr, torch.Tensor) else lr
                group.update(spec.after_step(group, t, _checks.lr_value(lr, t)))

    def _clip_factor(self):
        """``max_grad_norm``: the global L2 norm of every gradient of the step (torch's
        ``get_total_norm``, one read; kept in :attr:`last_grad_norm`) and torch's clip factor
        ``min(1, max_grad_norm/(norm + 1e-6))``, applied inside the fused update."""
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return 1.0
        if all(type(g) is torch.Tensor and g.device.type == "cpu" and g.is_contiguous()
               and g.dtype in T.NP_DTYPE for g in grads):
            # CPU tensors: the host backend's reduction on zero-copy views (the compiled
            # norm_sq rule, float64 lanes, in the kernels' own thread team; torch's vector_norm
            # of one large tensor runs at half the bandwidth here)
            be = self._backend_for("gradients", "cpu")
            norm = math.sqrt(sum(be.sumsq(T.host(g)) for g in grads))
        else:
            norm = torch.nn.utils.get_total_norm(grads, 2.0)
            if hasattr(norm, "full_tensor"):   # DTensor gradients (FSDP2): the global norm
                norm = norm.full_tensor()
            norm = float(norm)
        self.last_grad_norm = norm
        return F.clip_coefficient(norm, self.max_grad_norm)

    @torch.no_grad()
    def _switch(self, method):
        """Schedule-Free's ``train()``/``eval()``: ``p.lerp_(z, weight)`` per parameter (one
        pass each), in groups not yet in that mode."""
        _, weight_of, mode = self.spec.switch[method]
        (name,) = self.spec.from_param
        for group in self.param_groups:
            if bool(group["train_mode"]) == mode:
                continue
            w = weight_of(group)
            for p in group["params"]:
                z = self.state.get(p, {}).get(name)
                if z is None:
                    continue
                if z.dtype == p.dtype:
                    p.lerp_(z, w)
                else:           # state_dtype differs: interpolate in the state's precision
                    p.copy_(p.to(z.dtype).lerp_(z, w))
            group["train_mode"] = mode

    def _bound(self, key, columns, device, kernel, offsets, owners=None, per_tensor=False):
        """The bound kernel call over ``columns`` (parameters, gradients, each state buffer):
        tensors laid end to end in one storage, in every column at once, are one row
        (:func:`fastopt._layout.joint_runs`).

        On the CPU with the Cython backend the rows are the tensors' own addresses
        (``data_ptr()``, no NumPy views) and the call is kept for the next step: it is reused
        while every tensor is the same object at the same address with the same size (checked
        each step, so a re-homed ``.data`` or a new ``.grad`` rebinds), and it holds no
        reference to any tensor.  Elsewhere (Numba, NumPy, CUDA) the rows are views, rebuilt each step.
        ``per_tensor``: one row per tensor, never joined (LAMB's per-tensor sums)."""
        ident = tuple((id(t), t.data_ptr(), t.numel()) if t is not None else None
                      for col in columns for t in col)
        hit = self._calls.get(key)
        if hit is not None and hit[0] == ident:
            return hit[1]
        be = self._backend_for("parameter", device.type)
        params = columns[0] if owners is None else owners   # whose element offsets
        # each kernel tensor's first element in stochastic rounding's element index (a
        # DTensor's local shard: where the shard starts in its parameter)
        if any(id(p) not in offsets for p in params):   # param_groups edited in place
            self._offsets = None
            offsets = self._element_offsets()
        start = [offsets[id(p)] + T.shard_start(p) for p in params]
        runs = []
        for run in ([[k] for k in range(len(params))] if per_tensor else
                    _layout.joint_runs(columns, _locate)):
            # a run is one row only where its elements are consecutive in the element index
            # of stochastic rounding too
            cut = [0] + [j for j in range(1, len(run)) if start[run[j]] !=
                         start[run[j - 1]] + columns[0][run[j - 1]].numel()]
            runs += [run[a:b] for a, b in zip(cut, cut[1:] + [len(run)])]
        bases = [start[run[0]] for run in runs]
        if device.type == "cpu" and hasattr(be, "bind_addresses"):
            _check_addresses(columns, kernel)
            rows = []
            for run in runs:
                full = [columns[0][k] for k in run]
                n = sum(t.numel() for t in full)
                # (a run's address is its first non-empty tensor's: an empty tensor joins any
                # run, and its own data_ptr() may be 0 or anywhere)
                first = next((k for k in run if columns[0][k].numel()), run[0])
                rows.append((n, [0 if col[first] is None else col[first].data_ptr()
                                 for col in columns]))
            call = be.bind_addresses(kernel, rows, bases=bases, seed=self._seed)
            # the runs and their bases: what a step plan (._plan) needs to rebind the call to
            # new addresses of the same tensors
            self._calls[key] = (ident, call, runs, bases)
            return call
        rows = []
        for run in runs:
            rows.append(tuple(None if col[run[0]] is None else
                              self._array(_join([col[k] for k in run]), device)
                              for col in columns))
        return be.bind(kernel, rows, bases=bases, seed=self._seed)

    def _run_group(self, gi, group, buckets):
        """Step one group's buckets (from :meth:`_plan_group`); returns, per bucket, what
        :meth:`_plan.GroupPlan.build` keeps: ``(call key, kernel, parameters, state keys of
        columns[2:], step r, gradients)``."""
        spec = self.spec
        built = []
        needed = spec.needed(group)
        names = spec.state_names
        flags = spec.flags(group)
        steps = []
        offsets = self._element_offsets()
        keys = self._state_keys(needed)
        for (device, dtype, gdtype, sc, t, q8), pairs in buckets.items():
            states = [self._ensure_state(p, group, needed) for p, _ in pairs]
            owners = [p for p, _ in pairs]
            # the kernel's tensors: local shards of DTensors; a non-contiguous parameter
            # through a contiguous copy, written back after the kernel (the common contiguous
            # path copies nothing)
            work, back = T.kernel_params(owners) if self._odd else (owners, ())
            columns = [work, [g for _, g in pairs]]
            columns += [[st[keys[n]] for st in states] if needed[n] else [None] * len(pairs)
                        for n in names]
            if self._odd:   # DTensor state: its local shards
                columns[2:] = [[T.local(t) for t in col] for col in columns[2:]]
            be = self._backend_for("parameter", device.type)
            pfmt = F.tag(T.NP_DTYPE[dtype])
            col_keys = [keys[n] if needed[n] else None for n in names]
            if q8:   # 8-bit codes; then each one's absmax
                sfmt = {n: F.Q8U if n in spec.nonneg else F.Q8S for n in names}
                col_keys += ["absmax" + keys[n][len("state"):] for n in names if needed[n]]
                columns += [[st["absmax" + keys[n][len("state"):]] for st in states]
                            for n in names if needed[n]]
            else:
                one = F.tag(T.NP_DTYPE[self._state_torch_dtype(pairs[0][0])])
                sfmt = {n: one for n in names}
            formats = (pfmt, F.tag(T.NP_DTYPE[gdtype]),
                       *[sfmt[n] if needed[n] else None for n in names])
            # (a two-pass spec with 8-bit state: its q8_rules)
            first = spec.q8_rules[0] if q8 and spec.q8_rules else spec.rule
            kernel = be.kernel(first, F.compute_dtype(pfmt), flags, formats, self._rounding)
            ckey = (gi, device, dtype, gdtype, flags, len(pairs), q8)
            call = self._bound(ckey, columns, device, kernel, offsets, owners,
                               per_tensor=bool(spec.apply_rule))
            built.append((ckey, kernel, owners, col_keys, t, columns[1]))
            sums = self._launch(device, call, sc, t)
            if spec.apply_rule and self._odd:    # DTensors: the whole tensors' sums
                sums = self._global_sums(owners, sums)
            if spec.apply_rule:    # LAMB: the second pass, per tensor, with its own scalars
                self._apply_pass(group, device, columns, formats, flags, sums, t, ckey,
                                 offsets, owners, sc, q8)
            for dst, src in back:
                dst.copy_(src)
            if self._needs_step:
                steps.extend(s["step"] for s in states)
            if spec.torch_scalar_state:    # torch's 0-d state after this step, from the step count
                lr = group["lr"]
                lr = _checks.lr_value(lr.item() if isinstance(lr, torch.Tensor) else lr, t)
                for name, value in spec.torch_scalar_state.items():
                    v = value(group, t, lr)
                    for st in states:
                        st[name].fill_(v)
        if steps:
            torch._foreach_add_(steps, 1.0)
        return built

    @staticmethod
    def _global_sums(owners, sums):
        """A two-pass spec on DTensors (LAMB under FSDP2): each tensor's sums over the whole
        tensor -- its local shard's sums all-reduced (in float64) over every mesh dimension
        it is sharded on; a replicated dimension holds the same values, and is not added.
        One all-reduce per process group for all the tensors of the call, in the same order
        on every rank (the buckets are built from the same parameters everywhere)."""
        import torch.distributed as dist
        sums = list(sums)
        by_group = {}
        for k, p in enumerate(owners):
            if T.is_dtensor(p):
                for dim, pl in enumerate(p.placements):
                    if pl.is_shard():
                        group = p.device_mesh.get_group(dim)
                        by_group.setdefault(id(group), (group, []))[1].append(k)
        for group, ks in by_group.values():
            buf = torch.tensor([list(sums[k]) for k in ks], dtype=torch.float64,
                               device=owners[ks[0]].device)
            dist.all_reduce(buf, group=group)
            for k, row in zip(ks, buf.tolist()):
                sums[k] = tuple(row)
        return sums

    def _apply_pass(self, group, device, columns, formats, flags, sums, t, ckey, offsets,
                    owners, sc, q8):
        """A two-pass spec's second pass (LAMB): per tensor, ``spec.apply_rule`` over the
        parameter and the state its first pass wrote, with the scalars of that tensor's sums
        (``spec.apply_scalars``; LAMB's trust ratio).  With 8-bit state, the second of
        ``spec.q8_rules`` over the first pass's arrays (it stores the state), with
        ``spec.q8_apply_scalars`` from the first pass's scalars ``sc``."""
        spec = self.spec
        be = self._backend_for("parameter", device.type)
        lr = group["lr"]
        lr = _checks.lr_value(lr.item() if isinstance(lr, torch.Tensor) else lr, t)
        if q8 and spec.q8_rules:
            kernel = be.kernel(spec.q8_rules[1], F.compute_dtype(formats[0]), flags, formats,
                               self._rounding)
            cols = columns
        else:
            kernel = be.kernel(spec.apply_rule, F.compute_dtype(formats[0]), flags,
                               (formats[0], *formats[2:]), self._rounding)
            cols = [columns[0], *columns[2:]]
        for k, tensor_sums in enumerate(sums):
            call = self._bound(ckey + ("apply", k), [[c[k]] for c in cols], device, kernel,
                               offsets, [owners[k]])
            scalars = (spec.q8_apply_scalars(sc, group, t, lr, tensor_sums) if q8 and
                       spec.q8_rules else spec.apply_scalars(group, t, lr, tensor_sums))
            self._launch(device, call, scalars, t)

    def _launch(self, device, call, sc, t):
        """``call(sc, t)``; returns what it returns (a reduction's per-row sums)."""
        if device.type == "cpu":
            return call(sc, t)
        # CUDA (never run on a GPU): numba launches on its default stream
        stream = torch.cuda.current_stream(device)
        foreign = stream.cuda_stream != 0
        if foreign:
            stream.synchronize()
        out = call(sc, t)
        if foreign:
            from numba import cuda
            cuda.synchronize()
        return out

    def _array(self, t, device):
        """The kernel array of a tensor: a numba device array (CUDA), else a 1-D NumPy view."""
        if device.type != "cpu":
            return T.device(t)
        return T.host(t)

    # -- zero_grad ----------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch; in flatten mode the flat gradient buffers are zeroed and the ``.grad``
        views re-attached instead of setting them to None (see :mod:`fastopt.torch`)."""
        if not self._flatten:
            return _torch("zero_grad")(self, set_to_none)
        with torch.no_grad():
            for flats in self._flats:
                for flat in flats:
                    flat.grad.zero_()
                    if any(p.grad is not g for p, g in zip(flat.params, flat.grads)):
                        flat.attach_grads()

    # -- checkpoints (fastopt.torch._checkpoint) ------------------------------------------------
    #: what a deep copy or a pickle keeps besides torch's ``defaults``, ``state`` and
    #: ``param_groups`` (torch's ``__getstate__`` keeps only those): the constructor's options
    #: and the flat buffers; everything else is a cache of tensor addresses and identities,
    #: rebuilt by the copy's first step (a bound call copied over would write into the
    #: original's memory)
    _PICKLED = {"max_grad_norm": None, "last_grad_norm": None, "_state_dtype": None,
                "_rounding": "nearest", "_seed": 0, "_min_8bit_size": 4096,
                "_needs_step": None, "_requested_backend": None, "_flatten": False,
                "_flats": None}

    def __getstate__(self):
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # unpickled or deep-copied (torch's load_state_dict calls this too, with the state and
        # param groups only, on a live optimizer)
        copied = "defaults" in state
        if copied:
            for k, v in self._PICKLED.items():   # a pickle of torch's three keys only
                self.__dict__.setdefault(k, v)
            if self._needs_step is None:
                self._needs_step = self.spec.torch_step or self._rounding == "stochastic"
            if self._flats is None:
                self._flats = [[] for _ in self.param_groups]
            self._clip, self._offsets, self._odd = 1.0, None, False
            self._backends, self._calls, self._slot = {}, {}, {}
        self._plans = {}
        _checkpoint.after_setstate(self)
        if copied:
            self._rehome_flats()

    @torch.no_grad()
    def _rehome_flats(self):
        """After a deep copy or an unpickling (flatten mode): each parameter, gradient and state
        tensor a view into its run's flat buffers again (a deep copy keeps views of one storage
        as views; a plain pickle makes each tensor its own copy, whose values are copied in)."""
        for gi, flats in enumerate(self._flats):
            keys = self._state_keys(self.spec.needed(self.param_groups[gi]))
            for flat in flats:
                flat.rehome()
                for i, p in enumerate(flat.params):
                    self._slot[id(p)] = (flat, i)
                    st = self.state.get(p, {})
                    for name, buf in flat.state.items():
                        t = st.get(keys.get(name))
                        if not isinstance(t, torch.Tensor):
                            continue
                        view = flat.state_view(i, name, 0.0, buf.dtype)
                        if t.data_ptr() != view.data_ptr():
                            view.copy_(t)
                            st[keys[name]] = view

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """As torch (same layout), after checking state shapes; values are copied into this
        optimizer's own (contiguous; in flatten mode flat) buffers, converted to its
        ``state_dtype`` (a bitsandbytes 8-bit state dict loads too: see
        :mod:`fastopt.torch._checkpoint`)."""
        state_dict = {**state_dict, "state": {k: _checkpoint._unwrap(v) for k, v in
                                              state_dict["state"].items()}}
        _checkpoint.check_state_dict(self, state_dict)
        for_torch, aside = _checkpoint.split_state_dict(self, state_dict)
        _torch("load_state_dict")(self, for_torch)
        _checkpoint.rehome_state(self, aside)
        self._calls.clear()
        self._plans.clear()

    def state_dict(self):
        """As torch.  With ``state_dtype="int8"`` the state is bitsandbytes' layout and each
        ``step`` an int, so ``bitsandbytes.optim.AdamW8bit(...).load_state_dict`` takes it."""
        sd = _torch("state_dict")(self)
        if self._state_dtype == "int8":
            sd["state"] = {k: {n: int(v.item()) if n == "step" and isinstance(v, torch.Tensor)
                               else v for n, v in e.items()} for k, e in sd["state"].items()}
        own = _checkpoint.fastopt_only(self.spec)
        if own:   # at their defaults, fastopt's own hyperparameters are left out: the dict is
            # then torch's exactly (DCP's strict load plans match both ways)
            sd["param_groups"] = [{k: v for k, v in g.items() if k not in own or v != own[k]}
                                  for g in sd["param_groups"]]
        return sd


def torch_signature(spec):
    """``[(name, default, keyword_only)]`` of the torch class of ``spec``: torch's own order
    (``spec.torch_order``), then fastopt's extra hyperparameters, keyword-only."""
    hypers = {h.name: h for h in spec.hypers}
    order = spec.torch_order or tuple(h.name for h in spec.hypers)
    out, kw, seen = [], False, set()
    for name in order:
        if name == "*":
            kw = True
            continue
        default = hypers[name].default if name in hypers else TORCH_ONLY[name]
        out.append((name, default, kw or (name in hypers and hypers[name].kw_only
                                          and not spec.torch_order)))
        seen.add(name)
    out += [(h.name, h.default, True) for h in spec.hypers if h.name not in seen]
    return out


#: torch.optim.Optimizer wraps a subclass's ``step`` at its first construction (hooks, profiler);
#: FusedOptimizer.step applies that wrapper itself when it has something to do
FusedOptimizer.step.hooked = True
_STEP = FusedOptimizer.step
_hooked_step = _TorchOptimizer.profile_hook_step(FusedOptimizer._eager_step)
#: the step with dynamo off for it and every frame it calls (torch's own lazy decorator; used
#: only once something has imported dynamo, so it never imports it itself)
_step_outside_graph = torch._disable_dynamo(FusedOptimizer._step_with_hooks)

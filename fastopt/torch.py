r"""PyTorch adapter: ``torch.optim.Optimizer`` subclasses stepped by fastopt's fused kernels.

``import fastopt`` does not import this module (nor torch); import it explicitly::

    import fastopt.torch
    opt = fastopt.torch.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)

Each class takes ``torch.optim``'s constructor arguments (the update rules are those of SPEC.md,
option for option as torch.optim), keeps ``param_groups``, ``add_param_group``, ``zero_grad``,
``step(closure=None)`` and ``state_dict()``/``load_state_dict()`` in torch's layout and state
names, so a checkpoint written by ``torch.optim.Adam`` loads into :class:`Adam` and the reverse.
Per-parameter state is exactly torch's: ``step`` a float32 scalar tensor on the CPU (Adam, AdamW,
RMSprop, Adagrad, Momentum), ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq`` (amsgrad),
``square_avg``, ``grad_avg`` (centered), ``momentum_buffer``, ``sum``; SGD keeps only
``momentum_buffer`` (created by the first step).  Parameters whose ``grad`` is None are skipped
and their ``step`` does not advance, as in torch.

How tensors reach the kernels
    * CPU tensors are passed as zero-copy NumPy views (``t.detach().view(-1).numpy()``, checked
      to share memory) to the host backend (Numba by default; ``backend="numpy"``/``"cython"``
      may be named).
    * CUDA tensors are passed through ``__cuda_array_interface__`` (``numba.cuda.as_cuda_array``)
      to the ``"cuda"`` backend.  **This path has never been run on a GPU**; it is written to be
      correct by construction (same kernel contract as the host path).  Kernels run on Numba's
      default stream; when torch's current stream is not the default one, the adapter
      synchronizes that stream before and the device after the kernels.
    * float32 and float64 only: bfloat16/float16 (or any other dtype) raise ``TypeError`` naming
      the parameter, at construction.  Non-contiguous parameters raise ``ValueError`` (they are
      not copied: the step updates the parameter's own memory).  A non-contiguous *gradient* is
      copied to a contiguous one (read only, so this is correct, just slower).  Sparse
      gradients raise ``RuntimeError``.  ``capturable=True`` and ``differentiable=True`` are not
      supported (``ValueError``); ``foreach`` and ``fused`` are accepted and ignored (the step
      is always one fused pass per buffer).

Kernel calls
    Without ``flatten`` the step makes one kernel call per parameter.  The bias corrections use
    each parameter's own ``step``, so scalars are computed once per distinct step value.

``flatten=True``
    At construction, each param group's parameters are moved, per (device, dtype), into one
    contiguous buffer: ``p.data`` becomes a view into it and ``p.grad`` a view into a flat
    gradient buffer (existing gradients are copied in); state buffers are flat too, and each
    parameter's state entries are views into them.  A step is then **one kernel call per
    (group, device, dtype)**.  Trade-offs: the parameter objects (and so ``model.parameters()``
    and any reference to them) are kept, but their storage is re-homed and the parameter memory
    is copied once at construction (peak: old + new parameter memory); the gradient buffers
    exist for the optimizer's lifetime (as with ``zero_grad(set_to_none=False)``).

    Parameters with ``requires_grad=False`` are not flattened (they keep ``grad`` None and are
    skipped, as in torch).  ``zero_grad()`` in flatten mode always zeroes the flat gradient buffer and re-attaches the
    views, whatever ``set_to_none`` says (setting ``.grad`` to None would let autograd allocate
    fresh, scattered gradients).  Consequently a parameter that backward did not reach has a zero
    gradient rather than None and *is* stepped, exactly as ``torch.optim`` does after
    ``zero_grad(set_to_none=False)``.  If ``.grad`` was replaced by another tensor (or set to
    None), or ``.data`` moved (``model.to(...)``), the step notices (identity and address checks)
    and falls back, for that step, to per-parameter calls on whatever tensors are there; the
    next ``zero_grad()`` re-attaches the gradient views.  The same fallback is taken when the
    parameters of a flat buffer have different ``step`` counts (some were skipped).

State dicts
    ``state_dict()`` returns torch's layout holding references to the live state (as torch);
    in flatten mode these are views into the flat state buffers (``torch.save`` writes each flat
    buffer once).  ``load_state_dict()`` validates shapes before changing anything and then
    **copies** the loaded values into this optimizer's own buffers (torch would alias them), so
    the loaded dict can keep being used elsewhere.
"""
from __future__ import annotations

import types

import numpy as np
import torch
from torch.optim import Optimizer as _TorchOptimizer

from . import optimizers as _np
from .kernels import get_backend, resolve_backend

__all__ = ["SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW"]

_NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}


def _scalar_dtype():
    # torch.optim keeps `step` in float32 unless the default dtype is float64
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _label(group, gi, i, p):
    names = group.get("param_names")
    where = repr(names[i]) if names and i < len(names) else f"param_groups[{gi}]['params'][{i}]"
    return f"parameter {where} (shape {tuple(p.shape)})"


def _check_param(label, p):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{label} must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype not in _NP_DTYPE:
        raise TypeError(f"{label} has dtype {p.dtype}; fastopt.torch steps float32 and float64 "
                        f"parameters only (bfloat16/float16 parameters are not supported: keep "
                        f"float32 master weights, e.g. with torch.autocast)")
    if p.layout != torch.strided:
        raise TypeError(f"{label} has layout {p.layout}; only dense (strided) tensors")
    if p.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{label} is on device {p.device}; fastopt.torch steps CPU and CUDA "
                        f"tensors")
    if not p.is_contiguous():
        raise ValueError(f"{label} is not contiguous; the fused step updates its memory in place "
                         f"(make it contiguous once: p.data = p.data.contiguous())")


def _check_grad(label, p, g):
    """The gradient as a contiguous tensor of p's dtype/shape/device (copied if non-contiguous)."""
    if g.is_sparse or g.layout != torch.strided:
        raise RuntimeError(f"{label}: fastopt.torch does not support sparse gradients")
    if g.dtype != p.dtype:
        raise TypeError(f"{label}: gradient has dtype {g.dtype}, the parameter {p.dtype}")
    if g.shape != p.shape:
        raise ValueError(f"{label}: gradient has shape {tuple(g.shape)}, the parameter "
                         f"{tuple(p.shape)}")
    if g.device != p.device:
        raise ValueError(f"{label}: gradient is on {g.device}, the parameter on {p.device}")
    return g if g.is_contiguous() else g.contiguous()


def _host(t):
    """Zero-copy 1-D NumPy view of a contiguous CPU tensor (checked)."""
    a = t.detach().view(-1).numpy()
    if a.size and a.__array_interface__["data"][0] != t.data_ptr():  # pragma: no cover
        raise RuntimeError("fastopt.torch: NumPy view of a tensor does not share its memory")
    return a


_EMPTY_DEVICE = {}
_EMPTY_HOST = {}


def _device(t):
    """Zero-copy 1-D numba device array of a contiguous CUDA tensor.  Never run on a GPU."""
    from numba import cuda  # imported only on this path
    return cuda.as_cuda_array(t.detach().view(-1))


def _empty_device(dtype):  # pragma: no cover - needs a GPU
    d = _EMPTY_DEVICE.get(dtype)
    if d is None:
        from numba import cuda
        d = _EMPTY_DEVICE[dtype] = cuda.device_array(0, dtype=dtype)
    return d


class _Flat:
    """One (group, device, dtype) run of parameters re-homed into contiguous buffers."""

    def __init__(self, params):
        p0 = params[0]
        self.params = params
        self.device, self.dtype = p0.device, p0.dtype
        self.numels = [p.numel() for p in params]
        self.offsets = np.cumsum([0] + self.numels).tolist()
        n = self.offsets[-1]
        self.param = torch.empty(n, dtype=self.dtype, device=self.device)
        self.grad = torch.zeros(n, dtype=self.dtype, device=self.device)
        self.state = {}
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            self.param[a:b].copy_(p.detach().reshape(-1))
            if p.grad is not None and not p.grad.is_sparse and p.grad.shape == p.shape:
                self.grad[a:b].copy_(p.grad.detach().reshape(-1))
        self.grads = []
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            p.data = self.param[a:b].view_as(p)
        self.ptrs = [p.data_ptr() for p in params]
        self.attach_grads()

    def attach_grads(self):
        self.grads = [self.grad[a:b].view_as(p)
                      for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def intact(self):
        """Grads are still our views and params still live in the flat buffer."""
        for p, g, ptr in zip(self.params, self.grads, self.ptrs):
            if p.grad is not g or p.data_ptr() != ptr:
                return False
        return True

    def flat_state(self, name, init):
        buf = self.state.get(name)
        if buf is None:
            n = self.offsets[-1]
            buf = (torch.full((n,), init, dtype=self.dtype, device=self.device) if init
                   else torch.zeros(n, dtype=self.dtype, device=self.device))
            self.state[name] = buf
        return buf

    def state_view(self, i, name, init):
        return self.flat_state(name, init)[self.offsets[i]:self.offsets[i + 1]].view_as(
            self.params[i])


class _FusedOptimizer(_TorchOptimizer):
    """Shared machinery; subclasses set ``_np_cls`` (the NumPy-facing fastopt class whose
    ``_validate_group``, ``_state_spec`` and ``_scalars`` define the hyperparameters) and
    ``_family`` (the kernel name)."""

    _np_cls = None
    _family = ""
    _has_step = True        # per-param `step` tensor in the state (all but SGD)
    _eager_state = False    # Adagrad creates its state at construction, as torch does

    def __init__(self, params, defaults, *, backend=None, flatten=False):
        if backend is not None:
            get_backend(backend)  # unknown -> ValueError, unavailable -> RuntimeError
        self._requested_backend = backend
        self._flatten = bool(flatten)
        self._flats = []          # per group index: [_Flat, ...] (flatten mode)
        self._slot = {}           # id(param) -> (_Flat, index)
        self._backends = {}
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
        self._np_cls._validate_group(self, group)

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

    def add_param_group(self, param_group):
        n_before = len(self.param_groups)
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        gi = n_before
        try:
            self._check_group(group)
            for i, p in enumerate(group["params"]):
                label = _label(group, gi, i, p)
                _check_param(label, p)
                self._backend_for(label, p.device.type)
        except Exception:
            self.param_groups.pop()  # leave the optimizer as it was
            raise
        if self._flatten:
            self._flatten_group(gi, group)
        else:
            self._flats.append([])
        if self._eager_state:
            for p in group["params"]:
                self._ensure_state(p, group)

    @torch.no_grad()
    def _flatten_group(self, gi, group):
        buckets = {}
        for p in group["params"]:
            if p.requires_grad:  # frozen parameters stay where they are (and get no grad)
                buckets.setdefault((p.device, p.dtype), []).append(p)
        flats = []
        for params in buckets.values():
            flat = _Flat(params)
            for i, p in enumerate(params):
                self._slot[id(p)] = (flat, i)
            flats.append(flat)
        self._flats.append(flats)

    # -- state ----------------------------------------------------------------------------------
    def _state_spec(self, group):
        return self._np_cls._state_spec(self, group)

    def _new_buffer(self, p, name, init):
        slot = self._slot.get(id(p))
        if slot is not None:  # a view into the flat state buffer, (re)initialized
            return slot[0].state_view(slot[1], name, init).fill_(init)
        return (torch.full_like(p, init, memory_format=torch.contiguous_format) if init
                else torch.zeros_like(p, memory_format=torch.contiguous_format))

    def _ensure_state(self, p, group):
        """Create the state torch.optim would create on p's first step; return it."""
        spec = self._state_spec(group)
        if not self._has_step and not any(needed for _, needed, _ in spec):
            return self.state.get(p, {})  # SGD without momentum keeps no state (as torch)
        state = self.state[p]
        if self._has_step and "step" not in state:
            state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
        for name, needed, init in spec:
            if needed and state.get(name) is None:
                state[name] = self._new_buffer(p, name, float(init))
        return state

    def _count(self, p):
        """Steps p has taken (SGD: 1 once it has a momentum buffer)."""
        state = self.state.get(p)
        if not state:
            return 0
        if self._has_step:
            s = state.get("step")
            return 0 if s is None else (s.item() if isinstance(s, torch.Tensor) else float(s))
        return 0 if state.get("momentum_buffer") is None else 1

    def _t_key(self, group, t):
        """Steps that can share one kernel call have equal keys."""
        return t

    def _scalar_self(self, group):
        return self

    def _scalars(self, group, t, lr, np_dtype):
        return self._np_cls._scalars(self._scalar_self(group), group, t, lr, np_dtype)

    # -- the step ---------------------------------------------------------------------------------
    def _plan_group(self, gi, group):
        """-> [(flat or None, [(p, grad)], t)] ; validates, mutates nothing."""
        calls = []
        covered = set()
        for flat in (self._flats[gi] if gi < len(self._flats) else ()):
            if not flat.intact():
                continue
            counts = {self._count(p) for p in flat.params}
            if len({self._t_key(group, c + 1) for c in counts}) != 1:
                continue
            calls.append((flat, list(zip(flat.params, flat.grads)), max(counts) + 1))
            covered.update(id(p) for p in flat.params)
        for i, p in enumerate(group["params"]):
            if id(p) in covered or p.grad is None:
                continue
            label = _label(group, gi, i, p)
            _check_param(label, p)
            g = _check_grad(label, p, p.grad)
            calls.append((None, [(p, g)], self._count(p) + 1))
        return calls

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; returns ``closure()``'s loss (evaluated with grad
        enabled) or None."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        plans = [self._plan_group(gi, g) for gi, g in enumerate(self.param_groups)]
        for group, calls in zip(self.param_groups, plans):
            if calls:
                self._run_group(group, calls)
        return loss

    def _run_group(self, group, calls):
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        schedule = lr if callable(lr) else None
        if schedule is None:
            lr = _np.Optimizer._lr_at(lr, 1)  # validates: finite, >= 0
        scalars = {}
        kernel_args = []
        for flat, pairs, t in calls:
            p0 = pairs[0][0]
            np_dtype = _NP_DTYPE[p0.dtype]
            if schedule is not None:
                lr_t = _np.Optimizer._lr_at(schedule, int(t))
            else:
                lr_t = lr
            key = (t, np_dtype, lr_t)
            sc = scalars.get(key)
            if sc is None:
                sc = scalars[key] = self._scalars(group, t, lr_t, np_dtype)
            states = [self._ensure_state(p, group) for p, _ in pairs]
            names = [(name, needed) for name, needed, _ in self._state_spec(group)]
            if flat is not None:
                buffers = [flat.flat_state(name, 0.0) if needed else None
                           for name, needed in names]
                arrays = (flat.param, flat.grad, buffers)
            else:
                st = states[0]
                arrays = (pairs[0][0], pairs[0][1],
                          [st[name] if needed else None for name, needed in names])
            kernel_args.append((p0.device, np_dtype, arrays, sc, states))
        steps = []
        for device, np_dtype, (p, g, bufs), sc, states in kernel_args:
            self._launch(device, np_dtype, p, g, bufs, sc)
            if self._has_step:
                steps.extend(s["step"] for s in states)
        if steps:
            torch._foreach_add_(steps, 1.0)

    def _launch(self, device, np_dtype, p, g, bufs, sc):
        be = self._backend_for("parameter", device.type)
        kernel = getattr(be.kernels, self._family)
        if device.type == "cpu":
            empty = _EMPTY_HOST.get(np_dtype)
            if empty is None:
                empty = _EMPTY_HOST[np_dtype] = np.empty(0, dtype=np_dtype)
            view = self._host_view
            kernel(view(p), _host(g), *[empty if b is None else view(b) for b in bufs], sc)
            return
        # CUDA (never run on a GPU; see the module docstring)
        stream = torch.cuda.current_stream(device)
        foreign = stream.cuda_stream != 0
        if foreign:
            stream.synchronize()
        kernel(_device(p), _device(g),
               *[_empty_device(np_dtype) if b is None else _device(b) for b in bufs], sc)
        if foreign:
            from numba import cuda
            cuda.synchronize()

    def _host_view(self, t):
        """``_host(t)`` cached for long-lived tensors (parameters, flat buffers, state): reused
        while it is the same tensor over the same memory.  Gradients are not cached (a cached
        view would keep a discarded ``.grad`` alive)."""
        cache = self.__dict__.setdefault("_views", {})
        hit = cache.get(id(t))
        ptr = t.data_ptr()
        if hit is not None and hit[0] is t and hit[1] == ptr and hit[2].size == t.numel():
            return hit[2]
        a = _host(t)
        cache[id(t)] = (t, ptr, a)
        return a

    # -- zero_grad ----------------------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """As torch; in flatten mode the flat gradient buffers are zeroed and the ``.grad``
        views re-attached instead of setting them to None (see the module docstring)."""
        if not self._flatten:
            return super().zero_grad(set_to_none)
        with torch.no_grad():
            for flats in self._flats:
                for flat in flats:
                    flat.grad.zero_()
                    if any(p.grad is not g for p, g in zip(flat.params, flat.grads)):
                        flat.attach_grads()

    # -- state_dict -----------------------------------------------------------------------------
    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for k, v in self.defaults.items():
                group.setdefault(k, v)
            for p in group["params"]:
                st = self.state.get(p)
                if st and "step" in st and not isinstance(st["step"], torch.Tensor):
                    st["step"] = torch.tensor(float(st["step"]), dtype=_scalar_dtype())

    def _check_state_dict(self, state_dict):
        groups, saved = self.param_groups, state_dict["param_groups"]
        if len(groups) != len(saved) or any(
                len(a["params"]) != len(b["params"]) for a, b in zip(groups, saved)):
            return  # torch's load_state_dict raises its own ValueError
        saved_state = state_dict["state"]
        for gi, (group, sg) in enumerate(zip(groups, saved)):
            for i, (p, pid) in enumerate(zip(group["params"], sg["params"])):
                for name, v in saved_state.get(pid, {}).items():
                    if name != "step" and isinstance(v, torch.Tensor) and v.shape != p.shape:
                        raise ValueError(f"state_dict: state {name!r} of "
                                         f"{_label(group, gi, i, p)} has shape "
                                         f"{tuple(v.shape)}")

    @torch.no_grad()
    def load_state_dict(self, state_dict):
        """As torch (same layout), after checking state shapes; values are copied into this
        optimizer's own (contiguous; in flatten mode flat) buffers."""
        self._check_state_dict(state_dict)
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                for name, v in list(st.items()):
                    if name == "step":
                        if isinstance(v, torch.Tensor):
                            st[name] = v.detach().to("cpu", _scalar_dtype()).clone()
                        continue
                    if not isinstance(v, torch.Tensor):
                        continue
                    slot = self._slot.get(id(p))
                    if slot is not None:
                        buf = slot[0].state_view(slot[1], name, 0.0)
                        buf.copy_(v)
                    else:
                        buf = torch.empty_like(p, memory_format=torch.contiguous_format)
                        buf.copy_(v)
                    st[name] = buf


class SGD(_FusedOptimizer):
    r"""SGD with momentum, as ``torch.optim.SGD`` (see :class:`fastopt.SGD` for the rule).

    ``b = g`` (first step) or ``b = momentum*b + (1-dampening)*g``; ``d = g + momentum*b``
    (nesterov) or ``b``; ``p -= lr*d``, with ``g = -grad`` if maximize, ``+ weight_decay*p``.
    Extra keyword arguments: ``backend``, ``flatten`` (see :mod:`fastopt.torch`).
    """

    _np_cls = _np.SGD
    _family = "sgd"
    _has_step = False

    def __init__(self, params, lr=1e-3, momentum=0, dampening=0, weight_decay=0,
                 nesterov=False, *, maximize=False, foreach=None, differentiable=False,
                 fused=None, backend=None, flatten=False):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening,
                        weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                        foreach=foreach, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend=backend, flatten=flatten)

    def _t_key(self, group, t):
        return min(t, 2) if group["momentum"] != 0 else 0

    def _scalars(self, group, t, lr, np_dtype):
        return super()._scalars(group, min(t, 2), lr, np_dtype)


class Momentum(_FusedOptimizer):
    r"""The course's momentum (fastopt extra; no torch.optim equivalent).

    ``v = beta*v + (1-beta)*g``; ``p -= lr*v/(1-beta**t)`` with bias_correction, else ``lr*v``
    (``g = grad + weight_decay*p``).  State: ``velocity``, ``step``.
    """

    _np_cls = _np.Momentum
    _family = "momentum"

    def __init__(self, params, lr=1e-2, beta=0.9, bias_correction=False, weight_decay=0.0, *,
                 backend=None, flatten=False):
        defaults = dict(lr=lr, beta=beta, bias_correction=bias_correction,
                        weight_decay=weight_decay)
        super().__init__(params, defaults, backend=backend, flatten=flatten)

    def _t_key(self, group, t):
        return t if group["bias_correction"] else 0


class RMSprop(_FusedOptimizer):
    r"""RMSprop, as ``torch.optim.RMSprop`` (see :class:`fastopt.RMSprop` for the rule).

    ``s = alpha*s + (1-alpha)*g*g``; ``den = sqrt(s - a*a) + eps`` (centered, with
    ``a = alpha*a + (1-alpha)*g``) or ``sqrt(s) + eps``; with momentum ``b = momentum*b + g/den;
    p -= lr*b``, else ``p -= lr*g/den``.
    """

    _np_cls = _np.RMSprop
    _family = "rmsprop"

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0,
                 centered=False, capturable=False, foreach=None, maximize=False,
                 differentiable=False, *, backend=None, flatten=False):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, capturable=capturable,
                        foreach=foreach, maximize=maximize, differentiable=differentiable)
        super().__init__(params, defaults, backend=backend, flatten=flatten)

    def _t_key(self, group, t):
        return 0  # the update does not depend on the step count


class Adagrad(_FusedOptimizer):
    r"""Adagrad, as ``torch.optim.Adagrad`` (see :class:`fastopt.Adagrad` for the rule).

    ``clr = lr/(1+(t-1)*lr_decay)``; ``h += g*g``; ``p -= clr*g/(sqrt(h)+eps)``.  As torch, the
    state (``step``, ``sum`` = initial_accumulator_value) is created at construction.
    """

    _np_cls = _np.Adagrad
    _family = "adagrad"
    _eager_state = True

    def __init__(self, params, lr=1e-2, lr_decay=0, weight_decay=0,
                 initial_accumulator_value=0, eps=1e-10, foreach=None, *, maximize=False,
                 differentiable=False, fused=None, backend=None, flatten=False):
        defaults = dict(lr=lr, lr_decay=lr_decay, eps=eps, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, foreach=foreach,
                        maximize=maximize, differentiable=differentiable, fused=fused)
        super().__init__(params, defaults, backend=backend, flatten=flatten)

    def _t_key(self, group, t):
        return t if group["lr_decay"] else 0


class Adam(_FusedOptimizer):
    r"""Adam, as ``torch.optim.Adam`` (see :class:`fastopt.Adam` for the rule).

    ``m = b1*m + (1-b1)*g``; ``v = b2*v + (1-b2)*g*g`` (amsgrad: ``vmax = max(vmax, v)``, used
    for v); ``p -= (lr/bc1) * m / (sqrt(v)/sqrt(bc2) + eps)``, ``bc = 1 - beta**t`` with t the
    parameter's own step.  ``decoupled_weight_decay=True`` is AdamW.  Extra keyword arguments:
    ``bias_correction`` (False: both corrections 1), ``backend``, ``flatten``.
    """

    _np_cls = _np.Adam
    _family = "adam"

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0,
                 amsgrad=False, *, foreach=None, maximize=False, capturable=False,
                 differentiable=False, fused=None, decoupled_weight_decay=False,
                 bias_correction=True, backend=None, flatten=False):
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        amsgrad=amsgrad, maximize=maximize, foreach=foreach,
                        capturable=capturable, differentiable=differentiable, fused=fused,
                        decoupled_weight_decay=decoupled_weight_decay,
                        bias_correction=bias_correction)
        super().__init__(params, defaults, backend=backend, flatten=flatten)

    def _scalar_self(self, group):
        # fastopt.Adam._scalars reads the decoupling from the instance; torch keeps it per group
        return types.SimpleNamespace(_decoupled=bool(group.get("decoupled_weight_decay")))

    def _t_key(self, group, t):
        return t if group["bias_correction"] else 0


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: ``p *= 1 - lr*weight_decay``, then the :class:`Adam`
    update without the L2 term, in the same single pass.  Default ``weight_decay=1e-2``."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False, foreach=None, capturable=False,
                 differentiable=False, fused=None, bias_correction=True, backend=None,
                 flatten=False):
        super().__init__(params, lr, betas, eps, weight_decay, amsgrad, foreach=foreach,
                         maximize=maximize, capturable=capturable,
                         differentiable=differentiable, fused=fused,
                         decoupled_weight_decay=True, bias_correction=bias_correction,
                         backend=backend, flatten=flatten)

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True

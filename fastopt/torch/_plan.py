"""The step's fast path: one param group's checked layout, kept from one step to the next.

A generic step (:meth:`FusedOptimizer._plan_group` then ``_run_group``) checks every tensor,
groups them by (device, dtype, step scalars), builds the state and binds the kernel calls.  On
a small model that Python costs several times the kernels.  After such a step,
:meth:`GroupPlan.build` keeps what it found for the group: the parameters, their gradients
(weak references), each parameter's state dict and state tensors, the bound calls (and how
to rebind them), the compile-time flags and the step counters.  The next step's
:meth:`GroupPlan.ready` re-checks all of it against the live objects -- cheaply, in C-level
loops -- and the step then costs one scalar computation per group, one call per bucket and the
``step`` increments.  Anything that does not match sends the group back through the generic
path (which raises the errors, before anything is changed) and a new plan is built after it:

* ``group["params"]`` edited, ``param_groups`` or ``state`` replaced (``load_state_dict``);
* a compile-time flag changed (``amsgrad``, ``maximize``, ``nesterov``, ...); learning rate,
  betas, weight decay and the like are read from the group every step;
* a parameter's ``.data`` or a gradient changed dtype, shape or contiguity; a gradient set to
  None (or a frozen one given a gradient); a state tensor or a parameter's state dict replaced,
  or a state tensor moved; the parameters' ``step`` counts no longer all equal.

A new gradient object (``zero_grad()`` then ``backward()`` makes one each step) passes the
same checks as in the generic path (:func:`fastopt.torch._tensors.fast_ok`) and, where its
address (or a parameter's, after ``p.data = ...``) changed, the calls are rebound to the new
addresses when every kernel row is one tensor (the default layout); runs joined across tensors
(``flatten=True``) take the generic path then, which rejoins them.

The plan holds the parameters, their state tensors and ``step`` tensors (all of which the
optimizer holds anyway) and weak references to the gradients, so a gradient dropped by
``zero_grad()`` is freed.  ``step`` is incremented in place through its address (ctypes), as
``torch._foreach_add_(steps, 1)`` would (the same float32/float64 rounding), at a fraction of
that call's cost; the address is checked every step and the tensor is held, so the write is
always into its live memory.

Plans are made only for CPU tensors stepped by a backend that binds raw addresses (Cython);
DTensors, non-contiguous parameters, CUDA tensors, other backends and groups whose parameters
disagree on their step count always take the generic path.
"""
from __future__ import annotations

import ctypes
import weakref
from itertools import repeat
from operator import attrgetter, is_

import torch

from .. import _checks
from . import _tensors as T

__all__ = ["GroupPlan"]

_GRAD = attrgetter("grad")
_DTYPE = attrgetter("dtype")
_SHAPE = attrgetter("shape")
_PTR = torch.Tensor.data_ptr
_CONTIG = torch.Tensor.is_contiguous
_IS_CPU = attrgetter("is_cpu")
_STRIDED = torch.strided
_DICT_GET = dict.get
#: ctypes scalar of a ``step`` tensor's dtype
_CSCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}


class _Bucket:
    """One bound kernel call of the group: its parameters ``P[a:b]`` of the plan."""

    __slots__ = ("a", "b", "kernel", "call", "singles", "bases", "keys", "cols", "saddr", "n",
                 "ckey")


class GroupPlan:
    """A param group's checked layout and bound calls (see the module docs)."""

    __slots__ = ("group", "state", "params", "live", "dead", "P", "grefs", "pdtypes",
                 "gdtypes", "shapes", "pptrs", "gptrs", "sts", "stensors", "sptrs", "steps",
                 "csteps", "flags", "t_const", "buckets", "backend", "_sc", "_r", "_s", "_lr")

    @classmethod
    def build(cls, opt, gi, group, built):
        """The plan of group ``gi`` right after a generic step of it (``built``: what
        ``_run_group`` returned), or None where the group does not qualify."""
        spec = opt.spec
        if opt._odd or not built or len({b[4] for b in built}) != 1 or spec.apply_rule:
            # (LAMB's second pass takes per-tensor scalars from the first: the generic path)
            return None
        be = opt._backends.get("cpu")
        if be is None or not hasattr(be, "bind_addresses"):
            return None
        params = tuple(group["params"])
        pos = {id(p): i for i, p in enumerate(params)}
        live = [pos.get(id(p), -1) for b in built for p in b[2]]
        grads = [p.grad for p in params]
        if sorted(live) != [i for i, g in enumerate(grads) if g is not None]:
            return None     # pragma: no cover - the buckets are the params with a gradient
        if not all(g is grads[i] for g, i in zip((g for b in built for g in b[5]), live)):
            return None     # a gradient the kernel read through a contiguous copy
        self = cls()
        self.group, self.state, self.params, self.backend = group, opt.state, params, be
        self.dead = [i for i, g in enumerate(grads) if g is None]
        # None: every parameter, in order (the gradients list is the kernel's as it is)
        self.live = None if live == list(range(len(params))) else live
        P = self.P = [params[i] for i in live]
        G = [grads[i] for i in live]
        self.grefs = [weakref.ref(g) for g in G]
        self.pdtypes = list(map(_DTYPE, P))
        self.gdtypes = list(map(_DTYPE, G))
        self.shapes = list(map(_SHAPE, P))
        self.pptrs = list(map(_PTR, P))
        self.gptrs = list(map(_PTR, G))
        sts = self.sts = [opt.state.get(p) for p in P]
        if any(st is not None and type(st) is not dict for st in sts):
            return None
        self.buckets, self.stensors = [], []
        a = 0
        for ckey, kernel, owners, col_keys, _, _ in built:
            entry = opt._calls.get(ckey)
            if ckey[1].type != "cpu" or entry is None:
                return None
            bk = _Bucket()
            bk.a, bk.b = a, a + len(owners)
            a = bk.b
            bk.kernel, bk.call, bk.ckey = kernel, entry[1], ckey
            runs, bk.bases = entry[2], entry[3]
            bk.singles = all(len(r) == 1 for r in runs)
            bk.keys = [k for k in col_keys if k is not None]
            if bk.keys and any(st is None for st in sts[bk.a:bk.b]):
                return None     # pragma: no cover - the step made the state
            bk.cols = [[st[k] for st in sts[bk.a:bk.b]] for k in bk.keys]
            bk.saddr = [[0 if k is None else st[k].data_ptr() for k in col_keys]
                        for st in sts[bk.a:bk.b]]
            bk.n = [p.numel() for p in P[bk.a:bk.b]]
            for col in bk.cols:
                self.stensors += col
            self.buckets.append(bk)
        self.steps, self.csteps = [], []
        if opt._needs_step:
            steps = [None if st is None else st.get("step") for st in sts]
            if not all(type(s) is torch.Tensor and s.is_cpu and s.dtype in _CSCALAR
                       and s.layout is torch.strided and s.numel() == 1 for s in steps) \
                    or len({id(s) for s in steps}) != len(steps):
                return None     # a step tensor of its own, on the CPU, for every parameter
            self.steps = steps
            self.csteps = [_CSCALAR[s.dtype].from_address(s.data_ptr()) for s in steps]
            if len({c.value for c in self.csteps}) != 1:
                return None     # pragma: no cover - one bucket step: one count
            self.stensors += steps
        self.sptrs = list(map(_PTR, self.stensors))
        self.t_const = None
        if not spec.torch_step and not spec.group_step:   # SGD: 2 once it has momentum
            counts = {opt._count(p) + 1 for p in P}
            if len(counts) != 1:
                return None     # pragma: no cover - the step gave every one its buffer
            (self.t_const,) = counts
        self.flags = spec.flags(group)
        return self

    def ready(self, opt, group):
        """True when nothing the plan relies on changed (then :meth:`run` steps the group);
        checks, rebinds calls to new gradient/parameter addresses, changes no tensor."""
        spec = opt.spec
        if opt.state is not self.state:
            return False
        params = group["params"]
        if len(params) != len(self.params) or not all(map(is_, params, self.params)):
            opt._params_edited()
            return False
        if spec.flags(group) != self.flags:
            return False
        grads = list(map(_GRAD, params))
        if self.dead:
            if any(grads[i] is not None for i in self.dead):
                return False
        P = self.P
        G = grads if self.live is None else [grads[i] for i in self.live]
        refs = self.grefs
        if any(map(is_, G, repeat(None))):
            return False
        known = [w() for w in refs]
        fresh = not all(map(is_, known, G))
        if fresh:    # new gradient objects: plain dense tensors?
            for k, g in enumerate(G):
                if known[k] is not g:
                    if type(g) not in T._PLAIN or g.layout is not _STRIDED:
                        return False
                    refs[k] = weakref.ref(g)
        # the rest of fast_ok's checks, on every tensor (a .data assignment changes the
        # dtype, shape or contiguity of the same object): the bound dtypes and shapes (a
        # gradient has its parameter's), contiguous; on the CPU below
        if (list(map(_DTYPE, P)) != self.pdtypes or list(map(_DTYPE, G)) != self.gdtypes
                or list(map(_SHAPE, P)) != self.shapes or list(map(_SHAPE, G)) != self.shapes
                or not all(map(_CONTIG, P)) or not all(map(_CONTIG, G))):
            return False
        sts = list(map(opt.state.get, P))
        if not all(map(is_, sts, self.sts)):
            return False
        for bk in self.buckets:
            sub = sts[bk.a:bk.b]
            for key, col in zip(bk.keys, bk.cols):
                if not all(map(is_, map(_DICT_GET, sub, repeat(key)), col)):
                    return False
        if self.steps and not all(map(is_, map(_DICT_GET, sts, repeat("step")), self.steps)):
            return False
        if list(map(_PTR, self.stensors)) != self.sptrs:   # the same tensors, not moved
            return False
        if self.csteps:   # address checked above and the tensor held: its live memory
            vals = [c.value for c in self.csteps]
            s = vals[0]
            if vals.count(s) != len(vals):
                return False
        else:
            s = None
        pp = list(map(_PTR, P))
        gp = list(map(_PTR, G))
        moved = pp != self.pptrs or gp != self.gptrs
        if (fresh or moved) and not (all(map(_IS_CPU, P)) and all(map(_IS_CPU, G))):
            return False      # (the same objects at the same addresses: the same device)
        if moved:   # rows joined across tensors are rejoined by the generic path
            if not all(bk.singles for bk in self.buckets):
                return False
            self._rebind(opt, pp, gp)
        lr = group["lr"]
        if isinstance(lr, torch.Tensor):
            lr = lr.item()
        if not callable(lr):
            _checks.lr("lr", lr)
        if spec.group_step:
            t = r = group[spec.group_step] + 1
        else:
            t = int(s) + 1 if spec.torch_step else self.t_const
            r = t if spec.torch_step else (int(s) + 1 if s is not None else 1)
        sc = spec.scalars(group, t, _checks.lr_value(lr, t))
        if opt._clip != 1.0:
            sc = spec.scale_grad(sc, opt._clip)
        self._sc, self._r, self._s = sc, r, s
        self._lr = lr
        return True

    def _rebind(self, opt, pp, gp):
        """Every row one tensor: the same rows, bases and state addresses, the new parameter
        and gradient addresses (their dtypes, shapes and contiguity are the bound ones),
        written into the bound calls' tables in place (rows of empty tensors are not in
        them; the generic path's cache of the call is dropped)."""
        for bk in self.buckets:
            # the generic path's cache holds the same call under the old tensors' identities
            # and addresses: no longer what its table says
            opt._calls.pop(bk.ckey, None)
            kept = [k for j, k in enumerate(range(bk.a, bk.b)) if bk.n[j]]
            if kept:
                self.backend.rebind_columns(bk.kernel, bk.call, {
                    0: [pp[k] for k in kept], 1: [gp[k] for k in kept]})
        self.pptrs, self.gptrs = pp, gp

    def run(self, opt, group):
        """The step :meth:`ready` prepared: each call, then the 0-d state."""
        sc, r = self._sc, self._r
        for bk in self.buckets:
            bk.call(sc, r)
        spec = opt.spec
        if spec.torch_scalar_state:     # NAdam's mu_product, ASGD's eta, mu
            lr = _checks.lr_value(self._lr, r)
            for name, value in spec.torch_scalar_state.items():
                v = value(group, r, lr)
                for st in self.sts:
                    st[name].fill_(v)
        if self.csteps:   # torch._foreach_add_(steps, 1.0): the same rounding
            v = self._s + 1.0
            for c in self.csteps:
                c.value = v

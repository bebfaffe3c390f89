"""The optimizer machinery shared by every family: param groups, state, dispatch.

Data flows one way.  At construction the parameters are validated once, a backend is resolved,
and each param group is cut into *segments*: runs of consecutive parameters of one dtype laid
end to end in one allocation (an :class:`fastopt.Arena`'s views, or any such layout; found by
:func:`fastopt._layout.runs`), else one parameter each.  State buffers are allocated once per
segment, contiguous, and every parameter's state is a view into them.

``step(grads)`` resolves the gradients into a *plan* (cached while the same gradient arrays are
passed again): per (group, dtype) one bound kernel call over rows of buffers (one row per
segment whose gradients lie like its parameters, else one per parameter).  It then computes
every group's scalars from its spec, checks finiteness if asked, and only then runs the calls:
a rejected step mutates nothing.

An optimizer class never contains math: the spec (:mod:`fastopt.specs`) gives validation,
state, scalars and flags; the backend's compiled rule does the arithmetic.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Mapping

import numpy as np

from .. import _checks, kernels as _kernels
from ..kernels import formats as F
from ._params import Group, grad_label, grads_list, label, parse_params

__all__ = ["Optimizer"]

_NONFINITE = ("propagate", "skip", "raise")


def check_max_grad_norm(name, value):
    """None, or a finite number > 0."""
    if value is None:
        return None
    _checks.nonneg(name, value)
    if value == 0:
        raise ValueError(f"Invalid {name}: 0 (must be > 0, or None for no clipping)")
    return float(value)


class _Segment:
    """A run of consecutive same-dtype parameters of one group, stepped as one buffer."""

    __slots__ = ("indices", "param", "state", "absmax", "dtype", "size", "fmt", "state_fmt",
                 "compute")

    def __init__(self, indices, param, dtype, state_fmt):
        self.indices = indices      # global parameter indices, in order
        self.param = param          # 1-D view over the whole run
        self.state = {}             # state name -> 1-D buffer over the whole run
        self.absmax = {}            # state name -> absmax per block (8-bit state)
        self.dtype = dtype
        self.size = param.size
        self.fmt = F.tag(dtype)     # the parameters' storage format
        self.state_fmt = state_fmt  # state name -> its storage format
        self.compute = F.compute_dtype(self.fmt)


class _Plan:
    """The bound kernel calls of one step, for one set of gradient arrays."""

    __slots__ = ("glist", "keys", "values", "calls", "check", "apply")

    def __init__(self, grads, glist, calls, check, apply=None):
        self.glist = glist      # the gradient objects, in parameter order
        # a dict of gradients: its keys and values in its own order, for a cheap identity check
        self.keys = tuple(grads) if isinstance(grads, Mapping) else None
        self.values = list(grads.values()) if self.keys is not None else None
        self.calls = calls      # [(group index, bound call)]
        self.check = check      # 1-D gradient views, for the non-finite check
        self.apply = apply      # per call, the second pass's bound call of each row (LAMB)

    def same(self, grads):
        """True when ``grads`` holds exactly the gradient objects this plan was built for."""
        if self.keys is not None:
            return (type(grads) is dict and tuple(grads) == self.keys
                    and all(map(operator.is_, self.values, grads.values())))
        return (type(grads) in (list, tuple) and len(grads) == len(self.glist)
                and all(map(operator.is_, self.glist, grads)))


class Optimizer:
    """Base class of every fastopt optimizer; each family's class is made from its spec
    (:mod:`fastopt.specs`) by :mod:`fastopt.optimizers`.

    Parameters
    ----------
    params : dict, sequence of arrays, or sequence of param-group dicts
        ``{name: array}``, ``[array, ...]`` or ``[{"params": [...], "lr": ...}, ...]``.  The
        arrays themselves are updated in place; the optimizer never copies or re-homes them.
    hyper : dict
        The family's hyperparameters; a group's own entries override them.
    backend : {None, "cython", "numba", "numpy", "cuda"}
        ``None`` picks ``"cuda"`` for GPU arrays, else the first available of cython (the
        compiled extension), numba, numpy.  A named backend that is not available raises
        ``RuntimeError``; it never falls back.
    nonfinite : {"propagate", "skip", "raise"}
        What a step does with NaN/Inf gradients: let them through (as torch), skip the step
        (counted in :attr:`skipped_steps`) or raise ``FloatingPointError``.  With "skip" and
        "raise" nothing is changed by such a step.
    state_dtype : {None, "float32", "bfloat16", "int8"}
        How the state buffers are stored: ``None`` in the parameter's dtype (as torch.optim),
        else in float32 or bfloat16 whatever the parameters' dtype, or ``"int8"``:
        bitsandbytes' block-wise 8-bit format (per block of 256 elements one float32 absmax,
        each element the nearest code of value / absmax in the signed dynamic map, or the
        unsigned one for state that is never negative; a parameter under ``min_8bit_size``
        elements keeps float32 state).  The arithmetic runs in float32 (float64 for float64
        parameters); values are decoded and encoded inside the fused pass (no converted
        copies).
    rounding : {"nearest", "stochastic"}
        How every write into 16-bit storage (bfloat16/float16 parameters and state) rounds:
        to nearest (half to even), or stochastically (unbiased: updates below half a unit in
        the last place are not lost), with bits from a counter-based hash of ``(seed, step,
        element)`` -- the same on every backend, thread count and after a resume.
    seed : int
        The seed of stochastic rounding (an integer in ``[0, 2**32)``).
    min_8bit_size : int
        With ``state_dtype="int8"``: parameters with fewer elements keep float32 state (4096,
        as bitsandbytes).
    max_grad_norm : float or None
        Clip the global L2 norm of all the step's gradients to this value, as
        ``torch.nn.utils.clip_grad_norm_`` before the step: the norm is one read of the
        gradients, and the factor ``min(1, max_grad_norm/(norm + 1e-6))`` is applied inside the
        fused update (the gradients are never written).  The norm is kept in
        :attr:`last_grad_norm`.  A non-finite norm follows ``nonfinite`` (with "propagate" the
        factor is torch's: NaN for a NaN norm, 0 for an infinite one).
    """

    #: the family's spec (set on each generated class)
    spec = None

    def __init__(self, params, hyper, *, backend=None, nonfinite="propagate", state_dtype=None,
                 rounding="nearest", seed=0, min_8bit_size=4096, max_grad_norm=None):
        self._max_grad_norm = check_max_grad_norm("max_grad_norm", max_grad_norm)
        self.last_grad_norm = None
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        self._state_dtype = F.check_state_dtype("state_dtype", state_dtype)
        self._rounding = F.check_rounding("rounding", rounding)
        self._seed = F.check_seed("seed", seed)
        self._min_8bit_size = F.check_min_8bit_size("min_8bit_size", min_8bit_size)
        if self._state_dtype == "int8" and not self.spec.state:
            raise ValueError(f"state_dtype='int8': {type(self).__name__} keeps no state")
        if self._state_dtype == "int8" and self.spec.from_param:
            raise ValueError(f"state_dtype='int8': {type(self).__name__}'s "
                             f"{', '.join(self.spec.from_param)} is a copy of the parameters "
                             f"(use 'bfloat16' or 'float32')")
        if backend is not None and backend not in _kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(repr(b) for b in _kernels.BACKENDS)} or None")
        spec = self.spec
        groups, names, arrays = parse_params(params)
        self.defaults = spec.defaults() | dict(hyper)
        spec.validate(self.defaults)
        self._backend = _kernels.resolve_backend(arrays, backend)
        be = self._backend
        self._params = [be.check_param(label(n), a) for n, a in zip(names, arrays)]
        self._names = names
        self._named = all(isinstance(n, str) for n in names) and bool(names)
        self._index = {n: i for i, n in enumerate(names)}
        self._check_aliasing()
        # each parameter's first element among all parameters of its dtype (the element index
        # of stochastic rounding's bits: the same for an Arena and for separate arrays)
        self._offsets, seen = [], {}
        for p in self._params:
            self._offsets.append(seen.get(p.dtype, 0))
            seen[p.dtype] = self._offsets[-1] + p.size

        self.param_groups = []
        for g in groups:
            group = Group(self.defaults)
            group.update({k: v for k, v in g.items() if k != "params"})
            unknown = set(group) - set(self.defaults)
            if unknown:
                raise ValueError(f"param group has unknown keys {sorted(unknown)}; "
                                 f"{type(self).__name__} takes {sorted(self.defaults)}")
            spec.validate(group)
            group["params"] = g["params"]  # global indices
            self.param_groups.append(group)

        if self._state_dtype == "int8" and not any(
                any(self.spec.needed(g).values()) for g in self.param_groups):
            raise ValueError(f"state_dtype='int8': {type(self).__name__} with these options "
                             f"keeps no state (e.g. SGD without momentum)")
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self._steps = [0] * len(self.param_groups)
        self._flags = [spec.flags(g) for g in self.param_groups]
        self._segments = [self._make_segments(g) for g in self.param_groups]
        self._plan = None
        for g in self.param_groups:
            g.dirty = False

    # -- construction ------------------------------------------------------------------------
    def _check_aliasing(self):
        be = self._backend
        ranges = sorted((be.address(p), p.nbytes, i) for i, p in enumerate(self._params)
                        if p.nbytes)
        for (a0, an, i), (b0, _bn, j) in zip(ranges, ranges[1:]):
            if b0 < a0 + an:
                raise ValueError(f"{label(self._names[j])} shares memory with "
                                 f"{label(self._names[i])}: the same array given twice")

    def _state_formats(self, dtype, size):
        """``{state name: format}`` of a segment of ``size`` elements of ``dtype``."""
        pfmt = F.tag(dtype)
        if self._state_dtype != "int8":
            fmt = F.state_format(self._state_dtype, pfmt)
            return {name: fmt for name in self.spec.state_names}
        if size < self._min_8bit_size:
            return {name: F.F32 for name in self.spec.state_names}
        return {name: F.Q8U if name in self.spec.nonneg else F.Q8S
                for name in self.spec.state_names}

    def _make_segments(self, group):
        """Per dtype (in order of first appearance), maximal runs of the group's parameters
        laid end to end in one allocation.  With 8-bit state a parameter of at least
        ``min_8bit_size`` elements is a segment of its own (its blocks start at its first
        element, as bitsandbytes')."""
        be = self._backend
        buckets = {}
        for i in group["params"]:
            buckets.setdefault(self._params[i].dtype, []).append(i)
        segments = []
        for dtype, idx in buckets.items():
            arrays = [self._params[i] for i in idx]
            for run in be.runs(arrays):
                parts = [run]
                if self.spec.apply_rule:    # per-tensor sums (LAMB): one parameter per row
                    parts = [[k] for k in run]
                elif self._state_dtype == "int8":
                    parts, small = [], []
                    for k in run:
                        if arrays[k].size >= self._min_8bit_size:
                            parts += [small, [k]] if small else [[k]]
                            small = []
                        else:
                            small.append(k)
                    parts += [small] if small else []
                for part in parts:
                    members = [idx[k] for k in part]
                    view = be.join([arrays[k] for k in part]) if len(part) > 1 \
                        else be.flat(arrays[part[0]])
                    segments.append(_Segment(members, view, dtype,
                                             self._state_formats(dtype, view.size)))
        for seg in segments:
            self._alloc_state(seg, group)
        return segments

    def _alloc_state(self, seg, group):
        """(Re)allocate the segment's state buffers the group's options need (a needed buffer
        is allocated once; an unneeded one is a zero-length array).  8-bit state starts as its
        initial value quantized (codes and absmax)."""
        be = self._backend
        for name, needed in self.spec.needed(group).items():
            n = seg.size if needed else 0
            buf = seg.state.get(name)
            if buf is not None and buf.size == n:
                continue
            init = self.spec.initial(name, group)
            fmt = seg.state_fmt[name]
            dtype = F.storage_dtype(fmt)
            if fmt in F.QUANTIZED:
                codes, absmax = F.quantize(fmt, np.full(n, init, np.float32))
                seg.state[name] = be.zeros(n, dtype)
                seg.absmax[name] = be.zeros(F.nblocks(n), np.float32)
                be.copy_from_numpy(seg.state[name], codes)
                be.copy_from_numpy(seg.absmax[name], absmax)
                continue
            seg.state[name] = be.full(n, dtype, init) if init else be.zeros(n, dtype)

    # -- properties ----------------------------------------------------------------------------
    @property
    def nonfinite(self):
        """``"propagate"``, ``"skip"`` or ``"raise"`` (see the class docs); settable."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value):
        if value not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {value!r}")
        self._nonfinite = value
        self._check_finite = value != "propagate"

    @property
    def max_grad_norm(self):
        """The clipping threshold (None: no clipping); settable."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value):
        self._max_grad_norm = check_max_grad_norm("max_grad_norm", value)

    @property
    def backend(self):
        """Name of the backend in use."""
        return self._backend.name

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

    @property
    def params(self):
        """The parameter arrays, in global order (the arrays given, not copies)."""
        return list(self._params)

    @property
    def lr(self):
        """Learning rate (float or schedule) of the first param group; setting it sets every
        group's."""
        return self.param_groups[0]["lr"]

    @lr.setter
    def lr(self, value):
        _checks.lr("lr", value)
        for g in self.param_groups:
            g["lr"] = value

    @property
    def kernel_rows(self):
        """Buffer lengths each bound kernel call of the last step walks, per call (None before
        the first step): ``[[n]]`` when one buffer covers the whole model (an Arena)."""
        return None if self._plan is None else [list(call.rows) for _, call in self._plan.calls]

    @property
    def step_count(self):
        """Steps taken so far (of the first group)."""
        return self._steps[0]

    @property
    def state(self):
        """``{param index or name: {state name: view}}``; views into the live state buffers.
        8-bit state: ``name`` holds the uint8 codes and ``name + "_absmax"`` the float32 absmax
        of each block of 256 (bitsandbytes' layout; the map is fixed by the sign of the state,
        :func:`fastopt.kernels.formats.qmap`)."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            used = [name for name, needed in self.spec.needed(group).items() if needed]
            for seg in self._segments[gi]:
                off = 0
                for i in seg.indices:
                    p = self._params[i]
                    entry = {"step": self._steps[gi]}
                    for name in used:
                        entry[name] = seg.state[name][off:off + p.size].reshape(p.shape)
                        if name in seg.absmax:    # a segment of one parameter
                            entry[name + "_absmax"] = seg.absmax[name]
                    out[self._names[i]] = entry
                    off += p.size
        return out

    # -- the step ------------------------------------------------------------------------------
    def _resolve(self, grads):
        """The plan for these gradients: cached while the same gradient arrays come back (an
        array's memory cannot move, so validation and layout stand)."""
        plan = self._plan
        if plan is not None and plan.same(grads):
            return plan
        glist = grads_list(grads, self._names, self._index, self._named)
        if plan is not None and all(map(operator.is_, plan.glist, glist)):
            self._plan = plan = _Plan(grads, glist, plan.calls, plan.check, plan.apply)
            return plan
        be = self._backend
        checked = [be.check_grad(grad_label(name), g, p)
                   for name, g, p in zip(self._names, glist, self._params)]
        self._plan = plan = self._build_plan(grads, glist, checked)
        return plan

    def _rows(self, seg, checked, needed):
        """Kernel rows of a segment as ``(row, base)``: one when its gradients lie like its
        parameters (an Arena), else one per parameter; ``base`` is the row's first element
        among the parameters of its dtype."""
        be = self._backend
        state = [seg.state[n] if need else None for n, need in needed.items()]
        state += [seg.absmax[n] for n, need in needed.items() if need and n in seg.absmax]
        first = self._offsets[seg.indices[0]]
        if len(seg.indices) == 1:
            return [((seg.param, be.flat(checked[seg.indices[0]]), *state), first)]
        garr = [checked[i] for i in seg.indices]
        gview = be.span(garr)
        if gview is not None:
            return [((seg.param, gview, *state), first)]
        rows, off = [], 0
        for i, g in zip(seg.indices, garr):
            end = off + self._params[i].size
            rows.append(((seg.param[off:end], be.flat(g),
                          *[None if st is None else st[off:end] for st in state]),
                         self._offsets[i]))
            off = end
        return rows

    def _build_plan(self, grads, glist, checked):
        """One bound call per (group, parameter dtype, gradient dtype, state format)."""
        be, rule = self._backend, self.spec.rule
        calls, check, apply = [], [], []
        for gi, segs in enumerate(self._segments):
            needed = self.spec.needed(self.param_groups[gi])
            used = tuple(needed.values())
            by_layout = {}
            for seg in segs:
                for row, base in self._rows(seg, checked, needed):
                    formats = (seg.fmt, F.tag(row[1].dtype),
                               *[seg.state_fmt[n] if u else None for n, u in needed.items()])
                    by_layout.setdefault((seg.compute, formats), []).append((row, base))
            for (compute, formats), rows in by_layout.items():
                first, second, q8 = self._passes(formats)
                kernel = be.kernel(first, compute, self._flags[gi], formats, self._rounding)
                calls.append((gi, be.bind(kernel, [r for r, _ in rows],
                                          bases=[b for _, b in rows], seed=self._seed)))
                check.extend(r[1] for r, _ in rows if r[1].size)
                if second:     # the second pass: one call per row (its scalars)
                    if q8:     # (8-bit state: over the same arrays, writing the state)
                        k2 = be.kernel(second, compute, self._flags[gi], formats,
                                       self._rounding)
                        apply.append([(True, be.bind(k2, [r], bases=[b], seed=self._seed))
                                      for r, b in rows])
                        continue
                    k2 = be.kernel(second, compute, self._flags[gi],
                                   (formats[0], *formats[2:]), self._rounding)
                    apply.append([(False, be.bind(k2, [(r[0], *r[2:])], bases=[b],
                                                  seed=self._seed)) for r, b in rows])
        return _Plan(grads, glist, calls, check, apply if self.spec.apply_rule else None)

    def _passes(self, formats):
        """``(first rule, second rule or "", 8-bit?)`` of a kernel call whose arrays have
        ``formats``: a two-pass spec with 8-bit state takes its ``q8_rules``."""
        spec = self.spec
        q8 = bool(spec.q8_rules) and any(f in F.QUANTIZED for f in formats)
        if q8:
            return (*spec.q8_rules, True)
        return spec.rule, spec.apply_rule, False

    def _revalidate(self, gi, group):
        """A group was changed since the last step: check it, (re)allocate state it now needs."""
        self.spec.validate(group)
        self._flags[gi] = self.spec.flags(group)
        for seg in self._segments[gi]:
            self._alloc_state(seg, group)
        self._plan = None   # flags or state buffers may be new: rebind
        group.dirty = False

    def step(self, grads):
        """Apply one update to every parameter, in place.

        Parameters
        ----------
        grads : dict or sequence of arrays
            One gradient per parameter: a dict with the parameters' names, or a sequence in the
            parameters' order (all groups, in order).  Same shape and dtype as the parameter.

        Returns
        -------
        bool
            True when the step was applied, False when it was skipped (``nonfinite="skip"``).
        """
        groups = self.param_groups
        for gi, group in enumerate(groups):
            if group.dirty:
                self._revalidate(gi, group)
        if self.spec.switch and not all(g["train_mode"] for g in groups):
            raise RuntimeError(f"{type(self).__name__}: call train() before step() (and eval() "
                               f"before evaluating or saving); nothing was changed")
        plan = self._plan
        if plan is None or not plan.same(grads):
            plan = self._resolve(grads)
        # Everything that can fail, before anything is mutated.
        steps = self._steps
        scalars = self.spec.scalars
        if len(groups) == 1:     # the common case, without the loops
            t = steps[0] + 1
            lr = groups[0]["lr"]
            sc = (scalars(groups[0], t, _checks.lr_value(lr, t) if callable(lr) else lr),)
            ts = (t,)
        else:
            sc, ts = [], []
            for gi, group in enumerate(groups):
                t = steps[gi] + 1
                lr = group["lr"]
                sc.append(scalars(group, t, _checks.lr_value(lr, t) if callable(lr) else lr))
                ts.append(t)
        if self._max_grad_norm is not None:
            # one read of the gradients; the norm is finite exactly when every gradient is
            # (unless the sum of squares overflows, which is skipped/raised the same way)
            norm = math.sqrt(sum(map(self._backend.sumsq, plan.check)))
            if self._check_finite and not math.isfinite(norm):
                if self.nonfinite == "raise":
                    raise FloatingPointError(f"non-finite gradient norm ({norm}); nothing was "
                                             f"changed")
                self.skipped_steps += 1
                self.last_grad_norm = norm
                return False
            factor = F.clip_coefficient(norm, self._max_grad_norm)
            self.last_grad_norm = norm
            if factor != 1.0:
                scale = self.spec.scale_grad
                sc = [scale(s, factor) for s in sc]
        elif self._check_finite:
            all_finite = self._backend.all_finite
            if not all(map(all_finite, plan.check)):
                if self.nonfinite == "raise":
                    raise FloatingPointError("non-finite gradient (NaN or Inf); nothing was "
                                             "changed")
                self.skipped_steps += 1
                return False
        spec = self.spec
        if spec.from_param:       # Schedule-Free's z: the parameter itself at the first step
            for gi, segs in enumerate(self._segments):
                if steps[gi] == 0:
                    for seg in segs:
                        for name in spec.from_param:
                            self._copy_param_into(seg, name)
        self._run_kernels(plan, sc, ts)
        for gi in range(len(steps)):
            steps[gi] += 1
        if spec.after_step is not None:   # running values kept in the group (not "dirty")
            for gi, group in enumerate(groups):
                lr = group["lr"]
                spec.advance(group, ts[gi], _checks.lr_value(lr, ts[gi]) if callable(lr) else lr)
        return True

    def _run_kernels(self, plan, sc, ts):
        """The kernels of a step whose checks passed: one bound call per (group, dtype, state
        format); the step count feeds stochastic rounding's bits."""
        groups, spec = self.param_groups, self.spec
        if plan.apply is None:
            for gi, call in plan.calls:
                call(sc[gi], ts[gi])
        else:   # two passes per tensor (LAMB): sums, then the update with the tensor's scalars
            second, q8_second = spec.apply_scalars, spec.q8_apply_scalars
            for (gi, call), applies in zip(plan.calls, plan.apply):
                group, t = groups[gi], ts[gi]
                lr = group["lr"]
                lr = _checks.lr_value(lr, t) if callable(lr) else lr
                for sums, (q8, apply) in zip(call(sc[gi], t), applies):
                    apply(q8_second(sc[gi], group, t, lr, sums) if q8 else
                          second(group, t, lr, sums), t)

    def _state_shapes(self, i, group):
        """``{state name: shape}`` of parameter ``i``'s state under ``group``'s options (each
        buffer the parameter's shape; Adafactor's factored state differs)."""
        shape = tuple(self._params[i].shape)
        return {name: shape for name, needed in self.spec.needed(group).items() if needed}

    def _copy_param_into(self, seg, name):
        """State ``name`` := the segment's parameters (converted, rounding to nearest, when the
        state is stored in another format)."""
        be, state = self._backend, seg.state[name]
        if state.dtype == seg.param.dtype:
            be.copy(state, seg.param)
            return
        host = np.asarray(be.to_numpy(seg.param))
        if host.dtype.kind == "V":          # 16-bit floats seen as raw 2-byte values (simulator)
            host = host.view(F.storage_dtype(seg.fmt))
        sdtype = F.storage_dtype(seg.state_fmt[name])
        if host.dtype != sdtype:
            host = F.convert(host, sdtype)
        be.copy_from_numpy(state, host.view(state.dtype))

    def _switch(self, method):
        """Schedule-Free's ``train()``/``eval()``: each parameter moved towards its ``z`` with
        the spec's weight, one fused pass per segment, in groups not yet in that mode."""
        rule, weight_of, mode = self.spec.switch[method]
        be = self._backend
        for gi, group in enumerate(self.param_groups):
            if group.dirty:
                self._revalidate(gi, group)
            if bool(group["train_mode"]) == mode:
                continue
            if self._steps[gi]:      # before the first step z does not exist yet (no-op)
                w = weight_of(group)
                for seg in self._segments[gi]:
                    (name,) = self.spec.from_param
                    state = seg.state[name]
                    kernel = be.kernel(rule, seg.compute, (), (seg.fmt, seg.state_fmt[name]),
                                       self._rounding)
                    be.bind(kernel, [(seg.param, state)], seed=self._seed)(
                        (w, w - 1.0, 1.0 if abs(w) < 0.5 else 0.0, 0.0), self._steps[gi])
            dict.__setitem__(group, "train_mode", mode)

    # -- checkpoints (fastopt.optimizers._state_io) --------------------------------------------
    def state_dict(self):
        """A dict in torch.optim's layout, holding copies (host NumPy arrays).

        ``{"state": {index: {"step": int, <state name>: array, ...}}, "param_groups":
        [{<hyperparameters>, "params": [index, ...]}], "skipped_steps": int}``.  Indices are the
        parameters' global order; ``param_names`` lists names when params were given as a dict.
        """
        from ._state_io import state_dict
        return state_dict(self)

    def load_state_dict(self, state_dict):
        """Load a :meth:`state_dict`.  Everything is checked before anything changes."""
        from ._state_io import load_state_dict
        load_state_dict(self, state_dict)

    def __repr__(self):
        n = sum(p.size for p in self._params)
        return (f"{type(self).__name__}({len(self._params)} params, {n} values, "
                f"{len(self.param_groups)} group(s), backend={self.backend!r})")

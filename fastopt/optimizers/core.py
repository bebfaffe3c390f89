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

import operator
from collections.abc import Mapping

from .. import _checks, kernels as _kernels
from ._params import Group, grad_label, grads_list, label, parse_params

__all__ = ["Optimizer"]

_NONFINITE = ("propagate", "skip", "raise")


class _Segment:
    """A run of consecutive same-dtype parameters of one group, stepped as one buffer."""

    __slots__ = ("indices", "param", "state", "dtype", "size")

    def __init__(self, indices, param, dtype):
        self.indices = indices      # global parameter indices, in order
        self.param = param          # 1-D view over the whole run
        self.state = {}             # state name -> 1-D buffer over the whole run
        self.dtype = dtype
        self.size = param.size


class _Plan:
    """The bound kernel calls of one step, for one set of gradient arrays."""

    __slots__ = ("glist", "keys", "values", "calls", "check")

    def __init__(self, grads, glist, calls, check):
        self.glist = glist      # the gradient objects, in parameter order
        # a dict of gradients: its keys and values in its own order, for a cheap identity check
        self.keys = tuple(grads) if isinstance(grads, Mapping) else None
        self.values = list(grads.values()) if self.keys is not None else None
        self.calls = calls      # [(group index, bound call)]
        self.check = check      # 1-D gradient views, for the non-finite check

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
    """

    #: the family's spec (set on each generated class)
    spec = None

    def __init__(self, params, hyper, *, backend=None, nonfinite="propagate"):
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
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

    def _make_segments(self, group):
        """Per dtype (in order of first appearance), maximal runs of the group's parameters
        laid end to end in one allocation."""
        be = self._backend
        buckets = {}
        for i in group["params"]:
            buckets.setdefault(self._params[i].dtype, []).append(i)
        segments = []
        for dtype, idx in buckets.items():
            arrays = [self._params[i] for i in idx]
            for run in be.runs(arrays):
                members = [idx[k] for k in run]
                view = be.join([arrays[k] for k in run]) if len(run) > 1 \
                    else be.flat(arrays[run[0]])
                segments.append(_Segment(members, view, dtype))
        for seg in segments:
            self._alloc_state(seg, group)
        return segments

    def _alloc_state(self, seg, group):
        """(Re)allocate the segment's state buffers the group's options need (a needed buffer
        is allocated once; an unneeded one is a zero-length array)."""
        be = self._backend
        for name, needed in self.spec.needed(group).items():
            n = seg.size if needed else 0
            buf = seg.state.get(name)
            if buf is not None and buf.size == n:
                continue
            init = self.spec.initial(name, group)
            seg.state[name] = be.full(n, seg.dtype, init) if init else be.zeros(n, seg.dtype)

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
    def backend(self):
        """Name of the backend in use."""
        return self._backend.name

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
        """``{param index or name: {state name: view}}``; views into the live state buffers."""
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
            self._plan = plan = _Plan(grads, glist, plan.calls, plan.check)
            return plan
        be = self._backend
        checked = [be.check_grad(grad_label(name), g, p)
                   for name, g, p in zip(self._names, glist, self._params)]
        self._plan = plan = self._build_plan(grads, glist, checked)
        return plan

    def _rows(self, seg, checked, needed):
        """Kernel rows of a segment: one when its gradients lie like its parameters (an
        Arena), else one per parameter."""
        be = self._backend
        state = [seg.state[n] if need else None for n, need in needed.items()]
        if len(seg.indices) == 1:
            return [(seg.param, be.flat(checked[seg.indices[0]]), *state)]
        garr = [checked[i] for i in seg.indices]
        gview = be.span(garr)
        if gview is not None:
            return [(seg.param, gview, *state)]
        rows, off = [], 0
        for i, g in zip(seg.indices, garr):
            end = off + self._params[i].size
            rows.append((seg.param[off:end], be.flat(g),
                         *[None if st is None else st[off:end] for st in state]))
            off = end
        return rows

    def _build_plan(self, grads, glist, checked):
        be, rule = self._backend, self.spec.rule
        calls, check = [], []
        for gi, segs in enumerate(self._segments):
            needed = self.spec.needed(self.param_groups[gi])
            by_dtype = {}
            for seg in segs:
                by_dtype.setdefault(seg.dtype, []).extend(self._rows(seg, checked, needed))
            for dtype, rows in by_dtype.items():
                kernel = be.kernel(rule, dtype, self._flags[gi])
                calls.append((gi, be.bind(kernel, rows)))
                check.extend(r[1] for r in rows if r[1].size)
        return _Plan(grads, glist, calls, check)

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
        else:
            sc = []
            for gi, group in enumerate(groups):
                t = steps[gi] + 1
                lr = group["lr"]
                sc.append(scalars(group, t, _checks.lr_value(lr, t) if callable(lr) else lr))
        if self._check_finite:
            all_finite = self._backend.all_finite
            if not all(map(all_finite, plan.check)):
                if self.nonfinite == "raise":
                    raise FloatingPointError("non-finite gradient (NaN or Inf); nothing was "
                                             "changed")
                self.skipped_steps += 1
                return False
        # The kernels: one bound call per (group, dtype).
        for gi, call in plan.calls:
            call(sc[gi])
        for gi in range(len(steps)):
            steps[gi] += 1
        return True

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

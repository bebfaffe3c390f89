"""The optimizer machinery shared by every family: param groups, state, validation, dispatch.

Data flows one way.  At construction the parameters are validated once, a backend is resolved,
and each param group is cut into *segments*: runs of consecutive parameters of one dtype.  When a
run is laid out end to end in one allocation (an :class:`fastopt.Arena`'s views, or any such
layout) the segment is stepped with one kernel call over the whole run; otherwise it holds one
parameter.  State buffers are allocated once per segment, contiguous, and every parameter's state
is a view into them.

``step(grads)`` resolves the gradients (cached while the same gradient arrays are passed again),
computes every group's scalars, checks finiteness if asked, and only then calls the kernels: a
rejected step mutates nothing.
"""
from __future__ import annotations

import json
import math
import operator
from collections.abc import Mapping, Sequence

import numpy as np

from .. import kernels as _kernels

__all__ = ["Optimizer", "save", "load"]

_NONFINITE = ("propagate", "skip", "raise")


def _label(name):
    return f"params[{name!r}]" if isinstance(name, str) else f"params[{name}]"


def _glabel(name):
    return f"grads[{name!r}]" if isinstance(name, str) else f"grads[{name}]"


def check_nonneg(name, value):
    if not isinstance(value, (int, float, np.floating, np.integer)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")


def check_unit(name, value, closed=False):
    check_nonneg(name, value)
    if value > 1 or (value == 1 and not closed):
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1{']' if closed else ')'})")


def check_lr(lr):
    if callable(lr):
        return
    check_nonneg("lr", lr)


class _Group(dict):
    """A param group: a dict that notes when it is changed, so ``step`` re-validates the
    hyperparameters only then (torch-style code sets ``group["lr"] = ...`` directly)."""

    __slots__ = ("dirty",)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.dirty = True

    def __setitem__(self, key, value):
        self.dirty = True
        super().__setitem__(key, value)

    def __delitem__(self, key):
        self.dirty = True
        super().__delitem__(key)

    def _mark(name):  # noqa: N805 - helper building the mutating methods
        def method(self, *args, **kw):
            self.dirty = True
            return getattr(dict, name)(self, *args, **kw)
        method.__name__ = name
        return method

    update = _mark("update")
    pop = _mark("pop")
    popitem = _mark("popitem")
    setdefault = _mark("setdefault")
    clear = _mark("clear")
    __ior__ = _mark("__ior__")
    del _mark


class _Segment:
    """A run of consecutive same-dtype parameters of one group, stepped as one buffer."""

    __slots__ = ("indices", "param", "state", "dtype", "size")

    def __init__(self, indices, param, dtype):
        self.indices = indices      # global parameter indices, in order
        self.param = param          # 1-D view over the whole run
        self.state = {}             # state name -> 1-D buffer over the whole run
        self.dtype = dtype
        self.size = param.size


class Optimizer:
    """Base class.  Subclasses set :attr:`family`, :attr:`defaults` (via ``__init__``), and
    implement :meth:`_validate_group`, :meth:`_state_spec` and :meth:`_scalars`.

    Parameters
    ----------
    params : dict, sequence of arrays, or sequence of param-group dicts
        ``{name: array}``, ``[array, ...]`` or ``[{"params": [...], "lr": ...}, ...]``.  The
        arrays themselves are updated in place; the optimizer never copies or re-homes them.
    defaults : dict
        Hyperparameters of the family; a group's own entries override them.
    backend : {None, "numba", "cython", "numpy", "cuda"}
        ``None`` picks ``"cuda"`` for GPU arrays, else the first available of numba, cython,
        numpy.  A named backend that is not available raises ``RuntimeError``.
    nonfinite : {"propagate", "skip", "raise"}
        What a step does with NaN/Inf gradients: let them through (as torch), skip the step
        (counted in :attr:`skipped_steps`) or raise ``FloatingPointError``.  With "skip" and
        "raise" nothing is changed by such a step.
    """

    family = ""
    #: state names in kernel-argument order, e.g. ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    state_names: tuple = ()

    def __init__(self, params, defaults, *, backend=None, nonfinite="propagate"):
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        if backend is not None and backend not in _kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(repr(b) for b in _kernels.BACKENDS)} or None")
        groups, names, arrays = self._parse_params(params)
        self.defaults = dict(defaults)
        self._validate_group(self.defaults)
        self._backend = _kernels.resolve_backend(arrays, backend)
        be = self._backend
        self._params = [be.check_param(_label(n), a) for n, a in zip(names, arrays)]
        self._names = names
        self._named = all(isinstance(n, str) for n in names) and bool(names)
        self._index = {n: i for i, n in enumerate(names)}
        self._check_aliasing()

        self.param_groups = []
        for g in groups:
            group = _Group(self.defaults)
            group.update({k: v for k, v in g.items() if k != "params"})
            unknown = set(group) - set(self.defaults)
            if unknown:
                raise ValueError(f"param group has unknown keys {sorted(unknown)}; "
                                 f"{type(self).__name__} takes {sorted(self.defaults)}")
            self._validate_group(group)
            group["params"] = g["params"]  # global indices
            self.param_groups.append(group)

        self.nonfinite = nonfinite
        self.skipped_steps = 0
        self._steps = [0] * len(self.param_groups)
        self._segments = [self._make_segments(g) for g in self.param_groups]
        self._grad_cache = None
        self._kernel = getattr(self._backend.kernels, self.family)
        for g in self.param_groups:
            g.dirty = False

    # -- construction ------------------------------------------------------------------------
    @staticmethod
    def _parse_params(params):
        """-> (groups with 'params' as global index lists, names, arrays)."""
        if isinstance(params, Mapping):
            params = [{"params": params}]
        elif isinstance(params, (str, bytes)) or not isinstance(params, (Sequence, Mapping)):
            if hasattr(params, "__iter__") and not hasattr(params, "__array_interface__") \
                    and not hasattr(params, "__cuda_array_interface__"):
                params = list(params)
            else:
                raise TypeError("params must be a dict of arrays, a sequence of arrays or a "
                                f"sequence of param-group dicts, got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError("params is empty: the optimizer got no parameters")
        if all(isinstance(p, Mapping) for p in params):
            raw_groups = params
        elif any(isinstance(p, Mapping) for p in params):
            raise TypeError("params mixes arrays and param-group dicts")
        else:
            raw_groups = [{"params": params}]
        names, arrays, groups = [], [], []
        for gi, g in enumerate(raw_groups):
            if "params" not in g:
                raise ValueError(f"param group {gi} has no 'params' key")
            gp = g["params"]
            if isinstance(gp, Mapping):
                items = list(gp.items())
                for k, _ in items:
                    if not isinstance(k, str):
                        raise TypeError(f"param names must be str, got {k!r}")
            elif isinstance(gp, (list, tuple)):
                items = [(len(arrays) + j, a) for j, a in enumerate(gp)]
            elif hasattr(gp, "__array_interface__") or hasattr(gp, "__cuda_array_interface__"):
                items = [(len(arrays), gp)]
            else:
                raise TypeError(f"param group {gi}: 'params' must be a dict or a list of arrays")
            idx = []
            for name, a in items:
                if name in names:
                    raise ValueError(f"parameter name {name!r} appears twice")
                idx.append(len(arrays))
                names.append(name)
                arrays.append(a)
            groups.append({**g, "params": idx})
        if any(isinstance(n, str) for n in names) and not all(isinstance(n, str) for n in names):
            raise TypeError("param groups mix named (dict) and unnamed (list) parameters")
        return groups, names, arrays

    def _check_aliasing(self):
        be = self._backend
        ranges = sorted((be.address(p), p.nbytes, i) for i, p in enumerate(self._params)
                        if p.nbytes)
        for (a0, an, i), (b0, _bn, j) in zip(ranges, ranges[1:]):
            if b0 < a0 + an:
                raise ValueError(f"{_label(self._names[j])} shares memory with "
                                 f"{_label(self._names[i])}: the same array given twice")

    def _make_segments(self, group):
        """Cut a group into segments: per dtype (in order of first appearance), maximal runs of
        parameters laid end to end in one allocation; everything else one segment each."""
        be = self._backend
        buckets = {}
        for i in group["params"]:
            buckets.setdefault(self._params[i].dtype, []).append(i)
        segments = []
        for dtype, idx in buckets.items():
            run, last = [], None  # last: the run's last non-empty parameter
            for i in idx + [None]:
                p = self._params[i] if i is not None else None
                if p is not None and (last is None or p.size == 0 or be.span(
                        [self._params[last], p]) is not None):
                    run.append(i)
                    last = i if p.size else last
                    continue
                view = be.span([self._params[j] for j in run]) if len(run) > 1 else None
                if view is not None:
                    segments.append(_Segment(list(run), view, dtype))
                else:
                    segments.extend(_Segment([j], be.flat(self._params[j]), dtype) for j in run)
                run, last = [i], (i if p is not None and p.size else None)
        for seg in segments:
            self._alloc_state(seg, group)
        return segments

    def _alloc_state(self, seg, group):
        be = self._backend
        for name, needed, init in self._state_spec(group):
            if name in seg.state and (seg.state[name].size == (seg.size if needed else 0)):
                continue
            n = seg.size if needed else 0
            seg.state[name] = be.full(n, seg.dtype, init) if init else be.zeros(n, seg.dtype)

    # -- hooks for subclasses ----------------------------------------------------------------
    def _validate_group(self, group):  # pragma: no cover - abstract
        raise NotImplementedError

    def _state_spec(self, group):  # pragma: no cover - abstract
        """-> [(state name, needed?, initial value)] in kernel-argument order."""
        raise NotImplementedError

    def _scalars(self, group, t, lr, dtype):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- properties ----------------------------------------------------------------------------
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
        check_lr(value)
        for g in self.param_groups:
            g["lr"] = value

    @property
    def step_count(self):
        """Steps taken so far (of the first group)."""
        return self._steps[0]

    @property
    def state(self):
        """``{param index or name: {state name: view}}``; views into the live state buffers."""
        out = {}
        for gi, group in enumerate(self.param_groups):
            used = [name for name, needed, _ in self._state_spec(group) if needed]
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
    def _resolve_grads(self, grads):
        """Validated gradients as per-segment 1-D views; cached for the same gradient arrays."""
        n = len(self._params)
        if isinstance(grads, Mapping):
            if not self._named:
                raise TypeError("grads is a dict but the parameters were given as a list; pass "
                                "a list of gradients in the same order")
            keys = set(grads)
            if keys != set(self._index):
                missing = sorted(set(self._index) - keys)
                extra = sorted(keys - set(self._index))
                parts = []
                if missing:
                    parts.append(f"missing keys {missing}")
                if extra:
                    parts.append(f"unexpected keys {extra}")
                raise ValueError("grads: " + "; ".join(parts))
            glist = [grads[k] for k in self._names]
        elif isinstance(grads, (list, tuple)):
            if len(grads) != n:
                raise ValueError(f"grads has {len(grads)} entries, the optimizer has {n} "
                                 f"parameters")
            glist = list(grads)
        elif grads is None:
            raise TypeError("grads is None; step(grads) needs one gradient per parameter")
        else:
            raise TypeError(f"grads must be a dict or a list of arrays, got "
                            f"{type(grads).__name__}")

        cache = self._grad_cache
        if cache is not None and all(map(operator.is_, cache[0], glist)):
            # The same gradient arrays as last step: validated then, and an array's memory
            # cannot move, so the plan of kernel calls stands.
            return cache[1]

        be = self._backend
        checked = [be.check_grad(_glabel(name), g, p)
                   for name, g, p in zip(self._names, glist, self._params)]
        self._grad_cache = (glist, self._build_plan(checked))
        return self._grad_cache[1]

    def _build_plan(self, checked):
        """Per group: ``{dtype: [kernel argument tuples]}``, scalars excepted: one tuple per
        segment whose gradients lie like its parameters (an Arena), else one per parameter."""
        be = self._backend
        plan = []
        for segs in self._segments:
            gplan = {}
            for seg in segs:
                state = [seg.state[name] for name in self.state_names]
                calls = gplan.setdefault(seg.dtype, [])
                if len(seg.indices) == 1:
                    calls.append((seg.param, be.flat(checked[seg.indices[0]]), *state))
                    continue
                garr = [checked[i] for i in seg.indices]
                gview = be.span(garr)
                if gview is not None:
                    calls.append((seg.param, gview, *state))
                    continue
                off = 0  # gradients not laid out like the parameters: one call per parameter
                for i, g in zip(seg.indices, garr):
                    b = off + self._params[i].size
                    calls.append((seg.param[off:b], be.flat(g),
                                  *[st[off:b] if st.size else st for st in state]))
                    off = b
            plan.append(gplan)
        return plan


    def _revalidate(self, gi, group):
        """A group was changed since the last step: check it, (re)allocate state it now needs."""
        self._validate_group(group)
        for seg in self._segments[gi]:
            self._alloc_state(seg, group)
        self._grad_cache = None  # state buffers may be new: rebuild the plan
        group.dirty = False

    @staticmethod
    def _lr_at(lr, t, validated=False):
        if not callable(lr):
            if not validated:
                check_lr(lr)
            return float(lr)
        value = lr(t - 1)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"the lr schedule returned {value!r} at count {t - 1}; expected a "
                            f"float") from None
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"the lr schedule returned {value} at count {t - 1}; expected a "
                             f"finite number >= 0")
        return value

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
        plan = self._resolve_grads(grads)
        # Phase 1: everything that can fail, before anything is mutated.
        calls = []
        steps = self._steps
        for gi, group in enumerate(groups):
            t = steps[gi] + 1
            lr = self._lr_at(group["lr"], t, validated=True)  # a float lr: checked when set
            for dtype, arglist in plan[gi].items():
                calls.append((arglist, self._scalars(group, t, lr, dtype)))
        if self.nonfinite != "propagate":
            all_finite = self._backend.kernels.all_finite
            for arglist, _ in calls:
                for args in arglist:
                    if args[1].size and not all_finite(args[1]):
                        if self.nonfinite == "raise":
                            raise FloatingPointError(
                                "non-finite gradient (NaN or Inf); nothing was changed")
                        self.skipped_steps += 1
                        return False
        # Phase 2: the kernels: one call per (group, dtype) for an Arena, else per array.
        kernel = self._kernel
        for arglist, sc in calls:
            for args in arglist:
                kernel(*args, sc)
        for gi in range(len(steps)):
            steps[gi] += 1
        return True

    # -- state_dict ----------------------------------------------------------------------------
    def state_dict(self):
        """A dict in torch.optim's layout, holding copies (host NumPy arrays).

        ``{"state": {index: {"step": int, <state name>: array, ...}}, "param_groups":
        [{<hyperparameters>, "params": [index, ...]}], "skipped_steps": int}``.  Indices are the
        parameters' global order; ``param_names`` lists names when params were given as a dict.
        """
        be = self._backend
        state = {}
        live = self.state
        for i, name in enumerate(self._names):
            entry = live[name]
            state[i] = {k: (v if k == "step" else be.to_numpy(v)) for k, v in entry.items()}
        groups = []
        for g in self.param_groups:
            d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
                 if k != "params"}
            d["params"] = list(g["params"])
            groups.append(d)
        out = {"state": state, "param_groups": groups, "skipped_steps": self.skipped_steps}
        if self._named:
            out["param_names"] = list(self._names)
        return out

    def load_state_dict(self, state_dict):
        """Load a :meth:`state_dict`.  Everything is checked before anything changes."""
        if not isinstance(state_dict, Mapping):
            raise TypeError(f"state_dict must be a dict, got {type(state_dict).__name__}")
        for key in ("state", "param_groups"):
            if key not in state_dict:
                raise ValueError(f"state_dict has no {key!r} key")
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has "
                             f"{len(self.param_groups)}")
        new_groups = []
        for gi, (sg, g) in enumerate(zip(groups, self.param_groups)):
            if len(sg.get("params", ())) != len(g["params"]):
                raise ValueError(f"state_dict param group {gi} has {len(sg.get('params', ()))} "
                                 f"params, the optimizer's has {len(g['params'])}")
            ng = dict(g)
            for k, v in sg.items():
                if k == "params":
                    continue
                if k not in self.defaults:
                    raise ValueError(f"state_dict param group {gi} has unknown key {k!r}")
                if k == "lr" and v is None:
                    continue  # a schedule was not serialized: keep the optimizer's own
                ng[k] = tuple(v) if isinstance(self.defaults.get(k), tuple) else v
            self._validate_group(ng)
            new_groups.append(ng)
        state = state_dict["state"]
        if len(state) != len(self._params):
            raise ValueError(f"state_dict has state for {len(state)} parameters, the optimizer "
                             f"has {len(self._params)}")
        # Map each saved index to its (group, position) through the saved groups' params.
        copies, steps = [], []
        for gi, (sg, ng) in enumerate(zip(groups, new_groups)):
            names_needed = [n for n, needed, _ in self._state_spec(ng) if needed]
            gsteps = set()
            for saved_idx, i in zip(sg["params"], ng["params"]):
                entry = state.get(saved_idx, state.get(str(saved_idx)))
                if entry is None:
                    raise ValueError(f"state_dict has no state for parameter {saved_idx}")
                if "step" not in entry:
                    raise ValueError(f"state_dict state for parameter {saved_idx} has no 'step'")
                gsteps.add(int(entry["step"]))
                p = self._params[i]
                for name in names_needed:
                    if name not in entry:
                        raise ValueError(f"state_dict state for parameter {saved_idx} has no "
                                         f"{name!r}")
                    arr = np.asarray(entry[name])
                    if arr.shape != tuple(p.shape):
                        raise ValueError(f"state_dict {name!r} of parameter {saved_idx} has "
                                         f"shape {arr.shape}, the parameter has {p.shape}")
                    if arr.dtype.kind != "f":
                        raise TypeError(f"state_dict {name!r} of parameter {saved_idx} has "
                                        f"dtype {arr.dtype}")
                    copies.append((gi, i, name, arr))
            if len(gsteps) > 1:
                raise ValueError(f"state_dict param group {gi} has parameters at different "
                                 f"steps {sorted(gsteps)}; fastopt keeps one step per group")
            steps.append(gsteps.pop() if gsteps else 0)
        # Commit.
        for gi, ng in enumerate(new_groups):
            ng["params"] = self.param_groups[gi]["params"]
            group = self.param_groups[gi]
            group.clear()
            group.update(ng)
            for seg in self._segments[gi]:
                self._alloc_state(seg, group)
            group.dirty = False
        self._grad_cache = None
        live = self.state
        be = self._backend
        for gi, i, name, arr in copies:
            be.copy_from_numpy(live[self._names[i]][name], arr)
        self._steps = steps
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))

    def __repr__(self):
        n = sum(p.size for p in self._params)
        return (f"{type(self).__name__}({len(self._params)} params, {n} values, "
                f"{len(self.param_groups)} group(s), backend={self.backend!r})")


def save(opt, path):
    """Write ``opt.state_dict()`` to ``path`` as ``.npz`` (arrays stored as they are, the rest as
    JSON).  A schedule ``lr`` is not serialized; :func:`load` keeps the optimizer's own."""
    sd = opt.state_dict()
    arrays = {}
    meta_state = {}
    for i, entry in sd["state"].items():
        meta_state[str(i)] = {"step": int(entry["step"])}
        for k, v in entry.items():
            if k != "step":
                arrays[f"state/{i}/{k}"] = v
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if callable(g["lr"]):
            g["lr"] = None
        groups.append(g)
    meta = {"format": "fastopt-state-1", "class": type(opt).__name__, "state": meta_state,
            "param_groups": groups, "skipped_steps": sd["skipped_steps"],
            "param_names": sd.get("param_names")}
    arrays["__meta__"] = np.array(json.dumps(meta))
    with open(path, "wb") as fh:
        np.savez(fh, **arrays)


def load(opt, path):
    """Load a file written by :func:`save` into ``opt`` (checked before anything changes)."""
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f["__meta__"]))
        if meta.get("format") != "fastopt-state-1":
            raise ValueError(f"{path}: not a fastopt optimizer state file")
        if meta["class"] != type(opt).__name__:
            raise ValueError(f"{path} holds {meta['class']} state, not {type(opt).__name__}")
        state = {}
        for i, entry in meta["state"].items():
            e = dict(entry)
            prefix = f"state/{i}/"
            for key in f.files:
                if key.startswith(prefix):
                    e[key[len(prefix):]] = f[key]
            state[int(i)] = e
    sd = {"state": state, "param_groups": meta["param_groups"],
          "skipped_steps": meta["skipped_steps"]}
    opt.load_state_dict(sd)

"""Reading what users pass: ``params`` (dicts, lists, param groups) and ``grads``.

Nothing here touches memory layout or kernels; it only turns the accepted input forms into
flat lists and names, with errors that say what was wrong.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["Group", "parse_params", "grads_list", "label", "grad_label"]


def label(name):
    return f"params[{name!r}]" if isinstance(name, str) else f"params[{name}]"


def grad_label(name):
    return f"grads[{name!r}]" if isinstance(name, str) else f"grads[{name}]"


class Group(dict):
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


def _is_array(x):
    return hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__") \
        or getattr(x, "__cuda_ndarray__", False)


def parse_params(params):
    """-> (groups with 'params' as global index lists, names, arrays)."""
    if isinstance(params, Mapping):
        params = [{"params": params}]
    elif isinstance(params, (str, bytes)) or not isinstance(params, (Sequence, Mapping)):
        if hasattr(params, "__iter__") and not _is_array(params):
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
    seen = set()
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
        elif _is_array(gp):
            items = [(len(arrays), gp)]
        else:
            raise TypeError(f"param group {gi}: 'params' must be a dict or a list of arrays")
        idx = []
        for name, a in items:
            if name in seen:
                raise ValueError(f"parameter name {name!r} appears twice")
            seen.add(name)
            idx.append(len(arrays))
            names.append(name)
            arrays.append(a)
        groups.append({**g, "params": idx})
    if any(isinstance(n, str) for n in names) and not all(isinstance(n, str) for n in names):
        raise TypeError("param groups mix named (dict) and unnamed (list) parameters")
    return groups, names, arrays


def grads_list(grads, names, index, named):
    """The gradients in parameter order, from a dict (by name) or a sequence."""
    n = len(names)
    if isinstance(grads, Mapping):
        if not named:
            raise TypeError("grads is a dict but the parameters were given as a list; pass "
                            "a list of gradients in the same order")
        if len(grads) != n or any(k not in index for k in grads):
            keys = set(grads)
            missing = sorted(set(index) - keys)
            extra = sorted(keys - set(index), key=str)
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if extra:
                parts.append(f"unexpected keys {extra}")
            raise ValueError("grads: " + "; ".join(parts))
        return [grads[k] for k in names]
    if isinstance(grads, (list, tuple)):
        if len(grads) != n:
            raise ValueError(f"grads has {len(grads)} entries, the optimizer has {n} "
                             f"parameters")
        return list(grads)
    if grads is None:
        raise TypeError("grads is None; step(grads) needs one gradient per parameter")
    raise TypeError(f"grads must be a dict or a list of arrays, got {type(grads).__name__}")

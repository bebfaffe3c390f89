"""Checkpoints: ``state_dict`` / ``load_state_dict`` in torch.optim's layout, and ``save`` /
``load`` to ``.npz`` files.

Loading checks everything before anything changes.  ``save`` writes atomically (a temporary
file in the same folder, flushed and fsynced, then ``os.replace``), so a failed write (a full
disk) leaves the previous checkpoint as it was and nothing behind; ``load`` turns a truncated or
corrupted file into a ``ValueError`` naming the path, with the optimizer unchanged.
"""
from __future__ import annotations

import json
import os
import secrets
import zipfile
from collections.abc import Mapping

import numpy as np

from ..kernels import formats as F

__all__ = ["state_dict", "load_state_dict", "save", "load"]

FORMAT = "fastopt-state-1"


def state_dict(opt):
    be = opt._backend
    state = {}
    live = opt.state
    for i, name in enumerate(opt._names):
        entry = live[name]
        state[i] = {k: (v if k == "step" else be.to_numpy(v)) for k, v in entry.items()}
    groups = []
    for g in opt.param_groups:
        d = {k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()
             if k != "params"}
        d["params"] = list(g["params"])
        groups.append(d)
    out = {"state": state, "param_groups": groups, "skipped_steps": opt.skipped_steps,
           "state_dtype": opt.state_dtype}
    if opt._named:
        out["param_names"] = list(opt._names)
    return out


def load_state_dict(opt, sd):
    spec = opt.spec
    if not isinstance(sd, Mapping):
        raise TypeError(f"state_dict must be a dict, got {type(sd).__name__}")
    for key in ("state", "param_groups"):
        if key not in sd:
            raise ValueError(f"state_dict has no {key!r} key")
    groups = sd["param_groups"]
    if len(groups) != len(opt.param_groups):
        raise ValueError(f"state_dict has {len(groups)} param groups, the optimizer has "
                         f"{len(opt.param_groups)}")
    new_groups = []
    for gi, (sg, g) in enumerate(zip(groups, opt.param_groups)):
        if len(sg.get("params", ())) != len(g["params"]):
            raise ValueError(f"state_dict param group {gi} has {len(sg.get('params', ()))} "
                             f"params, the optimizer's has {len(g['params'])}")
        ng = dict(g)
        for k, v in sg.items():
            if k == "params":
                continue
            if k not in opt.defaults:
                raise ValueError(f"state_dict param group {gi} has unknown key {k!r}")
            if k == "lr" and v is None:
                continue  # a schedule was not serialized: keep the optimizer's own
            ng[k] = tuple(v) if isinstance(opt.defaults.get(k), tuple) else v
        spec.validate(ng)
        new_groups.append(ng)
    state = sd["state"]
    if len(state) != len(opt._params):
        raise ValueError(f"state_dict has state for {len(state)} parameters, the optimizer "
                         f"has {len(opt._params)}")
    copies, steps = [], []
    for gi, (sg, ng) in enumerate(zip(groups, new_groups)):
        gsteps = set()
        for saved_idx, i in zip(sg["params"], ng["params"]):
            entry = state.get(saved_idx, state.get(str(saved_idx)))
            if entry is None:
                raise ValueError(f"state_dict has no state for parameter {saved_idx}")
            if "step" not in entry:
                raise ValueError(f"state_dict state for parameter {saved_idx} has no 'step'")
            gsteps.add(int(entry["step"]))
            p = opt._params[i]
            for name, shape in opt._state_shapes(i, ng).items():
                if name not in entry:
                    raise ValueError(f"state_dict state for parameter {saved_idx} has no "
                                     f"{name!r}")
                arr = np.asarray(entry[name])
                what = f"state_dict {name!r} of parameter {saved_idx}"
                if arr.shape != shape:
                    extra = "" if shape == tuple(p.shape) else f" (the parameter {p.shape})"
                    raise ValueError(f"{what} has shape {arr.shape}, expected {shape}{extra}")
                absmax = None
                if arr.dtype == np.uint8:           # 8-bit codes: their absmax must fit
                    absmax = _checked_absmax(entry, name, p.size, what)
                elif not F.is_float_dtype(arr.dtype):
                    raise TypeError(f"{what} has dtype {arr.dtype}; state is float64, "
                                    f"float32, bfloat16, float16, or uint8 codes with an "
                                    f"absmax (converted to this optimizer's state_dtype)")
                copies.append((i, name, arr, absmax))
        if len(gsteps) > 1:
            raise ValueError(f"state_dict param group {gi} has parameters at different "
                             f"steps {sorted(gsteps)}; fastopt keeps one step per group")
        steps.append(gsteps.pop() if gsteps else 0)
    # Commit.
    for gi, ng in enumerate(new_groups):
        ng["params"] = opt.param_groups[gi]["params"]
        group = opt.param_groups[gi]
        group.clear()
        group.update(ng)
        opt._flags[gi] = spec.flags(group)
        for seg in opt._segments[gi]:
            opt._alloc_state(seg, group)
        group.dirty = False
    opt._plan = None
    live = opt.state
    be = opt._backend
    for i, name, arr, absmax in copies:
        fmt = F.Q8U if name in spec.nonneg else F.Q8S
        entry = live[opt._names[i]]
        if absmax is not None and name + "_absmax" not in entry:
            arr = F.dequantize(fmt, arr, absmax).reshape(arr.shape)   # 8-bit into float state
            absmax = None
        elif absmax is None and name + "_absmax" in entry:
            arr, absmax = F.quantize(fmt, arr)                        # float into 8-bit state
        be.copy_from_numpy(entry[name], arr.reshape(entry[name].shape))
        if absmax is not None:
            be.copy_from_numpy(entry[name + "_absmax"], absmax)
    opt._steps = steps
    opt.skipped_steps = int(sd.get("skipped_steps", 0))


def save(opt, path):
    """Write ``opt.state_dict()`` to ``path`` as ``.npz`` (arrays stored as they are, the rest as
    JSON), atomically: on any failure the file at ``path`` is as it was before.  A schedule
    ``lr`` is not serialized; :func:`load` keeps the optimizer's own."""
    sd = opt.state_dict()
    arrays = {}
    meta_state = {}
    for i, entry in sd["state"].items():
        meta_state[str(i)] = {"step": int(entry["step"])}
        for k, v in entry.items():
            if k == "step":
                continue
            if v.dtype.kind == "V":   # bfloat16: .npz keeps its bits, the meta its name
                meta_state[str(i)].setdefault("dtypes", {})[k] = v.dtype.name
                v = v.view(np.uint16)
            arrays[f"state/{i}/{k}"] = v
    groups = []
    for g in sd["param_groups"]:
        g = dict(g)
        if callable(g["lr"]):
            g["lr"] = None
        groups.append(g)
    meta = {"format": FORMAT, "class": type(opt).__name__, "state": meta_state,
            "param_groups": groups, "skipped_steps": sd["skipped_steps"],
            "param_names": sd.get("param_names")}
    arrays["__meta__"] = np.array(json.dumps(meta))
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    # a fresh name in the same folder, created with the mode a plain open() would give (umask)
    tmp = os.path.join(folder, f".fastopt-{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def load(opt, path):
    """Load a file written by :func:`save` into ``opt`` (checked before anything changes).

    A file that is not a complete fastopt checkpoint raises ``ValueError`` naming ``path``."""
    try:
        with np.load(path, allow_pickle=False) as f:
            meta = json.loads(str(f["__meta__"]))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"{path}: not a fastopt optimizer state file")
            state = {}
            for i, entry in meta["state"].items():
                e = dict(entry)
                dtypes = e.pop("dtypes", {})
                prefix = f"state/{i}/"
                for key in f.files:
                    if key.startswith(prefix):
                        name = key[len(prefix):]
                        e[name] = f[key]
                        if name in dtypes:
                            e[name] = e[name].view(_named_dtype(dtypes[name], path))
                state[int(i)] = e
    except ValueError as exc:
        if str(exc).startswith(f"{path}:"):
            raise
        raise ValueError(f"{path}: not a readable fastopt checkpoint ({exc})") from None
    except (zipfile.BadZipFile, KeyError, EOFError, OSError, TypeError, AttributeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ValueError(f"{path}: not a readable fastopt checkpoint "
                         f"({type(exc).__name__}: {exc})") from None
    if meta["class"] != type(opt).__name__:
        raise ValueError(f"{path} holds {meta['class']} state, not {type(opt).__name__}")
    sd = {"state": state, "param_groups": meta["param_groups"],
          "skipped_steps": meta["skipped_steps"]}
    opt.load_state_dict(sd)


def _checked_absmax(entry, name, size, what):
    """The float32 absmax that goes with 8-bit codes (one per block of 256 elements)."""
    key = name + "_absmax"
    if key not in entry:
        raise ValueError(f"{what} holds uint8 codes but the state has no {key!r}")
    absmax = np.asarray(entry[key])
    want = (F.nblocks(size),)
    if absmax.dtype != np.float32 or absmax.shape != want:
        raise ValueError(f"{what}: {key!r} must be float32 of shape {want} (one per block of "
                         f"{F.BLOCK}), got {absmax.dtype} {absmax.shape}")
    return absmax


def _named_dtype(name, path):
    """The 16-bit float dtype a checkpoint names (stored as its uint16 bits)."""
    for fmt in (F.BF16, F.F16):
        dtype = F.storage_dtype(fmt)
        if dtype.name == name:
            return dtype
    raise ValueError(f"{path}: unknown state dtype {name!r}")

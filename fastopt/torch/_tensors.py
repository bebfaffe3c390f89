"""Tensors as kernel arrays: zero-copy NumPy views of CPU tensors, numba device arrays of CUDA
tensors, and the checks that decide whether a tensor can be stepped in place."""
from __future__ import annotations

import math
import sys

import ml_dtypes
import numpy as np
import torch

__all__ = ["NP_DTYPE", "HALF", "check_param", "check_grad", "host", "device", "label",
           "scalar_dtype", "grad_dtype_ok", "local", "is_dtensor"]

#: the types of plain tensors (anything else may be a DTensor)
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_STRIDED = torch.strided

NP_DTYPE = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64),
            torch.bfloat16: np.dtype(ml_dtypes.bfloat16), torch.float16: np.dtype(np.float16)}
#: the 16-bit parameter dtypes (their gradients may be float32)
HALF = (torch.bfloat16, torch.float16)
#: torch dtype of each ``state_dtype`` string
STATE_DTYPE = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def grad_dtype_ok(g, p):
    """A gradient has its parameter's dtype, or float32 for a bfloat16/float16 parameter."""
    return g.dtype is p.dtype or (g.dtype is torch.float32 and p.dtype in HALF)


#: buffers from this size on are advised into huge pages (config.HUGE_PAGES)
HUGE_MIN_BYTES = 4 << 20
_MADV_HUGEPAGE = 14     # <sys/mman.h> on Linux
_libc = []              # [the C library's madvise] once looked up, [None] where there is none


def _madvise():
    if not _libc:
        fn = None
        if sys.platform.startswith("linux"):
            try:
                import ctypes
                fn = ctypes.CDLL(None, use_errno=True).madvise
                fn.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
                fn.restype = ctypes.c_int
            except (OSError, AttributeError):  # pragma: no cover - a libc without madvise
                fn = None
        _libc.append(fn)
    return _libc[0]


def advise_huge(t):
    """Advise the kernel to back a fresh (untouched) CPU tensor's memory with transparent huge
    pages, from its first whole page to its last (Linux, ``config.HUGE_PAGES``, at least
    :data:`HUGE_MIN_BYTES`); anything else: nothing.  Only advice: the values and the
    tensor are as they were; an error of ``madvise`` (THP not built in) is ignored."""
    from .. import config
    nbytes = t.numel() * t.element_size()
    if not config.HUGE_PAGES or nbytes < HUGE_MIN_BYTES or t.device.type != "cpu":
        return t
    fn = _madvise()
    if fn is not None:
        page = 4096
        lo = (t.data_ptr() + page - 1) & ~(page - 1)
        hi = (t.data_ptr() + nbytes) & ~(page - 1)
        if hi > lo:
            fn(lo, hi - lo, _MADV_HUGEPAGE)
    return t


def filled(shape, value, dtype, device):
    """A new contiguous tensor of ``value`` (``torch.full``), its memory advised into huge
    pages before the fill first touches it (:func:`advise_huge`)."""
    return advise_huge(torch.empty(shape, dtype=dtype, device=device)).fill_(value)


def scalar_dtype():
    # torch.optim keeps `step` in float32 unless the default dtype is float64
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def label(group, gi, i, p):
    names = group.get("param_names")
    where = repr(names[i]) if names and i < len(names) else f"param_groups[{gi}]['params'][{i}]"
    return f"parameter {where} (shape {tuple(p.shape)})"


def check_param(label_, p):
    if not isinstance(p, torch.Tensor):
        raise TypeError(f"{label_} must be a torch.Tensor, got {type(p).__name__}")
    if p.dtype not in NP_DTYPE:
        raise TypeError(f"{label_} has dtype {p.dtype}; fastopt.torch steps float32, float64, "
                        f"bfloat16 and float16 parameters")
    if p.layout != torch.strided:
        raise TypeError(f"{label_} has layout {p.layout}; only dense (strided) tensors")
    if p.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{label_} is on device {p.device}; fastopt.torch steps CPU and CUDA "
                        f"tensors")
    if torch._debug_has_internal_overlap(local(p)) == 1:
        raise ValueError(f"{label_} has elements sharing memory (an expanded view); it cannot "
                         f"be updated in place")


def is_dtensor(t):
    """True for a ``torch.distributed.tensor.DTensor`` (FSDP2's parameters), without
    importing torch.distributed when nothing has."""
    if type(t) in _PLAIN:
        return False
    mod = sys.modules.get("torch.distributed.tensor")
    return mod is not None and isinstance(t, mod.DTensor)


def local(t):
    """The tensor a kernel steps: a DTensor's local shard (its own memory: in-place updates
    update the DTensor), any other tensor itself."""
    return t._local_tensor if t is not None and is_dtensor(t) else t


def shard_start(p):
    """Where a DTensor's local shard starts among its parameter's elements (row-major), so
    stochastic rounding draws the bits the unsharded parameter would; 0 for a plain tensor,
    and for a shard that is not one block of the parameter (then the bits are the shard's
    own, still reproducible)."""
    if not is_dtensor(p):
        return 0
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    shape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    if tuple(shape[1:]) != tuple(p.shape[1:]) or any(offset[1:]):
        return 0
    return offset[0] * math.prod(p.shape[1:]) if p.dim() else 0


def factor_indices(p, local_shape):
    """Adafactor's factors of parameter ``p`` (a local shard of ``local_shape``): the global
    index of each local row (``row_var``: the leading dimensions flattened) and of each local
    column of each matrix (``col_var``), as uint64 arrays -- the factor's position in the whole
    tensor, the same on every rank holding it (a replicated factor rounds alike everywhere)
    and as one process stepping the whole tensor."""
    import numpy as np
    local_shape = tuple(local_shape)
    whole = tuple(p.shape)
    offset = (0,) * len(whole)
    if is_dtensor(p):
        from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
        _, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    out = []
    for keep in (slice(None, -1), tuple(range(len(whole) - 2)) + (len(whole) - 1,)):
        dims = list(range(len(whole)))[keep] if isinstance(keep, slice) else list(keep)
        loc = [local_shape[d] for d in dims]
        idx = np.indices(loc).reshape(len(dims), -1) + np.array([offset[d] for d in dims])[:, None]
        out.append(np.ravel_multi_index(idx, [whole[d] for d in dims]).astype(np.uint64)
                   if idx.size else np.zeros(0, np.uint64))
    return {"row_var": out[0], "col_var": out[1]}


def kernel_params(params):
    """``(tensors the kernel steps, [(parameter memory, contiguous copy)] to write back)``:
    each parameter itself when it is a contiguous plain tensor (no copy, the common path), a
    DTensor's local shard, and a contiguous copy of a non-contiguous one, whose values the
    caller copies back into the parameter's own memory after the kernel ran (torch.optim
    steps such parameters in place too)."""
    work, back = params, []
    for i, p in enumerate(params):
        t = local(p)
        if t is not p or not p.is_contiguous():
            if work is params:
                work = list(params)
            if not t.is_contiguous():
                c = t.contiguous()
                back.append((t, c))
                t = c
            work[i] = t
    return work, back


def fast_ok(p, g):
    """True when ``p`` and its gradient pass every check (the common case, without building
    an error label); False sends them through :func:`check_param` / :func:`check_grad`
    (non-contiguous tensors and DTensors always take that path)."""
    return (type(p) in _PLAIN and type(g) in _PLAIN
            and p.layout is _STRIDED and g.layout is _STRIDED
            and p.dtype in NP_DTYPE and grad_dtype_ok(g, p)
            and p.is_contiguous() and g.is_contiguous() and g.shape == p.shape
            # the same device, CPU or CUDA (is_cpu: no torch.device objects built)
            and ((p.is_cpu and g.is_cpu) or (p.is_cuda and g.device == p.device)))


def check_grad(label_, p, g):
    """The gradient as the kernel reads it: a contiguous tensor of p's dtype/shape/device
    (copied if non-contiguous; a DTensor's local shard)."""
    if g.is_sparse or g.layout != torch.strided:
        raise RuntimeError(f"{label_}: fastopt.torch does not support sparse gradients")
    if not grad_dtype_ok(g, p):
        extra = " or float32" if p.dtype in HALF else ""
        raise TypeError(f"{label_}: gradient has dtype {g.dtype}, the parameter {p.dtype} (a "
                        f"gradient has its parameter's dtype{extra})")
    if g.shape != p.shape:
        raise ValueError(f"{label_}: gradient has shape {tuple(g.shape)}, the parameter "
                         f"{tuple(p.shape)}")
    if g.device != p.device:
        raise ValueError(f"{label_}: gradient is on {g.device}, the parameter on {p.device}")
    if is_dtensor(p) or is_dtensor(g):
        if not (is_dtensor(p) and is_dtensor(g)):
            raise TypeError(f"{label_}: a DTensor parameter needs a DTensor gradient and the "
                            f"reverse")
        if tuple(g.placements) != tuple(p.placements) or g.device_mesh != p.device_mesh:
            raise ValueError(f"{label_}: gradient placements {tuple(g.placements)} differ from "
                             f"the parameter's {tuple(p.placements)}")
        g = local(g)
        if g.shape != local(p).shape:  # pragma: no cover - same placements, same shard
            raise ValueError(f"{label_}: local gradient shard has shape {tuple(g.shape)}")
    return g if g.is_contiguous() else g.contiguous()


def host(t):
    """Zero-copy 1-D NumPy view of a contiguous CPU tensor (checked); a bfloat16 tensor is
    viewed through its bits (NumPy has no bfloat16 of its own: ``ml_dtypes.bfloat16``)."""
    t = t.detach().view(-1)
    if t.dtype is torch.bfloat16:
        a = t.view(torch.int16).numpy().view(NP_DTYPE[torch.bfloat16])
    else:
        a = t.numpy()
    if a.size and a.__array_interface__["data"][0] != t.data_ptr():  # pragma: no cover
        raise RuntimeError("fastopt.torch: NumPy view of a tensor does not share its memory")
    return a


def device(t):
    """Zero-copy 1-D numba device array of a contiguous CUDA tensor (bfloat16 through its bits:
    torch's ``__cuda_array_interface__`` has no bfloat16).  Never run on a GPU."""
    from numba import cuda  # imported only on this path
    t = t.detach().view(-1)
    if t.dtype is torch.bfloat16:
        return cuda.as_cuda_array(t.view(torch.int16)).view(NP_DTYPE[torch.bfloat16])
    return cuda.as_cuda_array(t)

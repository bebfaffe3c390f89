"""Backend registry.

A *backend* is a module of fused kernels plus the handful of array operations the optimizers need
to hold state next to the parameters (host memory or a GPU).  Every kernel module exposes the same
functions with the same signature (see :mod:`fastopt.kernels.reference` for the contract)::

    sgd(param, grad, momentum_buffer, scalars)
    momentum(param, grad, velocity, scalars)
    rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, scalars)
    adagrad(param, grad, sum, scalars)
    adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars)
    all_finite(array) -> bool

``scalars`` is the tuple built once per (param group, dtype, step) by
:mod:`fastopt.kernels._scalars`.  Backends are imported lazily: ``import fastopt`` imports none of
them, and the CUDA one (which imports ``numba.cuda``) only when asked for.
"""
from __future__ import annotations


import numpy as np

__all__ = ["BACKENDS", "Backend", "HostBackend", "get_backend", "resolve_backend",
           "backend_status", "is_device_array"]

#: Backend names, in the order ``backend=None`` tries them for host (NumPy) arrays.
BACKENDS = ("numba", "cython", "numpy", "cuda")
HOST_ORDER = ("numba", "cython", "numpy")

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_cache: dict = {}


class Backend:
    """What an optimizer needs from a backend: kernels and array handling."""

    name = "?"
    device = "cpu"

    def __init__(self, kernels):
        self.kernels = kernels

    def __repr__(self):
        return f"<fastopt backend {self.name!r}>"


def _describe(x):
    return type(x).__module__ + "." + type(x).__qualname__


class HostBackend(Backend):
    """Array handling for backends that work on NumPy arrays in host memory."""

    device = "cpu"

    def __init__(self, name, kernels):
        super().__init__(kernels)
        self.name = name

    # -- validation (nothing is mutated by these) -------------------------------------------
    def check_param(self, label, x):
        if not isinstance(x, np.ndarray):
            if is_device_array(x):
                raise TypeError(f"{label} is a GPU array ({_describe(x)}); the {self.name!r} "
                                f"backend steps host NumPy arrays; use backend='cuda'")
            raise TypeError(f"{label} must be a numpy.ndarray, got {_describe(x)}")
        check_dtype(label, x.dtype)
        if not x.flags.c_contiguous:
            raise ValueError(f"{label} must be C-contiguous (the step is fused over its memory "
                             f"in place); pass np.ascontiguousarray(...) and keep that array")
        if not x.flags.writeable:
            raise ValueError(f"{label} is read-only; the optimizer updates parameters in place")
        return x

    def check_grad(self, label, g, param):
        if g is None:
            raise TypeError(f"{label} is None; every parameter needs a gradient array")
        if not isinstance(g, np.ndarray):
            raise TypeError(f"{label} must be a numpy.ndarray, got {_describe(g)}")
        if g.dtype != param.dtype:
            raise TypeError(f"{label} has dtype {g.dtype}, its parameter has {param.dtype}")
        if g.shape != param.shape:
            raise ValueError(f"{label} has shape {g.shape}, its parameter has {param.shape}")
        if not g.flags.c_contiguous:
            raise ValueError(f"{label} must be C-contiguous")
        if g.size and overlaps(g, param):
            raise ValueError(f"{label} shares memory with its parameter")
        return g

    # -- memory ------------------------------------------------------------------------------
    @staticmethod
    def zeros(n, dtype):
        return np.zeros(n, dtype=dtype)

    @staticmethod
    def full(n, dtype, value):
        return np.full(n, value, dtype=dtype)

    @staticmethod
    def flat(x):
        return x.reshape(-1)

    @staticmethod
    def address(x):
        return x.__array_interface__["data"][0]

    @staticmethod
    def span(arrays):
        """A 1-D view covering ``arrays`` exactly, or None.

        Returns a view when the arrays are C-contiguous views of one allocation (one root array),
        laid end to end in this order with no gaps, all of one dtype: an Arena's views, or any
        such layout the caller made.  The optimizer then steps them with one kernel call.
        """
        if not arrays:
            return None
        dtype = arrays[0].dtype
        if any(a.dtype != dtype for a in arrays):
            return None
        full = [a for a in arrays if a.size]  # an empty view's address says nothing
        if not full:
            return arrays[0].reshape(-1)
        root = _root(full[0])
        if not root.flags.c_contiguous:
            return None
        start = end = full[0].__array_interface__["data"][0]
        for a in full:
            if _root(a) is not root or a.__array_interface__["data"][0] != end:
                return None
            end += a.nbytes
        root_start = root.__array_interface__["data"][0]
        raw = root.reshape(-1).view(np.uint8)
        return raw[start - root_start:end - root_start].view(dtype)

    @staticmethod
    def to_numpy(x):
        return np.array(x, copy=True)

    @staticmethod
    def copy_from_numpy(dst, src):
        np.copyto(dst, np.asarray(src).reshape(dst.shape), casting="same_kind")


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def check_dtype(label, dtype):
    if dtype not in _SUPPORTED:
        if dtype.kind == "f":
            raise TypeError(f"{label} has dtype {dtype}; fastopt steps float32 and float64 "
                            f"arrays (half precision is not supported yet)")
        raise TypeError(f"{label} has dtype {dtype}; parameters must be float32 or float64")


def overlaps(a, b):
    """True when two contiguous arrays' memory ranges intersect (cheap bounds check)."""
    a0 = a.__array_interface__["data"][0]
    b0 = b.__array_interface__["data"][0]
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def is_device_array(x):
    """True for a GPU array (anything exposing ``__cuda_array_interface__``, or an array of
    numba's CUDA simulator) that is not NumPy."""
    return not isinstance(x, np.ndarray) and (
        hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False))


def _load(name):
    if name == "numba":
        try:
            import numba  # noqa: F401
        except ImportError as exc:  # pragma: no cover - numba is a dependency
            raise RuntimeError(f"backend 'numba' is not available: {exc}") from None
        from . import cpu
        return HostBackend("numba", cpu)
    if name == "cython":
        try:
            from . import _cython  # compiled extension
        except ImportError as exc:
            raise RuntimeError("backend 'cython' is not available: the extension "
                               f"fastopt.kernels._cython was not built ({exc})") from None
        from . import cython as cython_kernels
        return HostBackend("cython", cython_kernels)
    if name == "numpy":
        from . import reference
        return HostBackend("numpy", reference)
    if name == "cuda":
        try:
            from . import cuda as cuda_kernels  # imports numba.cuda only now
        except ImportError as exc:
            raise RuntimeError(f"backend 'cuda' is not available: {exc} (install the 'cuda' "
                               f"extra: pip install fastopt[cuda])") from None
        return cuda_kernels.make_backend()
    raise ValueError(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)} or None")


def get_backend(name):
    """Return the backend called ``name``; raise ``RuntimeError`` if it is not available here."""
    if name not in BACKENDS:
        raise ValueError(f"backend: unknown backend {name!r}; choose one of "
                         f"{', '.join(repr(b) for b in BACKENDS)} or None")
    hit = _cache.get(name)
    if isinstance(hit, Backend):
        return hit
    if isinstance(hit, RuntimeError):
        raise RuntimeError(str(hit))
    try:
        backend = _load(name)
    except RuntimeError as exc:
        _cache[name] = exc
        raise
    _cache[name] = backend
    return backend


def resolve_backend(arrays, requested=None):
    """Pick the backend for ``arrays``.

    An explicitly requested backend is returned or raises ``RuntimeError``; it never falls back.
    With ``requested=None``, device arrays get ``'cuda'`` and host arrays the first available of
    ``'numba'``, ``'cython'``, ``'numpy'``.
    """
    if requested is not None:
        return get_backend(requested)
    arrays = list(arrays)
    on_device = [is_device_array(a) for a in arrays]
    if arrays and all(on_device):
        return get_backend("cuda")
    if any(on_device):
        raise TypeError("params mix GPU arrays and host arrays; one optimizer steps one kind")
    last = None
    for name in HOST_ORDER:
        try:
            return get_backend(name)
        except RuntimeError as exc:
            last = exc
    raise RuntimeError(f"no backend available: {last}")  # pragma: no cover


def backend_status():
    """``{name: (available, detail)}`` for every backend; imports what it checks."""
    out = {}
    for name in BACKENDS:
        try:
            backend = get_backend(name)
        except RuntimeError as exc:
            out[name] = (False, str(exc))
        except Exception as exc:  # a broken optional install should not break `info`
            out[name] = (False, f"{type(exc).__name__}: {exc}")
        else:
            detail = getattr(backend.kernels, "DETAIL", "")
            out[name] = (True, detail() if callable(detail) else detail)
    return out

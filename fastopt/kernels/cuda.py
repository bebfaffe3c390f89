"""numba.cuda backend: one fused, in-place grid-stride kernel launch per buffer.

Imported only when ``backend="cuda"`` is asked for (or a device Arena is built): this module is the
only place in fastopt that imports :mod:`numba.cuda`.  Under ``NUMBA_ENABLE_CUDASIM=1`` the same
kernels run in numba's CUDA simulator (slow, exact Python semantics): that is how the tests run on
machines without a GPU.

Kernels follow the contract of :mod:`fastopt.kernels`: 1-D contiguous *device* arrays first (a
state buffer the options do not use is a zero-length array and is never indexed), then the
``scalars`` tuple of :mod:`fastopt.kernels._scalars`, whose floats are already NumPy scalars of the
arrays' dtype, so a float32 buffer is updated in float32 arithmetic (``math.sqrt`` of a float32 is
``sqrtf``).  The arithmetic order is that of :mod:`fastopt.kernels.reference`.

Launch configuration is read from :mod:`fastopt.config` at call time: ``CUDA_THREADS_PER_BLOCK``
threads per block, ``min(CUDA_BLOCKS_PER_SM * SM count, ceil(n / threads))`` blocks, capped by
``CUDA_MAX_BLOCKS`` when that is > 0; a grid-stride loop covers the rest, so tests can shrink the
grid and exercise multi-block, multi-stride paths on tiny arrays.

Short names inside the kernels: ``p`` param, ``g`` grad, ``m`` exp_avg, ``v`` exp_avg_sq,
``vmax`` max_exp_avg_sq, ``b`` momentum_buffer, ``s`` square_avg, ``a`` grad_avg, ``h`` sum.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
from numba import cuda

from .. import config
from . import Backend, check_dtype

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam", "all_finite", "fill_zero", "DETAIL",
           "make_backend", "arena_fill", "launch_config", "SIMULATOR"]

#: True when numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = "simulator" in getattr(cuda.jit, "__module__", "")


# -- kernels -----------------------------------------------------------------------------------
@cuda.jit
def _sgd_kernel(p, g, b, lr, momentum, one_minus_dampening, weight_decay, grad_sign, nesterov,
                first_step, has_momentum):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = p.shape[0]
    if not has_momentum:
        for i in range(start, n, stride):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            p[i] = p[i] - lr * gi
    elif first_step:
        for i in range(start, n, stride):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            b[i] = gi
            if nesterov:
                d = gi + momentum * gi
            else:
                d = gi
            p[i] = p[i] - lr * d
    else:
        for i in range(start, n, stride):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            bi = momentum * b[i] + one_minus_dampening * gi
            b[i] = bi
            if nesterov:
                d = gi + momentum * bi
            else:
                d = bi
            p[i] = p[i] - lr * d


@cuda.jit
def _momentum_kernel(p, g, v, lr_over_bc, beta, one_minus_beta, weight_decay):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        vi = beta * v[i] + one_minus_beta * gi
        v[i] = vi
        p[i] = p[i] - lr_over_bc * vi


@cuda.jit
def _rmsprop_kernel(p, g, s, a, b, lr, alpha, one_minus_alpha, eps, weight_decay, grad_sign,
                    momentum, centered, has_momentum):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        gi = grad_sign * g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        si = alpha * s[i] + one_minus_alpha * gi * gi
        s[i] = si
        if centered:
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            den = math.sqrt(si - ai * ai) + eps
        else:
            den = math.sqrt(si) + eps
        if has_momentum:
            bi = momentum * b[i] + gi / den
            b[i] = bi
            p[i] = p[i] - lr * bi
        else:
            p[i] = p[i] - lr * gi / den


@cuda.jit
def _adagrad_kernel(p, g, h, clr, eps, weight_decay, grad_sign):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        gi = grad_sign * g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        hi = h[i] + gi * gi
        h[i] = hi
        p[i] = p[i] - clr * gi / (math.sqrt(hi) + eps)


@cuda.jit
def _adam_kernel(p, g, m, v, vmax, beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2,
                 decay, grad_sign, step_size, bc2_sqrt, amsgrad):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    n = p.shape[0]
    if amsgrad:
        for i in range(start, n, stride):
            pi = p[i] * decay
            gi = grad_sign * g[i]
            if l2 != 0:
                gi = gi + l2 * pi
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            wi = max(vmax[i], vi)
            vmax[i] = wi
            p[i] = pi - step_size * mi / (math.sqrt(wi) / bc2_sqrt + eps)
    else:
        for i in range(start, n, stride):
            pi = p[i] * decay
            gi = grad_sign * g[i]
            if l2 != 0:
                gi = gi + l2 * pi
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = pi - step_size * mi / (math.sqrt(vi) / bc2_sqrt + eps)


@cuda.jit
def _nonfinite_kernel(x, flag):
    """flag[0] = 1 when any element is NaN or +-Inf (benign race: every writer writes 1)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        xi = x[i]
        if math.isnan(xi) or math.isinf(xi):
            flag[0] = 1


@cuda.jit
def _fill_kernel(x, value):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        x[i] = value


# -- launching ---------------------------------------------------------------------------------
_sm_count = None


def _multiprocessors():
    global _sm_count
    if _sm_count is None:
        dev = cuda.get_current_device()
        # The simulator's device has no attributes; pretend it has 2 SMs.
        _sm_count = int(getattr(dev, "MULTIPROCESSOR_COUNT", 0) or 2)
    return _sm_count


def launch_config(n):
    """``(blocks, threads_per_block)`` for a buffer of ``n > 0`` elements, from fastopt.config."""
    tpb = config.CUDA_THREADS_PER_BLOCK
    blocks = min(config.CUDA_BLOCKS_PER_SM * _multiprocessors(), -(-n // tpb))
    if config.CUDA_MAX_BLOCKS > 0:
        blocks = min(blocks, config.CUDA_MAX_BLOCKS)
    return max(blocks, 1), tpb


def sgd(param, grad, momentum_buffer, scalars):
    n = param.shape[0]
    if n:
        _sgd_kernel[launch_config(n)](param, grad, momentum_buffer, *scalars)


def momentum(param, grad, velocity, scalars):
    n = param.shape[0]
    if n:
        _momentum_kernel[launch_config(n)](param, grad, velocity, *scalars)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, scalars):
    n = param.shape[0]
    if n:
        _rmsprop_kernel[launch_config(n)](param, grad, square_avg, grad_avg, momentum_buffer,
                                          *scalars)


def adagrad(param, grad, state_sum, scalars):
    n = param.shape[0]
    if n:
        _adagrad_kernel[launch_config(n)](param, grad, state_sum, *scalars)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars):
    n = param.shape[0]
    if n:
        _adam_kernel[launch_config(n)](param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq,
                                       *scalars)


_ZERO_FLAG = np.zeros(1, dtype=np.int32)
_flag = None


def all_finite(array):
    """True when every element of the 1-D device array is finite (one reduction launch, one
    4-byte copy back, which synchronizes)."""
    global _flag
    n = array.shape[0]
    if not n:
        return True
    if _flag is None:
        _flag = cuda.device_array(1, dtype=np.int32)
    _flag.copy_to_device(_ZERO_FLAG)
    _nonfinite_kernel[launch_config(n)](array, _flag)
    return int(_flag.copy_to_host()[0]) == 0


def _fill(x, value):
    n = x.size
    if n:
        flat = x.reshape(n) if x.ndim != 1 else x
        _fill_kernel[launch_config(n)](flat, x.dtype.type(value))


def fill_zero(x):
    """Set a contiguous device array to zero in place (``Arena.zero_grad``)."""
    _fill(x, 0)


def DETAIL():
    version = _numba_cuda_version()
    if SIMULATOR:
        return f"numba-cuda {version} simulator (NUMBA_ENABLE_CUDASIM=1): no GPU is used"
    dev = cuda.get_current_device()
    name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
    cc = ".".join(map(str, dev.compute_capability))
    return (f"{name}, compute capability {cc}, {_multiprocessors()} SMs; numba-cuda {version}"
            f"{_bindings()}")


def _numba_cuda_version():
    try:
        from importlib.metadata import version
        return version("numba-cuda")
    except Exception:  # pragma: no cover - numba's built-in CUDA target
        import numba
        return f"(numba {numba.__version__} built-in)"


def _bindings():
    try:
        from numba.cuda.cudadrv.driver import USE_NV_BINDING  # older numba-cuda
    except ImportError:
        return ", NVIDIA cuda-bindings"
    return ", NVIDIA cuda-bindings" if USE_NV_BINDING else ", ctypes driver bindings"


# -- array handling ----------------------------------------------------------------------------
def _describe(x):
    return type(x).__module__ + "." + type(x).__qualname__


def _is_device(x):
    # Numba's simulator arrays have no __cuda_array_interface__, only the __cuda_ndarray__ flag.
    return not isinstance(x, np.ndarray) and (
        hasattr(x, "__cuda_array_interface__") or getattr(x, "__cuda_ndarray__", False))


def _as_device(label, x):
    """A numba device array viewing ``x``'s memory (no copy), or TypeError."""
    if isinstance(x, np.ndarray):
        raise TypeError(
            f"{label} is a host numpy.ndarray; the 'cuda' backend updates GPU memory in place "
            f"and will not copy host arrays to the device and back on every step (a silent "
            f"slowdown). Move it once (numba.cuda.to_device(x), torch's x.cuda(), cupy.asarray) "
            f"and train with that array, or use a host backend")
    if getattr(x, "__cuda_ndarray__", False):
        return x  # a numba DeviceNDArray (or the simulator's)
    if hasattr(x, "__cuda_array_interface__"):
        cai = x.__cuda_array_interface__
        if cai.get("data", (0, False))[1]:
            raise ValueError(f"{label} is read-only; the optimizer updates parameters in place")
        return cuda.as_cuda_array(x)
    raise TypeError(f"{label} must be a GPU array (an object with __cuda_array_interface__: "
                    f"numba.cuda, CuPy, torch CUDA tensors), got {_describe(x)}")


def _address(d):
    """Device address of a numba device array (host address of the simulator's)."""
    if SIMULATOR:
        return d._ary.__array_interface__["data"][0]
    return d.__cuda_array_interface__["data"][0] or 0


def _contiguous(d):
    return d.size <= 1 or d.is_c_contiguous()


# Device buffers made by Arena (weakly held): id -> (start address, end address, weakref).
_roots = {}


def register_buffer(buf):
    """Record a 1-D device allocation whose adjacent views :meth:`CudaBackend.span` may join."""
    key = id(buf)
    start = _address(buf)

    def forget(_ref, key=key):
        _roots.pop(key, None)

    _roots[key] = (start, start + buf.nbytes, weakref.ref(buf, forget))


def _host_span(arrays):
    from . import HostBackend
    return HostBackend.span(arrays)


class CudaBackend(Backend):
    """Array handling for numba.cuda device arrays (or anything with __cuda_array_interface__,
    viewed zero-copy)."""

    name = "cuda"
    device = "cuda"

    def __init__(self, kernels):
        super().__init__(kernels)

    # -- validation (nothing is mutated by these) -------------------------------------------
    def check_param(self, label, x):
        d = _as_device(label, x)
        check_dtype(label, np.dtype(d.dtype))
        if not _contiguous(d):
            raise ValueError(f"{label} must be C-contiguous (the step is fused over its memory "
                             f"in place); make a contiguous copy on the device and keep that")
        return d

    def check_grad(self, label, g, param):
        if g is None:
            raise TypeError(f"{label} is None; every parameter needs a gradient array")
        if isinstance(g, np.ndarray) or not _is_device(g):
            raise TypeError(f"{label} must be a GPU array like its parameter (the 'cuda' "
                            f"backend does not copy host gradients per step), got "
                            f"{_describe(g)}")
        d = _as_device(label, g) if not getattr(g, "__cuda_ndarray__", False) else g
        if d.dtype != param.dtype:
            raise TypeError(f"{label} has dtype {d.dtype}, its parameter has {param.dtype}")
        if tuple(d.shape) != tuple(param.shape):
            raise ValueError(f"{label} has shape {tuple(d.shape)}, its parameter has "
                             f"{tuple(param.shape)}")
        if not _contiguous(d):
            raise ValueError(f"{label} must be C-contiguous")
        if d.size and param.size:
            a0, b0 = _address(d), _address(param)
            if a0 < b0 + param.nbytes and b0 < a0 + d.nbytes:
                raise ValueError(f"{label} shares memory with its parameter")
        return d

    # -- memory ------------------------------------------------------------------------------
    @staticmethod
    def zeros(n, dtype):
        x = cuda.device_array(n, dtype=dtype)
        _fill(x, 0)
        return x

    @staticmethod
    def full(n, dtype, value):
        x = cuda.device_array(n, dtype=dtype)
        _fill(x, value)
        return x

    @staticmethod
    def flat(x):
        return x if x.ndim == 1 else x.reshape(x.size)

    @staticmethod
    def address(x):
        return _address(x)

    @staticmethod
    def span(arrays):
        """A 1-D device view covering ``arrays`` exactly, or None.

        The arrays must be contiguous, of one dtype, laid end to end in this order inside one
        allocation: a device Arena's buffer (registered), or, found through the driver, any
        one allocation (on the simulator: one NumPy root array).  Zero-size arrays are skipped.
        """
        if not arrays:
            return None
        dtype = arrays[0].dtype
        start = end = None
        for a in arrays:
            if a.dtype != dtype or not _contiguous(a):
                return None
            addr = _address(a)
            if not a.size and any(r0 <= addr <= r1 for r0, r1, _ in _roots.values()):
                continue  # an empty view of an Arena buffer (wherever its pointer says it is)
            if start is None:
                start = end = addr
            elif addr != end:
                return None
            end += a.nbytes
        if not start:
            return None  # a zero-size array with no memory: belongs to no allocation
        isz = np.dtype(dtype).itemsize
        for r0, r1, ref in list(_roots.values()):
            root = ref()
            if root is not None and r0 <= start and end <= r1 and root.dtype == dtype:
                return root[(start - r0) // isz:(end - r0) // isz]
        if SIMULATOR:
            view = _host_span([a._ary for a in arrays])
            return None if view is None else type(arrays[0])(view)
        return _driver_span(arrays, start, end, dtype)  # pragma: no cover - needs a GPU

    @staticmethod
    def to_numpy(x):
        return x.copy_to_host()

    @staticmethod
    def copy_from_numpy(dst, src):
        src = np.asarray(src).astype(dst.dtype, casting="same_kind", copy=False)
        src = np.ascontiguousarray(src.reshape(tuple(dst.shape)))
        if dst.size:
            dst.copy_to_device(src)


def _driver_span(arrays, start, end, dtype):  # pragma: no cover - needs a GPU
    """Join adjacent views of one allocation that fastopt did not make (e.g. slices of one flat
    torch tensor): ``cuMemGetAddressRange`` says whether [start, end) lies in one allocation."""
    try:
        from numba.cuda.cudadrv import driver
        base, stop = driver.device_extents(arrays[0])
        if not (base <= start and end <= stop):
            return None
        desc = {"shape": ((end - start) // np.dtype(dtype).itemsize,), "strides": None,
                "typestr": np.dtype(dtype).str, "data": (start, False), "version": 3}
        return cuda.from_cuda_array_interface(desc, owner=tuple(arrays), sync=False)
    except Exception:
        return None


def arena_fill(arena, arrays, order, pviews, gviews):
    """Build a device Arena's buffers: one parameter and one zeroed gradient allocation per
    dtype, the given arrays (host or device) copied in, views written to ``pviews``/``gviews``
    and the buffers registered so the optimizer's ``span`` joins their views."""
    if not cuda.is_available():
        raise RuntimeError("Arena(device='cuda'): CUDA is not available here")
    for dtype, idx in order.items():
        sizes = [int(np.prod(arrays[j].shape)) for j in idx]
        total = sum(sizes)
        pbuf = cuda.device_array(total, dtype=dtype)
        gbuf = CudaBackend.zeros(total, dtype)
        off = 0
        for j, n in zip(idx, sizes):
            a = arrays[j]
            shape = tuple(a.shape)
            pv = pbuf[off:off + n]
            if n:
                if _is_device(a):
                    src = _as_device(f"params[{j}]", a)
                    if not _contiguous(src):
                        raise ValueError(f"params[{j}] must be C-contiguous")
                    pv.copy_to_device(src.reshape(n) if src.ndim != 1 else src)
                else:
                    pv.copy_to_device(np.ascontiguousarray(np.asarray(a)).reshape(n))
            pviews[j] = pv.reshape(shape) if shape != (n,) else pv
            gv = gbuf[off:off + n]
            gviews[j] = gv.reshape(shape) if shape != (n,) else gv
            off += n
        register_buffer(pbuf)
        register_buffer(gbuf)
        arena.buffers[np.dtype(dtype)] = (pbuf, gbuf)


def make_backend():
    """The 'cuda' backend, or ``RuntimeError`` when no CUDA device (or simulator) is usable."""
    try:
        ok = cuda.is_available()
    except Exception as exc:  # pragma: no cover - broken driver installs
        raise RuntimeError(f"backend 'cuda' is not available: {type(exc).__name__}: {exc}") \
            from None
    if not ok:
        raise RuntimeError("backend 'cuda' is not available: numba.cuda.is_available() is False "
                           "(no CUDA GPU or driver found; NUMBA_ENABLE_CUDASIM=1 runs the "
                           "simulator instead)")
    import sys
    return CudaBackend(sys.modules[__name__])

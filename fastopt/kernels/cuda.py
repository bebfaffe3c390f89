"""numba.cuda backend: the generated grid-stride kernels of :mod:`fastopt.kernels._codegen`.

Imported only when ``backend="cuda"`` is asked for (or a device Arena is built): this module is the
only place in fastopt that imports :mod:`numba.cuda`.  The rules of :mod:`fastopt.kernels.rules`
are device functions (force-inlined) of a generated module, with one grid-stride kernel per
variant (rule, dtype, flags).  Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in numba's
CUDA simulator (slow, exact Python semantics): that is how the tests run on machines without a
GPU.  **None of this has run on a real GPU yet** (no GPU was available to the sessions that
wrote it).

Arrays are 1-D contiguous *device* arrays; an optional state buffer the flags leave unused is
a zero-length device array and is never indexed.  The step's scalars are kernel arguments
(doubles, cast to the arrays' dtype inside the kernel, so a float32 buffer is updated in
float32 arithmetic).

Launch configuration is read from :mod:`fastopt.config` at call time: ``CUDA_THREADS_PER_BLOCK``
threads per block, ``min(CUDA_BLOCKS_PER_SM * SM count, ceil(n / threads))`` blocks, capped by
``CUDA_MAX_BLOCKS`` when that is > 0; a grid-stride loop covers the rest, so tests can shrink the
grid and exercise multi-block, multi-stride paths on tiny arrays.
"""
from __future__ import annotations

import math
import weakref

import numpy as np
from numba import cuda

from .. import config
from . import Backend, HostBackend, _codegen, check_dtype, check_grad_dtype
from . import formats as F
from ._generated import load, load_source

__all__ = ["CudaBackend", "fill_zero", "make_backend", "arena_fill", "launch_config",
           "SIMULATOR", "module"]

#: True when numba's CUDA simulator stands in for a GPU (``NUMBA_ENABLE_CUDASIM=1``).
SIMULATOR = "simulator" in getattr(cuda.jit, "__module__", "")
_module = None


def module():
    """The generated numba.cuda module (written and imported on first use)."""
    global _module
    if _module is None:
        _module = load("cuda")
    return _module


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
def _nonfinite_bits_kernel(x, exponent, flag):
    """flag[0] = 1 when any 16-bit float (its uint16 bits) has every exponent bit set."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        if (x[i] & exponent) == exponent:
            flag[0] = 1


@cuda.jit
def _sumsq_kernel(x, out):
    """out[0] += sum of x*x (each thread's partial sum in float64, one atomic add per thread;
    written for the simulator and never profiled on a GPU)."""
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    acc = 0.0
    for i in range(start, x.shape[0], stride):
        v = float(x[i])
        acc += v * v
    cuda.atomic.add(out, 0, acc)


@cuda.jit
def _scale_kernel(x, factor):
    start = cuda.grid(1)
    stride = cuda.gridsize(1)
    for i in range(start, x.shape[0], stride):
        x[i] = x[i] * factor


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


def _q8_launch(n):
    """Launch of an 8-bit-state kernel: 256 threads per block, a thread block per block of 256
    elements up to the usual cap on blocks (grid-stride beyond)."""
    nblk = -(-n // 256)
    blocks = min(nblk, config.CUDA_BLOCKS_PER_SM * _multiprocessors())
    if config.CUDA_MAX_BLOCKS > 0:
        blocks = min(blocks, config.CUDA_MAX_BLOCKS)
    return max(blocks, 1), 256


_ZERO_FLAG = np.zeros(1, dtype=np.int32)
_flag = None


def _all_finite(array):
    """True when every element of the 1-D device array is finite (one reduction launch, one
    4-byte copy back, which synchronizes)."""
    global _flag
    n = array.shape[0]
    if not n:
        return True
    if _flag is None:
        _flag = cuda.device_array(1, dtype=np.int32)
    _flag.copy_to_device(_ZERO_FLAG)
    exponent = F.exponent_bits(array.dtype)
    if exponent is not None:
        _nonfinite_bits_kernel[launch_config(n)](array.view(np.uint16), np.uint16(exponent),
                                                 _flag)
    else:
        _nonfinite_kernel[launch_config(n)](array, _flag)
    return int(_flag.copy_to_host()[0]) == 0


def _fill(x, value):
    n = x.size
    if n:
        flat = x.reshape(n) if x.ndim != 1 else x
        if F.exponent_bits(x.dtype) is not None:   # 16-bit floats: fill their bit pattern
            bits = np.array(value, dtype=x.dtype).view(np.uint16)[()]
            _fill_kernel[launch_config(n)](flat.view(np.uint16), bits)
        else:
            _fill_kernel[launch_config(n)](flat, x.dtype.type(value))


def fill_zero(x):
    """Set a contiguous device array to zero in place (``Arena.zero_grad``)."""
    _fill(x, 0)


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


def _view(d, fmt):
    """A device array as the kernels see it (16-bit floats as their uint16 bit patterns)."""
    if fmt in (None, F.F32, F.F64):
        return d
    return d.view(F.view_dtype(fmt))


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


def _root_of(start, end, dtype):
    """The registered Arena buffer holding [start, end), or None."""
    for r0, r1, ref in list(_roots.values()):
        root = ref()
        if root is not None and r0 <= start and end <= r1 and root.dtype == dtype:
            return r0, root
    return None


class CudaBackend(Backend):
    """Array handling for numba.cuda device arrays (or anything with __cuda_array_interface__,
    viewed zero-copy), and the generated kernels."""

    name = "cuda"
    device = "cuda"

    # -- kernels -----------------------------------------------------------------------------
    def _compile(self, kernel):
        if kernel.native:
            return getattr(module(), kernel.name)
        ctag = "f64" if kernel.dtype == np.float64 else "f32"
        mod = load_source(
            f"fastopt_cuda_{_codegen.source_hash()}_{kernel.name}",
            lambda: _codegen.layout_source("cuda", kernel.sig, ctag, kernel.flags,
                                           kernel.formats, kernel.rounding, kernel.name))
        return getattr(mod, kernel.name)

    _compile_grid = _compile

    def bind(self, kernel, rows, bases=None, seed=0):
        kern = kernel.impl
        empty = cuda.device_array(0, dtype=kernel.dtype)
        checked = self._check_rows(kernel, rows)
        bases = list(bases) if bases is not None else [0] * len(checked)
        calls = []
        A = len(kernel.sig.arrays)
        for k, ((n, row), base) in enumerate(zip(checked, bases)):
            if n:
                args = tuple(empty if a is None else _view(a, f)
                             for a, f in zip(row, kernel.formats)) + tuple(row[A:])
                calls.append((n, args, () if kernel.native else (int(base),), k))
        layout, seed = not kernel.native, int(seed)
        ns = len(kernel.sig.sums)
        # written 8-bit state: one thread block of 256 per block of 256 elements (its absmax
        # reduction)
        grid = _q8_launch if any(a in kernel.sig.written for a in kernel.quantized) \
            else launch_config
        if ns:   # a reduction: per row, float64 totals added atomically
            out = cuda.device_array((len(checked), ns), dtype=np.float64)
            zeros = np.zeros((len(checked), ns), dtype=np.float64)

            def reduce(scalars, step=0):
                out.copy_to_device(zeros)
                for n, args, extra, k in calls:
                    if layout:
                        kern[grid(n)](*args, *scalars, *extra, int(step), seed, out[k])
                    else:
                        kern[launch_config(n)](*args, *scalars, out[k])
                return [tuple(r) for r in out.copy_to_host().tolist()]
            reduce.rows = [c[0] for c in calls]
            return reduce

        def call(scalars, step=0):
            for n, args, extra, _ in calls:
                if layout:
                    kern[grid(n)](*args, *scalars, *extra, int(step), seed)
                else:
                    kern[grid(n)](*args, *scalars)
        call.rows = [c[0] for c in calls]
        return call

    def _grid(self, kernel, arrays, n, m, R, scalars, rnd):
        """A block of threads per row (grid-stride over the rows), the sums added atomically in
        float64 into device arrays, copied back to the host."""
        sig = kernel.sig
        ns, nc = len(sig.sums), len(sig.col_sums)
        o_rows = cuda.to_device(np.zeros((R, ns) if ns else (1, 1)))
        o_cols = cuda.to_device(np.zeros((R // n, nc, m) if nc else (1, 1, 1)))
        threads = min(128, 1 << max(0, (m - 1).bit_length()))
        blocks = max(1, min(R, 65535))
        if kernel.native:
            kernel.impl[blocks, threads](*arrays, *scalars, n, m, o_rows, o_cols)
        else:      # (16-bit arrays as their bits; stochastic rounding's base, seed, step)
            base, seed, step = rnd
            kernel.impl[blocks, threads](*(_view(a, f) for a, f in zip(arrays, kernel.formats)),
                                         *scalars, n, m, o_rows, o_cols, base, step, seed)
        rows = o_rows.copy_to_host() if ns else np.zeros((R, 0))
        cols = o_cols.copy_to_host() if nc else np.zeros((R // n, 0, m))
        return rows, cols

    def all_finite(self, array):
        return _all_finite(array)

    def sumsq(self, array):
        """``sum(x*x)`` of a 1-D device array, accumulated in float64 (16-bit arrays are
        decoded on the host: not a fast path)."""
        n = array.shape[0]
        if not n:
            return 0.0
        if F.exponent_bits(array.dtype) is not None:
            return F.sumsq(array.copy_to_host())
        out = cuda.to_device(np.zeros(1, dtype=np.float64))
        _sumsq_kernel[launch_config(n)](array, out)
        return float(out.copy_to_host()[0])

    def scale(self, array, factor):
        """``array *= factor`` in place (16-bit arrays through the host: not a fast path)."""
        n = array.shape[0]
        if not n:
            return
        if F.exponent_bits(array.dtype) is not None:
            h = array.copy_to_host()
            F.scale(h, factor)
            array.copy_to_device(h)
            return
        _scale_kernel[launch_config(n)](array, array.dtype.type(factor))

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
        check_grad_dtype(label, d.dtype, param.dtype)
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
    def locate(d):
        """``(allocation key, start, nbytes)`` for :func:`fastopt._layout.runs`: a device
        Arena's buffer (registered), or on the simulator the host root array; on a GPU, the
        driver's allocation (``cuMemGetAddressRange``)."""
        if not _contiguous(d):
            return None, 0, d.nbytes
        start = _address(d)
        dtype = np.dtype(d.dtype)
        if not d.size:
            return None, start, 0
        hit = _root_of(start, start + d.nbytes, dtype)
        if hit is not None:
            return ("arena", hit[0], dtype), start, d.nbytes
        if SIMULATOR:
            key, _, _ = HostBackend.locate(d._ary)
            return key, start, d.nbytes
        return _driver_key(d, dtype), start, d.nbytes  # pragma: no cover - needs a GPU

    @staticmethod
    def join(arrays):
        """One 1-D device view over ``arrays`` (a run found by :meth:`runs`)."""
        full = [a for a in arrays if a.size]
        if not full:
            return CudaBackend.flat(arrays[0])
        if len(full) == 1:
            return CudaBackend.flat(full[0])
        dtype = np.dtype(full[0].dtype)
        start = _address(full[0])
        end = _address(full[-1]) + full[-1].nbytes
        hit = _root_of(start, end, dtype)
        if hit is not None:
            r0, root = hit
            isz = dtype.itemsize
            return root[(start - r0) // isz:(end - r0) // isz]
        if SIMULATOR:
            return type(full[0])(HostBackend.join([a._ary for a in full]))
        return _driver_span(full, start, end, dtype)  # pragma: no cover - needs a GPU

    @classmethod
    def span(cls, arrays):
        """A 1-D device view covering ``arrays`` exactly when they form one run, else None."""
        try:
            return super().span(arrays)
        except Exception:  # pragma: no cover - a driver that cannot say: not joined
            return None

    @staticmethod
    def to_numpy(x):
        return x.copy_to_host()

    @staticmethod
    def copy_from_numpy(dst, src):
        src = np.asarray(src)
        if src.dtype != dst.dtype:
            src = F.convert(src, dst.dtype)
        src = np.ascontiguousarray(src.reshape(tuple(dst.shape)))
        if dst.size:
            dst.copy_to_device(src)

    @staticmethod
    def copy(dst, src):
        """Device-to-device copy of equal-shaped arrays (16-bit floats as their uint16 bits:
        the simulator types bfloat16 arrays inconsistently, bytes are bytes on a GPU)."""
        if dst.size:
            if dst.dtype.itemsize == 2:
                dst, src = dst.view(np.uint16), src.view(np.uint16)
            dst.copy_to_device(src)

    def detail(self):
        version = _numba_cuda_version()
        if SIMULATOR:
            return f"numba-cuda {version} simulator (NUMBA_ENABLE_CUDASIM=1): no GPU is used"
        dev = cuda.get_current_device()
        name = dev.name.decode() if isinstance(dev.name, bytes) else str(dev.name)
        cc = ".".join(map(str, dev.compute_capability))
        return (f"{name}, compute capability {cc}, {_multiprocessors()} SMs; numba-cuda {version}"
                f"{_bindings()}")


def _driver_key(d, dtype):  # pragma: no cover - needs a GPU
    """The driver's allocation holding ``d`` (its base address), as a layout key."""
    try:
        from numba.cuda.cudadrv import driver
        base, _stop = driver.device_extents(d)
        return ("alloc", int(base), dtype)
    except Exception:
        return None


def _driver_span(arrays, start, end, dtype):  # pragma: no cover - needs a GPU
    """A device view of [start, end) inside one allocation that fastopt did not make (e.g.
    slices of one flat torch tensor)."""
    desc = {"shape": ((end - start) // np.dtype(dtype).itemsize,), "strides": None,
            "typestr": np.dtype(dtype).str, "data": (start, False), "version": 3}
    return cuda.from_cuda_array_interface(desc, owner=tuple(arrays), sync=False)


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
    return CudaBackend()

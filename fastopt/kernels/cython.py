"""Cython backend: thin wrappers over the compiled extension :mod:`fastopt.kernels._cython`.

Same contract as every backend (see :mod:`fastopt.kernels`): 1-D C-contiguous arrays of one dtype
(float32 or float64) first, then the ``scalars`` tuple of :mod:`fastopt.kernels._scalars`.  Each
wrapper checks that every array has the parameter's dtype (a mismatch raises ``TypeError`` naming
the argument, instead of Cython's "No matching signature"), unpacks ``scalars``, and calls the
float or double specialization of the fused kernel directly (no fused-dispatch lookup per call),
passing :data:`fastopt.config.PARALLEL_THRESHOLD` read at call time: shorter buffers run on the
calling thread, longer ones are split over OpenMP threads (when the extension was built with it).

The portable extension ``_cython`` targets the baseline ISA.  On x86-64 the build also makes
``_cython_avx2`` from the same source (AVX2 without FMA: the same arithmetic, so the same bits, in
8-wide vectors); it is used when the CPU has AVX2, unless ``FASTOPT_CYTHON_ISA=baseline``.
"""
from __future__ import annotations

import os

import numpy as np

from .. import config
from . import _cython

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam", "all_finite", "DETAIL", "OPENMP",
           "ISA", "variants"]

_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


def _cpu_has(feature):
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get(feature, False))


def variants():
    """``{name: extension module}`` of the builds importable here that this CPU can run."""
    found = {"baseline": _cython}
    if _cpu_has("AVX2"):
        try:
            from . import _cython_avx2
        except ImportError:
            pass
        else:
            found["avx2"] = _cython_avx2
    return found


def _specializations(fused):
    return {_F32: fused["float"], _F64: fused["double"]}


def _use(name):
    """Bind the wrappers to the extension build ``name`` (``'baseline'`` or ``'avx2'``)."""
    global ISA, OPENMP, _ext, _SGD, _MOMENTUM, _RMSPROP, _ADAGRAD, _ADAM, _ALL_FINITE
    ext = variants()[name]
    ISA, _ext = name, ext
    OPENMP = bool(ext.OPENMP)
    _SGD = _specializations(ext.sgd)
    _MOMENTUM = _specializations(ext.momentum)
    _RMSPROP = _specializations(ext.rmsprop)
    _ADAGRAD = _specializations(ext.adagrad)
    _ADAM = _specializations(ext.adam)
    _ALL_FINITE = _specializations(ext.all_finite)


#: Which build the wrappers call: ``'avx2'`` where built and supported, else ``'baseline'``.
ISA = "baseline"
#: True when that build was compiled with OpenMP.
OPENMP = False
_use("baseline" if os.environ.get("FASTOPT_CYTHON_ISA", "") == "baseline"
     else "avx2" if "avx2" in variants() else "baseline")


def _kernel(table, param, **others):
    """The specialization for ``param``'s dtype, after checking every other array matches it."""
    dtype = getattr(param, "dtype", None)
    kernel = table.get(dtype)
    if kernel is None:
        raise TypeError(f"param: the cython backend supports float32 and float64 arrays, "
                        f"got {dtype if dtype is not None else type(param).__name__}")
    for name, arr in others.items():
        got = getattr(arr, "dtype", None)
        if got != dtype:
            raise TypeError(f"{name}: dtype {got} does not match param's dtype {dtype} "
                            f"(all arrays of one update share one dtype)")
    return kernel


def sgd(param, grad, momentum_buffer, scalars):
    k = _kernel(_SGD, param, grad=grad, momentum_buffer=momentum_buffer)
    k(param, grad, momentum_buffer, *scalars, config.PARALLEL_THRESHOLD)


def momentum(param, grad, velocity, scalars):
    k = _kernel(_MOMENTUM, param, grad=grad, velocity=velocity)
    k(param, grad, velocity, *scalars, config.PARALLEL_THRESHOLD)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, scalars):
    k = _kernel(_RMSPROP, param, grad=grad, square_avg=square_avg, grad_avg=grad_avg,
                momentum_buffer=momentum_buffer)
    k(param, grad, square_avg, grad_avg, momentum_buffer, *scalars, config.PARALLEL_THRESHOLD)


def adagrad(param, grad, state_sum, scalars):
    k = _kernel(_ADAGRAD, param, grad=grad, sum=state_sum)
    k(param, grad, state_sum, *scalars, config.PARALLEL_THRESHOLD)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars):
    k = _kernel(_ADAM, param, grad=grad, exp_avg=exp_avg, exp_avg_sq=exp_avg_sq,
                max_exp_avg_sq=max_exp_avg_sq)
    k(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *scalars, config.PARALLEL_THRESHOLD)


def all_finite(array):
    """True when every element is finite."""
    return bool(_kernel(_ALL_FINITE, array)(array, config.PARALLEL_THRESHOLD))


def DETAIL():
    """One line for ``backend_status()`` / ``python -m fastopt info``."""
    isa = "AVX2 kernels" if ISA == "avx2" else "baseline-ISA kernels"
    if OPENMP:
        n = _ext.max_threads()
        return f"built with OpenMP, {n} thread{'s' if n != 1 else ''}, {isa}"
    return f"built without OpenMP (single-threaded), {isa}"

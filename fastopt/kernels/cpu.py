"""Numba CPU backend: the generated ``prange`` loops of :mod:`fastopt.kernels._codegen`.

Every variant (rule, dtype, flags) is a pair of loops in the generated module: ``*_par``
(``parallel=True``: split over Numba's threads) for buffers of at least
``fastopt.config.PARALLEL_THRESHOLD`` elements (read at call time) and ``*_ser`` below it, where
waking threads costs more than it saves.  Both compile on first use and are cached on disk.

``bind`` compiles the variant for the rows' array types once and keeps each overload's compiled
entry point, so a step calls machine code directly, without Numba's per-call type dispatch.

fastmath uses :data:`fastopt.config.FASTMATH_FLAGS` (no ``nnan``/``ninf``): NaN and Inf
propagate, and :meth:`all_finite` is not optimized away.  How the generated code was checked
(packed ``vsqrtps``/``vdivps``, no ``fpext`` in float32 loops): tests/test_codegen.py inspects
the LLVM IR and assembly of every float32 variant that a test compiles.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from .. import config
from . import HostBackend
from ._generated import load

__all__ = ["NumbaBackend", "module"]

_FLAGS = set(config.FASTMATH_FLAGS)
_module = None


def module():
    """The generated Numba module (written and imported on first use)."""
    global _module
    if _module is None:
        _module = load("numba")
    return _module


def _all_finite(x):
    bad = 0
    for i in prange(x.size):
        if not math.isfinite(x[i]):
            bad += 1
    return bad == 0


_all_finite_par = njit(parallel=True, fastmath=_FLAGS, error_model="numpy", cache=True,
                       nogil=True)(_all_finite)


@njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)
def _all_finite_ser(x):
    for i in range(x.size):
        if not math.isfinite(x[i]):
            return False
    return True


def _entry(dispatcher, types):
    """The compiled entry point of ``dispatcher`` for argument ``types`` (compiles or loads
    from the cache when needed): callable like the dispatcher, minus type dispatch."""
    dispatcher.compile(types)
    return dispatcher.overloads[types].entry_point


class NumbaBackend(HostBackend):
    name = "numba"

    def _compile(self, kernel):
        mod = module()
        return getattr(mod, kernel.name + "_par"), getattr(mod, kernel.name + "_ser")

    def bind(self, kernel, rows):
        par, ser = kernel.impl
        n_scalars = len(kernel.sig.scalars)
        empty = np.empty(0, dtype=kernel.dtype)
        calls = []
        for n, row in self._check_rows(kernel, rows):
            if not n:
                continue
            args = tuple(empty if a is None else a for a in row)
            types = tuple(numba.typeof(a) for a in args) + (numba.float64,) * n_scalars
            calls.append((n, _entry(par, types), _entry(ser, types), args))

        def call(scalars):
            threshold = config.PARALLEL_THRESHOLD
            for n, p, s, args in calls:
                (p if n >= threshold else s)(*args, *scalars)
        call.rows = [c[0] for c in calls]
        return call

    def all_finite(self, array):
        k = _all_finite_par if array.size >= config.PARALLEL_THRESHOLD else _all_finite_ser
        return bool(k(array))

    def detail(self):
        return (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
                f"threading layer {_threading_layer()}")


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet in this process
        return f"{numba.config.THREADING_LAYER} (not initialized yet)"

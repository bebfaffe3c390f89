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
from . import HostBackend, _codegen
from . import formats as F
from ._generated import load, load_source

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


def _all_finite_bits(x, e):
    bad = 0
    for i in prange(x.size):
        if (x[i] & e) == e:
            bad += 1
    return bad == 0


_all_finite_bits_par = njit(parallel=True, error_model="numpy", cache=True,
                            nogil=True)(_all_finite_bits)


@njit(error_model="numpy", cache=True, nogil=True)
def _all_finite_bits_ser(x, e):
    for i in range(x.size):
        if (x[i] & e) == e:
            return False
    return True


def _entry(dispatcher, types):
    """The compiled entry point of ``dispatcher`` for argument ``types`` (compiles or loads
    from the cache when needed): callable like the dispatcher, minus type dispatch."""
    dispatcher.compile(types)
    return dispatcher.overloads[types].entry_point


class _Row:
    """One bound row of a Numba kernel: its size, arguments, and the entry points of the
    threaded (``par``) and serial (``ser``) loops, each compiled (or loaded from the cache) when
    first needed: a row below ``PARALLEL_THRESHOLD`` never compiles the threaded loop and one
    above it never the serial one (the threaded compile is the slow one: 3-4x the serial).
    :meth:`NumbaBackend.bind` resolves the loop the current threshold picks, so a compile
    error surfaces there, before any array is written."""

    __slots__ = ("n", "args", "extra", "k", "par", "ser", "_d", "_types")

    def __init__(self, n, par, ser, types, args, extra, k):
        self.n, self.args, self.extra, self.k = n, args, extra, k
        self._d, self._types = (par, ser), types
        self.par = self.ser = None

    def fn(self, threshold):
        if self.n >= threshold:
            if self.par is None:
                self.par = _entry(self._d[0], self._types)
            return self.par
        if self.ser is None:
            self.ser = _entry(self._d[1], self._types)
        return self.ser


def _view(a, fmt):
    """The array as the loops see it (16-bit floats as their uint16 bit patterns)."""
    return a if fmt in (None, F.F32, F.F64, F.Q8S, F.Q8U) else a.view(F.view_dtype(fmt))


class NumbaBackend(HostBackend):
    name = "numba"

    def _compile(self, kernel):
        if kernel.native:
            mod = module()
        else:  # a storage layout: its own generated module, written when first used
            ctag = "f64" if kernel.dtype == np.float64 else "f32"
            mod = load_source(
                f"fastopt_numba_{_codegen.source_hash()}_{kernel.name}",
                lambda: _codegen.layout_source("numba", kernel.sig, ctag, kernel.flags,
                                               kernel.formats, kernel.rounding, kernel.name))
        return getattr(mod, kernel.name + "_par"), getattr(mod, kernel.name + "_ser")

    _compile_grid = _compile

    def bind(self, kernel, rows, bases=None, seed=0):
        par, ser = kernel.impl
        n_scalars = len(kernel.sig.scalars)
        checked = self._check_rows(kernel, rows)
        bases = list(bases) if bases is not None else [0] * len(checked)
        calls = []
        for k, ((n, row), base) in enumerate(zip(checked, bases)):
            if not n:
                continue
            A = len(kernel.sig.arrays)
            args = tuple(np.empty(0, dtype=kernel.dtype) if a is None else _view(a, f)
                         for a, f in zip(row, kernel.formats)) + tuple(row[A:])  # + absmax
            types = tuple(numba.typeof(a) for a in args) + (numba.float64,) * n_scalars
            extra = ()
            if not kernel.native:
                types += (numba.int64,) * 3
                extra = (int(base),)
            row = _Row(n, par, ser, types, args, extra, k)
            row.fn(config.PARALLEL_THRESHOLD)
            calls.append(row)
        layout = not kernel.native
        seed = int(seed)
        if kernel.sig.sums:      # a reduction: the totals of every row
            zero = (0.0,) * len(kernel.sig.sums)
            nrows = len(checked)

            def reduce(scalars, step=0):
                threshold = config.PARALLEL_THRESHOLD
                out = [zero] * nrows
                for c in calls:
                    fn = c.fn(threshold)
                    out[c.k] = tuple(fn(*c.args, *scalars, *c.extra, int(step), seed) if layout
                                     else fn(*c.args, *scalars))
                return out
            reduce.rows = [c.n for c in calls]
            return reduce

        def call(scalars, step=0):
            threshold = config.PARALLEL_THRESHOLD
            for c in calls:
                fn = (c.par if c.n >= threshold else c.ser) or c.fn(threshold)
                if layout:
                    fn(*c.args, *scalars, *c.extra, int(step), seed)
                else:
                    fn(*c.args, *scalars)
        call.rows = [c.n for c in calls]
        return call

    def _grid_loop(self, kernel, arrays, n, m, R, scalars, o_rows, o_part, rnd):
        par, ser = kernel.impl
        fn = par if R * m >= config.PARALLEL_THRESHOLD else ser
        if kernel.native:
            fn(*arrays, *scalars, n, m, o_rows, o_part)
        else:      # (16-bit arrays as their bits; stochastic rounding's base, seed, step)
            base, seed, step = rnd
            fn(*(_view(a, f) for a, f in zip(arrays, kernel.formats)), *scalars, n, m, o_rows,
               o_part, base, step, seed)

    def all_finite(self, array):
        big = array.size >= config.PARALLEL_THRESHOLD
        exponent = F.exponent_bits(array.dtype)
        if exponent is not None:   # bfloat16/float16: Inf and NaN have every exponent bit set
            k = _all_finite_bits_par if big else _all_finite_bits_ser
            return bool(k(array.view(np.uint16), np.uint16(exponent)))
        k = _all_finite_par if big else _all_finite_ser
        return bool(k(array))

    def detail(self):
        return (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
                f"threading layer {_threading_layer()}")


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet in this process
        return f"{numba.config.THREADING_LAYER} (not initialized yet)"

"""Cython backend: the compiled extension built from :mod:`fastopt.kernels._codegen`'s ``.pyx``.

setup.py generates the ``.pyx`` from the rules at build time and compiles it three times on
x86-64: ``_cython`` for the baseline ISA, ``_cython_avx2`` (AVX2 without FMA) and
``_cython_avx512`` (AVX-512 F/DQ/BW/VL, 16-wide vectors), all with ``-ffp-contract=off``: the
same arithmetic, so the same bits.  The widest build the CPU runs is used, unless
``FASTOPT_CYTHON_ISA`` names another (``baseline``, ``avx2``).

A build that does not match the installed sources is refused: each extension carries the
``SOURCE_HASH`` of the rules and the generator it was built from, and this module raises
``RuntimeError`` (the backend is then unavailable, and ``backend=None`` moves on to Numba) when
it differs from :func:`fastopt.kernels._codegen.source_hash` of the files next to it.  Rebuild
with ``make setup`` or ``pip install -e . --no-build-isolation``.

Each variant's entry point takes a *table* of buffers (``(n, address, ...)`` rows, built once
by :meth:`CythonBackend.bind` and kept alive with the arrays it points into) and the tuple of
the step's scalars: one Python call steps every buffer of a (group, dtype), serially below
``fastopt.config.PARALLEL_THRESHOLD`` elements (read by the extension at every call) and over
OpenMP threads above it.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from .. import config
from . import HostBackend, _codegen
from . import formats as F

__all__ = ["CythonBackend", "variants", "ISA", "OPENMP", "extension"]


def _cpu_has(feature):
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # NumPy 1.x
        try:
            from numpy.core._multiarray_umath import __cpu_features__
        except ImportError:
            return False
    return bool(__cpu_features__.get(feature, False))


def _import_builds():
    try:
        from . import _cython
    except ImportError as exc:
        raise RuntimeError("backend 'cython' is not available: the extension "
                           f"fastopt.kernels._cython was not built ({exc})") from None
    found = {"baseline": _cython}
    if _cpu_has("AVX2"):
        try:
            from . import _cython_avx2
        except ImportError:
            pass
        else:
            found["avx2"] = _cython_avx2
    if all(_cpu_has(f) for f in ("AVX2", "AVX512F", "AVX512DQ", "AVX512BW", "AVX512VL")):
        try:
            from . import _cython_avx512
        except ImportError:
            pass
        else:
            found["avx512"] = _cython_avx512
    expected = _codegen.source_hash()
    for name, ext in found.items():
        got = getattr(ext, "SOURCE_HASH", None)
        if got != expected:
            raise RuntimeError(
                f"backend 'cython' is not available: the {name} build "
                f"({os.path.basename(ext.__file__)}) was compiled from other sources (hash "
                f"{got}, the rules here hash to {expected}); rebuild it with `make setup` or "
                f"`pip install -e . --no-build-isolation`")
    return found


_BUILDS = _import_builds()


def variants():
    """``{name: extension module}`` of the builds importable here that this CPU can run."""
    return dict(_BUILDS)


def _use(name):
    """Bind the backend to the extension build ``name`` (``'baseline'``, ``'avx2'`` or
    ``'avx512'``)."""
    global ISA, OPENMP, extension
    extension = _BUILDS[name]
    ISA, OPENMP = name, bool(extension.OPENMP)


#: Which build is used: the widest built and supported (``'avx512'``, ``'avx2'``,
#: ``'baseline'``), or the one ``FASTOPT_CYTHON_ISA`` names where it is.
ISA = "baseline"
#: True when that build was compiled with OpenMP.
OPENMP = False
extension = None
_use(os.environ.get("FASTOPT_CYTHON_ISA", "") if os.environ.get("FASTOPT_CYTHON_ISA", "")
     in _BUILDS else next(b for b in ("avx512", "avx2", "baseline") if b in _BUILDS))

_TAG = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}


def _codes(kernel):
    """The format codes of a kernel's arrays (0 for an unused one)."""
    return tuple(F.CODES[f] if f is not None else 0 for f in kernel.formats)


def _address(a):
    return a.__array_interface__["data"][0]


def _reduction(fn, table, nrows, kept, ns, **layout):
    """The call of a reduction entry point: its totals of every row (zeros for empty ones);
    ``layout``: a layout entry point's ``seed`` and ``stochastic``."""
    out = np.zeros((len(kept), ns), dtype=np.float64)
    zero = (0.0,) * ns
    address, count, where = _address(table), len(kept), _address(out)

    def call(scalars, step=0):
        fn(address, count, scalars, step, out=where, **layout)
        sums = [zero] * nrows
        for j, k in enumerate(kept):
            sums[k] = tuple(out[j].tolist())
        return sums
    return call


def _entry(kernel):
    """The name of a variant's entry point in the extension: its own loop, or for another
    storage layout its layout loop."""
    base = _codegen.variant_name(kernel.sig, kernel.dtype.name, kernel.flags)
    return base if kernel.native else base + "_layout"


class CythonBackend(HostBackend):
    name = "cython"

    def _grid_loop(self, kernel, arrays, n, m, R, scalars, o_rows, o_part, rnd):
        fn = getattr(extension, kernel.impl)
        addresses = tuple(_address(a) for a in arrays)
        if kernel.native:
            fn(n, m, R, addresses, scalars, _address(o_rows), _address(o_part))
            return
        base, seed, step = rnd
        fn(n, m, R, addresses, scalars, _address(o_rows), _address(o_part), _codes(kernel),
           base, step, seed, kernel.rounding == "stochastic")

    def _grid_by_address(self, kernel, n, m, R, fixed, o_rows, o_part, base, seed):
        fn = functools.partial(getattr(extension, kernel.impl), n, m, R)
        orow, opart = _address(o_rows), _address(o_part)
        known = [(_address(fixed[k]) if k in fixed else None)
                 for k in range(len(kernel.sig.arrays))]
        if kernel.native:
            def run(arrays, scalars, step=0):
                fn(tuple(a if a is not None else _address(x) for a, x in zip(known, arrays)),
                   scalars, orow, opart)
            return run
        codes, stochastic = _codes(kernel), kernel.rounding == "stochastic"

        def run(arrays, scalars, step=0):
            fn(tuple(a if a is not None else _address(x) for a, x in zip(known, arrays)),
               scalars, orow, opart, codes, base, step, seed, stochastic)
        return run

    def _compile(self, kernel):
        # the entry point's name, looked up in the extension in use when binding: the variant's
        # own loop, or for another storage layout its blocked layout loop
        return _entry(kernel)

    _compile_grid = _compile

    def bind(self, kernel, rows, bases=None, seed=0):
        checked = [(n, row) for n, row in self._check_rows(kernel, rows)]
        bases = list(bases) if bases is not None else [0] * len(checked)
        keep = [a for _, row in checked for a in row if a is not None]
        A = len(kernel.sig.arrays)
        call = self.bind_addresses(kernel, [
            (n, [_address(a) if a is not None and name in kernel.used else 0
                 for name, a in zip(kernel.sig.arrays, row)] + [_address(a) for a in row[A:]])
            for n, row in checked], bases=bases, seed=seed)
        call.keep = (call.keep, keep)  # the arrays the table points into stay alive
        return call

    def bind_addresses(self, kernel, rows, bases=None, seed=0):
        """``bind`` for rows given as ``(n, [address of each array, 0 if unused] + [address of
        each 8-bit array's absmax])``: for callers that hold the memory themselves and have
        checked it (the torch adapter: tensors' ``data_ptr()``, no NumPy views).  Nothing is
        kept alive but the table."""
        bases = list(bases) if bases is not None else [0] * len(rows)
        keep = [(r, b) for r, b in zip(rows, bases) if r[0]]
        A = len(kernel.sig.arrays)
        if kernel.native:
            fn = getattr(extension, kernel.impl)
            table = np.zeros((len(keep), 1 + A), dtype=np.uintp)
            for k, ((n, addresses), _) in enumerate(keep):
                table[k, 0] = n
                table[k, 1:] = addresses
            # call(scalars, step) is the entry point with the table bound: no Python frame
            call = functools.partial(fn, _address(table), len(keep))
            if kernel.sig.sums:   # a reduction: each kept row's totals land in `out`
                call = _reduction(fn, table, len(rows), [k for k, r in enumerate(rows) if r[0]],
                                  len(kernel.sig.sums))
        else:
            fn = getattr(extension, kernel.impl)
            codes = list(_codes(kernel))
            qcols = [2 + 2 * A + kernel.sig.arrays.index(a) for a in kernel.quantized]
            table = np.zeros((len(keep), 2 + 3 * A), dtype=np.uintp)
            for k, ((n, addresses), base) in enumerate(keep):
                table[k, 0] = n
                table[k, 1] = base
                table[k, 2:2 + A] = addresses[:A]
                table[k, 2 + A:2 + 2 * A] = codes
                table[k, qcols] = addresses[A:]
            call = functools.partial(fn, _address(table), len(keep), seed=int(seed),
                                     stochastic=kernel.rounding == "stochastic")
            if kernel.sig.sums:
                call = _reduction(fn, table, len(rows), [k for k, r in enumerate(rows) if r[0]],
                                  len(kernel.sig.sums), seed=int(seed),
                                  stochastic=kernel.rounding == "stochastic")
        call.keep = table
        call.rows = [r[0] for r, _ in keep]
        return call

    @staticmethod
    def rebind_columns(kernel, call, columns):
        """A call made by :meth:`bind_addresses` whose arrays moved: ``columns`` maps an array's
        index (in the rule's order) to its new address in each row the call kept (rows of
        ``n > 0``, in order), written into the call's table in place; the rows, their sizes
        and the other addresses stay as bound.  For a caller that checked the new memory as
        it checked the old (the torch adapter's fresh gradients): a fresh table costs a
        microsecond or more per row, this a few for all of them."""
        table = call.keep
        first = 1 if kernel.native else 2
        for a, addresses in columns.items():
            table[:, first + a] = addresses

    def all_finite(self, array):
        exponent = F.exponent_bits(array.dtype)
        if exponent is not None:
            if not array.flags.c_contiguous:
                raise ValueError("all_finite: the array must be C-contiguous")
            return not array.size or bool(extension.all_finite_u16(
                _address(array), array.size, exponent, config.PARALLEL_THRESHOLD))
        tag = _TAG.get(np.dtype(array.dtype))
        if tag is None:
            raise TypeError(f"all_finite: the cython backend checks float32, float64, "
                            f"bfloat16 and float16 arrays, got {array.dtype}")
        if not array.flags.c_contiguous:
            raise ValueError("all_finite: the array must be C-contiguous")
        if not array.size:
            return True
        fn = getattr(extension, "all_finite_" + tag)
        return bool(fn(_address(array), array.size, config.PARALLEL_THRESHOLD))

    def detail(self):
        isa = {"avx2": "AVX2 kernels", "avx512": "AVX-512 kernels"}.get(ISA,
                                                                     "baseline-ISA kernels")
        if OPENMP:
            n = extension.max_threads()
            return f"built with OpenMP, {n} thread{'s' if n != 1 else ''}, {isa}"
        return f"built without OpenMP (single-threaded), {isa}"

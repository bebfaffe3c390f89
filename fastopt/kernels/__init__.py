"""Backend registry and the kernel contract.

A *backend* compiles the update rules of :mod:`fastopt.kernels.rules` for one kind of memory
and knows how to hold arrays there (host NumPy arrays, or GPU arrays for ``cuda``).  Every
backend offers the same three calls::

    kernel = backend.kernel(rule, dtype, flags)    # a compiled variant (cached)
    call = backend.bind(kernel, rows)               # rows: [(array, ...), ...] in rule order
    call(scalars)                                   # one step over every row

``rule`` names a rule (``"adam"``), ``dtype`` is the compute dtype (float32 or float64),
``flags`` is the tuple of its flag values (compile-time: each combination is its own loop),
``rows`` are tuples of 1-D contiguous arrays of one length in the rule's array order (``None``
for an optional array the flags leave unused), and ``scalars`` is the tuple of the rule's
per-step scalars as Python floats.  ``bind`` checks the rows once; the returned call does
nothing but run the loops, so an optimizer binds when its buffers change and calls every step.
``backend.run(rule, dtype, flags, arrays, scalars)`` does all three for one row (tests,
benchmarks).  A *grid* rule (Adafactor's factored second moment: row and column values, row
and column sums) is compiled by ``backend.grid(rule, dtype, flags, formats)`` and run over one
parameter seen as matrices by ``backend.run_grid(kernel, arrays, n, m, scalars)``.  A rule with
``sums`` (a reduction, :mod:`fastopt.kernels.rules`) also returns, from ``call``, one tuple of
float totals per row (every row, empty ones included), and ``run`` returns the row's tuple.

Storage formats (:mod:`fastopt.kernels.formats`): ``kernel(..., formats=..., rounding=...)``
names each array's format (``"bf16"``, ``"f16"``, ``"f32"``, ``"f64"``; ``None`` for an unused
one); the arrays then have those storage dtypes, values are decoded to the compute dtype,
updated by the rule and encoded back (rounding to nearest or stochastically).  Without
``formats`` every array has the compute dtype.  ``bind(kernel, rows, bases=None, seed=0)``:
``bases[k]`` is the position of row k's first element among the optimizer's elements of its
dtype, which with ``seed`` and the ``step`` passed to ``call(scalars, step)`` feeds the
counter-based random bits of stochastic rounding.

Backends are imported lazily: ``import fastopt`` imports none of them, and the CUDA one (which
imports ``numba.cuda``) only when asked for.  ``backend=None`` picks ``"cuda"`` for GPU arrays
and, for host arrays, the first available of ``HOST_ORDER``: the compiled Cython extension
where it was built (it starts in a few milliseconds), else Numba, else the NumPy reference.
"""
from __future__ import annotations

import numpy as np

from .. import _layout

__all__ = ["BACKENDS", "HOST_ORDER", "Backend", "HostBackend", "GridKernel", "grid_columns",
           "get_backend", "resolve_backend",
           "backend_status", "is_device_array", "check_dtype", "check_grad_dtype",
           "rule_signature"]

#: Backend names.
BACKENDS = ("numba", "cython", "numpy", "cuda")
#: The order ``backend=None`` tries for host (NumPy) arrays.
HOST_ORDER = ("cython", "numba", "numpy")

_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_cache: dict = {}
_signatures: dict = {}


def rule_signature(rule):
    """The :class:`~fastopt.kernels._codegen.Signature` of a rule (arrays, scalars, flags)."""
    sig = _signatures.get(rule)
    if sig is None:
        from . import _codegen, rules
        if not _signatures:
            _signatures.update(_codegen.signatures(rules, check=False))
        sig = _signatures.get(rule)
        if sig is None:
            raise ValueError(f"unknown rule {rule!r}; rules: {', '.join(_signatures)}")
    return sig


class Kernel:
    """A compiled variant: a rule for one compute dtype, one combination of flag values and
    one storage layout (``formats``: each array's format, ``None`` for an unused one)."""

    __slots__ = ("sig", "dtype", "flags", "name", "impl", "used", "formats", "rounding",
                 "native", "quantized")

    def __init__(self, sig, dtype, flags, impl, formats=None, rounding="nearest"):
        from . import formats as F
        from ._codegen import variant_name
        self.sig, self.dtype, self.flags, self.impl = sig, np.dtype(dtype), tuple(flags), impl
        self.used = sig.used(self.flags)
        own = F.F64 if self.dtype == np.float64 else F.F32
        if formats is None:
            formats = tuple(own if a in self.used else None for a in sig.arrays)
        self.formats = tuple(f if a in self.used else None
                             for a, f in zip(sig.arrays, formats))
        if rounding not in F.ROUNDINGS:
            raise ValueError(f"rounding must be one of {F.ROUNDINGS}, got {rounding!r}")
        self.native = all(f in (None, own) for f in self.formats)
        self.rounding = "nearest" if self.native else rounding
        #: the arrays stored as 8-bit codes (each row then ends with their absmax arrays):
        #: state the rule writes (requantized per block) or only reads (decoded: LAMB's and
        #: Adafactor's second passes)
        self.quantized = tuple(a for a, f in zip(sig.arrays, self.formats)
                               if f in F.QUANTIZED)
        for a in self.quantized:
            if a == sig.arrays[0] or sig.grid:
                raise ValueError(f"{sig.name}: {a} cannot be 8-bit (only state can)")
        if sig.grid:
            for a, f in zip(sig.arrays, self.formats):
                if (a in sig.rows or a in sig.cols) and f != own:
                    raise ValueError(f"{sig.name}: {a} (one value per row or column) must be "
                                     f"in the compute dtype ({self.dtype}), got {f!r}")
        self.name = variant_name(sig, self.dtype.name, self.flags)
        if not self.native:
            self.name += "_L_" + F.layout_name(self.formats, self.rounding).replace(".", "_")

    @property
    def storage(self):
        """The storage dtype each array must have (None for unused)."""
        from . import formats as F
        return tuple(None if f is None else F.storage_dtype(f) for f in self.formats)

    def __repr__(self):
        return f"<fastopt kernel {self.name}>"


class GridKernel(Kernel):
    """A compiled variant of a grid rule (one compute dtype, one combination of flags, one
    storage layout: the element arrays -- parameter, gradient -- in any float format, the row
    and column arrays in the compute dtype)."""

    __slots__ = ()

    def __init__(self, sig, dtype, flags, formats=None, rounding="nearest"):
        super().__init__(sig, dtype, flags, None, formats, rounding)


def grid_columns(part, batches, blocks):
    """The column sums of each matrix from the per-block sums ``part`` (``batches*blocks`` x
    ``nc`` x ``m``): the blocks of each matrix added in order (the same bits on every host
    backend and thread count)."""
    p = part.reshape(batches, blocks, *part.shape[1:])
    out = p[:, 0].copy()
    for q in range(1, blocks):
        out += p[:, q]
    return out


class Backend:
    """What an optimizer needs from a backend: compiled kernels, binding, array handling."""

    name = "?"
    device = "cpu"

    def __init__(self):
        self._kernels = {}

    def __repr__(self):
        return f"<fastopt backend {self.name!r}>"

    # -- kernels -------------------------------------------------------------------------------
    def kernel(self, rule, dtype, flags, formats=None, rounding="nearest"):
        """The compiled variant of ``rule`` for compute ``dtype``, ``flags`` and the storage
        ``formats`` of its arrays (None: all in ``dtype``), cached."""
        dtype = np.dtype(dtype)
        key = (rule, dtype, tuple(bool(f) for f in flags),
               None if formats is None else tuple(formats), rounding)
        k = self._kernels.get(key)
        if k is None:
            sig = rule_signature(rule)
            if len(key[2]) != len(sig.flags):
                raise ValueError(f"rule {rule!r} takes flags {sig.flags}, got {flags!r}")
            if dtype not in _SUPPORTED:
                check_dtype("param", dtype)
                raise TypeError(f"compute dtype {dtype}: kernels compute in float32 or float64")
            if formats is not None and len(formats) != len(sig.arrays):
                raise ValueError(f"rule {rule!r} has {len(sig.arrays)} arrays, got "
                                 f"{len(formats)} formats")
            k = Kernel(sig, dtype, key[2], None, formats, rounding)
            k.impl = self._compile(k)
            self._kernels[key] = k
        return k

    def _compile(self, kernel):  # pragma: no cover - abstract
        raise NotImplementedError

    # -- grid rules (a parameter as B matrices of n x m: Adafactor's factored moment) --------
    def grid(self, rule, dtype, flags=(), formats=None, rounding="nearest"):
        """The compiled variant of the grid rule ``rule`` (see :mod:`fastopt.kernels.rules`)
        for compute ``dtype``, ``flags`` and the storage ``formats`` of its arrays (None: all
        in ``dtype``; the element arrays may be 16-bit, the row and column arrays are in
        ``dtype``), cached; run it with :meth:`run_grid`."""
        dtype = np.dtype(dtype)
        key = ("grid", rule, dtype, tuple(bool(f) for f in flags),
               None if formats is None else tuple(formats), rounding)
        k = self._kernels.get(key)
        if k is None:
            sig = rule_signature(rule)
            if not sig.grid:
                raise ValueError(f"rule {rule!r} is not a grid rule (use kernel())")
            if len(key[3]) != len(sig.flags):
                raise ValueError(f"rule {rule!r} takes flags {sig.flags}, got {flags!r}")
            if dtype not in _SUPPORTED:
                check_dtype("param", dtype)
                raise TypeError(f"compute dtype {dtype}: grid rules compute in float32 or "
                                f"float64")
            if formats is not None and len(formats) != len(sig.arrays):
                raise ValueError(f"rule {rule!r} has {len(sig.arrays)} arrays, got "
                                 f"{len(formats)} formats")
            k = GridKernel(sig, dtype, key[3], formats, rounding)
            k.impl = self._compile_grid(k)
            self._kernels[key] = k
        return k

    def run_grid(self, kernel, arrays, n, m, scalars, base=0, seed=0, step=0):
        """Run a grid kernel once over ``arrays`` (the rule's arrays in order, 1-D, each of
        its format's storage dtype: ``R*m`` values each for the element arrays, ``R`` for the
        ``rows`` arrays, ``(R // n)*m`` for the ``cols`` arrays, with ``R`` a multiple of
        ``n``).  ``base``, ``seed`` and ``step``: stochastic rounding's element index of the
        first element, seed and step (as :meth:`bind`'s).

        Returns ``(rows, cols)`` as host float64 arrays: the ``sums`` of each row, ``(R,
        len(sums))``, and the ``col_sums`` of each column of each matrix, ``(R // n,
        len(col_sums), m)``."""
        sig = kernel.sig
        arrays = tuple(arrays)
        n, m = int(n), int(m)
        if len(arrays) != len(sig.arrays):
            raise ValueError(f"{kernel.name}: {len(arrays)} arrays given, the rule takes "
                             f"{len(sig.arrays)} ({', '.join(sig.arrays)})")
        if n <= 0 or m <= 0:
            raise ValueError(f"{kernel.name}: n and m must be > 0, got {n} and {m}")
        size = arrays[sig.arrays.index(sig.elements[0])].shape[0]
        R = size // m
        if R * m != size or R % n:
            raise ValueError(f"{kernel.name}: {size} elements are not matrices of {n} x {m}")
        want = {a: (R if a in sig.rows else R // n * m if a in sig.cols else R * m)
                for a in sig.arrays}
        for name, a, dt in zip(sig.arrays, arrays, kernel.storage):
            if np.dtype(a.dtype) != dt or a.ndim != 1 or a.shape[0] != want[name]:
                raise ValueError(f"{kernel.name}: {name} must be a 1-D {dt} array of "
                                 f"{want[name]} values, got {a.dtype} {a.shape}")
        return self._grid(kernel, arrays, n, m, R, tuple(float(x) for x in scalars),
                          (int(base), int(seed), int(step)))

    def bind_grid(self, kernel, n, m, R, fixed=None, base=0, seed=0):
        """A grid kernel bound to its sizes (``R`` rows of ``m`` elements in matrices of ``n``
        rows), for a caller that runs it every step on arrays it laid out itself:
        ``call(arrays, scalars, step=0) -> (rows, cols)`` as :meth:`run_grid`, without its
        checks (the arrays must be what run_grid would accept).  On the host the outputs are
        allocated once: a call's ``rows`` and ``cols`` are overwritten by the next call.
        ``fixed``: ``{index: array}`` of the arrays every call passes again (the caller keeps
        them alive); a backend may bind their memory once.  ``base``, ``seed``: stochastic
        rounding's (see :meth:`run_grid`)."""
        def call(arrays, scalars, step=0):
            return self.run_grid(kernel, arrays, n, m, scalars, base, seed, step)
        return call

    def _compile_grid(self, kernel):  # pragma: no cover - abstract
        raise NotImplementedError

    def _grid(self, kernel, arrays, n, m, R, scalars, rnd):  # pragma: no cover - abstract
        raise NotImplementedError

    def bind(self, kernel, rows, bases=None, seed=0):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, rule, dtype, flags, arrays, scalars, formats=None, rounding="nearest",
            base=0, seed=0, step=0):
        """Compile, bind one row and run it once (for tests and benchmarks)."""
        k = self.kernel(rule, dtype, flags, formats, rounding)
        out = self.bind(k, [tuple(arrays)], bases=[base], seed=seed)(tuple(scalars), step)
        return out[0] if k.sig.sums else None

    # -- layout: which buffers lie end to end (each backend says how to locate and join) -----
    @classmethod
    def runs(cls, arrays):
        """Maximal runs of ``arrays`` laid end to end in one allocation
        (:func:`fastopt._layout.runs` with this backend's :meth:`locate`)."""
        return _layout.runs(arrays, cls.locate)

    @classmethod
    def span(cls, arrays):
        """A 1-D view covering ``arrays`` exactly when they form one run, else None."""
        if not arrays:
            return None
        return cls.join(arrays) if len(cls.runs(arrays)) == 1 else None

    def _check_rows(self, kernel, rows):
        """Every used array of every row: its format's storage dtype, 1-D, the row's length."""
        sig, used = kernel.sig, kernel.used
        storage = kernel.storage
        quantized = kernel.quantized
        width = len(sig.arrays) + len(quantized)
        out = []
        for row in rows:
            row = tuple(row)
            if len(row) != width:
                extra = (f" and the absmax of {', '.join(quantized)}" if quantized else "")
                raise ValueError(f"{kernel.name}: a row has {len(row)} arrays, the kernel takes "
                                 f"{width} ({', '.join(sig.arrays)}{extra})")
            n = None
            for name, a, want in zip(sig.arrays, row, storage):
                if name not in used:
                    continue
                if a is None:
                    raise TypeError(f"{kernel.name}: {name} is None but these flags use it")
                if np.dtype(a.dtype) != want:
                    raise TypeError(f"{name}: dtype {a.dtype} does not match the kernel's "
                                    f"{want} (each array must have its format's dtype)")
                if a.ndim != 1:
                    raise ValueError(f"{name}: kernels take 1-D arrays, got shape {a.shape}")
                size = a.shape[0]
                if n is None:
                    n = size
                elif size != n:
                    raise ValueError(f"{name} has {size} elements, {sig.arrays[0]} has {n}")
            for name, a in zip(quantized, row[len(sig.arrays):]):
                blocks = -(-(n or 0) // 256)
                if a is None or np.dtype(a.dtype) != np.float32 or a.ndim != 1 \
                        or a.shape[0] != blocks:
                    raise ValueError(f"{name}: its absmax must be a 1-D float32 array of "
                                     f"{blocks} blocks (one per 256 elements)")
            out.append((n or 0, row))
        return out


def _describe(x):
    return type(x).__module__ + "." + type(x).__qualname__


def check_dtype(label, dtype):
    """Parameters are float64, float32, bfloat16 (``ml_dtypes.bfloat16``) or float16."""
    from . import formats as F
    dtype = np.dtype(dtype)
    try:
        F.tag(dtype)
    except KeyError:
        raise TypeError(f"{label} has dtype {dtype}; parameters must be float64, float32, "
                        f"bfloat16 (ml_dtypes.bfloat16) or float16") from None


def check_grad_dtype(label, gdtype, pdtype):
    """A gradient has its parameter's dtype, or float32 for a bfloat16/float16 parameter."""
    gdtype, pdtype = np.dtype(gdtype), np.dtype(pdtype)
    if gdtype == pdtype or (gdtype == np.float32 and pdtype.itemsize == 2):
        return
    extra = " or float32" if pdtype.itemsize == 2 else ""
    raise TypeError(f"{label} has dtype {gdtype}, its parameter has {pdtype} (a gradient has "
                    f"its parameter's dtype{extra})")


def overlaps(a, b):
    """True when two contiguous host arrays' memory ranges intersect (cheap bounds check)."""
    a0 = a.__array_interface__["data"][0]
    b0 = b.__array_interface__["data"][0]
    return a0 < b0 + b.nbytes and b0 < a0 + a.nbytes


def _root(a):
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


class HostBackend(Backend):
    """Array handling for backends that work on NumPy arrays in host memory."""

    device = "cpu"

    def _grid(self, kernel, arrays, n, m, R, scalars, rnd):
        """Host backends: the outputs allocated here, the loop (:meth:`_grid_loop`) fills the
        row sums and the per-block column sums, :func:`grid_columns` adds the blocks."""
        from ._codegen import GRID_ROWS
        sig = kernel.sig
        ns, nc = len(sig.sums), len(sig.col_sums)
        B, nb = R // n, -(-n // GRID_ROWS)
        o_rows = np.zeros((R, ns) if ns else (1, 1))
        o_part = np.zeros((B * nb, nc, m) if nc else (1, 1, 1))
        self._grid_loop(kernel, arrays, n, m, R, scalars, o_rows, o_part, rnd)
        rows = o_rows if ns else np.zeros((R, 0))
        cols = grid_columns(o_part, B, nb) if nc else np.zeros((B, 0, m))
        return rows, cols

    def bind_grid(self, kernel, n, m, R, fixed=None, base=0, seed=0):
        if type(self)._grid is not HostBackend._grid:   # (the NumPy oracle: its own _grid)
            return super().bind_grid(kernel, n, m, R, base=base, seed=seed)
        from ._codegen import GRID_ROWS
        sig = kernel.sig
        ns, nc = len(sig.sums), len(sig.col_sums)
        n, m, R = int(n), int(m), int(R)
        if n <= 0 or m <= 0 or R <= 0 or R % n:
            raise ValueError(f"{kernel.name}: {R} rows of {m} are not matrices of {n} rows")
        B, nb = R // n, -(-n // GRID_ROWS)
        # (every entry is written by each run: the row sums per row, the column sums per block)
        o_rows = np.zeros((R, ns) if ns else (1, 1))
        o_part = np.zeros((B * nb, nc, m) if nc else (1, 1, 1))
        rows = o_rows if ns else np.zeros((R, 0))
        empty = np.zeros((B, 0, m))
        loop = self._grid_loop
        base, seed = int(base), int(seed)
        by_address = self._grid_by_address(kernel, n, m, R, fixed or {}, o_rows, o_part, base,
                                           seed)
        if by_address is not None:
            def call(arrays, scalars, step=0):
                by_address(arrays, scalars, step)
                return rows, (grid_columns(o_part, B, nb) if nc else empty)
            return call

        def call(arrays, scalars, step=0):
            loop(kernel, arrays, n, m, R, scalars, o_rows, o_part, (base, seed, int(step)))
            return rows, (grid_columns(o_part, B, nb) if nc else empty)
        return call

    def _grid_by_address(self, kernel, n, m, R, fixed, o_rows, o_part, base, seed):
        """A backend whose grid entry takes addresses: ``run(arrays, scalars, step)`` with
        the ``fixed`` arrays' and the outputs' addresses taken once; else None."""
        return None

    def sumsq(self, array):
        """``sum(x*x)`` of a 1-D array as a float (one read; ``max_grad_norm``): the compiled
        ``norm_sq`` reduction for float32/float64 on the compiled backends (in their own thread
        team: a Python thread pool there competed with the OpenMP threads still spinning after
        the step's kernel, and read at half speed), else :func:`formats.sumsq`."""
        from . import formats
        if self.name != "numpy" and array.dtype in _SUPPORTED and array.size:
            return self.run("norm_sq", array.dtype, (), [array], ())[0]
        return formats.sumsq(array)

    @staticmethod
    def scale(array, factor):
        """``array *= factor`` in place, in the array's precision (``clip_grad_norm``)."""
        from . import formats
        formats.scale(array, factor)

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
        check_grad_dtype(label, g.dtype, param.dtype)
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
    def locate(x):
        """``(allocation key, start, nbytes)`` for :func:`fastopt._layout.runs`."""
        root = _root(x)
        key = (id(root), x.dtype) if root.flags.c_contiguous else None
        return key, x.__array_interface__["data"][0], x.nbytes

    @staticmethod
    def join(arrays):
        """One 1-D view over ``arrays`` (a run found by :meth:`runs`)."""
        full = [a for a in arrays if a.size]
        if not full:
            return arrays[0].reshape(-1)
        if len(full) == 1:
            return full[0].reshape(-1)
        root = _root(full[0])
        start = full[0].__array_interface__["data"][0]
        end = full[-1].__array_interface__["data"][0] + full[-1].nbytes
        root_start = root.__array_interface__["data"][0]
        raw = root.reshape(-1).view(np.uint8)
        return raw[start - root_start:end - root_start].view(full[0].dtype)

    @staticmethod
    def to_numpy(x):
        return np.array(x, copy=True)

    @staticmethod
    def copy_from_numpy(dst, src):
        """Copy host values into ``dst``, converting between float formats (one rounding to
        nearest: float32 into bfloat16 state, bfloat16 into float32)."""
        src = np.asarray(src).reshape(dst.shape)
        if src.dtype != dst.dtype:
            from . import formats as F
            src = F.convert(src, dst.dtype)
        np.copyto(dst, src)

    @staticmethod
    def copy(dst, src):
        np.copyto(dst, src)


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
        return cpu.NumbaBackend()
    if name == "cython":
        from . import cython as cython_kernels  # raises RuntimeError when not built or stale
        return cython_kernels.CythonBackend()
    if name == "numpy":
        from . import reference
        return reference.NumpyBackend()
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
    :data:`HOST_ORDER`.
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
            out[name] = (True, backend.detail())
    return out

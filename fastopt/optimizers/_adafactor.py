"""Adafactor's step (``torch.optim.Adafactor``): the factored second moment of matrices.

Every other family's state is shaped like its parameters and its step is one rule over
buffers (or two, LAMB).  Adafactor keeps, for a parameter of 2 or more dimensions, one value
per row and one per column of each matrix (its last two dimensions), and its update needs the
per-tensor RMS of the parameter and of the update.  So each parameter is its own kernel row,
and the step per parameter is (see :data:`fastopt.specs.ADAFACTOR` for the bytes):

* a matrix ``B x n x m``: the grid rule ``adafactor_sq`` (row and column sums of ``g*g``, the
  sum of ``p*p``), the factors updated on the host (``R + B*m`` values, torch's operations in
  the parameter's dtype; the mean of each matrix's row factors from their float64 sum, in
  order), in two calls of compiled helpers (:func:`_factors`, :func:`_scales`; NumPy twins of
  the same bits without the Cython extension), ``adafactor_factored`` (the sum of ``u*u``), then
  ``adafactor_factored_apply`` (the update): three passes over the elements.  Where torch's
  clamp ``max(r*c/rmean, eps1**2)`` is active nowhere (the host checks the factors' extremes;
  every factor finite) the update is separable, ``g*rsqrt(r/rmean)*rsqrt(c)``, and passes 2
  and 3 are ``adafactor_separable``/``_apply``: the same three passes without a division or a
  square root per element (which made them compute-bound), equal to torch's to a few units
  in the last place.  Otherwise (a row or column of zeros, non-finite values) the exact form
  runs, operation for operation torch's;
* a vector: ``adafactor_vector`` (the sums of ``p*p`` and ``u*u``, from this step's second
  moment), then ``adafactor_vector_apply`` (the second moment again, stored, and the update):
  two passes, as LAMB.

The per-tensor scalars (``alpha``, the clipping denominator) follow torch's formulas in float64
from the float64 sums.  :class:`AdafactorOptimizer` plugs this into :class:`Optimizer` (the
param groups, checks, clipping, ``nonfinite``, checkpoints are the shared ones);
:func:`factored_shapes` and :class:`TensorStep` are shared with ``fastopt.torch.Adafactor``.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .. import _checks
from ..kernels import formats as F
from .core import Optimizer, _Plan

__all__ = ["AdafactorOptimizer", "TensorStep", "factored_shapes", "eps1_of", "state_formats"]


def factored_shapes(shape):
    """``{state name: shape}`` of a parameter of ``shape``, as torch.optim.Adafactor keeps it:
    ``row_var`` (the last dimension 1) and ``col_var`` (the second-to-last 1) for 2 or more
    dimensions, else ``variance`` (the parameter's shape)."""
    shape = tuple(shape)
    if len(shape) < 2:
        return {"variance": shape}
    return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}


def state_formats(shape, param_fmt, state_dtype, min_8bit_size):
    """``{state name: storage format}`` of a parameter of ``shape`` and format ``param_fmt``:
    ``state_dtype`` None keeps the state in the parameter's format (as torch), "float32" or
    "bfloat16" in that one; under "int8" a vector of at least ``min_8bit_size`` elements keeps
    its ``variance`` as 8-bit codes (the unsigned map, an absmax per block of 256), everything
    else float32 (the factors of a matrix are ``n + m`` values: quantizing them would save
    under 1% of the parameter's own bytes)."""
    names = factored_shapes(shape)
    if state_dtype != "int8":
        fmt = F.state_format(state_dtype, param_fmt)
        return {name: fmt for name in names}
    size = int(np.prod(shape, dtype=np.int64))
    return {name: F.Q8U if name == "variance" and size >= min_8bit_size else F.F32
            for name in names}


def eps1_of(group, dtype):
    """``eps1``, or the machine epsilon of ``dtype`` when the group's is None (torch's)."""
    eps1 = group["eps"][0]
    if eps1 is not None:
        return float(eps1)
    dtype = np.dtype(dtype)
    if dtype.name == "bfloat16":      # (torch.finfo(torch.bfloat16).eps)
        import ml_dtypes
        return float(ml_dtypes.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def _lerp(start, end, w, dtype):
    """``start.lerp_(end, w)`` as ATen computes it in ``dtype`` (weight and ``1 - weight`` in
    that dtype)."""
    wt = dtype.type(w)
    if abs(w) < 0.5:
        return start + wt * (end - start)
    return end - (end - start) * (dtype.type(1.0) - wt)


# -- the factors' host arithmetic ---------------------------------------------------------------
# Two compiled helpers of the Cython extension (fastopt.kernels._codegen._CYTHON_ADAFACTOR)
# where it is built, else their NumPy twins below: the same operations in the same order (the
# row sums added one after the other in float64), so the same bits either way, on every
# backend (tests/test_adafactor.py compares them).  One call each instead of some twenty NumPy
# operations per matrix: on the course MLP that was most of the step.

def _factors_numpy(g_rows, g_cols, row_var, col_var, B, n, m, w, row_count, col_count):
    dt = row_var.dtype
    for x, g, count in ((row_var, g_rows, row_count), (col_var, g_cols, col_count)):
        norm = np.sqrt(g).astype(dt)
        x[...] = _lerp(x, norm * norm / dt.type(count), w, dt)
    if not n:
        return np.zeros(B)
    # (cumsum: one addition after the other, as the compiled loop)
    return np.cumsum(row_var.reshape(B, n), axis=1, dtype=np.float64)[:, -1].copy()


def _scales_numpy(row_var, col_var, mean, B, n, m, eps1_sq, grad_sign, row_mean, row_scale,
                  col_scale):
    dt = row_var.dtype
    with np.errstate(all="ignore"):
        ratio = (row_var.reshape(B, n) / mean[:, None]).reshape(-1)
    ok = bool(np.isfinite(mean).all() and np.isfinite(row_var).all()
              and np.isfinite(ratio).all() and np.isfinite(col_var).all())
    lo = hi = 0.0
    if ok:
        lo = float(ratio.min(initial=np.inf)) * float(col_var.min(initial=np.inf))
        hi = float(ratio.max(initial=0.0)) * float(col_var.max(initial=0.0))
    separable = ok and lo > eps1_sq * 1.001 and lo > 0.0 and hi < float(np.finfo(dt).max) / 4
    one = dt.type(1.0)
    if separable:
        row_scale[...] = dt.type(grad_sign) * (one / np.sqrt(ratio))
        col_scale[...] = one / np.sqrt(col_var)
    else:
        row_scale[...] = ratio
        row_mean[...] = np.repeat(mean, n)
    return separable


def _compiled():
    """The Cython extension in use when it is importable (any build: the helpers are scalar
    C, the same in each), else None."""
    try:
        from ..kernels import cython as cy
    except (ImportError, RuntimeError):
        return None
    return cy.extension


_EXT = []


def _ext():
    if not _EXT:
        _EXT.append(_compiled())
    return _EXT[0]


def _addr(a):
    return a.__array_interface__["data"][0]


def _factors(g_rows, g_cols, row_var, col_var, B, n, m, w, row_count, col_count,
             compiled=None):
    """Adafactor's factors of ``B`` matrices of ``n x m`` updated in place from this step's
    float64 row and column sums of ``g*g``: ``row_var = lerp(row_var, norm**2/row_count, w)``
    with the norm ``sqrt(sum)`` rounded to the dtype (torch's ``norm(g, dim=-1).square_()
    .div_(m)``), ``col_var`` likewise; returns each matrix's float64 sum of its new row factors
    (for their mean).  ``compiled``: False for the NumPy twin (tests)."""
    ext = _ext() if compiled is None else (_ext() if compiled else None)
    if ext is None:
        return _factors_numpy(g_rows, g_cols, row_var, col_var, B, n, m, w, row_count,
                              col_count)
    g_rows = np.ascontiguousarray(g_rows, dtype=np.float64)
    g_cols = np.ascontiguousarray(g_cols, dtype=np.float64)
    out = np.empty(B)
    fn = ext.adafactor_factors_f32 if row_var.dtype == np.float32 else \
        ext.adafactor_factors_f64
    fn(_addr(g_rows), _addr(g_cols), _addr(row_var), _addr(col_var), B, n, m, float(w),
       float(row_count), float(col_count), _addr(out))
    return out


def _scales(row_var, col_var, mean, B, n, m, eps1_sq, grad_sign, row_mean, row_scale,
            col_scale, compiled=None):
    """Whether the update is separable (torch's clamp ``max(r*c/rmean, eps1**2)`` active
    nowhere, checked on the factors' extremes with a margin for their rounding; every factor
    finite): then ``row_scale = grad_sign * (1/sqrt(row_var/mean))`` and ``col_scale =
    1/sqrt(col_var)``, else ``row_mean`` is each matrix's ``mean`` for its rows (and
    ``row_scale`` the ratios).  ``mean``: one per matrix, clamped; all arrays contiguous."""
    ext = _ext() if compiled is None else (_ext() if compiled else None)
    if ext is None:
        return _scales_numpy(row_var, col_var, mean, B, n, m, eps1_sq, grad_sign, row_mean,
                             row_scale, col_scale)
    mean = np.ascontiguousarray(mean, dtype=row_var.dtype)
    fn = ext.adafactor_scales_f32 if row_var.dtype == np.float32 else ext.adafactor_scales_f64
    return bool(fn(_addr(row_var), _addr(col_var), _addr(mean), B, n, m, float(eps1_sq),
                   float(grad_sign), _addr(row_mean), _addr(row_scale), _addr(col_scale)))



class _Factors:
    """:func:`_factors` and :func:`_scales` bound to one matrix step's host arrays (the
    compiled helpers to their addresses, computed once: as the passes are bound)."""

    __slots__ = ("rv", "cv", "rm", "rs", "cs", "B", "n", "m", "counts", "gr", "gc", "sums",
                 "mean", "_f", "_s")

    def __init__(self, rv, cv, rm, rs, cs, B, n, m, row_count, col_count):
        self.rv, self.cv, self.rm, self.rs, self.cs = rv, cv, rm, rs, cs
        self.B, self.n, self.m, self.counts = B, n, m, (float(row_count), float(col_count))
        self.gr, self.gc, self.sums = np.empty(B * n), np.empty(B * m), np.empty(B)
        self.mean = np.empty(B, rv.dtype)
        ext = _ext()
        self._f = self._s = None
        if ext is not None:
            t = "f32" if rv.dtype == np.float32 else "f64"
            a = _addr
            self._f = functools.partial(getattr(ext, f"adafactor_factors_{t}"), a(self.gr),
                                        a(self.gc), a(rv), a(cv), B, n, m)
            self._s = functools.partial(getattr(ext, f"adafactor_scales_{t}"), a(rv), a(cv),
                                        a(self.mean), B, n, m)
            self._f = (self._f, a(self.sums))
            self._s = (self._s, a(rm), a(rs), a(cs))

    def factors(self, g_rows, g_cols, w):
        """:func:`_factors` of this step's float64 sums (the row sums of the factors: kept
        until the next call)."""
        np.copyto(self.gr, g_rows)
        np.copyto(self.gc, g_cols)
        if self._f is None:
            self.sums[...] = _factors_numpy(self.gr, self.gc, self.rv, self.cv, self.B, self.n,
                                            self.m, w, *self.counts)
        else:
            fn, out = self._f
            fn(float(w), *self.counts, out)
        return self.sums

    def scales(self, mean, eps1_sq, grad_sign):
        """:func:`_scales` with each matrix's clamped ``mean``."""
        np.copyto(self.mean, mean)
        if self._s is None:
            return _scales_numpy(self.rv, self.cv, self.mean, self.B, self.n, self.m, eps1_sq,
                                 grad_sign, self.rm, self.rs, self.cs)
        fn, rm, rs, cs = self._s
        return bool(fn(float(eps1_sq), float(grad_sign), rm, rs, cs))


class TensorStep:
    """One parameter's Adafactor step on a backend: the kernels bound to its flat parameter,
    gradient and state arrays (``state``: ``{name: 1-D array}`` of :func:`factored_shapes`'s
    sizes, on the backend; an 8-bit ``variance`` with its ``variance_absmax``)."""

    __slots__ = ("be", "shape", "size", "dtype", "pdtype", "param", "grad", "state", "kernels",
                 "rows", "_vec1", "_vec2", "_mean", "_scale", "_cols", "separable", "whole",
                 "reduce", "_gaddr", "_whole_size", "_batches", "_fx", "formats", "rounding",
                 "base", "seed", "_rv", "_cv", "_stored", "_findex")

    def __init__(self, be, shape, param, grad, state, *, whole=None, reduce=None, formats=None,
                 rounding="nearest", base=0, seed=0, factor_base=None, factor_index=None):
        """``shape``: the arrays' (a shard's, for a sharded tensor); ``whole``: the whole
        tensor's shape (default ``shape``); ``reduce(kind, values)``: for a shard, the float64
        ``values`` summed over the tensor's shards -- ``"total"`` (the sums of ``p*p`` and
        ``u*u``: every shard), ``"rows"`` (the row sums of ``g*g``: the shards of one row)
        and ``"cols"`` (the column sums, and the sums of the row factors for their mean: the
        shards of one column).  Every call is made on every shard, an empty one included, in
        the same order.

        ``grad`` may be None, given to each call instead (:meth:`__call__`'s ``grad``): the
        torch adapter keeps one TensorStep per parameter across steps without keeping the
        gradients of past steps alive.  The matrix passes are bound to their sizes once
        (:meth:`Backend.bind_grid`), a vector's two passes to its arrays' addresses where the
        backend takes addresses (rebound when the gradient moved).

        ``formats``: ``{"param": ..., "grad": ..., state name: ...}`` storage formats
        (default: every array in the parameter's); the arithmetic runs in float32 (float64
        for float64 parameters), the passes decode and encode 16-bit parameters and gradients
        themselves, rounding the parameter's writes as ``rounding`` says (stochastic
        rounding's element index from ``base``, its ``seed``).  Factors stored in another
        format are updated on the host in the compute dtype and rounded into their storage
        (``n + m`` values per matrix); the passes read the stored values.  Their stochastic
        rounding's index: ``factor_base`` (default ``base``) plus each factor's position in the
        whole tensor (``factor_index``: ``{"row_var": ..., "col_var": ...}`` uint64 arrays for
        a shard; default its position in the arrays)."""
        self.be, self.shape = be, tuple(shape)
        self.whole = self.shape if whole is None else tuple(whole)
        self.reduce = reduce
        self.param, self.grad, self.state = param, grad, state
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self._whole_size = int(np.prod(self.whole, dtype=np.int64))
        self._batches = int(np.prod(self.shape[:-2], dtype=np.int64))
        self.pdtype = np.dtype(param.dtype)
        if self.pdtype.kind == "V" and self.pdtype.name != "bfloat16":   # (the simulator)
            self.pdtype = F.storage_dtype(formats["param"])
        pfmt = F.tag(self.pdtype) if formats is None else formats["param"]
        self.dtype = F.compute_dtype(pfmt)
        self.formats = {"param": pfmt, "grad": pfmt, **{n: pfmt for n in state
                                                          if not n.endswith("_absmax")}}
        self.formats.update(formats or {})
        self.rounding, self.base, self.seed = rounding, int(base), int(seed)
        fb = np.uint64(self.base if factor_base is None else int(factor_base))
        self._findex = None if factor_index is None else \
            {k: np.asarray(v, np.uint64) + fb for k, v in factor_index.items()}
        if self._findex is None and len(self.shape) >= 2:
            self._findex = {k: np.arange(state[k].size, dtype=np.uint64) + fb
                            for k in ("row_var", "col_var")}
        self.rows = [self.size]
        self._vec1 = self._vec2 = self._gaddr = self._fx = None
        own = F.F64 if self.dtype == np.float64 else F.F32
        if len(self.shape) < 2:
            self.kernels = None
            self._rv = self._cv = None
            self._stored = None
        else:
            n, m = self.shape[-2], self.shape[-1]
            rows = int(np.prod(self.shape[:-1], dtype=np.int64))
            self._mean = be.zeros(rows, self.dtype)
            self._scale = be.zeros(rows, self.dtype)
            self._cols = be.zeros(self.state["col_var"].size, self.dtype)
            # factors stored in another format: the passes read compute-dtype copies of the
            # stored values
            self._stored = self.formats["row_var"]
            same = self._stored == own
            self._rv = state["row_var"] if same else be.zeros(state["row_var"].size, self.dtype)
            self._cv = state["col_var"] if same else be.zeros(state["col_var"].size, self.dtype)
            # (every array but the gradient is passed again at each call: bound once)
            mine = {"param": param, "row_var": self._rv, "col_var": self._cv,
                    "row_mean": self._mean, "row_scale": self._scale, "col_scale": self._cols}
            fmt = {"param": pfmt, "grad": self.formats["grad"]}
            kernels = []
            for r in ("adafactor_sq", "adafactor_factored", "adafactor_factored_apply",
                      "adafactor_separable", "adafactor_separable_apply"):
                sig = _kernels_signature(r)
                k = be.grid(r, self.dtype, (), tuple(fmt.get(a, own) for a in sig.arrays),
                            rounding)
                fixed = {j: mine[a] for j, a in enumerate(k.sig.arrays) if a in mine}
                kernels.append(be.bind_grid(k, n, m, rows, fixed, base=self.base,
                                            seed=self.seed) if self.size else None)
            self.kernels = tuple(kernels)
        #: whether the last step took the separable passes (no clamp anywhere)
        self.separable = None

    def _bind_vector(self):
        """The vector passes bound to the arrays: by address where the backend binds
        addresses (nothing kept alive: the gradient's address is checked at each call), else
        holding the arrays."""
        be, dt = self.be, self.dtype
        var = self.state["variance"]
        absmax = self.state.get("variance_absmax")
        arrays = (self.param, self.grad, var) + (() if absmax is None else (absmax,))
        fmt = self.formats
        formats = (fmt["param"], fmt["grad"], fmt["variance"])
        ks = (be.kernel("adafactor_vector", dt, (), formats, self.rounding),
              be.kernel("adafactor_vector_apply", dt, (), formats, self.rounding))
        if hasattr(be, "bind_addresses"):
            addr = [a.__array_interface__["data"][0] for a in arrays]
            self._vec1, self._vec2 = (be.bind_addresses(k, [(self.size, addr)],
                                                        bases=[self.base], seed=self.seed)
                                      for k in ks)
            self._gaddr = addr[1]
        else:
            self._vec1, self._vec2 = (be.bind(k, [arrays], bases=[self.base], seed=self.seed)
                                      for k in ks)
            self._gaddr = None

    def _host(self, x):
        """``x`` itself on a host backend, else a host copy of it (and of its values)."""
        return x if isinstance(x, np.ndarray) else np.asarray(self.be.to_numpy(x))

    def _factors_host(self):
        """The :class:`_Factors` of this step: on a host backend kept (over the compute-dtype
        factors the passes read), else made on host copies every step.  Factors stored in
        another format are decoded from their storage first."""
        fx = self._fx
        host = isinstance(self._rv, np.ndarray)
        if fx is None or not host:    # (a device backend: on host copies, every step)
            h = self._host
            fx = _Factors(h(self._rv), h(self._cv), h(self._mean), h(self._scale),
                          h(self._cols), self._batches, self.shape[-2], self.shape[-1],
                          self.whole[-1], self.whole[-2])
            if host:
                self._fx = fx
        if self._rv is not self.state["row_var"]:
            for name, x in (("row_var", fx.rv), ("col_var", fx.cv)):
                np.copyto(x, F.decode(self._stored, _storage(self._host(self.state[name]),
                                                             self._stored), self.dtype))
        return fx

    def _store_factors(self, fx, t):
        """Factors kept in another format: this step's values rounded into their storage
        (stochastic rounding's bits from ``(seed, step, factor_base + the factor's position in
        the whole tensor, 2 | 3)``), and the
        stored values are what the passes and the mean use; returns each matrix's float64
        sum of its stored row factors (in order, as the compiled helper adds them)."""
        be = self.be
        for salt, (name, x) in enumerate((("row_var", fx.rv), ("col_var", fx.cv)), start=2):
            out = np.empty(x.size, F.storage_dtype(self._stored))
            bits = None
            if self.rounding == "stochastic":
                bits = F.random_bits(self._findex[name], t, self.seed, salt)
            F.encode(self._stored, x, out, self.rounding, bits)
            np.copyto(x, F.decode(self._stored, out, self.dtype))
            dst = self.state[name]
            if isinstance(dst, np.ndarray):
                np.copyto(dst, out.view(dst.dtype))
            else:
                be.copy_from_numpy(dst, out)
        B, n = self._batches, self.shape[-2]
        return np.cumsum(fx.rv.reshape(B, n), axis=1, dtype=np.float64)[:, -1].copy() \
            if n else np.zeros(B)

    def release(self):
        """Drop the gradient (and whatever holds it) until the next call's."""
        self.grad = None
        if self._gaddr is None:
            self._vec1 = self._vec2 = None

    def __call__(self, group, lr, t, grad_sign, grad=None):
        """Step ``t`` (1-based) with learning rate ``lr`` and the gradient's sign and clip
        factor ``grad_sign`` (``grad``: this step's gradient array, if not bound)."""
        if grad is not None:
            self.grad = grad
        if self.kernels is None and self.size and (
                self._vec1 is None or (self._gaddr is not None and self._gaddr !=
                                       self.grad.__array_interface__["data"][0])):
            self._bind_vector()
        whole = self._whole_size
        if not whole or (not self.size and self.reduce is None):
            return
        red = self.reduce
        dt = self.dtype
        w = float(t) ** group["beta2_decay"]
        rho = min(lr, 1.0 / math.sqrt(t))
        eps1 = eps1_of(group, self.pdtype)
        eps1_sq = eps1 * eps1
        decay = 1.0 - lr * group["weight_decay"]
        be = self.be
        if self.kernels is None:
            wm1 = float(dt.type(w) - dt.type(1.0))
            lerp = (grad_sign, w, wm1, 1.0 if abs(w) < 0.5 else 0.0, 0.0)
            if self.size:
                (p_sq, u_sq), = self._vec1(lerp + (eps1_sq, 1.0), t)
            else:
                p_sq = u_sq = 0.0
            if red is not None:
                p_sq, u_sq = red("total", np.array([p_sq, u_sq])).tolist()
        else:
            k_sq, k_u, k_apply, k_su, k_sapply = self.kernels
            n, m = self.shape[-2], self.shape[-1]
            B = self._batches
            if self.size:
                rows, cols = k_sq((self.param, self.grad), (grad_sign,), t)
            else:     # an empty shard: its sums are zeros
                rows, cols = np.zeros((B * n, 2)), np.zeros((B, 1, m))
            p_sq = float(rows[:, 0].sum())
            g_rows, g_cols = rows[:, 1], cols[:, 0, :].reshape(-1)
            if red is not None:   # a shard: the sums over the whole rows, columns, tensor
                p_sq = float(red("total", np.array([p_sq]))[0])
                g_rows, g_cols = red("rows", g_rows), red("cols", g_cols)
            # the factors (torch: norm(g, dim).square_().div_(size) in the parameter's dtype,
            # lerp_ into row_var and col_var, row_var.mean(dim=-2).clamp_(min=eps1) per matrix
            # for its rows), on host copies for a device backend
            rv, cv = self._rv, self._cv
            host = isinstance(rv, np.ndarray)
            fx = self._factors_host()
            sums = fx.factors(g_rows, g_cols, w)
            if rv is not self.state["row_var"]:
                sums = self._store_factors(fx, t)
            if red is not None:   # (a shard of the rows: their sum over the whole column)
                sums = red("cols", sums)
            mean = np.maximum((sums / self.whole[-2]).astype(dt), dt.type(eps1))
            if not host:
                be.copy_from_numpy(rv, fx.rv)
                be.copy_from_numpy(cv, fx.cv)
            # torch's u = rsqrt(max(r*c/rmean, eps1**2))*g: where the clamp is nowhere active
            # (checked on the factors, with a margin for their rounding) it is separable,
            # g*rsqrt(r/rmean)*rsqrt(c) to a few ulps: no division or square root per element
            self.separable = fx.scales(mean, eps1_sq, grad_sign)
            hs, hc, hm = fx.rs, fx.cs, fx.rm
            if self.separable:
                if hs is not self._scale:
                    be.copy_from_numpy(self._scale, hs)
                    be.copy_from_numpy(self._cols, hc)
                if self.size:
                    rows, _ = k_su((self.grad, self._scale, self._cols), (), t)
            else:
                if hm is not self._mean:
                    be.copy_from_numpy(self._mean, hm)
                if self.size:
                    rows, _ = k_u((self.grad, rv, self._mean, cv), (grad_sign, eps1_sq, 1.0), t)
            u_sq = float(rows[:, 0].sum()) if self.size else 0.0
            if red is not None:
                u_sq = float(red("total", np.array([u_sq]))[0])
        root_n = math.sqrt(whole)
        alpha = max(group["eps"][1], math.sqrt(p_sq) / root_n) * rho
        denom = max(1.0, math.sqrt(u_sq) / (root_n * group["d"]))
        scalars = (grad_sign, eps1_sq, 1.0, decay, -alpha / denom)
        if not self.size:
            return
        if self.kernels is None:
            self._vec2(lerp + (eps1_sq, 1.0, decay, -alpha / denom), t)
        elif self.separable:
            # (the row scales times the step: (-alpha/denom) * (grad_sign * 1/sqrt(r/rmean)))
            hs = self._fx.rs if self._fx is not None else self._host(self._scale)
            np.multiply(hs, dt.type(-alpha / denom), out=hs)
            if hs is not self._scale:
                be.copy_from_numpy(self._scale, hs)
            k_sapply((self.param, self.grad, self._scale, self._cols), (decay,), t)
        else:
            k_apply((self.param, self.grad, rv, self._mean, cv), scalars, t)


def _kernels_signature(rule):
    from ..kernels import rule_signature
    return rule_signature(rule)


def _storage(x, fmt):
    """A host array of 16-bit bits (the simulator's raw 2-byte values) as ``fmt``'s dtype."""
    return x.view(F.storage_dtype(fmt)) if x.dtype.kind == "V" and x.dtype.name != "bfloat16" \
        else x


class AdafactorOptimizer(Optimizer):
    """:class:`Optimizer` with Adafactor's factored state and per-tensor step (the base of
    ``fastopt.Adafactor``)."""

    def _state_shapes(self, i, group):
        return factored_shapes(self._params[i].shape)

    def _alloc_state(self, seg, group):
        be = self._backend
        (i,) = seg.indices
        shape = self._params[i].shape
        fmts = state_formats(shape, seg.fmt, self._state_dtype, self._min_8bit_size)
        for name, shp in self._state_shapes(i, group).items():
            size = int(np.prod(shp, dtype=np.int64))
            buf = seg.state.get(name)
            fmt = fmts[name]
            seg.state_fmt[name] = fmt
            if buf is not None and buf.size == size:
                continue
            seg.state[name] = be.zeros(size, F.storage_dtype(fmt))
            if fmt in F.QUANTIZED:     # (zeros, quantized: the code of 0, absmax 0)
                codes, absmax = F.quantize(fmt, np.zeros(size, np.float32))
                be.copy_from_numpy(seg.state[name], codes)
                seg.absmax[name] = be.zeros(F.nblocks(size), np.float32)
                be.copy_from_numpy(seg.absmax[name], absmax)

    @property
    def state(self):
        out = {}
        for gi, group in enumerate(self.param_groups):
            for seg in self._segments[gi]:
                (i,) = seg.indices
                entry = {"step": self._steps[gi]}
                for name, shape in self._state_shapes(i, group).items():
                    entry[name] = seg.state[name].reshape(shape)
                    if name in seg.absmax:
                        entry[name + "_absmax"] = seg.absmax[name]
                out[self._names[i]] = entry
        return out

    @property
    def kernel_rows(self):
        """Per param group, the tensors stepped (each its own passes), None before a step."""
        if self._plan is None:
            return None
        out = [[] for _ in self.param_groups]
        for gi, call in self._plan.calls:
            out[gi].append(call.size)
        return [rows for rows in out if rows]

    def _build_plan(self, grads, glist, checked):
        be = self._backend
        calls, check = [], []
        for gi, segs in enumerate(self._segments):
            for seg in segs:
                (i,) = seg.indices
                g = be.flat(checked[i])
                names = self._state_shapes(i, self.param_groups[gi])
                state = {n: seg.state[n] for n in names}
                state.update({n + "_absmax": seg.absmax[n] for n in names if n in seg.absmax})
                formats = {"param": seg.fmt, "grad": F.tag(g.dtype),
                           **{n: seg.state_fmt[n] for n in names}}
                calls.append((gi, TensorStep(be, self._params[i].shape, seg.param, g, state,
                                             formats=formats, rounding=self._rounding,
                                             base=self._offsets[i], seed=self._seed)))
                if g.size:
                    check.append(g)
        return _Plan(grads, glist, calls, check)

    def _run_kernels(self, plan, sc, ts):
        sign = self.spec.signature.scalars.index("grad_sign")
        for gi, call in plan.calls:
            group, t = self.param_groups[gi], ts[gi]
            lr = group["lr"]
            lr = _checks.lr_value(lr, t) if callable(lr) else lr
            call(group, lr, t, sc[gi][sign])

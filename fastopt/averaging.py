r"""Exponentially weighted averages (the course's EWA, with bias correction) and a parameter EMA.

The course's exponentially weighted (moving) average of a series :math:`\theta_1, \theta_2,
\dots`:

.. math::

    v_0 = 0, \qquad v_t = \beta v_{t-1} + (1 - \beta)\,\theta_t, \qquad
    \hat v_t = \frac{v_t}{1 - \beta^t} \ \text{(bias correction)}

It averages over roughly the last :math:`1/(1-\beta)` values (0.9: ~10, 0.98: ~50).  Without
bias correction the first values are pulled towards :math:`v_0 = 0`; dividing by
:math:`1-\beta^t` removes that (exactly: :math:`\hat v_1 = \theta_1`) and fades out as
:math:`\beta^t \to 0`.

- :func:`ewa`: the whole series at once, along axis 0.
- :class:`EWA`: the streaming form, one value (scalar or array) at a time.
- :class:`WeightEMA`: Polyak averaging of a model's parameters for evaluation,
  ``avg = decay * avg + (1 - decay) * p``: the ``ema`` rule of :mod:`fastopt.kernels.rules`,
  fused and in place, on every backend (threaded on the CPU, device arrays with ``cuda``), one
  kernel call per contiguous run of parameters.
"""
from __future__ import annotations

import contextlib
import numbers
from collections.abc import Mapping

import numpy as np

from . import kernels as _kernels
from .kernels import formats as F

__all__ = ["ewa", "EWA", "WeightEMA"]


# -- validation helpers ------------------------------------------------------------------------
def _check_beta(name, beta, closed=False):
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(beta).__name__}")
    beta = float(beta)
    ok = 0.0 <= beta <= 1.0 if closed else 0.0 <= beta < 1.0
    if not ok:
        raise ValueError(f"{name} must be in [0, 1{']' if closed else ')'}, got {beta}")
    return beta


def _check_bool(name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def _float_dtype(label, dtype):
    """float32 stays float32; float64, ints and bools compute in float64; others raise."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    raise TypeError(f"{label} must hold real numbers (float32, float64 or integers), "
                    f"got dtype {dtype}")


# -- ewa ------------------------------------------------------------------------------------------
def ewa(theta, beta=0.9, bias_correction=False):
    r"""Exponentially weighted average of a series along axis 0.

    .. math::

        v_0 = 0, \qquad v_t = \beta\, v_{t-1} + (1-\beta)\,\theta_t, \qquad
        \text{returned: } v_t \ \text{or, with bias correction, } \frac{v_t}{1-\beta^t}

    for :math:`t = 1, \dots, T`.  Every trailing position (``theta[:, i, j, ...]``) is its own
    series (averaged together, one vector operation per time step); float32 input is averaged
    in float32, everything else in float64.

    Parameters
    ----------
    theta : array_like, shape (T, ...)
        The series; axis 0 is time.  A scalar is not a series (``TypeError``).
    beta : float
        In [0, 1).  About ``1/(1-beta)`` past values carry the weight.
    bias_correction : bool
        Divide by :math:`1-\beta^t`, so the start is not pulled towards :math:`v_0 = 0`.

    Returns
    -------
    ndarray, shape (T, ...)
        :math:`v_1, \dots, v_T` (a new array).

    Examples
    --------
    >>> import numpy as np
    >>> ewa(np.array([10.0, 10.0, 10.0]), beta=0.5)
    array([5.  , 7.5 , 8.75])
    >>> ewa(np.array([10.0, 10.0, 10.0]), beta=0.5, bias_correction=True)
    array([10., 10., 10.])
    """
    beta = _check_beta("beta", beta)
    bias_correction = _check_bool("bias_correction", bias_correction)
    x = np.asarray(theta)
    if x.ndim == 0:
        raise TypeError("theta must be a series (at least 1-D, time along axis 0), got a scalar")
    dtype = _float_dtype("theta", x.dtype)
    out = np.empty(x.shape, dtype=dtype)
    if x.size == 0:
        return out
    x2 = np.asarray(x, dtype=dtype).reshape(x.shape[0], -1)
    out2 = out.reshape(x2.shape)
    cast = dtype.type
    b, omb, one = cast(beta), cast(1.0) - cast(beta), cast(1.0)
    v = np.zeros(x2.shape[1], dtype=dtype)
    beta_t = one
    for t in range(x2.shape[0]):   # vector over the trailing positions, in the input's dtype
        np.multiply(v, b, out=v)
        v += omb * x2[t]
        beta_t = beta_t * b
        if bias_correction:
            np.divide(v, one - beta_t, out=out2[t])
        else:
            out2[t] = v
    return out


class EWA:
    r"""Streaming exponentially weighted average (scalars or arrays of one shape).

    .. math::

        v_t = \beta\, v_{t-1} + (1-\beta)\,x_t,\ v_0 = 0; \qquad
        \text{value} = \frac{v_t}{1-\beta^t}\ \text{with bias correction, else } v_t

    Same arithmetic as :func:`ewa`: feeding a series one value at a time gives its result.

    Parameters
    ----------
    beta : float
        In [0, 1).
    bias_correction : bool
        Default True (the course: without it the first values are far too small).

    Attributes
    ----------
    value : float, ndarray or None
        The current average (None before the first update).
    count : int
        Number of updates so far.

    Examples
    --------
    >>> avg = EWA(0.9)
    >>> avg.update(20.0)        # bias-corrected: the first value itself
    20.0
    >>> round(avg.update(10.0), 6)
    14.736842
    >>> avg.count
    2
    """

    def __init__(self, beta, bias_correction=True):
        self.beta = _check_beta("beta", beta)
        self.bias_correction = _check_bool("bias_correction", bias_correction)
        self.count = 0
        self._v = None            # raw EWA v_t (float or ndarray)
        self._beta_t = 1.0        # beta**t, by repeated multiplication (as ewa)
        self._scalar = True

    def update(self, x):
        """Fold in the next value ``x`` and return the current (bias-corrected) average."""
        arr = np.asarray(x)
        dtype = _float_dtype("x", arr.dtype)
        if self._v is None:
            self._scalar = arr.ndim == 0
            if self._scalar:
                self._v = 0.0
            else:
                self._v = np.zeros(arr.shape, dtype=dtype)
                cast = dtype.type
                self._beta_c, self._omb_c = cast(self.beta), cast(1.0) - cast(self.beta)
                self._beta_t = cast(1.0)
        elif self._scalar != (arr.ndim == 0) or (not self._scalar and arr.shape != self._v.shape):
            raise ValueError(f"x has shape {arr.shape}; this average holds shape "
                             f"{() if self._scalar else self._v.shape}")
        if self._scalar:
            xv = float(arr)
            self._v = self.beta * self._v + (1.0 - self.beta) * xv
            self._beta_t = self._beta_t * self.beta
        else:
            v = self._v
            np.multiply(v, self._beta_c, out=v)
            v += self._omb_c * arr.astype(v.dtype, copy=False)
            self._beta_t = self._beta_t * self._beta_c
        self.count += 1
        return self.value

    @property
    def value(self):
        if self._v is None:
            return None
        if not self.bias_correction:
            return self._v if self._scalar else self._v.copy()
        one = 1.0 if self._scalar else self._v.dtype.type(1.0)
        return self._v / (one - self._beta_t)

    def reset(self):
        """Forget everything (``count`` back to 0)."""
        self.__init__(self.beta, self.bias_correction)

    def __repr__(self):
        return (f"EWA(beta={self.beta}, bias_correction={self.bias_correction}, "
                f"count={self.count})")


# -- WeightEMA ------------------------------------------------------------------------------------
class WeightEMA:
    r"""Exponential moving average of a model's parameters (Polyak averaging), for evaluation.

    .. math:: \bar p \leftarrow \text{decay}\cdot \bar p + (1-\text{decay})\cdot p

    The averages start as copies of the parameters (so no bias correction is needed).  Each
    :meth:`update` is one fused, in-place pass per *contiguous run* of parameters, the ``ema``
    rule compiled by the chosen backend (threaded above ``fastopt.config.PARALLEL_THRESHOLD``
    elements): the views of an :class:`fastopt.Arena` lie end to end in one buffer, so a whole
    model is one kernel call; separate arrays are one row each of the same call.  float32
    parameters are averaged in float32.  It reads 8 and writes 4 bytes per float32 element.
    bfloat16 and float16 parameters are averaged in float32 (their averages are float32 arrays:
    a 16-bit average would lose every update below half a unit in its last place), read in
    their own format by the fused pass; :meth:`copy_to` and :meth:`swap` write the averages
    into them rounded to nearest.

    Parameters
    ----------
    params : dict or list of arrays
        The live parameters (float32, float64, bfloat16 or float16, C-contiguous; host NumPy
        arrays, or device arrays with the ``cuda`` backend, e.g. a device Arena's views); kept
        by reference, never copied or modified except by :meth:`copy_to` / :meth:`swap`.
    decay : float
        In [0, 1].  Typical 0.99-0.9999; averages over about ``1/(1-decay)`` updates.
    backend : {None, "cython", "numba", "numpy", "cuda"}
        As for the optimizers: ``None`` picks ``"cuda"`` for device arrays, else the first
        available host backend; a named backend that is not available raises.

    Attributes
    ----------
    averages : dict or list of arrays
        The averaged parameters, same structure, shapes and dtypes as ``params`` (on the same
        device), float32 for 16-bit parameters.
    num_updates : int

    Examples
    --------
    >>> import numpy as np
    >>> w = np.zeros(3)
    >>> ema = WeightEMA({"w": w}, decay=0.5)
    >>> w[:] = 1.0; ema.update()
    >>> ema.averages["w"]
    array([0.5, 0.5, 0.5])
    >>> with ema.swapped():          # evaluate with the averages, then swap back
    ...     print(w)
    [0.5 0.5 0.5]
    >>> w
    array([1., 1., 1.])
    """

    def __init__(self, params, decay=0.999, *, backend=None):
        self.decay = _check_beta("decay", decay, closed=True)
        if isinstance(params, Mapping):
            keys = list(params)
            arrays = [params[k] for k in keys]
            labels = [f"params[{k!r}]" for k in keys]
        elif isinstance(params, (list, tuple)):
            keys = None
            arrays = list(params)
            labels = [f"params[{i}]" for i in range(len(arrays))]
        else:
            raise TypeError(f"params must be a dict or a list of arrays, got "
                            f"{type(params).__name__}")
        if not arrays:
            raise ValueError("params is empty")
        if backend is not None and backend not in _kernels.BACKENDS:
            raise ValueError(f"backend: unknown backend {backend!r}; choose one of "
                             f"{', '.join(repr(b) for b in _kernels.BACKENDS)} or None")
        be = self._backend = _kernels.resolve_backend(arrays, backend)
        arrays = [be.check_param(lab, a) for lab, a in zip(labels, arrays)]
        self._keys = keys
        self._labels = labels
        self._params = arrays
        self.num_updates = 0
        # Runs of consecutive same-dtype parameters laid end to end in one allocation: one
        # average buffer per run, every average a view into it.
        # 16-bit parameters (bfloat16, float16) are averaged in float32 buffers: a 16-bit
        # average would lose every update below half a unit in its last place.
        avg_views = [None] * len(arrays)
        by_dtype = {}
        for run in be.runs(arrays):
            members = [arrays[j] for j in run]
            pflat = be.join(members) if len(run) > 1 else be.flat(members[0])
            half = np.dtype(pflat.dtype).itemsize == 2
            buf = be.zeros(pflat.size, np.float32 if half else pflat.dtype)
            if not half:
                be.copy(buf, pflat)
            off = 0
            for j in run:
                a = arrays[j]
                view = buf[off:off + a.size]
                avg_views[j] = view.reshape(a.shape) if tuple(a.shape) != (a.size,) else view
                off += a.size
            by_dtype.setdefault(np.dtype(pflat.dtype), []).append((buf, pflat))
        self._ema, self._swap, self._write, self._half = [], [], [], []
        self._writers = {}     # 16-bit dtype -> the kernel writing float32 values into it
        for dt, rows in by_dtype.items():
            if dt.itemsize != 2:
                self._ema.append(be.bind(be.kernel("ema", dt, ()), rows))
                self._swap.append(be.bind(be.kernel("swap", dt, ()), rows))
                continue
            fmt = F.tag(dt)
            be.bind(be.kernel("assign", np.float32, (), (F.F32, fmt)), rows)(())   # exact
            self._ema.append(be.bind(be.kernel("ema", np.float32, (), (F.F32, fmt)), rows))
            writer = self._writers[dt] = be.kernel("assign", np.float32, (), (fmt, F.F32))
            self._write.append(be.bind(writer, [(p, b) for b, p in rows]))
            self._half += [p for _, p in rows]
        self._stash = None     # the 16-bit parameters' own values while swapped
        self._avg_list = avg_views
        self.averages = dict(zip(keys, avg_views)) if keys is not None else list(avg_views)

    @property
    def backend(self):
        """Name of the backend in use."""
        return self._backend.name

    @property
    def num_kernel_calls(self):
        """Buffers (rows) one :meth:`update` steps: 1 for an Arena's views of one dtype."""
        return sum(len(call.rows) for call in self._ema)

    def update(self):
        """``avg = decay * avg + (1 - decay) * p`` for every parameter, in place."""
        scalars = (self.decay, 1.0 - self.decay)
        for call in self._ema:
            call(scalars)
        self.num_updates += 1

    # -- moving values between parameters and averages ----------------------------------------
    def _targets(self, params):
        if params is None:
            return self._params
        if self._keys is not None:
            if not isinstance(params, Mapping):
                raise TypeError("params must be a dict with the same keys as the averaged "
                                f"parameters, got {type(params).__name__}")
            if set(params) != set(self._keys):
                raise ValueError(f"params has keys {sorted(params)}, expected "
                                 f"{sorted(self._keys)}")
            arrays = [params[k] for k in self._keys]
        else:
            if not isinstance(params, (list, tuple)) or len(params) != len(self._params):
                raise ValueError(f"params must be a list of {len(self._params)} arrays")
            arrays = list(params)
        out = []
        for lab, a, ref, p in zip(self._labels, arrays, self._avg_list, self._params):
            if not (isinstance(a, np.ndarray) or _kernels.is_device_array(a)):
                raise TypeError(f"{lab} must be a numpy.ndarray, got {type(a).__name__}")
            if tuple(a.shape) != tuple(ref.shape) or np.dtype(a.dtype) != np.dtype(p.dtype):
                raise ValueError(f"{lab} has shape {tuple(a.shape)} and dtype {a.dtype}; the "
                                 f"parameter has {tuple(p.shape)} {p.dtype}")
            out.append(self._backend.check_param(lab, a))
        return out

    def copy_to(self, params=None):
        """Write the averages into ``params`` (default: the averaged parameters themselves;
        16-bit ones get the float32 averages rounded to nearest).

        All targets are checked before anything is written.
        """
        be = self._backend
        for dst, src in zip(self._targets(params), self._avg_list):
            writer = self._writers.get(np.dtype(dst.dtype))
            if writer is None:
                be.copy(dst, src)
            elif dst.size:
                be.bind(writer, [(be.flat(dst), be.flat(src))])(())

    def swap(self):
        """Exchange the parameters' values and the averages, in place (no temporaries).

        Call it twice to get back where you were; :meth:`swapped` does that for you.
        16-bit parameters are not exchanged with their float32 averages (that would round the
        averages): the first swap keeps a copy of them and writes the averages into them
        (rounded to nearest), the second puts that copy back; their averages do not change.
        """
        for call in self._swap:
            call(())
        if not self._half:
            return
        be = self._backend
        if self._stash is None:
            self._stash = []
            for p in self._half:
                keep = be.zeros(p.size, p.dtype)
                be.copy(keep, p)
                self._stash.append(keep)
            for call in self._write:
                call(())
        else:
            for p, keep in zip(self._half, self._stash):
                be.copy(p, keep)
            self._stash = None

    @contextlib.contextmanager
    def swapped(self):
        """Context manager: the parameters hold the averages inside the block."""
        self.swap()
        try:
            yield self
        finally:
            self.swap()

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self):
        """``{"decay", "num_updates", "averages"}`` with copies of the averages (host arrays)."""
        avgs = [self._backend.to_numpy(a) for a in self._avg_list]
        return {"decay": self.decay, "num_updates": self.num_updates,
                "averages": dict(zip(self._keys, avgs)) if self._keys is not None else avgs}

    def load_state_dict(self, state):
        """Restore from :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, Mapping) or not {"decay", "num_updates", "averages"} <= set(
                state):
            raise ValueError("state must be a dict with 'decay', 'num_updates' and 'averages'")
        decay = _check_beta("state['decay']", state["decay"], closed=True)
        n = state["num_updates"]
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
            raise ValueError(f"state['num_updates'] must be an int >= 0, got {n!r}")
        avgs = state["averages"]
        if self._keys is not None:
            if not isinstance(avgs, Mapping) or set(avgs) != set(self._keys):
                raise ValueError("state['averages'] must be a dict with the parameters' keys")
            src = [avgs[k] for k in self._keys]
        else:
            if not isinstance(avgs, (list, tuple)) or len(avgs) != len(self._avg_list):
                raise ValueError(f"state['averages'] must be a list of {len(self._avg_list)} "
                                 "arrays")
            src = list(avgs)
        for lab, a, ref in zip(self._labels, src, self._avg_list):
            a = np.asarray(a)
            if a.shape != tuple(ref.shape):
                raise ValueError(f"state['averages'] for {lab} has shape {a.shape}, expected "
                                 f"{tuple(ref.shape)}")
        for a, ref in zip(src, self._avg_list):
            self._backend.copy_from_numpy(ref, np.asarray(a))
        self.decay = decay
        self.num_updates = int(n)

    def __repr__(self):
        n = sum(a.size for a in self._avg_list)
        return (f"WeightEMA(decay={self.decay}, {len(self._avg_list)} tensors, {n} values, "
                f"{self.num_kernel_calls} kernel call(s) per update, backend={self.backend!r})")

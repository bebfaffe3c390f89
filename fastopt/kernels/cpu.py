"""Numba CPU backend: one fused, in-place pass per buffer.

Each family's update rule is written once, as a Python loop over the elements, and compiled twice:
``parallel=True`` (``prange`` split over threads) for buffers of at least
``fastopt.config.PARALLEL_THRESHOLD`` elements and serially below it, where waking threads costs
more than it saves.  Both are compiled lazily on first use and cached on disk (``cache=True``).

Kernels follow the contract of :mod:`fastopt.kernels`: 1-D contiguous arrays first, then the
``scalars`` of :mod:`fastopt.kernels._scalars`, floats already of the arrays' dtype so float32
buffers are updated in float32 arithmetic.  The compiled functions take the floats as one small
array (``scalars.values``, read once before the loop) and the flags as bools: dispatching one
array costs a fraction of dispatching ten NumPy scalars.  Flags in the tuple are loop-invariant; LLVM
unswitches the loops on them (checked in the generated IR, see bench/README.md).

fastmath uses :data:`fastopt.config.FASTMATH_FLAGS` (no ``nnan``/``ninf``): NaN and Inf propagate
as in NumPy, and :func:`all_finite` is not optimized away.

Short names inside the kernels: ``p`` param, ``g`` grad, ``m`` exp_avg, ``v`` exp_avg_sq,
``vmax`` max_exp_avg_sq, ``b`` momentum_buffer, ``s`` square_avg, ``a`` grad_avg, ``h`` sum.
"""
from __future__ import annotations

import math
import types

import numba
import numpy as np
from numba import njit, prange

from .. import config

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam", "all_finite", "DETAIL"]

_FLAGS = set(config.FASTMATH_FLAGS)


def _sgd(p, g, b, s, nesterov, first_step, has_momentum):
    lr, momentum, one_minus_dampening, weight_decay, grad_sign = s[0], s[1], s[2], s[3], s[4]
    n = p.size
    if not has_momentum:
        for i in prange(n):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            p[i] = p[i] - lr * gi
    elif first_step:
        for i in prange(n):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            b[i] = gi
            d = gi + momentum * gi if nesterov else gi
            p[i] = p[i] - lr * d
    else:
        for i in prange(n):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            bi = momentum * b[i] + one_minus_dampening * gi
            b[i] = bi
            d = gi + momentum * bi if nesterov else bi
            p[i] = p[i] - lr * d


def _momentum(p, g, v, s):
    lr_over_bc, beta, one_minus_beta, weight_decay = s[0], s[1], s[2], s[3]
    for i in prange(p.size):
        gi = g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        vi = beta * v[i] + one_minus_beta * gi
        v[i] = vi
        p[i] = p[i] - lr_over_bc * vi


def _rmsprop(p, g, s, a, b, c, centered, has_momentum):
    lr, alpha, one_minus_alpha, eps = c[0], c[1], c[2], c[3]
    weight_decay, grad_sign, momentum = c[4], c[5], c[6]
    n = p.size
    if centered:
        for i in prange(n):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            ai = alpha * a[i] + one_minus_alpha * gi
            a[i] = ai
            den = np.sqrt(si - ai * ai) + eps
            if has_momentum:
                bi = momentum * b[i] + gi / den
                b[i] = bi
                p[i] = p[i] - lr * bi
            else:
                p[i] = p[i] - lr * gi / den
    else:
        for i in prange(n):
            gi = grad_sign * g[i]
            if weight_decay != 0:
                gi = gi + weight_decay * p[i]
            si = alpha * s[i] + one_minus_alpha * gi * gi
            s[i] = si
            den = np.sqrt(si) + eps
            if has_momentum:
                bi = momentum * b[i] + gi / den
                b[i] = bi
                p[i] = p[i] - lr * bi
            else:
                p[i] = p[i] - lr * gi / den


def _adagrad(p, g, h, s):
    clr, eps, weight_decay, grad_sign = s[0], s[1], s[2], s[3]
    for i in prange(p.size):
        gi = grad_sign * g[i]
        if weight_decay != 0:
            gi = gi + weight_decay * p[i]
        hi = h[i] + gi * gi
        h[i] = hi
        p[i] = p[i] - clr * gi / (np.sqrt(hi) + eps)


def _adam(p, g, m, v, vmax, s, amsgrad):
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps = s[0], s[1], s[2], s[3], s[4]
    l2, decay, grad_sign, step_size, bc2_sqrt = s[5], s[6], s[7], s[8], s[9]
    n = p.size
    if amsgrad:
        for i in prange(n):
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
            p[i] = pi - step_size * mi / (np.sqrt(wi) / bc2_sqrt + eps)
    else:
        for i in prange(n):
            pi = p[i] * decay
            gi = grad_sign * g[i]
            if l2 != 0:
                gi = gi + l2 * pi
            mi = beta1 * m[i] + one_minus_beta1 * gi
            vi = beta2 * v[i] + one_minus_beta2 * gi * gi
            m[i] = mi
            v[i] = vi
            p[i] = pi - step_size * mi / (np.sqrt(vi) / bc2_sqrt + eps)


def _all_finite(x):
    bad = 0
    for i in prange(x.size):
        if not math.isfinite(x[i]):
            bad += 1
    return bad == 0


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name, so its on-disk cache entry is its own (Numba's cache
    index is keyed by qualified name, not by the ``parallel`` flag)."""
    name = fn.__name__ + suffix
    code = fn.__code__.replace(co_name=name, co_qualname=name)
    clone = types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)
    clone.__qualname__ = name
    clone.__module__ = fn.__module__
    return clone


def _pair(fn):
    """(parallel, serial) lazily-compiled, disk-cached dispatchers for one update rule."""
    par = njit(parallel=True, fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)(fn)
    ser = njit(fastmath=_FLAGS, error_model="numpy", cache=True, nogil=True)(_renamed(fn, "_serial"))
    return par, ser


_sgd_par, _sgd_ser = _pair(_sgd)
_momentum_par, _momentum_ser = _pair(_momentum)
_rmsprop_par, _rmsprop_ser = _pair(_rmsprop)
_adagrad_par, _adagrad_ser = _pair(_adagrad)
_adam_par, _adam_ser = _pair(_adam)
_all_finite_par, _all_finite_ser = _pair(_all_finite)


def sgd(param, grad, momentum_buffer, scalars):
    k = _sgd_par if param.size >= config.PARALLEL_THRESHOLD else _sgd_ser
    k(param, grad, momentum_buffer, scalars.values, *scalars.flags)


def momentum(param, grad, velocity, scalars):
    k = _momentum_par if param.size >= config.PARALLEL_THRESHOLD else _momentum_ser
    k(param, grad, velocity, scalars.values, *scalars.flags)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, scalars):
    k = _rmsprop_par if param.size >= config.PARALLEL_THRESHOLD else _rmsprop_ser
    k(param, grad, square_avg, grad_avg, momentum_buffer, scalars.values, *scalars.flags)


def adagrad(param, grad, state_sum, scalars):
    k = _adagrad_par if param.size >= config.PARALLEL_THRESHOLD else _adagrad_ser
    k(param, grad, state_sum, scalars.values, *scalars.flags)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars):
    k = _adam_par if param.size >= config.PARALLEL_THRESHOLD else _adam_ser
    k(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars.values, *scalars.flags)


def all_finite(array):
    k = _all_finite_par if array.size >= config.PARALLEL_THRESHOLD else _all_finite_ser
    return bool(k(array))


def DETAIL():
    return (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
            f"threading layer {_threading_layer()}")


def _threading_layer():
    try:
        return numba.threading_layer()
    except ValueError:  # no parallel function has run yet in this process
        return f"{numba.config.THREADING_LAYER} (not initialized yet)"

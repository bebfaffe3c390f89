"""NumPy reference backend: the formulas of SPEC.md written plainly, in vector form.

This module is the test oracle (run in float64) and the naive baseline the benchmarks beat: it
allocates temporaries freely and makes several passes over memory.  It is written from SPEC.md
and torch.optim's documented algorithms, *not* generated from :mod:`fastopt.kernels.rules`, so
that the two can catch each other's mistakes.

Each function takes the same arguments as the rule of the same name (see
:mod:`fastopt.kernels.rules`): the arrays (1-D, one dtype, ``None`` for optional state the flags
leave unused), then the scalars, then the flags by keyword.  The scalars are cast to the arrays'
dtype first (float32 arrays are updated in float32 arithmetic), and every array is updated in
place.  Operations follow torch.optim's single-tensor code op for op (``addcmul`` is
``self + (value*t1)*t2``, ``addcdiv`` is ``self + value*(t1/t2)``), so the rounding is torch's;
non-finite values follow it too: ``lerp`` as ATen computes it, ``np.maximum`` for
``torch.maximum``, the L2 term only when ``weight_decay != 0``.
"""
from __future__ import annotations

import numpy as np

from . import HostBackend
from . import formats as F

__all__ = ["NumpyBackend", "sgd", "momentum", "rmsprop", "adagrad", "adam", "ema", "swap"]


def _effective_grad(param, grad, grad_sign, weight_decay, l2):
    # SPEC: maximize first (g = -g), then L2 weight decay (g = g + weight_decay * p).
    g = grad_sign * grad
    return g + weight_decay * param if l2 else g


def _lerp(start, end, weight, weight_minus_one, small):
    """torch.lerp as ATen's vectorized CPU kernel: ``start + w*(end - start)`` for |w| < 0.5,
    else ``end + (w - 1)*(end - start)``."""
    if small:
        return start + weight * (end - start)
    return end + weight_minus_one * (end - start)


def sgd(param, grad, momentum_buffer, neg_lr, grad_sign, weight_decay, buffer_decay,
        grad_scale, momentum, *, has_momentum, nesterov, l2):
    """torch.optim.SGD: ``b = g`` (first step: buffer_decay 0, grad_scale 1) or ``b =
    momentum*b + (1-dampening)*g``; ``d = g + momentum*b`` (nesterov) or ``b``; ``p -= lr*d``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    if has_momentum:
        momentum_buffer[...] = buffer_decay * momentum_buffer + grad_scale * g
        d = g + momentum * momentum_buffer if nesterov else momentum_buffer
    else:
        d = g
    param += neg_lr * d


def momentum(param, grad, velocity, neg_step, beta, one_minus_beta, weight_decay, *, l2):
    """The course's momentum: ``v = beta*v + (1-beta)*g``; ``p -= lr/bc * v``."""
    g = _effective_grad(param, grad, 1, weight_decay, l2)
    velocity[...] = beta * velocity + one_minus_beta * g
    param += neg_step * velocity


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, neg_lr, grad_sign, weight_decay,
            alpha, one_minus_alpha, neg_alpha, eps, momentum, *, centered, has_momentum, l2,
            lerp_small):
    """torch.optim.RMSprop, with ``centered`` and ``momentum``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    square_avg[...] = square_avg * alpha + one_minus_alpha * g * g        # mul_, addcmul_
    if centered:
        grad_avg[...] = _lerp(grad_avg, g, one_minus_alpha, neg_alpha, lerp_small)
        den = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        den = np.sqrt(square_avg) + eps
    if has_momentum:
        momentum_buffer[...] = momentum * momentum_buffer + g / den
        param += neg_lr * momentum_buffer
    else:
        param += neg_lr * (g / den)


def adagrad(param, grad, sum, neg_clr, grad_sign, weight_decay, eps, *, l2):  # noqa: A002
    """torch.optim.Adagrad: ``h += g*g``; ``p -= clr*g/(sqrt(h)+eps)``."""
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    sum += g * g
    param += neg_clr * (g / (np.sqrt(sum) + eps))


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, decay, grad_sign, weight_decay,
         one_minus_beta1, neg_beta1, beta2, one_minus_beta2, neg_step_size,
         inv_bias_correction2_sqrt, eps, *, amsgrad, l2, lerp_small):
    """torch.optim.Adam / AdamW, with ``amsgrad``, ``maximize`` and optional bias correction
    (``sqrt(v)/sqrt(bc2)`` as ``sqrt(v) * (1/sqrt(bc2))``, as the rule)."""
    param *= decay                                   # AdamW: p *= 1 - lr*wd
    g = _effective_grad(param, grad, grad_sign, weight_decay, l2)
    exp_avg[...] = _lerp(exp_avg, g, one_minus_beta1, neg_beta1, lerp_small)
    exp_avg_sq[...] = exp_avg_sq * beta2 + one_minus_beta2 * g * g       # mul_, addcmul_
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)   # NaN propagates
        v = max_exp_avg_sq
    else:
        v = exp_avg_sq
    param += neg_step_size * (exp_avg / (np.sqrt(v) * inv_bias_correction2_sqrt + eps))


def ema(average, param, decay, one_minus_decay):
    """``average = decay*average + (1-decay)*param``."""
    average[...] = decay * average + one_minus_decay * param


def swap(a, b):
    """Exchange the values of ``a`` and ``b``."""
    tmp = a.copy()
    a[...] = b
    b[...] = tmp


class NumpyBackend(HostBackend):
    name = "numpy"

    def _compile(self, kernel):
        return globals()[kernel.sig.name]

    def bind(self, kernel, rows, bases=None, seed=0):
        fn, dtype = kernel.impl, kernel.dtype
        flags = dict(zip(kernel.sig.flags, kernel.flags))
        checked = self._check_rows(kernel, rows)
        bases = list(bases) if bases is not None else [0] * len(checked)
        calls = [(row, base) for (n, row), base in zip(checked, bases) if n]
        written = set(kernel.sig.written)

        arrays = kernel.sig.arrays
        absmax_of = {a: len(arrays) + j for j, a in enumerate(kernel.quantized)}

        def call(scalars, step=0):
            cast = [dtype.type(s) for s in scalars]
            with np.errstate(all="ignore"):   # NaN/Inf propagate silently, as in the kernels
                for row, base in calls:
                    if kernel.native:
                        fn(*row, *cast, **flags)
                        continue
                    # decode -> the rule in the compute dtype -> encode, written plainly (8-bit
                    # state: dequantize the whole buffer, requantize it after the update)
                    vals = [None if a is None else
                            F.dequantize(f, a, row[absmax_of[name]], dtype) if name in absmax_of
                            else F.decode(f, a, dtype)
                            for name, a, f in zip(arrays, row, kernel.formats)]
                    vals = [v if v is None or v.dtype != dtype or v is not a else v.copy()
                            for v, a in zip(vals, row)]
                    fn(*vals, *cast, **flags)
                    n = row[0].shape[0]
                    for k, (name, a, f, v) in enumerate(zip(arrays, row, kernel.formats, vals)):
                        if a is None or name not in written:
                            continue
                        if name in absmax_of:
                            F.quantize(f, v, a, row[absmax_of[name]])
                            continue
                        bits = None
                        if kernel.rounding == "stochastic":
                            bits = F.random_bits(np.arange(base, base + n, dtype=np.uint64),
                                                 step, seed, k)
                        F.encode(f, v, a, kernel.rounding, bits)
        call.rows = [row[0].shape[0] for row, _ in calls]
        return call

    def all_finite(self, array):
        return F.all_finite(array)

    def detail(self):
        return f"the NumPy reference (numpy {np.__version__}): the test oracle and naive baseline"

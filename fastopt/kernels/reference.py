"""NumPy reference backend: the formulas of SPEC.md written plainly, one line per line.

This module is the test oracle (run in float64) and the naive baseline the benchmarks beat: it
allocates temporaries freely and makes several passes over memory.  It follows the kernel
contract shared by every backend (see :mod:`fastopt.kernels`):

* arrays first, all 1-D and C-contiguous with the same length; a state buffer the options do not
  use (``momentum_buffer`` without momentum, ``grad_avg`` without ``centered``,
  ``max_exp_avg_sq`` without ``amsgrad``) is a zero-length array and is not touched;
* then ``scalars``, the tuple built by :mod:`fastopt.kernels._scalars` for this family, its floats
  already cast to the arrays' dtype (so float32 arrays are updated in float32 arithmetic);
* every array is updated in place; nothing is returned.
"""
from __future__ import annotations

import numpy as np

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam", "all_finite", "DETAIL"]

DETAIL = f"the NumPy reference (numpy {np.__version__}): the test oracle and naive baseline"


def _effective_grad(param, grad, weight_decay, grad_sign):
    # SPEC: maximize first (g = -g), then L2 weight decay (g = g + weight_decay * p).
    g = grad_sign * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    return g


def sgd(param, grad, momentum_buffer, scalars):
    """torch.optim.SGD: ``b = g`` (first step) or ``b = momentum*b + (1-dampening)*g``;
    ``d = g + momentum*b`` (nesterov) or ``b``; ``p -= lr*d``."""
    lr, momentum, one_minus_dampening, weight_decay, grad_sign, nesterov, first_step, \
        has_momentum = scalars
    g = _effective_grad(param, grad, weight_decay, grad_sign)
    if has_momentum:
        if first_step:
            momentum_buffer[...] = g
        else:
            momentum_buffer[...] = momentum * momentum_buffer + one_minus_dampening * g
        d = g + momentum * momentum_buffer if nesterov else momentum_buffer
    else:
        d = g
    param -= lr * d


def momentum(param, grad, velocity, scalars):
    """The course's momentum: ``v = beta*v + (1-beta)*g``; ``p -= lr/bc * v``."""
    lr_over_bc, beta, one_minus_beta, weight_decay = scalars
    g = _effective_grad(param, grad, weight_decay, 1)
    velocity[...] = beta * velocity + one_minus_beta * g
    param -= lr_over_bc * velocity


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, scalars):
    """torch.optim.RMSprop, with ``centered`` and ``momentum``."""
    lr, alpha, one_minus_alpha, eps, weight_decay, grad_sign, momentum, centered, \
        has_momentum = scalars
    g = _effective_grad(param, grad, weight_decay, grad_sign)
    square_avg[...] = alpha * square_avg + one_minus_alpha * g * g
    if centered:
        grad_avg[...] = alpha * grad_avg + one_minus_alpha * g
        den = np.sqrt(square_avg - grad_avg * grad_avg) + eps
    else:
        den = np.sqrt(square_avg) + eps
    if has_momentum:
        momentum_buffer[...] = momentum * momentum_buffer + g / den
        param -= lr * momentum_buffer
    else:
        param -= lr * g / den


def adagrad(param, grad, state_sum, scalars):
    """torch.optim.Adagrad: ``h += g*g``; ``p -= clr*g/(sqrt(h)+eps)``."""
    clr, eps, weight_decay, grad_sign = scalars
    g = _effective_grad(param, grad, weight_decay, grad_sign)
    state_sum += g * g
    param -= clr * g / (np.sqrt(state_sum) + eps)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, scalars):
    """torch.optim.Adam / AdamW, with ``amsgrad``, ``maximize`` and optional bias correction."""
    beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2_weight_decay, decay_factor, \
        grad_sign, step_size, bias_correction2_sqrt, amsgrad = scalars
    param *= decay_factor                                   # AdamW: p *= 1 - lr*wd
    g = _effective_grad(param, grad, l2_weight_decay, grad_sign)
    exp_avg[...] = beta1 * exp_avg + one_minus_beta1 * g
    exp_avg_sq[...] = beta2 * exp_avg_sq + one_minus_beta2 * g * g
    if amsgrad:
        np.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        v = max_exp_avg_sq
    else:
        v = exp_avg_sq
    param -= step_size * exp_avg / (np.sqrt(v) / bias_correction2_sqrt + eps)


def all_finite(array):
    """True when every element is finite."""
    return bool(np.isfinite(array).all())

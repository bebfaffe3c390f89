"""Per-step scalar preparation shared by every backend.

The optimizer computes the hyperparameters of one step in Python floats (double precision, as
torch.optim does) and hands them to one of the functions below, once per (param group, dtype).
Each returns a plain tuple in a fixed order whose floats are already cast to the kernel's
compute dtype, and whose flags are Python ``bool``.  Every backend's kernel function takes that
tuple as its last positional argument ``scalars``, so hoisting the casts out of the per-array loop
is free for all of them.  The order of each tuple is part of the kernel contract:

========  =====================================================================================
family    tuple
========  =====================================================================================
sgd       ``(lr, momentum, one_minus_dampening, weight_decay, grad_sign, nesterov, first_step,
          has_momentum)``
momentum  ``(lr_over_bias_correction, beta, one_minus_beta, weight_decay)``
rmsprop   ``(lr, alpha, one_minus_alpha, eps, weight_decay, grad_sign, momentum, centered,
          has_momentum)``
adagrad   ``(clr, eps, weight_decay, grad_sign)``
adam      ``(beta1, one_minus_beta1, beta2, one_minus_beta2, eps, l2_weight_decay,
          decay_factor, grad_sign, step_size, bias_correction2_sqrt, amsgrad)``
========  =====================================================================================

``grad_sign`` is ``-1`` with ``maximize`` and ``+1`` otherwise (multiplying by it is exact).
For Adam, ``l2_weight_decay`` is ``weight_decay`` for Adam and ``0`` for AdamW, while
``decay_factor`` is ``1 - lr*weight_decay`` for AdamW and ``1`` for Adam; ``step_size`` is
``lr / bias_correction1``.
"""
from __future__ import annotations

import math

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam"]


def sgd(dtype, *, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    c = dtype.type
    return (c(lr), c(momentum), c(1.0 - dampening), c(weight_decay),
            c(-1.0 if maximize else 1.0), bool(nesterov), bool(first_step), momentum != 0)


def momentum(dtype, *, lr, beta, weight_decay, bias_correction):
    c = dtype.type
    return (c(lr / bias_correction), c(beta), c(1.0 - beta), c(weight_decay))


def rmsprop(dtype, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    c = dtype.type
    return (c(lr), c(alpha), c(1.0 - alpha), c(eps), c(weight_decay),
            c(-1.0 if maximize else 1.0), c(momentum), bool(centered), momentum > 0)


def adagrad(dtype, *, clr, eps, weight_decay, maximize):
    c = dtype.type
    return (c(clr), c(eps), c(weight_decay), c(-1.0 if maximize else 1.0))


def adam(dtype, *, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
         maximize, bias_correction1, bias_correction2):
    c = dtype.type
    if decoupled_weight_decay:
        l2, decay = 0.0, 1.0 - lr * weight_decay
    else:
        l2, decay = weight_decay, 1.0
    return (c(beta1), c(1.0 - beta1), c(beta2), c(1.0 - beta2), c(eps), c(l2), c(decay),
            c(-1.0 if maximize else 1.0), c(lr / bias_correction1),
            c(math.sqrt(bias_correction2)), bool(amsgrad))

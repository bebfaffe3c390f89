"""Per-step scalar preparation shared by every backend.

The optimizer computes the hyperparameters of one step in Python floats (double precision, as
torch.optim does) and hands them to one of the functions below, once per (param group, dtype).
Each returns a :class:`Scalars` sequence in a fixed order whose floats are already cast to the
kernel's compute dtype, and whose flags are Python ``bool``.  Every backend's kernel function takes that
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

import numpy as np

__all__ = ["sgd", "momentum", "rmsprop", "adagrad", "adam"]


class Scalars:
    """The per-step scalars of one family: a read-only sequence in the documented order.

    Iterating (or indexing) yields the floats as NumPy scalars of the compute dtype, then the
    flags as ``bool``: what every backend unpacks.  The floats are also kept as one 1-D array,
    ``values``, and the flags as a tuple, ``flags``: the Numba backend passes those two directly,
    which costs far less dispatch time than ten separate NumPy scalars.
    """

    __slots__ = ("values", "flags", "_items")

    def __init__(self, values, flags=()):
        self.values = values
        self.flags = flags
        self._items = None

    def _tuple(self):
        if self._items is None:
            self._items = tuple(self.values) + self.flags
        return self._items

    def __iter__(self):
        return iter(self._tuple())

    def __len__(self):
        return len(self.values) + len(self.flags)

    def __getitem__(self, i):
        return self._tuple()[i]

    def __eq__(self, other):
        return tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self):
        return f"Scalars{self._tuple()!r}"


def _cast(dtype, floats, flags=()):
    # One array construction casts them all (about 4x cheaper than dtype.type(x) per value).
    return Scalars(np.array(floats, dtype=dtype), flags)


def sgd(dtype, *, lr, momentum, dampening, weight_decay, nesterov, maximize, first_step):
    return _cast(dtype, (lr, momentum, 1.0 - dampening, weight_decay,
                         -1.0 if maximize else 1.0),
                 (bool(nesterov), bool(first_step), momentum != 0))


def momentum(dtype, *, lr, beta, weight_decay, bias_correction):
    return _cast(dtype, (lr / bias_correction, beta, 1.0 - beta, weight_decay))


def rmsprop(dtype, *, lr, alpha, eps, weight_decay, momentum, centered, maximize):
    return _cast(dtype, (lr, alpha, 1.0 - alpha, eps, weight_decay, -1.0 if maximize else 1.0,
                         momentum), (bool(centered), momentum > 0))


def adagrad(dtype, *, clr, eps, weight_decay, maximize):
    return _cast(dtype, (clr, eps, weight_decay, -1.0 if maximize else 1.0))


def adam(dtype, *, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad,
         maximize, bias_correction1, bias_correction2):
    if decoupled_weight_decay:
        l2, decay = 0.0, 1.0 - lr * weight_decay
    else:
        l2, decay = weight_decay, 1.0
    return _cast(dtype, (beta1, 1.0 - beta1, beta2, 1.0 - beta2, eps, l2, decay,
                         -1.0 if maximize else 1.0, lr / bias_correction1,
                         math.sqrt(bias_correction2)), (bool(amsgrad),))

r"""Course-style NumPy optimizers: the baseline of the demo and of the benchmarks.

Each is written the way the course notes write it: a class holding the state dicts (``v``,
``s``) made with ``np.zeros_like`` from the parameters (the course's ``initialize_velocity`` /
``initialize_adam``), and a ``step`` that loops over the parameter dict evaluating NumPy
expressions, one temporary array per operation.  Each computes exactly what the corresponding
fastopt optimizer computes, so that a speed-up of fastopt over them is meaningful (checked by
``tests/test_demo.py`` and ``tests/test_bench_smoke.py``):

================  ==================================================
``GDNaive``       ``fastopt.SGD(lr)``
``MomentumNaive`` ``fastopt.Momentum(lr, beta)``
``RMSpropNaive``  ``fastopt.RMSprop(lr, alpha=beta2, eps)``
``AdamNaive``     ``fastopt.Adam(lr, betas=(beta1, beta2), eps)``
================  ==================================================

One interface serves both users::

    opt = AdamNaive(params, lr=1e-3)   # params: dict of NumPy arrays; state shaped like them
    opt.lr = 5e-4                      # optional: a new learning rate for the next steps
    opt.step(params, grads)            # grads: a dict with the same keys

The course writes the last line of every update as ``params[key] = params[key] - lr * ...``
(a new array bound to the key).  Here it is ``params[key] -= lr * ...``: the same expression,
the same rounding, but the subtraction is written into the caller's array, because the
benchmarks hand in arrays (``{"W": p}``, ``dict(enumerate(params))``) and read those arrays
back.  It also keeps the parameters' dtype whatever the scalars are (float32 stays float32;
with Python-float hyper-parameters the temporaries stay float32 too).
"""
from __future__ import annotations

import numpy as np

__all__ = ["GDNaive", "MomentumNaive", "RMSpropNaive", "AdamNaive"]


class GDNaive:
    r"""The course's (mini-batch) gradient descent, ``fastopt.SGD(lr)``.

    .. math:: W = W - \alpha\, dW

    ``params`` is accepted for the common interface (plain gradient descent has no state).
    """

    def __init__(self, params, lr):
        self.lr = lr

    def step(self, params, grads):
        for key in params:
            params[key] -= self.lr * grads[key]


class MomentumNaive:
    r"""The course's gradient descent with momentum, ``fastopt.Momentum(lr, beta)``.

    .. math:: v = \beta v + (1-\beta)\, dW, \qquad W = W - \alpha v

    with ``v`` starting at zero (no bias correction).
    """

    def __init__(self, params, lr, beta=0.9):
        self.lr, self.beta = lr, beta
        self.v = {key: np.zeros_like(val) for key, val in params.items()}

    def step(self, params, grads):
        for key in params:
            self.v[key] = self.beta * self.v[key] + (1 - self.beta) * grads[key]
            params[key] -= self.lr * self.v[key]


class RMSpropNaive:
    r"""The course's RMSprop, ``fastopt.RMSprop(lr, alpha=beta2, eps=eps)``.

    .. math:: s = \beta_2 s + (1-\beta_2)\, dW^2, \qquad
              W = W - \alpha\, \frac{dW}{\sqrt{s} + \epsilon}

    with ``s`` starting at zero.
    """

    def __init__(self, params, lr, beta2=0.99, eps=1e-8):
        self.lr, self.beta2, self.eps = lr, beta2, eps
        self.s = {key: np.zeros_like(val) for key, val in params.items()}

    def step(self, params, grads):
        for key in params:
            self.s[key] = self.beta2 * self.s[key] + (1 - self.beta2) * grads[key] ** 2
            params[key] -= self.lr * grads[key] / (np.sqrt(self.s[key]) + self.eps)


class AdamNaive:
    r"""The course's Adam with bias correction,
    ``fastopt.Adam(lr, betas=(beta1, beta2), eps=eps)`` (the update of ``torch.optim.Adam``).

    .. math:: v = \beta_1 v + (1-\beta_1)\, dW, \qquad s = \beta_2 s + (1-\beta_2)\, dW^2 \\
              v^\text{corrected} = \frac{v}{1-\beta_1^t}, \qquad
              s^\text{corrected} = \frac{s}{1-\beta_2^t} \\
              W = W - \alpha\, \frac{v^\text{corrected}}{\sqrt{s^\text{corrected}} + \epsilon}

    with ``v``, ``s`` starting at zero and ``t`` the number of steps taken, this one included.
    """

    def __init__(self, params, lr, beta1=0.9, beta2=0.999, eps=1e-8):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.v = {key: np.zeros_like(val) for key, val in params.items()}
        self.s = {key: np.zeros_like(val) for key, val in params.items()}
        self.t = 0

    def step(self, params, grads):
        self.t += 1
        for key in params:
            self.v[key] = self.beta1 * self.v[key] + (1 - self.beta1) * grads[key]
            self.s[key] = self.beta2 * self.s[key] + (1 - self.beta2) * grads[key] ** 2
            v_corrected = self.v[key] / (1 - self.beta1 ** self.t)
            s_corrected = self.s[key] / (1 - self.beta2 ** self.t)
            params[key] -= self.lr * v_corrected / (np.sqrt(s_corrected) + self.eps)

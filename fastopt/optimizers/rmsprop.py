"""RMSprop and Adagrad (torch.optim semantics)."""
from __future__ import annotations

from ..kernels import _scalars
from .base import Optimizer, check_lr, check_nonneg, check_unit

__all__ = ["RMSprop", "Adagrad"]


class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    With ``g = -grad`` if ``maximize`` else ``grad``, then ``g = g + weight_decay * p``:

    .. math::

        s_t &= \alpha s_{t-1} + (1-\alpha) g_t^2 \\
        a_t &= \alpha a_{t-1} + (1-\alpha) g_t, \quad
        \mathrm{den} = \sqrt{s_t - a_t^2} + \epsilon \text{ (centered)}, \quad
        \mathrm{den} = \sqrt{s_t} + \epsilon \text{ (else)} \\
        b_t &= \mu b_{t-1} + g_t/\mathrm{den}, \quad p_t = p_{t-1} - \eta b_t
        \text{ (momentum)}, \quad p_t = p_{t-1} - \eta g_t/\mathrm{den} \text{ (else)}

    State: ``square_avg`` (s), ``grad_avg`` (a, centered only), ``momentum_buffer`` (b, momentum
    only).  The course's RMSProp is ``RMSprop(lr, alpha=beta2)``.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.RMSprop([w], lr=0.01, alpha=0.99, eps=0.0)
    >>> _ = opt.step([np.array([1.0, -4.0])])
    >>> np.round(w, 6)
    array([-0.1,  0.1])

    References
    ----------
    Hinton, Neural Networks for Machine Learning, lecture 6e; Graves, arXiv:1308.0850 (centered).
    """

    family = "rmsprop"
    state_names = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, maximize=False, *, backend=None, nonfinite="propagate"):
        defaults = dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                        momentum=momentum, centered=centered, maximize=maximize)
        super().__init__(params, defaults, backend=backend, nonfinite=nonfinite)

    def _validate_group(self, g):
        check_lr(g["lr"])
        check_unit("alpha", g["alpha"])
        check_nonneg("eps", g["eps"])
        check_nonneg("weight_decay", g["weight_decay"])
        check_nonneg("momentum", g["momentum"])

    def _state_spec(self, g):
        return [("square_avg", True, 0.0), ("grad_avg", bool(g["centered"]), 0.0),
                ("momentum_buffer", g["momentum"] > 0, 0.0)]

    def _scalars(self, g, t, lr, dtype):
        return _scalars.rmsprop(dtype, lr=lr, alpha=g["alpha"], eps=g["eps"],
                                weight_decay=g["weight_decay"], momentum=g["momentum"],
                                centered=g["centered"], maximize=g["maximize"])


class Adagrad(Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    .. math::

        \eta_t &= \eta / (1 + (t-1)\,\mathrm{lr\_decay}) \\
        h_t &= h_{t-1} + g_t^2 \qquad (h_0 = \mathrm{initial\_accumulator\_value}) \\
        p_t &= p_{t-1} - \eta_t\, g_t / (\sqrt{h_t} + \epsilon)

    with ``g = -grad`` if ``maximize``, then ``g = g + weight_decay * p``.  State: ``sum``.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.Adagrad([w], lr=0.5, eps=0.0)
    >>> _ = opt.step([np.array([2.0, -3.0])])
    >>> w
    array([-0.5,  0.5])

    References
    ----------
    Duchi, Hazan, Singer, "Adaptive Subgradient Methods", JMLR 2011.
    """

    family = "adagrad"
    state_names = ("sum",)

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, maximize=False, *, backend=None,
                 nonfinite="propagate"):
        defaults = dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                        initial_accumulator_value=initial_accumulator_value, eps=eps,
                        maximize=maximize)
        super().__init__(params, defaults, backend=backend, nonfinite=nonfinite)

    def _validate_group(self, g):
        check_lr(g["lr"])
        check_nonneg("lr_decay", g["lr_decay"])
        check_nonneg("weight_decay", g["weight_decay"])
        check_nonneg("initial_accumulator_value", g["initial_accumulator_value"])
        check_nonneg("eps", g["eps"])

    def _state_spec(self, g):
        return [("sum", True, float(g["initial_accumulator_value"]))]

    def _scalars(self, g, t, lr, dtype):
        clr = lr / (1.0 + (t - 1) * g["lr_decay"])
        return _scalars.adagrad(dtype, clr=clr, eps=g["eps"], weight_decay=g["weight_decay"],
                                maximize=g["maximize"])

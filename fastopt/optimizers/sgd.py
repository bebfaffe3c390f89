"""SGD (torch.optim.SGD semantics) and the course's Momentum."""
from __future__ import annotations

from ..kernels import _scalars
from .base import Optimizer, check_lr, check_nonneg, check_unit

__all__ = ["SGD", "Momentum"]


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional momentum, as ``torch.optim.SGD``.

    Per element, with ``g = -grad`` if ``maximize`` else ``grad``, then
    ``g = g + weight_decay * p``:

    .. math::

        b_t &= g_t \text{ (first step)}, \quad b_t = \mu b_{t-1} + (1-\tau) g_t \text{ (after)} \\
        d_t &= g_t + \mu b_t \text{ (nesterov)}, \quad d_t = b_t \text{ (else)},
        \quad d_t = g_t \text{ without momentum} \\
        p_t &= p_{t-1} - \eta\, d_t

    Parameters
    ----------
    params : dict, list of arrays or list of param-group dicts
    lr : float or callable
        Learning rate :math:`\eta`, or a schedule ``count -> lr`` (step t uses ``schedule(t-1)``).
    momentum : float
        :math:`\mu \ge 0`; 0 disables the ``momentum_buffer`` state.
    dampening : float
        :math:`\tau \in [0, 1]`.
    nesterov : bool
        Nesterov momentum (needs ``momentum > 0`` and ``dampening == 0``).
    weight_decay : float
        L2 penalty added to the gradient.
    maximize : bool
        Ascend instead of descend.
    backend, nonfinite
        See :class:`fastopt.optimizers.base.Optimizer`.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.ones(3, dtype=np.float32)
    >>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
    >>> _ = opt.step([np.ones(3, dtype=np.float32)])
    >>> w
    array([0.9, 0.9, 0.9], dtype=float32)

    References
    ----------
    Sutskever et al., "On the importance of initialization and momentum in deep learning", 2013.
    """

    family = "sgd"
    state_names = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, nesterov=False,
                 weight_decay=0.0, maximize=False, *, backend=None, nonfinite="propagate"):
        defaults = dict(lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov,
                        weight_decay=weight_decay, maximize=maximize)
        super().__init__(params, defaults, backend=backend, nonfinite=nonfinite)

    def _validate_group(self, g):
        check_lr(g["lr"])
        check_nonneg("momentum", g["momentum"])
        check_unit("dampening", g["dampening"], closed=True)
        check_nonneg("weight_decay", g["weight_decay"])
        if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening")

    def _state_spec(self, g):
        return [("momentum_buffer", g["momentum"] != 0, 0.0)]

    def _scalars(self, g, t, lr, dtype):
        return _scalars.sgd(dtype, lr=lr, momentum=g["momentum"], dampening=g["dampening"],
                            weight_decay=g["weight_decay"], nesterov=g["nesterov"],
                            maximize=g["maximize"], first_step=(t == 1))


class Momentum(Optimizer):
    r"""Gradient descent with momentum in the course's form (an EWA of the gradients).

    .. math::

        v_t &= \beta v_{t-1} + (1-\beta) g_t \qquad (v_0 = 0) \\
        p_t &= p_{t-1} - \eta\, v_t / (1-\beta^t) \text{ with bias correction, else }
        p_{t-1} - \eta\, v_t

    with ``g = grad + weight_decay * p``.  Unlike ``torch.optim.SGD(momentum=...)`` the gradient
    is scaled by ``1 - beta``, so ``lr`` keeps the same meaning as for plain gradient descent.

    Parameters
    ----------
    params : dict, list of arrays or list of param-group dicts
    lr : float or callable
    beta : float
        In [0, 1); 0.9 averages over about 10 steps.
    bias_correction : bool
        Divide by ``1 - beta**t`` (matters in the first ~1/(1-beta) steps).
    weight_decay : float

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2)
    >>> opt = fastopt.Momentum([w], lr=1.0, beta=0.9, bias_correction=True)
    >>> _ = opt.step([np.ones(2)])
    >>> w
    array([-1., -1.])
    """

    family = "momentum"
    state_names = ("velocity",)

    def __init__(self, params, lr=1e-2, beta=0.9, bias_correction=False, weight_decay=0.0, *,
                 backend=None, nonfinite="propagate"):
        defaults = dict(lr=lr, beta=beta, bias_correction=bias_correction,
                        weight_decay=weight_decay)
        super().__init__(params, defaults, backend=backend, nonfinite=nonfinite)

    def _validate_group(self, g):
        check_lr(g["lr"])
        check_unit("beta", g["beta"])
        check_nonneg("weight_decay", g["weight_decay"])

    def _state_spec(self, g):
        return [("velocity", True, 0.0)]

    def _scalars(self, g, t, lr, dtype):
        bc = 1.0 - g["beta"] ** t if g["bias_correction"] else 1.0
        return _scalars.momentum(dtype, lr=lr, beta=g["beta"], weight_decay=g["weight_decay"],
                                 bias_correction=bc)

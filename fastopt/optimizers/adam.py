"""Adam and AdamW (torch.optim semantics)."""
from __future__ import annotations

from ..kernels import _scalars
from .base import Optimizer, check_lr, check_nonneg, check_unit

__all__ = ["Adam", "AdamW"]


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam`` (the course's Momentum + RMSProp with bias correction).

    With ``g = -grad`` if ``maximize`` else ``grad``, then ``g = g + weight_decay * p`` (L2):

    .. math::

        m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
        v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
        \hat v_t = \max(\hat v_{t-1}, v_t) \text{ with amsgrad} \\
        p_t &= p_{t-1} - \frac{\eta}{1-\beta_1^t}\;
              \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}

    (both bias corrections are 1 with ``bias_correction=False``).  One fused pass reads p, g, m,
    v and writes p, m, v: 28 bytes per float32 element (36 with amsgrad).

    Parameters
    ----------
    params : dict, list of arrays or list of param-group dicts
    lr : float or callable
    betas : (float, float)
        :math:`(\beta_1, \beta_2)`, each in [0, 1).
    eps : float
    weight_decay : float
        L2 penalty (coupled); see :class:`AdamW` for decoupled decay.
    amsgrad : bool
        Keep ``max_exp_avg_sq`` and normalise by it.
    maximize : bool
    bias_correction : bool
        Divide by ``1 - beta**t`` (as torch and the course); False gives the raw EWAs.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.zeros(2, dtype=np.float32)
    >>> opt = fastopt.Adam({"w": w}, lr=0.1)
    >>> _ = opt.step({"w": np.array([3.0, -0.5], dtype=np.float32)})
    >>> w   # the first Adam step moves every coordinate by about lr
    array([-0.1,  0.1], dtype=float32)

    References
    ----------
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015; Reddi et al., "On the
    Convergence of Adam and Beyond", ICLR 2018 (amsgrad).
    """

    family = "adam"
    state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, maximize=False, bias_correction=True, *, backend=None,
                 nonfinite="propagate"):
        defaults = dict(lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas,
                        eps=eps, weight_decay=weight_decay, amsgrad=amsgrad, maximize=maximize,
                        bias_correction=bias_correction)
        super().__init__(params, defaults, backend=backend, nonfinite=nonfinite)

    def _validate_group(self, g):
        check_lr(g["lr"])
        betas = g["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"Invalid betas: {betas!r} (expected a pair (beta1, beta2))")
        g["betas"] = tuple(betas)
        check_unit("betas[0]", betas[0])
        check_unit("betas[1]", betas[1])
        check_nonneg("eps", g["eps"])
        check_nonneg("weight_decay", g["weight_decay"])

    def _state_spec(self, g):
        return [("exp_avg", True, 0.0), ("exp_avg_sq", True, 0.0),
                ("max_exp_avg_sq", bool(g["amsgrad"]), 0.0)]

    def _scalars(self, g, t, lr, dtype):
        beta1, beta2 = g["betas"]
        if g["bias_correction"]:
            bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
        else:
            bc1 = bc2 = 1.0
        return _scalars.adam(dtype, lr=lr, beta1=beta1, beta2=beta2, eps=g["eps"],
                             weight_decay=g["weight_decay"],
                             decoupled_weight_decay=self._decoupled, amsgrad=g["amsgrad"],
                             maximize=g["maximize"], bias_correction1=bc1,
                             bias_correction2=bc2)


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: decoupled weight decay.

    First ``p = p * (1 - lr * weight_decay)``, then the :class:`Adam` update with no L2 term,
    in the same single pass.  Default ``weight_decay=1e-2``.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> w = np.ones(2)
    >>> opt = fastopt.AdamW([w], lr=0.1, weight_decay=0.5)
    >>> _ = opt.step([np.zeros(2)])
    >>> w
    array([0.95, 0.95])

    References
    ----------
    Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019.
    """

    _decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, maximize=False, bias_correction=True, *, backend=None,
                 nonfinite="propagate"):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, bias_correction=bias_correction,
                         backend=backend, nonfinite=nonfinite)

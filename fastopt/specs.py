"""One spec per optimizer: everything about a family that is not the per-element arithmetic.

A :class:`Spec` names the rule of :mod:`fastopt.kernels.rules` that steps it and says, once:

* the hyperparameters (defaults, validation, docs, which are keyword-only),
* the state buffers' initial values (the names are the rule's state arrays),
* the per-step scalars (``scalars(group, t, lr) -> tuple``, in the rule's scalar order) and
  the compile-time flags (``flags(group) -> tuple``, in the rule's flag order),
* how torch.optim spells the constructor, and how torch keeps the state,
* the docs (rule, torch equivalent, bytes per element, an example that runs as a doctest),
* the option combinations the conformance tests run and the benchmark case.

Everything else is derived: the NumPy classes (:mod:`fastopt.optimizers`), the PyTorch classes
(:mod:`fastopt.torch`), the conformance tables of the tests, the benchmark cases and their
bytes per element (from the rule's arrays), and ``python -m fastopt info``.

Adding an optimizer: one rule in ``kernels/rules.py``, one reference function in
``kernels/reference.py`` (the oracle), one :class:`Spec` here, its row in the README table.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from . import _checks as C

__all__ = ["Hyper", "Spec", "SPECS", "spec"]


@dataclass(frozen=True)
class Hyper:
    """A hyperparameter: name, default, check (``_checks`` function), docs."""

    name: str
    default: object
    check: object
    doc: str
    kw_only: bool = False


#: Arguments torch.optim classes take that fastopt accepts and does not need (the step is
#: always one fused pass per buffer); ``capturable``/``differentiable`` must stay False.
TORCH_ONLY = {"foreach": None, "fused": None, "capturable": False, "differentiable": False}


@dataclass(frozen=True)
class Spec:
    """Everything about one optimizer family except the arithmetic (see the module docs)."""

    name: str                       # the class name: "Adam"
    rule: str                       # the rule in kernels/rules.py: "adam"
    summary: str                    # one line
    math: str                       # the update rule (reStructuredText math)
    hypers: tuple                   # Hyper, in constructor order
    state: dict                     # state name -> initial value (float or group -> float)
    scalars: object                 # (group, t, lr) -> tuple of floats, the rule's order
    flags: object                   # group -> tuple of bools, the rule's flag order
    example: str                    # doctest lines
    cases: dict                     # test case id -> kwargs ("every option")
    bench: dict                     # benchmark case id -> kwargs
    torch: str = ""                 # "torch.optim.Adam" (empty: no torch equivalent)
    torch_order: tuple = ()         # torch's constructor order, "*" = keyword-only from here
    torch_step: bool = True         # torch keeps a per-parameter "step" (SGD does not)
    torch_eager_state: bool = False  # torch creates the state at construction (Adagrad)
    check_group: object = None      # group -> None: checks across hyperparameters
    fixed: dict = field(default_factory=dict)   # hyperparameters the class sets (AdamW)
    nonneg: tuple = ()              # state that is never negative (8-bit: the unsigned map)
    references: str = ""
    notes: str = ""

    @property
    def signature(self):
        sig = _SIGNATURES.get(self.rule)
        if sig is None:
            from .kernels import rule_signature
            sig = _SIGNATURES[self.rule] = rule_signature(self.rule)
        return sig

    @property
    def state_names(self):
        return self.signature.arrays[2:]

    def defaults(self):
        return {h.name: h.default for h in self.hypers} | dict(self.fixed)

    def validate(self, group):
        """Check and normalise a param group's hyperparameters in place."""
        for h in self.hypers:
            group[h.name] = h.check(h.name, group[h.name])
        for k, v in self.fixed.items():
            if group.get(k, v) != v:
                raise ValueError(f"{self.name} sets {k}={v!r}; got {group[k]!r}")
            group[k] = v
        if self.check_group is not None:
            self.check_group(group)

    def needed(self, group):
        """``{state name: needed?}`` for a group (optional state follows its flag)."""
        sig = self.signature
        on = dict(zip(sig.flags, self.flags(group)))
        return {name: name not in sig.optional or on[sig.optional[name]]
                for name in sig.arrays[2:]}

    def initial(self, name, group):
        v = self.state[name]
        return float(v(group) if callable(v) else v)

    def bytes_per_element(self, group, itemsize=4):
        """Bytes one step moves per parameter element: every used array read, every used
        written array written (SPEC.md's table)."""
        sig = self.signature
        used = sig.used(self.flags(group))
        return itemsize * (len(used) + sum(1 for a in sig.written if a in used))

    def docstring(self):
        """The class docstring (numpydoc), built from the spec."""
        params = ["params : dict, list of arrays or list of param-group dicts",
                  "    The arrays to update in place (see :class:`fastopt.Optimizer`)."]
        for h in self.hypers:
            params += [f"{h.name} : default {h.default!r}", "    " + h.doc]
        params += ["backend, nonfinite", "    See :class:`fastopt.Optimizer`."]
        torch = f"``{self.torch}``, option for option" if self.torch else \
            "no torch.optim equivalent (a fastopt extra)"
        state = ", ".join(f"``{n}``" for n in self.state_names) or "none"
        bpe = self.bytes_per_element(self.defaults())
        parts = [self.summary, "", self.math.strip(), "",
                 f"As {torch}.  State: {state}.  One fused pass per buffer: {bpe} bytes per "
                 f"float32 element with the defaults (reads and writes).",
                 ]
        if self.notes:
            parts += ["", self.notes.strip()]
        parts += ["", "Parameters", "----------", *params, "", "Examples", "--------",
                  self.example.strip()]
        if self.references:
            parts += ["", "References", "----------", self.references.strip()]
        return "\n".join(parts) + "\n"


_SIGNATURES: dict = {}


def spec(name):
    """The spec of the optimizer class called ``name``."""
    for s in SPECS:
        if s.name == name:
            return s
    raise KeyError(name)


_LR = "Learning rate, or a schedule ``count -> lr`` (step t uses ``schedule(t - 1)``)."
_WD = "L2 penalty added to the gradient (``g + weight_decay * p``)."
_MAX = "Ascend instead of descend (``g = -grad``)."


def _sign(g):
    return -1.0 if g["maximize"] else 1.0


# -- SGD ------------------------------------------------------------------------------------------

def _sgd_check(g):
    if g["nesterov"] and (g["momentum"] <= 0 or g["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum and zero dampening")


def _sgd_scalars(g, t, lr):
    m = g["momentum"]
    first = t == 1   # torch: the buffer starts as a clone of the gradient
    return (-lr, _sign(g), g["weight_decay"], 0.0 if first else m,
            1.0 if first else 1.0 - g["dampening"], m)


SGD = Spec(
    name="SGD", rule="sgd", torch="torch.optim.SGD",
    summary="Stochastic gradient descent with optional (Nesterov) momentum.",
    math=r"""
.. math::

    b_t &= g_t \text{ (first step)}, \quad b_t = \mu b_{t-1} + (1-\tau) g_t \text{ (after)} \\
    d_t &= g_t + \mu b_t \text{ (nesterov)}, \quad d_t = b_t \text{ (else)},
    \quad d_t = g_t \text{ without momentum} \\
    p_t &= p_{t-1} - \eta\, d_t

with ``g = -grad`` if ``maximize`` else ``grad``, then ``g = g + weight_decay * p``.""",
    hypers=(Hyper("lr", 1e-3, C.lr, _LR),
            Hyper("momentum", 0.0, C.nonneg, "Momentum factor; 0 keeps no state."),
            Hyper("dampening", 0.0, C.unit_closed, "Dampening of the momentum, in [0, 1]."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("nesterov", False, C.boolean,
                  "Nesterov momentum (needs momentum > 0 and dampening 0)."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "momentum", "dampening", "weight_decay", "nesterov", "*", "maximize",
                 "foreach", "differentiable", "fused"),
    torch_step=False,
    state={"momentum_buffer": 0.0},
    scalars=_sgd_scalars,
    flags=lambda g: (g["momentum"] != 0, bool(g["nesterov"]), g["weight_decay"] != 0),
    check_group=_sgd_check,
    example="""
>>> import numpy as np, fastopt
>>> w = np.ones(3, dtype=np.float32)
>>> opt = fastopt.SGD([w], lr=0.1, momentum=0.9)
>>> _ = opt.step([np.ones(3, dtype=np.float32)])
>>> w
array([0.9, 0.9, 0.9], dtype=float32)""",
    cases={"": dict(lr=0.05), "wd-max": dict(lr=0.05, weight_decay=0.1, maximize=True),
           "mom": dict(lr=0.05, momentum=0.9),
           "mom-damp-wd": dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=0.01),
           "nesterov": dict(lr=0.05, momentum=0.9, nesterov=True),
           "nesterov-max-wd": dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True,
                                   weight_decay=0.01)},
    bench={"sgd": dict(lr=1e-3), "sgd_momentum": dict(lr=1e-3, momentum=0.9)},
    references="Sutskever et al., \"On the importance of initialization and momentum in deep "
               "learning\", ICML 2013.",
)


# -- Momentum (the course's) -------------------------------------------------------------------------

def _momentum_scalars(g, t, lr):
    beta = g["beta"]
    bc = 1.0 - beta ** t if g["bias_correction"] else 1.0
    return (-lr / bc, beta, 1.0 - beta, g["weight_decay"])


MOMENTUM = Spec(
    name="Momentum", rule="momentum",
    summary="Gradient descent with momentum in the course's form (an EWA of the gradients).",
    math=r"""
.. math::

    v_t &= \beta v_{t-1} + (1-\beta) g_t \qquad (v_0 = 0) \\
    p_t &= p_{t-1} - \eta\, v_t / (1-\beta^t) \text{ with bias correction, else }
    p_{t-1} - \eta\, v_t

with ``g = grad + weight_decay * p``.""",
    notes="Unlike ``torch.optim.SGD(momentum=...)`` the gradient is scaled by ``1 - beta``, "
          "so ``lr`` keeps the meaning it has for plain gradient descent.",
    hypers=(Hyper("lr", 1e-2, C.lr, _LR),
            Hyper("beta", 0.9, C.unit, "In [0, 1); 0.9 averages over about 10 steps."),
            Hyper("bias_correction", False, C.boolean,
                  "Divide by ``1 - beta**t`` (matters in the first ~1/(1-beta) steps)."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD)),
    state={"velocity": 0.0},
    scalars=_momentum_scalars,
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.Momentum([w], lr=1.0, beta=0.9, bias_correction=True)
>>> _ = opt.step([np.ones(2)])
>>> w
array([-1., -1.])""",
    cases={"": dict(lr=0.1, beta=0.9),
           "bc-wd": dict(lr=0.1, beta=0.8, bias_correction=True, weight_decay=0.01)},
    bench={"momentum": dict(lr=1e-3, beta=0.9)},
)


# -- RMSprop ---------------------------------------------------------------------------------------

RMSPROP = Spec(
    name="RMSprop", rule="rmsprop", torch="torch.optim.RMSprop",
    summary="RMSprop, optionally centered and with momentum.",
    math=r"""
.. math::

    s_t &= \alpha s_{t-1} + (1-\alpha) g_t^2 \\
    a_t &= \alpha a_{t-1} + (1-\alpha) g_t, \quad
    \mathrm{den} = \sqrt{s_t - a_t^2} + \epsilon \text{ (centered)}, \quad
    \mathrm{den} = \sqrt{s_t} + \epsilon \text{ (else)} \\
    b_t &= \mu b_{t-1} + g_t/\mathrm{den}, \quad p_t = p_{t-1} - \eta b_t
    \text{ (momentum)}, \quad p_t = p_{t-1} - \eta g_t/\mathrm{den} \text{ (else)}

with ``g = -grad`` if ``maximize`` else ``grad``, then ``g = g + weight_decay * p``.  The
course's RMSProp is ``RMSprop(lr, alpha=beta2)``.""",
    hypers=(Hyper("lr", 1e-2, C.lr, _LR),
            Hyper("alpha", 0.99, C.unit, "Smoothing constant of the squared-gradient average."),
            Hyper("eps", 1e-8, C.nonneg, "Added to the denominator."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("momentum", 0.0, C.nonneg, "Momentum factor; 0 keeps no momentum buffer."),
            Hyper("centered", False, C.boolean,
                  "Normalise by the estimated variance (keeps ``grad_avg``)."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "alpha", "eps", "weight_decay", "momentum", "centered", "capturable",
                 "foreach", "maximize", "differentiable"),
    state={"square_avg": 0.0, "grad_avg": 0.0, "momentum_buffer": 0.0},
    nonneg=("square_avg",),
    scalars=lambda g, t, lr: (-lr, _sign(g), g["weight_decay"], g["alpha"], 1.0 - g["alpha"],
                              -g["alpha"], g["eps"], g["momentum"]),
    flags=lambda g: (bool(g["centered"]), g["momentum"] > 0, g["weight_decay"] != 0,
                     1.0 - g["alpha"] < 0.5),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.RMSprop([w], lr=0.01, alpha=0.99, eps=0.0)
>>> _ = opt.step([np.array([1.0, -4.0])])
>>> np.round(w, 6)
array([-0.1,  0.1])""",
    cases={"": dict(lr=0.01),
           "mom-wd-max": dict(lr=0.01, momentum=0.9, weight_decay=0.01, maximize=True),
           "centered": dict(lr=0.01, alpha=0.9, centered=True),
           "centered-mom": dict(lr=0.01, centered=True, momentum=0.5)},
    bench={"rmsprop": dict(lr=1e-3)},
    references="Hinton, Neural Networks for Machine Learning, lecture 6e; Graves, "
               "arXiv:1308.0850 (centered).",
)


# -- Adagrad -------------------------------------------------------------------------------------

ADAGRAD = Spec(
    name="Adagrad", rule="adagrad", torch="torch.optim.Adagrad",
    summary="Adagrad: per-coordinate step sizes from the sum of squared gradients.",
    math=r"""
.. math::

    \eta_t &= \eta / (1 + (t-1)\,\mathrm{lr\_decay}) \\
    h_t &= h_{t-1} + g_t^2 \qquad (h_0 = \mathrm{initial\_accumulator\_value}) \\
    p_t &= p_{t-1} - \eta_t\, g_t / (\sqrt{h_t} + \epsilon)

with ``g = -grad`` if ``maximize``, then ``g = g + weight_decay * p``.""",
    hypers=(Hyper("lr", 1e-2, C.lr, _LR),
            Hyper("lr_decay", 0.0, C.nonneg, "Learning-rate decay per step."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("initial_accumulator_value", 0.0, C.nonneg, "Initial value of ``sum``."),
            Hyper("eps", 1e-10, C.nonneg, "Added to the denominator."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "lr_decay", "weight_decay", "initial_accumulator_value", "eps",
                 "foreach", "*", "maximize", "differentiable", "fused"),
    torch_eager_state=True,
    state={"sum": lambda g: g["initial_accumulator_value"]},
    nonneg=("sum",),
    scalars=lambda g, t, lr: (-lr / (1.0 + (t - 1) * g["lr_decay"]), _sign(g),
                              g["weight_decay"], g["eps"]),
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.Adagrad([w], lr=0.5, eps=0.0)
>>> _ = opt.step([np.array([2.0, -3.0])])
>>> w
array([-0.5,  0.5])""",
    cases={"": dict(lr=0.1),
           "decay-init-wd-max": dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1,
                                     weight_decay=0.01, maximize=True)},
    bench={"adagrad": dict(lr=1e-3)},
    references="Duchi, Hazan, Singer, \"Adaptive Subgradient Methods\", JMLR 2011.",
)


# -- Adam / AdamW --------------------------------------------------------------------------------

def _adam_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    if g["bias_correction"]:
        bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
    else:
        bc1 = bc2 = 1.0
    wd = g["weight_decay"]
    decay = 1.0 - lr * wd if g["decoupled_weight_decay"] else 1.0
    return (decay, _sign(g), wd, 1.0 - beta1, -beta1, beta2, 1.0 - beta2, -lr / bc1,
            1.0 / math.sqrt(bc2), g["eps"])


def _adam_flags(g):
    return (bool(g["amsgrad"]), g["weight_decay"] != 0 and not g["decoupled_weight_decay"],
            1.0 - g["betas"][0] < 0.5)


_ADAM_MATH = r"""
.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
    \hat v_t = \max(\hat v_{t-1}, v_t) \text{ with amsgrad} \\
    p_t &= p_{t-1} - \frac{\eta}{1-\beta_1^t}\;
          \frac{m_t}{\sqrt{v_t}/\sqrt{1-\beta_2^t} + \epsilon}
"""

_ADAM_HYPERS = (
    Hyper("lr", 1e-3, C.lr, _LR),
    Hyper("betas", (0.9, 0.999), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
    Hyper("eps", 1e-8, C.nonneg, "Added to the denominator."),
    Hyper("weight_decay", 0.0, C.nonneg,
          "L2 penalty added to the gradient, or decoupled decay ``p *= 1 - lr*weight_decay`` "
          "with ``decoupled_weight_decay``."),
    Hyper("amsgrad", False, C.boolean, "Keep ``max_exp_avg_sq`` and normalise by it."),
    Hyper("maximize", False, C.boolean, _MAX, kw_only=True),
    Hyper("decoupled_weight_decay", False, C.boolean, "AdamW's decoupled weight decay.",
          kw_only=True),
    Hyper("bias_correction", True, C.boolean,
          "Divide by ``1 - beta**t`` (as torch and the course); False gives the raw EWAs "
          "(a fastopt extra).", kw_only=True),
)

_ADAM_TORCH = ("lr", "betas", "eps", "weight_decay", "amsgrad", "*", "foreach", "maximize",
               "capturable", "differentiable", "fused", "decoupled_weight_decay")

_ADAM_CASES = {"": dict(lr=0.01), "wd-ams": dict(lr=0.01, weight_decay=0.01, amsgrad=True),
               "nobc-max": dict(lr=0.01, bias_correction=False, maximize=True,
                                betas=(0.8, 0.99)),
               "beta1-small": dict(lr=0.01, betas=(0.3, 0.9)),
               "decoupled": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True)}

ADAM = Spec(
    name="Adam", rule="adam", torch="torch.optim.Adam",
    summary="Adam (the course's Momentum + RMSProp with bias correction).",
    math=_ADAM_MATH + "\nwith ``g = -grad`` if ``maximize`` else ``grad``, then "
                      "``g = g + weight_decay * p`` (L2); both bias corrections are 1 with "
                      "``bias_correction=False``.",
    hypers=_ADAM_HYPERS,
    torch_order=_ADAM_TORCH,
    state={"exp_avg": 0.0, "exp_avg_sq": 0.0, "max_exp_avg_sq": 0.0},
    nonneg=("exp_avg_sq", "max_exp_avg_sq"),
    scalars=_adam_scalars,
    flags=_adam_flags,
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2, dtype=np.float32)
>>> opt = fastopt.Adam({"w": w}, lr=0.1)
>>> _ = opt.step({"w": np.array([3.0, -0.5], dtype=np.float32)})
>>> np.round(w, 6)   # the first Adam step moves every coordinate by about lr
array([-0.1,  0.1], dtype=float32)""",
    cases=_ADAM_CASES,
    bench={"adam": dict(lr=1e-3), "adam_amsgrad": dict(lr=1e-3, amsgrad=True)},
    references="Kingma & Ba, \"Adam: A Method for Stochastic Optimization\", ICLR 2015; "
               "Reddi et al., \"On the Convergence of Adam and Beyond\", ICLR 2018 (amsgrad).",
)

ADAMW = Spec(
    name="AdamW", rule="adam", torch="torch.optim.AdamW",
    summary="AdamW: Adam with decoupled weight decay.",
    math="First ``p = p * (1 - lr * weight_decay)``, then the :class:`Adam` update with no L2 "
         "term, in the same single pass:\n" + _ADAM_MATH,
    hypers=tuple(Hyper(h.name, 1e-2, h.check, "Decoupled decay: ``p *= 1 - lr*weight_decay``.")
                 if h.name == "weight_decay" else h
                 for h in _ADAM_HYPERS if h.name != "decoupled_weight_decay"),
    fixed={"decoupled_weight_decay": True},
    torch_order=("lr", "betas", "eps", "weight_decay", "amsgrad", "*", "maximize", "foreach",
                 "capturable", "differentiable", "fused"),
    state=ADAM.state,
    nonneg=ADAM.nonneg,
    scalars=_adam_scalars,
    flags=_adam_flags,
    example="""
>>> import numpy as np, fastopt
>>> w = np.ones(2)
>>> opt = fastopt.AdamW([w], lr=0.1, weight_decay=0.5)
>>> _ = opt.step([np.zeros(2)])
>>> w
array([0.95, 0.95])""",
    cases={"": dict(lr=0.01),
           "ams-max": dict(lr=0.01, weight_decay=0.1, amsgrad=True, maximize=True)},
    bench={"adamw": dict(lr=1e-3)},
    references="Loshchilov & Hutter, \"Decoupled Weight Decay Regularization\", ICLR 2019.",
)

#: Every optimizer, in the order the docs list them.
SPECS = (SGD, MOMENTUM, RMSPROP, ADAGRAD, ADAM, ADAMW)

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
    #: torch's 0-d per-parameter state besides ``step`` (NAdam's ``mu_product``, ASGD's
    #: ``eta``, ``mu``): name -> ``(group, t, lr) -> value after t steps`` (t = 0: initial)
    torch_scalar_state: dict = field(default_factory=dict)
    #: state initialized as a copy of the parameter at its first step (Schedule-Free's ``z``)
    from_param: tuple = ()
    #: per-group running values kept in the param group (Schedule-Free's ``k``, ``weight_sum``,
    #: ...): name -> initial value; ``after_step(group, t, lr) -> {name: value}`` gives their
    #: values after step t (``scalars`` reads them, pure, before); ``group_step`` names the one
    #: that counts steps (then torch keeps no per-parameter ``step``)
    group_state: dict = field(default_factory=dict)
    after_step: object = None
    group_step: str = ""
    #: ``{method: (rule, weight(group), train_mode after)}``: Schedule-Free's ``train()`` and
    #: ``eval()``, one fused ``lerp_to`` pass of each parameter towards its ``z``
    switch: dict = field(default_factory=dict)
    #: a second pass per parameter tensor (LAMB): ``rule`` is then a reduction whose sums
    #: (one tuple per tensor) feed ``apply_scalars(group, t, lr, sums) -> tuple``, the scalars
    #: of ``apply_rule`` over that tensor; each parameter is its own kernel row
    apply_rule: str = ""
    apply_scalars: object = None
    #: the two passes with 8-bit state (LAMB): ``(first, second)`` rules over the same arrays
    #: (parameter, gradient, state), the first only reading (its sums), the second computing
    #: the state again, storing it and updating the parameter: a second pass that read the
    #: 8-bit state back would see a second moment rounded to 0 where the first moment is not.
    #: ``q8_apply_scalars(scalars, group, t, lr, sums)``: the second's scalars from the
    #: first's (clipping included)
    q8_rules: tuple = ()
    q8_apply_scalars: object = None
    #: the optimizer class has its own step (Adafactor: state not shaped like the parameters,
    #: per-tensor scalars from several passes): ``rule``/``apply_rule`` are not run on their own
    #: by the spec-driven kernel tests and benchmarks (its kernels: tests/test_adafactor.py)
    own_step: bool = False
    references: str = ""
    notes: str = ""

    @property
    def signature(self):
        sig = _SIGNATURES.get(self.rule)
        if sig is None:
            from .kernels import rule_signature
            sig = _SIGNATURES[self.rule] = rule_signature(self.rule)
        return sig

    def advance(self, group, t, lr):
        """After step ``t``: the group's running values (``group_state``) updated in place (a
        plain ``dict.update``: not a hyperparameter change)."""
        if self.after_step is not None:
            dict.update(group, self.after_step(group, t, lr))

    def scale_grad(self, scalars, factor):
        """The step's scalars with the gradient scaled by ``factor`` (``max_grad_norm``'s clip
        coefficient, folded into the rule's ``grad_sign``)."""
        i = self.signature.scalars.index("grad_sign")
        return scalars[:i] + (scalars[i] * factor,) + scalars[i + 1:]

    @property
    def state_names(self):
        return self.signature.arrays[2:]

    def defaults(self):
        return {h.name: h.default for h in self.hypers} | dict(self.fixed) | \
            dict(self.group_state)

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
        written array written (SPEC.md's table), in each pass."""
        flags = self.flags(group)
        sigs = [self.signature]
        if self.apply_rule:
            from .kernels import rule_signature
            sigs.append(rule_signature(self.apply_rule))
        total = 0
        for sig in sigs:
            used = sig.used(flags)
            total += len(used) + sum(1 for a in sig.written if a in used)
        return itemsize * total

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
    return (-lr / bc, beta, 1.0 - beta, g["weight_decay"], 1.0)


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


# -- Adamax ----------------------------------------------------------------------------------------

def _pair(check):
    def check_pair(name, value):
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"Invalid {name}: {value!r} (expected a pair)")
        return (check(f"{name}[0]", value[0]), check(f"{name}[1]", value[1]))
    return check_pair


def _finite(name, value):
    """Any finite number."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        import numpy as np
        if not isinstance(value, (np.floating, np.integer)):
            raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value):
        raise ValueError(f"Invalid {name}: {value} (must be a finite number)")
    return value


def _etas(name, value):
    lo, hi = _pair(C.nonneg)(name, value)
    if not 0.0 < lo < 1.0 < hi:
        raise ValueError(f"Invalid {name}: {value!r} (need 0 < etaminus < 1 < etaplus)")
    return (lo, hi)


def _step_sizes(name, value):
    lo, hi = _pair(C.nonneg)(name, value)
    if lo > hi:
        raise ValueError(f"Invalid {name}: {value!r} (need step_size_min <= step_size_max)")
    return (lo, hi)


def _lerp_small(beta1):
    return 1.0 - beta1 < 0.5


def _adamax_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    return (_sign(g), g["weight_decay"], 1.0 - beta1, -beta1, beta2, g["eps"],
            -lr / (1.0 - beta1 ** t))


ADAMAX = Spec(
    name="Adamax", rule="adamax", torch="torch.optim.Adamax",
    summary="Adamax: Adam with the infinity norm in place of the second moment.",
    math=r"""
.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t \\
    u_t &= \max(\beta_2 u_{t-1}, |g_t| + \epsilon) \\
    p_t &= p_{t-1} - \frac{\eta}{1-\beta_1^t}\, \frac{m_t}{u_t}

with ``g = -grad`` if ``maximize``, then ``g = g + weight_decay * p``.""",
    hypers=(Hyper("lr", 2e-3, C.lr, _LR),
            Hyper("betas", (0.9, 0.999), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
            Hyper("eps", 1e-8, C.nonneg, "Added to ``|g|`` in the infinity norm."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "betas", "eps", "weight_decay", "foreach", "*", "maximize",
                 "differentiable", "capturable"),
    state={"exp_avg": 0.0, "exp_inf": 0.0},
    nonneg=("exp_inf",),
    scalars=_adamax_scalars,
    flags=lambda g: (g["weight_decay"] != 0, _lerp_small(g["betas"][0])),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.Adamax([w], lr=0.1, eps=0.0)
>>> _ = opt.step([np.array([2.0, -0.5])])
>>> w
array([-0.1,  0.1])""",
    cases={"": dict(lr=0.01), "wd-max": dict(lr=0.01, weight_decay=0.1, maximize=True,
                                             betas=(0.8, 0.99)),
           "beta1-small-eps": dict(lr=0.01, betas=(0.3, 0.9), eps=1e-3)},
    bench={"adamax": dict(lr=1e-3)},
    references="Kingma & Ba, \"Adam: A Method for Stochastic Optimization\", ICLR 2015, "
               "section 7.1.",
)


# -- NAdam -----------------------------------------------------------------------------------------

_MU_PRODUCTS: dict = {}


def _nadam_mu(beta1, momentum_decay, t):
    return beta1 * (1.0 - 0.5 * 0.96 ** (t * momentum_decay))


def _nadam_mu_product(beta1, momentum_decay, t):
    """``mu_1 * ... * mu_t`` (cached per (beta1, momentum_decay): O(1) per step)."""
    prods = _MU_PRODUCTS.setdefault((beta1, momentum_decay), [1.0])
    while len(prods) <= t:
        prods.append(prods[-1] * _nadam_mu(beta1, momentum_decay, len(prods)))
    return prods[t]


def _nadam_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    md, wd = g["momentum_decay"], g["weight_decay"]
    mu, mu_next = _nadam_mu(beta1, md, t), _nadam_mu(beta1, md, t + 1)
    prod = _nadam_mu_product(beta1, md, t)
    decay = 1.0 - lr * wd if g["decoupled_weight_decay"] else 1.0
    return (decay, _sign(g), wd, 1.0 - beta1, -beta1, beta2, 1.0 - beta2,
            1.0 / (1.0 - beta2 ** t), g["eps"], -lr * (1.0 - mu) / (1.0 - prod),
            -lr * mu_next / (1.0 - prod * mu_next))


def _decoupled_flags(g):
    return (g["weight_decay"] != 0 and not g["decoupled_weight_decay"],
            _lerp_small(g["betas"][0]))


NADAM = Spec(
    name="NAdam", rule="nadam", torch="torch.optim.NAdam",
    summary="NAdam: Adam with Nesterov momentum (and torch's momentum-decay schedule).",
    math=r"""
.. math::

    \mu_t &= \beta_1 (1 - \tfrac12\, 0.96^{t\,\psi}) \qquad (\psi = \mathrm{momentum\_decay}) \\
    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad
    v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
    d_t = \sqrt{v_t / (1-\beta_2^t)} + \epsilon \\
    p_t &= p_{t-1} - \eta \frac{1-\mu_t}{1-\prod_{i\le t}\mu_i} \frac{g_t}{d_t}
          - \eta \frac{\mu_{t+1}}{1-\prod_{i\le t+1}\mu_i} \frac{m_t}{d_t}

with ``g = -grad`` if ``maximize``, then the L2 term, or AdamW's decay ``p *= 1 - lr*wd`` with
``decoupled_weight_decay``.""",
    hypers=(Hyper("lr", 2e-3, C.lr, _LR),
            Hyper("betas", (0.9, 0.999), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
            Hyper("eps", 1e-8, C.nonneg, "Added to the denominator."),
            Hyper("weight_decay", 0.0, C.nonneg,
                  "L2 penalty, or decoupled decay with ``decoupled_weight_decay``."),
            Hyper("momentum_decay", 4e-3, C.nonneg, "``psi`` of the momentum schedule."),
            Hyper("decoupled_weight_decay", False, C.boolean, "AdamW-style weight decay."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "betas", "eps", "weight_decay", "momentum_decay",
                 "decoupled_weight_decay", "*", "foreach", "maximize", "capturable",
                 "differentiable"),
    state={"exp_avg": 0.0, "exp_avg_sq": 0.0},
    nonneg=("exp_avg_sq",),
    scalars=_nadam_scalars,
    flags=_decoupled_flags,
    torch_scalar_state={"mu_product": lambda g, t, lr: _nadam_mu_product(
        g["betas"][0], g["momentum_decay"], t)},
    notes="torch keeps ``mu_product`` as per-parameter state; fastopt computes it from the "
          "step count (the same value, in float64).",
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.NAdam([w], lr=0.1)
>>> _ = opt.step([np.array([3.0, -0.5])])   # the first step: slightly more than lr
>>> np.round(w, 4)
array([-0.1056,  0.1056])""",
    cases={"": dict(lr=0.01), "md-wd": dict(lr=0.01, momentum_decay=0.01, weight_decay=0.1),
           "decoupled-max": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True,
                                 maximize=True),
           "beta1-small": dict(lr=0.01, betas=(0.3, 0.9))},
    bench={"nadam": dict(lr=1e-3)},
    references="Dozat, \"Incorporating Nesterov Momentum into Adam\", ICLR 2016 workshop.",
)


# -- RAdam -----------------------------------------------------------------------------------------

def _radam_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    wd = g["weight_decay"]
    bc1, bc2 = 1.0 - beta1 ** t, 1.0 - beta2 ** t
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * t * beta2 ** t / bc2
    on = rho_t > 5.0
    rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                     / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)) if on else 0.0
    decay = 1.0 - lr * wd if g["decoupled_weight_decay"] else 1.0
    return (decay, _sign(g), wd, 1.0 - beta1, -beta1, beta2, 1.0 - beta2, bc1, lr,
            math.sqrt(bc2), g["eps"], rect, 1.0 if on else 0.0, 0.0)


RADAM = Spec(
    name="RAdam", rule="radam", torch="torch.optim.RAdam",
    summary="RAdam: Adam with the variance of the adaptive step rectified.",
    math=r"""
.. math::

    m_t, v_t &\text{ as Adam}, \quad \rho_\infty = \frac{2}{1-\beta_2} - 1, \quad
    \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1-\beta_2^t} \\
    p_t &= p_{t-1} - \eta \frac{m_t}{1-\beta_1^t}
          \frac{\sqrt{1-\beta_2^t}}{\sqrt{v_t} + \epsilon}\, r_t \text{ if } \rho_t > 5,
          \text{ else } p_{t-1} - \eta \frac{m_t}{1-\beta_1^t} \\
    r_t &= \sqrt{\frac{(\rho_t-4)(\rho_t-2)\rho_\infty}{(\rho_\infty-4)(\rho_\infty-2)\rho_t}}

with ``g = -grad`` if ``maximize``, then the L2 term, or AdamW's decay with
``decoupled_weight_decay``.  Which branch a step takes depends only on ``t``: it is a per-step
scalar of the one fused loop.""",
    hypers=(Hyper("lr", 1e-3, C.lr, _LR),
            Hyper("betas", (0.9, 0.999), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
            Hyper("eps", 1e-8, C.nonneg, "Added to the denominator."),
            Hyper("weight_decay", 0.0, C.nonneg,
                  "L2 penalty, or decoupled decay with ``decoupled_weight_decay``."),
            Hyper("decoupled_weight_decay", False, C.boolean, "AdamW-style weight decay."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "betas", "eps", "weight_decay", "decoupled_weight_decay", "*",
                 "foreach", "maximize", "capturable", "differentiable"),
    state={"exp_avg": 0.0, "exp_avg_sq": 0.0},
    nonneg=("exp_avg_sq",),
    scalars=_radam_scalars,
    flags=_decoupled_flags,
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.RAdam([w], lr=0.1)
>>> _ = opt.step([np.array([3.0, -0.5])])   # early steps: momentum only (rho_t <= 5)
>>> np.round(w, 6)
array([-0.3 ,  0.05])""",
    cases={"": dict(lr=0.01), "wd-max": dict(lr=0.01, weight_decay=0.1, maximize=True),
           "decoupled": dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
           "beta-small": dict(lr=0.01, betas=(0.3, 0.8))},
    bench={"radam": dict(lr=1e-3)},
    references="Liu et al., \"On the Variance of the Adaptive Learning Rate and Beyond\", "
               "ICLR 2020.",
)


# -- Adadelta --------------------------------------------------------------------------------------

ADADELTA = Spec(
    name="Adadelta", rule="adadelta", torch="torch.optim.Adadelta",
    summary="Adadelta: step sizes from the ratio of two running RMS values.",
    math=r"""
.. math::

    s_t &= \rho s_{t-1} + (1-\rho) g_t^2 \\
    \Delta_t &= \frac{\sqrt{a_{t-1} + \epsilon}}{\sqrt{s_t + \epsilon}}\, g_t, \quad
    a_t = \rho a_{t-1} + (1-\rho) \Delta_t^2 \\
    p_t &= p_{t-1} - \eta \Delta_t

with ``g = -grad`` if ``maximize``, then ``g = g + weight_decay * p``.""",
    hypers=(Hyper("lr", 1.0, C.lr, _LR),
            Hyper("rho", 0.9, C.unit_closed, "Decay of both running averages, in [0, 1]."),
            Hyper("eps", 1e-6, C.nonneg, "Added inside both square roots."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "rho", "eps", "weight_decay", "foreach", "*", "capturable", "maximize",
                 "differentiable"),
    state={"square_avg": 0.0, "acc_delta": 0.0},
    nonneg=("square_avg", "acc_delta"),
    scalars=lambda g, t, lr: (-lr, _sign(g), g["weight_decay"], g["rho"], 1.0 - g["rho"],
                              g["eps"]),
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.Adadelta([w], lr=1.0, rho=0.0, eps=1e-6)
>>> _ = opt.step([np.array([1.0, -1.0])])
>>> np.round(w, 6)
array([-0.001,  0.001])""",
    cases={"": dict(lr=1.0), "rho-eps-wd-max": dict(lr=0.5, rho=0.5, eps=1e-4, weight_decay=0.1,
                                                    maximize=True)},
    bench={"adadelta": dict(lr=1.0)},
    references="Zeiler, \"ADADELTA: An Adaptive Learning Rate Method\", arXiv:1212.5701.",
)


# -- ASGD ------------------------------------------------------------------------------------------

def _asgd_eta(g, t, lr):
    """eta after t steps (the one step t+1 uses): ``lr / (1 + lambd*lr*t)**alpha``."""
    return lr / ((1.0 + g["lambd"] * lr * t) ** g["alpha"])


def _asgd_mu(g, t):
    """mu after t steps (the one step t+1 uses): 1 before the first, then
    ``1 / max(1, t - t0)``."""
    return 1.0 if t == 0 else 1.0 / max(1.0, t - g["t0"])


def _asgd_scalars(g, t, lr):
    eta, mu = _asgd_eta(g, t - 1, lr), _asgd_mu(g, t - 1)
    return (_sign(g), g["weight_decay"], 1.0 - g["lambd"] * eta, -eta, mu,
            0.0 if mu == 1.0 else 1.0, 0.0)


ASGD = Spec(
    name="ASGD", rule="asgd", torch="torch.optim.ASGD",
    summary="Averaged SGD: SGD with a decaying step and a running average of the iterates.",
    math=r"""
.. math::

    \eta_t &= \frac{\eta}{(1 + \lambda \eta (t-1))^\alpha}, \quad
    \mu_t = \frac{1}{\max(1, t - 1 - t_0)} \quad (\mu_1 = 1) \\
    p_t &= p_{t-1} (1 - \lambda \eta_t) - \eta_t g_t \\
    \bar p_t &= \bar p_{t-1} + \mu_t (p_t - \bar p_{t-1}) \text{ once } \mu_t \ne 1,
    \text{ else } \bar p_t = p_t

with ``g = -grad`` if ``maximize``, then ``g = g + weight_decay * p``.  The average is the
state ``ax``.""",
    hypers=(Hyper("lr", 1e-2, C.lr, _LR),
            Hyper("lambd", 1e-4, C.nonneg, "Decay term of the step size and the weights."),
            Hyper("alpha", 0.75, C.nonneg, "Power of the step-size decay."),
            Hyper("t0", 1e6, _finite, "The step after which averaging begins."),
            Hyper("weight_decay", 0.0, C.nonneg, _WD),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "lambd", "alpha", "t0", "weight_decay", "foreach", "maximize",
                 "differentiable", "capturable"),
    state={"ax": 0.0},
    scalars=_asgd_scalars,
    flags=lambda g: (g["weight_decay"] != 0,),
    torch_scalar_state={"eta": lambda g, t, lr: _asgd_eta(g, t, lr),
                        "mu": lambda g, t, lr: _asgd_mu(g, t)},
    notes="``eta_t`` is computed from the current ``lr``; torch computes it at the end of the "
          "previous step from that step's ``lr`` (the same for a constant ``lr``; with a "
          "schedule the two differ by one step of the schedule).",
    example="""
>>> import numpy as np, fastopt
>>> w = np.ones(2)
>>> opt = fastopt.ASGD([w], lr=0.5, lambd=0.0)
>>> _ = opt.step([np.ones(2)])
>>> w, opt.state[0]["ax"]
(array([0.5, 0.5]), array([0.5, 0.5]))""",
    cases={"": dict(lr=0.01),
           "averaging-wd-max": dict(lr=0.05, lambd=0.01, alpha=0.5, t0=5.0, weight_decay=0.01,
                                    maximize=True)},
    bench={"asgd": dict(lr=1e-3)},
    references="Polyak & Juditsky, \"Acceleration of Stochastic Approximation by Averaging\", "
               "SIAM J. Control Optim. 1992.",
)


# -- Rprop -----------------------------------------------------------------------------------------

def _rprop_scalars(g, t, lr):
    (etaminus, etaplus), (lo, hi) = g["etas"], g["step_sizes"]
    return (_sign(g), etaminus, etaplus, lo, hi, 1.0, 0.0)


RPROP = Spec(
    name="Rprop", rule="rprop", torch="torch.optim.Rprop",
    summary="Rprop: per-coordinate step sizes grown or shrunk by the sign of the gradient.",
    math=r"""
.. math::

    f &= \eta_+ \text{ if } g_t g_{t-1} > 0, \quad \eta_- \text{ if } g_t g_{t-1} < 0,
    \quad 1 \text{ else} \\
    \Delta_t &= \mathrm{clamp}(f\, \Delta_{t-1}, \Delta_{\min}, \Delta_{\max}), \quad
    g_t \leftarrow 0 \text{ where } g_t g_{t-1} < 0 \\
    p_t &= p_{t-1} - \mathrm{sign}(g_t)\, \Delta_t

with ``g = -grad`` if ``maximize``; ``Delta_0 = lr``, and ``prev`` holds the (masked)
``g_{t-1}``.""",
    hypers=(Hyper("lr", 1e-2, C.lr, "The initial step size (the step size is state after)."),
            Hyper("etas", (0.5, 1.2), _etas, "``(etaminus, etaplus)``, 0 < etaminus < 1 < "
                                             "etaplus."),
            Hyper("step_sizes", (1e-6, 50.0), _step_sizes,
                  "``(min, max)`` of the step size."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "etas", "step_sizes", "*", "capturable", "foreach", "maximize",
                 "differentiable"),
    state={"prev": 0.0, "step_size": lambda g: C.lr_value(g["lr"], 1)},
    nonneg=("step_size",),
    scalars=_rprop_scalars,
    flags=lambda g: (),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.Rprop([w], lr=0.1)
>>> for _ in range(2):
...     _ = opt.step([np.array([1.0, -1.0])])
>>> w
array([-0.22,  0.22])""",
    cases={"": dict(lr=0.01),
           "etas-sizes-max": dict(lr=0.01, etas=(0.3, 1.5), step_sizes=(1e-3, 0.05),
                                  maximize=True)},
    bench={"rprop": dict(lr=1e-3)},
    references="Riedmiller & Braun, \"A Direct Adaptive Method for Faster Backpropagation "
               "Learning: The RPROP Algorithm\", ICNN 1993.",
)


# -- Lion ------------------------------------------------------------------------------------------

def _lion_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    return (-lr, _sign(g), g["weight_decay"], beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0, 0.0)


LION = Spec(
    name="Lion", rule="lion",
    summary="Lion: the sign of an interpolated momentum, one state buffer.",
    math=r"""
.. math::

    u_t &= \mathrm{sign}(\beta_1 m_{t-1} + (1-\beta_1) g_t) \\
    p_t &= p_{t-1} - \eta (u_t + \lambda p_{t-1}) \\
    m_t &= \beta_2 m_{t-1} + (1-\beta_2) g_t

(Chen et al. 2023, Algorithm 2; Optax's ``lion``) with ``g = -grad`` if ``maximize``.  One
state buffer: 20 bytes per float32 element, against Adam's 28.  ``sign`` is torch's (0 for NaN,
as in the PyTorch implementations; Optax's would give NaN).""",
    hypers=(Hyper("lr", 1e-4, C.lr, _LR + "  Typically 3-10x smaller than AdamW's."),
            Hyper("betas", (0.9, 0.99), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
            Hyper("weight_decay", 0.0, C.nonneg,
                  "Decoupled decay ``lambda`` (typically 3-10x AdamW's)."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    state={"exp_avg": 0.0},
    scalars=_lion_scalars,
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(3)
>>> opt = fastopt.Lion([w], lr=0.1)
>>> _ = opt.step([np.array([3.0, -0.5, 0.0])])
>>> w
array([-0.1,  0.1,  0. ])""",
    cases={"": dict(lr=1e-3), "wd-max-betas": dict(lr=1e-3, weight_decay=0.1, maximize=True,
                                                    betas=(0.8, 0.95))},
    bench={"lion": dict(lr=1e-4)},
    references="Chen et al., \"Symbolic Discovery of Optimization Algorithms\", NeurIPS 2023.",
)


# -- LAMB ----------------------------------------------------------------------------------------

def _lamb_bias(g, t):
    beta1, beta2 = g["betas"]
    return 1.0 / (1.0 - beta1 ** t), 1.0 / math.sqrt(1.0 - beta2 ** t)


def _lamb_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    inv_bc1, inv_bc2_sqrt = _lamb_bias(g, t)
    return (_sign(g), beta1, 1.0 - beta1, beta2, 1.0 - beta2, inv_bc1, inv_bc2_sqrt, g["eps"],
            g["weight_decay"])


def _lamb_trust(param_sq, update_sq):
    """``||p|| / ||u||``, 1 where either norm is 0 (or NaN: the comparisons are False)."""
    if param_sq > 0 and update_sq > 0:
        return math.sqrt(param_sq) / math.sqrt(update_sq)
    return 1.0


def _lamb_apply_scalars(g, t, lr, sums):
    inv_bc1, inv_bc2_sqrt = _lamb_bias(g, t)
    return (-lr * _lamb_trust(*sums), inv_bc1, inv_bc2_sqrt, g["eps"], g["weight_decay"])


def _lamb_update_scalars(scalars, g, t, lr, sums):
    return tuple(scalars) + (-lr * _lamb_trust(*sums),)


LAMB = Spec(
    name="LAMB", rule="lamb", apply_rule="lamb_apply", apply_scalars=_lamb_apply_scalars,
    q8_rules=("lamb_norms", "lamb_update"), q8_apply_scalars=_lamb_update_scalars,
    summary="LAMB: Adam's direction scaled per tensor by the trust ratio ||p||/||u||.",
    math=r"""
.. math::

    m_t &= \beta_1 m_{t-1} + (1-\beta_1) g_t, \quad v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2 \\
    u_t &= \frac{m_t/(1-\beta_1^t)}{\sqrt{v_t/(1-\beta_2^t)} + \epsilon} + \lambda p_{t-1} \\
    p_t &= p_{t-1} - \eta\, r_t u_t, \quad r_t = \frac{\lVert p_{t-1} \rVert}{\lVert u_t \rVert}
    \text{ per tensor (1 where either norm is 0)}

(You et al. 2019, Algorithm 2 with :math:`\phi(z) = z`; bias correction on) with ``g = -grad``
if ``maximize``.  The norms are per parameter tensor, so the step is two fused passes over each:
the first updates the moments and sums ``p*p`` and ``u*u`` (reads p, g, m, v; writes m, v), the
second recomputes ``u`` from the new moments and writes p (reads p, m, v): 40 bytes per float32
element, against 48 for a pass that stores ``u`` and a third that applies it.  With 8-bit state
the first pass only reads (p, g and the codes) and the second computes the moments again from
the codes and the gradient, stores them and writes p, so the update uses this step's moments
before they are quantized (as bitsandbytes' 8-bit steps): 26 bytes per element with float32
parameters.""",
    hypers=(Hyper("lr", 1e-3, C.lr, _LR),
            Hyper("betas", (0.9, 0.999), C.betas, "``(beta1, beta2)``, each in [0, 1)."),
            Hyper("eps", 1e-6, C.nonneg, "Added to the denominator."),
            Hyper("weight_decay", 0.0, C.nonneg,
                  "``lambda``: ``weight_decay*p`` is added to the direction ``u`` (inside the "
                  "trust ratio)."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    state={"exp_avg": 0.0, "exp_avg_sq": 0.0},
    nonneg=("exp_avg_sq",),
    scalars=_lamb_scalars,
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.array([3.0, 4.0])
>>> opt = fastopt.LAMB([w], lr=0.1)
>>> _ = opt.step([np.array([1.0, -1.0])])
>>> np.round(w, 4)   # u = (1, -1) (to eps); ||w|| = 5, ||u|| = sqrt(2): r = 3.5355
array([2.6464, 4.3536])""",
    cases={"": dict(lr=0.01), "wd-max-betas": dict(lr=0.01, weight_decay=0.1, maximize=True,
                                                    betas=(0.8, 0.95), eps=1e-8)},
    bench={"lamb": dict(lr=1e-3, weight_decay=0.01)},
    references="You et al., \"Large Batch Optimization for Deep Learning: Training BERT in 76 "
               "minutes\", ICLR 2020 (arXiv:1904.00962, 2019).",
    notes="No torch.optim equivalent.  Bias correction is always on; the trust ratio uses "
          "the norms themselves (the paper's scaling function ``phi`` is the identity).",
)


# -- Schedule-Free AdamW ---------------------------------------------------------------------------

def _sf_values(g, t, lr):
    """``(lr_t, lr_max, weight_sum, ckp1)`` of step t, as ``schedulefree`` computes them."""
    k, warmup = t - 1, g["warmup_steps"]
    lr_t = lr * ((k + 1) / warmup if k < warmup else 1.0)
    lr_max = max(lr_t, g["lr_max"])
    weight = ((k + 1) ** g["r"]) * (lr_max ** g["weight_lr_power"])
    weight_sum = g["weight_sum"] + weight
    ckp1 = weight / weight_sum if weight_sum != 0 else 0.0
    return lr_t, lr_max, weight_sum, ckp1


def _sf_scalars(g, t, lr):
    beta1, beta2 = g["betas"]
    lr_t, _, _, ckp1 = _sf_values(g, t, lr)
    return (1.0, beta2, 1.0 - beta2, 1.0 / (1.0 - beta2 ** t), g["eps"], g["weight_decay"],
            ckp1, ckp1 - 1.0, 1.0 if abs(ckp1) < 0.5 else 0.0, 0.0,
            lr_t * (beta1 * (1.0 - ckp1) - 1.0), -lr_t)


def _sf_after(g, t, lr):
    lr_t, lr_max, weight_sum, _ = _sf_values(g, t, lr)
    return {"k": t, "scheduled_lr": lr_t, "lr_max": lr_max, "weight_sum": weight_sum}


def _warmup(name, value):
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        import numpy as np
        if not (isinstance(value, np.integer) and value >= 0):
            raise ValueError(f"Invalid {name}: {value!r} (must be an integer >= 0)")
    return int(value)


def _beta1_positive(g):
    if g["betas"][0] == 0:
        raise ValueError("AdamWScheduleFree needs betas[0] > 0 (eval() interpolates with "
                         "weight 1 - 1/beta1)")


SCHEDULE_FREE_ADAMW = Spec(
    name="AdamWScheduleFree", rule="adamw_schedulefree", torch="schedulefree.AdamWScheduleFree",
    summary="Schedule-Free AdamW: no learning-rate schedule; train at y, evaluate at x.",
    math=r"""
.. math::

    v_t &= \beta_2 v_{t-1} + (1-\beta_2) g_t^2, \quad
    u_t = g_t / (\sqrt{v_t / (1-\beta_2^t)} + \epsilon) + \lambda y_{t-1} \\
    c_t &= w_t / \textstyle\sum_{i \le t} w_i, \quad
    w_t = t^r\, (\max_{i\le t} \eta_i)^{\mathrm{weight\_lr\_power}} \\
    y_t &= (1 - c_t)\, y_{t-1} + c_t z_{t-1} + \eta_t(\beta_1 (1 - c_t) - 1)\, u_t, \quad
    z_t = z_{t-1} - \eta_t u_t

with ``eta_t = lr * min(1, t/warmup_steps)``, ``z`` starting as a copy of the parameter.  The
parameter holds ``y`` in train mode; ``eval()`` moves it to ``x = y + (1 - 1/beta1)(z - y)``
(the averaged point), ``train()`` back, one fused pass each.  It starts in train mode
(``schedulefree`` starts in eval mode and raises until ``train()`` is called, which here is a
no-op before the first step); ``step()`` in eval mode raises ``RuntimeError``.""",
    hypers=(Hyper("lr", 2.5e-3, C.lr, _LR),
            Hyper("betas", (0.9, 0.999), C.betas,
                  "``(beta1, beta2)``: interpolation and second-moment decay, in [0, 1)."),
            Hyper("eps", 1e-8, C.nonneg, "Added to the denominator."),
            Hyper("weight_decay", 0.0, C.nonneg, "Added to the normalized gradient, at y."),
            Hyper("warmup_steps", 0, _warmup, "Linear learning-rate warm-up steps."),
            Hyper("r", 0.0, C.nonneg, "Polynomial weighting power of the average."),
            Hyper("weight_lr_power", 2.0, C.nonneg,
                  "The average's weights are ``lr_max**weight_lr_power``.")),
    torch_order=("lr", "betas", "eps", "weight_decay", "warmup_steps", "r", "weight_lr_power",
                 "foreach"),
    torch_step=False,
    state={"z": 0.0, "exp_avg_sq": 0.0},
    nonneg=("exp_avg_sq",),
    from_param=("z",),
    group_state={"k": 0, "train_mode": True, "weight_sum": 0.0, "lr_max": -1.0,
                 "scheduled_lr": 0.0},
    after_step=_sf_after,
    group_step="k",
    switch={"train": ("lerp_to", lambda g: 1.0 - g["betas"][0], True),
            "eval": ("lerp_to", lambda g: 1.0 - 1.0 / g["betas"][0], False)},
    check_group=_beta1_positive,
    scalars=_sf_scalars,
    flags=lambda g: (g["weight_decay"] != 0,),
    example="""
>>> import numpy as np, fastopt
>>> w = np.zeros(2)
>>> opt = fastopt.AdamWScheduleFree([w], lr=0.1)
>>> _ = opt.step([np.array([3.0, -0.5])])
>>> np.round(w, 4)
array([-0.1,  0.1])
>>> opt.eval()      # the averaged point, for evaluation and checkpoints
>>> np.round(w, 4)
array([-0.1,  0.1])""",
    cases={"": dict(lr=0.01),
           "warmup-wd-r": dict(lr=0.01, warmup_steps=5, weight_decay=0.1, r=1.0,
                               weight_lr_power=1.0, betas=(0.8, 0.99))},
    bench={"adamw_schedulefree": dict(lr=1e-3)},
    references="Defazio et al., \"The Road Less Scheduled\", NeurIPS 2024; the ``schedulefree`` "
               "package (``AdamWScheduleFree``).",
)

# -- Adafactor -------------------------------------------------------------------------------------

def _adafactor_eps(name, value):
    """``(eps1, eps2)``: eps1 None (the parameter dtype's machine epsilon) or a finite number
    >= 0, eps2 a finite number >= 0."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (eps1, eps2), got {value!r}")
    eps1, eps2 = value
    if eps1 is not None:
        C.nonneg(f"{name}[0]", eps1)
        eps1 = float(eps1)
    C.nonneg(f"{name}[1]", eps2)
    return (eps1, float(eps2))


def _beta2_decay(name, value):
    if not isinstance(value, (int, float)) or isinstance(value, bool) \
            or not math.isfinite(value) or value > 0:
        import numpy as np
        if not (isinstance(value, np.floating) and math.isfinite(value) and value <= 0):
            raise ValueError(f"Invalid {name}: {value!r} (must be a finite number <= 0)")
    return float(value)


def _clip_threshold(name, value):
    C.nonneg(name, value)
    if value < 1:
        raise ValueError(f"Invalid {name}: {value} (the clipping threshold must be >= 1)")
    return float(value)


def _adafactor_scalars(g, t, lr):
    """Pass 1's scalars of a vector (``eps1_sq`` NaN when ``eps1`` is None: the step puts each
    parameter dtype's own in; :mod:`fastopt.optimizers._adafactor`)."""
    w = float(t) ** g["beta2_decay"]
    eps1 = g["eps"][0]
    return (_sign(g), w, w - 1.0, 1.0 if abs(w) < 0.5 else 0.0, 0.0,
            math.nan if eps1 is None else eps1 * eps1, 1.0)


ADAFACTOR = Spec(
    name="Adafactor", rule="adafactor_vector", apply_rule="adafactor_vector_apply",
    apply_scalars=None, own_step=True, torch="torch.optim.Adafactor",
    summary="Adafactor: a factored second moment (row and column factors) for matrices.",
    math=r"""
.. math::

    \hat\beta_{2,t} &= 1 - t^{\tau}, \quad \rho_t = \min(\eta, 1/\sqrt{t}), \quad
    \alpha_t = \max(\epsilon_2, \mathrm{RMS}(p_{t-1}))\, \rho_t, \quad
    p \leftarrow (1 - \eta\lambda)\, p \\
    R_t &= \hat\beta_{2,t} R_{t-1} + (1-\hat\beta_{2,t})\, \mathrm{mean}_j(g^2), \quad
    C_t = \hat\beta_{2,t} C_{t-1} + (1-\hat\beta_{2,t})\, \mathrm{mean}_i(g^2), \quad
    V_t = \frac{R_t C_t}{\max(\mathrm{mean}_i R_t, \epsilon_1)} \\
    U_t &= g / \sqrt{\max(V_t, \epsilon_1^2)}, \quad
    p_t = p - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

(torch.optim.Adafactor; ``tau = beta2_decay``, ``eps = (eps1, eps2)``, eps1 None: the
parameter dtype's machine epsilon) for a parameter of 2 or more dimensions, factored over its
last two (``R``: one value per row, ``C`` one per column, of each matrix); a vector keeps
``V_t = hat-beta V_{t-1} + (1 - hat-beta) g^2`` whole.  ``g = -grad`` if ``maximize``.

Passes: the RMS of ``p`` and of ``U`` are per tensor, and ``U`` needs the row and column
factors of this step, which need every row and every column of ``g``.  So a matrix takes three
fused passes: the row and column sums of ``g*g`` with the sum of ``p*p`` (reads p, g), the sum
of ``U*U`` (reads g; the ``R + B*m`` factors stay in cache), the update (reads p, g; writes p):
24 bytes per float32 element, the factored state itself ``4*(n + m)`` bytes per ``n x m``
matrix.  A vector takes two, as LAMB (reads p, g, V, writes V; reads p, g, V, writes p): 32
bytes per element.  torch's for-loop makes about 12 passes over a matrix.""",
    hypers=(Hyper("lr", 1e-2, C.lr,
                  "The ceiling of the relative step size ``rho_t`` and the weight decay's "
                  "scale (torch's use; the paper has no lr).  Or a schedule."),
            Hyper("beta2_decay", -0.8, _beta2_decay,
                  "``tau`` <= 0: the second moment's decay is ``1 - t**tau``."),
            Hyper("eps", (None, 1e-3), _adafactor_eps,
                  "``(eps1, eps2)``: eps1 bounds the second moment from below (None: the "
                  "parameter dtype's epsilon), eps2 the parameter RMS in ``alpha``."),
            Hyper("d", 1.0, _clip_threshold, "Update clipping threshold (>= 1) on RMS(U)."),
            Hyper("weight_decay", 0.0, C.nonneg, "Decoupled: ``p *= 1 - lr*weight_decay``."),
            Hyper("maximize", False, C.boolean, _MAX, kw_only=True)),
    torch_order=("lr", "beta2_decay", "eps", "d", "weight_decay", "*", "foreach", "maximize"),
    state={"variance": 0.0},
    nonneg=("variance",),
    scalars=_adafactor_scalars,
    flags=lambda g: (),
    example="""
>>> import numpy as np, fastopt
>>> w = np.ones((2, 3))
>>> opt = fastopt.Adafactor([w], lr=0.01)
>>> _ = opt.step([np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])])
>>> sorted(opt.state[0])        # the factors: one value per row, one per column
['col_var', 'row_var', 'step']
>>> opt.state[0]["row_var"].shape, opt.state[0]["col_var"].shape
((2, 1), (1, 3))""",
    # (eps1 given: with None it is the dtype's epsilon, so float32 and the float64 oracle would
    # clamp different elements; eps1=None against torch: tests/test_adafactor.py)
    cases={"": dict(lr=0.01, eps=(1e-7, 1e-3)),
           "wd-max-eps-d": dict(lr=0.05, beta2_decay=-0.5, eps=(1e-30, 1e-2), d=2.0,
                                weight_decay=0.1, maximize=True)},
    bench={"adafactor": dict(lr=1e-2)},
    references="Shazeer & Stern, \"Adafactor: Adaptive Learning Rates with Sublinear Memory "
               "Cost\", ICML 2018 (arXiv:1804.04235); torch.optim.Adafactor.",
    notes="State: ``row_var`` and ``col_var`` (torch's shapes: the parameter's with the last, "
          "respectively the second-to-last, dimension 1) for 2 or more dimensions, "
          "``variance`` for fewer, stored in ``state_dtype`` (None: the parameter's dtype, as "
          "torch); with ``state_dtype=\"int8\"`` a vector of at least ``min_8bit_size`` "
          "elements keeps 8-bit ``variance`` codes (and ``variance_absmax``), the factors of a "
          "matrix (``n + m`` values) stay float32.  eps1=None is each parameter's own dtype's "
          "epsilon (torch takes the first parameter's dtype for the whole group; bfloat16's "
          "is 2**-7).",
)

#: Every optimizer, in the order the docs list them.
SPECS = (SGD, MOMENTUM, RMSPROP, ADAGRAD, ADAM, ADAMW, ADAMAX, NADAM, RADAM, ADADELTA, ASGD, RPROP,
         ADAFACTOR, LION, LAMB, SCHEDULE_FREE_ADAMW)

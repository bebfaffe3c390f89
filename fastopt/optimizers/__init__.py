"""The NumPy-facing optimizer classes, one per spec of :mod:`fastopt.specs`.

Each class is made by :func:`make_class`: a subclass of :class:`Optimizer` with the spec's
hyperparameters as its constructor's arguments (in the spec's order, the keyword-only ones after
``*``, then ``backend``, ``nonfinite``, ``state_dtype``, ``rounding``, ``seed``,
``min_8bit_size`` and ``max_grad_norm``) and the docstring the spec writes.  No class holds
math: :class:`Optimizer` steps whatever its spec describes.
"""
from __future__ import annotations

from .. import specs as _specs
from .._classgen import make_init
from ._adafactor import AdafactorOptimizer
from ._state_io import load, save
from .core import Optimizer

__all__ = ["Optimizer", "make_class", "save", "load"] + [s.name for s in _specs.SPECS]


def make_class(spec, base=Optimizer, module=__name__):
    """The optimizer class of ``spec``: its ``__init__`` has the spec's signature."""
    init = make_init(f"{spec.name}.__init__", module,
                     [(h.name, h.default, h.kw_only) for h in spec.hypers],
                     [("backend", None), ("nonfinite", "propagate"), ("state_dtype", None),
                      ("rounding", "nearest"), ("seed", 0), ("min_8bit_size", 4096),
                      ("max_grad_norm", None)],
                     ({"_base": base}, "_base.__init__(self, params, dict({hyper}), "
                                       "backend=backend, nonfinite=nonfinite, "
                                       "state_dtype=state_dtype, rounding=rounding, seed=seed, "
                                       "min_8bit_size=min_8bit_size, "
                                       "max_grad_norm=max_grad_norm)"))
    ns = {"__init__": init, "spec": spec, "__module__": module, "__doc__": spec.docstring()}
    for method, (_, _, mode) in spec.switch.items():     # Schedule-Free's train() / eval()
        ns[method] = _switch_method(method, mode)
    return type(spec.name, (base,), ns)


def _switch_method(method, mode):
    def switch(self):
        self._switch(method)
    switch.__name__ = method
    switch.__doc__ = (f"Put the parameters at the {'training point y' if mode else 'averaged '}"
                      f"{'' if mode else 'point x'} (one fused pass; a no-op when already "
                      f"there).  Call {'before training steps' if mode else 'before evaluating'}"
                      f"{'' if mode else ' or saving a checkpoint'}.")
    return switch


#: families whose state is not shaped like their parameters: their own base class
_BASES = {"Adafactor": AdafactorOptimizer}

for _spec in _specs.SPECS:
    globals()[_spec.name] = make_class(_spec, _BASES.get(_spec.name, Optimizer))
del _spec

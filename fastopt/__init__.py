"""fastopt: fused, in-place optimizer update kernels.

One pass per parameter buffer: the gradient EMAs, bias correction and the parameter step are
computed together, in place, with no temporaries.  Each update rule is written once
(:mod:`fastopt.kernels.rules`) and compiled for every backend: the Cython extension (the default
where it was built), Numba, numba.cuda; a plain NumPy reference is the oracle.  Each optimizer is
one spec (:mod:`fastopt.specs`) from which its classes are made.

``import fastopt`` is cheap: it imports NumPy and this package's Python code only; backends (the
Cython extension, Numba, numba.cuda) are imported and kernels compiled on first use.
"""
from ._version import __version__
from . import schedules
from .arena import Arena
from .averaging import EWA, WeightEMA, ewa
from .clip import clip_grad_norm
from .data import minibatches
from .kernels import BACKENDS, backend_status
from .optimizers import (ASGD, LAMB, SGD, Adadelta, Adafactor, Adagrad, Adam, Adamax, AdamW,
                         AdamWScheduleFree, Lion, Momentum, NAdam, Optimizer, RAdam, RMSprop, Rprop,
                         load, save)

__all__ = [
    "__version__",
    "SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW", "Adamax", "NAdam", "RAdam",
    "Adadelta", "ASGD", "Rprop", "Adafactor", "Lion", "LAMB", "AdamWScheduleFree", "Optimizer",
    "Arena", "save", "load", "BACKENDS", "backend_status",
    "schedules", "ewa", "EWA", "WeightEMA", "minibatches", "clip_grad_norm",
]

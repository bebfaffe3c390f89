"""``fastopt.clip_grad_norm``: torch's ``clip_grad_norm_`` for NumPy (and GPU) arrays.

Inside an optimizer, ``max_grad_norm=`` does the same without writing the gradients: the clip
factor is folded into the fused update.  This function is for code that only wants the clip (or
clips before something that is not a fastopt optimizer): one read of the gradients for the norm,
one read and write to scale them.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

from . import kernels as _kernels
from ._checks import nonneg
from .kernels import formats as F

__all__ = ["clip_grad_norm", "grad_norm"]


def _arrays(grads):
    if isinstance(grads, Mapping):
        arrays = list(grads.values())
    elif hasattr(grads, "shape"):
        arrays = [grads]
    else:
        arrays = list(grads)
    for i, a in enumerate(arrays):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"grads[{i}] must be an array, got {type(a).__name__}")
    return arrays


def grad_norm(grads, *, backend=None):
    """The global L2 norm of ``grads`` (an array, a sequence or a dict of arrays), as torch's
    ``get_total_norm``: one read of every gradient."""
    arrays = _arrays(grads)
    be = _kernels.resolve_backend(arrays, backend)
    flats = []
    for i, a in enumerate(arrays):
        be.check_param(f"grads[{i}]", a)    # a float array this backend can read, contiguous
        flats.append(be.flat(a))
    return math.sqrt(sum(be.sumsq(f) for f in flats)), be, flats


def clip_grad_norm(grads, max_norm, *, error_if_nonfinite=False, backend=None):
    """Scale ``grads`` in place so that their global L2 norm is at most ``max_norm``.

    As ``torch.nn.utils.clip_grad_norm_``: the factor is ``min(1, max_norm / (norm + 1e-6))``;
    returns the norm before clipping.  With ``error_if_nonfinite`` a NaN or infinite norm raises
    ``FloatingPointError`` before anything is scaled (otherwise the factor is torch's: NaN for a
    NaN norm, 0 for an infinite one).

    >>> import numpy as np, fastopt
    >>> g = [np.array([3.0, 0.0]), np.array([4.0])]
    >>> float(fastopt.clip_grad_norm(g, 1.0))
    5.0
    >>> np.round(g[0], 6), np.round(g[1], 6)
    (array([0.6, 0. ]), array([0.8]))
    """
    nonneg("max_norm", max_norm)
    norm, be, flats = grad_norm(grads, backend=backend)
    if not math.isfinite(norm) and error_if_nonfinite:
        raise FloatingPointError(f"the total norm of the gradients is {norm}; nothing was "
                                 f"scaled")
    factor = F.clip_coefficient(norm, float(max_norm))
    if factor != 1.0:
        for f in flats:
            be.scale(f, factor)
    return norm

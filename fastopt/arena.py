"""Arena: a whole model's parameters in one contiguous buffer per dtype.

An optimizer built on ``arena.params`` and stepped with ``arena.grads`` finds that each group's
parameters of one dtype lie end to end in one buffer and updates them with a single fused kernel
call, however many tensors the model has.  Per-array stepping costs one call (a few µs of dispatch)
per tensor, which dominates for models with many small tensors.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .kernels import check_dtype, is_device_array

__all__ = ["Arena"]


class Arena:
    """Copy parameters into one contiguous buffer per dtype and expose views into it.

    Parameters
    ----------
    params : dict or sequence of arrays
        The model's parameters; their values are copied in.  After this, train with
        ``arena.params`` (same structure, shapes and dtypes), not the originals.
    device : {None, "cpu", "cuda"}
        Where the buffers live.  ``"cuda"`` allocates them on the current GPU (numba.cuda device
        arrays; parameters may be host or device arrays).

    Attributes
    ----------
    params : dict or list
        Views into the parameter buffers, in the structure given.
    grads : dict or list
        Views into matching gradient buffers, zero-initialised.  Write gradients into them in
        place (``np.copyto(arena.grads[k], dW)`` or ``out=``) and pass ``arena.grads`` to ``step``.
    buffers : dict
        ``{dtype: (param_buffer, grad_buffer)}``, 1-D.

    Examples
    --------
    >>> import numpy as np, fastopt
    >>> arena = fastopt.Arena({"W": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    >>> opt = fastopt.SGD(arena.params, lr=0.5)
    >>> arena.grads["W"][...] = 1.0
    >>> _ = opt.step(arena.grads)     # one kernel call for both tensors
    >>> arena.params["W"][0]
    array([0.5, 0.5, 0.5], dtype=float32)
    """

    def __init__(self, params, device=None):
        if device not in (None, "cpu", "cuda"):
            raise ValueError(f"device must be None, 'cpu' or 'cuda', got {device!r}")
        if isinstance(params, Mapping):
            keys = list(params)
            arrays = [params[k] for k in keys]
        elif isinstance(params, (list, tuple)):
            keys = None
            arrays = list(params)
        else:
            raise TypeError(f"params must be a dict or a list of arrays, got "
                            f"{type(params).__name__}")
        labels = keys if keys is not None else list(range(len(arrays)))
        for lab, a in zip(labels, arrays):
            if not hasattr(a, "dtype") or not hasattr(a, "shape"):
                raise TypeError(f"params[{lab!r}] must be an array, got {type(a).__name__}")
            check_dtype(f"params[{lab!r}]", np.dtype(a.dtype))
        self.device = "cuda" if device == "cuda" else "cpu"
        # Layout: per dtype in order of first appearance, tensors end to end.
        order = {}
        for j, a in enumerate(arrays):
            order.setdefault(np.dtype(a.dtype), []).append(j)
        self._layout = order
        self.buffers = {}
        pviews = [None] * len(arrays)
        gviews = [None] * len(arrays)
        if self.device == "cuda":
            from .kernels import cuda as _cuda
            _cuda.arena_fill(self, arrays, order, pviews, gviews)
        else:
            for dtype, idx in order.items():
                total = sum(int(np.prod(arrays[j].shape)) for j in idx)
                pbuf = np.empty(total, dtype=dtype)
                gbuf = np.zeros(total, dtype=dtype)
                off = 0
                for j in idx:
                    a = arrays[j]
                    src = a.copy_to_host() if is_device_array(a) else np.asarray(a)
                    n = src.size
                    pviews[j] = pbuf[off:off + n].reshape(src.shape)
                    pviews[j][...] = src
                    gviews[j] = gbuf[off:off + n].reshape(src.shape)
                    off += n
                self.buffers[dtype] = (pbuf, gbuf)
        if keys is None:
            self.params = pviews
            self.grads = gviews
        else:
            self.params = dict(zip(keys, pviews))
            self.grads = dict(zip(keys, gviews))

    @property
    def size(self):
        """Total number of parameter values."""
        return sum(int(p.size) for p, _ in self.buffers.values())

    def zero_grad(self):
        """Set every gradient to zero (one fill per dtype)."""
        for _, g in self.buffers.values():
            if self.device == "cuda":
                from .kernels import cuda as _cuda
                _cuda.fill_zero(g)
            else:
                g.fill(0)

    def __repr__(self):
        parts = ", ".join(f"{dt}: {p.size}" for dt, (p, _) in self.buffers.items())
        n = len(self.params)
        return f"Arena({n} tensors, {{{parts}}}, device={self.device!r})"

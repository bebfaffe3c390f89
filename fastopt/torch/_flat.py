"""``flatten=True``: a (group, device, dtype) run of parameters re-homed into one buffer.

The parameter objects are kept; their ``.data`` becomes a view into one flat parameter tensor
and their ``.grad`` a view into one flat gradient tensor; state buffers are flat too.  The step
does nothing special for this mode but skip re-checking tensors it made itself (``intact``): it
looks for tensors laid end to end (:func:`fastopt._layout.joint_runs`) and finds the
parameters, gradients and state of a ``Flat`` in one run each, so they become one kernel row.
A gradient replaced by another tensor (or a parameter moved) just splits the run for that step.
"""
from __future__ import annotations

import numpy as np
import torch

from . import _tensors as T

__all__ = ["Flat"]


class Flat:
    """One (group, device, dtype) run of parameters re-homed into contiguous buffers."""

    def __init__(self, params):
        p0 = params[0]
        self.params = params
        self.device, self.dtype = p0.device, p0.dtype
        self.numels = [p.numel() for p in params]
        self.offsets = np.cumsum([0] + self.numels).tolist()
        n = self.offsets[-1]
        # (huge pages advised before the first touch: T.advise_huge)
        self.param = T.advise_huge(torch.empty(n, dtype=self.dtype, device=self.device))
        self.grad = T.filled((n,), 0.0, self.dtype, self.device)
        self.state = {}
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            self.param[a:b].copy_(p.detach().reshape(-1))
            if p.grad is not None and not p.grad.is_sparse and p.grad.shape == p.shape:
                self.grad[a:b].copy_(p.grad.detach().reshape(-1))
        self.grads = []
        for p, a, b in zip(params, self.offsets, self.offsets[1:]):
            p.data = self.param[a:b].view_as(p)
        self.ptrs = [p.data_ptr() for p in params]
        self.attach_grads()

    def attach_grads(self):
        self.grads = [self.grad[a:b].view_as(p)
                      for p, a, b in zip(self.params, self.offsets, self.offsets[1:])]
        for p, g in zip(self.params, self.grads):
            p.grad = g

    def rehome(self):
        """After a deep copy or an unpickling: every parameter (and every gradient shaped like
        it) a view into the flat buffers again -- values copied in where the copy made it a
        tensor of its own -- and the addresses recorded anew.  A gradient that is None stays
        None (the step skips that parameter, as before the copy)."""
        self.grads = []
        for p, a, b in zip(self.params, self.offsets, self.offsets[1:]):
            view = self.param[a:b].view_as(p)
            if p.data_ptr() != view.data_ptr():
                view.copy_(p.detach())
                p.data = view
            gview = self.grad[a:b].view_as(p)
            g = p.grad
            if g is not None and not g.is_sparse and g.shape == p.shape and g.dtype == p.dtype:
                if g.data_ptr() != gview.data_ptr():
                    gview.copy_(g)
                    p.grad = gview
                gview = p.grad
            self.grads.append(gview)
        self.ptrs = [p.data_ptr() for p in self.params]

    def intact(self):
        """Every parameter still lives in the flat buffer and its ``.grad`` is still our view
        (so all of them are known valid, and the step need not check them one by one)."""
        for p, g, ptr in zip(self.params, self.grads, self.ptrs):
            if p.grad is not g or p.data_ptr() != ptr:
                return False
        return True

    def flat_state(self, name, init, dtype=None):
        dtype = self.dtype if dtype is None else dtype
        buf = self.state.get(name)
        if buf is None or buf.dtype != dtype:
            n = self.offsets[-1]
            buf = T.filled((n,), init, dtype, self.device)
            self.state[name] = buf
        return buf

    def state_view(self, i, name, init, dtype=None):
        return self.flat_state(name, init, dtype)[self.offsets[i]:self.offsets[i + 1]].view_as(
            self.params[i])

"""Contiguous runs: which consecutive buffers lie end to end in one allocation.

One algorithm, used wherever fastopt wants one kernel call over many tensors: the optimizers'
parameter segments and gradient rows, :class:`fastopt.WeightEMA`, and the PyTorch adapter.
Each caller says how to *locate* a buffer (which allocation, where it starts, how many bytes)
and how to *join* a run into one 1-D view; this module only decides the runs.
"""
from __future__ import annotations

__all__ = ["runs", "joint_runs"]


def runs(buffers, locate):
    """Split ``buffers`` (kept in order) into maximal runs laid end to end in one allocation.

    ``locate(buffer)`` returns ``(key, start, nbytes)``: buffers join a run when their keys are
    equal and not None (the key names the allocation and the dtype) and each starts where the
    previous one ended.  Empty buffers (``nbytes == 0``) say nothing about where they are: they
    join the run they appear in.  Returns a list of lists of indices into ``buffers``.
    """
    out = []
    cur, key, end = [], None, None   # key/end: of the current run's last non-empty buffer
    for i, b in enumerate(buffers):
        k, start, nbytes = locate(b)
        if nbytes == 0:
            cur.append(i)
            continue
        if cur and end is None:          # the run so far holds only empty buffers
            cur.append(i)
        elif cur and k is not None and k == key and start == end:
            cur.append(i)
        else:
            if cur:
                out.append(cur)
            cur = [i]
        key, end = k, start + nbytes
    if cur:
        out.append(cur)
    return out


def joint_runs(columns, locate):
    """Runs over several aligned lists at once (parameters, gradients, each state buffer):
    item ``i`` joins the run of ``i - 1`` only where it does so in every column.  A column of
    ``None`` entries (state the options leave unused) constrains nothing."""
    n = len(columns[0])
    breaks = set()
    for col in columns:
        if all(x is None for x in col):
            continue
        for run in runs(col, locate):
            breaks.add(run[0])
    out, cur = [], []
    for i in range(n):
        if i in breaks and cur:
            out.append(cur)
            cur = []
        cur.append(i)
    if cur:
        out.append(cur)
    return out

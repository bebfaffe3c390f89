r"""Mini-batch iteration (the course's :math:`X^{\{t\}}, Y^{\{t\}}`).

One epoch of mini-batch gradient descent: shuffle the ``m`` samples, partition the permutation
into ``ceil(m / batch_size)`` mini-batches, all of ``batch_size`` samples but possibly the last,
and take one step per mini-batch.  ``batch_size = m`` is batch gradient descent, ``batch_size =
1`` stochastic gradient descent; the course recommends a power of two such as 64-512.
"""
from __future__ import annotations

import numbers

import numpy as np

__all__ = ["minibatches"]


def _sample_axis(name, a, axis):
    ndim = a.ndim
    if ndim == 0:
        raise ValueError(f"{name} must be at least 1-D (it holds samples), got a scalar")
    if not -ndim <= axis < ndim:
        raise ValueError(f"axis {axis} is out of range for {name} with {ndim} dimensions")
    return axis % ndim


def minibatches(X, Y=None, batch_size=64, shuffle=True, seed=None, axis=0):
    r"""Yield the mini-batches ``(X_t, Y_t)`` of one epoch.

    With ``m`` samples, a permutation of ``0..m-1`` (the identity when ``shuffle=False``) is
    cut into ``ceil(m / batch_size)`` consecutive pieces; piece :math:`t` selects
    :math:`X^{\{t\}}` and :math:`Y^{\{t\}}`.  Every sample appears in exactly one batch; all
    batches have ``batch_size`` samples except possibly the last (``m mod batch_size``).

    Parameters
    ----------
    X : array_like
        Samples along ``axis``: ``(m, n_x)`` with ``axis=0``, or the course's ``(n_x, m)`` with
        ``axis=1``.
    Y : array_like, optional
        Labels, samples along the same ``axis`` (a 1-D ``Y`` of length ``m`` along its only
        axis), e.g. ``(1, m)`` or ``(n_y, m)`` with ``axis=1``.  ``None``: ``Y_t`` is None.
    batch_size : int
        >= 1.  Larger than ``m`` gives one batch.
    shuffle : bool
        Permute the samples first (default).  Without it the batches are in order, and are views
        (basic slices) rather than copies.
    seed : None, int or numpy.random.Generator
        For the permutation (``numpy.random.default_rng(seed)``); the same seed gives the same
        batches.  Use a different seed per epoch (e.g. ``seed + epoch``) for a new order.
    axis : int
        The sample axis of ``X`` (and ``Y``).

    Yields
    ------
    (X_t, Y_t)
        With shuffling, ``X_t``/``Y_t`` are new arrays of one batch each (fancy indexing per batch:
        at most one batch is copied at a time, the data set is never copied whole).

    Raises
    ------
    TypeError, ValueError
        A non-int or non-positive ``batch_size``; ``X`` and ``Y`` with different sample counts;
        an ``axis`` out of range.  Raised when called, before the first batch.

    Examples
    --------
    >>> import numpy as np
    >>> X = np.arange(10).reshape(2, 5)             # course layout: 2 features, 5 samples
    >>> Y = np.arange(5).reshape(1, 5)
    >>> [(x.shape, y.tolist()) for x, y in minibatches(X, Y, 2, shuffle=False, axis=1)]
    [((2, 2), [[0, 1]]), ((2, 2), [[2, 3]]), ((2, 1), [[4]])]
    """
    # Validate everything now (a generator would only raise at the first next()).
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral):
        raise TypeError(f"batch_size must be an int >= 1, got {type(batch_size).__name__}")
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise TypeError(f"axis must be an int, got {type(axis).__name__}")
    if not isinstance(shuffle, (bool, np.bool_)):
        raise TypeError(f"shuffle must be a bool, got {type(shuffle).__name__}")
    X = np.asarray(X)
    ax = _sample_axis("X", X, int(axis))
    m = X.shape[ax]
    ay = None
    if Y is not None:
        Y = np.asarray(Y)
        ay = 0 if Y.ndim == 1 else _sample_axis("Y", Y, int(axis))
        if Y.shape[ay] != m:
            raise ValueError(f"X has {m} samples along axis {ax} but Y has {Y.shape[ay]} "
                             f"along axis {ay}; they must match")
    order = np.random.default_rng(seed).permutation(m) if shuffle else None
    return _batches(X, Y, ax, ay, m, batch_size, order)


def _batches(X, Y, ax, ay, m, batch_size, order):
    for start in range(0, m, batch_size):
        stop = min(start + batch_size, m)
        if order is None:
            xs = X[(slice(None),) * ax + (slice(start, stop),)]
            ys = None if Y is None else Y[(slice(None),) * ay + (slice(start, stop),)]
        else:
            idx = order[start:stop]
            xs = np.take(X, idx, axis=ax)
            ys = None if Y is None else np.take(Y, idx, axis=ay)
        yield xs, ys

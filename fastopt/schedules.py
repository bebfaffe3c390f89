r"""Learning-rate schedules: plain closures ``schedule(count) -> float``.

A schedule maps a non-negative integer ``count`` to a learning rate.  The caller decides what
``count`` counts: the course decays per *epoch* (``opt.lr = schedule(epoch)`` once per epoch);
an optimizer given a schedule as ``lr`` counts *steps* (step ``t``, 1-based, uses
``schedule(t - 1)``).

The course's formulas (deep-learning course 2, week 2, "learning rate decay"):

- :math:`\alpha = \frac{1}{1 + \text{decay\_rate}\cdot\text{epoch\_num}}\,\alpha_0`:
  :func:`inverse_time_decay`
- :math:`\alpha = 0.95^{\text{epoch\_num}}\,\alpha_0` (exponential): :func:`exponential_decay`
- :math:`\alpha = \frac{k}{\sqrt{\text{epoch\_num}}}\,\alpha_0`: :func:`sqrt_decay`
- discrete staircase (e.g. halve every few epochs): :func:`step_decay`
- manual decay (lower it by hand at chosen epochs): :func:`piecewise_constant`

and the usual others: :func:`polynomial_decay`, :func:`cosine_decay`, :func:`linear_schedule`,
:func:`warmup_cosine_decay`, composed with :func:`join_schedules` (as Optax).

Every constructor validates its arguments and raises ``ValueError`` (``TypeError`` for a
non-number) naming the argument: non-positive step counts, negative rates or learning rates are
errors, never silently turned into a constant.  A schedule called with a negative count raises
``ValueError``, with a non-integer ``TypeError``.

Examples
--------
>>> from fastopt import schedules
>>> s = schedules.inverse_time_decay(0.2, decay_rate=1.0)
>>> [s(epoch) for epoch in range(4)]
[0.2, 0.1, 0.06666666666666667, 0.05]
"""
from __future__ import annotations

import bisect
import math
import numbers
from collections.abc import Callable, Mapping, Sequence

__all__ = [
    "constant", "inverse_time_decay", "exponential_decay", "sqrt_decay", "step_decay",
    "piecewise_constant", "polynomial_decay", "cosine_decay", "linear_schedule",
    "warmup_cosine_decay", "join_schedules",
]

Schedule = Callable[[int], float]


# -- argument checks ------------------------------------------------------------------------
def _number(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _nonneg(name, value):
    value = _number(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    return value


def _positive(name, value):
    value = _number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def _int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return value


def _count(count):
    """The schedule's argument: an int >= 0 (NumPy integers accepted)."""
    if isinstance(count, bool) or not isinstance(count, numbers.Integral):
        raise TypeError(f"count must be an int >= 0, got {type(count).__name__} {count!r}")
    count = int(count)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    return count


def _named(fn, name, **params):
    """Give the closure a readable name and repr-able parameters (for plots and messages)."""
    fn.__name__ = fn.__qualname__ = name
    fn.params = params
    return fn


# -- the schedules --------------------------------------------------------------------------
def constant(lr0) -> Schedule:
    r"""A constant learning rate.

    .. math:: \eta(n) = \eta_0

    Parameters
    ----------
    lr0 : float
        The learning rate, >= 0.

    Returns
    -------
    callable
        ``schedule(count) -> float``.

    Examples
    --------
    >>> constant(0.1)(1000)
    0.1
    """
    lr0 = _nonneg("lr0", lr0)

    def schedule(count):
        _count(count)
        return lr0

    return _named(schedule, "constant", lr0=lr0)


def inverse_time_decay(lr0, decay_rate) -> Schedule:
    r"""Inverse-time decay: the course's :math:`\alpha = \frac{1}{1+\text{decay\_rate}\cdot
    \text{epoch\_num}}\,\alpha_0`.

    .. math:: \eta(n) = \frac{\eta_0}{1 + \text{decay\_rate}\cdot n}

    Parameters
    ----------
    lr0 : float
        :math:`\alpha_0`, the learning rate at ``n = 0``; >= 0.
    decay_rate : float
        >= 0 (0 keeps ``lr0``, which is then what the caller asked for).

    Examples
    --------
    >>> s = inverse_time_decay(0.2, decay_rate=1.0)
    >>> s(0), s(1), s(3)
    (0.2, 0.1, 0.05)
    """
    lr0 = _nonneg("lr0", lr0)
    decay_rate = _nonneg("decay_rate", decay_rate)

    def schedule(count):
        return lr0 / (1.0 + decay_rate * _count(count))

    return _named(schedule, "inverse_time_decay", lr0=lr0, decay_rate=decay_rate)


def exponential_decay(lr0, rate, transition_steps=1, staircase=False) -> Schedule:
    r"""Exponential decay: the course's :math:`\alpha = 0.95^{\text{epoch\_num}}\,\alpha_0`.

    .. math::

        \eta(n) = \eta_0 \cdot \text{rate}^{\,n / T}
        \quad\text{or, with staircase,}\quad
        \eta(n) = \eta_0 \cdot \text{rate}^{\,\lfloor n / T \rfloor}

    with :math:`T` = ``transition_steps``.

    Parameters
    ----------
    lr0 : float
        Learning rate at ``n = 0``; >= 0.
    rate : float
        Factor per ``transition_steps`` counts, > 0 (the course's 0.95; below 1 decays).
    transition_steps : int
        >= 1.
    staircase : bool
        Floor the exponent: the rate drops in discrete steps every ``transition_steps``.

    Examples
    --------
    >>> s = exponential_decay(1.0, 0.5, transition_steps=2)
    >>> s(0), s(1), s(2)
    (1.0, 0.7071067811865476, 0.5)
    >>> exponential_decay(1.0, 0.5, transition_steps=2, staircase=True)(3)
    0.5
    """
    lr0 = _nonneg("lr0", lr0)
    rate = _positive("rate", rate)
    transition_steps = _int("transition_steps", transition_steps, 1)
    if not isinstance(staircase, bool):
        raise TypeError(f"staircase must be a bool, got {type(staircase).__name__}")

    def schedule(count):
        n = _count(count)
        exponent = n // transition_steps if staircase else n / transition_steps
        return lr0 * rate ** exponent

    return _named(schedule, "exponential_decay", lr0=lr0, rate=rate,
                  transition_steps=transition_steps, staircase=staircase)


def sqrt_decay(lr0, k=1.0) -> Schedule:
    r"""Inverse-square-root decay: the course's :math:`\alpha = \frac{k}{\sqrt{\text{epoch\_num}}}
    \,\alpha_0`.

    .. math:: \eta(n) = \eta_0 \, \frac{k}{\sqrt{\max(n, 1)}}

    (``n = 0`` is treated as 1, where the course's formula is undefined.)

    Parameters
    ----------
    lr0 : float
        >= 0.
    k : float
        > 0.

    Examples
    --------
    >>> s = sqrt_decay(0.1, k=2.0)
    >>> s(0), s(1), s(4)
    (0.2, 0.2, 0.1)
    """
    lr0 = _nonneg("lr0", lr0)
    k = _positive("k", k)

    def schedule(count):
        return lr0 * k / math.sqrt(max(_count(count), 1))

    return _named(schedule, "sqrt_decay", lr0=lr0, k=k)


def step_decay(lr0, factor, step_size) -> Schedule:
    r"""Step decay, the course's "discrete staircase": multiply by ``factor`` every
    ``step_size`` counts.

    .. math:: \eta(n) = \eta_0 \cdot \text{factor}^{\lfloor n / \text{step\_size} \rfloor}

    Parameters
    ----------
    lr0 : float
        >= 0.
    factor : float
        >= 0 (0.5 halves the rate every ``step_size`` counts).
    step_size : int
        >= 1.

    Examples
    --------
    >>> s = step_decay(0.1, factor=0.5, step_size=10)
    >>> s(0), s(9), s(10), s(25)
    (0.1, 0.1, 0.05, 0.025)
    """
    lr0 = _nonneg("lr0", lr0)
    factor = _nonneg("factor", factor)
    step_size = _int("step_size", step_size, 1)

    def schedule(count):
        return lr0 * factor ** (_count(count) // step_size)

    return _named(schedule, "step_decay", lr0=lr0, factor=factor, step_size=step_size)


def piecewise_constant(lr0, boundaries_and_scales) -> Schedule:
    r"""Piecewise constant, the course's "manual decay": ``lr0`` times every scale whose
    boundary has been reached.

    .. math:: \eta(n) = \eta_0 \prod_{b \le n} \text{scale}_b

    Parameters
    ----------
    lr0 : float
        >= 0.
    boundaries_and_scales : dict
        ``{count: scale}``, counts ints >= 0, scales >= 0.  Empty: ``lr0`` throughout.

    Examples
    --------
    >>> s = piecewise_constant(0.1, {10: 0.5, 20: 0.1})
    >>> s(9), s(10), s(19), s(20)
    (0.1, 0.05, 0.05, 0.005000000000000001)
    """
    lr0 = _nonneg("lr0", lr0)
    if not isinstance(boundaries_and_scales, Mapping):
        raise TypeError("boundaries_and_scales must be a dict {count: scale}, got "
                        f"{type(boundaries_and_scales).__name__}")
    items = []
    for b, s in boundaries_and_scales.items():
        items.append((_int(f"boundaries_and_scales key {b!r}", b, 0),
                      _nonneg(f"boundaries_and_scales[{b!r}]", s)))
    items.sort()
    bounds = [b for b, _ in items]
    # cumulative products, so a call is one bisection
    values, v = [lr0], lr0
    for _, s in items:
        v *= s
        values.append(v)

    def schedule(count):
        return values[bisect.bisect_right(bounds, _count(count))]

    return _named(schedule, "piecewise_constant", lr0=lr0, boundaries_and_scales=dict(items))


def polynomial_decay(lr0, end_lr, decay_steps, power=1.0) -> Schedule:
    r"""Polynomial decay from ``lr0`` to ``end_lr`` over ``decay_steps``, then ``end_lr``.

    .. math::

        \eta(n) = (\eta_0 - \eta_\text{end})
                  \left(1 - \frac{\min(n, N)}{N}\right)^{p} + \eta_\text{end}

    with :math:`N` = ``decay_steps`` and :math:`p` = ``power``.

    Parameters
    ----------
    lr0, end_lr : float
        >= 0.
    decay_steps : int
        >= 1.
    power : float
        > 0 (1 is linear).

    Examples
    --------
    >>> s = polynomial_decay(1.0, 0.0, decay_steps=4, power=2.0)
    >>> s(0), s(2), s(4), s(100)
    (1.0, 0.25, 0.0, 0.0)
    """
    lr0 = _nonneg("lr0", lr0)
    end_lr = _nonneg("end_lr", end_lr)
    decay_steps = _int("decay_steps", decay_steps, 1)
    power = _positive("power", power)

    def schedule(count):
        frac = 1.0 - min(_count(count), decay_steps) / decay_steps
        return (lr0 - end_lr) * frac ** power + end_lr

    return _named(schedule, "polynomial_decay", lr0=lr0, end_lr=end_lr,
                  decay_steps=decay_steps, power=power)


def cosine_decay(lr0, decay_steps, alpha=0.0) -> Schedule:
    r"""Cosine decay (cosine annealing) from ``lr0`` to ``alpha * lr0`` over ``decay_steps``.

    .. math::

        \eta(n) = \eta_0 \left((1-\alpha)\,\tfrac12\left(1 + \cos\frac{\pi \min(n, N)}{N}\right)
                  + \alpha\right)

    Parameters
    ----------
    lr0 : float
        >= 0.
    decay_steps : int
        :math:`N`, >= 1.
    alpha : float
        Final value as a fraction of ``lr0``, in [0, 1].

    Examples
    --------
    >>> s = cosine_decay(1.0, decay_steps=10)
    >>> s(0), round(s(5), 12), s(10), s(11)
    (1.0, 0.5, 0.0, 0.0)
    """
    lr0 = _nonneg("lr0", lr0)
    decay_steps = _int("decay_steps", decay_steps, 1)
    alpha = _nonneg("alpha", alpha)
    if alpha > 1:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")

    def schedule(count):
        n = min(_count(count), decay_steps)
        return lr0 * ((1.0 - alpha) * 0.5 * (1.0 + math.cos(math.pi * n / decay_steps)) + alpha)

    return _named(schedule, "cosine_decay", lr0=lr0, decay_steps=decay_steps, alpha=alpha)


def linear_schedule(init_lr, end_lr, transition_steps) -> Schedule:
    r"""Linear from ``init_lr`` to ``end_lr`` over ``transition_steps``, then ``end_lr``.

    .. math::

        \eta(n) = \eta_\text{init} + (\eta_\text{end} - \eta_\text{init})
                  \frac{\min(n, T)}{T}

    Increasing (a warm-up) or decreasing.

    Parameters
    ----------
    init_lr, end_lr : float
        >= 0.
    transition_steps : int
        :math:`T`, >= 1.

    Examples
    --------
    >>> s = linear_schedule(0.0, 1.0, transition_steps=4)
    >>> s(0), s(1), s(4), s(9)
    (0.0, 0.25, 1.0, 1.0)
    """
    init_lr = _nonneg("init_lr", init_lr)
    end_lr = _nonneg("end_lr", end_lr)
    transition_steps = _int("transition_steps", transition_steps, 1)

    def schedule(count):
        n = min(_count(count), transition_steps)
        return init_lr + (end_lr - init_lr) * (n / transition_steps)

    return _named(schedule, "linear_schedule", init_lr=init_lr, end_lr=end_lr,
                  transition_steps=transition_steps)


def warmup_cosine_decay(init_lr, peak_lr, warmup_steps, decay_steps, end_lr=0.0) -> Schedule:
    r"""Linear warm-up from ``init_lr`` to ``peak_lr``, then cosine decay to ``end_lr``.

    .. math::

        \eta(n) = \begin{cases}
            \eta_\text{init} + (\eta_\text{peak} - \eta_\text{init})\, n / W & n < W \\
            \eta_\text{end} + (\eta_\text{peak} - \eta_\text{end})\,\tfrac12
              \left(1 + \cos\frac{\pi \min(n - W,\, D - W)}{D - W}\right) & n \ge W
        \end{cases}

    with :math:`W` = ``warmup_steps`` and :math:`D` = ``decay_steps`` (which counts the warm-up,
    as Optax's ``warmup_cosine_decay_schedule``).  The course's "warmup and decay".

    Parameters
    ----------
    init_lr, peak_lr, end_lr : float
        >= 0.
    warmup_steps : int
        >= 0 (0: start at ``peak_lr``).
    decay_steps : int
        Total length of warm-up plus decay, > ``warmup_steps``.

    Examples
    --------
    >>> s = warmup_cosine_decay(0.0, 1.0, warmup_steps=2, decay_steps=6)
    >>> s(0), s(1), s(2), round(s(4), 12), s(6), s(7)
    (0.0, 0.5, 1.0, 0.5, 0.0, 0.0)
    """
    init_lr = _nonneg("init_lr", init_lr)
    peak_lr = _nonneg("peak_lr", peak_lr)
    end_lr = _nonneg("end_lr", end_lr)
    warmup_steps = _int("warmup_steps", warmup_steps, 0)
    decay_steps = _int("decay_steps", decay_steps, 1)
    if decay_steps <= warmup_steps:
        raise ValueError(f"decay_steps must be > warmup_steps (it counts the warm-up), got "
                         f"decay_steps={decay_steps}, warmup_steps={warmup_steps}")
    span = decay_steps - warmup_steps

    def schedule(count):
        n = _count(count)
        if n < warmup_steps:
            return init_lr + (peak_lr - init_lr) * (n / warmup_steps)
        k = min(n - warmup_steps, span)
        return end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + math.cos(math.pi * k / span))

    return _named(schedule, "warmup_cosine_decay", init_lr=init_lr, peak_lr=peak_lr,
                  warmup_steps=warmup_steps, decay_steps=decay_steps, end_lr=end_lr)


def join_schedules(schedules, boundaries) -> Schedule:
    r"""Concatenate schedules: piece ``i`` runs from ``boundaries[i-1]`` on, restarted at 0.

    .. math::

        \eta(n) = s_i(n - b_{i-1}) \quad\text{for } b_{i-1} \le n < b_i
        \qquad (b_{-1} = 0,\ b_{k} = \infty)

    Parameters
    ----------
    schedules : sequence of callables
        ``k + 1`` schedules.
    boundaries : sequence of int
        ``k`` strictly increasing counts >= 1.

    Examples
    --------
    >>> s = join_schedules([linear_schedule(0.0, 1.0, 2), constant(0.1)], [2])
    >>> [s(n) for n in range(4)]
    [0.0, 0.5, 0.1, 0.1]
    """
    if isinstance(schedules, (str, bytes)) or not isinstance(schedules, Sequence):
        raise TypeError(f"schedules must be a sequence of callables, got "
                        f"{type(schedules).__name__}")
    if isinstance(boundaries, (str, bytes)) or not isinstance(boundaries, Sequence):
        raise TypeError(f"boundaries must be a sequence of ints, got "
                        f"{type(boundaries).__name__}")
    schedules = list(schedules)
    if not schedules:
        raise ValueError("schedules must not be empty")
    for i, s in enumerate(schedules):
        if not callable(s):
            raise TypeError(f"schedules[{i}] must be callable, got {type(s).__name__}")
    if len(boundaries) != len(schedules) - 1:
        raise ValueError(f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
                         f"entries, got {len(boundaries)}")
    bounds = [_int(f"boundaries[{i}]", b, 1) for i, b in enumerate(boundaries)]
    for i in range(1, len(bounds)):
        if bounds[i] <= bounds[i - 1]:
            raise ValueError(f"boundaries must be strictly increasing, got {bounds}")
    starts = [0] + bounds

    def schedule(count):
        n = _count(count)
        i = bisect.bisect_right(bounds, n)
        return float(schedules[i](n - starts[i]))

    return _named(schedule, "join_schedules", schedules=schedules, boundaries=bounds)

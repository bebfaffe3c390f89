"""Validation shared by every entry point: each check names the argument it rejects.

Each function takes ``(name, value)``, raises ``TypeError``/``ValueError`` with a message that
names the argument, and returns the value to keep (normalised: ``betas`` as a tuple).
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["nonneg", "unit", "unit_closed", "lr", "betas", "boolean", "anything"]

_NUMBER = (int, float, np.floating, np.integer)


def nonneg(name, value):
    """A finite number >= 0."""
    if not isinstance(value, _NUMBER) or isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid {name}: {value} (must be a finite number >= 0)")
    return value


def unit(name, value, closed=False):
    """A number in [0, 1) (``closed``: [0, 1])."""
    nonneg(name, value)
    if value > 1 or (value == 1 and not closed):
        raise ValueError(f"Invalid {name}: {value} (must be in [0, 1{']' if closed else ')'})")
    return value


def unit_closed(name, value):
    """A number in [0, 1]."""
    return unit(name, value, closed=True)


def lr(name, value):
    """A finite number >= 0, or a schedule (a callable ``count -> lr``)."""
    if callable(value):
        return value
    return nonneg(name, value)


def betas(name, value):
    """A pair of numbers in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (expected a pair (beta1, beta2))")
    unit(f"{name}[0]", value[0])
    unit(f"{name}[1]", value[1])
    return tuple(value)


def boolean(name, value):
    """``True`` or ``False`` (NumPy bools and the integers 0 and 1 too, as torch takes them)."""
    if isinstance(value, (bool, np.bool_)) or (isinstance(value, _NUMBER) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def anything(name, value):
    """No check (arguments accepted for compatibility and not used)."""
    return value


def lr_value(lr_, t):
    """The learning rate of step ``t`` (1-based): ``lr_`` itself, or ``lr_(t - 1)`` checked."""
    if not callable(lr_):
        return float(lr_)
    value = lr_(t - 1)
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"the lr schedule returned {value!r} at count {t - 1}; expected a "
                        f"float") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"the lr schedule returned {value} at count {t - 1}; expected a "
                         f"finite number >= 0")
    return value

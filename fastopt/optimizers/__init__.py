"""Optimizer classes: one module per family, all built on :mod:`.base`."""
from .adam import Adam, AdamW
from .base import Optimizer, load, save
from .rmsprop import Adagrad, RMSprop
from .sgd import SGD, Momentum

__all__ = ["Optimizer", "SGD", "Momentum", "RMSprop", "Adagrad", "Adam", "AdamW", "save", "load"]

"""keras.optimizers: SGD, Adam, AdamW, RMSprop, Adadelta, Adagrad, Adamax,
Nadam, Lion with Keras 3's names, defaults and formulas (base.py: learning
rate, clipping, weight decay; algorithms.py: the updates; schedules.py:
learning-rate schedules; loss_scale.py: LossScaleOptimizer, a pass-through).
``get`` takes a name ("adam", "adamw", ...), a config dict or an instance.
Keras 2's lower-case classes (``sgd``, ``adam``, ...) are deprecated aliases."""
import warnings

from . import schedules
from .algorithms import (ALL, SGD, Adadelta, Adagrad, Adam, Adamax, AdamW, Lion, Nadam,
                         RMSprop)
from .base import Optimizer
from .loss_scale import LossScaleOptimizer

_BY_NAME = {c.__name__.lower(): c for c in ALL}


def _keras2_alias(cls):
    def make(*args, **kwargs):
        warnings.warn(f"keras.optimizers.{cls.__name__.lower()} is deprecated (Keras 2); use "
                      f"keras.optimizers.{cls.__name__}", DeprecationWarning, stacklevel=2)
        return cls(*args, **kwargs)
    make.__name__ = make.__qualname__ = cls.__name__.lower()
    make.__doc__ = f"Keras 2 spelling of :class:`{cls.__name__}` (deprecated)."
    return make


sgd, adam, rmsprop, adadelta, adagrad, adamax, nadam = (
    _keras2_alias(c) for c in (SGD, Adam, RMSprop, Adadelta, Adagrad, Adamax, Nadam))


def get(identifier):
    """An Optimizer from a name ("sgd", "adam", "adamw", "nadam", ...: Keras
    defaults), a config dict ({"class_name", "config"}) or an instance."""
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(str(identifier.get("class_name", "")).lower())
        if identifier.get("class_name") == "LossScaleOptimizer":
            cls = LossScaleOptimizer
        if cls is None:
            raise ValueError(f"unknown optimizer config {identifier!r:.200}; known: "
                             f"{sorted(c.__name__ for c in ALL)}")
        cfg = identifier.get("config", {})
        if not isinstance(cfg, dict):
            raise ValueError(f"the optimizer config must be a dict, got {cfg!r:.200}")
        return cls.from_config(cfg)
    raise ValueError(f"unknown optimizer {identifier!r}; known: {sorted(_BY_NAME)}")


def serialize(opt):
    return {"class_name": type(opt).__name__, "config": opt.get_config()}


def deserialize(config):
    return get(config)


__all__ = ["Optimizer", "SGD", "Adam", "AdamW", "RMSprop", "Adadelta", "Adagrad", "Adamax",
           "Nadam", "Lion", "LossScaleOptimizer", "schedules", "get", "serialize", "deserialize"]

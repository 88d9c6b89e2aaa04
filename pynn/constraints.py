"""keras.constraints: MaxNorm, NonNeg, UnitNorm, MinMaxNorm (and max_norm,
non_neg, unit_norm, min_max_norm), Keras 3's formulas.  A constraint maps a
weight to its projection, ``w -> c(w)``; layers take them as
``kernel_constraint`` / ``bias_constraint`` and the model writes ``c(w)``
into the weight after every optimizer step, as Keras' optimizer does.
Any function ``w -> array of w's shape`` works as a constraint."""
import numpy as np

EPSILON = 1e-7     # keras.backend.epsilon()


def _axis(axis):
    return tuple(int(a) for a in axis) if isinstance(axis, (list, tuple)) else int(axis)


def _norms(w, axis):
    return ((w * w).sum(axis=axis, keepdims=True)) ** 0.5


class Constraint:
    def __call__(self, w):
        return w

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class MaxNorm(Constraint):
    """Rescale each slice along ``axis`` to a norm of at most max_value."""

    def __init__(self, max_value=2, axis=0):
        self.max_value, self.axis = max_value, _axis(axis)

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = norms.clip(0, self.max_value)
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class NonNeg(Constraint):
    def __call__(self, w):
        return np.maximum(w, 0)


class UnitNorm(Constraint):
    def __init__(self, axis=0):
        self.axis = _axis(axis)

    def __call__(self, w):
        return w / (EPSILON + _norms(w, self.axis))

    def get_config(self):
        return {"axis": self.axis}


class MinMaxNorm(Constraint):
    """Norms moved to rate * clip(norm, min_value, max_value) + (1 - rate) * norm."""

    def __init__(self, min_value=0.0, max_value=1.0, rate=1.0, axis=0):
        self.min_value, self.max_value, self.rate = min_value, max_value, rate
        self.axis = _axis(axis)

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = self.rate * norms.clip(self.min_value, self.max_value) + (1 - self.rate) * norms
        return w * (desired / (EPSILON + norms))

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate,
                "axis": self.axis}


max_norm, non_neg, unit_norm, min_max_norm = MaxNorm, NonNeg, UnitNorm, MinMaxNorm

_CLASSES = {c.__name__: c for c in (MaxNorm, NonNeg, UnitNorm, MinMaxNorm)}
_STRINGS = {"max_norm": MaxNorm, "non_neg": NonNeg, "unit_norm": UnitNorm,
            "min_max_norm": MinMaxNorm, "maxnorm": MaxNorm, "nonneg": NonNeg,
            "unitnorm": UnitNorm, "minmaxnorm": MinMaxNorm}


def apply(constraint, w, ops):
    """w[...] = constraint(w), checked (the constraint must keep the shape)."""
    new = constraint(w)
    if tuple(np.shape(new)) != tuple(w.shape):
        raise ValueError(f"the constraint {constraint!r} returned shape {np.shape(new)} for a "
                         f"weight of shape {tuple(w.shape)}")
    w[...] = ops.asarray(new, w.dtype)


def serialize(c):
    if c is None:
        return None
    name = type(c).__name__
    if _CLASSES.get(name) is not type(c):
        raise NotImplementedError(f"cannot save the constraint {c!r}: only MaxNorm, NonNeg, "
                                  "UnitNorm and MinMaxNorm are saved")
    cfg = {k: list(v) if isinstance(v, tuple) else v for k, v in c.get_config().items()}
    return {"module": "keras.constraints", "class_name": name, "config": cfg,
            "registered_name": None}


def deserialize(config):
    return get(config)


def get(identifier):
    """A constraint from None, an instance, a callable, a name or a config."""
    if identifier is None or isinstance(identifier, Constraint):
        return identifier
    if isinstance(identifier, str):
        cls = _CLASSES.get(identifier) or _STRINGS.get(identifier.lower())
        if cls is None:
            raise ValueError(f"unknown constraint {identifier!r}; known: {sorted(_STRINGS)}")
        return cls()
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        cfg = identifier.get("config", {})
        if cls is None or not isinstance(cfg, dict):
            raise ValueError(f"unknown constraint config {identifier!r:.200}")
        return cls.from_config(dict(cfg))
    if callable(identifier):
        return identifier
    raise ValueError(f"cannot interpret {identifier!r} as a constraint")

"""keras.regularizers: L1, L2, L1L2 (and l1, l2, l1_l2), Keras 3's formulas
and defaults.

A regularizer is ``penalty = reg(x)`` (a float) plus, because pynn has no
autodiff, its gradient: ``reg.add_gradient(x, g, scale)`` does
``g += scale * d penalty / dx`` in place (both arrays of one device).
Layers take them as ``kernel_regularizer`` / ``bias_regularizer`` (added to
the loss, gradient added to the weight's) and ``activity_regularizer``
(penalty of the layer's output divided by the batch size, as Keras).
Strings "l1", "l2", "l1_l2" give a factor of 0.01 (each), as Keras 3."""
import math


def _factor(value, name):
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value) or value < 0:
        raise ValueError(f"Invalid value for argument {name}: expected a non-negative float. "
                         f"Received: {name}={value!r}")
    return float(value)


class Regularizer:
    """Base class; subclasses define __call__, add_gradient and get_config."""

    def __call__(self, x):
        return 0.0

    def add_gradient(self, x, g, scale=1.0):
        raise NotImplementedError(
            f"{type(self).__name__} has no add_gradient(x, g, scale): pynn needs the gradient of a "
            "regularizer written out (no autodiff); use L1, L2 or L1L2, or define add_gradient")

    def get_config(self):
        raise NotImplementedError(f"{self} does not implement get_config()")

    @classmethod
    def from_config(cls, config):
        return cls(**config)


class L1L2(Regularizer):
    """l1 * sum(|x|) + l2 * sum(x**2); gradient l1 * sign(x) + 2 l2 x."""

    def __init__(self, l1=0.0, l2=0.0):
        self.l1, self.l2 = _factor(l1, "l1"), _factor(l2, "l2")

    def __call__(self, x):
        total = 0.0
        if self.l1:
            total += self.l1 * float(abs(x).sum(dtype="float64"))
        if self.l2:
            total += self.l2 * float((x.astype("float64") ** 2).sum())
        return total

    def add_gradient(self, x, g, scale=1.0):
        t = g.dtype.type
        if self.l1:
            g += t(scale * self.l1) * (x > 0) - t(scale * self.l1) * (x < 0)
        if self.l2:
            g += t(2.0 * scale * self.l2) * x

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class L1(L1L2):
    def __init__(self, l1=0.01):
        super().__init__(l1=0.01 if l1 is None else l1)

    def get_config(self):
        return {"l1": self.l1}


class L2(L1L2):
    def __init__(self, l2=0.01):
        super().__init__(l2=0.01 if l2 is None else l2)

    def get_config(self):
        return {"l2": self.l2}


l1, l2, l1_l2 = L1, L2, L1L2          # Keras 3: the lower-case names are the classes

_CLASSES = {"L1": L1, "L2": L2, "L1L2": L1L2}
_STRINGS = {"l1": lambda: L1(), "l2": lambda: L2(), "l1_l2": lambda: L1L2(0.01, 0.01),
            "l1l2": lambda: L1L2(0.01, 0.01)}


def serialize(reg):
    if reg is None:
        return None
    name = type(reg).__name__
    if _CLASSES.get(name) is not type(reg):
        raise NotImplementedError(f"cannot save the regularizer {reg!r}: only L1, L2 and L1L2 are "
                                  "saved")
    return {"module": "keras.regularizers", "class_name": name, "config": reg.get_config(),
            "registered_name": None}


def deserialize(config):
    return get(config)


def get(identifier):
    """A regularizer from None, an instance, a string ("l1", "l2", "l1_l2")
    or a config dict."""
    if identifier is None or isinstance(identifier, Regularizer):
        return identifier
    if isinstance(identifier, str):
        make = _STRINGS.get(identifier.lower()) or (_CLASSES[identifier] if identifier in _CLASSES
                                                    else None)
        if make is None:
            raise ValueError(f"unknown regularizer {identifier!r}; known: {sorted(_STRINGS)}")
        return make()
    if isinstance(identifier, dict):
        cls = _CLASSES.get(identifier.get("class_name"))
        cfg = identifier.get("config", {})
        if cls is None or not isinstance(cfg, dict):
            raise ValueError(f"unknown regularizer config {identifier!r:.200}")
        return cls.from_config(dict(cfg))
    if callable(identifier):
        raise NotImplementedError(
            f"the regularizer {identifier!r} is a plain function: pynn needs its gradient (no "
            "autodiff); use keras.regularizers.L1/L2/L1L2 or a Regularizer subclass with "
            "add_gradient(x, g, scale)")
    raise ValueError(f"cannot interpret {identifier!r} as a regularizer")

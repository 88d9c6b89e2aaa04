"""Activation names as functions (``activation=pynn.activations.relu`` works
like the string "relu").  Calling one applies the reference implementation."""
import numpy as np

from .backend import ACTIVATIONS, Ops

_ops = Ops()

# the one table of activation names: Keras spellings -> the Ops name
_ALIASES = {None: "linear", **{a: a for a in ACTIVATIONS}}


def canonical_name(act):
    """The Ops name of an activation given as a string, None or a
    pynn.activations function."""
    if callable(act) and hasattr(act, "__name__"):
        act = act.__name__
    if isinstance(act, str):
        act = act.lower()
    if act not in _ALIASES:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{sorted(k for k in _ALIASES if k)}")
    return _ALIASES[act]


def _make(name):
    def f(x, **kw):
        x = np.asarray(x)
        return _ops.activation(name, x if x.dtype == np.float64 else x.astype(np.float32), **kw)
    f.__name__ = name
    return f


linear = _make("linear")
relu = _make("relu")
sigmoid = _make("sigmoid")
tanh = _make("tanh")
softmax = _make("softmax")
leaky_relu = _make("leaky_relu")
elu = _make("elu")

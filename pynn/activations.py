"""Activation names as functions (``activation=pynn.activations.relu`` works
like the string "relu").  Calling one applies the reference implementation."""
import numpy as np

from .backend import Ops

_ops = Ops()


def _make(name):
    def f(x, **kw):
        return _ops.activation(name, np.asarray(x, dtype=np.float64 if np.asarray(x).dtype == np.float64
                                                else np.float32), **kw)
    f.__name__ = name
    return f


linear = _make("linear")
relu = _make("relu")
sigmoid = _make("sigmoid")
tanh = _make("tanh")
softmax = _make("softmax")
leaky_relu = _make("leaky_relu")
elu = _make("elu")

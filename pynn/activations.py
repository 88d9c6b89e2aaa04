"""Activation names as functions (``activation=pynn.activations.relu`` works
like the string "relu").  Calling one applies the reference implementation."""
import numpy as np

from .backend import Ops

_ops = Ops()


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

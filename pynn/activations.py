"""keras.activations: the activation names as functions
(``activation=pynn.activations.gelu`` works like the string "gelu").

Calling one applies the reference formulas (pynn/backend/activation_ref.py)
to a NumPy array, with Keras 3's keyword arguments (``relu(x,
negative_slope=0.0, max_value=None, threshold=0.0)``, ``leaky_relu(x,
negative_slope=0.2)``, ``elu(x, alpha=1.0)``, ``gelu(x, approximate=False)``,
``softmax(x, axis=-1)``, ``log_softmax(x, axis=-1)``).  Keras 2's
``relu(x, alpha=...)`` / ``leaky_relu(x, alpha=...)`` are accepted with a
DeprecationWarning.  As ``activation=`` of a layer a function means its
default parameters (as in Keras); use the layers ReLU, LeakyReLU, ELU and
Softmax for other values.
"""
import warnings

import numpy as np

from .backend import ACTIVATIONS, Ops

_ops = Ops()

# the one table of activation names: Keras spellings -> the Ops name
_ALIASES = {None: "linear", **{a: a for a in ACTIVATIONS},
            "swish": "silu", "hard_swish": "hard_silu"}


def canonical_name(act):
    """The Ops name of an activation given as a string, None or a
    pynn.activations (or keras.activations) function."""
    if callable(act) and not isinstance(act, str):
        name = getattr(act, "__name__", None)
        if name is None or name not in _ALIASES:
            raise ValueError(
                f"activation {act!r} is not one of Keras' activations: custom activation "
                f"functions are not supported (pynn cannot store code); use one of "
                f"{sorted(k for k in _ALIASES if k)}, or write a Layer subclass")
        act = name
    if isinstance(act, str):
        act = act.lower()
    if act not in _ALIASES:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{sorted(k for k in _ALIASES if k)}")
    return _ALIASES[act]


def _keras2_alpha(name, kw):
    if "alpha" in kw:
        if "negative_slope" in kw:
            raise TypeError(f"{name}: give negative_slope= only (alpha= is its Keras 2 name)")
        warnings.warn(f"{name}(alpha=...) is Keras 2's spelling: use negative_slope=",
                      DeprecationWarning, stacklevel=3)
        kw["negative_slope"] = kw.pop("alpha")
    return kw


def _make(name):
    def f(x, **kw):
        if name in ("relu", "leaky_relu"):
            kw = _keras2_alpha(name, kw)
        x = np.asarray(x)
        return _ops.activation(name, x if x.dtype == np.float64 else x.astype(np.float32), **kw)
    f.__name__ = f.__qualname__ = name
    f.__doc__ = f"keras.activations.{name} (Keras 3 formula; see pynn/backend/activation_ref.py)"
    return f


linear = _make("linear")
relu = _make("relu")
relu6 = _make("relu6")
leaky_relu = _make("leaky_relu")
elu = _make("elu")
selu = _make("selu")
gelu = _make("gelu")
sigmoid = _make("sigmoid")
hard_sigmoid = _make("hard_sigmoid")
hard_silu = _make("hard_silu")
hard_swish = hard_silu
silu = _make("silu")
swish = silu
mish = _make("mish")
softplus = _make("softplus")
softsign = _make("softsign")
tanh = _make("tanh")
exponential = _make("exponential")
softmax = _make("softmax")
log_softmax = _make("log_softmax")


def get(identifier):
    """keras.activations.get: the function of a name (None: linear)."""
    return globals()[canonical_name(identifier)]


def serialize(activation):
    """keras.activations.serialize: the Keras 3 name of an activation."""
    return canonical_name(activation)


def deserialize(name):
    return get(name)

"""The activations' reference formulas (Keras 3), written against ``xp``
(NumPy or CuPy), and the one table of them.

``ACTIVATIONS[name]`` says what the derivative reads besides dy: ``"y"``
(the forward output: relu, sigmoid, tanh, softmax, ...) or ``"x"`` (the
forward input: gelu, silu, mish, ...).  A layer keeps x for backward when
:func:`grad_needs_input` says so (a Dense or Conv2D keeps its pre-activation
z anyway).  Parameters (``PARAMS``: their Keras 3 names and defaults) are
keywords of ``Ops.activation``; relu with non-default parameters
(``X_WITH_PARAMS``) differentiates from x.

Each entry of ``_FORWARD`` returns a new array f(x); each entry of
``_BACKWARD`` returns dx given dy, x (None unless needed) and y.
"""
import math

import numpy as np

ACTIVATIONS = {
    "linear": "y", "relu": "y", "relu6": "y", "leaky_relu": "x", "elu": "x", "selu": "x",
    "gelu": "x", "sigmoid": "y", "hard_sigmoid": "y", "hard_silu": "x", "silu": "x",
    "mish": "x", "softplus": "y", "softsign": "x", "tanh": "y", "exponential": "y",
    "softmax": "y", "log_softmax": "y",
}

PARAMS = {
    "relu": {"negative_slope": 0.0, "max_value": None, "threshold": 0.0},
    "leaky_relu": {"negative_slope": 0.2},
    "elu": {"alpha": 1.0},
    "gelu": {"approximate": False},
    "softmax": {"axis": -1},
    "log_softmax": {"axis": -1},
}

# "y" activations whose derivative reads x once given non-default parameters
X_WITH_PARAMS = {"relu"}

SELU_ALPHA = 1.6732632423543772848170429916717
SELU_SCALE = 1.0507009873554804934193349852946


def check_params(name, params):
    """The parameters of ``name`` with defaults filled in; TypeError for
    one the activation does not take."""
    allowed = PARAMS.get(name, {})
    bad = sorted(set(params) - set(allowed))
    if bad:
        raise TypeError(f"activation {name!r} takes no parameter(s) {bad}; it takes "
                        f"{sorted(allowed) or 'none'}")
    return {**allowed, **params}


def grad_needs_input(name, params=None):
    """Whether activation_backward of ``name`` reads the forward input x."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; expected one of {tuple(ACTIVATIONS)}")
    if ACTIVATIONS[name] == "x":
        return True
    if name not in X_WITH_PARAMS:
        return False
    defaults = PARAMS.get(name, {})
    return any(k in defaults and v != defaults[k] for k, v in (params or {}).items())


# -- helpers ---------------------------------------------------------------

def _sigmoid(xp, x):
    e = xp.exp(-xp.abs(x))        # no overflow for either sign
    return xp.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(xp, x):
    return xp.maximum(x, 0) + xp.log1p(xp.exp(-xp.abs(x)))


def _erf_pos(xp, z):
    """erf and erfc of z >= 0 (float64): the series
    erf(z) = 2/sqrt(pi) exp(-z^2) sum_n (2 z^2)^n z / (2n+1)!! (positive
    terms, no cancellation) below 2, the continued fraction of erfc above
    (both converged to float64 rounding with these term counts)."""
    small = xp.minimum(z, 2.0)
    term, total, z2 = small.copy(), small.copy(), 2 * small * small
    for n in range(1, 60):
        term = term * z2 / (2 * n + 1)
        total = total + term
    erf_s = 2 / math.sqrt(math.pi) * xp.exp(-small * small) * total
    big = xp.maximum(z, 2.0)
    t = big.copy()
    for k in range(60, 0, -1):    # erfc(z) = exp(-z^2)/sqrt(pi) / (z + (1/2)/(z + 1/(z + ...)))
        t = big + (k / 2) / t
    erfc_b = xp.exp(-big * big) / math.sqrt(math.pi) / t
    is_small = z < 2.0
    return xp.where(is_small, erf_s, 1 - erfc_b), xp.where(is_small, 1 - erf_s, erfc_b)


def normal_cdf(xp, x):
    """Phi(x) = (1 + erf(x / sqrt 2)) / 2 in float64, accurate in both tails."""
    x = xp.asarray(x, dtype=np.float64)
    erf_a, erfc_a = _erf_pos(xp, xp.abs(x) / math.sqrt(2))
    return xp.where(x >= 0, 0.5 * (1 + erf_a), 0.5 * erfc_a)


_GELU_C = math.sqrt(2 / math.pi)


def _gelu_tanh(xp, x):
    return xp.tanh(_GELU_C * (x + 0.044715 * x ** 3))


def _hard_sigmoid(xp, x):
    return xp.minimum(xp.maximum(x + 3, 0), 6) / 6      # Keras 3: relu6(x + 3) / 6


def _relu_general(xp, x, negative_slope, max_value, threshold):
    """Keras 3's relu(x, negative_slope, max_value, threshold)."""
    y = x * (x > threshold) if threshold != 0 else xp.maximum(x, 0)
    if max_value is not None:
        y = xp.clip(y, 0, max_value)
    if negative_slope != 0:
        y = y - negative_slope * xp.maximum(threshold - x, 0)
    return y


def _relu_general_grad(xp, x, negative_slope, max_value, threshold):
    pre = x * (x > threshold) if threshold != 0 else xp.maximum(x, 0)
    d = (x > threshold) if threshold != 0 else (x > 0)
    if max_value is not None:
        d = d & (pre > 0) & (pre < max_value)
    d = d.astype(x.dtype)
    if negative_slope != 0:
        d = d + negative_slope * (x < threshold)
    return d


def _relu(xp, x, negative_slope=0.0, max_value=None, threshold=0.0):
    if negative_slope == 0 and max_value is None and threshold == 0:
        return xp.maximum(x, 0)
    return _relu_general(xp, x, negative_slope, max_value, threshold)


def _relu_bwd(xp, dy, x, y, negative_slope=0.0, max_value=None, threshold=0.0):
    if x is None:
        return dy * (y > 0)
    return dy * _relu_general_grad(xp, x, negative_slope, max_value, threshold)


def _softmax(xp, x, axis=-1):
    e = xp.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(xp, x, axis=-1):
    z = x - x.max(axis=axis, keepdims=True)
    return z - xp.log(xp.exp(z).sum(axis=axis, keepdims=True))


def _gelu(xp, x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + _gelu_tanh(xp, x))
    return (x * normal_cdf(xp, x)).astype(x.dtype)


def _gelu_bwd(xp, dy, x, y, approximate=False):
    if approximate:
        t = _gelu_tanh(xp, x)
        return dy * (0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _GELU_C * (1 + 3 * 0.044715 * x * x))
    x64 = x.astype(np.float64)
    pdf = xp.exp(-0.5 * x64 * x64) / math.sqrt(2 * math.pi)
    return dy * (normal_cdf(xp, x64) + x64 * pdf).astype(x.dtype)


def _mish_bwd(xp, dy, x, y):
    t = xp.tanh(_softplus(xp, x))
    return dy * (t + x * (1 - t * t) * _sigmoid(xp, x))


def _silu_bwd(xp, dy, x, y):
    s = _sigmoid(xp, x)
    return dy * s * (1 + x * (1 - s))


def _hard_silu_bwd(xp, dy, x, y):
    return dy * (_hard_sigmoid(xp, x) + x * ((x > -3) & (x < 3)) / 6)


_FORWARD = {
    "linear": lambda xp, x: x,
    "relu": _relu,
    "relu6": lambda xp, x: xp.minimum(xp.maximum(x, 0), 6),
    "leaky_relu": lambda xp, x, negative_slope=0.2: xp.where(x > 0, x, negative_slope * x),
    "elu": lambda xp, x, alpha=1.0: xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0))),
    "selu": lambda xp, x: SELU_SCALE * xp.where(x > 0, x, SELU_ALPHA * xp.expm1(xp.minimum(x, 0))),
    "gelu": _gelu,
    "sigmoid": _sigmoid,
    "hard_sigmoid": _hard_sigmoid,
    "hard_silu": lambda xp, x: x * _hard_sigmoid(xp, x),
    "silu": lambda xp, x: x * _sigmoid(xp, x),
    "mish": lambda xp, x: x * xp.tanh(_softplus(xp, x)),
    "softplus": _softplus,
    "softsign": lambda xp, x: x / (1 + xp.abs(x)),
    "tanh": lambda xp, x: xp.tanh(x),
    "exponential": lambda xp, x: xp.exp(x),
    "softmax": _softmax,
    "log_softmax": _log_softmax,
}

_BACKWARD = {
    "linear": lambda xp, dy, x, y: dy,
    "relu": _relu_bwd,
    "relu6": lambda xp, dy, x, y: dy * ((y > 0) & (y < 6)),
    "leaky_relu": lambda xp, dy, x, y, negative_slope=0.2: xp.where(x > 0, dy, negative_slope * dy),
    "elu": lambda xp, dy, x, y, alpha=1.0: xp.where(x > 0, dy, dy * alpha * xp.exp(xp.minimum(x, 0))),
    "selu": lambda xp, dy, x, y: dy * SELU_SCALE * xp.where(
        x > 0, 1, SELU_ALPHA * xp.exp(xp.minimum(x, 0))),
    "gelu": _gelu_bwd,
    "sigmoid": lambda xp, dy, x, y: dy * y * (1 - y),
    "hard_sigmoid": lambda xp, dy, x, y: dy * ((y > 0) & (y < 1)) / 6,
    "hard_silu": _hard_silu_bwd,
    "silu": _silu_bwd,
    "mish": _mish_bwd,
    "softplus": lambda xp, dy, x, y: dy * -xp.expm1(-y),     # sigmoid(x) = 1 - exp(-softplus(x))
    "softsign": lambda xp, dy, x, y: dy / (1 + xp.abs(x)) ** 2,
    "tanh": lambda xp, dy, x, y: dy * (1 - y * y),
    "exponential": lambda xp, dy, x, y: dy * y,
    "softmax": lambda xp, dy, x, y, axis=-1: y * (dy - (dy * y).sum(axis=axis, keepdims=True)),
    "log_softmax": lambda xp, dy, x, y, axis=-1: dy - xp.exp(y) * dy.sum(axis=axis, keepdims=True),
}

assert set(_FORWARD) == set(_BACKWARD) == set(ACTIVATIONS)


def forward(xp, name, x, params):
    return _FORWARD[name](xp, x, **params)


def backward(xp, name, dy, x, y, params):
    return _BACKWARD[name](xp, dy, x, y, **params)

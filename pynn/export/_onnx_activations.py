"""pynn's activations (pynn/backend/activation_ref.py, Keras 3's formulas)
as standard ONNX ops (opset 17)."""
import math

from ..backend.activation_ref import SELU_ALPHA, SELU_SCALE, check_params


def _axes(axis, rank):
    axes = list(axis) if isinstance(axis, (list, tuple)) else [axis]
    return sorted(a + rank if a < 0 else a for a in axes)


def _relu(b, x, h, negative_slope, max_value, threshold):
    if negative_slope == 0 and max_value is None and threshold == 0:
        return b.op("Relu", [x], h)
    if threshold != 0:      # x * (x > threshold)
        zero = b.scalar(f"{h}/zero", 0.0)
        y = b.op("Where", [b.op("Greater", [x, b.scalar(f"{h}/threshold", threshold)], h), x, zero],
                 h)
    else:
        y = b.op("Relu", [x], h)
    if max_value is not None:
        y = b.op("Clip", [y, b.scalar(f"{h}/zero", 0.0), b.scalar(f"{h}/max", max_value)], h)
    if negative_slope != 0:     # y - negative_slope * max(threshold - x, 0)
        below = b.op("Relu", [b.op("Sub", [b.scalar(f"{h}/threshold", threshold), x], h)], h)
        y = b.op("Sub", [y, b.op("Mul", [below, b.scalar(f"{h}/slope", negative_slope)], h)], h)
    return y


def _softmax(b, x, h, axis, rank, log=False):
    axes = _axes(axis, rank)
    if len(axes) == 1:
        return b.op("LogSoftmax" if log else "Softmax", [x], h, axis=axes[0])
    z = b.op("Sub", [x, b.op("ReduceMax", [x], h, axes=axes, keepdims=1)], h)
    e = b.op("Exp", [z], h)
    s = b.op("ReduceSum", [e, b.ints(f"{h}/axes", axes)], h, keepdims=1)
    if log:
        return b.op("Sub", [z, b.op("Log", [s], h)], h)
    return b.op("Div", [e, s], h)


def _gelu(b, x, h, approximate):
    half = b.scalar(f"{h}/half", 0.5)
    one = b.scalar(f"{h}/one", 1.0)
    if approximate:      # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        x3 = b.op("Mul", [b.op("Mul", [x, x], h), x], h)
        inner = b.op("Add", [x, b.op("Mul", [x3, b.scalar(f"{h}/c3", 0.044715)], h)], h)
        t = b.op("Tanh", [b.op("Mul", [inner, b.scalar(f"{h}/c", math.sqrt(2 / math.pi))], h)], h)
    else:                # x Phi(x) = 0.5 x (1 + erf(x / sqrt 2))
        t = b.op("Erf", [b.op("Mul", [x, b.scalar(f"{h}/rsqrt2", 1 / math.sqrt(2))], h)], h)
    return b.op("Mul", [b.op("Mul", [x, half], h), b.op("Add", [one, t], h)], h)


def activation(b, name, x, h, rank, params=None):
    """The ONNX output of activation ``name`` (with ``params``, Keras 3's
    keywords) on tensor ``x`` of rank ``rank`` (batch included)."""
    p = check_params(name, dict(params or {}))
    if name == "linear":
        return x
    if name == "relu":
        return _relu(b, x, h, **p)
    if name == "relu6":
        return b.op("Clip", [x, b.scalar(f"{h}/zero", 0.0), b.scalar(f"{h}/six", 6.0)], h)
    if name == "leaky_relu":
        return b.op("LeakyRelu", [x], h, alpha=float(p["negative_slope"]))
    if name == "elu":
        return b.op("Elu", [x], h, alpha=float(p["alpha"]))
    if name == "selu":
        return b.op("Selu", [x], h, alpha=SELU_ALPHA, gamma=SELU_SCALE)
    if name == "gelu":
        return _gelu(b, x, h, p["approximate"])
    if name == "hard_sigmoid":      # relu6(x + 3) / 6
        return b.op("HardSigmoid", [x], h, alpha=1 / 6, beta=0.5)
    if name == "hard_silu":         # x * hard_sigmoid(x)
        return b.op("HardSwish", [x], h)
    if name == "silu":
        return b.op("Mul", [x, b.op("Sigmoid", [x], h)], h)
    if name == "mish":
        return b.op("Mul", [x, b.op("Tanh", [b.op("Softplus", [x], h)], h)], h)
    if name in ("softmax", "log_softmax"):
        return _softmax(b, x, h, p["axis"], rank, log=name == "log_softmax")
    simple = {"sigmoid": "Sigmoid", "softplus": "Softplus", "softsign": "Softsign",
              "tanh": "Tanh", "exponential": "Exp"}
    if name in simple:
        return b.op(simple[name], [x], h)
    raise NotImplementedError(f"ONNX export: activation {name!r} has no ONNX mapping")

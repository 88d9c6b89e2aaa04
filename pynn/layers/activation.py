"""Activation layers with parameters (Keras 3 names, arguments, defaults):
ReLU, LeakyReLU, ELU, Softmax (ops.activation with parameters) and PReLU
(a trainable slope)."""
import warnings

from .. import initializers
from .base import Layer
from .core import Activation


def _number(layer, name, value, allow_none=False):
    if value is None and allow_none:
        return None
    try:
        if isinstance(value, bool):
            raise TypeError
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{layer}: {name} must be a number, got {value!r}") from None
    if value < 0:
        raise ValueError(f"{layer}: {name} cannot be negative, got {value}")
    return value


class _ParamActivation(Activation):
    """An Activation whose parameters are its constructor's arguments."""

    def __init__(self, activation, params, **kw):
        super().__init__(activation, **kw)
        self._params = params
        # only non-default values go to ops (plain relu keeps the fused fast paths)
        self.act_params = {k: v for k, v in params.items() if v != _DEFAULTS[type(self)][k]}

    def get_config(self):
        c = Layer.get_config(self)
        c.update(self._params)
        return c


class ReLU(_ParamActivation):
    """Keras 3 ReLU: x for x > threshold, else negative_slope * (x -
    threshold); clipped at max_value when given."""

    def __init__(self, max_value=None, negative_slope=0.0, threshold=0.0, **kw):
        p = dict(max_value=_number("ReLU", "max_value", max_value, allow_none=True),
                 negative_slope=_number("ReLU", "negative_slope", negative_slope),
                 threshold=_number("ReLU", "threshold", threshold))
        super().__init__("relu", p, **kw)


class LeakyReLU(_ParamActivation):
    """x for x > 0, negative_slope * x elsewhere (Keras 2: alpha=)."""

    def __init__(self, negative_slope=0.3, **kw):
        if "alpha" in kw:
            warnings.warn("LeakyReLU(alpha=...) is Keras 2's spelling: use negative_slope=",
                          DeprecationWarning, stacklevel=2)
            negative_slope = kw.pop("alpha")
        super().__init__("leaky_relu",
                         dict(negative_slope=_number("LeakyReLU", "negative_slope",
                                                     negative_slope)), **kw)


class ELU(_ParamActivation):
    """x for x > 0, alpha * (exp(x) - 1) elsewhere."""

    def __init__(self, alpha=1.0, **kw):
        try:
            alpha = float(alpha)
        except (TypeError, ValueError):
            raise ValueError(f"ELU: alpha must be a number, got {alpha!r}") from None
        super().__init__("elu", dict(alpha=alpha), **kw)


class Softmax(_ParamActivation):
    """Softmax along ``axis`` (an axis of the batched input, not the batch
    axis 0; -1: the last)."""

    def __init__(self, axis=-1, **kw):
        axes = axis if isinstance(axis, (list, tuple)) else [axis]
        try:
            axes = [int(a) for a in axes]
        except (TypeError, ValueError):
            raise ValueError(f"Softmax: axis must be an int or a list of ints, got {axis!r}") \
                from None
        if not axes or 0 in axes:
            raise ValueError(f"Softmax: axis={axis!r} would normalise across the batch axis 0")
        self._axes = axes
        super().__init__("softmax", dict(axis=axes[0] if len(axes) == 1 else tuple(axes)), **kw)

    def build(self, input_shape):
        n = len(input_shape) + 1          # axes of the batched input
        for a in self._axes:
            if not (1 <= a < n or -n < a <= -1):
                raise ValueError(f"Softmax: axis {a} is out of range for inputs of shape "
                                 f"{(None,) + tuple(input_shape)} (the batch axis 0 excluded)")

    def get_config(self):
        c = super().get_config()
        if isinstance(c["axis"], tuple):
            c["axis"] = list(c["axis"])
        return c


_DEFAULTS = {ReLU: dict(max_value=None, negative_slope=0.0, threshold=0.0),
             LeakyReLU: dict(negative_slope=object()),     # always passed (0.3 is not ops' 0.2)
             ELU: dict(alpha=object()),
             Softmax: dict(axis=-1)}


class PReLU(Layer):
    """Parametric ReLU: x for x > 0, alpha * x elsewhere, alpha a trainable
    weight of the input's shape (batch excluded) with size 1 along
    ``shared_axes`` (axes of the batched input: 1 is the first after the
    batch)."""

    def __init__(self, alpha_initializer="zeros", alpha_regularizer=None, alpha_constraint=None,
                 shared_axes=None, **kw):
        super().__init__(**kw)
        for nm, v in (("alpha_regularizer", alpha_regularizer),
                      ("alpha_constraint", alpha_constraint)):
            if v is not None:
                raise NotImplementedError(f"PReLU({nm}=...) is not supported; leave it None")
        self.alpha_initializer = initializers.get(alpha_initializer)
        if shared_axes is None:
            self.shared_axes = None
        else:
            axes = shared_axes if isinstance(shared_axes, (list, tuple)) else [shared_axes]
            self.shared_axes = [int(a) for a in axes]
            if any(a < 1 for a in self.shared_axes):
                raise ValueError(f"PReLU: shared_axes are axes of the batched input, >= 1; "
                                 f"got {shared_axes!r}")

    def build(self, input_shape):
        shape = list(input_shape)
        for a in self.shared_axes or ():
            if a > len(shape):
                raise ValueError(f"PReLU: shared axis {a} is out of range for inputs of shape "
                                 f"{(None,) + tuple(input_shape)}")
            shape[a - 1] = 1
        if any(d is None for d in shape):
            raise ValueError(f"PReLU needs known input dimensions (or shared_axes over the "
                             f"unknown ones), got {tuple(input_shape)}")
        self.add_weight("alpha", tuple(shape), self.alpha_initializer)

    def forward(self, x, training=False):
        self.ctx.x = x
        return self.ops.prelu(x, self.w["alpha"], out=self._buf("y", x.shape))

    def backward(self, dy, need_dx=True):
        c = self.ctx
        dx = self._buf("dx", dy.shape) if need_dx else None
        self.ops.prelu_backward(dy, c.x, self.w["alpha"], dx=dx, dalpha=self.g.get("alpha"))
        return dx

    def get_config(self):
        c = super().get_config()
        c.update(alpha_initializer=initializers.serialize(self.alpha_initializer),
                 alpha_regularizer=None, alpha_constraint=None, shared_axes=self.shared_axes)
        return c

"""Core layers: Dense, Activation, Dropout, Identity (the activation layers
ReLU, LeakyReLU, ... are in activation.py)."""
import numpy as np

from .. import initializers
from ..backend.activation_ref import grad_needs_input
from .base import Layer, _Activated, activation_name
from .penalties import _Penalized


def _refuse(layer, **options):
    for nm, v in options.items():
        if v is not None:
            raise NotImplementedError(f"{layer}({nm}=...) is not supported yet")


class Dense(_Penalized, _Activated):
    """Keras' Dense; under the mixed_bfloat16 policy its products (forward,
    dW, dX) take bfloat16 operands with float32 accumulation (bias,
    activation and db stay float32)."""
    fresh_grads = True      # its input gradients are buffers of its own
    def __init__(self, units, activation=None, use_bias=True, kernel_initializer="glorot_uniform",
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kw):
        super().__init__(**kw)
        self._init_penalties({"kernel_regularizer": ("kernel", kernel_regularizer),
                              "bias_regularizer": ("bias", bias_regularizer),
                              "kernel_constraint": ("kernel", kernel_constraint),
                              "bias_constraint": ("bias", bias_constraint)}, activity_regularizer)
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"Dense units must be >= 1, got {units}")
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.kernel_initializer = initializers.get(kernel_initializer)
        self.bias_initializer = initializers.get(bias_initializer)

    def build(self, input_shape):
        if input_shape[-1] is None:
            raise ValueError("Dense needs the last input dimension")
        self.add_weight("kernel", (input_shape[-1], self.units), self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.units,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units,)

    def forward(self, x, training=False):
        c = self.ctx
        x2 = x.reshape(-1, x.shape[-1])
        z = self._buf("z", (x2.shape[0], self.units))
        self.ops.dense_forward(x2, self.w["kernel"], self.w.get("bias"),
                               activation=self._kernel_act(), out=z, **self._product_kw)
        y = self._post_activation(z)
        c.x, c.z, c.y, c.xshape = x2, z, y, x.shape
        self._record_activity(y, x.shape[0])
        return y.reshape(x.shape[:-1] + (self.units,))

    def backward(self, dy, need_dx=True):
        c = self.ctx
        dy2 = self._activity_grad(dy.reshape(-1, self.units), c.y)
        dz = self._pre_backward(dy2, c.y)
        act = self._kernel_act()
        dx = self._buf("dx", c.x.shape) if need_dx else None
        self.ops.dense_backward(dz, c.x, self.w["kernel"], y=c.z if act else None,
                                activation=act, need_dx=need_dx, dx=dx, dw=self.g["kernel"],
                                db=self.g.get("bias"), **self._product_kw)
        return None if dx is None else dx.reshape(c.xshape)

    def get_config(self):
        c = super().get_config()
        c.update(units=self.units, activation=self.activation, use_bias=self.use_bias,
                 kernel_initializer=initializers.serialize(self.kernel_initializer),
                 bias_initializer=initializers.serialize(self.bias_initializer),
                 **self._penalty_config())
        return c


class Activation(Layer):
    """Applies an activation (a name of pynn.activations).  Subclasses with
    parameters (ReLU, LeakyReLU, ELU, Softmax: pynn/layers/activation.py)
    set ``act_params``, the non-default keywords of ops.activation."""
    act_params = {}

    def __init__(self, activation, **kw):
        super().__init__(**kw)
        self.activation = activation_name(activation)
        self.emit_logits = False

    def forward(self, x, training=False):
        if self.emit_logits or self.activation == "linear":
            return x
        c = self.ctx
        y = self._buf("y", x.shape)
        c.y = self.ops.activation(self.activation, x, out=y, **self.act_params)
        # the input is another layer's buffer, unchanged until backward: kept by reference
        c.x = x if grad_needs_input(self.activation, self.act_params) else None
        return c.y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if self.emit_logits or self.activation == "linear":
            return dy
        c = self.ctx
        dx = self._buf("dx", dy.shape)
        return self.ops.activation_backward(self.activation, dy, c.y, out=dx, x=c.x,
                                            **self.act_params)

    def get_config(self):
        c = super().get_config()
        c["activation"] = self.activation
        return c


class Identity(Layer):
    def forward(self, x, training=False):
        return x

    def backward(self, dy, need_dx=True):
        return dy if need_dx else None


class Dropout(Layer):
    """Inverted dropout; the keep mask is a Philox4x32 stream of (seed, step):
    the same for any thread count, regenerated in backward, never stored.
    Without seed=, the seed comes from pynn.utils.set_random_seed and the
    layer's position in the model.  The model sets ``stream_seed`` and, before
    every training step, ``step`` (``uses_rng``)."""
    uses_rng = True

    def __init__(self, rate, noise_shape=None, seed=None, **kw):
        super().__init__(**kw)
        if noise_shape is not None:
            raise NotImplementedError("Dropout(noise_shape=...) is not supported")
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.seed = None if seed is None else int(seed)
        self.stream_seed = 0 if seed is None else self.seed
        self.step = 0

    def forward(self, x, training=False):
        self.ctx.active = training and self.rate > 0
        if not self.ctx.active:
            return x
        y = self._buf("y", x.shape)
        return self.ops.dropout(x, self.rate, self.stream_seed, offset=self.step, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if not self.ctx.active:
            return dy
        dx = self._buf("dx", dy.shape)
        return self.ops.dropout_backward(dy, self.rate, self.stream_seed, offset=self.step, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(rate=self.rate, seed=self.seed)
        return c


# Keras 2's keras.layers.core held these too: the old import paths keep working
from .regularization import ActivityRegularization  # noqa: E402
from .reshaping import Flatten, Permute, RepeatVector, Reshape  # noqa: E402
from .unsupported import Lambda, Masking  # noqa: E402

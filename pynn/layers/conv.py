"""Convolution layers (NHWC): Conv2D (with groups), DepthwiseConv2D,
SeparableConv2D, Conv2DTranspose.

Under the mixed_bfloat16 dtype policy the convolutions that are matrix
products -- Conv2D (grouped too), Conv2DTranspose and SeparableConv2D's
pointwise part -- take bfloat16 operands with float32 accumulation, forward
and backward (``precision="bfloat16"`` of the ops).  DepthwiseConv2D and
SeparableConv2D's depthwise part stay float32: they are per-channel
stencils, not products worth a bfloat16 path."""
import numpy as np

from .. import initializers
from ..backend.geometry import (check_channels_last, conv_padding, pair, padding_mode,
                                transpose_conv_length)
from .base import _Activated
from .penalties import _Penalized


def _out_hw(layer, h, w):
    oh = conv_padding(h, layer.kernel_size[0], layer.strides[0], layer.dilation_rate[0],
                      layer.padding)[0]
    ow = conv_padding(w, layer.kernel_size[1], layer.strides[1], layer.dilation_rate[1],
                      layer.padding)[0]
    return oh, ow


class _Conv(_Penalized, _Activated):
    """What every 2-D convolution layer shares: geometry arguments, checks,
    activation and bias."""
    fresh_grads = True      # its input gradients are buffers of its own
    kind = "Conv2D"

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), activation=None, use_bias=True,
                 bias_initializer="zeros", kernel_regularizer=None, bias_regularizer=None,
                 activity_regularizer=None, kernel_constraint=None, bias_constraint=None, **kw):
        kernel_args = kw.pop("_kernel_args", None)
        super().__init__(**kw)
        if kernel_args is not None and (kernel_regularizer is not None or
                                        kernel_constraint is not None):
            raise TypeError(f"{self.kind} takes {', '.join(sorted(kernel_args))}, not "
                            "kernel_regularizer / kernel_constraint")
        if kernel_args is None:
            kernel_args = {"kernel_regularizer": ("kernel", kernel_regularizer),
                           "kernel_constraint": ("kernel", kernel_constraint)}
        self._init_penalties(dict(kernel_args, bias_regularizer=("bias", bias_regularizer),
                                  bias_constraint=("bias", bias_constraint)), activity_regularizer)
        check_channels_last(data_format)
        self.kernel_size = pair(kernel_size, "kernel_size")
        self.strides = pair(strides, "strides")
        self.padding = padding_mode(padding)
        self.dilation_rate = pair(dilation_rate, "dilation_rate")
        if self.strides != (1, 1) and self.dilation_rate != (1, 1):
            raise ValueError("strides > 1 together with dilation_rate > 1 is not supported "
                             "(as in Keras)")
        self._set_activation(activation)
        self.use_bias = bool(use_bias)
        self.bias_initializer = initializers.get(bias_initializer)

    def _check_input(self, input_shape):
        if len(input_shape) != 3 or input_shape[-1] is None:
            raise ValueError(f"{self.kind} expects (H, W, C) inputs with known C, got shape "
                             f"{tuple(input_shape)}")

    def _out_hw_checked(self, input_shape):
        h, w = input_shape[0], input_shape[1]
        if h is None or w is None:
            raise ValueError(f"{self.kind} needs known input height and width, got {input_shape}")
        oh, ow = _out_hw(self, h, w)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.kind} {self.kernel_size} on input {tuple(input_shape)} "
                             "gives an empty output")
        return oh, ow

    def _geom(self):
        return dict(strides=self.strides, padding=self.padding, dilation=self.dilation_rate)

    def get_config(self):
        c = super().get_config()
        c.update(kernel_size=list(self.kernel_size), strides=list(self.strides),
                 padding=self.padding, data_format="channels_last",
                 dilation_rate=list(self.dilation_rate), activation=self.activation,
                 use_bias=self.use_bias,
                 bias_initializer=initializers.serialize(self.bias_initializer),
                 **self._penalty_config())
        return c


class Conv2D(_Conv):
    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), groups=1, activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kw):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation,
                         use_bias, bias_initializer, **kw)
        self.filters = int(filters)
        if self.filters < 1:
            raise ValueError(f"Conv2D filters must be >= 1, got {filters}")
        self.groups = int(groups)
        if self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"Conv2D filters ({self.filters}) must be divisible by groups "
                             f"({groups}), groups >= 1")
        self.kernel_initializer = initializers.get(kernel_initializer)

    def build(self, input_shape):
        self._check_input(input_shape)
        c = input_shape[-1]
        if c % self.groups:
            raise ValueError(f"Conv2D: the input channels ({c}) must be divisible by groups "
                             f"({self.groups})")
        self.add_weight("kernel", self.kernel_size + (c // self.groups, self.filters),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return self._out_hw_checked(input_shape) + (self.filters,)

    def _geom(self):
        g = super()._geom()
        g["groups"] = self.groups
        return g

    def forward(self, x, training=False, bf16_out=False):
        """y = act(conv(x) + bias); with bf16_out (no activation: the plan's
        fusion, pynn/models/fusion.py) y is stored as bfloat16 bit patterns
        (uint16) for a batch norm to read."""
        c = self.ctx
        z = self._buf("z", (x.shape[0],) + self._out_hw_checked(x.shape[1:]) + (self.filters,),
                      np.uint16 if bf16_out else None)
        self.ops.conv2d_forward(x, self.w["kernel"], self.w.get("bias"),
                                activation=self._kernel_act(), out=z, **self._geom(),
                                **self._product_kw)
        y = self._post_activation(z)
        c.x, c.z, c.y = x, z, y
        self._record_activity(y, x.shape[0])
        return y

    def forward_maxpool(self, x, pool):
        """This layer (activation "relu", no activity regularizer) followed by
        ``pool``, a MaxPooling2D(2, strides=2, padding="valid"), in one
        kernel call (the plan's fusion, pynn/models/fusion.py): returns the
        pooled output and fills pool.ctx as its own forward would.  The
        convolution's output is not kept: its backward then takes dz from
        the pooling's masked backward (relu_masked)."""
        c = self.ctx
        oh, ow = self._out_hw_checked(x.shape[1:])
        yshape = (x.shape[0], oh, ow, self.filters)
        pshape = (x.shape[0], oh // 2, ow // 2, self.filters)
        py = pool._buf("y", pshape)
        pi = pool._buf("idx", pshape, np.int32)
        self.ops.conv2d_maxpool_forward(x, self.w["kernel"], self.w.get("bias"),
                                        activation="relu", out=py, indices=pi, **self._geom(),
                                        **self._product_kw)
        c.x, c.z, c.y = x, None, None
        pool.ctx.xshape, pool.ctx.idx, pool.ctx.y = yshape, pi, py
        return py

    accumulates_dx = True

    def _dx_target(self, need_dx, dx_into):
        """(dx, accumulate): dx_into (added to) or a buffer of x's shape."""
        if need_dx and dx_into is not None:
            return dx_into, True
        return (self._buf("dx", self.ctx.x.shape) if need_dx else None), False

    def backward_maxpool(self, dy, pool, need_dx=True, dx_into=None):
        """The backward of forward_maxpool given dy, the gradient of the
        pooled output: the pooling's backward and its ReLU mask run inside
        this layer's (ops.conv2d_maxpool_backward; on the CPU backend's
        Winograd path the convolution's full-size gradient is never
        written)."""
        c, pc = self.ctx, pool.ctx
        dx, acc = self._dx_target(need_dx, dx_into)
        self.ops.conv2d_maxpool_backward(dy, pc.idx, c.x, self.w["kernel"], y=pc.y,
                                         activation="relu", need_dx=need_dx, dx=dx,
                                         dw=self.g["kernel"], db=self.g.get("bias"),
                                         accumulate_dx=acc, **self._geom(), **self._product_kw)
        return dx

    def backward(self, dy, need_dx=True, dx_into=None, relu_masked=False):
        """dx; with dx_into (the gradient the input already has from another
        consumer) the data gradient is added to it in the same pass; with
        relu_masked (a fused ReLU whose mask the consumer applied:
        pynn/models/fusion.py) dy is already dz."""
        c = self.ctx
        dz = self._pre_backward(self._activity_grad(dy, c.y), c.y)
        act = None if relu_masked else self._kernel_act()
        dx, acc = self._dx_target(need_dx, dx_into)
        self.ops.conv2d_backward(dz, c.x, self.w["kernel"], y=c.z if act else None,
                                 activation=act, need_dx=need_dx, dx=dx, dw=self.g["kernel"],
                                 db=self.g.get("bias"), accumulate_dx=acc, **self._geom(),
                                 **self._product_kw)
        return dx

    def get_config(self):
        c = super().get_config()
        c.update(filters=self.filters, groups=self.groups,
                 kernel_initializer=initializers.serialize(self.kernel_initializer))
        return c


class DepthwiseConv2D(_Conv):
    """One (KH, KW) filter per input channel and depth multiplier: kernel
    (KH, KW, C, M), output channel c*M + m (Keras' layout).  Computes in
    float32 under the mixed_bfloat16 policy too."""
    kind = "DepthwiseConv2D"

    def __init__(self, kernel_size, strides=(1, 1), padding="valid", depth_multiplier=1,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", bias_initializer="zeros",
                 depthwise_regularizer=None, depthwise_constraint=None, **kw):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation,
                         use_bias, bias_initializer, _kernel_args={
                             "depthwise_regularizer": ("kernel", depthwise_regularizer),
                             "depthwise_constraint": ("kernel", depthwise_constraint)}, **kw)
        self.depth_multiplier = int(depth_multiplier)
        if self.depth_multiplier < 1:
            raise ValueError(f"depth_multiplier must be >= 1, got {depth_multiplier}")
        self.depthwise_initializer = initializers.get(depthwise_initializer)

    def build(self, input_shape):
        self._check_input(input_shape)
        c = input_shape[-1]
        self.add_weight("kernel", self.kernel_size + (c, self.depth_multiplier),
                        self.depthwise_initializer)
        if self.use_bias:
            self.add_weight("bias", (c * self.depth_multiplier,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return self._out_hw_checked(input_shape) + (input_shape[-1] * self.depth_multiplier,)

    def forward(self, x, training=False):
        c = self.ctx
        z = self._buf("z", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        self.ops.depthwise_conv2d_forward(x, self.w["kernel"], self.w.get("bias"),
                                          activation=self._kernel_act(), out=z, **self._geom())
        y = self._post_activation(z)
        c.x, c.z, c.y = x, z, y
        self._record_activity(y, x.shape[0])
        return y

    def backward(self, dy, need_dx=True):
        c = self.ctx
        dz = self._pre_backward(self._activity_grad(dy, c.y), c.y)
        act = self._kernel_act()
        dx = self._buf("dx", c.x.shape) if need_dx else None
        self.ops.depthwise_conv2d_backward(dz, c.x, self.w["kernel"], y=c.z if act else None,
                                           activation=act, need_dx=need_dx, dx=dx,
                                           dw=self.g["kernel"], db=self.g.get("bias"),
                                           **self._geom())
        return dx

    def get_config(self):
        c = super().get_config()
        c.update(depth_multiplier=self.depth_multiplier,
                 depthwise_initializer=initializers.serialize(self.depthwise_initializer))
        return c


class SeparableConv2D(_Conv):
    """A depthwise convolution (no bias) then a 1x1 convolution with bias
    and activation; weights depthwise_kernel, pointwise_kernel, bias.  Under
    mixed_bfloat16 the pointwise products are bfloat16, the depthwise part
    float32."""
    kind = "SeparableConv2D"

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", data_format=None,
                 dilation_rate=(1, 1), depth_multiplier=1, activation=None, use_bias=True,
                 depthwise_initializer="glorot_uniform", pointwise_initializer="glorot_uniform",
                 bias_initializer="zeros", depthwise_regularizer=None,
                 pointwise_regularizer=None, depthwise_constraint=None,
                 pointwise_constraint=None, **kw):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation,
                         use_bias, bias_initializer, _kernel_args={
                             "depthwise_regularizer": ("depthwise_kernel", depthwise_regularizer),
                             "pointwise_regularizer": ("pointwise_kernel", pointwise_regularizer),
                             "depthwise_constraint": ("depthwise_kernel", depthwise_constraint),
                             "pointwise_constraint": ("pointwise_kernel", pointwise_constraint)},
                         **kw)
        self.filters = int(filters)
        self.depth_multiplier = int(depth_multiplier)
        if self.filters < 1 or self.depth_multiplier < 1:
            raise ValueError("SeparableConv2D filters and depth_multiplier must be >= 1")
        self.depthwise_initializer = initializers.get(depthwise_initializer)
        self.pointwise_initializer = initializers.get(pointwise_initializer)

    def build(self, input_shape):
        self._check_input(input_shape)
        c = input_shape[-1]
        self.add_weight("depthwise_kernel", self.kernel_size + (c, self.depth_multiplier),
                        self.depthwise_initializer)
        self.add_weight("pointwise_kernel", (1, 1, c * self.depth_multiplier, self.filters),
                        self.pointwise_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        return self._out_hw_checked(input_shape) + (self.filters,)

    def forward(self, x, training=False):
        c = self.ctx
        oh, ow = self._out_hw_checked(x.shape[1:])
        t = self._buf("t", (x.shape[0], oh, ow, x.shape[-1] * self.depth_multiplier))
        self.ops.depthwise_conv2d_forward(x, self.w["depthwise_kernel"], None, out=t,
                                          **self._geom())
        z = self._buf("z", (x.shape[0], oh, ow, self.filters))
        self.ops.conv2d_forward(t, self.w["pointwise_kernel"], self.w.get("bias"),
                                activation=self._kernel_act(), out=z, **self._product_kw)
        y = self._post_activation(z)
        c.x, c.t, c.z, c.y = x, t, z, y
        self._record_activity(y, x.shape[0])
        return y

    def backward(self, dy, need_dx=True):
        c = self.ctx
        dz = self._pre_backward(self._activity_grad(dy, c.y), c.y)
        act = self._kernel_act()
        dt = self._buf("dt", c.t.shape)
        self.ops.conv2d_backward(dz, c.t, self.w["pointwise_kernel"], y=c.z if act else None,
                                 activation=act, need_dx=True, dx=dt,
                                 dw=self.g["pointwise_kernel"], db=self.g.get("bias"),
                                 **self._product_kw)
        dx = self._buf("dx", c.x.shape) if need_dx else None
        self.ops.depthwise_conv2d_backward(dt, c.x, self.w["depthwise_kernel"], need_dx=need_dx,
                                           dx=dx, dw=self.g["depthwise_kernel"], db=None,
                                           **self._geom())
        return dx

    def get_config(self):
        c = super().get_config()
        c.update(filters=self.filters, depth_multiplier=self.depth_multiplier,
                 depthwise_initializer=initializers.serialize(self.depthwise_initializer),
                 pointwise_initializer=initializers.serialize(self.pointwise_initializer))
        return c


class Conv2DTranspose(_Conv):
    """The transpose (gradient) of a convolution: kernel (KH, KW, filters,
    C_in); output size H*s ("same") or H*s + max(k - s, 0) ("valid"), or
    (H-1)*s + k - 2*pad + output_padding (Keras' rule)."""
    kind = "Conv2DTranspose"

    def __init__(self, filters, kernel_size, strides=(1, 1), padding="valid", output_padding=None,
                 data_format=None, dilation_rate=(1, 1), activation=None, use_bias=True,
                 kernel_initializer="glorot_uniform", bias_initializer="zeros", **kw):
        super().__init__(kernel_size, strides, padding, data_format, dilation_rate, activation,
                         use_bias, bias_initializer, **kw)
        self.filters = int(filters)
        if self.filters < 1:
            raise ValueError(f"Conv2DTranspose filters must be >= 1, got {filters}")
        self.output_padding = None if output_padding is None else \
            pair(output_padding, "output_padding", min_value=0)
        if self.output_padding is not None:
            for op, s in zip(self.output_padding, self.strides):
                if op >= s:
                    raise ValueError(f"output_padding {self.output_padding} must be smaller than "
                                     f"the strides {self.strides}")
        self.kernel_initializer = initializers.get(kernel_initializer)

    @property
    def _fused(self):
        return self.activation == "linear"

    def _kernel_act(self):
        return None

    def build(self, input_shape):
        self._check_input(input_shape)
        self.add_weight("kernel", self.kernel_size + (self.filters, input_shape[-1]),
                        self.kernel_initializer)
        if self.use_bias:
            self.add_weight("bias", (self.filters,), self.bias_initializer)

    def compute_output_shape(self, input_shape):
        op = self.output_padding or (None, None)
        hw = [transpose_conv_length(input_shape[i], self.kernel_size[i], self.strides[i],
                                    self.dilation_rate[i], self.padding, op[i]) for i in (0, 1)]
        if min(hw) < 1:
            raise ValueError(f"Conv2DTranspose on input {tuple(input_shape)} gives an empty output")
        return tuple(hw) + (self.filters,)

    def forward(self, x, training=False):
        c = self.ctx
        z = self._buf("z", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        self.ops.conv2d_backward_data(x, self.w["kernel"], z.shape, out=z, **self._geom(),
                                      **self._product_kw)
        if "bias" in self.w:
            self.ops.bias_add(z, self.w["bias"])
        y = self._post_activation(z)
        c.x, c.z, c.y = x, z, y
        self._record_activity(y, x.shape[0])
        return y

    def backward(self, dy, need_dx=True):
        c = self.ctx
        dz = self._pre_backward(self._activity_grad(dy, c.y), c.y)
        if "bias" in self.g:
            self.ops.bias_grad(dz, out=self.g["bias"])
        # the forward pass is the data gradient of conv(z-space -> x-space):
        # dW is that convolution's filter gradient with the roles swapped
        self.ops.conv2d_backward(c.x, dz, self.w["kernel"], need_dx=False, dw=self.g["kernel"],
                                 db=None, **self._geom(), **self._product_kw)
        if not need_dx:
            return None
        dx = self._buf("dx", c.x.shape)
        return self.ops.conv2d_forward(dz, self.w["kernel"], None, out=dx, **self._geom(),
                                       **self._product_kw)

    def get_config(self):
        c = super().get_config()
        c.update(filters=self.filters,
                 output_padding=None if self.output_padding is None else list(self.output_padding),
                 kernel_initializer=initializers.serialize(self.kernel_initializer))
        return c


Convolution2D = Conv2D
Convolution2DTranspose = Conv2DTranspose
SeparableConvolution2D = SeparableConv2D

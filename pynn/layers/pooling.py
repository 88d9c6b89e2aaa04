"""Pooling layers (NHWC): max and average pooling, global pooling."""
import numpy as np

from ..backend.geometry import check_channels_last, pair, padding_mode, pool_output_hw
from .base import Layer


class _Pool2D(Layer):
    fresh_grads = True      # its input gradients are buffers of its own
    kind = "Pooling2D"

    def __init__(self, pool_size=(2, 2), strides=None, padding="valid", data_format=None, **kw):
        super().__init__(**kw)
        check_channels_last(data_format)
        self.pool_size = pair(pool_size, "pool_size")
        self.strides = self.pool_size if strides is None else pair(strides, "strides")
        self.padding = padding_mode(padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3 or None in input_shape[:2]:
            raise ValueError(f"{self.kind} expects (H, W, C) inputs, got shape {tuple(input_shape)}")
        h, w, c = input_shape
        oh, ow = pool_output_hw(h, w, self.pool_size, self.strides, self.padding)
        if oh < 1 or ow < 1:
            raise ValueError(f"{self.kind} {self.pool_size} on input {tuple(input_shape)} gives "
                             "an empty output")
        return (oh, ow, c)

    def _geom(self):
        return dict(pool_size=self.pool_size, strides=self.strides, padding=self.padding)

    def get_config(self):
        c = super().get_config()
        c.update(pool_size=list(self.pool_size), strides=list(self.strides), padding=self.padding,
                 data_format="channels_last")
        return c


class MaxPooling2D(_Pool2D):
    kind = "MaxPooling2D"

    def forward(self, x, training=False):
        shp = (x.shape[0],) + self.compute_output_shape(x.shape[1:])
        y = self._buf("y", shp)
        idx = self._buf("idx", shp, np.int32)
        self.ops.max_pool2d(x, self.pool_size, self.strides, self.padding, out=y, indices=idx)
        self.ctx.xshape, self.ctx.idx, self.ctx.y = x.shape, idx, y
        return y

    def backward(self, dy, need_dx=True, relu_mask=False):
        """dx; with relu_mask (the plan's fusion of a ReLU convolution into
        this pooling: pynn/models/fusion.py) dy is first masked by y > 0 -- the
        ReLU derivative at each window's maximum, which is that window's
        output -- so the gradient leaves here as the producer's dz."""
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.max_pool2d_backward(dy, self.ctx.idx, self.ctx.xshape, out=dx,
                                            y=self.ctx.y if relu_mask else None, **self._geom())


class AveragePooling2D(_Pool2D):
    """Mean over each window; with padding="same" only the in-bounds
    elements count (Keras/TensorFlow)."""
    kind = "AveragePooling2D"

    def forward(self, x, training=False):
        y = self._buf("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        self.ctx.xshape = x.shape
        return self.ops.avg_pool2d(x, out=y, **self._geom())

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.avg_pool2d_backward(dy, self.ctx.xshape, out=dx, **self._geom())


class _GlobalPool2D(Layer):
    fresh_grads = True      # its input gradients are buffers of its own
    kind = "GlobalPooling2D"

    def __init__(self, data_format=None, keepdims=False, **kw):
        super().__init__(**kw)
        check_channels_last(data_format)
        self.keepdims = bool(keepdims)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{self.kind} expects (H, W, C) inputs, got shape {tuple(input_shape)}")
        return (1, 1, input_shape[-1]) if self.keepdims else (input_shape[-1],)

    def _shaped(self, y, n):
        return y.reshape((n,) + self.compute_output_shape(self.ctx.xshape[1:]))

    def get_config(self):
        c = super().get_config()
        c.update(data_format="channels_last", keepdims=self.keepdims)
        return c


class GlobalAveragePooling2D(_GlobalPool2D):
    kind = "GlobalAveragePooling2D"

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0], x.shape[-1]))
        return self._shaped(self.ops.global_avg_pool2d(x, out=y), x.shape[0])

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.global_avg_pool2d_backward(dy.reshape(dy.shape[0], -1), self.ctx.xshape,
                                                   out=dx)


class GlobalMaxPooling2D(_GlobalPool2D):
    kind = "GlobalMaxPooling2D"

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0], x.shape[-1]))
        idx = self._buf("idx", (x.shape[0], x.shape[-1]), np.int32)
        self.ops.global_max_pool2d(x, out=y, indices=idx)
        self.ctx.idx = idx
        return self._shaped(y, x.shape[0])

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.global_max_pool2d_backward(dy.reshape(dy.shape[0], -1), self.ctx.idx,
                                                   self.ctx.xshape, out=dx)


MaxPool2D = MaxPooling2D
AvgPool2D = AveragePooling2D
GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D

# Keras 2's keras.layers.pooling also held the 1-D and 3-D poolings (not supported)
from .unsupported import (AveragePooling1D, AveragePooling3D, AvgPool1D, AvgPool3D,  # noqa: E402,F401
                          GlobalAveragePooling1D, GlobalAveragePooling3D, GlobalAvgPool1D,
                          GlobalAvgPool3D, GlobalMaxPool1D, GlobalMaxPool3D, GlobalMaxPooling1D,
                          GlobalMaxPooling3D, MaxPool1D, MaxPool3D, MaxPooling1D, MaxPooling3D)

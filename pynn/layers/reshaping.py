"""Layers that move values without arithmetic: Flatten, Reshape,
ZeroPadding2D, Cropping2D, UpSampling2D, Permute, RepeatVector."""
import numpy as np

from ..backend.geometry import check_channels_last, pair
from .base import Layer


class Flatten(Layer):
    def __init__(self, data_format=None, **kw):
        super().__init__(**kw)
        check_channels_last(data_format)

    def compute_output_shape(self, input_shape):
        if any(d is None for d in input_shape):
            raise ValueError(f"Flatten needs a fully known input shape, got {tuple(input_shape)}")
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.ctx.xshape) if need_dx else None


class Reshape(Layer):
    def __init__(self, target_shape, **kw):
        super().__init__(**kw)
        self.target_shape = tuple(int(s) for s in target_shape)

    def compute_output_shape(self, input_shape):
        n = int(np.prod(input_shape))
        t = list(self.target_shape)
        if t.count(-1) == 1:
            rest = int(np.prod([s for s in t if s != -1]))
            t[t.index(-1)] = n // rest if rest else 0
        if int(np.prod(t)) != n or min(t) < 1:
            raise ValueError(f"cannot reshape {tuple(input_shape)} to {self.target_shape}")
        return tuple(t)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        return x.reshape((x.shape[0],) + self.compute_output_shape(x.shape[1:]))

    def backward(self, dy, need_dx=True):
        return dy.reshape(self.ctx.xshape) if need_dx else None

    def get_config(self):
        c = super().get_config()
        c["target_shape"] = list(self.target_shape)
        return c


def _pads(v, what):
    """Keras' int / (sym_h, sym_w) / ((top, bottom), (left, right)) -> the latter."""
    if isinstance(v, (int, np.integer)):
        v = int(v)
        if v < 0:
            raise ValueError(f"{what} must be >= 0, got {v}")
        return (v, v), (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int, a pair or a pair of pairs, got {v!r}")
    if all(isinstance(a, (int, np.integer)) for a in v):
        h, w = pair(v, what, min_value=0)
        return (h, h), (w, w)
    out = tuple(pair(a, what, min_value=0) for a in v)
    return out


class ZeroPadding2D(Layer):
    fresh_grads = True      # its input gradients are buffers of its own
    def __init__(self, padding=(1, 1), data_format=None, **kw):
        super().__init__(**kw)
        check_channels_last(data_format)
        self.padding = _pads(padding, "padding")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"ZeroPadding2D expects (H, W, C) inputs, got {tuple(input_shape)}")
        (t, b), (l, r) = self.padding
        h, w, c = input_shape
        return (None if h is None else h + t + b, None if w is None else w + l + r, c)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        return self.ops.pad2d(x, self.padding, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.crop2d(dy, self.padding, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(padding=[list(p) for p in self.padding], data_format="channels_last")
        return c


class Cropping2D(Layer):
    fresh_grads = True      # its input gradients are buffers of its own
    def __init__(self, cropping=((0, 0), (0, 0)), data_format=None, **kw):
        super().__init__(**kw)
        check_channels_last(data_format)
        self.cropping = _pads(cropping, "cropping")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Cropping2D expects (H, W, C) inputs, got {tuple(input_shape)}")
        (t, b), (l, r) = self.cropping
        h, w, c = input_shape
        oh, ow = h - t - b, w - l - r
        if oh < 1 or ow < 1:
            raise ValueError(f"Cropping2D {self.cropping} leaves nothing of input {tuple(input_shape)}")
        return (oh, ow, c)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        return self.ops.crop2d(x, self.cropping, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.pad2d(dy, self.cropping, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(cropping=[list(p) for p in self.cropping], data_format="channels_last")
        return c


class UpSampling2D(Layer):
    """Nearest-neighbour upsampling: each pixel repeated size[0] x size[1]."""
    fresh_grads = True      # its input gradients are buffers of its own

    def __init__(self, size=(2, 2), data_format=None, interpolation="nearest", **kw):
        super().__init__(**kw)
        check_channels_last(data_format)
        self.size = pair(size, "size")
        if interpolation != "nearest":
            raise NotImplementedError(f"UpSampling2D(interpolation={interpolation!r}) is not "
                                      "supported: use 'nearest' (or Conv2DTranspose)")
        self.interpolation = interpolation

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"UpSampling2D expects (H, W, C) inputs, got {tuple(input_shape)}")
        h, w, c = input_shape
        return (h * self.size[0], w * self.size[1], c)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0],) + self.compute_output_shape(x.shape[1:]))
        return self.ops.upsample2d(x, self.size, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.upsample2d_backward(dy, self.size, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(size=list(self.size), data_format="channels_last",
                 interpolation=self.interpolation)
        return c


class Permute(Layer):
    """Permutes the non-batch axes: ``dims`` is a permutation of 1..rank
    (axis 1 is the first after the batch), as in Keras."""

    def __init__(self, dims, **kw):
        super().__init__(**kw)
        try:
            self.dims = tuple(int(d) for d in dims)
        except TypeError:
            raise ValueError(f"Permute: dims must be a tuple of axes, got {dims!r}") from None
        if sorted(self.dims) != list(range(1, len(self.dims) + 1)):
            raise ValueError(f"Permute: dims must be a permutation of 1..{len(self.dims)} "
                             f"(the batch axis 0 is not permuted), got {dims!r}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != len(self.dims):
            raise ValueError(f"Permute{self.dims} needs inputs of rank {len(self.dims) + 1} "
                             f"(batch included), got shape {(None,) + tuple(input_shape)}")
        return tuple(input_shape[d - 1] for d in self.dims)

    def forward(self, x, training=False):
        axes = (0,) + self.dims
        return self.ops.transpose(x, axes, out=self._buf("y", tuple(x.shape[a] for a in axes)))

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        inv = [0] * (len(self.dims) + 1)
        for i, a in enumerate((0,) + self.dims):
            inv[a] = i
        return self.ops.transpose(dy, tuple(inv),
                                  out=self._buf("dx", tuple(dy.shape[a] for a in inv)))

    def get_config(self):
        c = super().get_config()
        c["dims"] = list(self.dims)
        return c


class RepeatVector(Layer):
    """(batch, features) -> (batch, n, features)."""

    def __init__(self, n, **kw):
        super().__init__(**kw)
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
            raise ValueError(f"RepeatVector: n must be a positive int, got {n!r}")
        self.n = int(n)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"RepeatVector needs inputs of shape (batch, features), got "
                             f"{(None,) + tuple(input_shape)}")
        return (self.n, input_shape[0])

    def forward(self, x, training=False):
        return self.ops.repeat_vector(x, self.n, out=self._buf("y", (x.shape[0], self.n,
                                                                   x.shape[1])))

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return self.ops.repeat_vector_backward(dy, out=self._buf("dx", (dy.shape[0], dy.shape[2])))

    def get_config(self):
        c = super().get_config()
        c["n"] = self.n
        return c

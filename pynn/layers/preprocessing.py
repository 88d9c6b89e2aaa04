"""Preprocessing layers with Keras 3's arguments and numerics: Rescaling,
Normalization (with ``adapt``) and Resizing.  They run in the model like any
layer (training and inference alike) and have backward passes, so they may
sit anywhere in a trained model."""
import itertools
import math
import warnings

import numpy as np

from .base import Layer

# Keras' backend.epsilon(): the floor of the standard deviation in Normalization
EPSILON = 1e-7


def _number_or_list(v, what):
    """A float, or a (nested) list of floats for per-channel values."""
    a = np.asarray(v, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} must be finite, got {v!r}")
    return float(a) if a.ndim == 0 else a.tolist()


class _Constants:
    """Per-layer device copies of constant arrays, made once per (ops, dtype)."""

    def _const(self, key, value):
        cache = self.__dict__.setdefault("_consts", {})
        k = (key, id(self.ops), self._array_dtype.str)
        c = cache.get(k)
        if c is None:
            c = cache[k] = self.ops.asarray(np.asarray(value, dtype=self._array_dtype))
        return c


class Rescaling(_Constants, Layer):
    """out = x * scale + offset (scale and offset: numbers, or per-channel lists)."""

    def __init__(self, scale, offset=0.0, **kw):
        super().__init__(**kw)
        self.scale = _number_or_list(scale, "Rescaling scale")
        self.offset = _number_or_list(offset, "Rescaling offset")

    def build(self, input_shape):
        for nm in ("scale", "offset"):
            s = np.shape(getattr(self, nm))
            # per-channel values align with the last axes and must not widen x
            if len(s) > len(input_shape) or any(
                    a != 1 and b is not None and a != b for a, b in zip(s[::-1], input_shape[::-1])):
                raise ValueError(f"Rescaling {nm} of shape {s} does not broadcast against inputs "
                                 f"of shape {(None,) + tuple(input_shape)}")

    def forward(self, x, training=False):
        y = self._buf("y", x.shape)
        return self.ops.rescale(x, self._const("scale", self.scale),
                                self._const("offset", self.offset), out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", dy.shape)
        return self.ops.rescale(dy, self._const("scale", self.scale), 0.0, out=dx)

    def get_config(self):
        c = super().get_config()
        c.update(scale=self.scale, offset=self.offset)
        return c

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for k in ("scale", "offset"):     # Keras' serialised NumPy arrays
            v = config.get(k)
            if isinstance(v, dict) and isinstance(v.get("config"), dict) and "value" in v["config"]:
                config[k] = v["config"]["value"]
        return cls(**config)


def _x_of(batch):
    """The inputs of a batch: (x, y) or (x, y, sample_weight) give x."""
    return batch[0] if isinstance(batch, tuple) else batch


class Normalization(_Constants, Layer):
    """Keras' Normalization: (x - mean) / max(sqrt(variance), 1e-7) with one
    mean and variance per index of the kept ``axis`` (int, tuple or None for
    one scalar); ``invert=True`` maps back: mean + x * max(sqrt(variance), 1e-7).
    Given ``mean``/``variance`` are constants (in the config); otherwise
    ``adapt(data)`` computes them into the non-trainable weights mean,
    variance (and Keras' unused count), which model files keep."""

    def __init__(self, axis=-1, mean=None, variance=None, invert=False, **kw):
        super().__init__(**kw)
        if axis is None:
            axis = ()
        elif isinstance(axis, (int, np.integer)) and not isinstance(axis, bool):
            axis = (int(axis),)
        elif isinstance(axis, (list, tuple)):
            axis = tuple(int(a) for a in axis)
        else:
            raise TypeError(f"Normalization: axis must be an int, a tuple of ints or None, got {axis!r}")
        self.axis = axis
        if (mean is None) != (variance is None):
            raise ValueError("When setting values directly, both `mean` and `variance` must be "
                             f"set. Received: mean={mean} and variance={variance}")
        if mean is not None:
            if np.shape(mean) != np.shape(variance):
                raise ValueError("Normalization: mean and variance must have the same shape, got "
                                 f"{np.shape(mean)} and {np.shape(variance)}")
            if len(np.shape(mean)) > len(self.axis):
                raise ValueError(f"Normalization: the rank of mean ({np.ndim(mean)}) must be at "
                                 f"most the number of axes ({len(self.axis)})")
            if np.any(np.asarray(variance, dtype=np.float64) < 0):
                raise ValueError("Normalization: variance must be >= 0")
            mean = _number_or_list(mean, "Normalization mean")
            variance = _number_or_list(variance, "Normalization variance")
        self.input_mean, self.input_variance = mean, variance
        self.invert = bool(invert)

    def build(self, input_shape):
        full = (None,) + tuple(input_shape)
        ndim = len(full)
        if any(a < -ndim or a >= ndim for a in self.axis):
            raise ValueError(f"Normalization: every axis must lie in [-{ndim}, {ndim}); got "
                             f"axis={self.axis} for inputs of rank {ndim}")
        keep = tuple(sorted({a + ndim if a < 0 else a for a in self.axis}))
        if 0 in keep:
            raise ValueError(f"Normalization: axis={self.axis} keeps the batch axis (inputs of "
                             f"shape {full}); use axis=None for one scalar mean and variance")
        if any(full[d] is None for d in keep):
            raise ValueError(f"Normalization: the kept axes {self.axis} need known sizes, got "
                             f"inputs of shape {full}")
        self._keep = keep
        self._reduce = tuple(d for d in range(ndim) if d not in keep)
        self._bshape = tuple(full[d] if d in keep else 1 for d in range(ndim))
        self._stat_shape = tuple(full[d] for d in keep)
        if self.input_mean is None:
            self.add_weight("mean", self._stat_shape, "zeros", trainable=False)
            self.add_weight("variance", self._stat_shape, "ones", trainable=False)
            self.add_weight("count", (), "zeros", trainable=False)
        else:
            m = np.asarray(self.input_mean, dtype=np.float64)
            v = np.asarray(self.input_variance, dtype=np.float64)
            # the values' axes align with the kept axes from the right
            shape = [1] * ndim
            for i in range(1, m.ndim + 1):
                shape[keep[-i]] = m.shape[-i]
            try:
                self._mean_b = np.broadcast_to(m.reshape(shape), self._bshape)
                self._var_b = np.broadcast_to(v.reshape(shape), self._bshape)
            except ValueError:
                raise ValueError(f"Normalization: mean of shape {m.shape} does not broadcast to "
                                 f"the kept axes' shape {self._stat_shape}") from None

    def _build_shape(self, input_shape):
        # as Keras, only the kept axes must match the shape it was built (adapted) for
        if self.built and not isinstance(input_shape, list) and \
                len(input_shape) == len(self.input_shape) and \
                all(input_shape[d - 1] == self.input_shape[d - 1] for d in self._keep):
            return tuple(input_shape)
        return super()._build_shape(input_shape)

    def _stats(self):
        if self.input_mean is not None:
            return self._const("mean", self._mean_b), self._const("variance", self._var_b)
        return (self.w["mean"].reshape(self._bshape), self.w["variance"].reshape(self._bshape))

    def forward(self, x, training=False):
        mean, var = self._stats()
        y = self._buf("y", x.shape)
        return self.ops.normalize(x, mean, var, self.invert, EPSILON, out=y)

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", dy.shape)
        return self.ops.normalize_backward(dy, self._stats()[1], self.invert, EPSILON, out=dx)

    # -- adapt -----------------------------------------------------------------
    def adapt(self, data, batch_size=None, steps=None):
        """Mean and (biased) variance of ``data`` per index of the kept axes:
        a NumPy array (batch first), or an iterable of batches (arrays, or
        (x, y) tuples), combined batch by batch as Keras does.  Keras 2's
        batch_size / steps are accepted with a DeprecationWarning: steps
        batches (of batch_size rows, default 32, for an array) are used."""
        if self.input_mean is not None:
            raise ValueError("Normalization: adapt() is for layers made without mean= and "
                             "variance= (those are constants)")
        if batch_size is not None or steps is not None:
            warnings.warn("Normalization.adapt(batch_size=..., steps=...) is Keras 2: Keras 3's "
                          "adapt(data) takes the data alone (pass fewer rows or batches instead)",
                          DeprecationWarning, stacklevel=2)
            if steps is not None:
                if isinstance(data, np.ndarray):
                    data = data[:int(steps) * int(batch_size or 32)]
                else:
                    data = itertools.islice(iter(data), int(steps))
        if isinstance(data, np.ndarray):
            batches, first = None, data
        elif hasattr(data, "shape") and hasattr(data, "__array__"):
            batches, first = None, np.asarray(data)
        elif hasattr(data, "__iter__") and not isinstance(data, (str, bytes, dict)):
            it = iter(data)
            first = next(it, None)
            if first is None:
                raise ValueError("Normalization.adapt() received an empty iterable (no batches)")
            first = np.asarray(_x_of(first))
            batches = itertools.chain([first], (np.asarray(_x_of(b)) for b in it))
        else:
            raise TypeError(f"Normalization.adapt(): unsupported data of type {type(data).__name__}: "
                            "pass a NumPy array or an iterable of batches")
        if first.ndim < 1 or first.dtype.kind not in "fiub":
            raise TypeError(f"Normalization.adapt(): expected a batch of numbers, got an array of "
                            f"shape {first.shape} and dtype {first.dtype}")
        self._ready(first.shape[1:])
        if batches is None:
            self._check_kept(first.shape)
            x = first.astype(np.float64)
            mean, var = x.mean(axis=self._reduce), x.var(axis=self._reduce)
        else:
            mean = var = np.zeros(self._stat_shape)
            total = 0
            for b in batches:
                self._check_kept(b.shape)
                b = b.astype(np.float64)
                bm, bv = b.mean(axis=self._reduce), b.var(axis=self._reduce)
                cnt = math.prod(b.shape[d] for d in self._reduce)
                total += cnt
                wb = cnt / total
                new = mean * (1 - wb) + bm * wb
                var = (var + (mean - new) ** 2) * (1 - wb) + (bv + (bm - new) ** 2) * wb
                mean = new
        self.w["mean"][...] = self.ops.asarray(np.asarray(mean, dtype=self._array_dtype))
        self.w["variance"][...] = self.ops.asarray(np.asarray(var, dtype=self._array_dtype))

    def _ready(self, shape):
        """Built for batch-less ``shape`` with weights (standalone or the model's)."""
        if not self.built:
            self._build_shape(tuple(shape))
        if not self.w:
            if getattr(self, "_graph_owner", None) is not None:
                self._need_weights()
            else:
                from ..backend import get_ops
                self.bind(self.ops or get_ops(), self._array_dtype or np.float32)
                self._allocate_standalone()

    def _check_kept(self, shape):
        full = (None,) + tuple(self.input_shape)
        if len(shape) != len(full) or any(shape[d] != full[d] for d in self._keep):
            raise ValueError(f"Normalization was built for inputs of shape {full} and adapt() "
                             f"got data of shape {tuple(shape)}")

    def get_config(self):
        c = super().get_config()
        c.update(axis=list(self.axis) if len(self.axis) != 1 else self.axis[0],
                 mean=self.input_mean, variance=self.input_variance, invert=self.invert)
        if not self.axis:
            c["axis"] = None
        return c


INTERPOLATIONS = ("bilinear", "nearest")


class Resizing(Layer):
    """Keras' Resizing of NHWC images to (height, width): TensorFlow's resize
    with half-pixel centres, antialias off ("bilinear" or "nearest"), after
    Keras' crop_to_aspect_ratio / pad_to_aspect_ratio (pad filled with
    fill_value).  Its backward is the transposed interpolation."""

    def __init__(self, height, width, interpolation="bilinear", crop_to_aspect_ratio=False,
                 pad_to_aspect_ratio=False, fill_mode="constant", fill_value=0.0,
                 data_format=None, antialias=False, **kw):
        super().__init__(**kw)
        for nm, v in (("height", height), ("width", width)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"Resizing: {nm} must be a positive int, got {v!r}")
        self.height, self.width = int(height), int(width)
        if interpolation not in INTERPOLATIONS:
            if interpolation in ("bicubic", "lanczos3", "lanczos5", "area", "gaussian", "mitchellcubic"):
                raise NotImplementedError(f"Resizing(interpolation={interpolation!r}) is not "
                                          "supported: use 'bilinear' or 'nearest'")
            raise ValueError(f"Resizing: unknown interpolation {interpolation!r}")
        if antialias:
            raise NotImplementedError("Resizing(antialias=True) is not supported: use "
                                      "antialias=False")
        if data_format not in (None, "channels_last"):
            raise NotImplementedError("Resizing supports data_format='channels_last' only")
        if fill_mode != "constant":
            raise ValueError(f"Resizing: fill_mode must be 'constant', got {fill_mode!r}")
        if crop_to_aspect_ratio and pad_to_aspect_ratio:
            raise ValueError("Resizing: crop_to_aspect_ratio and pad_to_aspect_ratio cannot both "
                             "be True")
        self.interpolation = interpolation
        self.crop_to_aspect_ratio = bool(crop_to_aspect_ratio)
        self.pad_to_aspect_ratio = bool(pad_to_aspect_ratio)
        self.fill_mode, self.fill_value = fill_mode, float(fill_value)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError("Resizing takes batches of images (batch, height, width, channels), "
                             f"got inputs of shape {(None,) + tuple(input_shape)}")

    def compute_output_shape(self, input_shape):
        return (self.height, self.width, input_shape[2])

    def _opts(self):
        return dict(interpolation=self.interpolation,
                    crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                    pad_to_aspect_ratio=self.pad_to_aspect_ratio)

    def forward(self, x, training=False):
        self.ctx.xshape = x.shape
        y = self._buf("y", (x.shape[0], self.height, self.width, x.shape[3]))
        return self.ops.resize2d(x, (self.height, self.width), fill_value=self.fill_value, out=y,
                                 **self._opts())

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        dx = self._buf("dx", self.ctx.xshape)
        return self.ops.resize2d_backward(dy, self.ctx.xshape, out=dx, **self._opts())

    def get_config(self):
        c = super().get_config()
        c.update(height=self.height, width=self.width, interpolation=self.interpolation,
                 crop_to_aspect_ratio=self.crop_to_aspect_ratio,
                 pad_to_aspect_ratio=self.pad_to_aspect_ratio, fill_mode=self.fill_mode,
                 fill_value=self.fill_value, data_format="channels_last")
        return c

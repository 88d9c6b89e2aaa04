"""Random image augmentation layers with Keras 3's names, arguments and
defaults: RandomFlip, RandomTranslation, RandomRotation, RandomZoom,
RandomCrop, RandomContrast, RandomBrightness (NHWC, channels_last).

They transform only in training (``fit``) and are the identity at inference
(``predict``/``evaluate``), except RandomCrop, which at inference returns
the largest center window of the target aspect ratio resized to the target
size (as Keras documents).  Called eagerly on arrays, ``training`` defaults
to True as in Keras 3 (``layer(images)`` augments; each call draws anew).

Randomness: every random number of a step comes from the Philox4x32 stream
``(stream_seed, step)`` of the layer (pynn/backend/ops.py ``philox_uniform``),
the stream Dropout uses: the model sets ``stream_seed`` (``seed=`` or one
derived from pynn.utils.set_random_seed and the layer's position) and, before
every training step, ``step`` (optimizer step x MPI size + rank), so results
are reproducible, independent of the thread count, and differ per rank and
per step.  Image i of a batch takes the numbers ``i*k .. i*k + k - 1`` of the
stream (k per layer), so its transform does not depend on the batch size.

The pixels are moved by pynn/backend/image.py (one vectorised gather for the
whole batch, NumPy or CuPy), which ImageDataGenerator shares.

Gradients: these layers belong in front of the first trainable layer (right
after the Input), where no gradient is asked of them.  Asked for an input
gradient in training (placed after a trainable layer), they raise
NotImplementedError.
"""
import math
import zlib

from .. import utils
from ..backend import image as _image
from ..backend.ops import philox_uniform
from .base import Layer


def _channels_last(name, data_format):
    if data_format not in (None, "channels_last"):
        raise NotImplementedError(f"{name}(data_format={data_format!r}): pynn layers are "
                                  "channels_last (NHWC) only")


def _bounds(name, arg, factor, lo, hi):
    """(lower, upper) of a factor given as one number f (-> (-|f|, |f|)) or a
    pair, every number within [lo, hi]."""
    if isinstance(factor, (list, tuple)) and len(factor) == 2:
        vals = [float(f) for f in factor]
    elif isinstance(factor, (int, float)) and not isinstance(factor, bool):
        vals = [-abs(float(factor)), abs(float(factor))]
    else:
        raise ValueError(f"{name}: `{arg}` must be a number or a pair of numbers, got {factor!r}")
    if not all(lo <= v <= hi for v in vals):
        raise ValueError(f"{name}: `{arg}` must lie in [{lo}, {hi}], got {factor!r}")
    return tuple(sorted(vals))


def _plain(factor):
    """A factor as get_config writes it (JSON: a pair becomes a list)."""
    return list(factor) if isinstance(factor, (list, tuple)) else factor


class _RandomImage(Layer):
    """Shared behaviour: the stream, the training switch, the refusal of
    input gradients.  Subclasses set ``n_draws`` (numbers per image) and
    write ``_augment(x, u)`` (u: (N, n_draws) uniforms in [0, 1))."""
    uses_rng = True
    n_draws = 1

    def __init__(self, seed=None, data_format=None, **kw):
        super().__init__(**kw)
        _channels_last(type(self).__name__, data_format)
        self.seed = None if seed is None else int(seed)
        # used alone (eagerly); a model replaces it (see Dropout)
        self.stream_seed = self.seed if self.seed is not None else utils.derive_seed(
            utils.fresh_seed(), zlib.crc32(self.name.encode()))
        self.step = 0
        self._eager_calls = 0

    def __call__(self, inputs, training=None, **kwargs):
        # Keras 3's augmentation layers have call(..., training=True)
        return super().__call__(inputs, training=True if training is None else training, **kwargs)

    def _call_eager(self, x, training):
        if training:
            self.step, self._eager_calls = self._eager_calls, self._eager_calls + 1
        return super()._call_eager(x, training)

    def build(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"{type(self).__name__} expects images of shape (height, width, "
                             f"channels), got {tuple(input_shape)}")

    def _uniforms(self, n):
        return philox_uniform((n, self.n_draws), self.stream_seed, self.step)

    def forward(self, x, training=False):
        self.ctx.active = bool(training)
        if not training:
            return self._inference(x)
        return self._augment(x, self._uniforms(x.shape[0]))

    def _inference(self, x):
        return x

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        raise NotImplementedError(
            f"{type(self).__name__} ({self.name!r}) has no input gradient: put augmentation "
            "layers before the first trainable layer (right after the Input)")

    def get_config(self):
        c = super().get_config()
        c["seed"] = self.seed
        return c


class _AffineImage(_RandomImage):
    """Layers that move pixels with one affine transform per image."""

    def _set_fill(self, fill_mode, interpolation, fill_value):
        _image.check_fill_mode(fill_mode, interpolation)
        self.fill_mode, self.interpolation = fill_mode, interpolation
        self.fill_value = float(fill_value)

    def _apply(self, x, transforms):
        y = self._buf("y", x.shape)
        return self.ops.image_affine(x, transforms, self.interpolation, self.fill_mode,
                                     self.fill_value, out=y)

    def get_config(self):
        c = super().get_config()
        c.update(fill_mode=self.fill_mode, interpolation=self.interpolation,
                 fill_value=self.fill_value)
        return c


class RandomFlip(_RandomImage):
    """Flips each image with probability 1/2 (Keras: uniform <= 0.5).  In
    "horizontal_and_vertical" mode one draw decides both flips, as Keras 3
    does (an image is either kept or flipped both ways)."""
    MODES = ("horizontal", "vertical", "horizontal_and_vertical")

    def __init__(self, mode="horizontal_and_vertical", seed=None, **kw):
        if mode not in self.MODES:
            raise ValueError(f"RandomFlip: unknown mode {mode!r}; expected one of {self.MODES}")
        super().__init__(seed=seed, **kw)
        self.mode = mode

    def _augment(self, x, u):
        flips = u[:, 0] <= 0.5
        h = flips if self.mode in ("horizontal", "horizontal_and_vertical") else None
        v = flips if self.mode in ("vertical", "horizontal_and_vertical") else None
        return self.ops.image_flip(x, h, v, out=self._buf("y", x.shape))

    def get_config(self):
        c = super().get_config()
        c["mode"] = self.mode
        return c


class RandomTranslation(_AffineImage):
    """Shifts each image by (uniform in the factor range) x height rows and
    x width columns; factors are fractions in [-1, 1]."""
    n_draws = 2

    def __init__(self, height_factor, width_factor, fill_mode="reflect", interpolation="bilinear",
                 seed=None, fill_value=0.0, **kw):
        super().__init__(seed=seed, **kw)
        self.height_factor, self.width_factor = _plain(height_factor), _plain(width_factor)
        self._h = _bounds("RandomTranslation", "height_factor", height_factor, -1.0, 1.0)
        self._w = _bounds("RandomTranslation", "width_factor", width_factor, -1.0, 1.0)
        self._set_fill(fill_mode, interpolation, fill_value)

    def _augment(self, x, u):
        h, w = x.shape[1:3]
        dy = (self._h[0] + u[:, 0] * (self._h[1] - self._h[0])) * h
        dx = (self._w[0] + u[:, 1] * (self._w[1] - self._w[0])) * w
        return self._apply(x, _image.translation_transforms(dx, dy))

    def get_config(self):
        c = super().get_config()
        c.update(height_factor=self.height_factor, width_factor=self.width_factor)
        return c


class RandomRotation(_AffineImage):
    """Rotates each image about its center by (uniform in the factor range)
    x 2 pi; factor in [-1, 1], positive counter-clockwise."""

    def __init__(self, factor, fill_mode="reflect", interpolation="bilinear", seed=None,
                 fill_value=0.0, **kw):
        super().__init__(seed=seed, **kw)
        self.factor = _plain(factor)
        self._f = _bounds("RandomRotation", "factor", factor, -1.0, 1.0)
        self._set_fill(fill_mode, interpolation, fill_value)

    def _augment(self, x, u):
        h, w = x.shape[1:3]
        angles = (self._f[0] + u[:, 0] * (self._f[1] - self._f[0])) * 2.0 * math.pi
        return self._apply(x, _image.rotation_transforms(angles, h, w))

    def get_config(self):
        c = super().get_config()
        c["factor"] = self.factor
        return c


class RandomZoom(_AffineImage):
    """Zooms each image about its center: the input coordinates are scaled
    by 1 + (uniform in the factor range), so a positive factor zooms out and
    a negative one zooms in (Keras).  Without width_factor both axes take
    the height zoom (aspect ratio kept)."""
    n_draws = 2

    def __init__(self, height_factor, width_factor=None, fill_mode="reflect",
                 interpolation="bilinear", seed=None, fill_value=0.0, **kw):
        super().__init__(seed=seed, **kw)
        self.height_factor, self.width_factor = _plain(height_factor), _plain(width_factor)
        self._h = _bounds("RandomZoom", "height_factor", height_factor, -1.0, 1.0)
        self._w = None if width_factor is None else _bounds(
            "RandomZoom", "width_factor", width_factor, -1.0, 1.0)
        self._set_fill(fill_mode, interpolation, fill_value)

    def _augment(self, x, u):
        h, w = x.shape[1:3]
        zy = 1.0 + self._h[0] + u[:, 0] * (self._h[1] - self._h[0])
        zx = zy if self._w is None else 1.0 + self._w[0] + u[:, 1] * (self._w[1] - self._w[0])
        return self._apply(x, _image.zoom_transforms(zx, zy, h, w))

    def get_config(self):
        c = super().get_config()
        c.update(height_factor=self.height_factor, width_factor=self.width_factor)
        return c


class RandomCrop(_RandomImage):
    """Crops (height, width) windows.  In training, when the input is larger
    in both dimensions, one random window for the whole batch (as Keras);
    otherwise, and at inference, the largest center window with the target
    aspect ratio, bilinearly resized to (height, width) (Keras'
    documented inference behaviour, ``smart_resize``)."""
    n_draws = 2

    def __init__(self, height, width, seed=None, **kw):
        super().__init__(seed=seed, **kw)
        self.height, self.width = int(height), int(width)
        if self.height < 1 or self.width < 1:
            raise ValueError(f"RandomCrop: height and width must be >= 1, got {height}, {width}")

    def build(self, input_shape):
        super().build(input_shape)
        if input_shape[0] is None or input_shape[1] is None:
            raise ValueError(f"RandomCrop requires a fully defined height and width, got "
                             f"{tuple(input_shape)}")

    def compute_output_shape(self, input_shape):
        return (self.height, self.width) + tuple(input_shape[2:])

    def _out_shape(self, x):
        return (x.shape[0], self.height, self.width, x.shape[3])

    def forward(self, x, training=False):
        h, w = x.shape[1:3]
        self.ctx.active = bool(training)
        if training and h > self.height and w > self.width:
            u = philox_uniform((2,), self.stream_seed, self.step)   # one window per batch
            top = int(u[0] * (h - self.height + 1))
            left = int(u[1] * (w - self.width + 1))
            y = self._buf("y", self._out_shape(x))
            y[...] = x[:, top:top + self.height, left:left + self.width]
            return y
        return self._inference(x)

    def _inference(self, x):
        h, w = x.shape[1:3]
        if (h, w) == (self.height, self.width):
            return x
        ch = max(min(h, int(w * self.height / self.width)), 1)
        cw = max(min(w, int(h * self.width / self.height)), 1)
        top, left = int((h - ch) / 2), int((w - cw) / 2)
        window = x[:, top:top + ch, left:left + cw]
        y = self._buf("y", self._out_shape(x))
        if (ch, cw) == (self.height, self.width):
            y[...] = window
            return y
        t = _image.resize_transform((ch, cw), (self.height, self.width))
        return self.ops.image_affine(window, t, "bilinear", "nearest",
                                     output_size=(self.height, self.width), out=y)

    def get_config(self):
        c = super().get_config()
        c.update(height=self.height, width=self.width)
        return c


def _value_range(name, value_range):
    if not isinstance(value_range, (list, tuple)) or len(value_range) != 2:
        raise ValueError(f"{name}: `value_range` must be a pair of numbers, got {value_range!r}")
    lo, hi = sorted(float(v) for v in value_range)
    return [lo, hi]


class RandomContrast(_RandomImage):
    """(x - mean) * f + mean per image and channel (mean over the pixels),
    f uniform in [1 - lower, 1 + upper] (factor f -> lower = upper = f, or
    (lower, upper)), then clipped to value_range."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kw):
        super().__init__(seed=seed, **kw)
        if isinstance(factor, (list, tuple)) and len(factor) == 2:
            lower, upper = float(factor[0]), float(factor[1])
        elif isinstance(factor, (int, float)) and not isinstance(factor, bool):
            lower = upper = float(factor)
        else:
            raise ValueError(f"RandomContrast: `factor` must be a number or a pair of numbers, "
                             f"got {factor!r}")
        if not (0.0 <= lower <= 1.0 and upper >= 0.0):
            raise ValueError(f"RandomContrast: `factor` needs 0 <= lower <= 1 and upper >= 0, "
                             f"got {factor!r}")
        self.factor = _plain(factor)
        self._f = (1.0 - lower, 1.0 + upper)
        self.value_range = _value_range("RandomContrast", value_range)

    def _augment(self, x, u):
        f = self._f[0] + u[:, 0] * (self._f[1] - self._f[0])
        return self.ops.image_contrast(x, f, self.value_range, out=self._buf("y", x.shape))

    def get_config(self):
        c = super().get_config()
        c.update(factor=self.factor, value_range=self.value_range)
        return c


class RandomBrightness(_RandomImage):
    """x + delta per image, delta = (uniform in the factor range) x
    (value_range[1] - value_range[0]), clipped to value_range; factor f in
    [-1, 1] means [-|f|, |f|], or a pair (lower, upper)."""

    def __init__(self, factor, value_range=(0, 255), seed=None, **kw):
        super().__init__(seed=seed, **kw)
        self.factor = _plain(factor)
        self._f = _bounds("RandomBrightness", "factor", factor, -1.0, 1.0)
        self.value_range = _value_range("RandomBrightness", value_range)

    def _augment(self, x, u):
        span = self.value_range[1] - self.value_range[0]
        d = (self._f[0] + u[:, 0] * (self._f[1] - self._f[0])) * span
        return self.ops.image_brightness(x, d, self.value_range, out=self._buf("y", x.shape))

    def get_config(self):
        c = super().get_config()
        c.update(factor=self.factor, value_range=self.value_range)
        return c

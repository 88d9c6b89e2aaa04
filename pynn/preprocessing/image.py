"""``ImageDataGenerator``: the legacy Keras image augmentation API
(``from keras.preprocessing.image import ImageDataGenerator``), on NumPy
arrays (``flow``), channels_last.

Per batch, as Keras: each image gets a random affine transform (rotation,
shift, shear, zoom, about the image center), a channel shift, flips, then the
normalisation (``preprocessing_function``, ``rescale``, sample-wise then
feature-wise centring / std normalisation).  The whole batch is moved by one
vectorised gather (pynn/backend/image.py, shared with the augmentation
layers) instead of scipy per image and channel.

Randomness: the numbers come from the Philox stream
(pynn/backend/ops.py ``philox_uniform``) of the iterator's seed, one block
per batch drawn, so ``flow(..., seed=s)`` repeats exactly; the shuffling is
``pynn.data.epoch_permutation``.  Without ``seed`` the seed comes from
``pynn.utils.set_random_seed`` (else a fresh one).

Differences from Keras' legacy code (which calls scipy.ndimage):
``width_shift_range`` shifts columns and ``height_shift_range`` rows, as
documented (Keras' implementation swaps them internally); the center is
((W - 1) / 2, (H - 1) / 2) for non-square images too; out-of-image taps of
the bilinear interpolation are filled per tap as Keras 3's layers do (scipy
differs within one pixel of the border in "constant" mode, and its "wrap"
has period n - 1).  Not supported (NotImplementedError): zca_whitening,
brightness_range (use layers.RandomBrightness), save_to_dir,
flow_from_directory / flow_from_dataframe (use
image_dataset_from_directory), channels_first.
"""
import warnings

import numpy as np

from .. import utils
from ..backend import image as _image
from ..backend.ops import philox_uniform
from ..data import epoch_permutation
from ..data_adapters import PyDataset

__all__ = ["ImageDataGenerator", "NumpyArrayIterator", "Iterator"]

# the numbers each image draws, in this order
_DRAWS = ("theta", "h_shift", "h_sign", "w_shift", "w_sign", "shear", "zx", "zy",
          "flip_h", "flip_v", "channel")


def _shift_range(name, r):
    """A shift range as (kind, values): kind 'float' (uniform(-r, r)),
    'choice' (an entry of the list/int range times a random sign)."""
    if isinstance(r, bool):
        raise ValueError(f"ImageDataGenerator: {name} must be a number or a list, got {r!r}")
    if isinstance(r, (int, np.integer)):
        return "choice", np.arange(int(r), dtype=np.float64)   # np.random.choice(int)
    if isinstance(r, (float, np.floating)):
        return "float", float(r)
    try:
        vals = np.asarray(r, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(f"ImageDataGenerator: {name} must be a number or a list, got {r!r}")
    if vals.size == 0:
        raise ValueError(f"ImageDataGenerator: {name} must not be empty")
    return "choice", vals


class ImageDataGenerator:
    """Keras' legacy ImageDataGenerator (see the module docstring)."""

    def __init__(self, featurewise_center=False, samplewise_center=False,
                 featurewise_std_normalization=False, samplewise_std_normalization=False,
                 zca_whitening=False, zca_epsilon=1e-6, rotation_range=0, width_shift_range=0.0,
                 height_shift_range=0.0, brightness_range=None, shear_range=0.0, zoom_range=0.0,
                 channel_shift_range=0.0, fill_mode="nearest", cval=0.0, horizontal_flip=False,
                 vertical_flip=False, rescale=None, preprocessing_function=None,
                 data_format=None, validation_split=0.0, interpolation_order=1, dtype=None):
        if zca_whitening:
            raise NotImplementedError("ImageDataGenerator(zca_whitening=True) is not supported: "
                                      "whiten the data beforehand")
        if brightness_range is not None:
            raise NotImplementedError("ImageDataGenerator(brightness_range=...) is not supported: "
                                      "use the layer pynn.layers.RandomBrightness")
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"ImageDataGenerator(data_format={data_format!r}): only "
                                      "channels_last is supported")
        if interpolation_order not in (0, 1):
            raise NotImplementedError(f"ImageDataGenerator(interpolation_order="
                                      f"{interpolation_order}): only 0 (nearest) and 1 "
                                      "(bilinear) are supported")
        _image.check_fill_mode(fill_mode)
        self.featurewise_center = bool(featurewise_center)
        self.samplewise_center = bool(samplewise_center)
        self.featurewise_std_normalization = bool(featurewise_std_normalization)
        self.samplewise_std_normalization = bool(samplewise_std_normalization)
        self.zca_whitening, self.zca_epsilon = False, zca_epsilon
        self.rotation_range = float(rotation_range)
        self.width_shift_range, self.height_shift_range = width_shift_range, height_shift_range
        self._w_shift = _shift_range("width_shift_range", width_shift_range)
        self._h_shift = _shift_range("height_shift_range", height_shift_range)
        self.brightness_range = None
        self.shear_range = float(shear_range)
        self.channel_shift_range = float(channel_shift_range)
        self.fill_mode, self.cval = fill_mode, float(cval)
        self.horizontal_flip, self.vertical_flip = bool(horizontal_flip), bool(vertical_flip)
        self.rescale = rescale
        self.preprocessing_function = preprocessing_function
        self.data_format = "channels_last"
        self.channel_axis, self.row_axis, self.col_axis = 3, 1, 2
        if not 0.0 <= float(validation_split) < 1.0:
            raise ValueError(f"validation_split must be in [0, 1), got {validation_split}")
        self._validation_split = float(validation_split)
        self.interpolation_order = int(interpolation_order)
        self.dtype = np.dtype("float32" if dtype is None else dtype)
        self.mean = self.std = self.principal_components = None
        if isinstance(zoom_range, (int, float, np.integer, np.floating)) and \
                not isinstance(zoom_range, bool):
            self.zoom_range = [1.0 - float(zoom_range), 1.0 + float(zoom_range)]
        elif isinstance(zoom_range, (list, tuple)) and len(zoom_range) == 2:
            self.zoom_range = [float(zoom_range[0]), float(zoom_range[1])]
        else:
            raise ValueError("`zoom_range` should be a float or a tuple or list of two floats. "
                             f"Received: {zoom_range!r}")
        if featurewise_std_normalization and not featurewise_center:
            self.featurewise_center = True
            warnings.warn("This ImageDataGenerator specifies `featurewise_std_normalization`, "
                          "which overrides setting of `featurewise_center`.")
        if samplewise_std_normalization and not samplewise_center:
            self.samplewise_center = True
            warnings.warn("This ImageDataGenerator specifies `samplewise_std_normalization`, "
                          "which overrides setting of `samplewise_center`.")
        self._seed = None
        self._calls = 0      # draws of get_random_transform without a seed

    # ------------------------------------------------------------ statistics --
    def fit(self, x, augment=False, rounds=1, seed=None):
        """The feature-wise mean / std (per channel) of the sample data x
        (rank 4), as Keras (no rescale applied here, as Keras' fit)."""
        x = np.array(x, dtype=self.dtype, copy=True)
        if x.ndim != 4:
            raise ValueError(f"Input to `.fit()` should have rank 4. Got array with shape: {x.shape}")
        if augment:
            rounds = int(rounds)
            if rounds < 1:
                raise ValueError(f"rounds must be >= 1, got {rounds}")
            s = self._seed_or_fresh(seed)
            x = np.concatenate([self._transform_batch(x, self._draw(len(x), s, r))
                                for r in range(rounds)])
        if self.featurewise_center:
            self.mean = x.mean(axis=(0, 1, 2)).reshape(1, 1, -1)
            x -= self.mean
        if self.featurewise_std_normalization:
            self.std = x.std(axis=(0, 1, 2)).reshape(1, 1, -1)
            x /= self.std + 1e-6
        return None

    def standardize(self, x):
        """The normalisation of an image (H, W, C) or a batch (N, H, W, C),
        in place on float arrays as Keras."""
        x = np.asarray(x)
        single = x.ndim == 3
        b = x[None] if single else x
        if self.preprocessing_function is not None:
            b = np.stack([np.asarray(self.preprocessing_function(im), dtype=b.dtype) for im in b])
        if self.rescale:
            b *= b.dtype.type(self.rescale)
        axes = tuple(range(1, b.ndim))
        if self.samplewise_center:
            b -= b.mean(axis=axes, keepdims=True)
        if self.samplewise_std_normalization:
            b /= b.std(axis=axes, keepdims=True) + 1e-6
        if self.featurewise_center:
            if self.mean is not None:
                b -= self.mean
            else:
                warnings.warn("This ImageDataGenerator specifies `featurewise_center`, but it "
                              "hasn't been fit on any training data. Fit it first by calling "
                              "`.fit(numpy_data)`.")
        if self.featurewise_std_normalization:
            if self.std is not None:
                b /= self.std + 1e-6
            else:
                warnings.warn("This ImageDataGenerator specifies `featurewise_std_normalization`,"
                              " but it hasn't been fit on any training data. Fit it first by "
                              "calling `.fit(numpy_data)`.")
        return b[0] if single else b

    # ------------------------------------------------------------ random transforms --
    def _seed_or_fresh(self, seed):
        if seed is not None:
            return int(seed)
        if self._seed is None:
            self._seed = utils.fresh_seed()
        return self._seed

    def _draw(self, n, seed, offset):
        """The random parameters of n images (dict of (n,) arrays) from the
        stream (seed, offset)."""
        u = philox_uniform((n, len(_DRAWS)), utils.derive_seed(seed, 0xA11A), offset)
        u = dict(zip(_DRAWS, u.T))
        p = {"theta": (2 * u["theta"] - 1) * self.rotation_range,
             "shear": (2 * u["shear"] - 1) * self.shear_range}
        for key, (kind, r), frac, sign in (("tx", self._h_shift, "h_shift", "h_sign"),
                                          ("ty", self._w_shift, "w_shift", "w_sign")):
            if kind == "float":
                p[key] = (2 * u[frac] - 1) * r
                big = abs(r)
            else:
                idx = np.minimum((u[frac] * len(r)).astype(np.int64), len(r) - 1)
                p[key] = r[idx] * np.where(u[sign] < 0.5, -1.0, 1.0)
                big = np.max(r)
            p[key + "_fraction"] = bool(big < 1)
        lo, hi = self.zoom_range
        if lo == 1 and hi == 1:
            p["zx"] = p["zy"] = np.ones(n)
        else:
            p["zx"], p["zy"] = lo + u["zx"] * (hi - lo), lo + u["zy"] * (hi - lo)
        p["flip_horizontal"] = (u["flip_h"] < 0.5) & self.horizontal_flip
        p["flip_vertical"] = (u["flip_v"] < 0.5) & self.vertical_flip
        p["channel_shift_intensity"] = (2 * u["channel"] - 1) * self.channel_shift_range
        return p

    def _matrices(self, p, h, w):
        """The 8-number transforms (N, 8) of the parameters p for H x W images
        in (column, row) coordinates: center . rotation . shift . shear .
        zoom . center^-1 (Keras' order)."""
        n = len(p["theta"])
        th, sh = np.deg2rad(p["theta"]), np.deg2rad(p["shear"])
        rows = p["tx"] * (h if p["tx_fraction"] else 1)
        cols = p["ty"] * (w if p["ty_fraction"] else 1)

        def mats(a, b, c, d, e, f):
            m = np.zeros((n, 3, 3))
            m[:, 0, 0], m[:, 0, 1], m[:, 0, 2] = a, b, c
            m[:, 1, 0], m[:, 1, 1], m[:, 1, 2] = d, e, f
            m[:, 2, 2] = 1.0
            return m
        one, zero = np.ones(n), np.zeros(n)
        cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
        m = (mats(one, zero, cx + zero, zero, one, cy + zero)
             @ mats(np.cos(th), -np.sin(th), zero, np.sin(th), np.cos(th), zero)
             @ mats(one, zero, cols, zero, one, rows)
             @ mats(one, -np.sin(sh), zero, zero, np.cos(sh), zero)
             @ mats(p["zx"], zero, zero, zero, p["zy"], zero)
             @ mats(one, zero, -cx + zero, zero, one, -cy + zero))
        return np.concatenate([m[:, 0, :], m[:, 1, :], np.zeros((n, 2))], axis=1)

    def _transform_batch(self, x, p):
        """Apply the parameters p to the float batch x (N, H, W, C)."""
        h, w = x.shape[1:3]
        t = self._matrices(p, h, w)
        if not np.allclose(t, [1, 0, 0, 0, 1, 0, 0, 0], rtol=0, atol=1e-12):
            x = _image.affine_transform(np, x, t, "nearest" if self.interpolation_order == 0
                                        else "bilinear", self.fill_mode, self.cval)
        shift = p["channel_shift_intensity"]
        if np.any(shift != 0):
            lo = x.min(axis=(1, 2, 3), keepdims=True)
            hi = x.max(axis=(1, 2, 3), keepdims=True)
            x = np.clip(x + shift.reshape(-1, 1, 1, 1).astype(x.dtype), lo, hi)
        if np.any(p["flip_horizontal"]) or np.any(p["flip_vertical"]):
            x = _image.flip(np, x, p["flip_horizontal"], p["flip_vertical"])
        return x

    def get_random_transform(self, img_shape, seed=None):
        """Random parameters of one image (Keras' keys; 'tx' is the vertical
        shift and 'ty' the horizontal one, in pixels)."""
        if seed is None:
            s, off = self._seed_or_fresh(None), self._calls
            self._calls += 1
        else:
            s, off = int(seed), 0
        p = self._draw(1, s, off)
        h, w = img_shape[0], img_shape[1]
        return {"theta": float(p["theta"][0]),
                "tx": float(p["tx"][0] * (h if p["tx_fraction"] else 1)),
                "ty": float(p["ty"][0] * (w if p["ty_fraction"] else 1)),
                "shear": float(p["shear"][0]), "zx": float(p["zx"][0]), "zy": float(p["zy"][0]),
                "flip_horizontal": bool(p["flip_horizontal"][0]),
                "flip_vertical": bool(p["flip_vertical"][0]),
                "channel_shift_intensity": float(p["channel_shift_intensity"][0])
                if self.channel_shift_range else None,
                "brightness": None}

    def apply_transform(self, x, transform_parameters):
        """Apply the parameters (a dict as get_random_transform's) to one
        image (H, W, C)."""
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 3:
            raise ValueError(f"apply_transform expects one image (H, W, C), got shape {x.shape}")
        g = transform_parameters.get
        p = {"theta": np.array([g("theta", 0.0)]), "shear": np.array([g("shear", 0.0)]),
             "tx": np.array([g("tx", 0.0)]), "ty": np.array([g("ty", 0.0)]),
             "tx_fraction": False, "ty_fraction": False,
             "zx": np.array([g("zx", 1.0)]), "zy": np.array([g("zy", 1.0)]),
             "flip_horizontal": np.array([bool(g("flip_horizontal", False))]),
             "flip_vertical": np.array([bool(g("flip_vertical", False))]),
             "channel_shift_intensity": np.array([g("channel_shift_intensity") or 0.0])}
        return self._transform_batch(x[None], p)[0]

    def random_transform(self, x, seed=None):
        return self.apply_transform(x, self.get_random_transform(np.shape(x), seed))

    # ------------------------------------------------------------ iterators --
    def flow(self, x, y=None, batch_size=32, shuffle=True, sample_weight=None, seed=None,
             save_to_dir=None, save_prefix="", save_format="png", ignore_class_split=False,
             subset=None):
        if save_to_dir is not None:
            raise NotImplementedError("ImageDataGenerator.flow(save_to_dir=...) is not supported")
        return NumpyArrayIterator(x, y, self, batch_size=batch_size, shuffle=shuffle,
                                  sample_weight=sample_weight, seed=seed, subset=subset,
                                  dtype=self.dtype)

    def flow_from_directory(self, *args, **kwargs):
        raise NotImplementedError("ImageDataGenerator.flow_from_directory is not supported: load "
                                  "the images with image_dataset_from_directory or into arrays "
                                  "and use flow(x, y)")

    def flow_from_dataframe(self, *args, **kwargs):
        raise NotImplementedError("ImageDataGenerator.flow_from_dataframe is not supported: load "
                                  "the images into arrays and use flow(x, y)")


class Iterator(PyDataset):
    """Keras' legacy image iterator (a PyDataset, as in Keras 3): ``len`` batches per epoch,
    ``it[i]`` the i-th batch of the current epoch order (``on_epoch_end``
    reshuffles), and ``next(it)`` batches forever (reshuffled each epoch; the
    last batch of an epoch holds the rest)."""

    def __init__(self, n, batch_size, shuffle, seed):
        self.n = int(n)
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.shuffle = bool(shuffle)
        self.seed = seed
        self._stream = int(seed) if seed is not None else utils.fresh_seed()
        self.batch_index = 0
        self.total_batches_seen = 0
        self.epoch = 0
        self.index_array = None

    def _set_index_array(self):
        self.index_array = epoch_permutation(self.n, utils.derive_seed(self._stream, 0x5EED),
                                             self.epoch, self.shuffle)

    def __len__(self):
        return (self.n + self.batch_size - 1) // self.batch_size

    def __getitem__(self, idx):
        if not 0 <= idx < len(self):
            raise IndexError(f"Asked to retrieve element {idx}, but the Sequence has length "
                             f"{len(self)}")
        if self.index_array is None:
            self._set_index_array()
        return self._batch(self.index_array[self.batch_size * idx:self.batch_size * (idx + 1)])

    def on_epoch_end(self):
        self.epoch += 1
        self._set_index_array()

    def reset(self):
        self.batch_index = 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.batch_index == 0:
            self._set_index_array()
        start = self.batch_index * self.batch_size
        idx = self.index_array[start:start + self.batch_size]
        if self.n > start + self.batch_size:
            self.batch_index += 1
        else:
            self.batch_index = 0
            self.epoch += 1
        return self._batch(idx)

    def next(self):
        return self.__next__()

    def _batch(self, index_array):
        offset = self.total_batches_seen
        self.total_batches_seen += 1
        return self._get_batches_of_transformed_samples(index_array, offset)


class NumpyArrayIterator(Iterator):
    """Batches of ``ImageDataGenerator.flow(x, y)``: (x, y), (x, y,
    sample_weight), or x alone when y is None."""

    def __init__(self, x, y, image_data_generator, batch_size=32, shuffle=False,
                 sample_weight=None, seed=None, subset=None, dtype="float32", **kwargs):
        if kwargs:
            raise TypeError(f"NumpyArrayIterator: unexpected keyword argument(s) {sorted(kwargs)}")
        self.dtype = np.dtype(dtype)
        x = np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"Input data in `NumpyArrayIterator` should have rank 4. You passed "
                             f"an array with shape {x.shape}")
        if y is not None and len(x) != len(y):
            raise ValueError("`x` (images tensor) and `y` (labels) should have the same length. "
                             f"Found: x.shape = {x.shape}, y.shape = {np.asarray(y).shape}")
        if sample_weight is not None and len(x) != len(sample_weight):
            raise ValueError("`x` (images tensor) and `sample_weight` should have the same "
                             f"length. Found: x.shape = {x.shape}, sample_weight.shape = "
                             f"{np.asarray(sample_weight).shape}")
        y = None if y is None else np.asarray(y)
        w = None if sample_weight is None else np.asarray(sample_weight)
        if subset is not None:
            if subset not in ("training", "validation"):
                raise ValueError(f"Invalid subset name: {subset}; expected \"training\" or "
                                 "\"validation\".")
            split = int(len(x) * image_data_generator._validation_split)
            sl = slice(None, split) if subset == "validation" else slice(split, None)
            x = x[sl]
            y = None if y is None else y[sl]
            w = None if w is None else w[sl]
        if len(x) == 0:
            raise ValueError("NumpyArrayIterator: no samples (empty x or subset)")
        self.x, self.y, self.sample_weight = x, y, w
        self.image_data_generator = image_data_generator
        super().__init__(len(x), batch_size, shuffle, seed)

    def _get_batches_of_transformed_samples(self, index_array, offset=0):
        g = self.image_data_generator
        bx = self.x[index_array].astype(self.dtype)
        bx = g._transform_batch(bx, g._draw(len(index_array), self._stream, offset))
        bx = g.standardize(np.ascontiguousarray(bx, dtype=self.dtype))
        if self.y is None:
            return bx
        out = (bx, self.y[index_array])
        return out if self.sample_weight is None else out + (self.sample_weight[index_array],)

"""Random regularisation layers: SpatialDropout1D/2D/3D, GaussianNoise,
GaussianDropout.  Active only in training (identity at inference), as Keras.

Their randomness is the counter-based Philox stream of Dropout
(pynn/backend/ops.py: dropout_keep_mask, philox_normal): a function of
(stream_seed, step) only, so it does not depend on the thread count, is
regenerated in backward rather than stored, and -- the model sets ``step``
to iterations * ranks + rank before each training step (``uses_rng``) --
differs between steps and between MPI ranks.  Without seed=, the stream
seed comes from pynn.utils.set_random_seed and the layer's position in the
model."""
from .base import Layer


class _Random(Layer):
    uses_rng = True

    def _init_rng(self, seed):
        self.seed = None if seed is None else int(seed)
        self.stream_seed = 0 if seed is None else self.seed
        self.step = 0

    def _active(self):
        """Whether this call adds noise (recorded for backward)."""
        raise NotImplementedError

    def _noise(self, x, out):
        """out = x with this step's noise; also its own backward where linear."""
        raise NotImplementedError

    def forward(self, x, training=False):
        self.ctx.active = bool(training) and self._active()
        if not self.ctx.active:
            return x
        return self._noise(x, self._buf("y", x.shape))

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        if not self.ctx.active:
            return dy
        return self._noise(dy, self._buf("dx", dy.shape))

    def get_config(self):
        c = super().get_config()
        c["seed"] = self.seed
        return c


def _check_rate(cls, rate):
    r = float(rate)
    if not 0.0 <= r < 1.0:
        raise ValueError(f"{cls}: rate must be in [0, 1), got {rate}")
    return r


class _SpatialDropout(_Random):
    """Drops whole channels (the last axis) of each sample with probability
    ``rate`` and scales the kept ones by 1 / (1 - rate): the (batch,
    channels) mask is Dropout's stream of that shape."""
    ndim = None

    def __init__(self, rate, data_format=None, seed=None, **kw):
        super().__init__(**kw)
        if data_format not in (None, "channels_last"):
            raise NotImplementedError(f"{type(self).__name__} supports data_format="
                                      "'channels_last' only")
        self.rate = _check_rate(type(self).__name__, rate)
        self._init_rng(seed)

    def build(self, input_shape):
        if len(input_shape) + 1 != self.ndim:
            raise ValueError(f"{type(self).__name__} takes inputs of rank {self.ndim}, got "
                             f"shape {(None,) + tuple(input_shape)}")

    def _active(self):
        return self.rate > 0

    def _noise(self, x, out):
        mask = self._buf("mask", (x.shape[0], x.shape[-1]))
        return self.ops.spatial_dropout(x, self.rate, self.stream_seed, self.step, out=out,
                                        mask=mask)

    def get_config(self):
        c = super().get_config()
        c.update(rate=self.rate, data_format="channels_last")
        return c


class SpatialDropout1D(_SpatialDropout):
    ndim = 3


class SpatialDropout2D(_SpatialDropout):
    ndim = 4


class SpatialDropout3D(_SpatialDropout):
    ndim = 5


class GaussianNoise(_Random):
    """Adds zero-mean Gaussian noise of standard deviation ``stddev`` (Keras
    3 accepts 0 <= stddev <= 1); its backward is the identity."""

    def __init__(self, stddev, seed=None, **kw):
        super().__init__(**kw)
        self.stddev = float(stddev)
        if not 0.0 <= self.stddev <= 1.0:
            raise ValueError(f"GaussianNoise: stddev must be in [0, 1] (as Keras 3), got {stddev}")
        self._init_rng(seed)

    def _active(self):
        return self.stddev > 0

    def _noise(self, x, out):
        return self.ops.gaussian_noise(x, self.stddev, self.stream_seed, self.step, out=out)

    def backward(self, dy, need_dx=True):
        return dy if need_dx else None

    def get_config(self):
        c = super().get_config()
        c["stddev"] = self.stddev
        return c


class GaussianDropout(_Random):
    """Multiplies by 1-centred Gaussian noise of standard deviation
    sqrt(rate / (1 - rate)); the backward multiplies by the same noise."""

    def __init__(self, rate, seed=None, **kw):
        super().__init__(**kw)
        self.rate = _check_rate("GaussianDropout", rate)
        self._init_rng(seed)

    def _active(self):
        return self.rate > 0

    def _noise(self, x, out):
        return self.ops.gaussian_dropout(x, self.rate, self.stream_seed, self.step, out=out)

    def get_config(self):
        c = super().get_config()
        c["rate"] = self.rate
        return c

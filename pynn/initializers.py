"""Weight initialisers with Keras names, formulas and defaults.

An initialiser is called as ``init(shape, rng, dtype)`` with a
``numpy.random.Generator``; the model draws every weight from its own
generator derived from the global seed, so initial weights are reproducible.
"""
import math

import numpy as np


def _fans(shape):
    if len(shape) < 1:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    receptive = int(np.prod(shape[:-2]))
    return shape[-2] * receptive, shape[-1] * receptive


class Initializer:
    def __call__(self, shape, rng, dtype=np.float32):
        raise NotImplementedError

    def get_config(self):
        return {}


class Zeros(Initializer):
    def __call__(self, shape, rng, dtype=np.float32):
        return np.zeros(shape, dtype)


class Ones(Initializer):
    def __call__(self, shape, rng, dtype=np.float32):
        return np.ones(shape, dtype)


class Constant(Initializer):
    def __init__(self, value=0.0):
        self.value = float(value)

    def __call__(self, shape, rng, dtype=np.float32):
        return np.full(shape, self.value, dtype)

    def get_config(self):
        return {"value": self.value}


class RandomUniform(Initializer):
    def __init__(self, minval=-0.05, maxval=0.05, seed=None):
        self.minval, self.maxval = float(minval), float(maxval)

    def __call__(self, shape, rng, dtype=np.float32):
        return rng.uniform(self.minval, self.maxval, shape).astype(dtype)

    def get_config(self):
        return {"minval": self.minval, "maxval": self.maxval}


class RandomNormal(Initializer):
    def __init__(self, mean=0.0, stddev=0.05, seed=None):
        self.mean, self.stddev = float(mean), float(stddev)

    def __call__(self, shape, rng, dtype=np.float32):
        return rng.normal(self.mean, self.stddev, shape).astype(dtype)

    def get_config(self):
        return {"mean": self.mean, "stddev": self.stddev}


def _truncated_normal(rng, stddev, shape):
    """Normal(0, stddev) redrawn outside two standard deviations (as TF does)."""
    out = rng.normal(0.0, 1.0, shape)
    bad = np.abs(out) > 2
    while bad.any():
        out[bad] = rng.normal(0.0, 1.0, int(bad.sum()))
        bad = np.abs(out) > 2
    return out * stddev


class VarianceScaling(Initializer):
    """Keras' VarianceScaling: scale / fan (fan_in, fan_out or their mean),
    uniform (limit sqrt(3 * scale / fan)) or truncated normal (stddev
    sqrt(scale / fan) / 0.8796...)."""

    def __init__(self, scale=1.0, mode="fan_in", distribution="truncated_normal", seed=None):
        if mode not in ("fan_in", "fan_out", "fan_avg"):
            raise ValueError(f"mode must be fan_in, fan_out or fan_avg, got {mode!r}")
        if distribution not in ("truncated_normal", "untruncated_normal", "uniform"):
            raise ValueError(f"unknown distribution {distribution!r}")
        self.scale, self.mode, self.distribution = float(scale), mode, distribution

    def __call__(self, shape, rng, dtype=np.float32):
        fan_in, fan_out = _fans(tuple(shape))
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[self.mode]
        s = self.scale / max(1.0, fan)
        if self.distribution == "uniform":
            lim = math.sqrt(3.0 * s)
            return rng.uniform(-lim, lim, shape).astype(dtype)
        if self.distribution == "untruncated_normal":
            return rng.normal(0.0, math.sqrt(s), shape).astype(dtype)
        return _truncated_normal(rng, math.sqrt(s) / 0.87962566103423978, shape).astype(dtype)

    def get_config(self):
        return {"scale": self.scale, "mode": self.mode, "distribution": self.distribution}


def GlorotUniform(seed=None):
    return VarianceScaling(1.0, "fan_avg", "uniform")


def GlorotNormal(seed=None):
    return VarianceScaling(1.0, "fan_avg", "truncated_normal")


def HeUniform(seed=None):
    return VarianceScaling(2.0, "fan_in", "uniform")


def HeNormal(seed=None):
    return VarianceScaling(2.0, "fan_in", "truncated_normal")


def LecunUniform(seed=None):
    return VarianceScaling(1.0, "fan_in", "uniform")


def LecunNormal(seed=None):
    return VarianceScaling(1.0, "fan_in", "truncated_normal")


_BY_NAME = {
    "zeros": Zeros, "ones": Ones, "constant": Constant,
    "random_uniform": RandomUniform, "random_normal": RandomNormal,
    "glorot_uniform": GlorotUniform, "glorot_normal": GlorotNormal,
    "he_uniform": HeUniform, "he_normal": HeNormal,
    "lecun_uniform": LecunUniform, "lecun_normal": LecunNormal,
}


def get(identifier):
    """An Initializer from a Keras name ("glorot_uniform", "zeros", ...), a
    config dict {"class_name": ..., "config": ...} or an instance."""
    if isinstance(identifier, Initializer):
        return identifier
    if isinstance(identifier, dict):
        cls = identifier.get("class_name")
        if cls == "VarianceScaling":
            return VarianceScaling(**identifier.get("config", {}))
        for k, v in _BY_NAME.items():
            if isinstance(v, type) and v.__name__ == cls:
                return v(**identifier.get("config", {}))
        raise ValueError(f"unknown initializer config {identifier!r}")
    if isinstance(identifier, str):
        key = identifier.lower()
        if key not in _BY_NAME:
            raise ValueError(f"unknown initializer {identifier!r}; known: {sorted(_BY_NAME)}")
        return _BY_NAME[key]()
    raise TypeError(f"cannot interpret {identifier!r} as an initializer")


def serialize(init):
    return {"class_name": type(init).__name__, "config": init.get_config()}

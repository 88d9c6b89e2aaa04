"""Losses with Keras names and semantics.

The functions (``sparse_categorical_crossentropy(y_true, y_pred,
from_logits=False)`` ...) return per-sample losses like Keras's.  The
classes also know how to compute, in one pass through ``ops``, the loss
summed over the batch, the number of correct predictions (for the accuracy
metric) and the gradient with respect to the model output.  When a model ends
in a softmax and the loss is a cross-entropy, the model feeds the logits to
the fused, numerically stable softmax cross-entropy kernel instead.
"""
import numpy as np

EPSILON = 1e-7


def _labels(y_true, n, what="labels"):
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},), got {np.shape(y_true)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{what} must be integer class ids")
        y = y.astype(np.int64)
    return y


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, axis=-1):
    p = np.asarray(y_pred, dtype=np.float64)
    y = _labels(y_true, p.shape[0])
    if from_logits:
        z = p - p.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    else:
        logp = np.log(np.clip(p / p.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON))
    return -logp[np.arange(p.shape[0]), y]


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    p = np.asarray(y_pred, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    if from_logits:
        z = p - p.max(axis=-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
    else:
        logp = np.log(np.clip(p / p.sum(axis=-1, keepdims=True), EPSILON, 1 - EPSILON))
    return -(t * logp).sum(axis=-1)


def binary_crossentropy(y_true, y_pred, from_logits=False, axis=-1):
    p = np.asarray(y_pred, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    if from_logits:
        # log(1 + exp(-|z|)) + max(z, 0) - z t
        per = np.maximum(p, 0) - p * t + np.log1p(np.exp(-np.abs(p)))
    else:
        pc = np.clip(p, EPSILON, 1 - EPSILON)
        per = -(t * np.log(pc) + (1 - t) * np.log(1 - pc))
    return per.mean(axis=-1)


def mean_squared_error(y_true, y_pred):
    p = np.asarray(y_pred, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64).reshape(p.shape)
    return ((p - t) ** 2).mean(axis=-1)


mse = MSE = mean_squared_error


class Loss:
    name = "loss"
    fuses_softmax = False   # cross-entropies: a final softmax can be fused
    accuracy_kind = None    # which accuracy the "accuracy" metric means

    def __init__(self, reduction="sum_over_batch_size", name=None):
        if reduction not in ("sum_over_batch_size", "auto", None):
            raise NotImplementedError(f"reduction={reduction!r} is not supported")
        if name:
            self.name = name

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise NotImplementedError("sample_weight is not supported")
        return float(np.mean(self.fn(y_true, y_pred)))

    def check_targets(self, y, n_out, dtype=np.float32):
        """Validate the whole target array once, before training."""
        return y

    def get_config(self):
        return {"name": self.name}


class _CrossEntropy(Loss):
    fuses_softmax = True

    def __init__(self, from_logits=False, name=None, **kw):
        super().__init__(name=name, **kw)
        self.from_logits = bool(from_logits)

    def compute(self, ops, out, y, dout, grad_scale, logits):
        """(loss sum, n correct); dout = d loss / d out * grad_scale.
        logits: out holds logits (fused final softmax, or from_logits)."""
        return ops.softmax_xent(out, y, dlogits=dout, from_logits=logits or self.from_logits,
                                grad_scale=grad_scale)

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(_CrossEntropy):
    name = "sparse_categorical_crossentropy"
    accuracy_kind = "sparse_categorical"

    def fn(self, y_true, y_pred):
        return sparse_categorical_crossentropy(y_true, y_pred, self.from_logits)

    def check_targets(self, y, n_out, dtype=np.float32):
        y = _labels(y, len(y), "labels")
        if y.size and (y.min() < 0 or y.max() >= n_out):
            raise ValueError(f"labels must lie in [0, {n_out}) for a model with {n_out} outputs; "
                             f"got values in [{y.min()}, {y.max()}]")
        return np.ascontiguousarray(y, dtype=np.int32)


class CategoricalCrossentropy(_CrossEntropy):
    name = "categorical_crossentropy"
    accuracy_kind = "categorical"

    def fn(self, y_true, y_pred):
        return categorical_crossentropy(y_true, y_pred, self.from_logits)

    def check_targets(self, y, n_out, dtype=np.float32):
        y = np.asarray(y)
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"categorical targets must have shape (N, {n_out}), got {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("targets contain NaN or inf")
        return np.ascontiguousarray(y, dtype=dtype)


class _Elementwise(Loss):
    """Losses averaged over the last axis then the batch: BCE, MSE."""

    def check_targets(self, y, n_out, dtype=np.float32):
        y = np.asarray(y, dtype=dtype)
        if y.ndim == 1 and n_out == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"targets must have shape (N, {n_out}), got {y.shape}")
        if not np.all(np.isfinite(y)):
            raise ValueError("targets contain NaN or inf")
        return np.ascontiguousarray(y)

    def compute(self, ops, out, y, dout, grad_scale, logits):
        xp = ops.xp
        k = out.shape[1]
        per, grad = self._per_and_grad(xp, out, y.reshape(out.shape), logits)
        if dout is not None:
            dout[...] = grad * (grad_scale / k)
        pred = (out > (0.0 if logits else 0.5))
        correct = int(xp.count_nonzero(pred == (y.reshape(out.shape) > 0.5))) / k
        return float(per.sum()) / k, correct


class BinaryCrossentropy(_Elementwise):
    name = "binary_crossentropy"
    accuracy_kind = "binary"
    fuses_sigmoid = True

    def __init__(self, from_logits=False, name=None, **kw):
        super().__init__(name=name, **kw)
        self.from_logits = bool(from_logits)

    def fn(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred, self.from_logits)

    def _per_and_grad(self, xp, out, t, logits):
        if logits or self.from_logits:
            per = xp.maximum(out, 0) - out * t + xp.log1p(xp.exp(-xp.abs(out)))
            e = xp.exp(-xp.abs(out))
            sig = xp.where(out >= 0, 1 / (1 + e), e / (1 + e))
            return per, sig - t
        pc = xp.clip(out, EPSILON, 1 - EPSILON)
        per = -(t * xp.log(pc) + (1 - t) * xp.log(1 - pc))
        inside = (out >= EPSILON) & (out <= 1 - EPSILON)
        return per, (pc - t) / (pc * (1 - pc)) * inside

    def get_config(self):
        return {"name": self.name, "from_logits": self.from_logits}


class MeanSquaredError(_Elementwise):
    name = "mean_squared_error"
    accuracy_kind = "binary"

    def fn(self, y_true, y_pred):
        return mean_squared_error(y_true, y_pred)

    def _per_and_grad(self, xp, out, t, logits):
        d = out - t
        return d * d, 2 * d


_BY_NAME = {
    "sparse_categorical_crossentropy": SparseCategoricalCrossentropy,
    "categorical_crossentropy": CategoricalCrossentropy,
    "binary_crossentropy": BinaryCrossentropy,
    "mean_squared_error": MeanSquaredError, "mse": MeanSquaredError,
}
_FN_TO_CLASS = {
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    categorical_crossentropy: CategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    mean_squared_error: MeanSquaredError,
}


def get(identifier):
    """A Loss instance from a Keras name, a loss function of this module, a
    config dict or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if callable(identifier) and identifier in _FN_TO_CLASS:
        return _FN_TO_CLASS[identifier]()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(identifier.get("class_name", ""))
        if cls is None:
            for c in _BY_NAME.values():
                if c.__name__ == identifier.get("class_name"):
                    cls = c
        if cls is None:
            raise ValueError(f"unknown loss config {identifier!r}")
        cfg = dict(identifier.get("config", {}))
        cfg.pop("name", None)
        return cls(**cfg)
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(f"unknown loss {identifier!r}; known: {sorted(_BY_NAME)}")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}

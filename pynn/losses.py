"""Losses with Keras 3 names, arguments and semantics.

The functions (``mean_absolute_error(y_true, y_pred)``,
``sparse_categorical_crossentropy(y_true, y_pred, from_logits=False)`` ...)
return per-sample losses like Keras's.  Calling a loss object returns the
reduced loss as a number: ``MeanSquaredError()(y_true, y_pred,
sample_weight=w)``, with Keras 3's reductions ("sum_over_batch_size" = the
weighted sum divided by the number of samples, not by the weights' sum;
"mean" the same; "sum"; "mean_with_sample_weight"; None/"none": the
per-sample vector).

In training the classes compute, in one pass through ``ops``, the weighted
loss summed over the batch, the number of correct predictions (for the
accuracy metric) and the gradient with respect to the model output.  The
formulas and gradients live in pynn/backend/loss_ops.py (``Ops.loss_rows``).
When a model ends in a softmax and the loss is a cross-entropy, the model
feeds the logits to the fused, numerically stable softmax cross-entropy
kernel instead.
"""
import warnings

import numpy as np

from . import checks
from .backend import loss_ops

EPSILON = loss_ops.EPSILON
REDUCTIONS = ("sum_over_batch_size", "sum", "mean", "mean_with_sample_weight", None, "none")


def _labels(y_true, n, what="labels"):
    y = checks.numeric_array(what, y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},), got {np.shape(y_true)}")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise ValueError(f"{what} must be integer class ids")
        y = y.astype(np.int64)
    return y


def _pair(y_true, y_pred):
    p = np.asarray(y_pred, dtype=np.float64)
    t = np.asarray(y_true, dtype=np.float64)
    if t.shape != p.shape:
        if t.size != p.size:
            raise ValueError(f"y_true has shape {t.shape} but y_pred has shape {p.shape}")
        t = t.reshape(p.shape)
    return t, p


def _rows(kind, **params):
    def fn(y_true, y_pred):
        t, p = _pair(y_true, y_pred)
        return loss_ops.KINDS[kind](np, p, t, False, **params)[0]
    fn.__name__ = kind
    fn.__doc__ = f"Per-sample {kind.replace('_', ' ')} (Keras 3's formula)."
    return fn


# -- per-sample functions (Keras' keras.losses.<name>) -------------------------
mean_squared_error = _rows("mean_squared_error")
mean_absolute_error = _rows("mean_absolute_error")
mean_absolute_percentage_error = _rows("mean_absolute_percentage_error")
mean_squared_logarithmic_error = _rows("mean_squared_logarithmic_error")
log_cosh = _rows("log_cosh")
kl_divergence = _rows("kl_divergence")
poisson = _rows("poisson")
hinge = _rows("hinge")
squared_hinge = _rows("squared_hinge")
categorical_hinge = _rows("categorical_hinge")


def huber(y_true, y_pred, delta=1.0):
    t, p = _pair(y_true, y_pred)
    return loss_ops.huber(np, p, t, False, delta=float(delta))[0]


def cosine_similarity(y_true, y_pred, axis=-1):
    t, p = _pair(y_true, y_pred)
    t, p = np.moveaxis(t, axis, -1), np.moveaxis(p, axis, -1)
    return loss_ops.cosine_similarity(np, p, t, False)[0]


def sparse_categorical_crossentropy(y_true, y_pred, from_logits=False, ignore_class=None,
                                    axis=-1):
    if ignore_class is not None:
        raise NotImplementedError("sparse_categorical_crossentropy(ignore_class=...) is not "
                                  "supported; give those samples sample_weight=0 instead")
    p = np.asarray(y_pred, dtype=np.float64)
    y = _labels(y_true, p.shape[0])
    return loss_ops.crossentropy_rows(np, p, y, from_logits)


def categorical_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    t, p = _pair(y_true, y_pred)
    if label_smoothing:
        t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    return loss_ops.crossentropy_rows(np, p, t, from_logits)


def binary_crossentropy(y_true, y_pred, from_logits=False, label_smoothing=0.0, axis=-1):
    t, p = _pair(y_true, y_pred)
    if label_smoothing:
        t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    return loss_ops.binary_crossentropy(np, p, t, False, from_logits=from_logits)[0]


mse = MSE = mean_squared_error
mae = MAE = mean_absolute_error
mape = MAPE = mean_absolute_percentage_error
msle = MSLE = mean_squared_logarithmic_error
kld = KLD = kl_divergence
bce = BCE = binary_crossentropy


def reduce_weighted(values, sample_weight=None, reduction="sum_over_batch_size"):
    """Keras 3's reduce_weighted_values on NumPy: values * sample_weight,
    then the reduction (sum_over_batch_size/mean divide by the number of
    values, whatever the weights)."""
    v = np.asarray(values, dtype=np.float64)
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.ndim == v.ndim + 1 and w.shape[-1] == 1:
            w = w[..., 0]
        elif v.ndim == w.ndim + 1 and v.shape[-1] == 1:
            v = v[..., 0]
        try:
            v = v * w
        except ValueError:
            raise ValueError(f"sample_weight of shape {w.shape} does not match the per-sample "
                             f"losses of shape {v.shape}") from None
    if reduction in (None, "none") or v.ndim == 0:
        return v
    s = float(v.sum())
    if reduction == "sum":
        return s
    if reduction == "mean_with_sample_weight" and w is not None:
        d = float(np.broadcast_to(w, v.shape).sum())
        return s / d if d else 0.0
    return s / v.size if v.size else 0.0


def _check_reduction(reduction):
    if reduction == "auto":
        warnings.warn("reduction='auto' is Keras 2's spelling; use 'sum_over_batch_size'",
                      DeprecationWarning, stacklevel=3)
        return "sum_over_batch_size"
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(REDUCTIONS)}, got {reduction!r}")
    return reduction


class Loss:
    """Base class: ``call(y_true, y_pred)`` gives per-sample losses (NumPy);
    ``compute`` is the training path (see the module docstring)."""
    name = "loss"
    fuses_softmax = False   # cross-entropies: a final softmax can be fused
    accuracy_kind = None    # which accuracy the kernel counts for the "accuracy" metric

    def __init__(self, name=None, reduction="sum_over_batch_size", dtype=None):
        if isinstance(name, str) and name in REDUCTIONS + ("auto",) and \
                reduction == "sum_over_batch_size":
            # Loss(reduction) positional, as pynn's older signature had it
            name, reduction = None, name
        self.reduction = _check_reduction(reduction)
        if name:
            self.name = name

    def call(self, y_true, y_pred):
        raise NotImplementedError(f"{type(self).__name__}.call")

    def __call__(self, y_true, y_pred, sample_weight=None):
        return reduce_weighted(self.call(y_true, y_pred), sample_weight, self.reduction)

    def check_targets(self, y, n_out, dtype=np.float32):
        """Validate the whole target array once, before training."""
        return y

    def get_config(self):
        return {"name": self.name, "reduction": self.reduction}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"{type(self).__name__}({self.get_config()})"


def _smooth(value, what):
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ValueError(f"{what} must be in [0, 1], got {value!r}")
    return v


class _CrossEntropy(Loss):
    fuses_softmax = True
    label_smoothing = 0.0

    def __init__(self, from_logits=False, name=None, reduction="sum_over_batch_size", dtype=None,
                 axis=-1):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if axis not in (-1, 1):
            raise NotImplementedError(f"{type(self).__name__}(axis={axis!r}): only the last axis "
                                      "(classes last) is supported")
        self.from_logits = bool(from_logits)

    def _targets(self, xp, y, k):
        return y

    def compute(self, ops, out, y, dout, grad_scale, logits, sample_weight=None):
        """(weighted loss sum, n correct); dout = d loss / d out * grad_scale.
        logits: out holds logits (fused final softmax, or from_logits)."""
        t = self._targets(ops.xp, y, out.shape[1])
        lg = logits or self.from_logits
        loss, correct = ops.softmax_xent(out, t, dlogits=dout, from_logits=lg,
                                         grad_scale=grad_scale)
        if sample_weight is None:
            return loss, correct
        xp = ops.xp
        if dout is not None:
            dout *= sample_weight.reshape(-1, 1).astype(dout.dtype)
        rows = loss_ops.crossentropy_rows(xp, out.astype(np.float64), t, lg)
        return float((rows * sample_weight).sum()), correct

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits}


class SparseCategoricalCrossentropy(_CrossEntropy):
    name = "sparse_categorical_crossentropy"
    accuracy_kind = "sparse_categorical"

    def __init__(self, from_logits=False, ignore_class=None, reduction="sum_over_batch_size",
                 name=None, dtype=None):
        if ignore_class is not None:
            raise NotImplementedError("SparseCategoricalCrossentropy(ignore_class=...) is not "
                                      "supported; give those samples sample_weight=0 instead")
        super().__init__(from_logits, name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
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

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(from_logits, name=name, reduction=reduction, dtype=dtype, axis=axis)
        self.label_smoothing = _smooth(label_smoothing, "label_smoothing")

    def _targets(self, xp, y, k):
        if not self.label_smoothing:
            return y
        ls = self.label_smoothing
        return (y * (1 - ls) + ls / k).astype(y.dtype)

    def call(self, y_true, y_pred):
        return categorical_crossentropy(y_true, y_pred, self.from_logits, self.label_smoothing)

    def check_targets(self, y, n_out, dtype=np.float32):
        y = checks.finite_array("targets", y)
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"categorical targets must have shape (N, {n_out}), got {y.shape}")
        return np.ascontiguousarray(y, dtype=dtype)

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


class _Rows(Loss):
    """Losses computed per sample by ``ops.loss_rows(kind, ...)``: targets
    of the output's shape (N, K)."""
    kind = None

    def _params(self):
        return {}

    def call(self, y_true, y_pred):
        t, p = _pair(y_true, y_pred)
        return loss_ops.KINDS[self.kind](np, p, t, False, **self._params())[0]

    target_range = None     # (low, high): the values a target may take (both included)

    def check_targets(self, y, n_out, dtype=np.float32):
        y = checks.finite_array("targets", y).astype(dtype, copy=False)
        if y.ndim == 1 and n_out == 1:
            y = y[:, None]
        if y.ndim != 2 or y.shape[1] != n_out:
            raise ValueError(f"targets must have shape (N, {n_out}), got {y.shape}")
        lo, hi = self.target_range or (None, None)
        if lo is not None and y.size and (y.min() < lo or y.max() > hi):
            raise ValueError(f"{self.name} targets must lie in [{lo:g}, {hi:g}]; got values in "
                             f"[{y.min():g}, {y.max():g}]")
        return np.ascontiguousarray(y)

    def _train_targets(self, xp, t):
        return t

    def compute(self, ops, out, y, dout, grad_scale, logits, sample_weight=None):
        """(weighted loss sum, n correct); dout = d loss / d out * grad_scale."""
        xp = ops.xp
        t = y.reshape(out.shape)
        params = self._params()
        if logits:
            params["from_logits"] = True
        per, grad = ops.loss_rows(self.kind, out, self._train_targets(xp, t),
                                  need_grad=dout is not None, **params)
        if sample_weight is None:
            total = float(per.sum())
            if dout is not None:
                dout[...] = grad * grad_scale
        else:
            total = float((per * sample_weight).sum())
            if dout is not None:
                dout[...] = grad * (sample_weight.reshape(-1, 1) * grad_scale)
        correct = 0
        if self.accuracy_kind == "binary":
            k = out.shape[1]
            pred = out > (0.0 if logits else 0.5)
            correct = int(xp.count_nonzero(pred == (t > 0.5))) / k
        return total, correct


class BinaryCrossentropy(_Rows):
    name = "binary_crossentropy"
    kind = "binary_crossentropy"
    accuracy_kind = "binary"
    fuses_sigmoid = True
    target_range = (0.0, 1.0)   # probabilities (Keras: labels 0/1 or soft labels)

    def __init__(self, from_logits=False, label_smoothing=0.0, axis=-1,
                 reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if axis not in (-1, 1):
            raise NotImplementedError(f"BinaryCrossentropy(axis={axis!r}): only axis=-1 is "
                                      "supported")
        self.from_logits = bool(from_logits)
        self.label_smoothing = _smooth(label_smoothing, "label_smoothing")

    def _params(self):
        return {"from_logits": self.from_logits}

    def _train_targets(self, xp, t):
        ls = self.label_smoothing
        return t * (1 - ls) + 0.5 * ls if ls else t

    def call(self, y_true, y_pred):
        return binary_crossentropy(y_true, y_pred, self.from_logits, self.label_smoothing)

    def get_config(self):
        return {**super().get_config(), "from_logits": self.from_logits,
                "label_smoothing": self.label_smoothing}


def _rows_class(cls_name, kind, snake, accuracy_kind=None):
    cls = type(cls_name, (_Rows,), {"name": snake, "kind": kind, "accuracy_kind": accuracy_kind,
                                    "__doc__": f"Keras 3's {cls_name} (see keras.losses)."})
    cls.__module__ = __name__
    return cls


MeanSquaredError = _rows_class("MeanSquaredError", "mean_squared_error", "mean_squared_error",
                               "binary")
MeanAbsoluteError = _rows_class("MeanAbsoluteError", "mean_absolute_error",
                                "mean_absolute_error")
MeanAbsolutePercentageError = _rows_class("MeanAbsolutePercentageError",
                                          "mean_absolute_percentage_error",
                                          "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _rows_class("MeanSquaredLogarithmicError",
                                          "mean_squared_logarithmic_error",
                                          "mean_squared_logarithmic_error")
LogCosh = _rows_class("LogCosh", "log_cosh", "log_cosh")
KLDivergence = _rows_class("KLDivergence", "kl_divergence", "kl_divergence")
Poisson = _rows_class("Poisson", "poisson", "poisson")
Hinge = _rows_class("Hinge", "hinge", "hinge")
SquaredHinge = _rows_class("SquaredHinge", "squared_hinge", "squared_hinge")
CategoricalHinge = _rows_class("CategoricalHinge", "categorical_hinge", "categorical_hinge")


class Huber(_Rows):
    name = "huber_loss"
    kind = "huber"

    def __init__(self, delta=1.0, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.delta = float(delta)
        if not self.delta > 0:
            raise ValueError(f"Huber: delta must be > 0, got {delta!r}")

    def _params(self):
        return {"delta": self.delta}

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class CosineSimilarity(_Rows):
    name = "cosine_similarity"
    kind = "cosine_similarity"

    def __init__(self, axis=-1, reduction="sum_over_batch_size", name=None, dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        if axis not in (-1, 1):
            raise NotImplementedError(f"CosineSimilarity(axis={axis!r}): only the last axis is "
                                      "supported")
        self.axis = -1

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# -- lookup ------------------------------------------------------------------
_CLASSES = [SparseCategoricalCrossentropy, CategoricalCrossentropy, BinaryCrossentropy,
            MeanSquaredError, MeanAbsoluteError, MeanAbsolutePercentageError,
            MeanSquaredLogarithmicError, Huber, LogCosh, KLDivergence, Poisson, Hinge,
            SquaredHinge, CategoricalHinge, CosineSimilarity]
_FN_TO_CLASS = {
    sparse_categorical_crossentropy: SparseCategoricalCrossentropy,
    categorical_crossentropy: CategoricalCrossentropy,
    binary_crossentropy: BinaryCrossentropy,
    mean_squared_error: MeanSquaredError,
    mean_absolute_error: MeanAbsoluteError,
    mean_absolute_percentage_error: MeanAbsolutePercentageError,
    mean_squared_logarithmic_error: MeanSquaredLogarithmicError,
    huber: Huber,
    log_cosh: LogCosh,
    kl_divergence: KLDivergence,
    poisson: Poisson,
    hinge: Hinge,
    squared_hinge: SquaredHinge,
    categorical_hinge: CategoricalHinge,
    cosine_similarity: CosineSimilarity,
}
_BY_NAME = {fn.__name__: cls for fn, cls in _FN_TO_CLASS.items()}
_BY_NAME.update({c.__name__: c for c in _CLASSES})
_BY_NAME.update({"mse": MeanSquaredError, "mae": MeanAbsoluteError,
                 "mape": MeanAbsolutePercentageError, "msle": MeanSquaredLogarithmicError,
                 "kld": KLDivergence, "bce": BinaryCrossentropy, "huber_loss": Huber})
_BY_NAME.update({k.upper(): _BY_NAME[k] for k in ("mse", "mae", "mape", "msle", "kld", "bce")})
# Keras 2 spellings
_OLD_NAMES = {"logcosh": "log_cosh", "kullback_leibler_divergence": "kl_divergence",
              "cosine_proximity": "cosine_similarity"}


def _from_name(name):
    cls = _BY_NAME.get(name)
    if cls is None and name in _OLD_NAMES:
        new = _OLD_NAMES[name]
        warnings.warn(f"the loss name {name!r} is Keras 2's; use {new!r}", DeprecationWarning,
                      stacklevel=3)
        cls = _BY_NAME[new]
    if cls is None:
        cls = _BY_NAME.get(name.lower())
    return cls


def get(identifier):
    """A Loss instance from a Keras name, a loss function or class of this
    module, a config dict or an instance."""
    if isinstance(identifier, Loss):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Loss):
        return identifier()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(identifier.get("class_name", ""))
        if cls is None:
            raise ValueError(f"unknown loss config {identifier!r}")
        cfg = dict(identifier.get("config", {}))
        if cfg.get("name") is None:
            cfg.pop("name", None)
        return cls.from_config(cfg)
    if isinstance(identifier, str):
        cls = _from_name(identifier)
        if cls is None:
            raise ValueError(f"unknown loss {identifier!r}; known: "
                             f"{sorted(k for k in _BY_NAME if k.islower())}")
        return cls()
    if callable(identifier):
        try:
            cls = _FN_TO_CLASS.get(identifier)
        except TypeError:
            cls = None
        if cls is not None:
            return cls()
        raise NotImplementedError(
            f"custom loss function {getattr(identifier, '__name__', identifier)!r}: pynn has no "
            "automatic differentiation; use a built-in loss (pynn.losses) by name or class")
    raise ValueError(f"unknown loss {identifier!r}")


def serialize(loss):
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def deserialize(config):
    return get(config)

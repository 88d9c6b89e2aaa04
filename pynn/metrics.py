"""Metrics with Keras 3 names, arguments and semantics.

A metric is stateful: ``update_state(y_true, y_pred, sample_weight=None)``
accumulates, ``result()`` reads, ``reset_state()`` clears; calling it on
arrays updates and returns the result as a number (as Keras 3's
``Metric.__call__``).  The state is a flat float64 vector of sums (totals
and counts, confusion counts), so that ``fit``/``evaluate`` accumulate a
batch's contribution (:meth:`Metric.batch_state`) in the same list as the
loss, and under MPI one sum over the ranks aggregates every metric exactly.

In ``compile(metrics=[...])`` a string keeps its spelling as the log name
("mae" logs "mae", "mean_absolute_error" logs "mean_absolute_error"), an
object logs its ``name``; "accuracy"/"acc" mean the accuracy that fits the
loss (counted inside the loss kernel for the cross-entropies and MSE, at no
extra cost) or, for the other losses, Keras' rule: binary for one output
unit, categorical otherwise.
"""
import warnings

import numpy as np

from . import losses as _losses

EPSILON = 1e-7


def _f64(a):
    return np.asarray(a, dtype=np.float64)


def _per_sample(values, sample_weight):
    """Keras' reduce_to_samplewise_values: per-sample values (mean over the
    non-batch axes) and their weights (ones when None)."""
    v = _f64(values)
    if v.ndim == 0:
        v = v.reshape(1)
    if sample_weight is None:
        w = np.ones(v.shape[0])
    else:
        w = _f64(sample_weight)
        if w.ndim == 0:
            w = np.full(v.shape[0], float(w))
        elif w.ndim > 1:
            w = w.reshape(w.shape[0], -1).mean(axis=1)
        if w.shape[0] != v.shape[0]:
            raise ValueError(f"sample_weight has {w.shape[0]} entries for {v.shape[0]} samples")
    if v.ndim > 1:
        v = v.reshape(v.shape[0], -1).mean(axis=1)
    return v, w


class Metric:
    """Base class.  Subclasses give ``state_size``, ``batch_state(y_true,
    y_pred, sample_weight) -> float64 vector`` and ``result_of(state)``."""
    name = "metric"
    state_size = 2

    def __init__(self, name=None, dtype=None):
        if name:
            self.name = name
        self.dtype = dtype
        self.reset_state()

    def reset_state(self):
        self._state = np.zeros(self.state_size)

    def reset_states(self):
        warnings.warn("reset_states() is Keras 2's spelling; use reset_state()",
                      DeprecationWarning, stacklevel=2)
        self.reset_state()

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._state += self.batch_state(y_true, y_pred, sample_weight)

    def result(self):
        return self.result_of(self._state)

    def __call__(self, *args, **kwargs):
        self.update_state(*args, **kwargs)
        return self.result()

    def batch_state(self, y_true, y_pred, sample_weight=None):
        raise NotImplementedError

    def result_of(self, state):
        raise NotImplementedError

    @property
    def variables(self):
        return [self._state]

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        return f"<{type(self).__name__} name={self.name}>"


class Mean(Metric):
    """The weighted mean of the values: state (total, count)."""
    name = "mean"

    def update_state(self, values, sample_weight=None):
        self._state += self._sums(values, sample_weight)

    @staticmethod
    def _sums(values, sample_weight):
        v, w = _per_sample(values, sample_weight)
        return np.array([float((v * w).sum()), float(w.sum())])

    def result_of(self, state):
        return float(state[0] / state[1]) if state[1] else 0.0


class MeanMetricWrapper(Mean):
    """The mean of ``fn(y_true, y_pred, **kwargs)`` (per-sample values)."""

    def __init__(self, fn, name=None, dtype=None, **kwargs):
        self._fn, self._fn_kwargs = fn, kwargs
        super().__init__(name=name or getattr(fn, "__name__", None), dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._state += self.batch_state(y_true, y_pred, sample_weight)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        return self._sums(self._fn(y_true, y_pred, **self._fn_kwargs), sample_weight)

    def get_config(self):
        return {**super().get_config(), **self._fn_kwargs}


# -- per-sample metric functions (keras.metrics.<name>) ----------------------
def _classes(y_true, n):
    y = np.asarray(y_true)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.shape[:1] != (n,) or y.ndim != 1:
        raise ValueError(f"sparse labels must have shape ({n},), got {np.shape(y_true)}")
    return y.astype(np.int64)


def accuracy(y_true, y_pred):
    t, p = _losses._pair(y_true, y_pred)
    return (t == p).astype(np.float64).mean(axis=-1)


def binary_accuracy(y_true, y_pred, threshold=0.5):
    t, p = _losses._pair(y_true, y_pred)
    return (t == (p > threshold)).astype(np.float64).mean(axis=-1)


def categorical_accuracy(y_true, y_pred):
    t, p = _losses._pair(y_true, y_pred)
    return (np.argmax(t, axis=-1) == np.argmax(p, axis=-1)).astype(np.float64)


def sparse_categorical_accuracy(y_true, y_pred):
    p = _f64(y_pred)
    return (_classes(y_true, p.shape[0]) == np.argmax(p, axis=-1)).astype(np.float64)


def _in_top_k(labels, p, k):
    """Keras' in_top_k: the target's score is >= the k-th largest (ties in)."""
    k = min(int(k), p.shape[-1])
    kth = -np.sort(-p, axis=-1)[:, k - 1]
    return (p[np.arange(p.shape[0]), labels] >= kth).astype(np.float64)


def top_k_categorical_accuracy(y_true, y_pred, k=5):
    t, p = _losses._pair(y_true, y_pred)
    return _in_top_k(np.argmax(t, axis=-1), p, k)


def sparse_top_k_categorical_accuracy(y_true, y_pred, k=5):
    p = _f64(y_pred)
    return _in_top_k(_classes(y_true, p.shape[0]), p, k)


mean_squared_error = mse = _losses.mean_squared_error
mean_absolute_error = mae = _losses.mean_absolute_error
mean_absolute_percentage_error = mape = _losses.mean_absolute_percentage_error
mean_squared_logarithmic_error = msle = _losses.mean_squared_logarithmic_error


def _wrapper(cls_name, fn, snake, kind=None, params=()):
    """A MeanMetricWrapper class with Keras' constructor ``(name, dtype,
    <params>)``."""
    defaults = dict(params)

    def __init__(self, *args, name=snake, dtype=None, **kwargs):
        names = list(defaults)
        if len(args) > len(names) + 1:
            raise TypeError(f"{cls_name}: too many positional arguments")
        if args and names and not isinstance(args[0], str):
            kwargs.update(zip(names, args))       # e.g. TopKCategoricalAccuracy(3)
        elif args:
            name = args[0]
            kwargs.update(zip(names, args[1:]))
        unknown = set(kwargs) - set(defaults)
        if unknown:
            raise TypeError(f"{cls_name}: unexpected argument(s) {sorted(unknown)}")
        kw = {**defaults, **kwargs}
        MeanMetricWrapper.__init__(self, fn, name=name, dtype=dtype, **kw)

    def from_config(cls, config):
        return cls(**config)

    cls = type(cls_name, (MeanMetricWrapper,), {
        "__init__": __init__, "from_config": classmethod(from_config), "name": snake,
        "accuracy_kind": kind, "__module__": __name__,
        "__doc__": f"Keras 3's {cls_name}: the (weighted) mean of {fn.__name__}."})
    return cls


Accuracy = _wrapper("Accuracy", accuracy, "accuracy")
BinaryAccuracy = _wrapper("BinaryAccuracy", binary_accuracy, "binary_accuracy", "binary",
                          {"threshold": 0.5})
CategoricalAccuracy = _wrapper("CategoricalAccuracy", categorical_accuracy,
                               "categorical_accuracy", "categorical")
SparseCategoricalAccuracy = _wrapper("SparseCategoricalAccuracy", sparse_categorical_accuracy,
                                     "sparse_categorical_accuracy", "sparse_categorical")
TopKCategoricalAccuracy = _wrapper("TopKCategoricalAccuracy", top_k_categorical_accuracy,
                                   "top_k_categorical_accuracy", params={"k": 5})
SparseTopKCategoricalAccuracy = _wrapper("SparseTopKCategoricalAccuracy",
                                         sparse_top_k_categorical_accuracy,
                                         "sparse_top_k_categorical_accuracy", params={"k": 5})
MeanSquaredError = _wrapper("MeanSquaredError", mean_squared_error, "mean_squared_error")
MeanAbsoluteError = _wrapper("MeanAbsoluteError", mean_absolute_error, "mean_absolute_error")
MeanAbsolutePercentageError = _wrapper("MeanAbsolutePercentageError",
                                       mean_absolute_percentage_error,
                                       "mean_absolute_percentage_error")
MeanSquaredLogarithmicError = _wrapper("MeanSquaredLogarithmicError",
                                       mean_squared_logarithmic_error,
                                       "mean_squared_logarithmic_error")


class RootMeanSquaredError(Mean):
    """sqrt of the weighted mean of the per-sample mean squared errors."""
    name = "root_mean_squared_error"

    def __init__(self, name=None, dtype=None):
        super().__init__(name=name, dtype=dtype)

    def update_state(self, y_true, y_pred, sample_weight=None):
        self._state += self.batch_state(y_true, y_pred, sample_weight)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        t, p = _losses._pair(y_true, y_pred)
        return self._sums((p - t) ** 2, sample_weight)

    def result_of(self, state):
        return float(np.sqrt(state[0] / state[1])) if state[1] else 0.0


# -- confusion-matrix metrics --------------------------------------------------
def _confusion(y_true, y_pred, thresholds, sample_weight, class_id=None):
    """(tp, fp, tn, fn) at each threshold (prediction > threshold is a
    positive), summed over samples and labels, weighted."""
    t, p = _losses._pair(y_true, y_pred)
    if p.ndim == 1:
        t, p = t[:, None], p[:, None]
    if class_id is not None:
        t, p = t[:, class_id:class_id + 1], p[:, class_id:class_id + 1]
    t = t.reshape(t.shape[0], -1) > 0   # Keras casts the labels to bool
    p = p.reshape(p.shape[0], -1)
    if sample_weight is None:
        w = np.ones_like(p)
    else:
        w = _f64(sample_weight)
        w = np.broadcast_to(w.reshape(w.shape[0], -1) if w.ndim else w, p.shape)
    pos = p[None, :, :] > np.asarray(thresholds, np.float64)[:, None, None]
    tw, fw = w * t, w * ~t
    tp = (pos * tw).sum(axis=(1, 2))
    fp = (pos * fw).sum(axis=(1, 2))
    fn = (~pos * tw).sum(axis=(1, 2))
    tn = (~pos * fw).sum(axis=(1, 2))
    return tp, fp, tn, fn


def _div(a, b):
    return np.where(b > 0, a / np.where(b > 0, b, 1), 0.0)


class _Thresholded(Metric):
    """Precision / Recall: counts at one threshold."""
    state_size = 4   # tp, fp, tn, fn

    def __init__(self, thresholds=None, top_k=None, class_id=None, name=None, dtype=None):
        if top_k is not None:
            raise NotImplementedError(f"{type(self).__name__}(top_k=...) is not supported")
        if thresholds is None:
            thresholds = 0.5
        if isinstance(thresholds, (list, tuple, np.ndarray)):
            raise NotImplementedError(f"{type(self).__name__}: a list of thresholds is not "
                                      "supported; make one metric per threshold")
        self.thresholds = float(thresholds)
        self.class_id = None if class_id is None else int(class_id)
        super().__init__(name=name, dtype=dtype)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        return np.concatenate(_confusion(y_true, y_pred, [self.thresholds], sample_weight,
                                         self.class_id))

    def get_config(self):
        return {**super().get_config(), "thresholds": self.thresholds, "top_k": None,
                "class_id": self.class_id}


class Precision(_Thresholded):
    name = "precision"

    def result_of(self, s):
        return float(_div(s[0], s[0] + s[1]))


class Recall(_Thresholded):
    name = "recall"

    def result_of(self, s):
        return float(_div(s[0], s[0] + s[3]))


class AUC(Metric):
    """Keras 3's AUC: ``num_thresholds`` thresholds (0 - eps, i/(n-1) for
    i = 1..n-2, 1 + eps), confusion counts summed over the labels
    (multi_label=False), ROC or PR, Riemann sum by trapezoids
    ("interpolation"; for PR the Davis & Goadrich interpolation), "minoring"
    or "majoring"."""
    name = "auc"

    def __init__(self, num_thresholds=200, curve="ROC", summation_method="interpolation",
                 name=None, dtype=None, thresholds=None, multi_label=False, num_labels=None,
                 label_weights=None, from_logits=False):
        if multi_label or label_weights is not None:
            raise NotImplementedError("AUC(multi_label / label_weights) is not supported; "
                                      "make one AUC per label with Precision/Recall-style "
                                      "slicing of the outputs instead")
        curve, summation_method = str(curve).upper(), str(summation_method).lower()
        if curve not in ("ROC", "PR"):
            raise ValueError(f"AUC: curve must be 'ROC' or 'PR', got {curve!r}")
        if summation_method not in ("interpolation", "minoring", "majoring"):
            raise ValueError(f"AUC: summation_method must be interpolation, minoring or "
                             f"majoring, got {summation_method!r}")
        if thresholds is not None:
            inner = sorted(float(t) for t in thresholds)
            self._user_thresholds = inner
        else:
            if int(num_thresholds) <= 1:
                raise ValueError(f"AUC: num_thresholds must be > 1, got {num_thresholds!r}")
            n = int(num_thresholds)
            inner = [(i + 1) * 1.0 / (n - 1) for i in range(n - 2)]
            self._user_thresholds = None
        self.thresholds = np.array([0.0 - EPSILON] + inner + [1.0 + EPSILON])
        self.num_thresholds = len(self.thresholds)
        self.curve, self.summation_method = curve, summation_method
        self.from_logits = bool(from_logits)
        self.state_size = 4 * self.num_thresholds
        super().__init__(name=name, dtype=dtype)

    def batch_state(self, y_true, y_pred, sample_weight=None):
        p = _f64(y_pred)
        if self.from_logits:
            p = 1 / (1 + np.exp(-p))
        return np.concatenate(_confusion(y_true, p, self.thresholds, sample_weight))

    def result_of(self, s):
        n = self.num_thresholds
        tp, fp, tn, fn = s[:n], s[n:2 * n], s[2 * n:3 * n], s[3 * n:]
        if self.curve == "PR" and self.summation_method == "interpolation":
            dtp = tp[:-1] - tp[1:]
            pp = tp + fp
            dp = pp[:-1] - pp[1:]
            slope = _div(dtp, np.maximum(dp, 0))
            intercept = tp[1:] - slope * pp[1:]
            both = (pp[:-1] > 0) & (pp[1:] > 0)
            ratio = np.where(both, _div(pp[:-1], np.maximum(pp[1:], 0)), 1.0)
            inc = _div(slope * (dtp + intercept * np.log(ratio)), np.maximum(tp[1:] + fn[1:], 0))
            return float(inc.sum())
        recall = _div(tp, tp + fn)
        if self.curve == "ROC":
            x, y = _div(fp, fp + tn), recall
        else:
            x, y = recall, _div(tp, tp + fp)
        if self.summation_method == "interpolation":
            h = (y[:-1] + y[1:]) / 2
        elif self.summation_method == "minoring":
            h = np.minimum(y[:-1], y[1:])
        else:
            h = np.maximum(y[:-1], y[1:])
        return float(((x[:-1] - x[1:]) * h).sum())

    def get_config(self):
        c = {**super().get_config(), "num_thresholds": self.num_thresholds, "curve": self.curve,
             "summation_method": self.summation_method, "multi_label": False,
             "from_logits": self.from_logits}
        if self._user_thresholds is not None:
            c["thresholds"] = self._user_thresholds
        return c


# -- lookup --------------------------------------------------------------------
_CLASSES = [Mean, Accuracy, BinaryAccuracy, CategoricalAccuracy, SparseCategoricalAccuracy,
            TopKCategoricalAccuracy, SparseTopKCategoricalAccuracy, MeanSquaredError,
            MeanAbsoluteError, MeanAbsolutePercentageError, MeanSquaredLogarithmicError,
            RootMeanSquaredError, Precision, Recall, AUC]
_BY_NAME = {c.__name__: c for c in _CLASSES}
_BY_NAME.update({c.name: c for c in _CLASSES})
_BY_NAME.update({"mse": MeanSquaredError, "mae": MeanAbsoluteError,
                 "mape": MeanAbsolutePercentageError, "msle": MeanSquaredLogarithmicError,
                 "MSE": MeanSquaredError, "MAE": MeanAbsoluteError,
                 "MAPE": MeanAbsolutePercentageError, "MSLE": MeanSquaredLogarithmicError,
                 "rmse": RootMeanSquaredError, "top_k_accuracy": TopKCategoricalAccuracy})
_FN_TO_CLASS = {accuracy: Accuracy, binary_accuracy: BinaryAccuracy,
                categorical_accuracy: CategoricalAccuracy,
                sparse_categorical_accuracy: SparseCategoricalAccuracy,
                top_k_categorical_accuracy: TopKCategoricalAccuracy,
                sparse_top_k_categorical_accuracy: SparseTopKCategoricalAccuracy,
                mean_squared_error: MeanSquaredError, mean_absolute_error: MeanAbsoluteError,
                mean_absolute_percentage_error: MeanAbsolutePercentageError,
                mean_squared_logarithmic_error: MeanSquaredLogarithmicError}


def get(identifier):
    """A Metric from a Keras name (any spelling Keras accepts), a metric
    function or class of this module, a config dict or an instance.  The
    names "accuracy"/"acc" depend on the loss: compile resolves them."""
    if isinstance(identifier, Metric):
        return identifier
    if isinstance(identifier, type) and issubclass(identifier, Metric):
        return identifier()
    if isinstance(identifier, dict):
        cls = _BY_NAME.get(identifier.get("class_name", ""))
        if cls is None:
            raise ValueError(f"unknown metric config {identifier!r}")
        cfg = {k: v for k, v in identifier.get("config", {}).items() if v is not None}
        return cls.from_config(cfg)
    if isinstance(identifier, str):
        cls = _BY_NAME.get(identifier)
        if cls is None:
            raise ValueError(f"unknown metric {identifier!r}; known: "
                             f"{sorted(k for k in _BY_NAME if k.islower())}")
        return cls(name=identifier)
    if callable(identifier):
        cls = _FN_TO_CLASS.get(identifier)
        if cls is not None:
            return cls()
        # a user function of (y_true, y_pred) on NumPy arrays -> per-sample values
        return MeanMetricWrapper(identifier)
    raise ValueError(f"unknown metric {identifier!r}")


def serialize(metric):
    return {"class_name": type(metric).__name__, "config": metric.get_config()}


def deserialize(config):
    return get(config)

"""Keras 3 metrics (pynn.metrics) against NumPy references written here;
compile(metrics=..., weighted_metrics=...), metrics_names, return_dict and
history names; sample_weight / class_weight through fit, evaluate,
train_on_batch and validation_data against hand computations; metrics under
two MPI ranks equal one process."""
import os
import sys

import numpy as np
import pytest

import pynn
from pynn import layers as L, metrics

import metrics_model as mm

EPS = 1e-7


def wmean(v, w=None):
    w = np.ones(len(v)) if w is None else w
    return float((v * w).sum() / w.sum())


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture
def cls_data():
    rng = np.random.default_rng(0)
    n, k = 40, 6
    p = softmax(rng.standard_normal((n, k)) * 2)
    lab = rng.integers(0, k, n)
    return p, lab, np.eye(k)[lab], rng.uniform(0, 2, n)


def in_top_k(p, lab, k):
    # the target is in the top k when fewer than k scores are strictly larger
    return np.array([(row > row[l]).sum() < k for row, l in zip(p, lab)], dtype=float)


def test_accuracies_and_top_k(cls_data):
    p, lab, oh, w = cls_data
    cases = [
        (metrics.CategoricalAccuracy(), oh, (p.argmax(1) == lab).astype(float)),
        (metrics.SparseCategoricalAccuracy(), lab, (p.argmax(1) == lab).astype(float)),
        (metrics.TopKCategoricalAccuracy(k=3), oh, in_top_k(p, lab, 3)),
        (metrics.SparseTopKCategoricalAccuracy(), lab, in_top_k(p, lab, 5)),
        (metrics.SparseTopKCategoricalAccuracy(k=2), lab[:, None], in_top_k(p, lab, 2)),
    ]
    for m, y, per in cases:
        assert isinstance(m(y, p), float)
        assert m.result() == pytest.approx(wmean(per), abs=1e-15)
        m.reset_state()
        m.update_state(y[:17], p[:17], sample_weight=w[:17])
        m.update_state(y[17:], p[17:], sample_weight=w[17:])     # stateful accumulation
        assert m.result() == pytest.approx(wmean(per, w), rel=1e-12), m.name
    # ties count as inside the top k (Keras' in_top_k)
    assert metrics.SparseTopKCategoricalAccuracy(k=1)([0], [[0.5, 0.5]]) == 1.0
    assert metrics.TopKCategoricalAccuracy().name == "top_k_categorical_accuracy"


def test_binary_accuracy_accuracy_and_errors():
    rng = np.random.default_rng(1)
    t = rng.integers(0, 2, (30, 2)).astype(float)
    p = rng.uniform(0, 1, (30, 2))
    w = rng.uniform(0, 1, 30)
    per = np.mean(t == (p > 0.5), axis=-1)
    assert metrics.BinaryAccuracy()(t, p, sample_weight=w) == pytest.approx(wmean(per, w))
    per7 = np.mean(t == (p > 0.7), axis=-1)
    assert metrics.BinaryAccuracy(threshold=0.7)(t, p) == pytest.approx(wmean(per7))
    q = np.round(p)
    assert metrics.Accuracy()(t, q) == pytest.approx(wmean(np.mean(t == q, axis=-1)))
    yt, yp = rng.standard_normal((30, 3)), rng.standard_normal((30, 3))
    assert metrics.MeanSquaredError()(yt, yp, sample_weight=w) == pytest.approx(
        wmean(np.mean((yp - yt) ** 2, -1), w), rel=1e-12)
    assert metrics.MeanAbsoluteError()(yt, yp) == pytest.approx(np.abs(yp - yt).mean(), rel=1e-12)
    assert metrics.RootMeanSquaredError()(yt, yp, sample_weight=w) == pytest.approx(
        np.sqrt(wmean(np.mean((yp - yt) ** 2, -1), w)), rel=1e-12)
    m = metrics.Mean()
    m.update_state([1.0, 2.0, 3.0])
    m.update_state(10.0)
    assert m.result() == pytest.approx(4.0)
    m.update_state([4.0], sample_weight=[0.0])
    assert m.result() == pytest.approx(4.0)
    m.reset_state()
    assert m.result() == 0.0


def test_precision_recall():
    rng = np.random.default_rng(2)
    t = rng.integers(0, 2, (50, 3)).astype(float)
    p = rng.uniform(0, 1, (50, 3))
    w = rng.uniform(0, 2, 50)
    pos = p > 0.5
    W = np.broadcast_to(w[:, None], t.shape)
    tp = (W * (pos & (t > 0))).sum()
    fp = (W * (pos & (t == 0))).sum()
    fn = (W * (~pos & (t > 0))).sum()
    assert metrics.Precision()(t, p, sample_weight=w) == pytest.approx(tp / (tp + fp), rel=1e-12)
    assert metrics.Recall()(t, p, sample_weight=w) == pytest.approx(tp / (tp + fn), rel=1e-12)
    pos3 = p[:, 1] > 0.3
    tp1 = (pos3 & (t[:, 1] > 0)).sum()
    assert metrics.Precision(thresholds=0.3, class_id=1)(t, p) == pytest.approx(
        tp1 / pos3.sum())
    assert metrics.Precision()(np.zeros(4), np.zeros(4)) == 0.0     # no positives: 0, not nan
    with pytest.raises(NotImplementedError, match="top_k"):
        metrics.Precision(top_k=2)


def auc_reference(t, p, w, n_thr=200, curve="ROC"):
    """Confusion counts at Keras' thresholds, then the trapezoid rule."""
    thr = np.concatenate([[-EPS], np.arange(1, n_thr - 1) / (n_thr - 1), [1 + EPS]])
    t, p = t.ravel(), p.ravel()
    w = np.broadcast_to(w[:, None], (len(w), p.size // len(w))).ravel()
    tpr, fpr, prec = [], [], []
    for th in thr:
        pos = p > th
        tp, fp = w[pos & (t > 0)].sum(), w[pos & (t == 0)].sum()
        fn, tn = w[~pos & (t > 0)].sum(), w[~pos & (t == 0)].sum()
        tpr.append(tp / (tp + fn) if tp + fn else 0.0)
        fpr.append(fp / (fp + tn) if fp + tn else 0.0)
        prec.append(tp / (tp + fp) if tp + fp else 0.0)
    tpr, fpr, prec = map(np.array, (tpr, fpr, prec))
    if curve == "ROC":
        x, y = fpr, tpr
    else:
        x, y = tpr, prec
    # thresholds increase, so x decreases: area = sum over segments of dx * mean height
    return float(sum((x[i] - x[i + 1]) * (y[i] + y[i + 1]) / 2 for i in range(len(thr) - 1)))


def test_auc_against_trapezoids():
    rng = np.random.default_rng(3)
    t = rng.integers(0, 2, 200).astype(float)
    p = np.clip(0.3 * t + rng.uniform(0, 0.7, 200), 0, 1)
    w = rng.uniform(0, 2, 200)
    m = metrics.AUC()
    assert m.num_thresholds == 200 and m.curve == "ROC"
    m.update_state(t[:90], p[:90], sample_weight=w[:90])
    m.update_state(t[90:], p[90:], sample_weight=w[90:])
    assert m.result() == pytest.approx(auc_reference(t, p, w), rel=1e-12)
    # with many thresholds the ROC AUC approaches the rank statistic
    fine = metrics.AUC(num_thresholds=5000)(t, p)
    pos, neg = p[t > 0], p[t == 0]
    mann_whitney = ((pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean())
    assert fine == pytest.approx(mann_whitney, abs=2e-3)
    assert metrics.AUC(num_thresholds=13)(t, p) == pytest.approx(
        auc_reference(t, p, np.ones(200), 13), rel=1e-12)
    assert metrics.AUC(curve="PR", summation_method="majoring")(t, p) > 0.5
    t2 = rng.integers(0, 2, (40, 3)).astype(float)
    p2 = rng.uniform(0, 1, (40, 3))
    assert metrics.AUC()(t2, p2) == pytest.approx(auc_reference(t2, p2, np.ones(40)), rel=1e-12)
    back = metrics.get(metrics.serialize(metrics.AUC(num_thresholds=50, name="a")))
    assert back.num_thresholds == 50 and back.name == "a"


def test_metric_names_and_get():
    assert metrics.get("mae").name == "mae"
    assert type(metrics.get("mae")) is metrics.MeanAbsoluteError
    assert type(metrics.get("auc")) is metrics.AUC
    assert type(metrics.get("AUC")) is metrics.AUC
    assert metrics.get("root_mean_squared_error").name == "root_mean_squared_error"
    assert metrics.MeanAbsoluteError().name == "mean_absolute_error"
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.get("aucc")
    with pytest.warns(DeprecationWarning, match="reset_state"):
        metrics.Mean().reset_states()


# --------------------------------------------------------------- compile --
def regression_model(seed=0):
    pynn.utils.set_random_seed(seed)
    return pynn.Sequential([L.Dense(3, activation="tanh", input_shape=(4,)),
                            L.Dense(2)], dtype="float64")


def test_compile_metrics_names_return_dict_and_history():
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 2))
    m = regression_model()
    m.compile("sgd", "mse", metrics=["mae", metrics.RootMeanSquaredError(),
                                     "mean_absolute_error", "mape"])
    assert m.metrics_names == ["loss", "mae", "root_mean_squared_error",
                               "mean_absolute_error", "mape"]
    p = m.predict(x, verbose=0)
    d = m.evaluate(x, y, verbose=0, return_dict=True, batch_size=7)
    assert list(d) == m.metrics_names
    assert d["loss"] == pytest.approx(np.mean((p - y) ** 2), rel=1e-12)
    assert d["mae"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-12)
    assert d["mean_absolute_error"] == d["mae"]
    assert d["root_mean_squared_error"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)),
                                                         rel=1e-12)
    assert d["mape"] == pytest.approx(100 * np.mean(np.abs(p - y) / np.abs(y)), rel=1e-9)
    assert m.evaluate(x, y, verbose=0) == pytest.approx(list(d.values()))
    h = m.fit(x, y, epochs=2, batch_size=5, verbose=0, validation_data=(x, y))
    for k in m.metrics_names:
        assert k in h.history and "val_" + k in h.history


def test_accuracy_resolution_and_fused_softmax_metrics(cls_data):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 4))
    lab = rng.integers(0, 5, 30)
    pynn.utils.set_random_seed(1)
    m = pynn.Sequential([L.Dense(5, activation="softmax", input_shape=(4,))], dtype="float64")
    m.compile("sgd", "sparse_categorical_crossentropy",
              metrics=["acc", metrics.SparseTopKCategoricalAccuracy(k=2)])
    p = m.predict(x, verbose=0)
    d = m.evaluate(x, lab, verbose=0, return_dict=True)
    assert d["acc"] == pytest.approx(np.mean(p.argmax(1) == lab))
    assert d["sparse_top_k_categorical_accuracy"] == pytest.approx(in_top_k(p, lab, 2).mean())
    # a non-crossentropy loss: Keras' shape rule (1 unit: binary accuracy)
    pynn.utils.set_random_seed(2)
    b = pynn.Sequential([L.Dense(1, activation="sigmoid", input_shape=(4,))], dtype="float64")
    b.compile("sgd", "hinge", metrics=["accuracy"])
    t = rng.integers(0, 2, (30, 1)).astype(float)
    q = b.predict(x, verbose=0)
    assert b.evaluate(x, t, verbose=0, return_dict=True)["accuracy"] == pytest.approx(
        np.mean(t == (q > 0.5)))


def test_auc_metric_in_compile_matches_metric_object():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((30, 4))
    oh = np.eye(3)[rng.integers(0, 3, 30)]
    pynn.utils.set_random_seed(1)
    m = pynn.Sequential([L.Dense(3, activation="softmax", input_shape=(4,))], dtype="float64")
    m.compile("sgd", "categorical_crossentropy", metrics=["auc", "categorical_accuracy"])
    p = m.predict(x, verbose=0)
    d = m.evaluate(x, oh, verbose=0, return_dict=True, batch_size=8)
    assert d["auc"] == pytest.approx(auc_reference(oh, p, np.ones(30)), rel=1e-9)
    assert d["categorical_accuracy"] == pytest.approx(np.mean(p.argmax(1) == oh.argmax(1)))


def test_weighted_metrics_and_name_clash():
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((20, 4)), rng.standard_normal((20, 2))
    w = rng.uniform(0, 3, 20)
    m = regression_model()
    m.compile("sgd", "mse", metrics=["mae"], weighted_metrics=["mae", "mse"])
    assert m.metrics_names == ["loss", "mae", "weighted_mae", "mse"]
    p = m.predict(x, verbose=0)
    d = m.evaluate(x, y, sample_weight=w, verbose=0, return_dict=True)
    per_ae, per_se = np.mean(np.abs(p - y), -1), np.mean((p - y) ** 2, -1)
    assert d["mae"] == pytest.approx(wmean(per_ae), rel=1e-12)          # metrics: unweighted
    assert d["weighted_mae"] == pytest.approx(wmean(per_ae, w), rel=1e-12)
    assert d["mse"] == pytest.approx(wmean(per_se, w), rel=1e-12)       # divided by sum(w)
    assert d["loss"] == pytest.approx((w * per_se).sum() / 20, rel=1e-12)   # divided by N


def test_multi_output_metric_names():
    a = L.Input((4,))
    h = L.Dense(3, activation="tanh")(a)
    o1 = L.Dense(2, name="r")(h)
    o2 = L.Dense(1, activation="sigmoid", name="c")(h)
    m = pynn.Model(a, [o1, o2], dtype="float64")
    m.compile("sgd", ["mse", "binary_crossentropy"], metrics={"r": ["mae"], "c": ["accuracy",
                                                                                  "auc"]})
    assert m.metrics_names == ["loss", "r_loss", "c_loss", "r_mae", "c_accuracy", "c_auc"]
    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 4))
    d = m.evaluate(x, [rng.standard_normal((10, 2)), rng.integers(0, 2, (10, 1))], verbose=0,
                   return_dict=True)
    assert list(d) == m.metrics_names


def test_metrics_save_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 2))
    m = regression_model()
    m.compile("sgd", "mse", metrics=["mae", metrics.AUC(num_thresholds=20)],
              weighted_metrics=[metrics.RootMeanSquaredError(name="rmse_w")])
    m.save(tmp_path / "m.npz")
    m2 = pynn.models.load_model(tmp_path / "m.npz")
    assert m2.metrics_names == m.metrics_names
    assert m2.evaluate(x, y, verbose=0) == m.evaluate(x, y, verbose=0)


# ------------------------------------------------------- sample weights --
def test_sample_weight_fit_loss_is_weighted_sum_over_batch_size():
    """One full batch: fit's logged loss is sum(w * l) / N on the weights
    before the step, and the step follows that loss's gradient."""
    rng = np.random.default_rng(10)
    x, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 2))
    w = rng.uniform(0, 3, 12)
    m = regression_model()
    m.compile(pynn.optimizers.SGD(0.1), "mae")
    p0 = m.predict(x, verbose=0)
    h = m.fit(x, y, sample_weight=w, batch_size=12, epochs=1, shuffle=False, verbose=0)
    assert h.history["loss"][0] == pytest.approx((w * np.abs(p0 - y).mean(-1)).sum() / 12,
                                                 rel=1e-12)
    # several batches: the epoch loss is the mean over samples of the batches' weighted sums
    m = regression_model()
    m.compile(pynn.optimizers.SGD(0.0), "mae")
    h = m.fit(x, y, sample_weight=w, batch_size=5, epochs=1, shuffle=False, verbose=0)
    assert h.history["loss"][0] == pytest.approx((w * np.abs(p0 - y).mean(-1)).sum() / 12,
                                                 rel=1e-12)


def test_class_weight_equals_sample_weight():
    rng = np.random.default_rng(11)
    x, lab = rng.standard_normal((16, 4)), rng.integers(0, 3, 16)
    cw = {0: 0.5, 1: 4.0}     # class 2 missing: weight 1
    sw = np.array([cw.get(c, 1.0) for c in lab])
    runs = []
    for kw in ({"class_weight": cw}, {"sample_weight": sw}):
        pynn.utils.set_random_seed(0)
        m = pynn.Sequential([L.Dense(3, activation="softmax", input_shape=(4,))],
                            dtype="float64")
        m.compile(pynn.optimizers.SGD(0.1), "sparse_categorical_crossentropy")
        h = m.fit(x, lab, batch_size=4, epochs=2, verbose=0, **kw)
        runs.append((h.history["loss"], np.array(m._params)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-13)
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    # one-hot targets: the class is the argmax
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([L.Dense(3, activation="softmax", input_shape=(4,))], dtype="float64")
    m.compile(pynn.optimizers.SGD(0.1), "categorical_crossentropy")
    h = m.fit(x, np.eye(3)[lab], batch_size=4, epochs=2, verbose=0, class_weight=cw)
    np.testing.assert_allclose(h.history["loss"], runs[0][0], rtol=1e-12)
    with pytest.raises(ValueError, match="not both"):
        m.fit(x, np.eye(3)[lab], class_weight=cw, sample_weight=sw, verbose=0)
    with pytest.raises(ValueError, match="shape"):
        m.fit(x, np.eye(3)[lab], sample_weight=sw[:5], verbose=0)


def test_sample_weight_train_and_test_on_batch_and_validation():
    rng = np.random.default_rng(12)
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 2))
    w = rng.uniform(0, 2, 10)
    m = regression_model()
    m.compile(pynn.optimizers.SGD(0.0), "mse", metrics=["mae"])
    p = m.predict(x, verbose=0)
    want = (w * ((p - y) ** 2).mean(-1)).sum() / 10
    assert m.test_on_batch(x, y, sample_weight=w)[0] == pytest.approx(want, rel=1e-12)
    assert m.train_on_batch(x, y, sample_weight=w, return_dict=True)["loss"] == \
        pytest.approx(want, rel=1e-12)
    h = m.fit(x, y, epochs=1, verbose=0, validation_data=(x, y, w))
    assert h.history["val_loss"][0] == pytest.approx(want, rel=1e-12)
    assert h.history["val_mae"][0] == pytest.approx(np.abs(p - y).mean(), rel=1e-12)
    # validation_split splits the weights too
    h = m.fit(x, y, sample_weight=w, epochs=1, verbose=0, validation_split=0.3)
    want_v = (w[7:] * ((p[7:] - y[7:]) ** 2).mean(-1)).sum() / 3
    assert h.history["val_loss"][0] == pytest.approx(want_v, rel=1e-12)


# ------------------------------------------------------------------- MPI --
needs_mpi = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mpi4py") is None, reason="mpi4py is not installed")


@needs_mpi
def test_metrics_and_weights_under_two_ranks_equal_one_process(tmp_path):
    from test_mpi import run_mpi
    here = os.path.dirname(os.path.abspath(__file__))
    run_mpi([sys.executable, os.path.join(here, "mpi_metrics_worker.py"), str(tmp_path)],
            env={"PYTHONPATH": here, "PYNN_MPI": "1"}, timeout=120)   # the installed pynn
    x, y, w = mm.data()
    m = mm.model()
    ref = [m.train_on_batch(x[s * mm.BATCH:(s + 1) * mm.BATCH], y[s * mm.BATCH:(s + 1) * mm.BATCH],
                            sample_weight=w[s * mm.BATCH:(s + 1) * mm.BATCH])
           for s in range(mm.STEPS)]
    ev = m.evaluate(x, y, sample_weight=w, batch_size=5, verbose=0)
    for r in range(2):
        got = np.load(tmp_path / f"rank{r}.npz")
        np.testing.assert_allclose(got["steps"], np.array(ref), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["ev"], np.array(ev), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got["params"], m._params, rtol=1e-12, atol=1e-14)

"""Keras 3 losses: per-sample values, reductions, sample weights, names and
configs against NumPy references written here from Keras 3's formulas
(keras/src/losses/losses.py), and every loss's gradient through a float64
model against finite differences of the reference."""
import warnings

import numpy as np
import pytest

import pynn
from pynn import layers as L, losses

EPS = 1e-7


# ------------------------------------------------- references (Keras 3) --
def r_mse(t, p):
    return np.mean((p - t) ** 2, axis=-1)


def r_mae(t, p):
    return np.mean(np.abs(p - t), axis=-1)


def r_mape(t, p):
    return 100.0 * np.mean(np.abs((t - p) / np.maximum(np.abs(t), EPS)), axis=-1)


def r_msle(t, p):
    return np.mean((np.log(np.maximum(p, EPS) + 1) - np.log(np.maximum(t, EPS) + 1)) ** 2, -1)


def r_huber(t, p, delta=1.0):
    e = np.abs(p - t)
    return np.mean(np.where(e <= delta, 0.5 * e ** 2, delta * e - 0.5 * delta ** 2), axis=-1)


def r_logcosh(t, p):
    return np.mean(np.log(np.cosh(p - t)), axis=-1)


def r_kld(t, p):
    t, p = np.clip(t, EPS, 1), np.clip(p, EPS, 1)
    return np.sum(t * np.log(t / p), axis=-1)


def r_poisson(t, p):
    return np.mean(p - t * np.log(p + EPS), axis=-1)


def _hinge_t(t):
    return 2 * t - 1 if np.all((t == 0) | (t == 1)) else t


def r_hinge(t, p):
    return np.mean(np.maximum(1 - _hinge_t(t) * p, 0), axis=-1)


def r_sqhinge(t, p):
    return np.mean(np.maximum(1 - _hinge_t(t) * p, 0) ** 2, axis=-1)


def r_cathinge(t, p):
    pos = np.sum(t * p, -1)
    neg = np.max((1 - t) * p, -1)
    return np.maximum(neg - pos + 1, 0)


def r_cosine(t, p):
    def unit(v):
        return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), EPS)
    return -np.sum(unit(t) * unit(p), axis=-1)


def r_bce(t, p, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + 0.5 * label_smoothing
    p = np.clip(p, EPS, 1 - EPS)
    return np.mean(-(t * np.log(p) + (1 - t) * np.log(1 - p)), axis=-1)


def r_cce(t, p, label_smoothing=0.0):
    t = t * (1 - label_smoothing) + label_smoothing / t.shape[-1]
    p = np.clip(p / p.sum(-1, keepdims=True), EPS, 1 - EPS)
    return -np.sum(t * np.log(p), axis=-1)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


rng0 = np.random.default_rng(0)


def targets(kind, n, k, rng):
    if kind == "real":
        return rng.standard_normal((n, k))
    if kind == "positive":
        return rng.uniform(0.1, 2.0, (n, k))
    if kind == "binary":
        return rng.integers(0, 2, (n, k)).astype(np.float64)
    if kind == "onehot":
        return np.eye(k)[rng.integers(0, k, n)]
    if kind == "dist":
        return softmax(rng.standard_normal((n, k)))
    raise AssertionError(kind)


# (class, function, reference, target kind, output activation, kwargs)
CASES = [
    (losses.MeanSquaredError, losses.mean_squared_error, r_mse, "real", "linear", {}),
    (losses.MeanAbsoluteError, losses.mean_absolute_error, r_mae, "real", "linear", {}),
    (losses.MeanAbsolutePercentageError, losses.mean_absolute_percentage_error, r_mape, "real",
     "linear", {}),
    (losses.MeanSquaredLogarithmicError, losses.mean_squared_logarithmic_error, r_msle,
     "positive", "sigmoid", {}),
    (losses.Huber, losses.huber, r_huber, "real", "linear", {}),
    (losses.LogCosh, losses.log_cosh, r_logcosh, "real", "linear", {}),
    (losses.KLDivergence, losses.kl_divergence, r_kld, "dist", "softmax", {}),
    (losses.Poisson, losses.poisson, r_poisson, "positive", "sigmoid", {}),
    (losses.Hinge, losses.hinge, r_hinge, "binary", "linear", {}),
    (losses.SquaredHinge, losses.squared_hinge, r_sqhinge, "binary", "linear", {}),
    (losses.CategoricalHinge, losses.categorical_hinge, r_cathinge, "onehot", "linear", {}),
    (losses.CosineSimilarity, losses.cosine_similarity, r_cosine, "real", "linear", {}),
    (losses.BinaryCrossentropy, losses.binary_crossentropy, r_bce, "binary", "sigmoid", {}),
    (losses.CategoricalCrossentropy, losses.categorical_crossentropy, r_cce, "onehot",
     "softmax", {}),
]
IDS = [c[0].__name__ for c in CASES]


def preds(act, n, k, rng):
    z = rng.standard_normal((n, k)) * 1.5
    return {"linear": z, "sigmoid": sigmoid(z), "softmax": softmax(z)}[act]


@pytest.mark.parametrize("cls,fn,ref,tk,act,kw", CASES, ids=IDS)
def test_function_and_object_match_reference(cls, fn, ref, tk, act, kw):
    rng = np.random.default_rng(1)
    t, p = targets(tk, 7, 3, rng), preds(act, 7, 3, rng)
    want = ref(t, p)
    np.testing.assert_allclose(fn(t, p), want, rtol=1e-12, atol=1e-12)
    obj = cls()
    assert isinstance(obj(t, p), float)
    assert obj(t, p) == pytest.approx(want.mean(), rel=1e-12, abs=1e-12)
    w = rng.uniform(0, 2, 7)
    # Keras 3: sum_over_batch_size divides the weighted sum by the batch size
    assert obj(t, p, sample_weight=w) == pytest.approx((w * want).sum() / 7, rel=1e-12, abs=1e-12)
    assert cls(reduction="sum")(t, p, sample_weight=w) == pytest.approx((w * want).sum(),
                                                                        rel=1e-12, abs=1e-12)
    np.testing.assert_allclose(cls(reduction=None)(t, p, sample_weight=w), w * want,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(cls(reduction="none")(t, p), want, rtol=1e-12, atol=1e-12)
    assert cls(reduction="mean_with_sample_weight")(t, p, sample_weight=w) == pytest.approx(
        (w * want).sum() / w.sum(), rel=1e-12, abs=1e-12)


def test_huber_delta_and_label_smoothing():
    rng = np.random.default_rng(2)
    t, p = rng.standard_normal((5, 4)) * 3, rng.standard_normal((5, 4)) * 3
    assert losses.Huber(delta=2.5)(t, p) == pytest.approx(r_huber(t, p, 2.5).mean(), rel=1e-12)
    np.testing.assert_allclose(losses.huber(t, p, delta=0.3), r_huber(t, p, 0.3), rtol=1e-12)
    tb, pb = targets("binary", 5, 4, rng), preds("sigmoid", 5, 4, rng)
    assert losses.BinaryCrossentropy(label_smoothing=0.2)(tb, pb) == pytest.approx(
        r_bce(tb, pb, 0.2).mean(), rel=1e-12)
    to, po = targets("onehot", 5, 4, rng), preds("softmax", 5, 4, rng)
    assert losses.CategoricalCrossentropy(label_smoothing=0.1)(to, po) == pytest.approx(
        r_cce(to, po, 0.1).mean(), rel=1e-12)
    z = rng.standard_normal((5, 4))
    assert losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(to, z) == \
        pytest.approx(r_cce(to, softmax(z), 0.1).mean(), rel=1e-12)
    assert losses.BinaryCrossentropy(from_logits=True)(tb, z) == pytest.approx(
        r_bce(tb, sigmoid(z)).mean(), rel=1e-9)
    with pytest.raises(ValueError, match="label_smoothing"):
        losses.CategoricalCrossentropy(label_smoothing=1.5)


def test_hinge_keeps_minus_one_one_labels():
    t = np.array([[-1.0, 1.0], [1.0, -1.0]])
    p = np.array([[0.3, -0.2], [2.0, 0.1]])
    np.testing.assert_allclose(losses.hinge(t, p), np.mean(np.maximum(1 - t * p, 0), -1))


def test_cosine_similarity_axis():
    rng = np.random.default_rng(3)
    t, p = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    np.testing.assert_allclose(losses.cosine_similarity(t.T, p.T, axis=0), r_cosine(t, p),
                               rtol=1e-12)
    with pytest.raises(NotImplementedError, match="last axis"):
        losses.CosineSimilarity(axis=0)


def test_names_aliases_and_config_round_trip():
    for name, cls in [("mae", losses.MeanAbsoluteError), ("MAPE", losses.MeanAbsolutePercentageError),
                      ("msle", losses.MeanSquaredLogarithmicError), ("huber", losses.Huber),
                      ("log_cosh", losses.LogCosh), ("kld", losses.KLDivergence),
                      ("kl_divergence", losses.KLDivergence), ("poisson", losses.Poisson),
                      ("hinge", losses.Hinge), ("squared_hinge", losses.SquaredHinge),
                      ("categorical_hinge", losses.CategoricalHinge),
                      ("cosine_similarity", losses.CosineSimilarity),
                      ("mean_absolute_error", losses.MeanAbsoluteError),
                      ("Huber", losses.Huber)]:
        assert type(losses.get(name)) is cls, name
    assert type(losses.get(losses.huber)) is losses.Huber
    with pytest.warns(DeprecationWarning, match="log_cosh"):
        assert type(losses.get("logcosh")) is losses.LogCosh
    obj = losses.Huber(delta=0.7, reduction="sum", name="h")
    back = losses.get(losses.serialize(obj))
    assert type(back) is losses.Huber and back.delta == 0.7 and back.reduction == "sum"
    assert back.name == "h"
    c = losses.get(losses.serialize(losses.CategoricalCrossentropy(True, label_smoothing=0.2)))
    assert c.from_logits and c.label_smoothing == 0.2
    assert losses.MeanAbsoluteError().name == "mean_absolute_error"
    assert losses.Huber().name == "huber_loss" and losses.LogCosh().name == "log_cosh"
    with pytest.raises(ValueError, match="reduction"):
        losses.MeanAbsoluteError(reduction="average")
    with pytest.warns(DeprecationWarning, match="sum_over_batch_size"):
        assert losses.MeanAbsoluteError(reduction="auto").reduction == "sum_over_batch_size"
    with pytest.raises(NotImplementedError, match="automatic differentiation"):
        losses.get(lambda a, b: a - b)
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("hubber")


# --------------------------------------- gradients through a float64 model --
def dense_model(k, act, seed=0):
    pynn.utils.set_random_seed(seed)
    return pynn.Sequential([L.Dense(5, activation="tanh", input_shape=(4,)),
                            L.Dense(k, activation=act)], dtype="float64")


def sgd_gradient(m, x, y, **kw):
    """The gradient fit uses: one SGD(1) step, read back from the weights."""
    m.predict(x[:1], verbose=0)     # builds the model
    p0 = np.array(m._params)
    m.train_on_batch(x, y, **kw)
    g = p0 - np.array(m._params)
    m._params[...] = p0
    return g


def check_gradient(m, x, y, loss_of_pred, tol=1e-6, seed=0):
    g = sgd_gradient(m, x, y)
    p0 = np.array(m._params)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        d = rng.standard_normal(p0.shape)
        h = 1e-6
        m._params[...] = p0 + h * d
        lp = loss_of_pred(m.predict(x, verbose=0))
        m._params[...] = p0 - h * d
        lm = loss_of_pred(m.predict(x, verbose=0))
        m._params[...] = p0
        fd, an = (lp - lm) / (2 * h), float(g @ d)
        assert abs(fd - an) <= tol * max(1.0, abs(fd)), (fd, an)


@pytest.mark.parametrize("cls,fn,ref,tk,act,kw", CASES, ids=IDS)
@pytest.mark.parametrize("weighted", [False, True])
def test_gradient_through_model(cls, fn, ref, tk, act, kw, weighted):
    rng = np.random.default_rng(4)
    n, k = 9, 3
    x, y = rng.standard_normal((n, 4)), targets(tk, n, k, rng)
    w = rng.uniform(0, 3, n) if weighted else np.ones(n)
    m = dense_model(k, act)
    m.compile(optimizer=pynn.optimizers.SGD(1.0), loss=cls(**kw))
    if weighted:
        g = sgd_gradient(m, x, y, sample_weight=w)
        m2 = dense_model(k, act)
        m2.compile(optimizer=pynn.optimizers.SGD(1.0), loss=cls(**kw))
        check = sgd_gradient(m2, x, y)
        assert not np.allclose(g, check)      # the weights matter
    # the loss evaluate reports is the reference's sum_over_batch_size mean
    got = m.evaluate(x, y, sample_weight=w if weighted else None, verbose=0)
    assert got == pytest.approx((w * ref(y, m.predict(x, verbose=0))).sum() / n, rel=1e-9,
                                abs=1e-12)
    if weighted:
        p0 = np.array(m._params)
        g = sgd_gradient(m, x, y, sample_weight=w)
        rng2 = np.random.default_rng(0)
        for _ in range(3):
            d = rng2.standard_normal(p0.shape)
            h = 1e-6
            m._params[...] = p0 + h * d
            lp = (w * ref(y, m.predict(x, verbose=0))).sum() / n
            m._params[...] = p0 - h * d
            lm = (w * ref(y, m.predict(x, verbose=0))).sum() / n
            m._params[...] = p0
            fd, an = (lp - lm) / (2 * h), float(g @ d)
            assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), (fd, an)
    else:
        check_gradient(m, x, y, lambda p: ref(y, p).mean())


def test_sparse_crossentropy_weighted_gradient_and_sum_reduction():
    rng = np.random.default_rng(5)
    n, k = 8, 4
    x, lab = rng.standard_normal((n, 4)), rng.integers(0, k, n)
    w = rng.uniform(0, 2, n)
    oh = np.eye(k)[lab]
    for red, scale in (("sum_over_batch_size", 1.0 / n), ("sum", 1.0)):
        m = dense_model(k, "softmax")
        m.compile(optimizer=pynn.optimizers.SGD(1.0),
                  loss=losses.SparseCategoricalCrossentropy(reduction=red))
        g = sgd_gradient(m, x, lab, sample_weight=w)
        p0 = np.array(m._params)
        d = rng.standard_normal(p0.shape)
        h = 1e-6
        vals = []
        for s in (1, -1):
            m._params[...] = p0 + s * h * d
            vals.append(scale * (w * r_cce(oh, m.predict(x, verbose=0))).sum())
        m._params[...] = p0
        fd = (vals[0] - vals[1]) / (2 * h)
        assert float(g @ d) == pytest.approx(fd, rel=1e-6, abs=1e-9)


def test_reduction_none_cannot_train():
    m = dense_model(2, "linear")
    with pytest.raises(NotImplementedError, match="reduction"):
        m.compile("sgd", losses.MeanAbsoluteError(reduction=None))


def test_ops_loss_rows_unknown_kind():
    from pynn.backend import Ops
    with pytest.raises(ValueError, match="unknown loss kind"):
        Ops().loss_rows("nope", np.zeros((2, 2)), np.zeros((2, 2)))


def test_compile_by_string_and_save_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    x, y = rng.standard_normal((10, 4)), rng.standard_normal((10, 2))
    m = dense_model(2, "linear")
    m.compile("sgd", loss=losses.Huber(delta=0.5))
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = pynn.models.load_model(path)
    assert type(m2.loss) is losses.Huber and m2.loss.delta == 0.5
    assert m2.evaluate(x, y, verbose=0) == pytest.approx(m.evaluate(x, y, verbose=0), rel=1e-12)
    m3 = dense_model(2, "linear")
    m3.compile("sgd", loss="mae")
    assert m3.evaluate(x, y, verbose=0) == pytest.approx(
        r_mae(y, m3.predict(x, verbose=0)).mean(), rel=1e-12)

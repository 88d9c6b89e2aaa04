"""Bad arguments raise a clear TypeError / ValueError (pynn.checks), never a
silent truncation, a wrong result or an unrelated error (issue 15, item 10)."""
import numpy as np
import pytest

import pynn
from pynn import checks, layers, optimizers


def model(loss="sparse_categorical_crossentropy", units=3, act="softmax"):
    pynn.utils.set_random_seed(0)
    m = pynn.Sequential([layers.Dense(4, activation="relu", input_shape=(3,)),
                         layers.Dense(units, activation=act)])
    m.compile(optimizers.SGD(0.01), loss)
    return m


X = np.random.default_rng(0).random((20, 3)).astype(np.float32)
Y = np.arange(20) % 3


@pytest.mark.parametrize("bs,err", [(-1, ValueError), (0, ValueError), (2.7, TypeError),
                                    ("16", TypeError), (True, TypeError), (16.0, TypeError)])
@pytest.mark.parametrize("method", ["fit", "evaluate", "predict"])
def test_batch_size_must_be_a_positive_int(method, bs, err):
    m = model()
    args = (X,) if method == "predict" else (X, Y)
    with pytest.raises(err, match="batch_size"):
        getattr(m, method)(*args, batch_size=bs, verbose=0)


@pytest.mark.parametrize("kw,err", [({"epochs": 1.9}, TypeError), ({"epochs": "2"}, TypeError),
                                    ({"epochs": -1}, ValueError),
                                    ({"initial_epoch": 0.5}, TypeError),
                                    ({"validation_freq": 0}, ValueError),
                                    ({"validation_batch_size": 1.5}, TypeError)])
def test_fit_counts_must_be_ints(kw, err):
    m = model()
    before = [w.copy() for w in m.get_weights()]
    with pytest.raises(err, match=next(iter(kw))):
        m.fit(X, Y, verbose=0, **kw)
    for a, b in zip(m.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_numpy_integers_are_ints():
    m = model()
    h = m.fit(X, Y, batch_size=np.int64(8), epochs=np.int32(2), verbose=0)
    assert len(h.history["loss"]) == 2
    assert np.isfinite(m.evaluate(X, Y, batch_size=np.int64(7), verbose=0))


@pytest.mark.parametrize("lr", [-1, -1e-3, float("nan"), float("inf")])
@pytest.mark.parametrize("opt", [optimizers.SGD, optimizers.Adam, optimizers.RMSprop])
def test_learning_rate_must_be_finite_and_non_negative(opt, lr):
    with pytest.raises(ValueError, match="learning_rate"):
        opt(learning_rate=lr)
    o = opt(learning_rate=0.1)
    with pytest.raises(ValueError, match="learning_rate"):
        o.learning_rate = lr


def test_binary_crossentropy_targets_in_0_1():
    m = model("binary_crossentropy", units=1, act="sigmoid")
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        m.evaluate(X, np.arange(20) % 64, verbose=0)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        m.fit(X, -np.ones(20), verbose=0)
    # soft labels in [0, 1] are fine, and the loss is then positive
    assert m.evaluate(X, np.linspace(0, 1, 20), verbose=0) > 0


def test_sparse_labels_in_range():
    m = model()
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.evaluate(X, np.arange(20), verbose=0)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        m.fit(X, -(np.arange(20) % 3), verbose=0)


@pytest.mark.parametrize("loss,units,act", [("sparse_categorical_crossentropy", 3, "softmax"),
                                            ("categorical_crossentropy", 3, "softmax"),
                                            ("binary_crossentropy", 1, "sigmoid"),
                                            ("mse", 1, None)])
@pytest.mark.parametrize("labels", [np.array(["a"] * 20), np.array(["1"] * 20), np.array([1j] * 20)])
def test_non_numeric_labels_raise_type_error(loss, units, act, labels):
    m = model(loss, units, act)
    if loss == "categorical_crossentropy":
        labels = np.stack([labels] * 3, axis=1)
    with pytest.raises(TypeError, match="real numbers"):
        m.fit(X, labels, verbose=0)


def test_sample_weight_must_be_numeric():
    m = model()
    with pytest.raises(TypeError, match="sample_weight"):
        m.fit(X, Y, sample_weight=np.array(["1"] * 20), verbose=0)


def test_checks_helpers():
    assert checks.integer("n", np.int16(3), 0) == 3
    with pytest.raises(ValueError, match="<= 5"):
        checks.integer("n", 6, 0, 5)
    assert checks.real("x", 2) == 2.0
    for bad in ("1", True, 1j, None):
        with pytest.raises(TypeError):
            checks.real("x", bad)
    with pytest.raises(ValueError, match="finite"):
        checks.real("x", float("inf"))
    with pytest.raises(ValueError, match="NaN"):
        checks.finite_array("w", [1.0, np.nan])

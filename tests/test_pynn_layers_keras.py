"""The Keras layers of issue 12: ReLU (Keras 3 arguments), LeakyReLU, ELU,
PReLU, Softmax, Permute, RepeatVector, ActivityRegularization (against
NumPy references of Keras 3's formulas and float64 finite differences),
their configs, summaries and files; Keras aliases and Keras 2 module
paths; the Keras names pynn lacks (NotImplementedError); channels_first.
"""
import importlib
import io
import contextlib

import numpy as np
import pytest

import pynn
from pynn import layers as L

from test_pynn_layers import CPU_OPS, build, compare_ops, fwd, grad_check


def sample(shape, seed=0, avoid=(0.0,)):
    x = np.random.default_rng(seed).uniform(-3, 3, shape)
    for k in avoid:
        x[np.abs(x - k) < 1e-3] = k + 0.3
    return x


# ---------------------------------------------------------- activation layers --

@pytest.mark.parametrize("kw", [{}, dict(max_value=6.0), dict(max_value=1.0),
                                dict(negative_slope=0.1), dict(threshold=0.5),
                                dict(max_value=2.0, negative_slope=0.05, threshold=1.0)])
def test_relu_layer_keras3_semantics(kw):
    mv, ns, th = kw.get("max_value"), kw.get("negative_slope", 0.0), kw.get("threshold", 0.0)
    x = sample((4, 3, 5), avoid=(0.0, th, mv or 0.0, 1.0, 2.0))
    ref = np.where(x > th, x, 0.0)                       # Keras 3 ReLU
    if mv is not None:
        ref = np.clip(ref, 0, mv)
    ref = ref - ns * np.maximum(th - x, 0)
    layer = build(lambda: L.ReLU(**kw), (3, 5), CPU_OPS)
    np.testing.assert_allclose(fwd(layer, x, True), ref, rtol=1e-15)
    compare_ops(lambda: L.ReLU(**kw), (3, 5), x)
    grad_check(layer, x)
    cfg = layer.get_config()
    assert cfg["max_value"] == mv and cfg["negative_slope"] == ns and cfg["threshold"] == th
    again = L.from_config("ReLU", cfg)
    np.testing.assert_allclose(again(x), ref, rtol=1e-15)


def test_relu_layer_argument_checks():
    for kw in (dict(max_value=-1), dict(negative_slope=-0.1), dict(threshold=-1),
               dict(threshold=None), dict(negative_slope="a")):
        with pytest.raises(ValueError):
            L.ReLU(**kw)


def test_leaky_relu_elu_layers():
    x = sample((5, 7), seed=1)
    lk = build(L.LeakyReLU, (7,), CPU_OPS)
    np.testing.assert_allclose(fwd(lk, x, True), np.where(x > 0, x, 0.3 * x), rtol=1e-15)
    grad_check(lk, x)
    lk2 = build(lambda: L.LeakyReLU(negative_slope=0.01), (7,), CPU_OPS)
    np.testing.assert_allclose(fwd(lk2, x, True), np.where(x > 0, x, 0.01 * x), rtol=1e-15)
    assert lk2.get_config()["negative_slope"] == 0.01
    with pytest.warns(DeprecationWarning, match="negative_slope"):
        old = L.LeakyReLU(alpha=0.2)
    assert old.get_config()["negative_slope"] == 0.2
    with pytest.raises(ValueError):
        L.LeakyReLU(negative_slope=-0.5)
    el = build(lambda: L.ELU(alpha=0.5), (7,), CPU_OPS)
    np.testing.assert_allclose(fwd(el, x, True), np.where(x > 0, x, 0.5 * np.expm1(x)),
                               rtol=1e-14)
    grad_check(el, x)
    assert L.from_config("ELU", el.get_config()).get_config()["alpha"] == 0.5
    np.testing.assert_allclose(L.ELU()(x), np.where(x > 0, x, np.expm1(x)), rtol=1e-14)


@pytest.mark.parametrize("axis", [-1, 1, 2, [1, 2]])
def test_softmax_layer(axis):
    x = sample((3, 4, 5), seed=2) * 3
    ax = tuple(axis) if isinstance(axis, list) else axis
    e = np.exp(x - x.max(axis=ax, keepdims=True))
    ref = e / e.sum(axis=ax, keepdims=True)
    layer = build(lambda: L.Softmax(axis=axis), (4, 5), CPU_OPS)
    np.testing.assert_allclose(fwd(layer, x, True), ref, rtol=1e-13)
    np.testing.assert_allclose(ref.sum(axis=ax), 1.0, rtol=1e-13)
    grad_check(layer, x)
    cfg = layer.get_config()
    assert cfg["axis"] == axis
    np.testing.assert_allclose(L.from_config("Softmax", cfg)(x), ref, rtol=1e-13)


def test_softmax_layer_axis_checks():
    with pytest.raises(ValueError, match="batch axis"):
        L.Softmax(axis=0)
    with pytest.raises(ValueError, match="out of range"):
        build(lambda: L.Softmax(axis=3), (4, 5), CPU_OPS)


def test_softmax_layer_as_output_trains_like_dense_softmax():
    """A final Softmax layer is fused with the cross-entropy like a Dense's
    softmax: the two models train identically."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 5)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    pynn.utils.set_random_seed(1)
    a = pynn.Sequential([pynn.Input((5,)), L.Dense(3, activation="softmax")])
    pynn.utils.set_random_seed(1)
    b = pynn.Sequential([pynn.Input((5,)), L.Dense(3), L.Softmax()])
    for m in (a, b):
        m.compile("sgd", "sparse_categorical_crossentropy")
    ha = a.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    hb = b.fit(x, y, epochs=3, batch_size=8, verbose=0, shuffle=False)
    np.testing.assert_allclose(ha.history["loss"], hb.history["loss"], rtol=1e-5)
    np.testing.assert_allclose(a.predict(x, verbose=0), b.predict(x, verbose=0), rtol=1e-5)


@pytest.mark.parametrize("shared_axes,shape,alpha_shape",
                         [(None, (4, 5, 3), (4, 5, 3)), ([1, 2], (4, 5, 3), (1, 1, 3)),
                          (2, (4, 5, 3), (4, 1, 3)), (None, (6,), (6,))])
def test_prelu(shared_axes, shape, alpha_shape):
    x = sample((2,) + shape, seed=3)
    layer = build(lambda: L.PReLU(shared_axes=shared_axes), shape, CPU_OPS)
    assert layer.w["alpha"].shape == alpha_shape
    assert layer.count_params() == int(np.prod(alpha_shape))
    alpha = layer.w["alpha"]
    np.testing.assert_allclose(fwd(layer, x, True), np.where(x > 0, x, alpha * x), rtol=1e-15)
    grad_check(layer, x)      # dx and d alpha
    cfg = layer.get_config()
    assert cfg["shared_axes"] == (None if shared_axes is None else
                                  list(np.atleast_1d(shared_axes)))
    assert L.from_config("PReLU", cfg).shared_axes == cfg["shared_axes"]


def test_prelu_defaults_and_refusals():
    x = sample((3, 4), seed=4)
    np.testing.assert_array_equal(L.PReLU()(x), np.maximum(x, 0))     # alpha starts at zero
    np.testing.assert_allclose(L.PReLU(alpha_initializer="ones")(x), x, rtol=0)
    with pytest.raises(NotImplementedError, match="alpha_regularizer"):
        L.PReLU(alpha_regularizer="l2")
    with pytest.raises(ValueError):
        L.PReLU(shared_axes=[0])


def test_prelu_learns_its_slope():
    """Targets y = where(x > 0, x, 0.25 x): PReLU's alpha goes to 0.25."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 2)).astype(np.float64)
    y = np.where(x > 0, x, 0.25 * x)
    m = pynn.Sequential([pynn.Input((2,)), L.PReLU()], dtype="float64")
    m.compile(pynn.optimizers.SGD(0.5), "mse")
    m.fit(x, y, epochs=40, batch_size=64, verbose=0)
    np.testing.assert_allclose(m.layers[-1].get_weights()[0], 0.25, atol=1e-3)


# ---------------------------------------------------------- reshaping layers --

@pytest.mark.parametrize("dims", [(2, 1), (3, 1, 2), (1, 2, 3), (2, 3, 1)])
def test_permute(dims):
    shape = (3, 4) if len(dims) == 2 else (2, 3, 4)
    x = sample((2,) + shape, seed=5)
    layer = build(lambda: L.Permute(dims), shape, CPU_OPS)
    ref = np.transpose(x, (0,) + dims)
    np.testing.assert_array_equal(fwd(layer, x, True), ref)
    assert layer.compute_output_shape(shape) == ref.shape[1:]
    grad_check(layer, x)
    assert L.from_config("Permute", layer.get_config()).dims == dims


def test_permute_checks():
    for bad in ((0, 1), (1, 1), (1, 3)):
        with pytest.raises(ValueError, match="permutation"):
            L.Permute(bad)
    with pytest.raises(ValueError, match="rank"):
        build(lambda: L.Permute((2, 1)), (2, 3, 4), CPU_OPS)


def test_repeat_vector():
    x = sample((3, 5), seed=6)
    layer = build(lambda: L.RepeatVector(4), (5,), CPU_OPS)
    y = fwd(layer, x, True)
    assert y.shape == (3, 4, 5)
    for i in range(4):
        np.testing.assert_array_equal(y[:, i, :], x)
    grad_check(layer, x)
    assert L.from_config("RepeatVector", layer.get_config()).n == 4
    with pytest.raises(ValueError):
        L.RepeatVector(0)
    with pytest.raises(ValueError, match="features"):
        build(lambda: L.RepeatVector(2), (2, 3), CPU_OPS)


# -------------------------------------------------------- ActivityRegularization --

def test_activity_regularization_layer_gradient():
    """backward adds d((l1 sum|x| + l2 sum x^2) / batch)/dx to dy: FD of
    L = sum(y R) + penalty(x)."""
    l1, l2 = 0.03, 0.2
    x = sample((4, 6), seed=7)
    layer = build(lambda: L.ActivityRegularization(l1=l1, l2=l2), (6,), CPU_OPS)
    R = np.random.default_rng(1).standard_normal(x.shape)

    def total(v):
        layer.ctx.losses = []          # as the model's plan does before every call
        y = layer.forward(v, True)
        return float(np.sum(y * R)) + sum(layer.losses)

    total(x)
    assert layer.losses == [pytest.approx((l1 * np.abs(x).sum() + l2 * (x * x).sum()) / 4,
                                          rel=1e-14)]
    dx = np.array(layer.backward(R.copy()), copy=True)
    d = np.random.default_rng(2).standard_normal(x.shape)
    eps = 1e-6
    num = (total(x + eps * d) - total(x - eps * d)) / (2 * eps)
    assert abs(float(np.sum(dx * d)) - num) < 1e-7 * (1 + abs(num))
    np.testing.assert_array_equal(fwd(layer, x, True), x)


def _mlp_penalty_model(l1, l2):
    pynn.utils.set_random_seed(5)
    m = pynn.Sequential([pynn.Input((3,)), L.Dense(4, activation="tanh"),
                         L.ActivityRegularization(l1=l1, l2=l2), L.Dense(2)], dtype="float64")
    m.compile(pynn.optimizers.SGD(1.0), "mse")
    return m


def _numpy_total_loss(ws, x, y, l1, l2):
    k1, b1, k2, b2 = ws
    h = np.tanh(x @ k1 + b1)
    out = h @ k2 + b2
    return (((out - y) ** 2).mean(axis=1).mean()
            + (l1 * np.abs(h).sum() + l2 * (h * h).sum()) / len(x))


def test_activity_regularization_in_the_model_loss_and_gradient():
    """Keras 3.15: loss = compiled loss + the layers' penalties (summed over
    the batch and divided by the batch size); the training step's gradient is that of
    the total (SGD with learning rate 1: the weight change is -grad)."""
    l1, l2 = 0.01, 0.05
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 2))
    m = _mlp_penalty_model(l1, l2)
    w0 = m.get_weights()
    ref = _numpy_total_loss(w0, x, y, l1, l2)
    assert m.test_on_batch(x, y) == pytest.approx(ref, rel=1e-12)
    assert m.evaluate(x, y, batch_size=8, verbose=0) == pytest.approx(ref, rel=1e-12)
    assert m.layers[1].losses[0] > 0
    loss = m.train_on_batch(x, y)
    assert loss == pytest.approx(ref, rel=1e-12)
    grads = [a - b for a, b in zip(w0, m.get_weights())]
    eps = 1e-6
    drng = np.random.default_rng(3)
    dirs = [drng.standard_normal(w.shape) for w in w0]
    num = (_numpy_total_loss([w + eps * d for w, d in zip(w0, dirs)], x, y, l1, l2) -
           _numpy_total_loss([w - eps * d for w, d in zip(w0, dirs)], x, y, l1, l2)) / (2 * eps)
    ana = sum(float(np.sum(g * d)) for g, d in zip(grads, dirs))
    assert ana == pytest.approx(num, rel=1e-6)
    # without the layer's penalty the gradient differs (the check can fail)
    m0 = _mlp_penalty_model(0.0, 0.0)
    m0.train_on_batch(x, y)
    assert not np.allclose(m0.get_weights()[0], m.get_weights()[0])


def test_activity_regularization_checks():
    with pytest.raises(ValueError):
        L.ActivityRegularization(l1=-1.0)
    c = L.ActivityRegularization(l1=0.5, l2=0.25).get_config()
    assert (c["l1"], c["l2"]) == (0.5, 0.25)


# ------------------------------------------------------ summary and files --

def _model_with_everything():
    pynn.utils.set_random_seed(2)
    inp = pynn.Input((6, 6, 2))
    h = L.Conv2D(4, 3, padding="same")(inp)
    h = L.PReLU(shared_axes=[1, 2])(h)
    h = L.ReLU(max_value=6.0)(h)
    h = L.LeakyReLU(negative_slope=0.1)(h)
    h = L.ELU(alpha=0.8)(h)
    h = L.Permute((2, 1, 3))(h)
    h = L.ActivityRegularization(l2=1e-4)(h)
    h = L.GlobalAveragePooling2D()(h)
    h = L.RepeatVector(3)(h)
    h = L.Softmax(axis=1)(h)
    h = L.Flatten()(h)
    out = L.Dense(2, activation="softmax")(h)
    return pynn.Model(inp, out)


def test_summary_lists_the_layers():
    m = _model_with_everything()
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        m.summary()
    text = buf.getvalue()
    for cls in ("PReLU", "ReLU", "LeakyReLU", "ELU", "Permute", "ActivityRegularization",
                "RepeatVector", "Softmax"):
        assert f"({cls})" in text, cls
    assert "(None, 3, 4)" in text          # RepeatVector's output
    assert "(None, 1, 1, 4)" not in text


def test_save_load_round_trip_of_every_new_layer(tmp_path):
    m = _model_with_everything()
    m.compile("adam", "categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 6, 6, 2)).astype(np.float32)
    y = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 8)]
    m.fit(x, y, epochs=1, verbose=0)
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz")
    assert [type(l).__name__ for l in m2.layers] == [type(l).__name__ for l in m.layers]
    for a, b in zip(m.layers, m2.layers):
        assert a.get_config() == b.get_config()
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    assert m2.evaluate(x, y, verbose=0) == pytest.approx(m.evaluate(x, y, verbose=0), rel=1e-6)


def test_parametrised_relu_is_not_fused_into_batch_norm():
    """BN -> ReLU() is fused into one kernel; BN -> ReLU(max_value=1) must
    not be (the clip would be lost)."""
    inp = pynn.Input((4,))
    out = L.ReLU(max_value=1.0)(L.BatchNormalization()(inp))
    m = pynn.Model(inp, out)
    x = np.linspace(-3, 3, 20, dtype=np.float32).reshape(5, 4)
    ref = np.clip(x / np.sqrt(1 + 1e-3), 0, 1)
    np.testing.assert_allclose(m.predict(x, verbose=0), ref, rtol=1e-6)


# ------------------------------------------------- aliases and module paths --

def test_aliases():
    assert L.Convolution2D is L.Conv2D
    assert L.MaxPool2D is L.MaxPooling2D
    assert L.AvgPool2D is L.AveragePooling2D
    assert L.GlobalAvgPool2D is L.GlobalAveragePooling2D
    assert L.GlobalMaxPool2D is L.GlobalMaxPooling2D
    assert L.Convolution2DTranspose is L.Conv2DTranspose
    assert L.SeparableConvolution2D is L.SeparableConv2D


@pytest.mark.parametrize("module,names", [
    ("convolutional", ["Conv2D", "Convolution2D", "Conv2DTranspose", "SeparableConv2D",
                       "DepthwiseConv2D", "ZeroPadding2D", "Cropping2D", "UpSampling2D"]),
    ("core", ["Dense", "Activation", "Dropout", "Flatten", "Reshape", "Permute", "RepeatVector",
              "ActivityRegularization"]),
    ("pooling", ["MaxPooling2D", "MaxPool2D", "AveragePooling2D", "AvgPool2D",
                 "GlobalAveragePooling2D", "GlobalAvgPool2D", "GlobalMaxPooling2D"]),
    ("normalization", ["BatchNormalization"]),
    ("advanced_activations", ["LeakyReLU", "PReLU", "ELU", "ReLU", "Softmax"]),
    ("merge", ["Add", "Concatenate", "Multiply", "Average", "Maximum", "Subtract"]),
])
def test_keras2_module_paths(module, names):
    mod = importlib.import_module(f"pynn.layers.{module}")
    for n in names:
        assert getattr(mod, n) is getattr(L, n), (module, n)


def test_thresholded_relu_keras2():
    with pytest.warns(DeprecationWarning, match="ReLU\\(threshold"):
        layer = L.ThresholdedReLU(theta=0.5)
    x = np.array([[0.2, 0.6, -1.0, 2.0]])
    np.testing.assert_array_equal(layer(x), [[0.0, 0.6, 0.0, 2.0]])
    assert type(layer) is L.ReLU


# ------------------------------------------------------ unsupported names --

def test_unsupported_layers_raise_not_implemented():
    from pynn.layers.unsupported import UNSUPPORTED
    assert {"Lambda", "LSTM", "GRU", "SimpleRNN", "Bidirectional", "TimeDistributed",
            "Embedding", "Conv1D", "Conv3D", "MaxPooling1D", "GlobalAveragePooling1D"} <= \
        set(UNSUPPORTED)
    for name in UNSUPPORTED:
        cls = getattr(L, name)
        with pytest.raises(NotImplementedError, match=cls.__name__):   # aliases: Keras' name
            cls(3)
        with pytest.raises(NotImplementedError):
            cls()
    with pytest.raises(NotImplementedError, match="layer subclass.*not loadable from files"):
        L.Lambda(lambda t: t)
    with pytest.raises(NotImplementedError, match="cannot store code"):
        L.Lambda(lambda t: t)
    with pytest.raises(NotImplementedError, match="Embedding"):
        L.Embedding(1000, 64)
    # a model file naming one: the same NotImplementedError, not "unknown class"
    with pytest.raises(NotImplementedError, match="LSTM"):
        L.from_config("LSTM", {"units": 4})


@pytest.mark.parametrize("factory", [
    lambda: L.Conv2D(2, 3, data_format="channels_first"),
    lambda: L.DepthwiseConv2D(3, data_format="channels_first"),
    lambda: L.SeparableConv2D(2, 3, data_format="channels_first"),
    lambda: L.Conv2DTranspose(2, 3, data_format="channels_first"),
    lambda: L.MaxPooling2D(data_format="channels_first"),
    lambda: L.AveragePooling2D(data_format="channels_first"),
    lambda: L.GlobalAveragePooling2D(data_format="channels_first"),
    lambda: L.GlobalMaxPooling2D(data_format="channels_first"),
    lambda: L.Flatten(data_format="channels_first"),
    lambda: L.ZeroPadding2D(data_format="channels_first"),
    lambda: L.Cropping2D(data_format="channels_first"),
    lambda: L.UpSampling2D(data_format="channels_first"),
])
def test_channels_first_is_refused_naming_channels_last(factory):
    with pytest.raises(NotImplementedError, match="channels_last"):
        factory()

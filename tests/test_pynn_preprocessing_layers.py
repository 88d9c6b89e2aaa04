"""Rescaling, Normalization (adapt) and Resizing against NumPy references of
Keras 3's formulas (Resizing: TensorFlow's half-pixel resize, written here
pixel by pixel, and values TF gives), float64 gradient checks, errors,
config round trip and save/load in a model."""
import numpy as np
import pytest

import pynn
from pynn import layers as L
from layer_checks import F64, built, config_round_trip, save_load_round_trip, summary_lines
from test_pynn_layers import fwd, grad_check


# ------------------------------------------------------------------ Rescaling --

@pytest.mark.parametrize("scale,offset", [(1 / 255.0, 0.0), (1 / 127.5, -1.0),
                                          ([0.5, 2.0, -1.0], [1.0, 0.0, 3.0])])
def test_rescaling(scale, offset):
    layer = built(L.Rescaling(scale, offset), (4, 3))
    x = np.random.default_rng(0).uniform(0, 255, (5, 4, 3))
    want = x * np.asarray(scale) + np.asarray(offset)
    np.testing.assert_allclose(fwd(layer, x, False), want, rtol=1e-15)
    np.testing.assert_allclose(fwd(layer, x, True), want, rtol=1e-15)
    grad_check(layer, x / 100)
    config_round_trip(layer)


def test_rescaling_errors_and_keras_serialised_arrays():
    with pytest.raises(ValueError, match="broadcast"):
        built(L.Rescaling([1.0, 2.0]), (4, 3))
    with pytest.raises(ValueError, match="finite"):
        L.Rescaling(float("nan"))
    cfg = {"name": "r", "scale": {"class_name": "__numpy__", "config": {"value": [1.0, 2.0],
                                                                       "dtype": "float32"}},
           "offset": 0.5}
    layer = L.from_config("Rescaling", cfg)
    np.testing.assert_array_equal(layer(np.ones((1, 2), np.float32)), [[1.5, 2.5]])


# -------------------------------------------------------------- Normalization --

def test_normalization_keras_doc_examples():
    layer = L.Normalization(axis=None)
    layer.adapt(np.array([1.0, 2.0, 3.0, 4.0, 5.0], np.float32).reshape(5, 1))
    np.testing.assert_allclose(layer(np.array([[1.0], [2.0], [3.0]], np.float32))[:, 0],
                               [-1.4142135, -0.70710677, 0.0], rtol=1e-6)
    adapt = np.array([[0.0, 7.0, 4.0], [2.0, 9.0, 6.0], [0.0, 7.0, 4.0], [2.0, 9.0, 6.0]],
                     np.float32)
    layer = L.Normalization(axis=-1)
    layer.adapt(adapt)
    np.testing.assert_allclose(layer(np.array([[0.0, 7.0, 4.0]], np.float32)), [[-1, -1, -1]])
    inv = L.Normalization(axis=-1, invert=True)
    inv.adapt(adapt)
    np.testing.assert_allclose(inv(np.array([[1.0, 2.0, 3.0]], np.float32)), [[2, 10, 8]])
    fixed = L.Normalization(mean=3.0, variance=2.0)
    np.testing.assert_allclose(fixed(np.array([[1.0], [2.0], [3.0]], np.float32))[:, 0],
                               [-1.4142135, -0.70710677, 0.0], rtol=1e-6)
    assert fixed.count_params() == 0


@pytest.mark.parametrize("axis,keep", [(-1, (3,)), (None, ()), ((1, 2), (1, 2)), (2, (2,)),
                                       ((-1, 1), (1, 3))])
@pytest.mark.parametrize("invert", [False, True])
def test_normalization_adapt_formula_and_gradient(axis, keep, invert):
    rng = np.random.default_rng(1)
    data = rng.standard_normal((20, 3, 4, 5)) * rng.uniform(0.5, 3, 5) + 4.0
    red = tuple(d for d in range(4) if d not in keep)
    mean, var = data.mean(axis=red, keepdims=True), data.var(axis=red, keepdims=True)
    layer = L.Normalization(axis=axis, invert=invert)
    layer.adapt(data)
    assert layer.dtype == "float32"       # Keras' default variable dtype (a name, as Keras 3)
    np.testing.assert_allclose(layer.get_weights()[0], np.squeeze(mean, red), rtol=1e-6)
    np.testing.assert_allclose(layer.get_weights()[1], np.squeeze(var, red), rtol=1e-6)
    # float64 copy of the layer for the formula and the gradient
    x = rng.standard_normal((6, 3, 4, 5)) * 2 + 3.0
    l64 = built(L.Normalization(axis=axis, invert=invert), (3, 4, 5))
    l64.adapt(data)
    d = np.maximum(np.sqrt(var), 1e-7)
    want = mean + x * d if invert else (x - mean) / d
    np.testing.assert_allclose(fwd(l64, x, False), want, rtol=1e-12, atol=1e-12)
    grad_check(l64, x)


def test_normalization_iterable_adapt_matches_array():
    rng = np.random.default_rng(2)
    data = rng.standard_normal((50, 4)) * [1, 2, 3, 4] + [0, 1, -2, 10]
    whole = L.Normalization()
    whole.adapt(data)
    for batches in ([data[i:i + 8] for i in range(0, 50, 8)],
                    ((data[i:i + 7], np.zeros(7)) for i in range(0, 50, 7))):
        part = L.Normalization()
        part.adapt(batches)
        for a, b in zip(whole.get_weights(), part.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="empty"):
        L.Normalization().adapt([])
    with pytest.raises(ValueError, match="built for"):
        whole.adapt(np.ones((3, 5)))
    with pytest.raises(TypeError, match="unsupported"):
        L.Normalization().adapt(3.0)


def test_normalization_given_values_and_zero_variance():
    x = np.random.default_rng(3).standard_normal((4, 2, 3))
    layer = built(L.Normalization(mean=[1.0, 2.0, 3.0], variance=[4.0, 0.0, 0.25]), (2, 3))
    want = (x - [1.0, 2.0, 3.0]) / np.maximum(np.sqrt([4.0, 0.0, 0.25]), 1e-7)
    np.testing.assert_allclose(fwd(layer, x, False), want, rtol=1e-12)
    cfg = config_round_trip(layer).get_config()
    assert cfg["mean"] == [1.0, 2.0, 3.0] and cfg["variance"] == [4.0, 0.0, 0.25]
    with pytest.raises(ValueError, match="both"):
        L.Normalization(mean=1.0)
    with pytest.raises(ValueError, match="same shape"):
        L.Normalization(mean=[1.0, 2.0], variance=1.0)
    with pytest.raises(ValueError, match="adapt"):
        layer.adapt(x)
    with pytest.raises(ValueError, match="batch axis"):
        L.Normalization(axis=-1)._build_shape(())


def test_normalization_adapted_then_in_a_model(tmp_path):
    rng = np.random.default_rng(4)
    data = rng.uniform(0, 255, (40, 6, 6, 3)).astype(np.float32)
    norm = L.Normalization(name="norm")
    norm.adapt(data)
    stats = norm.get_weights()
    m = pynn.Sequential([pynn.Input((6, 6, 3)), norm, L.Conv2D(4, 3), L.Flatten(), L.Dense(2)])
    m.compile("sgd", "mse")
    # the adapted values survive the model's weight placement and training
    m.fit(data, rng.standard_normal((40, 2)).astype(np.float32), epochs=1, verbose=0)
    for a, b in zip(norm.get_weights(), stats):
        np.testing.assert_array_equal(a, b)
    assert m.layers[0].count_params() == 7            # mean, variance, count (as Keras)
    assert any("(Normalization)" in s and s.rstrip().endswith(" 7") for s in summary_lines(m))
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz")
    for a, b in zip(m2.layers[0].get_weights(), stats):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(m.predict(data, verbose=0), m2.predict(data, verbose=0))
    # adapting again inside the model changes what it computes
    norm.adapt(data * 2)
    assert not np.allclose(m.predict(data, verbose=0), m2.predict(data, verbose=0))


# ------------------------------------------------------------------- Resizing --

def tf_resize(img, th, tw, method):
    """TensorFlow's resize (half_pixel_centers=True, no antialias) of one
    (H, W, C) image, pixel by pixel, in float32 coordinates as TF computes them."""
    f = np.float32
    h, w, _ = img.shape
    sy, sx = f(h) / f(th), f(w) / f(tw)
    out = np.zeros((th, tw, img.shape[2]))
    for oy in range(th):
        for ox in range(tw):
            if method == "nearest":
                iy = min(int(np.floor((f(oy) + f(0.5)) * sy)), h - 1)
                ix = min(int(np.floor((f(ox) + f(0.5)) * sx)), w - 1)
                out[oy, ox] = img[max(iy, 0), max(ix, 0)]
                continue
            cy, cx = (f(oy) + f(0.5)) * sy - f(0.5), (f(ox) + f(0.5)) * sx - f(0.5)
            y0, x0 = max(int(np.floor(cy)), 0), max(int(np.floor(cx)), 0)
            y1, x1 = min(int(np.ceil(cy)), h - 1), min(int(np.ceil(cx)), w - 1)
            ly, lx = float(cy - np.floor(cy)), float(cx - np.floor(cx))
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * lx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * lx
            out[oy, ox] = top + (bot - top) * ly
    return out


def test_resizing_known_tensorflow_values():
    x = np.arange(4, dtype=np.float32).reshape(1, 2, 2, 1)
    y = L.Resizing(4, 4)(x)[0, :, :, 0]
    np.testing.assert_allclose(y, [[0, .25, .75, 1], [.5, .75, 1.25, 1.5],
                                   [1.5, 1.75, 2.25, 2.5], [2, 2.25, 2.75, 3]])
    x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(L.Resizing(2, 2, interpolation="nearest")(x)[0, :, :, 0],
                                  [[5, 7], [13, 15]])
    np.testing.assert_allclose(L.Resizing(2, 2)(x)[0, :, :, 0], [[2.5, 4.5], [10.5, 12.5]])


@pytest.mark.parametrize("method", ["bilinear", "nearest"])
@pytest.mark.parametrize("src,dst", [((5, 7), (9, 4)), ((10, 3), (3, 10)), ((6, 6), (6, 6)),
                                     ((1, 4), (3, 2)), ((8, 9), (16, 18))])
def test_resizing_matches_tf_formula_and_gradient(method, src, dst):
    x = np.random.default_rng(5).standard_normal((2,) + src + (3,))
    layer = built(L.Resizing(*dst, interpolation=method), src + (3,))
    y = fwd(layer, x, False)
    assert y.shape == (2,) + dst + (3,)
    want = np.stack([tf_resize(im, *dst, method) for im in x])
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    grad_check(layer, x)


@pytest.mark.parametrize("mode", ["crop", "pad"])
@pytest.mark.parametrize("src,dst", [((4, 8), (2, 2)), ((9, 5), (3, 6)), ((6, 6), (4, 4))])
def test_resizing_aspect_ratio_crop_and_pad(mode, src, dst):
    x = np.random.default_rng(6).standard_normal((2,) + src + (2,))
    layer = built(L.Resizing(*dst, crop_to_aspect_ratio=mode == "crop",
                             pad_to_aspect_ratio=mode == "pad", fill_value=-3.0), src + (2,))
    h, w = src
    th, tw = dst
    if mode == "crop":           # Keras' crop box: the largest centred window of the target ratio
        ch = max(min(h, int(w * th / tw)), 1)
        cw = max(min(w, int(h * tw / th)), 1)
        t, l = (h - ch) // 2, (w - cw) // 2
        src_img = x[:, t:t + ch, l:l + cw]
    else:                        # the image centred in a box of the target ratio, filled around
        ph, pw = max(h, int(w * th / tw)), max(w, int(h * tw / th))
        src_img = np.full((2, ph, pw, 2), -3.0)
        t, l = (ph - h) // 2, (pw - w) // 2
        src_img[:, t:t + h, l:l + w] = x
    want = np.stack([tf_resize(im, th, tw, "bilinear") for im in src_img])
    np.testing.assert_allclose(fwd(layer, x, False), want, rtol=1e-12, atol=1e-12)
    grad_check(layer, x)


def test_resizing_float32_errors_config_and_model(tmp_path):
    x = np.random.default_rng(7).uniform(0, 255, (3, 7, 5, 3)).astype(np.float32)
    y = L.Resizing(4, 6)(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, np.stack([tf_resize(im.astype(F64), 4, 6, "bilinear")
                                            for im in x]), rtol=1e-5, atol=1e-4)
    with pytest.raises(NotImplementedError, match="bilinear"):
        L.Resizing(4, 4, interpolation="bicubic")
    with pytest.raises(ValueError, match="interpolation"):
        L.Resizing(4, 4, interpolation="cubic-ish")
    with pytest.raises(ValueError, match="height"):
        L.Resizing(0, 4)
    with pytest.raises(NotImplementedError, match="channels_last"):
        L.Resizing(4, 4, data_format="channels_first")
    with pytest.raises(ValueError, match="batches of images"):
        built(L.Resizing(4, 4), (5, 3))
    config_round_trip(L.Resizing(3, 5, interpolation="nearest", crop_to_aspect_ratio=True,
                                 name="rs"))
    m = save_load_round_trip(tmp_path, lambda: [L.Resizing(4, 4), L.Rescaling(0.5, 0.1),
                                                L.Conv2D(3, 3)], (7, 5, 2))[0]
    assert m.layers[0].output_shape == (4, 4, 2)


def test_normalization_adapt_keras2_arguments():
    data = np.arange(200, dtype=np.float64).reshape(100, 2)
    layer = L.Normalization()
    with pytest.warns(DeprecationWarning, match="Keras 2"):
        layer.adapt(data, batch_size=10, steps=3)     # the first 30 rows
    np.testing.assert_allclose(layer.get_weights()[0], data[:30].mean(axis=0), rtol=1e-6)
    with pytest.warns(DeprecationWarning):
        layer.adapt([data[:50], data[50:]], steps=1)   # the first batch
    np.testing.assert_allclose(layer.get_weights()[1], data[:50].var(axis=0), rtol=1e-6)
    with pytest.warns(DeprecationWarning):
        layer.adapt(data, batch_size=7)                # all rows: the same statistics
    np.testing.assert_allclose(layer.get_weights()[0], data.mean(axis=0), rtol=1e-6)

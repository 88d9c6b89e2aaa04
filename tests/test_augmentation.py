"""Random image augmentation layers (pynn/layers/augmentation.py) against
NumPy references written here from Keras 3's formulas: a pure-Python
Philox4x32-10 (checked on Random123's known answers) gives the per-image
uniforms, and a per-pixel loop implements the affine resampling with the
four fill modes."""
import io
import math
from contextlib import redirect_stdout

import numpy as np
import pytest

import pynn
from pynn import layers as L

F32, F64 = np.float32, np.float64
M32 = 0xFFFFFFFF


# ------------------------------------------------------------------ references --


def philox_ref(ctr, key):
    """Philox4x32-10 of one counter (4 ints) under key (2 ints), pure Python."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for _ in range(10):
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = ((p1 >> 32) ^ c1 ^ k0) & M32, p1 & M32, ((p0 >> 32) ^ c3 ^ k1) & M32, \
            p0 & M32
        k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
    return [c0, c1, c2, c3]


def test_philox_reference_known_answers():
    # Random123's kat_vectors for philox4x32_10
    assert philox_ref([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox_ref([M32] * 4, [M32, M32]) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox_ref([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344],
                      [0xA4093822, 0x299F31D0]) == [0xD16CFE09, 0x94FDCCEB, 0x5001E420,
                                                     0x24126EA1]


def uniforms_ref(n, k, seed, step):
    """(n, k) uniforms: number e = i*k + j is word e % 4 of Philox block e // 4,
    counter (block, 0, step low, step high), key (seed low, high), / 2**32."""
    words = []
    for b in range((n * k + 3) // 4):
        words += philox_ref([b & M32, b >> 32, step & M32, step >> 32], [seed & M32, seed >> 32])
    return np.array(words[:n * k], dtype=np.float64).reshape(n, k) / 2.0 ** 32


def fix_ref(i, n, mode):
    if mode == "reflect":           # (d c b a | a b c d | d c b a)
        while i < 0 or i >= n:
            i = -i - 1 if i < 0 else 2 * n - 1 - i
        return i
    if mode == "wrap":
        return i % n
    return min(max(i, 0), n - 1)


def affine_ref(img, t, interpolation, fill_mode, fill_value, out_hw=None):
    """Keras' affine_transform of one image (H, W, C), one pixel at a time."""
    h, w, c = img.shape
    oh, ow = out_hw or (h, w)
    a0, a1, a2, b0, b1, b2, c0, c1 = t
    out = np.zeros((oh, ow, c))

    def at(r, q):
        if fill_mode == "constant" and not (0 <= r < h and 0 <= q < w):
            return np.full(c, fill_value)
        return img[fix_ref(r, h, fill_mode), fix_ref(q, w, fill_mode)].astype(np.float64)

    for y in range(oh):
        for x in range(ow):
            k = c0 * x + c1 * y + 1
            xi, yi = (a0 * x + a1 * y + a2) / k, (b0 * x + b1 * y + b2) / k
            if interpolation == "nearest":
                out[y, x] = at(int(np.rint(yi)), int(np.rint(xi)))
            else:
                y0, x0 = math.floor(yi), math.floor(xi)
                fy, fx = yi - y0, xi - x0
                out[y, x] = ((1 - fy) * ((1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1))
                             + fy * ((1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)))
    return out


def run(layer, x, training=True, seed=1234, step=0, dtype=F64):
    """The layer's forward on x with a given stream."""
    layer._build(x.shape[1:], pynn.backend.get_ops("numpy"), dtype)
    layer.stream_seed, layer.step = seed, step
    return np.array(layer.forward(np.ascontiguousarray(x, dtype=dtype), training), copy=True)


def images(n=3, h=5, w=6, c=2, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (n, h, w, c))


ALL = [lambda: L.RandomFlip(), lambda: L.RandomFlip("horizontal"),
       lambda: L.RandomTranslation(0.3, (-0.2, 0.4)), lambda: L.RandomRotation(0.2),
       lambda: L.RandomZoom(0.3, (-0.2, 0.1)), lambda: L.RandomCrop(3, 4),
       lambda: L.RandomContrast(0.4), lambda: L.RandomBrightness((-0.3, 0.1))]


# ------------------------------------------------------------------ shapes, streams --


@pytest.mark.parametrize("make", ALL)
@pytest.mark.parametrize("dtype", [F32, F64])
def test_shapes_dtypes_and_identity_at_inference(make, dtype):
    x = images()
    layer = make()
    y = run(layer, x, training=True, dtype=dtype)
    want = (3, 3, 4, 2) if isinstance(layer, L.RandomCrop) else x.shape
    assert y.shape == want and y.dtype == dtype
    assert layer.compute_output_shape(x.shape[1:]) == want[1:]
    if not isinstance(layer, L.RandomCrop):
        np.testing.assert_array_equal(run(make(), x, training=False, dtype=dtype),
                                      x.astype(dtype))
        assert not np.array_equal(y, x.astype(dtype))      # it did something in training


@pytest.mark.parametrize("make", ALL)
def test_stream_determinism(make):
    x = images(n=6)
    a = run(make(), x, seed=7, step=3)
    np.testing.assert_array_equal(a, run(make(), x, seed=7, step=3))
    assert not np.array_equal(a, run(make(), x, seed=7, step=4))   # per step (and rank)
    assert not np.array_equal(a, run(make(), x, seed=8, step=3))   # per seed
    if not isinstance(make(), L.RandomCrop):     # (RandomCrop: one window per batch)
        # image i depends only on its own numbers, not on the batch size
        np.testing.assert_array_equal(run(make(), x[:2], seed=7, step=3), a[:2])


def test_same_output_for_any_thread_count():
    x = images(n=4)
    outs = []
    for n in (1, 2):
        pynn.utils.set_num_threads(n)
        try:
            outs.append(run(L.RandomRotation(0.3), x, seed=5, step=2, dtype=F32))
        finally:
            pynn.utils.set_num_threads(None)
    np.testing.assert_array_equal(outs[0], outs[1])


def test_eager_call_trains_by_default_and_draws_anew():
    x = images(n=4).astype(F32)
    layer = L.RandomRotation(0.3, seed=3)
    a, b = layer(x), layer(x)
    assert not np.array_equal(a, x) and not np.array_equal(a, b)
    np.testing.assert_array_equal(layer(x, training=False), x)
    again = L.RandomRotation(0.3, seed=3)
    np.testing.assert_array_equal(again(x), a)                 # reproducible from seed=


# ------------------------------------------------------------------ transforms --


def test_flip_modes_match_the_stream():
    x = images(n=8)
    u = uniforms_ref(8, 1, 99, 5)[:, 0]
    flip = u <= 0.5
    for mode, ref in (("horizontal", x[:, :, ::-1]), ("vertical", x[:, ::-1]),
                      ("horizontal_and_vertical", x[:, ::-1, ::-1])):
        y = run(L.RandomFlip(mode), x, seed=99, step=5)
        np.testing.assert_array_equal(y, np.where(flip[:, None, None, None], ref, x))
    assert 0 < flip.sum() < 8


def test_flip_fraction_is_one_half():
    n = 4000
    x = np.random.default_rng(1).uniform(size=(n, 2, 3, 1))
    y = run(L.RandomFlip("horizontal"), x, seed=2024, step=11)
    flipped = np.all(y == x[:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(y == x, axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert abs(flipped.mean() - 0.5) < 0.04          # 5 standard deviations


def test_rotation_by_90_degrees_is_rot90():
    x = images(n=2, h=5, w=5)
    y = run(L.RandomRotation((0.25, 0.25)), x)        # +90 degrees: counter-clockwise
    np.testing.assert_allclose(y, np.rot90(x, 1, axes=(1, 2)), atol=1e-9)
    y = run(L.RandomRotation((-0.25, -0.25)), x)
    np.testing.assert_allclose(y, np.rot90(x, -1, axes=(1, 2)), atol=1e-9)


def test_integer_translation():
    x = images(n=2, h=4, w=6)
    layer = L.RandomTranslation((0.25, 0.25), (-0.5, -0.5), fill_mode="constant", fill_value=-1)
    y = run(layer, x)                                  # down 1 row, left 3 columns
    ref = np.full_like(x, -1.0)
    ref[:, 1:, :3] = x[:, :3, 3:]
    np.testing.assert_allclose(y, ref, atol=1e-9)


@pytest.mark.parametrize("mode,row", [("reflect", [2, 1, 1, 2, 3, 4]), ("wrap", [3, 4, 1, 2, 3, 4]),
                                      ("nearest", [1, 1, 1, 2, 3, 4]),
                                      ("constant", [9, 9, 1, 2, 3, 4])])
def test_fill_modes_by_hand(mode, row):
    x = np.array([1.0, 2, 3, 4]).reshape(1, 1, 4, 1)
    layer = L.RandomTranslation(0.0, (0.5, 0.5), fill_mode=mode, fill_value=9)
    y = run(layer, x)                                  # content 2 columns to the right
    np.testing.assert_allclose(y.ravel(), row[:2] + [1, 2])


def test_zoom_in_2x_about_the_center():
    h = w = 5
    r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    x = (3.0 * r + 0.5 * c)[None, :, :, None]          # a linear ramp: bilinear is exact
    y = run(L.RandomZoom((-0.5, -0.5)), x)             # zoom factor 0.5: 2x magnified
    ref = 3.0 * (0.5 * r + 1.0) + 0.5 * (0.5 * c + 1.0)
    np.testing.assert_allclose(y[0, :, :, 0], ref, atol=1e-9)
    y = run(L.RandomZoom((-0.5, -0.5), (0.0, 0.0)), x)  # rows only
    np.testing.assert_allclose(y[0, :, :, 0], 3.0 * (0.5 * r + 1.0) + 0.5 * c, atol=1e-9)


@pytest.mark.parametrize("interpolation", ["bilinear", "nearest"])
@pytest.mark.parametrize("fill_mode", ["reflect", "wrap", "constant", "nearest"])
@pytest.mark.parametrize("kind", ["rotation", "translation", "zoom"])
def test_affine_layers_against_the_per_pixel_reference(kind, fill_mode, interpolation):
    x = images(n=3, h=5, w=7)
    seed, step = 4321, 9
    kw = dict(fill_mode=fill_mode, interpolation=interpolation, fill_value=-7.0)
    h, w = 5, 7
    if kind == "rotation":
        layer = L.RandomRotation((-0.3, 0.2), **kw)
        u = uniforms_ref(3, 1, seed, step)
        ts = []
        for (v,) in u:
            a = (-0.3 + v * 0.5) * 2 * math.pi
            cs, sn = math.cos(a), math.sin(a)
            ts.append([cs, -sn, ((w - 1) - (cs * (w - 1) - sn * (h - 1))) / 2,
                       sn, cs, ((h - 1) - (sn * (w - 1) + cs * (h - 1))) / 2, 0, 0])
    elif kind == "translation":
        layer = L.RandomTranslation((-0.6, 0.5), 0.7, **kw)
        u = uniforms_ref(3, 2, seed, step)
        ts = [[1, 0, -(-0.7 + b * 1.4) * w, 0, 1, -(-0.6 + a * 1.1) * h, 0, 0] for a, b in u]
    else:
        layer = L.RandomZoom((-0.4, 0.6), (0.1, 0.3), **kw)
        u = uniforms_ref(3, 2, seed, step)
        ts = []
        for a, b in u:
            zy, zx = 1 + (-0.4 + a), 1 + (0.1 + 0.2 * b)
            ts.append([zx, 0, (w - 1) / 2 * (1 - zx), 0, zy, (h - 1) / 2 * (1 - zy), 0, 0])
    y = run(layer, x, seed=seed, step=step)
    ref = np.stack([affine_ref(x[i], ts[i], interpolation, fill_mode, -7.0) for i in range(3)])
    np.testing.assert_allclose(y, ref, atol=1e-8)


def test_contrast_formula():
    x = images(n=4)
    y = run(L.RandomContrast((0.3, 0.6)), x, seed=11, step=2)
    f = 1 - 0.3 + uniforms_ref(4, 1, 11, 2)[:, 0] * 0.9
    mean = x.mean(axis=(1, 2), keepdims=True)
    ref = np.clip((x - mean) * f[:, None, None, None] + mean, 0, 255)
    np.testing.assert_allclose(y, ref, rtol=1e-12, atol=1e-9)
    y = run(L.RandomContrast(0.5, value_range=(0, 1)), x / 255, seed=11, step=2)
    f = 0.5 + uniforms_ref(4, 1, 11, 2)[:, 0] * 1.0
    m = (x / 255).mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(y, np.clip((x / 255 - m) * f[:, None, None, None] + m, 0, 1),
                               atol=1e-12)


def test_brightness_formula():
    x = images(n=4)
    y = run(L.RandomBrightness(0.2), x, seed=13, step=1)
    d = (-0.2 + uniforms_ref(4, 1, 13, 1)[:, 0] * 0.4) * 255
    np.testing.assert_allclose(y, np.clip(x + d[:, None, None, None], 0, 255), atol=1e-9)
    y = run(L.RandomBrightness((-0.5, 0.5), value_range=(-1, 1)), x / 255, seed=13, step=1)
    d = (-0.5 + uniforms_ref(4, 1, 13, 1)[:, 0]) * 2
    np.testing.assert_allclose(y, np.clip(x / 255 + d[:, None, None, None], -1, 1), atol=1e-12)


def test_random_crop_training_window_from_the_stream():
    x = images(n=3, h=7, w=9)
    y = run(L.RandomCrop(4, 5), x, seed=21, step=6)
    u = uniforms_ref(1, 2, 21, 6)[0]
    top, left = int(u[0] * 4), int(u[1] * 5)
    np.testing.assert_array_equal(y, x[:, top:top + 4, left:left + 5])   # one window per batch


def test_random_crop_inference_is_center_crop_and_resize():
    x = images(n=2, h=6, w=8)
    # same aspect ratio: the whole image, resized 2x down (half-pixel bilinear = 2x2 mean)
    y = run(L.RandomCrop(3, 4), x, training=False)
    np.testing.assert_allclose(y, x.reshape(2, 3, 2, 4, 2, 2).mean(axis=(2, 4)), atol=1e-9)
    # narrower target: the center window, no resize
    y = run(L.RandomCrop(6, 3), x, training=False)
    np.testing.assert_array_equal(y, x[:, :, 2:5])
    # training with an input not larger than the target: the inference path too
    y = run(L.RandomCrop(6, 3), x, training=True)
    np.testing.assert_array_equal(y, x[:, :, 2:5])
    # upsampling (clamped at the window's edges)
    x1 = images(n=1, h=2, w=2, c=1)
    y = run(L.RandomCrop(4, 4), x1, training=False)
    ref = affine_ref(x1[0], [0.5, 0, -0.25, 0, 0.5, -0.25, 0, 0], "bilinear", "nearest", 0, (4, 4))
    np.testing.assert_allclose(y[0], ref, atol=1e-12)


# ------------------------------------------------------------------ arguments --


def test_bad_arguments():
    with pytest.raises(ValueError, match="mode"):
        L.RandomFlip("diagonal")
    with pytest.raises(ValueError, match="factor"):
        L.RandomRotation(1.5)
    with pytest.raises(ValueError, match="height_factor"):
        L.RandomTranslation((0.1, 0.2, 0.3), 0.1)
    with pytest.raises(ValueError, match="width_factor"):
        L.RandomZoom(0.1, -2)
    with pytest.raises(ValueError, match="factor"):
        L.RandomContrast(-0.1)
    with pytest.raises(ValueError, match="value_range"):
        L.RandomBrightness(0.1, value_range=3)
    with pytest.raises(NotImplementedError, match="fill_mode"):
        L.RandomRotation(0.1, fill_mode="mirror")
    with pytest.raises(NotImplementedError, match="interpolation"):
        L.RandomZoom(0.1, interpolation="bicubic")
    with pytest.raises(NotImplementedError, match="channels_last"):
        L.RandomFlip(data_format="channels_first")
    with pytest.raises(ValueError, match="height, width, channels"):
        L.RandomFlip()(pynn.Input((4, 4)))
    with pytest.raises(ValueError, match="fully defined"):
        L.RandomCrop(2, 2)(pynn.Input((None, 4, 3)))


@pytest.mark.parametrize("make", ALL)
def test_config_round_trip(make):
    layer = make()
    cfg = layer.get_config()
    again = pynn.layers.from_config(type(layer).__name__, cfg)
    assert again.get_config() == cfg
    x = images(n=3)
    np.testing.assert_array_equal(run(layer, x, seed=3, step=1), run(again, x, seed=3, step=1))


# ------------------------------------------------------------------ in models --


def _data(n=256, seed=0):
    """8x8 grey images: class 1 is brighter (a property augmentation keeps)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = rng.uniform(0, 0.5, (n, 8, 8, 1)) + 0.5 * y[:, None, None, None]
    return x.astype(F32), y


def _model(aug=True):
    inp = pynn.Input((8, 8, 1))
    h = inp
    if aug:
        h = pynn.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.1),
                             L.RandomZoom(0.1), L.RandomTranslation(0.1, 0.1),
                             L.RandomContrast(0.1, value_range=(0, 1)),
                             L.RandomBrightness(0.05, value_range=(0, 1))])(h)
    h = L.Conv2D(4, 3, activation="tanh")(h)
    h = L.GlobalAveragePooling2D()(h)
    out = L.Dense(2, activation="softmax")(h)
    return pynn.Model(inp, out)


def test_model_trains_through_augmentation_and_predicts_without_it(tmp_path):
    pynn.utils.set_random_seed(3)
    x, y = _data()
    m = _model()
    m.compile(optimizer=pynn.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
              metrics=["accuracy"])
    with redirect_stdout(io.StringIO()) as s:
        m.layers[1].summary()
    assert "(RandomFlip)" in s.getvalue() and "(RandomBrightness)" in s.getvalue()
    hist = m.fit(x, y, epochs=8, batch_size=32, verbose=0)
    loss = hist.history["loss"]
    assert loss[-1] < 0.7 * loss[0]
    assert m.evaluate(x, y, verbose=0)[1] > 0.9
    p = m.predict(x, verbose=0)
    np.testing.assert_array_equal(p, m.predict(x, verbose=0))
    plain = _model(aug=False)
    plain.set_weights(m.get_weights())
    np.testing.assert_allclose(plain.predict(x, verbose=0), p, rtol=1e-6, atol=1e-7)
    path = tmp_path / "aug.keras"
    m.save(path)
    m2 = pynn.models.load_model(path)
    np.testing.assert_array_equal(m2.predict(x, verbose=0), p)
    assert [type(l).__name__ for l in m2.layers[1].layers] == [
        "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
        "RandomBrightness"]
    assert m2.layers[1].layers[1].get_config() == m.layers[1].layers[1].get_config()


def test_fit_is_reproducible_from_the_seed_and_depends_on_it():
    x, y = _data(64)

    def train(seed):
        pynn.utils.set_random_seed(seed)
        m = _model()
        m.compile("sgd", "sparse_categorical_crossentropy")
        m.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return m.get_weights()

    a, b = train(5), train(5)
    for u, v in zip(a, b):
        np.testing.assert_array_equal(u, v)
    c = train(6)
    assert any(not np.array_equal(u, v) for u, v in zip(a, c))


def test_sequential_with_augmentation_first():
    pynn.utils.set_random_seed(1)
    x, y = _data(64)
    m = pynn.Sequential([pynn.Input((8, 8, 1)), L.RandomFlip(), L.RandomCrop(6, 6),
                         L.Conv2D(2, 3), L.Flatten(), L.Dense(2, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, epochs=1, batch_size=16, verbose=0)
    assert m.predict(x, verbose=0).shape == (64, 2)
    assert m.layers[1].output_shape == (6, 6, 1)


def test_input_gradient_is_refused_with_a_clear_message():
    x, y = _data(32)
    inp = pynn.Input((8, 8, 1))
    h = L.Conv2D(1, 1)(inp)
    h = L.RandomFlip(name="late_flip")(h)
    out = L.Dense(2, activation="softmax")(L.Flatten()(h))
    m = pynn.Model(inp, out)
    m.compile("sgd", "sparse_categorical_crossentropy")
    with pytest.raises(NotImplementedError, match="late_flip.*before the first trainable"):
        m.fit(x, y, epochs=1, batch_size=16, verbose=0)


def test_augmentation_sequential_called_on_arrays_augments_like_keras3():
    pynn.utils.set_random_seed(2)
    aug = pynn.Sequential([L.RandomFlip("horizontal"), L.RandomRotation(0.2)])
    x = images(n=4, h=6, w=6, c=3).astype(F32)
    a, b = aug(x), aug(x)                       # training defaults to True, new draws each call
    assert a.shape == x.shape and not np.array_equal(a, x) and not np.array_equal(a, b)
    np.testing.assert_array_equal(aug(x, training=False), x)
    np.testing.assert_array_equal(aug.predict(x, verbose=0), x)
    dense = pynn.Sequential([pynn.Input((6, 6, 3)), L.Dense(2)])   # models with weights: as before
    np.testing.assert_array_equal(dense(x), dense.predict(x, verbose=0))
    with pytest.raises(NotImplementedError, match="training=False"):
        dense(x, training=True)

"""pynn.preprocessing.image.ImageDataGenerator (Keras' legacy API): the
iterator protocol of NumpyArrayIterator, rescale and the sample-/feature-
wise statistics against NumPy formulas, the transforms against
hand-computed images."""
import numpy as np
import pytest

import pynn
from pynn import layers as L
from pynn.preprocessing.image import ImageDataGenerator


def data(n=10, h=6, w=6, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (n, h, w, c)).astype(np.float32), np.arange(n)


def test_module_paths():
    import pynn.preprocessing.image as image_module
    assert pynn.preprocessing.image is image_module
    assert image_module.ImageDataGenerator is ImageDataGenerator


def test_flow_protocol_len_index_and_endless_iteration():
    x, y = data(10)
    it = ImageDataGenerator(rescale=1 / 255.0).flow(x, y, batch_size=4, seed=3)
    assert len(it) == 3
    assert iter(it) is it
    seen = []
    for _ in range(3):                                  # one epoch through next()
        bx, by = next(it)
        assert bx.dtype == np.float32 and bx.shape[1:] == (6, 6, 3)
        np.testing.assert_allclose(bx, x[by] * np.float32(1 / 255.0), rtol=1e-6)
        seen.append(by)
    assert [len(b) for b in seen] == [4, 4, 2]          # the last batch holds the rest
    assert sorted(np.concatenate(seen).tolist()) == list(range(10))
    second = np.concatenate([next(it)[1] for _ in range(3)])   # forever, reshuffled
    assert sorted(second.tolist()) == list(range(10))
    assert not np.array_equal(second, np.concatenate(seen))
    # indexable like a Sequence: the batches of one epoch order
    order = np.concatenate([it[i][1] for i in range(len(it))])
    assert sorted(order.tolist()) == list(range(10))
    with pytest.raises(IndexError):
        it[3]
    it.on_epoch_end()
    assert not np.array_equal(np.concatenate([it[i][1] for i in range(3)]), order)


def test_flow_without_shuffle_y_none_and_sample_weight():
    x, y = data(5)
    g = ImageDataGenerator()
    it = g.flow(x, batch_size=2, shuffle=False)
    np.testing.assert_array_equal(next(it), x[:2])
    w = np.linspace(0, 1, 5)
    bx, by, bw = g.flow(x, y, batch_size=5, shuffle=False, sample_weight=w)[0]
    np.testing.assert_array_equal(bx, x)
    np.testing.assert_array_equal(by, y)
    np.testing.assert_array_equal(bw, w)


def test_flow_errors():
    x, y = data(5)
    g = ImageDataGenerator()
    with pytest.raises(ValueError, match="same length"):
        g.flow(x, y[:4])
    with pytest.raises(ValueError, match="rank 4"):
        g.flow(x[0], y)
    with pytest.raises(ValueError, match="batch_size"):
        g.flow(x, y, batch_size=0)
    with pytest.raises(ValueError, match="subset"):
        g.flow(x, y, subset="test")
    with pytest.raises(NotImplementedError, match="zca"):
        ImageDataGenerator(zca_whitening=True)
    with pytest.raises(NotImplementedError, match="RandomBrightness"):
        ImageDataGenerator(brightness_range=(0.5, 1.5))
    with pytest.raises(NotImplementedError, match="flow_from_directory"):
        g.flow_from_directory("somewhere")
    with pytest.raises(NotImplementedError, match="fill_mode"):
        ImageDataGenerator(fill_mode="mirror")
    with pytest.raises(ValueError, match="zoom_range"):
        ImageDataGenerator(zoom_range=(0.5, 1.0, 2.0))


def test_validation_split_subsets():
    x, y = data(10)
    g = ImageDataGenerator(validation_split=0.3)
    vit = g.flow(x, y, batch_size=2, subset="validation")
    val = np.concatenate([vit[i][1] for i in range(len(vit))])
    tr = g.flow(x, y, batch_size=4, subset="training")
    assert sorted(val.tolist()) == [0, 1, 2] and len(tr) == 2


def test_featurewise_statistics_and_standardize():
    x, _ = data(8)
    g = ImageDataGenerator(featurewise_center=True, featurewise_std_normalization=True)
    g.fit(x)
    mean = x.astype(np.float64).mean(axis=(0, 1, 2))
    std = (x - x.mean(axis=(0, 1, 2))).astype(np.float64).std(axis=(0, 1, 2))
    np.testing.assert_allclose(g.mean.ravel(), mean, rtol=1e-5)
    np.testing.assert_allclose(g.std.ravel(), std, rtol=1e-4)
    bx = g.flow(x, batch_size=8, shuffle=False)[0]
    np.testing.assert_allclose(bx, (x - mean) / (std + 1e-6), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="rank 4"):
        g.fit(x[0])


def test_featurewise_without_fit_warns():
    x, _ = data(2)
    g = ImageDataGenerator(featurewise_center=True)
    with pytest.warns(UserWarning, match="fit"):
        g.flow(x, batch_size=2)[0]


def test_samplewise_and_rescale_order():
    x, _ = data(4)
    g = ImageDataGenerator(rescale=0.5, samplewise_center=True, samplewise_std_normalization=True)
    bx = g.flow(x, batch_size=4, shuffle=False)[0]
    r = x.astype(np.float64) * 0.5
    m = r.mean(axis=(1, 2, 3), keepdims=True)
    s = (r - m).std(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(bx, (r - m) / (s + 1e-6), rtol=1e-4, atol=1e-5)


def test_preprocessing_function_runs_per_image_first():
    x, _ = data(3)
    g = ImageDataGenerator(preprocessing_function=lambda im: im[::-1], rescale=2.0)
    bx = g.flow(x, batch_size=3, shuffle=False)[0]
    np.testing.assert_allclose(bx, x[:, ::-1] * 2.0)


def test_same_seed_same_batches_other_seed_others():
    x, y = data(12)
    g = ImageDataGenerator(rotation_range=30, width_shift_range=0.2, height_shift_range=0.2,
                           shear_range=10, zoom_range=0.2, horizontal_flip=True,
                           channel_shift_range=10.0)
    a = next(g.flow(x, y, batch_size=4, seed=7))
    b = next(g.flow(x, y, batch_size=4, seed=7))
    c = next(g.flow(x, y, batch_size=4, seed=8))
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[0], c[0])
    it = g.flow(x, y, batch_size=4, seed=7)
    first, second = next(it), next(it)
    assert first[0].shape == (4, 6, 6, 3) and second[0].dtype == np.float32
    p = g.get_random_transform((6, 6, 3), seed=5)
    assert p == g.get_random_transform((6, 6, 3), seed=5)
    assert -30 <= p["theta"] <= 30 and abs(p["tx"]) <= 1.2 and abs(p["ty"]) <= 1.2
    assert 0.8 <= p["zx"] <= 1.2 and -10 <= p["shear"] <= 10


def test_horizontal_flip_fraction():
    n = 2000
    x = np.random.default_rng(2).uniform(size=(n, 2, 3, 1)).astype(np.float32)
    g = ImageDataGenerator(horizontal_flip=True)
    bx, idx = next(g.flow(x, np.arange(n), batch_size=n, seed=1))
    flipped = np.all(bx == x[idx][:, :, ::-1], axis=(1, 2, 3))
    kept = np.all(bx == x[idx], axis=(1, 2, 3))
    assert np.all(flipped ^ kept)
    assert abs(flipped.mean() - 0.5) < 0.06


def test_integer_shifts_by_hand():
    x, y = data(6, h=5, w=7, c=1)
    g = ImageDataGenerator(width_shift_range=[2], fill_mode="constant", cval=-1.0)
    bx, by = next(g.flow(x, y, batch_size=6, seed=4))
    right = np.full_like(x, -1.0)
    right[:, :, 2:] = x[:, :, :-2]
    left = np.full_like(x, -1.0)
    left[:, :, :-2] = x[:, :, 2:]
    for img, i in zip(bx, by):
        assert np.allclose(img, right[i], atol=1e-4) or np.allclose(img, left[i], atol=1e-4)
    g = ImageDataGenerator(height_shift_range=1, fill_mode="nearest")   # int 1: choice of {0}
    bx, by = next(g.flow(x, y, batch_size=6, seed=4))
    np.testing.assert_allclose(bx, x[by], atol=1e-4)


def test_apply_transform_rotation_and_zoom_by_hand():
    g = ImageDataGenerator(fill_mode="nearest")
    img = np.random.default_rng(0).uniform(size=(5, 5, 2)).astype(np.float32)
    np.testing.assert_allclose(g.apply_transform(img, {"theta": 90}), np.rot90(img, 1),
                               atol=1e-5)
    np.testing.assert_allclose(g.apply_transform(img, {"flip_horizontal": True}), img[:, ::-1])
    r, c = np.meshgrid(np.arange(5), np.arange(5), indexing="ij")
    ramp = (3.0 * r + 0.5 * c)[:, :, None].astype(np.float32)
    out = g.apply_transform(ramp, {"zx": 0.5, "zy": 0.5})   # 2x magnified about the center
    np.testing.assert_allclose(out[:, :, 0], 3.0 * (0.5 * r + 1) + 0.5 * (0.5 * c + 1),
                               atol=1e-5)
    out = g.apply_transform(ramp, {"tx": 1.0, "ty": -2.0})  # whole-pixel shifts (nearest fill)
    ref = ramp[np.clip(np.arange(5) + 1, 0, 4)][:, np.clip(np.arange(5) - 2, 0, 4)]
    np.testing.assert_allclose(out, ref, atol=1e-5)
    sh = g.apply_transform(ramp, {"shear": 30.0})
    assert sh.shape == ramp.shape and not np.allclose(sh, ramp)


def test_fit_with_augment_rounds():
    x, _ = data(4)
    g = ImageDataGenerator(featurewise_center=True, horizontal_flip=True)
    g.fit(x, augment=True, rounds=3, seed=1)
    # flips keep every channel's mean
    np.testing.assert_allclose(g.mean.ravel(), x.mean(axis=(0, 1, 2)), rtol=1e-5)


def test_training_a_model_on_flow_batches():
    pynn.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 128)
    x = (rng.uniform(0, 128, (128, 8, 8, 1)) + 127 * y[:, None, None, None]).astype(np.float32)
    g = ImageDataGenerator(rescale=1 / 255.0, rotation_range=10, width_shift_range=0.1,
                           height_shift_range=0.1, zoom_range=0.1, horizontal_flip=True)
    m = pynn.Sequential([pynn.Input((8, 8, 1)), L.Conv2D(4, 3, activation="tanh"),
                         L.GlobalAveragePooling2D(), L.Dense(2, activation="softmax")])
    m.compile(pynn.optimizers.Adam(0.05), "sparse_categorical_crossentropy", metrics=["accuracy"])
    it = g.flow(x, y, batch_size=32, seed=1)
    losses = [m.train_on_batch(*next(it))[0] for _ in range(4 * len(it))]
    assert np.mean(losses[-4:]) < 0.5 * np.mean(losses[:4])
    assert m.evaluate(x / 255.0, y, verbose=0)[1] > 0.9

"""SpatialDropout1D/2D/3D, GaussianNoise, GaussianDropout: the documented
Philox stream (reference written here from philox4x32), identity at
inference, determinism from (seed, step), statistics of the noise, float64
gradient checks, thread-count independence, config and save/load."""
import math

import numpy as np
import pytest

import nnkernels as nk
from pynn import backend, layers as L
from layer_checks import F64, NUMPY_OPS, built, config_round_trip, save_load_round_trip
from test_pynn_layers import fwd, grad_check


def ref_normal(n, seed, offset):
    """Box-Muller on Philox4x32-10 words: block b (counter b, offset; key
    seed) gives elements 4b..4b+3 from words (w0, w1) and (w2, w3)."""
    out = []
    key = np.array([seed & 0xFFFFFFFF, seed >> 32], np.uint32)
    for b in range((n + 3) // 4):
        ctr = np.array([[b & 0xFFFFFFFF, b >> 32, offset & 0xFFFFFFFF, offset >> 32]], np.uint32)
        w = [int(v) for v in backend.philox4x32(ctr, key)[0]]
        for k in (0, 2):
            r = math.sqrt(-2.0 * math.log((w[k] + 1) / 2.0 ** 32))
            t = 2.0 * math.pi * w[k + 1] / 2.0 ** 32
            out += [r * math.cos(t), r * math.sin(t)]
    return np.array(out[:n])


@pytest.mark.parametrize("n,seed,offset", [(1, 0, 0), (7, 5, 3), (13, 2 ** 40 + 9, 2 ** 33 + 1)])
def test_philox_normal_is_the_documented_stream(n, seed, offset):
    np.testing.assert_allclose(backend.philox_normal((n,), seed, offset),
                               ref_normal(n, seed, offset), rtol=1e-13, atol=1e-13)


def test_philox_normal_statistics():
    z = backend.philox_normal((400_000,), 77, 5)
    # mean and variance of 4e5 standard normals: standard errors 1.6e-3, 2.2e-3
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.015
    assert abs(np.mean(np.abs(z) < 1.0) - 0.6827) < 0.005
    assert abs(np.corrcoef(z[:-1], z[1:])[0, 1]) < 0.01
    assert np.isfinite(z).all()
    assert not np.array_equal(z[:100], backend.philox_normal((100,), 77, 6))
    assert not np.array_equal(z[:100], backend.philox_normal((100,), 78, 5))


# ---------------------------------------------------------------- GaussianNoise --

def test_gaussian_noise_forward_inference_and_gradient():
    layer = built(L.GaussianNoise(0.3), (4, 5))
    x = np.random.default_rng(0).standard_normal((6, 4, 5))
    want = x + 0.3 * ref_normal(x.size, 12345, 3).reshape(x.shape)
    np.testing.assert_allclose(fwd(layer, x, True), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(fwd(layer, x, True), fwd(layer, x, True))   # same step
    np.testing.assert_array_equal(fwd(layer, x, False), x)
    grad_check(layer, x)
    layer.step += 1
    assert not np.allclose(fwd(layer, x, True), want)


def test_gaussian_noise_statistics_and_dtype():
    layer = built(L.GaussianNoise(0.5), (100, 100), dtype=np.float32)
    x = np.full((8, 100, 100), 2.0, np.float32)
    y = fwd(layer, x, True)
    assert y.dtype == np.float32
    noise = (y - x).astype(F64)
    assert abs(noise.mean()) < 0.005 and abs(noise.std() - 0.5) < 0.005


# -------------------------------------------------------------- GaussianDropout --

@pytest.mark.parametrize("rate", [0.1, 0.5])
def test_gaussian_dropout(rate):
    layer = built(L.GaussianDropout(rate), (3, 4))
    x = np.random.default_rng(1).standard_normal((5, 3, 4))
    sd = math.sqrt(rate / (1 - rate))
    want = x * (1 + sd * ref_normal(x.size, 12345, 3).reshape(x.shape))
    np.testing.assert_allclose(fwd(layer, x, True), want, rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(fwd(layer, x, False), x)
    grad_check(layer, x)
    big = built(L.GaussianDropout(rate), (200, 200))
    m = fwd(big, np.ones((5, 200, 200)), True)       # the multipliers
    assert abs(m.mean() - 1) < 0.01 and abs(m.std() - sd) < 0.01 * sd + 0.002


# ------------------------------------------------------------- SpatialDropout --

@pytest.mark.parametrize("cls,shape", [(L.SpatialDropout1D, (7, 6)), (L.SpatialDropout2D, (4, 5, 6)),
                                       (L.SpatialDropout3D, (2, 3, 4, 6))])
@pytest.mark.parametrize("rate", [0.25, 0.5])
def test_spatial_dropout_channels(cls, shape, rate):
    layer = built(cls(rate), shape)
    x = np.random.default_rng(2).standard_normal((9,) + shape) + 5.0    # no zeros
    y = fwd(layer, x, True)
    # the (batch, channels) keep mask is the dropout stream of that shape
    keep = backend.dropout_keep_mask((9, shape[-1]), rate, 12345, 3)
    want = x * (keep / (1 - rate)).reshape((9,) + (1,) * (len(shape) - 1) + (shape[-1],))
    np.testing.assert_allclose(y, want, rtol=1e-15, atol=0)
    np.testing.assert_array_equal(fwd(layer, x, False), x)
    grad_check(layer, x)
    # the NumPy reference Ops agree bit for bit
    other = built(cls(rate), shape, ops=NUMPY_OPS)
    np.testing.assert_array_equal(fwd(other, x, True), y)


def test_spatial_dropout_fraction_and_threads():
    layer = built(L.SpatialDropout2D(0.3), (2, 2, 500))
    x = np.ones((40, 2, 2, 500))
    y = fwd(layer, x, True)
    ch = y[:, 0, 0, :]
    assert np.all((y == ch[:, None, None, :]))                  # whole channels
    assert abs(np.mean(ch == 0) - 0.3) < 0.02                   # 20000 channels
    np.testing.assert_allclose(ch[ch != 0], 1 / 0.7, rtol=1e-15)
    before = nk.get_num_threads()
    try:
        outs = []
        for t in (1, 2):
            nk.set_num_threads(t)
            outs.append(fwd(layer, x, True))
    finally:
        nk.set_num_threads(before)
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], y)


def test_noise_layers_errors_and_defaults():
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="rate"):
            L.SpatialDropout2D(bad)
        with pytest.raises(ValueError, match="rate"):
            L.GaussianDropout(bad)
    with pytest.raises(ValueError, match="stddev"):
        L.GaussianNoise(1.5)       # Keras 3 accepts [0, 1] only
    with pytest.raises(NotImplementedError, match="channels_last"):
        L.SpatialDropout2D(0.1, data_format="channels_first")
    with pytest.raises(ValueError, match="rank 4"):
        built(L.SpatialDropout2D(0.1), (3, 4))
    # rate / stddev 0: identity even in training
    x = np.random.default_rng(3).standard_normal((2, 3, 3, 2))
    for layer in (L.SpatialDropout2D(0.0), L.GaussianDropout(0.0), L.GaussianNoise(0.0)):
        np.testing.assert_array_equal(fwd(built(layer, (3, 3, 2)), x, True), x)


@pytest.mark.parametrize("make", [lambda: L.SpatialDropout2D(0.2, seed=4, name="sd"),
                                  lambda: L.GaussianNoise(0.1),
                                  lambda: L.GaussianDropout(0.3, seed=9)])
def test_config_round_trip(make):
    layer = make()
    other = config_round_trip(layer)
    assert other.seed == layer.seed and other.stream_seed == layer.stream_seed


def _noisy_layers(rate=0.3):
    return [L.Conv2D(4, 3, padding="same"), L.SpatialDropout2D(rate), L.GaussianNoise(rate),
            L.GaussianDropout(rate)]


def test_save_load_and_reproducible_training(tmp_path):
    m = save_load_round_trip(tmp_path / "a", _noisy_layers, (5, 5, 2))[0]
    # the same seed: the same training, noise included
    again = save_load_round_trip(tmp_path / "b", _noisy_layers, (5, 5, 2))[0]
    for a, b in zip(m.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
    # the same model without noise (same initial weights) trains differently
    quiet = save_load_round_trip(tmp_path / "c", lambda: _noisy_layers(0.0), (5, 5, 2))[0]
    assert any(not np.allclose(a, b) for a, b in zip(m.get_weights(), quiet.get_weights()))
    # inference ignores the noise: both predict what their weights give without it
    x = np.random.default_rng(5).standard_normal((4, 5, 5, 2)).astype(np.float32)
    quiet.set_weights(m.get_weights())
    np.testing.assert_array_equal(m.predict(x, verbose=0), quiet.predict(x, verbose=0))

"""Graph models and the newer layers on the GPU backend, against the CPU
kernels: a residual block (a tensor with two consumers: its data gradients
add up, accumulate_dx), batch normalisation, global pooling, a grouped
convolution and a transposed one (the reference ops on CuPy arrays), and the
mixed_bfloat16 policy refused before anything moves.  Skipped without CuPy
and a CUDA device, like tests/test_gpu.py."""
import numpy as np
import pytest

import pynn
from pynn import layers
from pynn.backend import gpu as backend_gpu

_OK, _WHY = backend_gpu.gpu_available()
pytestmark = pytest.mark.skipif(not _OK, reason="CuPy not installed" if _WHY.startswith("CuPy")
                                else f"no CUDA device ({_WHY})")


def _resnet_block(device=None, seed=7):
    pynn.utils.set_random_seed(seed)
    inp = pynn.Input((10, 10, 3))
    x = layers.Conv2D(8, 3, padding="same", use_bias=False)(inp)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    y = layers.Conv2D(8, 3, padding="same")(x)          # x has two consumers: y and the add
    y = layers.Conv2D(8, 3, padding="same", groups=2)(y)
    x = layers.Add()([x, y])
    x = layers.Conv2DTranspose(4, 3, strides=2, padding="same")(x)
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(5, activation="softmax")(x)
    m = pynn.Model(inp, out, device=device) if device else pynn.Model(inp, out)
    m.compile(optimizer=pynn.optimizers.SGD(0.05, momentum=0.9),
              loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m


def test_residual_graph_trains_on_gpu_like_cpu():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 10, 10, 3)).astype(np.float32)
    y = rng.integers(0, 5, 12)
    cpu, gpu = _resnet_block(), _resnet_block(device="gpu")
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_array_equal(a, b)
    for _ in range(3):
        lc, _ = cpu.train_on_batch(x, y)
        lg, _ = gpu.train_on_batch(x, y)
        np.testing.assert_allclose(lg, lc, rtol=1e-3)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(b, a, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(gpu.predict(x, verbose=0), cpu.predict(x, verbose=0),
                               rtol=2e-3, atol=2e-4)


def test_mixed_bfloat16_refused_on_gpu_before_moving():
    pynn.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        m = pynn.Sequential([layers.Input((4,)), layers.Dense(3)])
        m.compile(optimizer="sgd", loss="mse")
        before = [w.copy() for w in m.get_weights()]
        with pytest.raises(NotImplementedError, match="mixed_bfloat16"):
            m.to_device("gpu")
        for a, b in zip(before, m.get_weights()):
            np.testing.assert_array_equal(a, b)
        m.predict(np.ones((2, 4), np.float32), verbose=0)   # still usable on the CPU
    finally:
        pynn.mixed_precision.set_global_policy("float32")

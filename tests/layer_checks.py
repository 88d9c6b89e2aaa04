"""Checks shared by the tests of the Keras layers added for issue 12
(normalisation, noise, preprocessing): a built float64 layer, its config
round trip, and save/load inside a trained model.  The float64
finite-difference gradient check is test_pynn_layers.grad_check."""
import json

import numpy as np

import pynn
from pynn import backend, layers as L

F64 = np.float64
NUMPY_OPS = backend.Ops()
CPU_OPS = backend.get_ops("cpu")


def built(layer, in_shape, ops=CPU_OPS, dtype=F64, seed=0, stream=(12345, 3)):
    """``layer`` built for batch-less ``in_shape`` with its own weight and
    gradient arrays; trainable weights random (gamma around 1); random
    layers get stream_seed, step = ``stream``."""
    layer._build(in_shape, ops, dtype)
    rng = np.random.default_rng(seed)
    for s in layer.specs:
        if s.name == "gamma":
            w = rng.uniform(0.5, 1.5, s.shape)
        elif s.trainable:
            w = rng.standard_normal(s.shape) * 0.5
        else:
            w = s.initializer(s.shape, rng, dtype)
        layer.w[s.name] = np.ascontiguousarray(w, dtype=dtype)
        layer.g[s.name] = np.zeros(s.shape, dtype)
    if getattr(layer, "uses_rng", False):
        layer.stream_seed, layer.step = stream
    return layer


def config_round_trip(layer):
    """The layer rebuilt from its JSON config has the same config."""
    cfg = json.loads(json.dumps(layer.get_config()))
    other = L.from_config(type(layer).__name__, cfg)
    assert type(other) is type(layer)
    assert json.loads(json.dumps(other.get_config())) == cfg
    return other


def save_load_round_trip(tmp_path, make_layers, in_shape, n_out=3, epochs=2, seed=0):
    """A small model (input, the layers, Flatten, Dense softmax) trained a
    little, saved and loaded: same classes, configs, weights and predictions.
    Returns (model, loaded model, x)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((32,) + tuple(in_shape)).astype(np.float32)
    y = rng.integers(0, n_out, 32)
    pynn.utils.set_random_seed(seed)
    m = pynn.Sequential([pynn.Input(in_shape)] + list(make_layers()) +
                        [L.Flatten(), L.Dense(n_out, activation="softmax")])
    m.compile("adam", "sparse_categorical_crossentropy")
    m.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
    path = tmp_path / "m.npz"
    m.save(path)
    m2 = pynn.load_model(path)
    assert [type(l) for l in m2.layers] == [type(l) for l in m.layers]
    assert [l.get_config() for l in m2.layers] == [l.get_config() for l in m.layers]
    for a, b in zip(m.layers, m2.layers):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))
    return m, m2, x


def summary_lines(model):
    lines = []
    model.summary(print_fn=lines.append)
    return lines

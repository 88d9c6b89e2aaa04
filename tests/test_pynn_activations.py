"""pynn.activations and ops.activation / activation_backward against NumPy
references written here from Keras 3's formulas (keras/src/activations):
every name, float32 and float64, the NumPy reference Ops and CPUOps, their
derivatives, float64 finite-difference checks through Activation / Dense /
Conv2D layers, parameters, numerical stability, config and file round trips.
"""
import math
import warnings

import numpy as np
import pytest

import pynn
from pynn import activations, backend, layers as L
from pynn.backend.activation_ref import grad_needs_input

from test_pynn_layers import CPU_OPS, NUMPY_OPS, build, compare_ops, fwd, grad_check

SQ2 = math.sqrt(2.0)
SELU_A, SELU_S = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
ERF = np.vectorize(math.erf)


# ---------------------------------------------------------------- references --
# f(x, **p) and f'(x, **p), element-wise, from the Keras 3 definitions

def _sig(x):
    return 1 / (1 + np.exp(-x))


def _hsig(x):
    return np.clip(x + 3, 0, 6) / 6                        # relu6(x + 3) / 6


def _relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    y = np.where(x > threshold, x, 0.0)
    if max_value is not None:
        y = np.clip(y, 0, max_value)
    return y - negative_slope * np.maximum(threshold - x, 0)


def _drelu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    d = (x > threshold).astype(float)
    if max_value is not None:
        d *= (x < max_value) & (x > 0)
    return d + negative_slope * (x < threshold)


def _gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1 + ERF(x / SQ2))


def _dgelu(x, approximate=False):
    if approximate:
        c = math.sqrt(2 / math.pi)
        t = np.tanh(c * (x + 0.044715 * x ** 3))
        return 0.5 * (1 + t) + 0.5 * x * (1 - t ** 2) * c * (1 + 3 * 0.044715 * x ** 2)
    return 0.5 * (1 + ERF(x / SQ2)) + x * np.exp(-x * x / 2) / math.sqrt(2 * math.pi)


def _sp(x):
    return np.log1p(np.exp(x))


REF = {
    "linear": (lambda x: x, lambda x: np.ones_like(x)),
    "relu": (_relu, _drelu),
    "relu6": (lambda x: np.minimum(np.maximum(x, 0), 6), lambda x: ((x > 0) & (x < 6)) * 1.0),
    "leaky_relu": (lambda x, negative_slope=0.2: np.where(x > 0, x, negative_slope * x),
                   lambda x, negative_slope=0.2: np.where(x > 0, 1.0, negative_slope)),
    "elu": (lambda x, alpha=1.0: np.where(x > 0, x, alpha * (np.exp(x) - 1)),
            lambda x, alpha=1.0: np.where(x > 0, 1.0, alpha * np.exp(x))),
    "selu": (lambda x: SELU_S * np.where(x > 0, x, SELU_A * (np.exp(x) - 1)),
             lambda x: SELU_S * np.where(x > 0, 1.0, SELU_A * np.exp(x))),
    "gelu": (_gelu, _dgelu),
    "sigmoid": (_sig, lambda x: _sig(x) * (1 - _sig(x))),
    "hard_sigmoid": (_hsig, lambda x: ((x > -3) & (x < 3)) / 6.0),
    "hard_silu": (lambda x: x * _hsig(x), lambda x: _hsig(x) + x * ((x > -3) & (x < 3)) / 6.0),
    "silu": (lambda x: x * _sig(x), lambda x: _sig(x) + x * _sig(x) * (1 - _sig(x))),
    "mish": (lambda x: x * np.tanh(_sp(x)),
             lambda x: np.tanh(_sp(x)) + x * (1 - np.tanh(_sp(x)) ** 2) * _sig(x)),
    "softplus": (_sp, _sig),
    "softsign": (lambda x: x / (1 + np.abs(x)), lambda x: 1 / (1 + np.abs(x)) ** 2),
    "tanh": (np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    "exponential": (np.exp, np.exp),
}


def ref_softmax(x, axis=-1):
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def ref_log_softmax(x, axis=-1):
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


ELEMENTWISE = sorted(REF)
ALL = ELEMENTWISE + ["softmax", "log_softmax"]
KINKS = (0.0, -3.0, 3.0, 6.0)


def sample(shape, seed=0, lo=-7.0, hi=7.0):
    """Values in [lo, hi] at least 1e-3 from every kink (0, +-3, 6)."""
    x = np.random.default_rng(seed).uniform(lo, hi, shape)
    for k in KINKS:
        near = np.abs(x - k) < 1e-3
        x[near] = k + 0.5
    return x


def reference(name, x, **p):
    if name == "softmax":
        return ref_softmax(x, **p)
    if name == "log_softmax":
        return ref_log_softmax(x, **p)
    return REF[name][0](x, **p)


def reference_grad(name, x, dy, **p):
    """dx = J^T dy from the Keras 3 formula."""
    if name == "softmax":
        y = ref_softmax(x, **p)
        return y * (dy - (dy * y).sum(axis=p.get("axis", -1), keepdims=True))
    if name == "log_softmax":
        ax = p.get("axis", -1)
        return dy - ref_softmax(x, **p) * dy.sum(axis=ax, keepdims=True)
    return dy * REF[name][1](x, **p)


def tol(dtype):
    return dict(rtol=1e-12, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-6, atol=2e-6)


OPS = {"numpy": NUMPY_OPS, "cpu": CPU_OPS}


# ---------------------------------------------------------- forward / backward --

@pytest.mark.parametrize("ops", sorted(OPS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("name", ALL)
def test_forward_and_derivative_match_keras_formulas(name, dtype, ops):
    ops = OPS[ops]
    x64 = sample((7, 9), seed=len(name))
    x = x64.astype(dtype)
    ref = reference(name, x.astype(np.float64))
    y = ops.activation(name, x)
    assert y.dtype == dtype and y.shape == x.shape
    np.testing.assert_allclose(y, ref, **tol(dtype))
    # the public function is the same formula
    np.testing.assert_allclose(getattr(activations, name)(x), ref, **tol(dtype))
    # the derivative from what the table says a layer keeps (y alone, or x too)
    dy = np.random.default_rng(5).standard_normal(x.shape).astype(dtype)
    dx = ops.activation_backward(name, dy, y, x=x if grad_needs_input(name) else None)
    assert dx.dtype == dtype
    np.testing.assert_allclose(dx, reference_grad(name, x.astype(np.float64),
                                                  dy.astype(np.float64)),
                               rtol=1e-10 if dtype == np.float64 else 1e-4,
                               atol=1e-11 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("name", [n for n in ALL if grad_needs_input(n)])
def test_activations_needing_x_refuse_without_it(name):
    x = sample((3, 4))
    with pytest.raises(ValueError, match="needs the forward input"):
        NUMPY_OPS.activation_backward(name, np.ones_like(x), NUMPY_OPS.activation(name, x))


def test_the_table_says_y_for_the_fast_ones():
    # these differentiate from the output alone (the layer keeps no input)
    for name in ("linear", "relu", "sigmoid", "tanh", "softmax", "log_softmax", "relu6",
                 "hard_sigmoid", "softplus", "exponential"):
        assert not grad_needs_input(name), name
    for name in ("gelu", "silu", "mish", "hard_silu", "softsign", "elu", "selu", "leaky_relu"):
        assert grad_needs_input(name), name
    # a parametrised relu differentiates from x
    assert grad_needs_input("relu", {"max_value": 6.0})
    assert not grad_needs_input("relu", {"max_value": None})


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("params", [dict(negative_slope=0.1), dict(max_value=2.5),
                                    dict(threshold=1.5), dict(threshold=-1.0),
                                    dict(negative_slope=0.2, max_value=4.0, threshold=0.5),
                                    dict(threshold=-1.0, max_value=2.0)])
def test_relu_parameters(params, dtype):
    x = sample((6, 11), seed=3).astype(dtype)
    for k in (0.5, 1.5, -1.0, 2.5, 4.0, 2.0):
        x[np.abs(x - k) < 1e-3] = k + 0.25
    y = activations.relu(x, **params)
    np.testing.assert_allclose(y, _relu(x.astype(np.float64), **params), **tol(dtype))
    dy = np.ones_like(x)
    for ops in OPS.values():
        np.testing.assert_allclose(ops.activation("relu", x, **params), y, **tol(dtype))
        dx = ops.activation_backward("relu", dy, y, x=x, **params)
        np.testing.assert_allclose(dx, _drelu(x.astype(np.float64), **params), **tol(dtype))


def test_other_parameters():
    x = sample((5, 8), seed=4)
    np.testing.assert_allclose(activations.leaky_relu(x, negative_slope=0.05),
                               np.where(x > 0, x, 0.05 * x), rtol=1e-15)
    np.testing.assert_allclose(activations.elu(x, alpha=0.7),
                               np.where(x > 0, x, 0.7 * (np.exp(x) - 1)), rtol=1e-13)
    np.testing.assert_allclose(activations.gelu(x, approximate=True), _gelu(x, True), rtol=1e-13)
    x3 = sample((2, 3, 4), seed=6)
    np.testing.assert_allclose(activations.softmax(x3, axis=1), ref_softmax(x3, axis=1),
                               rtol=1e-13)
    np.testing.assert_allclose(activations.log_softmax(x3, axis=1),
                               ref_log_softmax(x3, axis=1), rtol=1e-12, atol=1e-13)
    dy = np.random.default_rng(1).standard_normal(x3.shape)
    y = NUMPY_OPS.activation("softmax", x3, axis=1)
    np.testing.assert_allclose(NUMPY_OPS.activation_backward("softmax", dy, y, axis=1),
                               reference_grad("softmax", x3, dy, axis=1), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="negative_slope"):
        activations.tanh(x, negative_slope=0.1)


def test_keras2_alpha_is_deprecated_but_accepted():
    x = sample((4, 5))
    with pytest.warns(DeprecationWarning, match="negative_slope"):
        y = activations.relu(x, alpha=0.1)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.1 * x), rtol=1e-15)
    with pytest.warns(DeprecationWarning):
        y = activations.leaky_relu(x, alpha=0.3)
    np.testing.assert_allclose(y, np.where(x > 0, x, 0.3 * x), rtol=1e-15)


def test_gelu_default_is_exact_not_tanh():
    x = np.array([-2.0, -0.5, 0.7, 1.9])
    exact, approx = _gelu(x), _gelu(x, approximate=True)
    assert np.abs(exact - approx).max() > 5e-5      # the two differ: the test can tell
    np.testing.assert_allclose(activations.gelu(x), exact, rtol=1e-14)
    np.testing.assert_allclose(L.Activation("gelu")(x[None]), exact[None], rtol=1e-14)


def test_hard_sigmoid_is_keras3_not_keras2():
    x = np.array([-2.8, -1.0, 0.5, 2.6])
    np.testing.assert_allclose(activations.hard_sigmoid(x), (x + 3) / 6, rtol=1e-15)
    assert not np.allclose(activations.hard_sigmoid(x), np.clip(0.2 * x + 0.5, 0, 1))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_numerical_stability(dtype):
    big = np.array([[1000.0, 0.0, -1000.0], [-800.0, -800.0, -801.0]], dtype)
    for name in ALL:
        if name == "exponential":
            continue
        y = activations.get(name)(big)
        assert np.all(np.isfinite(y)), name
        dy = np.ones_like(big)
        dx = NUMPY_OPS.activation_backward(name, dy, y, x=big)
        assert np.all(np.isfinite(dx)), name
    np.testing.assert_allclose(activations.softmax(big)[1], ref_softmax(np.array([0.0, 0, -1])),
                               rtol=1e-6)
    np.testing.assert_allclose(activations.log_softmax(big)[0], [0.0, -1000.0, -2000.0],
                               rtol=1e-6)
    np.testing.assert_allclose(activations.softplus(big)[0], [1000.0, math.log(2), 0.0],
                               rtol=1e-6)
    np.testing.assert_allclose(activations.sigmoid(big)[0], [1.0, 0.5, 0.0], rtol=1e-7)
    # gelu's tail: x * Phi(x) keeps its relative accuracy far out (erfc, not 1 + erf)
    x = np.array([-10.0, -20.0])
    ref = np.array([v * 0.5 * math.erfc(-v / SQ2) for v in x])
    np.testing.assert_allclose(activations.gelu(x), ref, rtol=1e-12)


# --------------------------------------------------------------- names --

def test_names_aliases_and_get():
    assert L.Dense(2, activation="swish").activation == "silu"
    assert L.Dense(2, activation="hard_swish").activation == "hard_silu"
    assert L.Dense(2, activation=activations.swish).activation == "silu"
    assert L.Activation("GELU").activation == "gelu"
    assert activations.get("swish") is activations.silu
    assert activations.get(None) is activations.linear
    assert activations.serialize(activations.hard_swish) == "hard_silu"
    for name in ALL:
        assert activations.get(name).__name__ == name
        assert L.Activation(name).activation == name


def test_unknown_and_custom_activations_are_refused():
    with pytest.raises(ValueError, match="unknown activation 'gelu2'"):
        L.Dense(3, activation="gelu2")
    with pytest.raises(ValueError, match="custom activation functions are not supported"):
        L.Dense(3, activation=lambda t: t * 2)
    with pytest.raises(ValueError, match="unknown activation"):
        NUMPY_OPS.activation("gelu2", np.zeros(3))


# ------------------------------------------------------- through the layers --

@pytest.mark.parametrize("name", ALL)
def test_grad_check_through_activation_layer(name):
    x = sample((5, 6), seed=11)
    compare_ops(lambda: L.Activation(name), (6,), x)
    layer = build(lambda: L.Activation(name), (6,), CPU_OPS)
    np.testing.assert_allclose(fwd(layer, x, True), reference(name, x), rtol=1e-12, atol=1e-13)
    grad_check(layer, x)


def _away_from_kinks(layer, x):
    """Resample until no pre-activation of the Dense is near a kink."""
    rng = np.random.default_rng(3)
    for _ in range(100):
        z = x @ layer.w["kernel"] + layer.w["bias"]
        if min(np.abs(z - k).min() for k in KINKS) > 1e-3:
            return x
        x = rng.uniform(-4, 4, x.shape)
    pytest.fail("no input away from the kinks")


@pytest.mark.parametrize("name", ALL)
def test_grad_check_through_dense(name):
    layer = build(lambda: L.Dense(5, activation=name), (4,), CPU_OPS, seed=2)
    x = _away_from_kinks(layer, np.random.default_rng(0).uniform(-4, 4, (6, 4)))
    z = x @ layer.w["kernel"] + layer.w["bias"]
    np.testing.assert_allclose(fwd(layer, x, True), reference(name, z), rtol=1e-12, atol=1e-12)
    compare_ops(lambda: L.Dense(5, activation=name), (4,), x, seed=2)
    grad_check(layer, x)


@pytest.mark.parametrize("name", ["gelu", "mish", "softmax", "hard_silu", "selu"])
def test_grad_check_through_conv2d(name):
    layer = build(lambda: L.Conv2D(3, 3, padding="same", activation=name), (5, 5, 2), CPU_OPS,
                  seed=4)
    x = np.random.default_rng(1).uniform(-1, 1, (2, 5, 5, 2))
    grad_check(layer, x)


def test_relu_and_linear_stay_fused():
    # the kernels' relu epilogue: no separate activation pass, no kept input
    for act in ("relu", "linear", None):
        assert L.Dense(3, activation=act)._fused
        assert L.Conv2D(3, 3, activation=act)._fused
    assert not L.Dense(3, activation="gelu")._fused
    layer = build(lambda: L.Dense(4, activation="relu"), (3,), CPU_OPS)
    x = np.random.default_rng(0).standard_normal((5, 3))
    assert layer._kernel_act() == "relu"
    np.testing.assert_allclose(fwd(layer, x, True),
                               np.maximum(x @ layer.w["kernel"] + layer.w["bias"], 0), rtol=1e-14)


# ------------------------------------------------------------- files --

def test_config_round_trip():
    for name in ALL:
        d = L.Dense(3, activation=name)
        d2 = L.from_config("Dense", d.get_config())
        assert d2.activation == name
        a2 = L.from_config("Activation", L.Activation(name).get_config())
        assert a2.activation == name


def test_save_load_model_with_new_activations(tmp_path):
    pynn.utils.set_random_seed(3)
    inp = pynn.Input((6,))
    h = L.Dense(8, activation="gelu")(inp)
    h = L.Dense(8, activation="swish")(h)
    h = L.Activation("mish")(h)
    h = L.Dense(8, activation="hard_sigmoid")(h)
    h = L.Dense(8, activation="selu")(h)
    out = L.Dense(3, activation="log_softmax")(h)
    m = pynn.Model(inp, out)
    m.compile("adam", "mse")
    x = np.random.default_rng(0).standard_normal((16, 6)).astype(np.float32)
    m.fit(x, np.zeros((16, 3), np.float32), epochs=1, verbose=0)
    m.save(tmp_path / "m.npz")
    m2 = pynn.load_model(tmp_path / "m.npz")
    assert [getattr(l, "activation", None) for l in m2.layers] == \
        [getattr(l, "activation", None) for l in m.layers]
    assert "silu" in [getattr(l, "activation", None) for l in m2.layers]
    np.testing.assert_array_equal(m.predict(x, verbose=0), m2.predict(x, verbose=0))


def test_training_with_a_new_activation_lowers_the_loss():
    pynn.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 4)).astype(np.float32)
    y = (x[:, :1] * x[:, 1:2] > 0).astype(np.float32)
    m = pynn.Sequential([pynn.Input((4,)), L.Dense(16, activation="gelu"),
                         L.Dense(16, activation="mish"), L.Dense(1, activation="sigmoid")])
    m.compile(pynn.optimizers.Adam(0.01), "binary_crossentropy")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        h = m.fit(x, y, epochs=30, batch_size=16, verbose=0)
    assert h.history["loss"][-1] < 0.8 * h.history["loss"][0]

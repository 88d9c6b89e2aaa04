"""LayerNormalization and GroupNormalization against NumPy references of
Keras 3's formulas, float64 finite-difference gradient checks, argument
errors, config round trip, save/load and summary in a model."""
import numpy as np
import pytest

from pynn import layers as L
from layer_checks import F64, built, config_round_trip, save_load_round_trip, summary_lines
from test_pynn_layers import fwd, grad_check


def keras_layernorm(x, axes, gamma, beta, eps=1e-3):
    """Keras 3 LayerNormalization.call: moments over ``axes`` (a list, in the
    user's order), gamma/beta reshaped (not transposed) to the broadcast shape,
    inv = rsqrt(var + eps) * gamma, out = x * inv + (beta - mean * inv)."""
    nd = x.ndim
    axes = [a % nd for a in axes]
    bshape = [1] * nd
    for a in axes:
        bshape[a] = x.shape[a]
    mean = x.mean(axis=tuple(axes), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=tuple(axes), keepdims=True)
    inv = 1.0 / np.sqrt(var + eps)
    if gamma is not None:
        inv = inv * gamma.reshape(bshape)
    res = -mean * inv
    if beta is not None:
        res = res + beta.reshape(bshape)
    return x * inv + res


def keras_groupnorm(x, groups, gamma, beta, eps=1e-3, axis=-1):
    """Keras 3 GroupNormalization: channels split into groups, moments over
    every axis but the batch and the group axis."""
    a = axis % x.ndim
    c = x.shape[a]
    gshape = x.shape[:a] + (groups, c // groups) + x.shape[a + 1:]
    xr = x.reshape(gshape)
    red = tuple(i for i in range(1, xr.ndim) if i != a)
    mean = xr.mean(axis=red, keepdims=True)
    var = xr.var(axis=red, keepdims=True)
    bshape = [1] * xr.ndim
    bshape[a], bshape[a + 1] = groups, c // groups
    y = (xr - mean) / np.sqrt(var + eps)
    if gamma is not None:
        y = y * gamma.reshape(bshape)
    if beta is not None:
        y = y + beta.reshape(bshape)
    return y.reshape(x.shape)


def _x(shape, seed=0, loc=0.0):
    return np.random.default_rng(seed).standard_normal(shape) * 2.0 + loc


# ------------------------------------------------------------ LayerNormalization --

LN_CASES = [((6,), -1), ((4, 5), -1), ((3, 4, 5), [1, 2, 3]), ((3, 4, 5), [-2, -1]),
            ((3, 4, 5), [3, 1]), ((3, 4, 5), 2)]


@pytest.mark.parametrize("shape,axis", LN_CASES)
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False),
                                          (False, False)])
def test_layernorm_forward_and_gradients(shape, axis, center, scale):
    layer = built(L.LayerNormalization(axis=axis, center=center, scale=scale), shape)
    x = _x((3,) + shape, loc=3.0)
    axes = axis if isinstance(axis, list) else [axis]
    want = keras_layernorm(x, axes, layer.w.get("gamma"), layer.w.get("beta"))
    np.testing.assert_allclose(fwd(layer, x, True), want, rtol=1e-12, atol=1e-12)
    # inference is the same computation (no moving statistics)
    np.testing.assert_allclose(fwd(layer, x, False), want, rtol=1e-12, atol=1e-12)
    grad_check(layer, x)


def test_layernorm_weight_shapes_follow_axis_order():
    layer = built(L.LayerNormalization(axis=[3, 1]), (3, 4, 5))
    assert layer.w["gamma"].shape == (5, 3) and layer.w["beta"].shape == (5, 3)
    assert built(L.LayerNormalization(axis=[1, 2, 3]), (3, 4, 5)).w["gamma"].shape == (3, 4, 5)
    assert [s.name for s in built(L.LayerNormalization(), (7,)).specs] == ["gamma", "beta"]


def test_layernorm_float32_and_defaults():
    layer = L.LayerNormalization()
    assert (layer.axis, layer.epsilon, layer.center, layer.scale) == (-1, 1e-3, True, True)
    x = _x((4, 10), seed=2).astype(np.float32)
    y = layer(x)          # eager: gamma ones, beta zeros
    assert y.dtype == np.float32
    want = keras_layernorm(x.astype(F64), [-1], None, None)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    # a constant row: (x - mean) = 0, no division by zero thanks to epsilon
    np.testing.assert_array_equal(layer(np.full((2, 10), 7.0, np.float32)), 0.0)


def test_layernorm_errors():
    with pytest.raises(NotImplementedError, match="rms_scaling"):
        L.LayerNormalization(rms_scaling=True)
    with pytest.raises(NotImplementedError, match="gamma_regularizer"):
        L.LayerNormalization(gamma_regularizer="l2")
    with pytest.raises(TypeError, match="axis"):
        L.LayerNormalization(axis="last")
    with pytest.raises(ValueError, match="batch axis"):
        built(L.LayerNormalization(axis=0), (4,))
    with pytest.raises(ValueError, match="out of bounds"):
        built(L.LayerNormalization(axis=3), (4,))
    with pytest.raises(ValueError, match="known sizes"):
        L.LayerNormalization()._build_shape((None,))


# ------------------------------------------------------------ GroupNormalization --

GN_CASES = [((4, 4, 8), 4, -1), ((4, 4, 8), 1, -1), ((4, 4, 8), -1, -1), ((5, 6), 3, -1),
            ((6, 5), 2, 1), ((2, 3, 6), 6, -1)]


@pytest.mark.parametrize("shape,groups,axis", GN_CASES)
@pytest.mark.parametrize("center,scale", [(True, True), (False, False), (True, False)])
def test_groupnorm_forward_and_gradients(shape, groups, axis, center, scale):
    layer = built(L.GroupNormalization(groups=groups, axis=axis, center=center, scale=scale),
                  shape)
    x = _x((3,) + shape, seed=4, loc=-2.0)
    g = shape[-1] if groups == -1 else groups
    want = keras_groupnorm(x, g, layer.w.get("gamma"), layer.w.get("beta"), axis=axis)
    np.testing.assert_allclose(fwd(layer, x, True), want, rtol=1e-12, atol=1e-12)
    grad_check(layer, x)


def test_groupnorm_instance_and_layer_limits():
    x = _x((2, 3, 3, 4), seed=5)
    # groups=-1: instance normalisation (each channel of each sample alone)
    inst = built(L.GroupNormalization(groups=-1), (3, 3, 4))
    assert inst.groups == 4 and inst.get_config()["groups"] == 4
    y = fwd(inst, x, False)
    m, v = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    want = (x - m) / np.sqrt(v + 1e-3) * inst.w["gamma"] + inst.w["beta"]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # one group: the statistics of the whole sample, gamma per channel
    one = built(L.GroupNormalization(groups=1, scale=False, center=False), (3, 3, 4))
    m, v = x.mean(axis=(1, 2, 3), keepdims=True), x.var(axis=(1, 2, 3), keepdims=True)
    np.testing.assert_allclose(fwd(one, x, False), (x - m) / np.sqrt(v + 1e-3), rtol=1e-12,
                               atol=1e-12)


def test_groupnorm_errors_and_defaults():
    layer = L.GroupNormalization()
    assert (layer.groups, layer.axis, layer.epsilon) == (32, -1, 1e-3)
    with pytest.raises(ValueError, match="cannot be more than"):
        built(L.GroupNormalization(), (4, 4, 16))
    with pytest.raises(ValueError, match="must divide"):
        built(L.GroupNormalization(groups=3), (4, 4, 8))
    with pytest.raises(ValueError, match="groups"):
        L.GroupNormalization(groups=0)
    with pytest.raises(NotImplementedError, match="beta_constraint"):
        L.GroupNormalization(beta_constraint="non_neg")
    with pytest.raises(ValueError, match="known size"):
        L.GroupNormalization(groups=2)._build_shape((4, None))


# --------------------------------------------------------- config, files, summary --

@pytest.mark.parametrize("make", [
    lambda: L.LayerNormalization(axis=[1, 2], epsilon=1e-5, center=False,
                                 gamma_initializer="he_normal", name="ln"),
    lambda: L.LayerNormalization(),
    lambda: L.GroupNormalization(groups=4, epsilon=1e-4, scale=False, name="gn"),
])
def test_config_round_trip(make):
    layer = make()
    config_round_trip(layer)
    built(layer, (4, 4, 8))
    other = config_round_trip(layer)
    built(other, (4, 4, 8))
    assert [(s.name, s.shape) for s in other.specs] == [(s.name, s.shape) for s in layer.specs]


def test_save_load_and_summary(tmp_path):
    m, m2, x = save_load_round_trip(
        tmp_path, lambda: [L.Conv2D(8, 3, padding="same"), L.GroupNormalization(groups=4),
                           L.LayerNormalization(axis=[1, 2, 3]), L.LayerNormalization()],
        (5, 5, 3))
    gn, ln3, ln = m.layers[1], m.layers[2], m.layers[3]
    # training moved gamma and beta away from their initial ones and zeros
    assert not np.allclose(gn.get_weights()[0], 1.0) and not np.allclose(ln.get_weights()[1], 0.0)
    assert gn.count_params() == 16 and ln3.count_params() == 2 * 5 * 5 * 8
    lines = summary_lines(m2)
    assert any("(GroupNormalization)" in s and s.rstrip().endswith(" 16") for s in lines)
    assert any("(LayerNormalization)" in s and s.rstrip().endswith(" 16") for s in lines)

"""pynn layers: CPUOps (nnkernels) against the pure NumPy Ops, and float64
finite-difference gradient checks of every layer and of the fused softmax
cross-entropy.

Every layer is built directly (``layer._build(shape, ops, float64)``) with
weights and gradient buffers we allocate ourselves, as Sequential._allocate
does.  The scalar loss is L = sum(out * R) for a fixed random R, so dL/dout
= R; the gradient check compares <grad, d> with the central difference
(L(theta + eps d) - L(theta - eps d)) / (2 eps) along a random direction d
over the input and every trainable weight together (Chainer's
gradient_check).  Inputs are chosen so that no ReLU pre-activation sits near
its kink and no pooling window has a near-tie.
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from pynn import backend, layers as L

F64 = np.float64
NUMPY_OPS = backend.Ops()
CPU_OPS = backend.get_ops("cpu")
EPS = 1e-6


def few(n):
    """A small example count that scales with the hypothesis profile."""
    return max(3, settings().max_examples // n)


# ------------------------------------------------------------------ helpers --


def build(factory, in_shape, ops, seed=0, dtype=F64):
    """A built layer whose weights are random normal (gamma around 1)."""
    layer = factory()
    layer._build(in_shape, ops, dtype)
    rng = np.random.default_rng(seed)
    for s in layer.specs:
        if s.name in ("gamma", "moving_variance"):
            w = rng.uniform(0.5, 1.5, s.shape)
        else:
            w = rng.standard_normal(s.shape) * 0.5
        layer.w[s.name] = np.ascontiguousarray(w, dtype=dtype)
        layer.g[s.name] = np.zeros(s.shape, dtype)
    if isinstance(layer, L.Dropout):
        layer.stream_seed, layer.step = 12345, 3
    return layer


def clone_to(layer, factory, ops):
    other = factory()
    other._build(layer.input_shape, ops, layer.dtype)
    for s in other.specs:
        other.w[s.name] = layer.w[s.name].copy()
        other.g[s.name] = np.zeros_like(layer.g[s.name])
    if isinstance(layer, L.Dropout):
        other.stream_seed, other.step = layer.stream_seed, layer.step
    return other


def fwd(layer, x, training):
    return np.array(layer.forward(x, training), copy=True)


def bwd(layer, dy):
    dx = layer.backward(dy, need_dx=True)
    return np.array(dx, copy=True), {k: np.array(v, copy=True) for k, v in layer.g.items()
                                     if _trainable(layer, k)}


def _trainable(layer, name):
    return any(s.name == name and s.trainable for s in layer.specs)


def loss_of(layer, x, R, training):
    return float(np.sum(fwd(layer, x, training) * R))


def grad_check(layer, x, training=True, seed=1, rtol=1e-6):
    """Directional FD check of dx and every trainable weight gradient."""
    rng = np.random.default_rng(seed)
    y = fwd(layer, x, training)
    R = rng.standard_normal(y.shape)
    dx, grads = bwd(layer, R.copy())
    dirs = {k: rng.standard_normal(layer.w[k].shape) for k in grads}
    dxd = rng.standard_normal(x.shape)
    analytic = float(np.sum(dx * dxd)) + sum(float(np.sum(grads[k] * dirs[k])) for k in grads)
    saved = {k: layer.w[k].copy() for k in grads}

    def at(t):
        for k in grads:
            layer.w[k][...] = saved[k] + t * dirs[k]
        return loss_of(layer, np.ascontiguousarray(x + t * dxd), R, training)

    try:
        numeric = (at(EPS) - at(-EPS)) / (2 * EPS)
    finally:
        for k in grads:
            layer.w[k][...] = saved[k]
    scale = np.sum(np.abs(y * R)) + 1.0
    assert abs(analytic - numeric) <= rtol * scale, (analytic, numeric, scale)
    # each piece separately too, so that a wrong dW cannot hide behind dx
    for k in grads:
        def at_k(t, k=k):
            layer.w[k][...] = saved[k] + t * dirs[k]
            return loss_of(layer, x, R, training)
        try:
            num_k = (at_k(EPS) - at_k(-EPS)) / (2 * EPS)
        finally:
            layer.w[k][...] = saved[k]
        assert abs(float(np.sum(grads[k] * dirs[k])) - num_k) <= rtol * scale, (k, num_k)
    num_x = (loss_of(layer, np.ascontiguousarray(x + EPS * dxd), R, training)
             - loss_of(layer, np.ascontiguousarray(x - EPS * dxd), R, training)) / (2 * EPS)
    assert abs(float(np.sum(dx * dxd)) - num_x) <= rtol * scale, ("dx", num_x)


def compare_ops(factory, in_shape, x, training=True, seed=0, rtol=1e-10):
    """Forward and backward with CPUOps equal those with the NumPy Ops."""
    a = build(factory, in_shape, CPU_OPS, seed)
    b = clone_to(a, factory, NUMPY_OPS)
    ya, yb = fwd(a, x, training), fwd(b, x, training)
    scale = np.abs(yb).max() + 1.0
    np.testing.assert_allclose(ya, yb, rtol=0, atol=rtol * scale)
    R = np.random.default_rng(seed + 7).standard_normal(ya.shape)
    dxa, ga = bwd(a, R.copy())
    dxb, gb = bwd(b, R.copy())
    np.testing.assert_allclose(dxa, dxb, rtol=0, atol=rtol * (np.abs(dxb).max() + 1.0))
    assert ga.keys() == gb.keys()
    for k in ga:
        np.testing.assert_allclose(ga[k], gb[k], rtol=0, atol=rtol * (np.abs(gb[k]).max() + 1.0),
                                   err_msg=k)
    return a


def away_from_kinks(layer, x, margin=1e-3, tries=50, rng=None):
    """Resample x until no pre-activation is within margin of 0 (ReLU,
    leaky ReLU and ELU kinks)."""
    rng = rng or np.random.default_rng(99)
    for _ in range(tries):
        if isinstance(layer, L.Conv2D):
            z = NUMPY_OPS.conv2d_forward(x, layer.w["kernel"], layer.w.get("bias"),
                                         **layer._geom())
        else:
            z = x.reshape(-1, x.shape[-1]) @ layer.w["kernel"] + layer.w.get("bias", 0.0)
        if np.min(np.abs(z)) > margin:
            return x
        x = rng.standard_normal(x.shape)
    pytest.fail("could not draw an input away from the activation kink")


def distinct_input(shape, seed, gap=1e-3):
    """Values that differ pairwise by at least gap (no pooling ties)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(F64) * gap * 2 - n * gap).reshape(shape)


# -------------------------------------------------------------------- Dense --

ACTS = ["linear", "relu", "sigmoid", "tanh", "softmax", "elu", "leaky_relu"]


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("use_bias", [True, False])
def test_dense_cpu_matches_numpy_and_fd(act, use_bias):
    def factory():
        return L.Dense(5, activation=act, use_bias=use_bias)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((7, 4))
    layer = build(factory, (4,), CPU_OPS)
    x = away_from_kinks(layer, x)
    compare_ops(factory, (4,), x)
    grad_check(layer, x)
    ref = build(factory, (4,), NUMPY_OPS)
    grad_check(ref, x)


def test_dense_forward_formula():
    """y = act(x @ W + b) against a direct NumPy evaluation."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 3))
    for act, f in [("relu", lambda z: np.maximum(z, 0)),
                   ("sigmoid", lambda z: 1 / (1 + np.exp(-z))),
                   ("tanh", np.tanh),
                   ("elu", lambda z: np.where(z > 0, z, np.expm1(z))),
                   ("leaky_relu", lambda z: np.where(z > 0, z, 0.2 * z)),
                   ("softmax", lambda z: np.exp(z) / np.exp(z).sum(1, keepdims=True))]:
        layer = build(lambda: L.Dense(4, activation=act), (3,), CPU_OPS)
        want = f(x @ layer.w["kernel"] + layer.w["bias"])
        np.testing.assert_allclose(fwd(layer, x, False), want, rtol=1e-12, atol=1e-12, err_msg=act)


@settings(max_examples=few(6))
@given(n=st.integers(1, 9), k=st.integers(1, 11), units=st.integers(1, 9),
       act=st.sampled_from(ACTS), seed=st.integers(0, 2**31))
def test_dense_property(n, k, units, act, seed):
    def factory():
        return L.Dense(units, activation=act)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, k))
    layer = build(factory, (k,), CPU_OPS, seed)
    x = away_from_kinks(layer, x, rng=rng)
    compare_ops(factory, (k,), x, seed=seed)
    grad_check(layer, x, seed=seed)


def test_dense_on_3d_input():
    """Dense acts on the last axis of (N, T, C) inputs (Keras semantics)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 4, 5))
    layer = build(lambda: L.Dense(2, activation="tanh"), (4, 5), CPU_OPS)
    y = fwd(layer, x, False)
    assert y.shape == (3, 4, 2)
    np.testing.assert_allclose(y, np.tanh(x @ layer.w["kernel"] + layer.w["bias"]), rtol=1e-12)
    grad_check(layer, x)


# ------------------------------------------------------------------- Conv2D --

CONV_CASES = [
    # (kernel, strides, padding, dilation, in (H, W, C), filters)
    ((3, 2), (1, 1), "valid", (1, 1), (6, 5, 2), 3),
    ((2, 3), (2, 1), "same", (1, 1), (7, 6, 3), 2),
    ((3, 1), (1, 2), "same", (1, 1), (5, 8, 1), 4),
    ((1, 1), (1, 1), "valid", (1, 1), (4, 3, 5), 3),
    ((1, 1), (2, 2), "valid", (1, 1), (5, 5, 2), 2),
    ((2, 3), (1, 1), "valid", (2, 1), (7, 6, 2), 3),
    ((3, 2), (1, 1), "same", (1, 2), (6, 7, 1), 2),
    ((3, 3), (3, 2), "valid", (1, 1), (9, 8, 2), 3),
    ((5, 3), (2, 2), "same", (1, 1), (6, 5, 1), 2),
]


def _conv_id(c):
    k, s, p, d, shp, f = c
    return f"k{k[0]}x{k[1]}-s{s[0]}x{s[1]}-{p}-d{d[0]}x{d[1]}-in{'x'.join(map(str, shp))}-f{f}"


@pytest.mark.parametrize("case", CONV_CASES, ids=_conv_id)
@pytest.mark.parametrize("act", ["linear", "relu", "tanh"])
def test_conv2d_cpu_matches_numpy_and_fd(case, act):
    k, s, p, d, shp, f = case

    def factory():
        return L.Conv2D(f, k, strides=s, padding=p, dilation_rate=d, activation=act)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2,) + shp)
    layer = build(factory, shp, CPU_OPS)
    if act == "relu":
        x = away_from_kinks(layer, x)
    compare_ops(factory, shp, x)
    grad_check(layer, x)


def test_conv2d_forward_naive_loops():
    """Against a direct loop over output positions (kh != kw, sh != sw, same)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 7, 6, 3))
    layer = build(lambda: L.Conv2D(4, (3, 2), strides=(2, 1), padding="same"), (7, 6, 3), CPU_OPS)
    y = fwd(layer, x, False)
    W, b = layer.w["kernel"], layer.w["bias"]
    # TF "same": out = ceil(in / s), pad_total = max((out-1)*s + k - in, 0), before = total // 2
    oh, ow = -(-7 // 2), 6
    pt = max((oh - 1) * 2 + 3 - 7, 0) // 2
    pl = max((ow - 1) * 1 + 2 - 6, 0) // 2
    xp = np.pad(x, ((0, 0), (pt, 3), (pl, 2), (0, 0)))
    want = np.zeros((2, oh, ow, 4))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, i * 2:i * 2 + 3, j:j + 2, :]
            want[:, i, j, :] = np.tensordot(patch, W, axes=([1, 2, 3], [0, 1, 2])) + b
    assert y.shape == want.shape
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)


@settings(max_examples=few(6))
@given(kh=st.integers(1, 3), kw=st.integers(1, 3), sh=st.integers(1, 2), sw=st.integers(1, 3),
       padding=st.sampled_from(["valid", "same"]), c=st.integers(1, 3), f=st.integers(1, 3),
       extra=st.integers(0, 3), dil=st.sampled_from([(1, 1), (2, 1), (1, 2)]),
       seed=st.integers(0, 2**31))
def test_conv2d_property(kh, kw, sh, sw, padding, c, f, extra, dil, seed):
    if dil != (1, 1):
        sh = sw = 1
    h = (kh - 1) * dil[0] + 1 + extra
    w = (kw - 1) * dil[1] + 1 + (extra + 1) % 3

    def factory():
        return L.Conv2D(f, (kh, kw), strides=(sh, sw), padding=padding, dilation_rate=dil)
    x = np.random.default_rng(seed).standard_normal((2, h, w, c))
    layer = compare_ops(factory, (h, w, c), x, seed=seed)
    grad_check(layer, x, seed=seed)


# ------------------------------------------------------------- MaxPooling2D --

POOL_CASES = [
    ((2, 2), None, "valid", (6, 6, 2)),
    ((2, 2), None, "valid", (7, 5, 3)),      # floor: last row/col dropped
    ((3, 2), (2, 1), "valid", (7, 6, 2)),
    ((2, 2), None, "same", (5, 7, 2)),
    ((3, 3), (2, 2), "same", (6, 5, 1)),
    ((2, 3), (1, 2), "same", (4, 5, 2)),
]


@pytest.mark.parametrize("pool,strides,padding,shape", POOL_CASES)
def test_maxpool_cpu_matches_numpy_and_fd(pool, strides, padding, shape):
    def factory():
        return L.MaxPooling2D(pool, strides=strides, padding=padding)
    x = distinct_input((2,) + shape, seed=4)
    layer = compare_ops(factory, shape, x, rtol=0)
    grad_check(layer, x)


def test_maxpool_positional_args_and_values():
    layer = build(lambda: L.MaxPooling2D(2, 2), (4, 4, 1), CPU_OPS)
    assert layer.pool_size == (2, 2) and layer.strides == (2, 2)
    x = np.arange(16, dtype=F64).reshape(1, 4, 4, 1)
    np.testing.assert_array_equal(fwd(layer, x, False)[0, :, :, 0], [[5, 7], [13, 15]])
    # ties: the first maximum in window order takes the whole gradient
    x = np.zeros((1, 4, 4, 1))
    layer.forward(x)
    dx = layer.backward(np.ones((1, 2, 2, 1)))
    np.testing.assert_array_equal(dx[0, :, :, 0], [[1, 0, 1, 0], [0, 0, 0, 0],
                                                   [1, 0, 1, 0], [0, 0, 0, 0]])


# ----------------------------------------------------------- Flatten/Dropout --


def test_flatten():
    x = np.random.default_rng(0).standard_normal((3, 2, 4, 5))
    layer = build(L.Flatten, (2, 4, 5), CPU_OPS)
    assert layer.output_shape == (40,)
    np.testing.assert_array_equal(fwd(layer, x, True), x.reshape(3, 40))
    grad_check(layer, x)


def test_reshape():
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 5))
    layer = build(lambda: L.Reshape((5, 8)), (2, 4, 5), CPU_OPS)
    assert layer.output_shape == (5, 8)
    np.testing.assert_array_equal(fwd(layer, x, True), x.reshape(3, 5, 8))
    grad_check(layer, x)
    with pytest.raises(ValueError):
        build(lambda: L.Reshape((3, 3)), (2, 4, 5), CPU_OPS)


def test_relu_layer():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((4, 3, 5))
    x[np.abs(x) < 1e-3] = 0.5   # away from the kink
    compare_ops(L.ReLU, (3, 5), x)
    layer = build(L.ReLU, (3, 5), CPU_OPS)
    np.testing.assert_array_equal(fwd(layer, x, True), np.maximum(x, 0.0))
    grad_check(layer, x)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.5, 0.9])
def test_dropout(rate):
    shape = (4, 3, 5)
    x = np.random.default_rng(0).standard_normal((6,) + shape)
    layer = compare_ops(lambda: L.Dropout(rate), shape, x, rtol=0)
    y = fwd(layer, x, True)
    kept = y != 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - rate), rtol=1e-15)
    if rate == 0.0:
        assert kept.all()
    else:
        # the kept fraction is about 1 - rate (120 elements)
        assert abs(kept.mean() - (1 - rate)) < 0.2
    # the mask is the documented Philox stream of (seed, step)
    keep = backend.dropout_keep_mask(x.shape, rate, layer.stream_seed, layer.step)
    np.testing.assert_array_equal(kept, keep & (x != 0))
    grad_check(layer, x)
    # inference: identity; another step: another mask
    np.testing.assert_array_equal(fwd(layer, x, False), x)
    if rate > 0:
        layer.step += 1
        assert not np.array_equal(fwd(layer, x, True) != 0, kept)


def test_dropout_float32_matches_reference_stream():
    x = np.ones((3, 1000), np.float32)
    a = build(lambda: L.Dropout(0.25), (1000,), CPU_OPS, dtype=np.float32)
    b = clone_to(a, lambda: L.Dropout(0.25), NUMPY_OPS)
    np.testing.assert_array_equal(fwd(a, x, True), fwd(b, x, True))


# ---------------------------------------------------------------- Activation --


@pytest.mark.parametrize("act", ACTS)
def test_activation_layer(act):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((5, 6))
    x[np.abs(x) < 1e-3] = 0.5   # away from the kink
    compare_ops(lambda: L.Activation(act), (6,), x)
    layer = build(lambda: L.Activation(act), (6,), CPU_OPS)
    ref = NUMPY_OPS.activation(act, x)
    np.testing.assert_allclose(fwd(layer, x, True), ref, rtol=1e-15)
    grad_check(layer, x)


def test_activation_on_4d():
    x = np.random.default_rng(0).standard_normal((2, 3, 3, 4))
    layer = build(lambda: L.Activation("softmax"), (3, 3, 4), CPU_OPS)
    y = fwd(layer, x, True)
    np.testing.assert_allclose(y.sum(-1), 1.0, rtol=1e-14)
    grad_check(layer, x)


# -------------------------------------------------------- BatchNormalization --


@pytest.mark.parametrize("shape", [(5,), (3, 4, 3)])
@pytest.mark.parametrize("center,scale", [(True, True), (False, True), (True, False)])
def test_batchnorm_training(shape, center, scale):
    def factory():
        return L.BatchNormalization(center=center, scale=scale)
    rng = np.random.default_rng(6)
    x = rng.standard_normal((8,) + shape) * 2 + 0.5
    layer = compare_ops(factory, shape, x, training=True)
    # forward formula with the batch statistics (biased variance), eps 1e-3
    x2 = x.reshape(-1, shape[-1])
    mean, var = x2.mean(0), x2.var(0)
    g = layer.w.get("gamma", 1.0)
    b = layer.w.get("beta", 0.0)
    mm0, mv0 = layer.w["moving_mean"].copy(), layer.w["moving_variance"].copy()
    y = fwd(layer, x, True)
    np.testing.assert_allclose(y.reshape(-1, shape[-1]), (x2 - mean) / np.sqrt(var + 1e-3) * g + b,
                               rtol=1e-12, atol=1e-12)
    # moving statistics: m = 0.99 m + 0.01 batch (Keras)
    np.testing.assert_allclose(layer.w["moving_mean"], 0.99 * mm0 + 0.01 * mean, rtol=1e-12)
    np.testing.assert_allclose(layer.w["moving_variance"], 0.99 * mv0 + 0.01 * var, rtol=1e-12)
    grad_check(layer, x, training=True)


def test_batchnorm_inference_uses_moving_statistics():
    shape = (3, 2, 4)
    x = np.random.default_rng(7).standard_normal((5,) + shape)
    layer = compare_ops(L.BatchNormalization, shape, x, training=False)
    mm, mv = layer.w["moving_mean"].copy(), layer.w["moving_variance"].copy()
    y = fwd(layer, x, False)
    want = (x - mm) / np.sqrt(mv + 1e-3) * layer.w["gamma"] + layer.w["beta"]
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    # inference leaves the moving statistics alone
    np.testing.assert_array_equal(layer.w["moving_mean"], mm)
    np.testing.assert_array_equal(layer.w["moving_variance"], mv)


def test_batchnorm_counts_and_trainability():
    layer = build(L.BatchNormalization, (6,), CPU_OPS)
    assert [(s.name, s.trainable) for s in layer.specs] == [
        ("gamma", True), ("beta", True), ("moving_mean", False), ("moving_variance", False)]
    assert layer.count_params() == 24


# ------------------------------------------------------- fused softmax + CE --


def naive_xent(p_or_z, labels, from_logits, sparse):
    """Mean cross-entropy in float64, as Keras 3 defines it (probabilities are
    renormalised to sum 1 for sparse and categorical targets alike)."""
    a = np.asarray(p_or_z, F64)
    n, k = a.shape
    t = np.eye(k)[labels] if sparse else np.asarray(labels, F64)
    if from_logits:
        z = a - a.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    else:
        p = a / a.sum(1, keepdims=True)
        logp = np.log(np.clip(p, 1e-7, 1 - 1e-7))
    return float(-(t * logp).sum() / n)


def _xent_inputs(rng, n, k, from_logits, sparse):
    labels = rng.integers(0, k, n)
    if sparse:
        target = labels
    else:
        target = rng.uniform(0, 1, (n, k))
        target /= target.sum(1, keepdims=True)    # soft targets
    if from_logits:
        a = rng.standard_normal((n, k)) * 3
    else:
        # positive outputs that need not sum to 1 (e.g. sigmoid units)
        a = rng.uniform(0.05, 1.0, (n, k))
    return a, target


@pytest.mark.parametrize("ops", [NUMPY_OPS, CPU_OPS], ids=["numpy", "cpu"])
@pytest.mark.parametrize("sparse", [True, False], ids=["sparse", "categorical"])
@pytest.mark.parametrize("from_logits", [True, False], ids=["logits", "probs"])
@pytest.mark.parametrize("n,k", [(1, 2), (7, 3), (16, 10)])
def test_softmax_xent(ops, sparse, from_logits, n, k):
    rng = np.random.default_rng(n * 31 + k)
    a, target = _xent_inputs(rng, n, k, from_logits, sparse)
    dl = np.empty_like(a)
    probs = np.empty_like(a)
    loss, correct = ops.softmax_xent(a, target, dlogits=dl, probs=probs, from_logits=from_logits)
    assert loss / n == pytest.approx(naive_xent(a, target, from_logits, sparse), rel=1e-12)
    want = target if sparse else np.argmax(target, 1)
    assert correct == int(np.sum(np.argmax(a, 1) == want))
    if from_logits:
        e = np.exp(a - a.max(1, keepdims=True))
        np.testing.assert_allclose(probs, e / e.sum(1, keepdims=True), rtol=1e-12)
    # dlogits = d(mean loss)/d input: FD along random directions + per element
    for trial in range(3):
        d = rng.standard_normal(a.shape)
        num = (naive_xent(a + EPS * d, target, from_logits, sparse)
               - naive_xent(a - EPS * d, target, from_logits, sparse)) / (2 * EPS)
        assert float(np.sum(dl * d)) == pytest.approx(num, rel=1e-6, abs=1e-9)
    if from_logits:
        onehot = np.eye(k)[target] if sparse else target
        np.testing.assert_allclose(dl, (probs - onehot) / n, rtol=1e-12, atol=1e-15)
    # grad_scale
    dl2 = np.empty_like(a)
    ops.softmax_xent(a, target, dlogits=dl2, from_logits=from_logits, grad_scale=0.5)
    np.testing.assert_allclose(dl2, dl * n * 0.5, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_xent_cpu_matches_numpy_and_is_stable(dtype):
    rng = np.random.default_rng(0)
    z = (rng.standard_normal((9, 5)) * 50).astype(dtype)
    z[0] = [1000, -1000, 0, 3, 999]          # huge logits: no overflow
    y = rng.integers(0, 5, 9)
    outs = []
    for ops in (CPU_OPS, NUMPY_OPS):
        dl = np.empty_like(z)
        loss, c = ops.softmax_xent(z, y, dlogits=dl)
        assert np.isfinite(loss) and np.all(np.isfinite(dl))
        outs.append((loss, c, dl))
    assert outs[0][0] == pytest.approx(outs[1][0], rel=1e-6)
    assert outs[0][1] == outs[1][1]
    np.testing.assert_allclose(outs[0][2], outs[1][2], rtol=1e-5, atol=1e-7)


def test_softmax_xent_rejects_bad_labels():
    z = np.zeros((3, 4))
    for bad in ([0, 1, 4], [-1, 0, 0]):
        for ops in (NUMPY_OPS, CPU_OPS):
            with pytest.raises(ValueError, match="labels"):
                ops.softmax_xent(z, np.array(bad))
    with pytest.raises(ValueError, match="shape"):
        NUMPY_OPS.softmax_xent(z, np.zeros((3, 5)))


def test_losses_functions_match_naive():
    """pynn.losses.* functions (Keras per-sample API) agree with the kernel's
    definition, also on rows that do not sum to 1."""
    from pynn import losses
    rng = np.random.default_rng(1)
    for from_logits in (True, False):
        a, y = _xent_inputs(rng, 6, 4, from_logits, True)
        per = losses.sparse_categorical_crossentropy(y, a, from_logits=from_logits)
        assert per.shape == (6,)
        assert per.mean() == pytest.approx(naive_xent(a, y, from_logits, True), rel=1e-12)
        t = np.eye(4)[y]
        per_c = losses.categorical_crossentropy(t, a, from_logits=from_logits)
        np.testing.assert_allclose(per_c, per, rtol=1e-12)
        obj = losses.SparseCategoricalCrossentropy(from_logits=from_logits)
        assert obj(y, a) == pytest.approx(per.mean(), rel=1e-12)

"""Training kernels: softmax cross-entropy, optimizer updates, sum of
squares, batch normalisation -- against NumPy transcriptions of the
formulas (Keras 3), float64 finite differences for the gradients, bitwise
thread-count independence, and argument validation."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_bitwise_equal, threads
from strategies import dims, seeds

DTYPES = [np.float32, np.float64]
F64 = np.float64
# sizes for the elementwise kernels: 1, primes, around SIMD widths and the
# 16k chunk, and past the 64k threading threshold
VEC_SIZES = [1, 2, 3, 7, 13, 15, 16, 17, 31, 97, 251, 1000, 16_383, 16_385, 65_537, 100_003]


def tol(dtype):
    return dict(rtol=2e-6, atol=1e-6) if np.dtype(dtype) == np.float32 else dict(rtol=1e-12, atol=1e-13)


# ================================================ softmax cross-entropy ==

def xent_ref(x, labels, from_logits=True):
    """(loss_sum, n_correct, probs, dlogits(grad_scale=1)) in float64."""
    X = np.asarray(x, F64)
    n, k = X.shape
    if labels.ndim == 1:
        T = np.zeros((n, k))
        T[np.arange(n), labels] = 1.0
        tgt = labels
    else:
        T = np.asarray(labels, F64)
        tgt = np.argmax(labels, axis=1)
    correct = int(np.sum(np.argmax(x, axis=1) == tgt))
    if from_logits:
        m = X.max(axis=1, keepdims=True)
        z = X - m
        lse = np.log(np.exp(z).sum(axis=1, keepdims=True))
        logp = z - lse
        loss = -np.sum(np.where(T != 0, T * logp, 0.0))
        p = np.exp(logp)
        return loss, correct, p, p - T
    S = X.sum(axis=1, keepdims=True)
    q = X / S
    # Keras clips in the tensor's dtype: float32's 1 - 1e-7 is 0.99999988
    dt = np.asarray(x).dtype.type
    lo, hi = float(dt(1e-7)), float(dt(1 - 1e-7))
    qc = np.clip(q, lo, hi)
    loss = -np.sum(np.where(T != 0, T * np.log(qc), 0.0))
    inside = (q >= lo) & (q <= hi)
    r = np.where(inside & (T != 0), T / q, 0.0)
    R = np.sum(r * q, axis=1, keepdims=True)
    return loss, correct, q, (R - r) / S


@settings(deadline=None)
@given(n=dims(1, 300), k=st.sampled_from([1, 2, 3, 10, 13, 17, 64, 100]),
       dtype=st.sampled_from(DTYPES), label_mode=st.sampled_from(["i32", "i64", "cat"]),
       from_logits=st.booleans(), inplace=st.booleans(), seed=seeds())
def test_softmax_xent_matches_reference(num_threads, n, k, dtype, label_mode, from_logits,
                                        inplace, seed):
    rng = np.random.default_rng(seed)
    if from_logits:
        x = (rng.standard_normal((n, k)) * 3).astype(dtype)
    else:
        x = rng.uniform(0.05, 1.0, (n, k)).astype(dtype)
        x /= x.sum(axis=1, keepdims=True)  # rows roughly summing to 1
    if label_mode == "cat":
        labels = rng.uniform(0, 1, (n, k)).astype(dtype)
        labels[rng.random((n, k)) < 0.3] = 0
        labels /= np.maximum(labels.sum(axis=1, keepdims=True), 1e-3)
    else:
        labels = rng.integers(0, k, n).astype(np.int32 if label_mode == "i32" else np.int64)
    loss_r, corr_r, p_r, d_r = xent_ref(x, labels, from_logits)
    gs = 1.0 / n
    probs = np.full((n, k), np.nan, dtype)
    x_in = x.copy()
    dl = x_in if inplace else np.full((n, k), np.nan, dtype)
    loss, corr = nk.softmax_xent(x_in, labels, dlogits=dl, probs=probs, from_logits=from_logits)
    assert isinstance(loss, float) and isinstance(corr, int)
    np.testing.assert_allclose(loss, loss_r, rtol=1e-10, atol=1e-12)
    assert corr == corr_r
    t = tol(dtype)
    np.testing.assert_allclose(probs, p_r, rtol=t["rtol"], atol=t["atol"])
    np.testing.assert_allclose(dl, d_r * gs, rtol=t["rtol"],
                               atol=t["atol"] * max(1.0, np.abs(d_r).max()) * gs)
    # without outputs: the same loss, bitwise, and nothing written
    x2 = x.copy()
    assert nk.softmax_xent(x2, labels, from_logits=from_logits) == (loss, corr)
    np.testing.assert_array_equal(x2, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_grad_scale_and_stability(dtype):
    x = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4, -5e4 + 1]], dtype)
    y = np.array([0, 1])
    d = np.empty_like(x)
    loss, corr = nk.softmax_xent(x, y, dlogits=d, grad_scale=2.0)
    # row 0: loss ~ 0 (exp(-1000) underflows); row 1: lse - z[1]
    lse1 = -5e4 + 1 + np.log(1 + 2 * np.exp(-1.0))
    np.testing.assert_allclose(loss, 0.0 + (lse1 - (-5e4)), rtol=1e-6)
    assert corr == 1
    assert np.isfinite(d).all()
    p1 = np.exp(np.array([-1.0, -1.0, 0.0]))
    p1 /= p1.sum()
    np.testing.assert_allclose(d[1], 2.0 * (p1 - [0, 1, 0]), rtol=1e-5, atol=1e-7)


def test_softmax_xent_finite_difference_logits():
    rng = np.random.default_rng(3)
    for from_logits in (True, False):
        for labels in (np.array([2, 0, 1, 2]), rng.dirichlet(np.ones(3), 4)):
            if from_logits:
                x = rng.standard_normal((4, 3))
            else:
                x = rng.uniform(0.1, 1.0, (4, 3))  # un-normalised rows
            d = np.empty_like(x)
            nk.softmax_xent(x, labels, dlogits=d, from_logits=from_logits, grad_scale=1.0)
            h = 1e-6
            fd = np.empty_like(x)
            for idx in np.ndindex(x.shape):
                xp, xm = x.copy(), x.copy()
                xp[idx] += h
                xm[idx] -= h
                fd[idx] = (nk.softmax_xent(xp, labels, from_logits=from_logits)[0]
                           - nk.softmax_xent(xm, labels, from_logits=from_logits)[0]) / (2 * h)
            np.testing.assert_allclose(d, fd, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_xent_nan_inf_and_ties(dtype):
    x = np.array([[0.0, np.nan, 1.0], [np.inf, 0.0, 1.0], [-np.inf, 0.0, 1.0],
                  [2.0, 2.0, 1.0]], dtype)
    y = np.array([2, 1, 0, 1])
    loss, corr = nk.softmax_xent(x, y, dlogits=np.empty_like(x), probs=np.empty_like(x))
    assert np.isnan(loss) or np.isinf(loss)
    assert corr == int(np.sum(np.argmax(x, axis=1) == y))  # NaN wins, first max wins
    # label on a -inf logit: +inf loss
    loss, _ = nk.softmax_xent(np.array([[-np.inf, 0.0]], dtype), np.array([0]))
    assert loss == np.inf
    loss, corr = nk.softmax_xent(np.array([[2.0, 2.0]], dtype), np.array([1]))
    assert corr == 0 and abs(loss - np.log(2)) < 1e-6


def test_softmax_xent_threads_bitwise():
    rng = np.random.default_rng(7)
    for dtype in DTYPES:
        x = rng.standard_normal((20_011, 10)).astype(dtype)
        y = rng.integers(0, 10, 20_011)
        res = []
        for nt in (1, 2):
            d = np.empty_like(x)
            with threads(nt):
                res.append((nk.softmax_xent(x, y, dlogits=d), d))
        assert res[0][0] == res[1][0]
        assert_bitwise_equal(res[0][1], res[1][1])


def test_softmax_xent_errors():
    x = np.zeros((4, 3), np.float32)
    sentinel = np.full((4, 3), 7.0, np.float32)
    for bad in (np.array([0, 1, 3, 0]), np.array([0, -1, 2, 0], np.int32)):
        d = sentinel.copy()
        with pytest.raises(ValueError, match=r"outside \[0, 3\)"):
            nk.softmax_xent(x, bad, dlogits=d)
        np.testing.assert_array_equal(d, sentinel)  # nothing written
    with pytest.raises(ValueError, match=r"\(4,\)"):
        nk.softmax_xent(x, np.zeros(5, np.int64))
    with pytest.raises(TypeError, match="dtype"):
        nk.softmax_xent(x, np.zeros((4, 3), np.float64))
    with pytest.raises(ValueError, match="shape"):
        nk.softmax_xent(x, np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="labels"):
        nk.softmax_xent(x, np.array(["a"] * 4))
    with pytest.raises(ValueError, match="2-D"):
        nk.softmax_xent(np.zeros(3, np.float32), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.softmax_xent(np.zeros((2, 2), np.int32), np.zeros(2, np.int64))
    with pytest.raises(ValueError, match="shape"):
        nk.softmax_xent(x, np.zeros(4, np.int64), dlogits=np.empty((3, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        nk.softmax_xent(x, np.zeros(4, np.int64), probs=np.empty((4, 3)))
    d = np.empty((4, 3), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nk.softmax_xent(x, np.zeros(4, np.int64), dlogits=d, probs=d)
    t = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nk.softmax_xent(x, t, dlogits=t)
    # each of them may be the logits themselves, but not both at once
    xx = x.copy()
    with pytest.raises(ValueError, match="overlap"):
        nk.softmax_xent(xx, np.zeros(4, np.int64), dlogits=xx, probs=xx)
    # (N, 1) class ids, uint8 ids and N = 0 are fine
    assert nk.softmax_xent(x, np.zeros((4, 1), np.int64))[1] == 4
    assert nk.softmax_xent(x, np.zeros(4, np.uint8))[1] == 4
    assert nk.softmax_xent(np.zeros((0, 3), np.float32), np.zeros(0, np.int64)) == (0.0, 0)


# =========================================================== optimizers ==

def c(v, dtype):
    return np.dtype(dtype).type(v)


def sgd_ref(p, g, m, lr, momentum, nesterov):
    dt = p.dtype
    if momentum == 0:
        return p - g * c(lr, dt), m
    m = m * c(momentum, dt) - g * c(lr, dt)
    if nesterov:
        return p + (m * c(momentum, dt) - g * c(lr, dt)), m
    return p + m, m


def adam_ref(p, g, m, v, lr, b1, b2, eps, t):
    dt = p.dtype
    alpha = c(lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t), dt)
    m = m + (g - m) * c(1 - b1, dt)
    v = v + (g * g - v) * c(1 - b2, dt)
    return p - (m * alpha) / (np.sqrt(v) + c(eps, dt)), m, v


def rmsprop_ref(p, g, v, m, mg, lr, rho, eps, momentum, centered):
    dt = p.dtype
    rho_, omr, lr_, eps_ = c(rho, dt), c(1 - rho, dt), c(lr, dt), c(eps, dt)
    v = rho_ * v + omr * (g * g)
    if centered:
        mg = rho_ * mg + omr * g
        inc = (lr_ * g) / np.sqrt(v - mg * mg + eps_)
    else:
        inc = (lr_ * g) / np.sqrt(v + eps_)
    if momentum > 0:
        m = c(momentum, dt) * m + inc
        return p - m, v, m, mg
    return p - inc, v, m, mg


def adadelta_ref(p, g, ag, ad, lr, rho, eps):
    dt = p.dtype
    rho_, omr, eps_ = c(rho, dt), c(1 - rho, dt), c(eps, dt)
    ag = rho_ * ag + omr * (g * g)
    delta = -((np.sqrt(ad + eps_) * g) / np.sqrt(ag + eps_))
    ad = rho_ * ad + omr * (delta * delta)
    return p + c(lr, dt) * delta, ag, ad


def close(got, ref, dtype, what):
    t = tol(dtype)
    np.testing.assert_allclose(got, ref, rtol=t["rtol"], atol=t["atol"], err_msg=what)


STEPS = 3


@settings(deadline=None)
@given(n=st.sampled_from(VEC_SIZES), dtype=st.sampled_from(DTYPES), seed=seeds(),
       momentum=st.sampled_from([0.0, 0.9, 0.5]), nesterov=st.booleans(),
       lr=st.sampled_from([0.01, 0.1, 1e-3]))
def test_sgd_update(num_threads, n, dtype, seed, momentum, nesterov, lr):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    m = np.zeros(n, dtype)
    rp, rm = p.copy(), m.copy()
    for _ in range(STEPS):
        g = rng.standard_normal(n).astype(dtype)
        assert nk.sgd_update(p, g, lr, momentum=momentum, nesterov=nesterov,
                             m=m if momentum else None) is p
        rp, rm = sgd_ref(rp, g, rm, lr, momentum, nesterov)
    close(p, rp, dtype, "p")
    if momentum:
        close(m, rm, dtype, "m")


@settings(deadline=None)
@given(n=st.sampled_from(VEC_SIZES), dtype=st.sampled_from(DTYPES), seed=seeds(),
       b1=st.sampled_from([0.9, 0.5]), b2=st.sampled_from([0.999, 0.9]),
       eps=st.sampled_from([1e-7, 1e-3]), step0=st.sampled_from([1, 7, 1000]))
def test_adam_update(num_threads, n, dtype, seed, b1, b2, eps, step0):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    m, v = np.zeros(n, dtype), np.zeros(n, dtype)
    rp, rm, rv = p.copy(), m.copy(), v.copy()
    for t in range(step0, step0 + STEPS):
        g = rng.standard_normal(n).astype(dtype)
        nk.adam_update(p, g, m, v, 1e-3, beta_1=b1, beta_2=b2, epsilon=eps, step=t)
        rp, rm, rv = adam_ref(rp, g, rm, rv, 1e-3, b1, b2, eps, t)
    close(m, rm, dtype, "m")
    close(v, rv, dtype, "v")
    close(p, rp, dtype, "p")


@settings(deadline=None)
@given(n=st.sampled_from(VEC_SIZES), dtype=st.sampled_from(DTYPES), seed=seeds(),
       rho=st.sampled_from([0.9, 0.5]), momentum=st.sampled_from([0.0, 0.9]),
       centered=st.booleans())
def test_rmsprop_update(num_threads, n, dtype, seed, rho, momentum, centered):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    v, m, mg = (np.zeros(n, dtype) for _ in range(3))
    rp, rv, rm, rmg = p.copy(), v.copy(), m.copy(), mg.copy()
    for _ in range(STEPS):
        g = rng.standard_normal(n).astype(dtype)
        nk.rmsprop_update(p, g, v, 1e-3, rho=rho, momentum=momentum,
                          m=m if momentum else None, centered=centered,
                          mg=mg if centered else None)
        rp, rv, rm, rmg = rmsprop_ref(rp, g, rv, rm, rmg, 1e-3, rho, 1e-7, momentum, centered)
    close(v, rv, dtype, "v")
    close(p, rp, dtype, "p")
    if momentum:
        close(m, rm, dtype, "m")
    if centered:
        close(mg, rmg, dtype, "mg")


@settings(deadline=None)
@given(n=st.sampled_from(VEC_SIZES), dtype=st.sampled_from(DTYPES), seed=seeds(),
       rho=st.sampled_from([0.95, 0.5]), lr=st.sampled_from([1.0, 0.01]))
def test_adadelta_update(num_threads, n, dtype, seed, rho, lr):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(n).astype(dtype)
    ag, ad = np.zeros(n, dtype), np.zeros(n, dtype)
    rp, rag, rad = p.copy(), ag.copy(), ad.copy()
    for _ in range(STEPS):
        g = rng.standard_normal(n).astype(dtype)
        nk.adadelta_update(p, g, ag, ad, lr, rho=rho)
        rp, rag, rad = adadelta_ref(rp, g, rag, rad, lr, rho, 1e-7)
    close(ag, rag, dtype, "acc_g")
    close(ad, rad, dtype, "acc_d")
    close(p, rp, dtype, "p")


@pytest.mark.parametrize("dtype", DTYPES)
def test_optimizers_threads_bitwise_and_shapes(dtype):
    """Elementwise: 1 and 2 threads give the same bits; any C-contiguous
    shape works (a Dense kernel (in, out) updated directly)."""
    rng = np.random.default_rng(11)
    shape = (317, 631)  # 200k elements: threaded
    g = rng.standard_normal(shape).astype(dtype)
    p0 = rng.standard_normal(shape).astype(dtype)
    outs = []
    for nt in (1, 2):
        with threads(nt):
            p, m, v = p0.copy(), np.zeros(shape, dtype), np.zeros(shape, dtype)
            nk.adam_update(p, g, m, v, 1e-3, step=1)
            nk.adam_update(p, g, m, v, 1e-3, step=2)
            nk.rmsprop_update(p, g, v, 1e-3, momentum=0.9, m=m)
            nk.sgd_update(p, g, 0.1, momentum=0.9, nesterov=True, m=m)
            nk.adadelta_update(p, g, m, v, 1.0)
            outs.append((p, m, v))
    for a, b in zip(*outs):
        assert_bitwise_equal(a, b)
    # non-contiguous g is copied, the result is the same
    big = np.zeros((shape[0], 2 * shape[1]), dtype)
    big[:, ::2] = g
    p = p0.copy()
    nk.sgd_update(p, big[:, ::2], 0.1)
    np.testing.assert_array_equal(p, p0 - g * c(0.1, dtype))


def test_optimizer_errors():
    p = np.zeros(10, np.float32)
    g = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="needs the momentum buffer m"):
        nk.sgd_update(p, g, 0.1, momentum=0.9)
    with pytest.raises(ValueError, match=r"m has shape \(9,\), expected \(10,\)"):
        nk.sgd_update(p, g, 0.1, momentum=0.9, m=np.zeros(9, np.float32))
    with pytest.raises(ValueError, match=r"g has shape \(11,\)"):
        nk.sgd_update(p, np.zeros(11, np.float32), 0.1)
    with pytest.raises(TypeError, match="g has dtype float64"):
        nk.sgd_update(p, np.zeros(10), 0.1)
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.sgd_update(np.zeros(10, np.int32), np.zeros(10, np.int32), 0.1)
    with pytest.raises(TypeError, match="numpy.ndarray"):
        nk.sgd_update([0.0] * 10, g, 0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.sgd_update(np.zeros(20, np.float32)[::2], g, 0.1)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(10, np.float32)
        ro.flags.writeable = False
        nk.sgd_update(ro, g, 0.1)
    with pytest.raises(ValueError, match="overlap"):
        nk.adam_update(p, g, g, np.zeros(10, np.float32), 1e-3)
    with pytest.raises(ValueError, match="overlap"):
        nk.sgd_update(p, p, 0.1)
    with pytest.raises(ValueError, match="step"):
        nk.adam_update(p, g, np.zeros(10, np.float32), np.zeros(10, np.float32), 1e-3, step=0)
    with pytest.raises(TypeError, match="step"):
        nk.adam_update(p, g, np.zeros(10, np.float32), np.zeros(10, np.float32), 1e-3, step=1.5)
    with pytest.raises(TypeError, match="lr"):
        nk.sgd_update(p, g, "0.1")
    with pytest.raises(ValueError, match="mg"):
        nk.rmsprop_update(p, g, np.zeros(10, np.float32), 1e-3, centered=True)
    with pytest.raises(ValueError, match="momentum buffer"):
        nk.rmsprop_update(p, g, np.zeros(10, np.float32), 1e-3, momentum=0.5)
    with pytest.raises(TypeError, match="acc_d has dtype"):
        nk.adadelta_update(p, g, np.zeros(10, np.float32), np.zeros(10), 1.0)
    # empty arrays are a no-op
    e = np.zeros(0, np.float32)
    nk.adam_update(e, e.copy(), e.copy(), e.copy(), 1e-3)


# ========================================================== sum_squares ==

@settings(deadline=None)
@given(n=st.sampled_from([0] + VEC_SIZES + [1_000_003]), dtype=st.sampled_from(DTYPES),
       seed=seeds())
def test_sum_squares(num_threads, n, dtype, seed):
    x = np.random.default_rng(seed).standard_normal(n).astype(dtype)
    s = nk.sum_squares(x)
    assert isinstance(s, float)
    np.testing.assert_allclose(s, np.sum(x.astype(F64) ** 2), rtol=1e-12, atol=0)


def test_sum_squares_threads_bitwise_and_layouts():
    x = np.random.default_rng(1).standard_normal((1001, 1003)).astype(np.float32)
    with threads(1):
        a = nk.sum_squares(x)
    with threads(2):
        b = nk.sum_squares(x)
    assert a == b
    assert nk.sum_squares(x[:, ::3]) == nk.sum_squares(np.ascontiguousarray(x[:, ::3]))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.sum_squares(np.ones(3, np.int64))


# ================================================= batch normalisation ==

def bn_ref(x, gamma, beta, eps, mean=None, var=None):
    X = np.asarray(x, F64).reshape(-1, x.shape[-1])
    if mean is None:
        mean, var = X.mean(axis=0), X.var(axis=0)
    g = np.ones(X.shape[1]) if gamma is None else np.asarray(gamma, F64)
    b = np.zeros(X.shape[1]) if beta is None else np.asarray(beta, F64)
    invstd = 1.0 / np.sqrt(np.asarray(var, F64) + eps)
    y = (X - mean) * invstd * g + b
    return y.reshape(x.shape), mean, var, invstd


def bn_bwd_ref(dy, x, gamma, mean, invstd):
    C = x.shape[-1]
    DY = np.asarray(dy, F64).reshape(-1, C)
    X = np.asarray(x, F64).reshape(-1, C)
    M = X.shape[0]
    g = np.ones(C) if gamma is None else np.asarray(gamma, F64)
    xhat = (X - np.asarray(mean, F64)) * np.asarray(invstd, F64)
    dbeta = DY.sum(axis=0)
    dgamma = (DY * xhat).sum(axis=0)
    dx = g * invstd / M * (M * DY - dbeta - xhat * dgamma)
    return dx.reshape(x.shape), dgamma, dbeta


@st.composite
def bn_shapes(draw):
    c = draw(st.sampled_from([1, 3, 7, 16, 17, 32, 64, 100]))
    if draw(st.booleans()):
        return (draw(dims(1, 300)), c)
    return (draw(st.sampled_from([1, 2, 5, 16])), draw(st.sampled_from([1, 3, 7, 14])),
            draw(st.sampled_from([1, 4, 13])), c)


@settings(deadline=None)
@given(shape=bn_shapes(), dtype=st.sampled_from(DTYPES), seed=seeds(),
       affine=st.sampled_from(["both", "none", "gamma", "beta"]), inplace=st.booleans(),
       offset=st.sampled_from([0.0, 5.0]))
def test_batchnorm_forward_backward(num_threads, shape, dtype, seed, affine, inplace, offset):
    rng = np.random.default_rng(seed)
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype) if affine in ("both", "gamma") else None
    beta = rng.standard_normal(C).astype(dtype) if affine in ("both", "beta") else None
    mm0 = rng.standard_normal(C).astype(dtype)
    mv0 = rng.uniform(0.5, 2, C).astype(dtype)
    mm, mv = mm0.copy(), mv0.copy()
    sm, si = np.full(C, np.nan, dtype), np.full(C, np.nan, dtype)
    y_r, mean_r, var_r, invstd_r = bn_ref(x, gamma, beta, 1e-3)
    xin = x.copy()
    out = xin if inplace else None
    y = nk.batchnorm_forward(xin, gamma, beta, training=True, moving_mean=mm, moving_var=mv,
                             momentum=0.99, epsilon=1e-3, out=out, save_mean=sm,
                             save_invstd=si)
    assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
    if inplace:
        assert y is xin
    f32 = np.dtype(dtype) == np.float32
    rt, at = (2e-5, 2e-5) if f32 else (1e-11, 1e-11)
    np.testing.assert_allclose(y, y_r, rtol=rt, atol=at * (1 + offset))
    np.testing.assert_allclose(sm, mean_r, rtol=rt, atol=at)
    np.testing.assert_allclose(si, invstd_r, rtol=rt, atol=at)
    np.testing.assert_allclose(mm, mm0 * 0.99 + mean_r * 0.01, rtol=rt, atol=at)
    np.testing.assert_allclose(mv, mv0 * 0.99 + var_r * 0.01, rtol=rt, atol=at)

    # inference with the moving statistics
    yi = nk.batchnorm_forward(x, gamma, beta, training=False, moving_mean=mm, moving_var=mv)
    yi_r = bn_ref(x, gamma, beta, 1e-3, mean=np.asarray(mm, F64), var=np.asarray(mv, F64))[0]
    np.testing.assert_allclose(yi, yi_r, rtol=rt, atol=at * (1 + offset))

    # backward from the saved statistics
    dy = rng.standard_normal(shape).astype(dtype)
    dx_r, dg_r, db_r = bn_bwd_ref(dy, x, gamma, sm, si)
    M = x.size // C
    dx, dg, db = nk.batchnorm_backward(dy, x, gamma, sm, si)
    sc = np.sqrt(M)  # magnitude of the sums
    np.testing.assert_allclose(db, db_r, rtol=rt, atol=at * sc)
    np.testing.assert_allclose(dg, dg_r, rtol=rt, atol=at * sc)
    # per element, relative to the magnitude of the terms that cancel
    g = np.ones(C) if gamma is None else gamma.astype(F64)
    xh = np.abs((x.astype(F64) - sm.astype(F64)) * si.astype(F64))
    dx_scale = np.abs(g * si) * (np.abs(dy) + np.abs(db_r) / M + xh * np.abs(dg_r) / M)
    np.testing.assert_array_less(np.abs(dx - dx_r), 5 * rt * dx_scale + at)
    # in place (dx = dy) and given outputs give the same bits
    dgo, dbo = np.empty(C, dtype), np.empty(C, dtype)
    dyc = dy.copy()
    r = nk.batchnorm_backward(dyc, x, gamma, sm, si, dx=dyc, dgamma=dgo, dbeta=dbo)
    assert r[0] is dyc and r[1] is dgo and r[2] is dbo
    assert_bitwise_equal(dyc, dx)
    assert_bitwise_equal(dgo, dg)
    assert_bitwise_equal(dbo, db)


def test_batchnorm_finite_differences():
    """float64: dx, dgamma, dbeta of L = sum(w * y) by central differences,
    exhaustive on tiny shapes and along a random direction on a larger one."""
    rng = np.random.default_rng(5)

    def loss(x, gamma, beta, w):
        y = nk.batchnorm_forward(x, gamma, beta, training=True, epsilon=1e-3)
        return float(np.sum(w * y))

    for shape in [(5, 3), (2, 3, 2, 4), (1, 2)]:
        C = shape[-1]
        x = rng.standard_normal(shape)
        gamma = rng.uniform(0.5, 1.5, C)
        beta = rng.standard_normal(C)
        w = rng.standard_normal(shape)
        sm, si = np.empty(C), np.empty(C)
        nk.batchnorm_forward(x, gamma, beta, training=True, epsilon=1e-3, save_mean=sm,
                             save_invstd=si)
        dx, dg, db = nk.batchnorm_backward(w, x, gamma, sm, si)
        h = 1e-6
        for arr, grad in ((x, dx), (gamma, dg), (beta, db)):
            fd = np.empty_like(arr)
            for idx in np.ndindex(arr.shape):
                old = arr[idx]
                arr[idx] = old + h
                lp = loss(x, gamma, beta, w)
                arr[idx] = old - h
                lm = loss(x, gamma, beta, w)
                arr[idx] = old
                fd[idx] = (lp - lm) / (2 * h)
            np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)

    # directional derivative on an NHWC batch
    shape = (4, 5, 5, 8)
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.standard_normal(8)
    w = rng.standard_normal(shape)
    sm, si = np.empty(8), np.empty(8)
    nk.batchnorm_forward(x, gamma, beta, training=True, epsilon=1e-3, save_mean=sm,
                         save_invstd=si)
    dx, dg, db = nk.batchnorm_backward(w, x, gamma, sm, si)
    u, ug, ub = rng.standard_normal(shape), rng.standard_normal(8), rng.standard_normal(8)
    h = 1e-6
    fd = (loss(x + h * u, gamma + h * ug, beta + h * ub, w)
          - loss(x - h * u, gamma - h * ug, beta - h * ub, w)) / (2 * h)
    an = np.sum(dx * u) + np.sum(dg * ug) + np.sum(db * ub)
    np.testing.assert_allclose(an, fd, rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_threads_bitwise_and_layouts(dtype):
    rng = np.random.default_rng(9)
    x = (rng.standard_normal((64, 14, 14, 32)) + 3).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, 32).astype(dtype), rng.standard_normal(32).astype(dtype)
    dy = rng.standard_normal(x.shape).astype(dtype)
    res = []
    for nt in (1, 2):
        with threads(nt):
            mm, mv = np.zeros(32, dtype), np.ones(32, dtype)
            sm, si = np.empty(32, dtype), np.empty(32, dtype)
            y = nk.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm,
                                     moving_var=mv, save_mean=sm, save_invstd=si)
            res.append((y, mm, mv, sm, si) + nk.batchnorm_backward(dy, x, gamma, sm, si))
    for a, b in zip(*res):
        assert_bitwise_equal(a, b)
    # non-contiguous inputs are copied: same result
    big = np.zeros((64, 14, 14, 64), dtype)
    big[..., ::2] = x
    y2 = nk.batchnorm_forward(big[..., ::2], gamma, beta, training=True)
    assert_bitwise_equal(y2, res[0][0])


def test_batchnorm_errors():
    x = np.zeros((4, 3), np.float32)
    v = np.zeros(3, np.float32)
    with pytest.raises(ValueError, match=r"gamma has shape \(4,\), expected \(3,\)"):
        nk.batchnorm_forward(x, np.zeros(4, np.float32), None, training=True)
    with pytest.raises(TypeError, match="beta has dtype float64"):
        nk.batchnorm_forward(x, None, np.zeros(3), training=True)
    with pytest.raises(ValueError, match="moving_mean is required"):
        nk.batchnorm_forward(x, None, None, training=False)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        nk.batchnorm_forward(np.zeros(3, np.float32), None, None, training=True)
    with pytest.raises(ValueError, match="at least one row"):
        nk.batchnorm_forward(np.zeros((0, 3), np.float32), None, None, training=True)
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.batchnorm_forward(x, None, None, training=True, moving_mean=np.zeros(6, np.float32)[::2])
    with pytest.raises(ValueError, match="overlaps"):
        nk.batchnorm_forward(x, v, None, training=True, save_mean=v)
    with pytest.raises(ValueError, match="shape"):
        nk.batchnorm_forward(x, None, None, training=True, out=np.zeros((3, 4), np.float32))
    with pytest.raises(ValueError, match=r"x has shape \(4, 2\), expected dy's \(4, 3\)"):
        nk.batchnorm_backward(x, np.zeros((4, 2), np.float32), None, v, v)
    with pytest.raises(TypeError, match="same dtype"):
        nk.batchnorm_backward(x, np.zeros((4, 3)), None, v, v)
    with pytest.raises(ValueError, match="overlaps"):
        nk.batchnorm_backward(x, x.copy(), None, v, v, dgamma=v)
    with pytest.raises(ValueError, match="overlaps"):
        xx = x.copy()
        nk.batchnorm_backward(x, xx, None, v, v, dx=xx)
    # zero rows in backward: dx empty, zero sums
    dx, dg, db = nk.batchnorm_backward(np.zeros((0, 3)), np.zeros((0, 3)), None,
                                       np.zeros(3), np.ones(3))
    assert dx.shape == (0, 3) and not dg.any() and not db.any()

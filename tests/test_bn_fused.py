"""Batch normalisation with fused epilogues (the residual block's BN -> ReLU
and BN -> Add(shortcut) -> ReLU):

  batchnorm_forward(..., residual=, activation=)   out = act(BN(x) + residual)
  batchnorm_backward(..., y=, activation=, dresidual=)
  batchnorm_backward(..., save_scale=, beta=, activation="relu")  the ReLU
      mask recomputed from x (a forward without residual), bitwise y > 0

against float64 NumPy references, bitwise against the separate kernels
(batchnorm then add then relu; relu_backward then batchnorm_backward),
bitwise across thread counts and across the kernel paths (the row loops are
compiled once per ISA: generic, AVX2, AVX-512), by float64 finite differences,
and the validation of every new argument."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_bitwise_equal, isa, threads
from strategies import seeds

DTYPES = [np.float32, np.float64]
F64 = np.float64
EPS = 1e-3
# M = 1, primes (the last ones: several row blocks, threaded); C as in a
# ResNet plus sizes around the SIMD widths
ROWS = [1, 2, 3, 7, 13, 31, 97, 251, 1009, 4099]
CHANNELS = [1, 3, 16, 17, 32, 48, 64, 130]  # the reductions' blocks: 32, 16, tails


# ------------------------------------------------------------ references --

def fwd_ref(x, gamma, beta, residual, activation, mean=None, var=None):
    """(out, mean, var, invstd) in float64; mean/var given: inference."""
    C = x.shape[-1]
    X = np.asarray(x, F64).reshape(-1, C)
    if mean is None:
        mean, var = X.mean(axis=0), X.var(axis=0)
    mean, var = np.asarray(mean, F64), np.asarray(var, F64)
    g = np.ones(C) if gamma is None else np.asarray(gamma, F64)
    b = np.zeros(C) if beta is None else np.asarray(beta, F64)
    invstd = 1.0 / np.sqrt(var + EPS)
    z = (X - mean) * invstd * g + b
    if residual is not None:
        z = z + np.asarray(residual, F64).reshape(-1, C)
    if activation == "relu":
        z = np.maximum(z, 0.0)
    return z.reshape(x.shape), mean, var, invstd


def bwd_ref(dy, x, y, gamma, mean, invstd, activation):
    """(dx, dgamma, dbeta, dresidual) in float64; the ReLU mask from y."""
    C = x.shape[-1]
    DZ = np.asarray(dy, F64).reshape(-1, C)
    if activation == "relu":
        DZ = np.where(np.asarray(y).reshape(-1, C) > 0, DZ, 0.0)
    X = np.asarray(x, F64).reshape(-1, C)
    M = X.shape[0]
    g = np.ones(C) if gamma is None else np.asarray(gamma, F64)
    mean, invstd = np.asarray(mean, F64), np.asarray(invstd, F64)
    xhat = (X - mean) * invstd
    dbeta = DZ.sum(axis=0)
    dgamma = (DZ * xhat).sum(axis=0)
    dx = g * invstd / M * (M * DZ - dbeta - xhat * dgamma)
    return dx.reshape(x.shape), dgamma, dbeta, DZ.reshape(x.shape)


def separate_forward(x, gamma, beta, residual, activation, **kw):
    """The unfused sequence the fused kernel must match bit for bit."""
    y = nk.batchnorm_forward(x, gamma, beta, **kw)
    if residual is not None:
        y += residual  # in x's dtype, after the affine transform
    if activation == "relu":
        nk.relu(y, out=y)
    return y


def tols(dtype):
    return (2e-5, 2e-5) if np.dtype(dtype) == np.float32 else (1e-11, 1e-11)


def make(rng, shape, dtype, affine=True, offset=0.0):
    C = shape[-1]
    x = (rng.standard_normal(shape) * 2 + offset).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, C).astype(dtype) if affine else None
    beta = rng.standard_normal(C).astype(dtype) if affine else None
    return x, gamma, beta


# ------------------------------------------------------- property test --

@settings(deadline=None)
@given(m=st.sampled_from(ROWS), c=st.sampled_from(CHANNELS), nhwc=st.booleans(),
       dtype=st.sampled_from(DTYPES), training=st.booleans(), with_res=st.booleans(),
       activation=st.sampled_from([None, "linear", "relu"]), affine=st.booleans(),
       inplace=st.sampled_from(["no", "x", "residual"]), seed=seeds())
def test_fused_matches_reference_separate_and_threads(m, c, nhwc, dtype, training, with_res,
                                                      activation, affine, inplace, seed):
    rng = np.random.default_rng(seed)
    shape = (m, 1, 1, c) if nhwc else (m, c)
    x, gamma, beta = make(rng, shape, dtype, affine, offset=float(rng.choice([0.0, 3.0])))
    res = rng.standard_normal(shape).astype(dtype) if with_res else None
    mm0 = rng.standard_normal(c).astype(dtype)
    mv0 = rng.uniform(0.5, 2.0, c).astype(dtype)
    rt, at = tols(dtype)
    relu = activation == "relu"

    # ---- forward, 1 and 2 threads
    runs = []
    for nt in (1, 2):
        xin = x.copy()
        rin = res.copy() if with_res else None
        out = {"no": None, "x": xin, "residual": rin}[inplace if with_res or inplace != "residual"
                                                      else "no"]
        mm, mv = mm0.copy(), mv0.copy()
        sm, si = np.full(c, np.nan, dtype), np.full(c, np.nan, dtype)
        ss = np.full(c, np.nan, dtype)
        kw = (dict(training=True, moving_mean=mm, moving_var=mv, save_mean=sm, save_invstd=si,
                   save_scale=ss)
              if training else dict(training=False, moving_mean=mm0, moving_var=mv0,
                                    save_scale=ss))
        with threads(nt):
            y = nk.batchnorm_forward(xin, gamma, beta, residual=rin, activation=activation,
                                     out=out, **kw)
        if out is not None:
            assert y is out
        assert y.shape == x.shape and y.dtype == x.dtype and y.flags.c_contiguous
        if not training:
            assert np.isnan(ss).all()  # inference writes no statistics
        runs.append((y, mm, mv, sm, si, ss))
    for a, b in zip(*runs):
        assert_bitwise_equal(a, b)
    y, mm, mv, sm, si, ss = runs[0]

    # ---- against the separate kernels (bitwise) and the float64 reference
    kw = (dict(training=True, save_mean=np.empty(c, dtype), save_invstd=np.empty(c, dtype))
          if training else dict(training=False, moving_mean=mm0, moving_var=mv0))
    assert_bitwise_equal(y, separate_forward(x, gamma, beta, res, activation, **kw))
    if training:
        y_r, mean_r, var_r, invstd_r = fwd_ref(x, gamma, beta, res, activation)
        np.testing.assert_allclose(sm, mean_r, rtol=rt, atol=at * 4)
        np.testing.assert_allclose(si, invstd_r, rtol=rt, atol=at)
        g_r = np.ones(c) if gamma is None else gamma.astype(F64)
        np.testing.assert_allclose(ss, g_r * invstd_r, rtol=rt, atol=at)
        np.testing.assert_allclose(mm, mm0 * 0.99 + mean_r * 0.01, rtol=rt, atol=at * 4)
        np.testing.assert_allclose(mv, mv0 * 0.99 + var_r * 0.01, rtol=rt, atol=at * 4)
    else:
        y_r = fwd_ref(x, gamma, beta, res, activation, mean=mm0, var=mv0)[0]
    np.testing.assert_allclose(y, y_r, rtol=rt, atol=at * 10)
    if not training:
        return

    # ---- backward, 1 and 2 threads, with and without dresidual / in place
    dy = rng.standard_normal(shape).astype(dtype)
    bruns = []
    for nt in (1, 2):
        with threads(nt):
            dres = np.full(shape, np.nan, dtype)
            r = nk.batchnorm_backward(dy, x, gamma, sm, si, y=y if relu else None,
                                      activation=activation, dresidual=dres)
            bruns.append(r + (dres,))
    for a, b in zip(*bruns):
        assert_bitwise_equal(a, b)
    dx, dg, db, dres = bruns[0]
    # the separate kernels, bitwise
    dz = nk.relu_backward(dy, y) if relu else dy
    sx, sg, sb = nk.batchnorm_backward(dz, x, gamma, sm, si)
    assert_bitwise_equal(dx, sx)
    assert_bitwise_equal(dg, sg)
    assert_bitwise_equal(db, sb)
    assert_bitwise_equal(dres, dz)
    if relu and not with_res:
        # the mask recomputed from x with the forward's scale and beta: the
        # same bits as reading y, any thread count, with and without dresidual
        for nt in (1, 2):
            with threads(nt):
                dres2 = np.full(shape, np.nan, dtype)
                r = nk.batchnorm_backward(dy, x, gamma, sm, si, activation="relu",
                                          save_scale=ss, beta=beta, dresidual=dres2)
                r1 = nk.batchnorm_backward(dy, x, gamma, sm, si, activation="relu",
                                           save_scale=ss, beta=beta)
            for a, b in zip(r + (dres2,), (dx, dg, db, dres)):
                assert_bitwise_equal(a, b)
            for a, b in zip(r1, (dx, dg, db)):
                assert_bitwise_equal(a, b)
    # the float64 reference
    dx_r, dg_r, db_r, dz_r = bwd_ref(dy, x, y, gamma, sm, si, activation)
    M = x.size // c
    np.testing.assert_allclose(db, db_r, rtol=rt, atol=at * np.sqrt(M))
    np.testing.assert_allclose(dg, dg_r, rtol=rt, atol=at * np.sqrt(M))
    g = np.ones(c) if gamma is None else gamma.astype(F64)
    xh = np.abs((x.astype(F64) - sm.astype(F64)) * si.astype(F64))
    dx_scale = np.abs(g * si) * (np.abs(dz_r) + np.abs(db_r) / M + xh * np.abs(dg_r) / M)
    np.testing.assert_array_less(np.abs(dx - dx_r), 5 * rt * dx_scale + at)
    # in place: dx = dy, or dresidual = dy (same bits); no dresidual
    dyc = dy.copy()
    r = nk.batchnorm_backward(dyc, x, gamma, sm, si, y=y, activation=activation, dx=dyc)
    assert r[0] is dyc
    assert_bitwise_equal(dyc, dx)
    dyc = dy.copy()
    dxo = np.empty_like(dy)
    r = nk.batchnorm_backward(dyc, x, gamma, sm, si, y=y, activation=activation, dx=dxo,
                              dresidual=dyc)
    assert r[0] is dxo
    assert_bitwise_equal(dxo, dx)
    assert_bitwise_equal(dyc, dres)
    # dx = dy and dresidual = y together (pynn's graph, where nothing reads
    # them afterwards), 1 and 2 threads: the same bits
    for nt in (1, 2):
        dyc, yc = dy.copy(), y.copy()
        with threads(nt):
            r = nk.batchnorm_backward(dyc, x, gamma, sm, si, y=yc if relu else None,
                                      activation=activation, dx=dyc, dresidual=yc)
        assert r[0] is dyc
        assert_bitwise_equal(dyc, dx)
        assert_bitwise_equal(yc, dres)


# ------------------------------------------------------ fixed, threaded --

@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_threads_bitwise_large(dtype):
    """A ResNet-sized batch (several row blocks, threaded passes)."""
    rng = np.random.default_rng(9)
    shape = (32, 14, 14, 64)
    x, gamma, beta = make(rng, shape, dtype, offset=3.0)
    res = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    outs = []
    for nt in (1, 2):
        with threads(nt):
            mm, mv = np.zeros(64, dtype), np.ones(64, dtype)
            sm, si = np.empty(64, dtype), np.empty(64, dtype)
            y = nk.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm,
                                     moving_var=mv, save_mean=sm, save_invstd=si,
                                     residual=res, activation="relu")
            yi = nk.batchnorm_forward(x, gamma, beta, training=False, moving_mean=mm,
                                      moving_var=mv, residual=res, activation="relu")
            dres = np.empty_like(x)
            b = nk.batchnorm_backward(dy, x, gamma, sm, si, y=y, activation="relu",
                                      dresidual=dres)
            outs.append((y, yi, mm, mv, sm, si, dres) + b)
    for a, b in zip(*outs):
        assert_bitwise_equal(a, b)
    y = outs[0][0]
    assert (y == 0).mean() > 0.2 and (y > 0).mean() > 0.2  # both sides of the kink
    # the unfused sequence gives the same bits
    assert_bitwise_equal(y, separate_forward(x, gamma, beta, res, "relu", training=True))
    dz = nk.relu_backward(dy, y)
    for a, b in zip(outs[0][7:], nk.batchnorm_backward(dz, x, gamma, outs[0][4], outs[0][5])):
        assert_bitwise_equal(a, b)
    assert_bitwise_equal(outs[0][6], dz)


@pytest.mark.parametrize("xdtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", ["offset", "outlier_first_row", "sorted"])
def test_float_statistics_accuracy(xdtype, case):
    """The float32 statistics (float runs of 8 rows added in double, shifted
    by a sampled mean) against float64 on the same values: mean and var
    within a few float32 roundings, also where the data sits far from zero
    (|mean| = 1000 std), where the first row is 50 standard deviations out
    (the old shift, the first row, then lost three digits of var), and
    where the rows are sorted (no sample is near the mean).  Backward
    (dgamma, dbeta) likewise."""
    rng = np.random.default_rng(77)
    m, c = 20011, 16
    x = rng.standard_normal((m, c)) * np.linspace(0.5, 4, c) + 1000.0 * (case == "offset")
    if case == "outlier_first_row":
        x[0] = 50 * np.linspace(0.5, 4, c)
    if case == "sorted":
        x = np.sort(x, axis=0) * 10
    x = x.astype(np.float32)
    xk = nk.to_bf16(x) if xdtype == "bfloat16" else x
    xv = nk.from_bf16(xk).astype(F64) if xdtype == "bfloat16" else x.astype(F64)
    sm, si = np.empty(c, np.float32), np.empty(c, np.float32)
    nk.batchnorm_forward(xk, None, None, training=True, save_mean=sm, save_invstd=si,
                         epsilon=0.0)
    mean, var = xv.mean(axis=0), xv.var(axis=0)
    std = np.sqrt(var)
    assert np.all(np.abs(sm - mean) <= 1e-6 * std + 2 * np.spacing(np.abs(mean).astype(np.float32)))
    np.testing.assert_allclose(1.0 / si.astype(F64) ** 2, var, rtol=2e-6)
    dy = rng.standard_normal((m, c)).astype(np.float32)
    dx, dg, db = nk.batchnorm_backward(dy, xk, None, sm, si)
    xhat = (xv - sm.astype(F64)) * si.astype(F64)
    np.testing.assert_allclose(db, dy.astype(F64).sum(axis=0), rtol=1e-5, atol=1e-5 * np.sqrt(m))
    np.testing.assert_allclose(dg, (dy.astype(F64) * xhat).sum(axis=0), rtol=1e-5,
                               atol=1e-5 * np.sqrt(m))


def test_fused_nan_inf_semantics():
    """relu keeps NaN (as nnkernels.relu); the backward mask is y > 0, so a
    NaN or -0 output blocks the gradient (as nnkernels.relu_backward)."""
    x = np.array([[0.0, 1.0], [1.0, 2.0], [2.0, 3.0]], np.float32)
    res = np.array([[np.nan, 0.0], [0.0, -np.inf], [np.inf, 0.0]], np.float32)
    y = nk.batchnorm_forward(x, None, None, training=True, residual=res, activation="relu")
    assert np.isnan(y[0, 0]) and y[1, 1] == 0 and y[2, 0] == np.inf
    assert_bitwise_equal(y, separate_forward(x, None, None, res, "relu", training=True))
    sm, si = np.zeros(2, np.float32), np.ones(2, np.float32)
    yy = np.array([[np.nan, -0.0], [1.0, 0.0], [2.0, 3.0]], np.float32)
    dy = np.array([[1.0, np.inf], [2.0, np.nan], [3.0, 4.0]], np.float32)
    dres = np.empty_like(dy)
    nk.batchnorm_backward(dy, x, None, sm, si, y=yy, activation="relu", dresidual=dres)
    assert_bitwise_equal(dres, nk.relu_backward(dy, yy))
    assert_bitwise_equal(dres, np.array([[0, 0], [2, 0], [3, 4]], np.float32))


# ------------------------------------------------ ISA paths, bitwise --

AVAILABLE_ISAS = [name for name in ("generic", "avx2", "avx512") if nk.isa_supported(name)]


def _with_specials(rng, a, channels):
    """a with NaN (both signs), +-inf, -0, +0 and subnormals planted in the
    given channels (in place, returned)."""
    specials = np.array([np.nan, -np.nan, np.inf, -np.inf, -0.0, 0.0,
                         np.finfo(a.dtype).smallest_subnormal,
                         -np.finfo(a.dtype).smallest_subnormal], a.dtype)
    flat = a.reshape(-1, a.shape[-1])
    for j in channels:
        rows = rng.choice(flat.shape[0], len(specials), replace=False)
        flat[rows, j] = specials
    return a


def _bn_all_variants(x, gamma, beta, res, dy, y_mask, mm0, mv0):
    """Every batch-norm kernel variant (training / inference forward, plain,
    relu, residual, residual + relu; backward plain, relu, dresidual,
    relu + dresidual) on fixed inputs: a flat list of the outputs."""
    c = x.shape[-1]
    out = []
    for r in (None, res):
        for act in (None, "relu"):
            mm, mv = mm0.copy(), mv0.copy()
            sm, si = np.empty(c, x.dtype), np.empty(c, x.dtype)
            out += [nk.batchnorm_forward(x, gamma, beta, training=True, moving_mean=mm,
                                         moving_var=mv, save_mean=sm, save_invstd=si,
                                         residual=r, activation=act), mm, mv, sm, si]
            out.append(nk.batchnorm_forward(x, gamma, beta, training=False, moving_mean=mm0,
                                            moving_var=mv0, residual=r, activation=act))
    # the ReLU mask recomputed from x (forward without residual) is the mask
    # of y, bitwise, on every path (NaNs compared as NaNs: where two meet,
    # which one propagates follows each loop's operand order)
    sm, si, ss = (np.empty(c, x.dtype) for _ in range(3))
    yf = nk.batchnorm_forward(x, gamma, beta, training=True, save_mean=sm, save_invstd=si,
                              save_scale=ss, activation="relu")
    for dres in (None, np.empty_like(x)):
        bx = nk.batchnorm_backward(dy, x, gamma, sm, si, activation="relu", save_scale=ss,
                                   beta=beta, dresidual=dres)
        by = nk.batchnorm_backward(dy, x, gamma, sm, si, activation="relu", y=yf)
        for a, b in zip(bx, by):
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
            assert_bitwise_equal(a[~np.isnan(a)], b[~np.isnan(b)])
        out += list(bx) + [ss] + ([dres] if dres is not None else [])
    # the backward on statistics from the generic path (fixed inputs)
    sm, si = mm0, 1.0 / np.sqrt(mv0 + np.asarray(EPS, x.dtype))
    for act in (None, "relu"):
        for with_dres in (False, True):
            dres = np.full(x.shape, 7.0, x.dtype) if with_dres else None
            out += nk.batchnorm_backward(dy, x, gamma, sm, si, y=y_mask if act else None,
                                         activation=act, dresidual=dres)
            if with_dres:
                out.append(dres)
    return out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("c", [1, 3, 4, 8, 16, 17, 32, 33, 48, 64])
def test_isa_paths_bitwise(dtype, c):
    """Every ISA path this CPU has, with 1 and 2 threads, gives the same bits
    for every variant (plain and fused): the loops differ only in vector
    width, with FMA contraction off.  The one exception: where two NaNs meet
    in one operation, which one propagates (its sign and payload) follows the
    operand order the compiler picked, so across paths NaNs are compared as
    NaNs (same positions), everything else bit for bit.  Several row blocks
    (the threaded passes and the block sums), channel counts around the
    vector widths, NaN/inf/-0/subnormal inputs, a large offset (the shifted
    sums)."""
    rng = np.random.default_rng(1000 + c)
    m = 70001 // c + 3  # ~70k elements: 4-5 row blocks of ~16k
    shape = (m, c) if c % 2 else (m // 7 + 1, 7, 1, c)
    x = (rng.standard_normal(shape) * 2 + 3.0).astype(dtype)
    if c >= 3:
        _with_specials(rng, x, [c - 1])  # one channel of non-finite statistics
    gamma = rng.uniform(0.5, 1.5, c).astype(dtype)
    gamma[0] = -gamma[0]
    beta = rng.standard_normal(c).astype(dtype)
    res = _with_specials(rng, rng.standard_normal(shape).astype(dtype), range(c))
    dy = _with_specials(rng, rng.standard_normal(shape).astype(dtype), range(0, c, 2))
    y_mask = _with_specials(rng, rng.standard_normal(shape).astype(dtype), range(c))
    mm0 = rng.standard_normal(c).astype(dtype)
    mv0 = rng.uniform(0.5, 2.0, c).astype(dtype)

    def nan_canonical(a):
        """a with every NaN replaced by one NaN (the sign and payload of a NaN
        made where two NaNs meet follow the compiler's operand order)."""
        a = np.array(a, copy=True)
        a[np.isnan(a)] = np.nan
        return a

    runs = {}
    for name in AVAILABLE_ISAS:
        with isa(name):
            assert nk.get_isa() == name
            for nt in (1, 2):
                with threads(nt):
                    runs[name, nt] = _bn_all_variants(x, gamma, beta, res, dy, y_mask, mm0,
                                                      mv0)
    (key0, ref), *others = runs.items()
    for key, got in others:
        assert len(got) == len(ref)
        for i, (a, b) in enumerate(zip(ref, got)):
            what = f"output {i}: {key0} vs {key}"
            np.testing.assert_array_equal(np.isnan(a), np.isnan(b), what + " (NaN positions)")
            assert_bitwise_equal(nan_canonical(a), nan_canonical(b), what)
            if key[0] == key0[0]:  # one path, 1 or 2 threads: the same code
                assert_bitwise_equal(a, b, what)
    # the data exercised what it should: finite and non-finite statistics,
    # both sides of the ReLU
    assert np.isfinite(ref[3][0]) and (c < 3 or np.isnan(ref[3][c - 1]))  # save_mean
    y_rr = ref[18]  # training forward, residual + relu
    assert (y_rr == 0).any() and (y_rr > 0).any() and np.isnan(y_rr).any()
    dres = ref[-1]  # backward relu + dresidual: the masked dy
    assert (dres == 0).any() and (dres != 0).any()


# ---------------------------------------------------- finite differences --

def _away_from_kink(rng, x, gamma, beta, res, margin=0.05):
    """Shift residual entries so that no pre-activation is within margin of
    0 (the ReLU kink)."""
    z = fwd_ref(x, gamma, beta, res, None)[0]
    close = np.abs(z) < margin
    res[close] += np.where(z[close] >= 0, 2 * margin, -2 * margin)
    return res


def test_fused_finite_differences():
    """float64: dx, dgamma, dbeta, dresidual of L = sum(w * relu(BN(x) + r))
    by central differences, exhaustive on tiny shapes and along a random
    direction on an NHWC batch; and without activation."""
    rng = np.random.default_rng(5)

    def loss(x, gamma, beta, res, w, act):
        y = nk.batchnorm_forward(x, gamma, beta, training=True, epsilon=EPS, residual=res,
                                 activation=act)
        return float(np.sum(w * y))

    def grads(x, gamma, beta, res, w, act):
        C = x.shape[-1]
        sm, si = np.empty(C), np.empty(C)
        y = nk.batchnorm_forward(x, gamma, beta, training=True, epsilon=EPS, residual=res,
                                 activation=act, save_mean=sm, save_invstd=si)
        dres = np.empty_like(x)
        dx, dg, db = nk.batchnorm_backward(w, x, gamma, sm, si, y=y, activation=act,
                                           dresidual=dres)
        return dx, dg, db, dres

    h = 1e-6
    for act in ("relu", None):
        for shape in [(5, 3), (2, 3, 2, 4), (1, 2), (7, 1)]:
            C = shape[-1]
            x = rng.standard_normal(shape)
            gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
            res = _away_from_kink(rng, x, gamma, beta, rng.standard_normal(shape))
            w = rng.standard_normal(shape)
            an = grads(x, gamma, beta, res, w, act)
            for arr, grad in zip((x, gamma, beta, res), an):
                fd = np.empty_like(arr)
                for idx in np.ndindex(arr.shape):
                    old = arr[idx]
                    arr[idx] = old + h
                    lp = loss(x, gamma, beta, res, w, act)
                    arr[idx] = old - h
                    lm = loss(x, gamma, beta, res, w, act)
                    arr[idx] = old
                    fd[idx] = (lp - lm) / (2 * h)
                np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)

    # directional derivative on an NHWC batch
    shape = (4, 5, 5, 8)
    x = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, 8), rng.standard_normal(8)
    res = _away_from_kink(rng, x, gamma, beta, rng.standard_normal(shape))
    w = rng.standard_normal(shape)
    dx, dg, db, dres = grads(x, gamma, beta, res, w, "relu")
    u, ug, ub, ur = (rng.standard_normal(a.shape) for a in (x, gamma, beta, res))
    fd = (loss(x + h * u, gamma + h * ug, beta + h * ub, res + h * ur, w, "relu")
          - loss(x - h * u, gamma - h * ug, beta - h * ub, res - h * ur, w, "relu")) / (2 * h)
    an = np.sum(dx * u) + np.sum(dg * ug) + np.sum(db * ub) + np.sum(dres * ur)
    np.testing.assert_allclose(an, fd, rtol=1e-6)


# ------------------------------------------------------------ validation --

def test_fused_forward_errors():
    x = np.ones((4, 3), np.float32)
    x[0] = 0
    v = np.zeros(3, np.float32)
    sentinel = np.full((4, 3), 7.0, np.float32)

    def fwd(**kw):
        kw.setdefault("training", True)
        return nk.batchnorm_forward(x, None, None, **kw)

    with pytest.raises(ValueError, match=r"residual has shape \(4, 2\), expected x's \(4, 3\)"):
        fwd(residual=np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="residual has dtype float64, expected x's float32"):
        fwd(residual=np.zeros((4, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        fwd(residual=np.zeros((4, 3), np.int32))
    for bad in ("tanh", "RELU", 1):
        with pytest.raises(ValueError, match="unsupported activation"):
            fwd(activation=bad)
        with pytest.raises(ValueError, match="unsupported activation"):
            fwd(activation=bad, training=False, moving_mean=v, moving_var=v + 1)
    # out partially overlapping the residual: refused, nothing written
    big = np.full((5, 3), 7.0, np.float32)
    with pytest.raises(ValueError, match="out overlaps input residual"):
        fwd(residual=big[1:], out=big[:4], activation="relu")
    assert (big == 7).all()
    buf = np.zeros(13, np.float32)
    xb, ob = buf[:12].reshape(4, 3), buf[1:].reshape(4, 3)
    with pytest.raises(ValueError, match="out overlaps input x"):
        nk.batchnorm_forward(xb, None, None, training=True, residual=ob.copy(), out=ob)
    with pytest.raises(ValueError, match="out overlaps input residual"):
        fwd(residual=xb, out=ob)
    # the written (C,) vectors must not overlap the residual
    rr = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        fwd(residual=rr, save_mean=rr[0])
    # out with the wrong layout
    with pytest.raises(ValueError, match="C-contiguous"):
        fwd(residual=np.zeros((4, 3), np.float32), out=np.zeros((3, 4), np.float32).T)
    # nothing written when a check fails
    r = sentinel.copy()
    with pytest.raises(ValueError):
        fwd(residual=r, out=r, activation="bogus")
    assert_bitwise_equal(r, sentinel)
    with pytest.raises(TypeError):
        fwd(residual=r, out=r, momentum="0.9")
    assert_bitwise_equal(r, sentinel)


def test_fused_forward_in_place_and_layouts():
    rng = np.random.default_rng(2)
    x, gamma, beta = make(rng, (6, 5, 5, 17), np.float32)
    res = rng.standard_normal(x.shape).astype(np.float32)
    want = nk.batchnorm_forward(x, gamma, beta, training=True, residual=res, activation="relu")
    # out = residual (in place); out = x (in place); x = residual = out
    r = res.copy()
    assert nk.batchnorm_forward(x, gamma, beta, training=True, residual=r, out=r,
                                activation="relu") is r
    assert_bitwise_equal(r, want)
    xx = x.copy()
    nk.batchnorm_forward(xx, gamma, beta, training=True, residual=res, out=xx,
                         activation="relu")
    assert_bitwise_equal(xx, want)
    xx = x.copy()
    nk.batchnorm_forward(xx, gamma, beta, training=True, residual=xx, out=xx)
    assert_bitwise_equal(xx, separate_forward(x, gamma, beta, x, None, training=True))
    # a non-contiguous residual is copied: the same result
    big = np.full(x.shape[:-1] + (34,), np.nan, np.float32)
    big[..., ::2] = res
    assert_bitwise_equal(
        nk.batchnorm_forward(x, gamma, beta, training=True, residual=big[..., ::2],
                             activation="relu"), want)
    # activation="linear" and residual=None: the plain kernel, bitwise
    assert_bitwise_equal(nk.batchnorm_forward(x, gamma, beta, training=True, activation="linear"),
                         nk.batchnorm_forward(x, gamma, beta, training=True))
    # inference with zero rows and a residual: an empty result
    e = np.zeros((0, 4), np.float32)
    v = np.ones(4, np.float32)
    assert nk.batchnorm_forward(e, None, None, training=False, moving_mean=v, moving_var=v,
                                residual=e, activation="relu").shape == (0, 4)


def test_fused_backward_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 3)).astype(np.float32)
    dy = rng.standard_normal((4, 3)).astype(np.float32)
    y = np.abs(dy)
    v = np.ones(3, np.float32)

    def bwd(**kw):
        return nk.batchnorm_backward(kw.pop("dy", dy), x, None, v, v, **kw)

    with pytest.raises(ValueError, match="needs y"):
        bwd(activation="relu")
    with pytest.raises(ValueError, match="needs y, the forward's output, or the forward's "
                                         "save_scale"):
        bwd(activation="relu", beta=v)
    with pytest.raises(ValueError, match="save_scale"):
        bwd(activation="relu", save_scale=np.ones(2, np.float32))
    with pytest.raises(TypeError, match="save_scale"):
        bwd(activation="relu", save_scale=np.ones(3))
    with pytest.raises(ValueError, match="beta"):
        bwd(activation="relu", save_scale=v, beta=np.ones(4, np.float32))
    with pytest.raises(ValueError, match=r"y has shape \(4, 2\), expected dy's \(4, 3\)"):
        bwd(activation="relu", y=np.zeros((4, 2), np.float32))
    with pytest.raises(TypeError, match="y has dtype float64"):
        bwd(activation="relu", y=np.zeros((4, 3)))
    # y given without activation: not read, but still checked
    with pytest.raises(ValueError, match="y has shape"):
        bwd(y=np.zeros((2, 3), np.float32))
    with pytest.raises(TypeError, match="y has dtype"):
        bwd(y=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="unsupported activation"):
        bwd(activation="sigmoid", y=y)
    with pytest.raises(ValueError, match=r"dresidual has shape \(3, 4\)"):
        bwd(dresidual=np.zeros((3, 4), np.float32))
    with pytest.raises(TypeError, match="dresidual has dtype float64"):
        bwd(dresidual=np.zeros((4, 3)))
    with pytest.raises(ValueError, match="dresidual must be C-contiguous"):
        bwd(dresidual=np.zeros((3, 4), np.float32).T)
    ro = np.zeros((4, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="dresidual is read-only"):
        bwd(dresidual=ro)
    with pytest.raises(TypeError, match="dresidual must be a numpy.ndarray"):
        bwd(dresidual=[[0.0] * 3] * 4)
    # overlaps: with x, y, dx, the vectors; dx and dresidual both dy
    with pytest.raises(ValueError, match="dresidual overlaps input x"):
        bwd(dresidual=x)
    yy = y.copy()
    yb = np.zeros(13, np.float32)
    yb[:12] = yy.reshape(-1)
    with pytest.raises(ValueError, match="dresidual overlaps input y"):
        bwd(activation="relu", y=yb[:12].reshape(4, 3), dresidual=yb[1:].reshape(4, 3))
    # dresidual may be y itself: each mask is read before its dz is stored
    r = bwd(activation="relu", y=yy, dresidual=yy)
    assert_bitwise_equal(yy, np.where(y > 0, dy, np.float32(0)))
    with pytest.raises(ValueError, match="dx overlaps input y"):
        bwd(activation="relu", y=yy, dx=yy)
    d = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="dx and dresidual overlap"):
        bwd(dx=d, dresidual=d)
    dyc = dy.copy()
    with pytest.raises(ValueError, match="dx and dresidual overlap"):
        bwd(dy=dyc, dx=dyc, dresidual=dyc)
    buf = np.zeros(13, np.float32)
    dyb, db_ = buf[:12].reshape(4, 3), buf[1:].reshape(4, 3)
    dyb[...] = dy
    with pytest.raises(ValueError, match="dresidual overlaps input dy"):
        bwd(dy=dyb, dresidual=db_)
    with pytest.raises(ValueError, match="dx overlaps input dy"):
        bwd(dy=dyb, dx=db_)
    big = np.zeros(15, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        bwd(dresidual=big[:12].reshape(4, 3), dgamma=big[10:13])
    with pytest.raises(ValueError, match="overlaps"):
        bwd(dresidual=big[:12].reshape(4, 3), dbeta=big[11:14])
    # nothing written on an error
    s = np.full((4, 3), 7.0, np.float32)
    with pytest.raises(ValueError):
        bwd(activation="relu", dresidual=s)
    assert (s == 7).all()


def test_fused_backward_zero_rows_and_plain_path():
    e = np.zeros((0, 3))
    dres = np.empty((0, 3))
    dx, dg, db = nk.batchnorm_backward(e, e, None, np.zeros(3), np.ones(3), y=e,
                                       activation="relu", dresidual=dres)
    assert dx.shape == (0, 3) and not dg.any() and not db.any()
    # without activation dresidual is a copy of dy, and dx is the plain result
    rng = np.random.default_rng(4)
    x = rng.standard_normal((50, 7))
    dy = rng.standard_normal((50, 7))
    sm, si = np.empty(7), np.empty(7)
    nk.batchnorm_forward(x, None, None, training=True, save_mean=sm, save_invstd=si)
    dres = np.empty_like(dy)
    r = nk.batchnorm_backward(dy, x, None, sm, si, dresidual=dres, activation="linear")
    assert_bitwise_equal(dres, dy)
    for a, b in zip(r, nk.batchnorm_backward(dy, x, None, sm, si)):
        assert_bitwise_equal(a, b)


# ------------------------------------- the mask from x: reference and model --

def test_reference_ops_mask_from_x():
    """The NumPy reference Ops take save_scale / beta as the kernels do: the
    same gradients as with y (a forward without residual), and the scale
    applied is gamma * invstd."""
    from pynn import backend
    ops = backend.Ops()
    rng = np.random.default_rng(5)
    x = rng.standard_normal((40, 6)) * 2 + 1
    gamma, beta = rng.uniform(0.5, 1.5, 6), rng.standard_normal(6)
    dy = rng.standard_normal((40, 6))
    sm, si, ss = np.empty(6), np.empty(6), np.empty(6)
    y = ops.batchnorm_forward(x, gamma, beta, training=True, moving_mean=np.zeros(6),
                              moving_var=np.ones(6), save_mean=sm, save_invstd=si,
                              save_scale=ss, activation="relu")
    np.testing.assert_allclose(ss, gamma * si, rtol=1e-15)
    assert (y == 0).any() and (y > 0).any()
    by = ops.batchnorm_backward(dy, x, gamma, sm, si, y=y, activation="relu",
                                dgamma=np.empty(6), dbeta=np.empty(6))
    bx = ops.batchnorm_backward(dy, x, gamma, sm, si, save_scale=ss, beta=beta,
                                activation="relu", dgamma=np.empty(6), dbeta=np.empty(6))
    for a, b in zip(bx, by):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    # and the kernels agree with it
    kx = nk.batchnorm_backward(dy, x, gamma, sm, si, save_scale=ss, beta=beta,
                               activation="relu")
    for a, b in zip(kx, bx):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_model_mask_from_x_same_bits(monkeypatch):
    """A Conv -> BN -> ReLU model (the BN and ReLU fused into one plan node)
    trains to the same bits whether its backward reads y for the ReLU mask
    or recomputes it from x (the CPU backend's choice); the fused node does
    use the recomputed mask."""
    import pynn as keras
    from pynn.backend.cpu import CPUOps

    rng = np.random.default_rng(6)
    xb = rng.standard_normal((16, 9, 9, 3)).astype(np.float32)
    yb = rng.integers(0, 4, 16)

    def train(from_x):
        monkeypatch.setattr(CPUOps, "bn_relu_mask_from_x", from_x)
        keras.utils.set_random_seed(3)
        m = keras.Sequential([keras.Input((9, 9, 3)), keras.layers.Conv2D(8, 3),
                              keras.layers.BatchNormalization(), keras.layers.ReLU(),
                              keras.layers.Flatten(), keras.layers.Dense(4)])
        m.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        for _ in range(3):
            m.train_on_batch(xb, yb)
        bn = m.layers[1]
        return m.get_weights(), bn.ctx.scale is not None

    w_x, used_x = train(True)
    w_y, used_y = train(False)
    assert used_x and not used_y
    for a, b in zip(w_x, w_y):
        assert_bitwise_equal(a, b)


def test_model_backward_in_place_same_bits(monkeypatch):
    """The graph tells a batch norm when nothing reads its output gradient
    (``dy_free``) or its output (``y_free``) after its backward, and the CPU
    backend's batch norm then writes dx over dy and, after a residual
    forward, d residual over its output: a residual model (fused BN -> ReLU
    and BN -> Add -> ReLU, a plain BN beside a branch on the same tensor, a
    residual block on a Dense layer whose output is a model output, a BN
    as the last layer)
    trains to the same bits as without, for 1 and 2 threads.  The BNs of the
    inner residual block write in place; the two that read one gradient (an
    Add's, for both its inputs) and the last one (the loss's gradient) keep
    dy; the block whose output the model returns keeps its output."""
    import pynn as keras
    from pynn.backend.cpu import CPUOps
    from pynn.layers.normalization import BatchNormalization

    L = keras.layers
    rng = np.random.default_rng(7)
    xb = rng.standard_normal((12, 8, 8, 3)).astype(np.float32)
    yb = [rng.standard_normal((12, 5)).astype(np.float32),
          rng.standard_normal((12, 6)).astype(np.float32)]
    calls = []
    backward = BatchNormalization.backward

    def spy(self, dy, need_dx=True, dy_free=False, y_free=False):
        y = self.ctx.y
        r = backward(self, dy, need_dx, dy_free, y_free)
        dx, dres = (r[0], r[1]) if isinstance(r, list) else (r, None)
        calls.append((self.name, dy_free, dx is dy, dres is not None and dres is y,
                      self.ctx.residual))
        return r

    monkeypatch.setattr(BatchNormalization, "backward", spy)

    def train(in_place, t):
        monkeypatch.setattr(CPUOps, "bn_backward_in_place", in_place)
        keras.utils.set_random_seed(3)
        inp = keras.Input((8, 8, 3))
        a = L.ReLU()(L.BatchNormalization(name="bn0")(L.Conv2D(6, 3, padding="same")(inp)))
        h = L.ReLU()(L.BatchNormalization(name="bn1")(L.Conv2D(6, 3, padding="same")(a)))
        h = L.BatchNormalization(name="bn2")(L.Conv2D(6, 3, padding="same")(h))
        r = L.ReLU()(L.Add()([h, a]))
        h2 = L.BatchNormalization(name="bn4")(L.Conv2D(6, 3, padding="same")(r))
        r2 = L.ReLU()(L.Add()([h2, r]))
        side = L.BatchNormalization(name="bn_side")(r2)
        br = L.ReLU()(L.BatchNormalization(name="bn3")(L.Conv2D(6, 1)(r2)))
        o = L.GlobalAveragePooling2D()(L.Add()([side, br]))
        out = L.BatchNormalization(name="bn_last")(L.Dense(5)(o))
        d = L.Dense(6)(o)
        r3 = L.ReLU()(L.Add()([L.BatchNormalization(name="bn5")(L.Dense(6)(d)), d]))
        m = keras.Model(inp, [out, r3])
        m.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss=["mse", "mse"])
        calls.clear()
        with threads(t):
            for _ in range(3):
                m.train_on_batch(xb, yb)
        return m.get_weights(), list(calls)

    for t in (1, 2):
        w_on, c_on = train(True, t)
        w_off, c_off = train(False, t)
        for a, b in zip(w_on, w_off):
            assert_bitwise_equal(a, b)
        # bn_side and bn3 read one gradient (the Add's, for both of its
        # inputs): neither may write over it
        assert {nm for nm, free, dx_dy, _, _ in c_on if free and dx_dy} == \
            {"bn0", "bn1", "bn2", "bn4"}, c_on
        assert not any(free for nm, free, _, _, _ in c_on if nm in ("bn_side", "bn3", "bn_last"))
        # residual blocks: bn2's and bn4's outputs feed other layers only,
        # bn5's is the model's second output
        assert {nm for nm, *_, res in c_on if res} == {"bn2", "bn4", "bn5"}, c_on
        assert {nm for nm, _, _, res_y, _ in c_on if res_y} == {"bn2", "bn4"}, c_on
        assert not any(dx_dy or res_y for _, _, dx_dy, res_y, _ in c_off)

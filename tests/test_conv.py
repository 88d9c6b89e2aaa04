"""Tests of nnkernels.conv2d / conv2d_backward against plain NumPy references.

The references loop over the KH x KW taps and use einsum over each tap's
window (no im2col), so they share no code or idea with the kernels beyond the
definition of a convolution."""
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import isa as use_isa
from reference import threads
from reference import ref_conv, ref_conv_backward, ref_pads, wino_scale, wino_wgrad_scale
from reference import WINO4_C, WINO_C, assert_wino_bound, wino4
from strategies import conv_paddings, wino_geometry

ISAS = nk.available_isas()
SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- references

def ref_conv_loops(x, w, b, strides, padding, dilation):
    """Scalar loops, for a tiny shape: the definition, written out."""
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, strides, padding, dilation)
    OH = (H + pt + pb - (KH - 1) * dilation[0] - 1) // strides[0] + 1
    OW = (W + pl + pr - (KW - 1) * dilation[1] - 1) // strides[1] + 1
    y = np.zeros((N, OH, OW, F))
    for n in range(N):
        for oh in range(OH):
            for ow in range(OW):
                for f in range(F):
                    acc = b[f]
                    for kh in range(KH):
                        for kw in range(KW):
                            ih = oh * strides[0] - pt + kh * dilation[0]
                            iw = ow * strides[1] - pl + kw * dilation[1]
                            if 0 <= ih < H and 0 <= iw < W:
                                acc += x[n, ih, iw, :] @ w[kh, kw, :, f]
                    y[n, oh, ow, f] = acc
    return y


def tol(dt, k):
    return (2e-5 if dt == np.float32 else 1e-12) * max(1, k) ** 0.5


def close(a, r, dt, k):
    scale = max(1.0, float(np.abs(r).max()) if r.size else 1.0)
    err = float(np.abs(a - r).max()) / scale if r.size else 0.0
    assert err <= tol(dt, k), f"max rel error {err} > {tol(dt, k)}"


# ---------------------------------------------------------------- strategies

@st.composite
def conv_case(draw, max_c=20, max_f=40):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([1, 1, 2]))
    padding = draw(conv_paddings())
    H, W = draw(st.integers(1, 11)), draw(st.integers(1, 13))
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, (sh, sw), padding, (dh, dw))
    assume(H + pt + pb >= (KH - 1) * dh + 1 and W + pl + pr >= (KW - 1) * dw + 1)
    return dict(N=draw(st.integers(1, 3)), H=H, W=W,
                C=draw(st.sampled_from([1, 2, 3, 5, 8, 13, 16, 24, max_c])),
                F=draw(st.sampled_from([1, 3, 16, 17, 33, max_f])),
                KH=KH, KW=KW, strides=(sh, sw), dilation=(dh, dw), padding=padding)


def make(case, dt, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["H"], case["W"], case["C"])).astype(dt)
    w = rng.standard_normal((case["KH"], case["KW"], case["C"], case["F"])).astype(dt)
    b = rng.standard_normal(case["F"]).astype(dt)
    return rng, x, w, b


def geo(case):
    return dict(strides=case["strides"], padding=case["padding"], dilation=case["dilation"])


# ---------------------------------------------------------------- correctness

@settings(max_examples=150, **SETTINGS)
@given(case=conv_case(), dt=st.sampled_from([np.float32, np.float64]),
       act=st.sampled_from([None, "relu"]), isa=st.sampled_from(ISAS),
       seed=st.integers(0, 2**31 - 1), use_bias=st.booleans())
def test_forward_backward_vs_reference(case, dt, act, isa, seed, use_bias):
    rng, x, w, b = make(case, dt, seed)
    b = b if use_bias else None
    g = geo(case)
    k = case["KH"] * case["KW"] * case["C"]
    yr = ref_conv(x, w, b, act=act, **g)
    dy = rng.standard_normal(yr.shape).astype(dt)
    dxr, dwr, dbr = ref_conv_backward(dy, x, w, act=act, y=yr, **g)
    assert nk.conv2d_output_shape(x.shape, w.shape, **g) == yr.shape
    with use_isa(isa):
        for algo in ("im2col", "direct", "auto"):
            y = nk.conv2d(x, w, b, activation=act, algo=algo, **g)
            assert y.shape == yr.shape and y.dtype == dt
            close(y, yr, dt, k)
            dx, dw, db = nk.conv2d_backward(dy, x, w, activation=act, y=yr, algo=algo, **g)
            close(dx, dxr, dt, case["KH"] * case["KW"] * case["F"])
            close(dw, dwr, dt, dy.size // case["F"])
            close(db, dbr, dt, dy.size // case["F"])


# ------------------------------------------------------------- winograd
#
# F(2x2, 3x3) computes each 2x2 output tile as A^T [sum_c U_c .* V_c] A with
# U_c = G g_c G^T (g_c: the 3x3 kernel of input channel c) and V_c = B^T d_c B
# (d_c: the tile's 4x4 input patch).  The transforms only add, subtract and
# halve, so every rounding error is eps times a sum of |g| |d| products, but
# over the whole kernel and the whole patch (the transforms mix them before
# the cancellation that leaves the window's products), plus the k-sum over
# channels.  Hence, per output in tile (th, tw):
#   |y - y_exact| <= WINO_C * eps * (sum_c P_c K_c + |b|),
#   P_c = sum of |d_c| over the 4x4 patch, K_c = sum of |g_c| over the kernel.
# Observed ratios are below ~0.5 for random data; WINO_C = 8 leaves margin,
# while a wrong transform, tile or padding gives errors of order 1 / eps.
# (WINO_C = 8, in reference.py.)  F(4x4, 3x3): the same form over its 6x6
# patches, WINO4_C (reference.py).


def wino_wgrad_limits(x, dz, pt, pl):
    """Error bounds of the float32 Winograd dW and db (reference.wino_wgrad_scale)
    for the tile the kernels pick for these channel counts (F(4x4, 3x3) or
    F(2x2, 3x3), with the switch as it is)."""
    m = nk._core._winograd_tile(x.shape[-1], dz.shape[-1], wgrad=True)
    S, depth = wino_wgrad_scale(x, dz, pt, pl, m)
    eps, tiny = np.finfo(np.float32).eps, np.finfo(np.float32).tiny
    c = WINO4_C if m == 4 else WINO_C
    lim_w = (c + depth) * eps * S + tiny
    lim_b = (c + depth) * eps * np.abs(dz).sum(axis=(0, 1, 2)) + tiny
    return lim_w, lim_b


@st.composite
def wino_case(draw):
    H, W, padding, _ = draw(wino_geometry([1, 2, 3, 4, 5, 7, 8, 11, 13], ref_pads))
    # 300 and 520 channels: more than one k-block of every kernel (kc 256 / 512)
    C = draw(st.sampled_from([1, 2, 3, 5, 13, 16, 17, 32, 300, 520]))
    F = draw(st.sampled_from([1, 3, 16, 17, 33, 64] + ([] if C > 32 else [300, 520])))
    return dict(N=draw(st.sampled_from([1, 1, 2, 3])), H=H, W=W, C=C, F=F, KH=3, KW=3,
                strides=(1, 1), dilation=(1, 1), padding=padding)


@settings(max_examples=120, **SETTINGS)
@given(case=wino_case(), dt=st.sampled_from([np.float32, np.float64]),
       act=st.sampled_from([None, "relu"]), isa=st.sampled_from(ISAS),
       seed=st.integers(0, 2**31 - 1), use_bias=st.booleans())
def test_winograd_vs_reference(case, dt, act, isa, seed, use_bias):
    """F(2x2, 3x3) everywhere (F(4x4, 3x3) off: its own tests are in
    test_conv_winograd4.py)."""
    with wino4(False):
        _winograd_vs_reference(case, dt, act, isa, seed, use_bias)


def _winograd_vs_reference(case, dt, act, isa, seed, use_bias):
    rng, x, w, b = make(case, dt, seed)
    b = b if use_bias else None
    g = geo(case)
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = b.astype(np.float64) if b is not None else None
    yr = ref_conv(x64, w64, b64, act=act, **g)
    N, OH, OW, F = yr.shape
    (pt, pb), (pl, pr) = ref_pads(case["H"], case["W"], 3, 3, (1, 1), case["padding"], (1, 1))
    scale = wino_scale(x64, w64, b64, pt, pl, OH, OW)
    # relu: the mask is the forward output the caller holds, in dt
    y_dt = ref_conv(x, w, b, act=act, **g)
    dy = rng.standard_normal(yr.shape).astype(dt)
    dz = dy.astype(np.float64) * ((y_dt > 0) if act == "relu" else 1)
    dxr = ref_conv_backward(dz, x64, w64, **g)[0]
    # dX: the full correlation of dz with the rotated, transposed kernel
    dscale = wino_scale(dz, w64.transpose(0, 1, 3, 2), None, 2 - pt, 2 - pl,
                        case["H"], case["W"])
    with use_isa(isa):
        y = nk.conv2d(x, w, b, activation=act, algo="winograd", **g)
        assert y.shape == yr.shape and y.dtype == dt
        assert_wino_bound(y, yr, scale, dt, WINO_C)
        dx, dw, db = nk.conv2d_backward(dy, x, w, activation=act, y=y_dt, algo="winograd", **g)
        assert dx.dtype == dt
        assert_wino_bound(dx, dxr, dscale, dt, WINO_C)
        if dt == np.float64:  # float64 dW / db take the im2col path
            _, dw2, db2 = nk.conv2d_backward(dy, x, w, activation=act, y=y_dt, algo="im2col",
                                             **g)
            assert np.array_equal(dw, dw2) and np.array_equal(db, db2)
        else:  # float32: Winograd's dW (nk_conv_wino_wgrad.h)
            _, dwr, dbr = ref_conv_backward(dz, x64, w64, **g)
            lim_w, lim_b = wino_wgrad_limits(x64, dz, pt, pl)
            assert dw.dtype == dt and np.all(np.abs(dw - dwr) <= lim_w), \
                f"dW error {float((np.abs(dw - dwr) / lim_w).max()):.3g} x its bound"
            assert np.all(np.abs(db - dbr) <= lim_b)


@pytest.mark.parametrize("f4", [False, True])
def test_winograd_many_blocks_and_threads(f4):
    """Enough tiles for several blocks per thread; bitwise equal for 1 and 2
    threads; the CNN's second convolution (auto picks winograd), with
    F(2x2, 3x3) and with F(4x4, 3x3) (its own bound: WINO4_C)."""
    with wino4(f4):
        _winograd_many_blocks_and_threads(f4)


def _winograd_many_blocks_and_threads(f4):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((16, 26, 26, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 32, 64)).astype(np.float32)
    b = rng.standard_normal(64).astype(np.float32)
    g = dict(strides=(1, 1), padding="valid", dilation=(1, 1))
    assert nk.conv2d_algo(x.shape, w.shape, **g) == "winograd"
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    yr = ref_conv(x64, w64, b.astype(np.float64), act="relu", **g)
    dy = rng.standard_normal(yr.shape).astype(np.float32)
    old = nk.get_num_threads()
    try:
        res = []
        for t in (1, 2):
            nk.set_num_threads(t)
            y = nk.conv2d(x, w, b, activation="relu", **g)
            dx = nk.conv2d_backward(dy, x, w, activation="relu", y=y, **g)[0]
            res.append((y, dx))
        assert np.array_equal(res[0][0], res[1][0]) and np.array_equal(res[0][1], res[1][1])
    finally:
        nk.set_num_threads(old)
    y, dx = res[0]
    m, c = (4, WINO4_C) if f4 else (2, WINO_C)
    assert_wino_bound(y, yr, wino_scale(x64, w64, b, 0, 0, 24, 24, m), np.float32, c)
    dz = dy.astype(np.float64) * (y > 0)
    dxr = ref_conv_backward(dz, x64, w64, **g)[0]
    assert_wino_bound(dx, dxr, wino_scale(dz, w64.transpose(0, 1, 3, 2), None, 2, 2, 26, 26, m),
                      np.float32, c)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("C, F", [(16, 16), (16, 32), (32, 16), (32, 32), (13, 20), (8, 8),
                                  (64, 48)])
@pytest.mark.parametrize("f4", [False, True])
def test_winograd_fused_blocks_and_threads(isa, C, F, f4):
    """The fused float32 Winograd (F(2x2, 3x3): C, F <= 32; F(4x4, 3x3): up
    to 64; constant-count variants for 16 / 32 channels, the generic body
    otherwise): many blocks (some partial, tiles across image rows and
    images, odd sizes), relu mask in dX, bitwise equal for 1 and 2 threads,
    within the bound."""
    with wino4(f4):
        _winograd_fused_blocks_and_threads(isa, C, F, f4)


def _winograd_fused_blocks_and_threads(isa, C, F, f4):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((5, 15, 13, C)).astype(np.float32)
    w = rng.standard_normal((3, 3, C, F)).astype(np.float32)
    b = rng.standard_normal(F).astype(np.float32)
    g = dict(strides=(1, 1), padding="same", dilation=(1, 1))
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    yr = ref_conv(x64, w64, b.astype(np.float64), act="relu", **g)
    dy = rng.standard_normal(yr.shape).astype(np.float32)
    old = nk.get_num_threads()
    try:
        res = []
        with use_isa(isa):
            for t in (1, 2):
                nk.set_num_threads(t)
                y = nk.conv2d(x, w, b, activation="relu", algo="winograd", **g)
                dx = nk.conv2d_backward(dy, x, w, activation="relu", y=y, need_dw=False,
                                        need_db=False, algo="winograd", **g)[0]
                res.append((y, dx))
        assert np.array_equal(res[0][0], res[1][0]) and np.array_equal(res[0][1], res[1][1])
    finally:
        nk.set_num_threads(old)
    y, dx = res[0]
    m, c = (4, WINO4_C) if f4 else (2, WINO_C)
    assert_wino_bound(y, yr, wino_scale(x64, w64, b, 1, 1, 15, 13, m), np.float32, c)
    dz = dy.astype(np.float64) * (y > 0)
    dxr = ref_conv_backward(dz, x64, w64, **g)[0]
    assert_wino_bound(dx, dxr, wino_scale(dz, w64.transpose(0, 1, 3, 2), None, 1, 1, 15, 13, m),
                      np.float32, c)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N, H, W, C, F, padding, relu", [
    (16, 26, 26, 32, 64, "valid", False),   # the default CNN's conv2: chunks of two blocks
    (5, 15, 13, 16, 16, "same", True),      # odd sizes: partial tiles, tiles across images
    (3, 9, 11, 17, 33, ((2, 0), (1, 3)), True),   # partial vectors, explicit padding
    (2, 4, 3, 40, 24, "same", False),       # fewer tiles than chunks
    # 4 to 7 chunks (F(2x2): 6 tiles; F(4x4): 6 tiles of 8x12): 1 thread
    # adds each chunk into the running sum as it completes, 2 threads sum
    # the chunks' partials at the end (nk_conv_body.h, wino_wgrad)
    (1, 4, 6, 16, 8, "same", True),
    (1, 8, 12, 16, 16, "same", False),
])
@pytest.mark.parametrize("f4", [False, True])
def test_winograd_wgrad_threads_and_paths(isa, N, H, W, C, F, padding, relu, f4):
    """The float32 Winograd dW and db (nk_conv_wino_wgrad.h, and with f4
    nk_conv_wino4_wgrad.h up to 64 channels): within the Winograd bound of
    the exact gradient, with and without the ReLU mask, bitwise equal for 1
    and 2 threads (the chunks added as they complete, or summed at the end:
    the same additions in the same order), and dx/dw/db computed together
    equal to each computed alone."""
    with wino4(f4):
        _winograd_wgrad_threads_and_paths(isa, N, H, W, C, F, padding, relu)


def _winograd_wgrad_threads_and_paths(isa, N, H, W, C, F, padding, relu):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((N, H, W, C)).astype(np.float32)
    w = rng.standard_normal((3, 3, C, F)).astype(np.float32)
    g = dict(strides=(1, 1), padding=padding, dilation=(1, 1))
    act = "relu" if relu else None
    y = ref_conv(x, w, None, act=act, **g).astype(np.float32)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    kw = dict(activation=act, y=y if relu else None, algo="winograd", **g)
    res = []
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                res.append(nk.conv2d_backward(dy, x, w, **kw))
        alone = nk.conv2d_backward(dy, x, w, need_dx=False, need_db=False, **kw)[1]
        db_alone = nk.conv2d_backward(dy, x, w, need_dx=False, need_dw=False, **kw)[2]
    for a, b in zip(res[0], res[1]):
        assert np.array_equal(a, b)
    dx, dw, db = res[0]
    assert np.array_equal(dw, alone)
    dz = dy.astype(np.float64) * ((y > 0) if relu else 1)
    _, dwr, dbr = ref_conv_backward(dz, x.astype(np.float64), w.astype(np.float64), **g)
    (pt, _), (pl, _) = ref_pads(H, W, 3, 3, (1, 1), padding, (1, 1))
    lim_w, lim_b = wino_wgrad_limits(x, dz, pt, pl)
    assert np.all(np.abs(dw - dwr) <= lim_w), \
        f"dW error {float((np.abs(dw - dwr) / lim_w).max()):.3g} x its bound"
    assert np.all(np.abs(db - dbr) <= lim_b) and np.all(np.abs(db_alone - dbr) <= lim_b)


def test_winograd_wgrad_workspace_bound():
    """The Winograd dW keeps its workspace within the column budget: wide
    layers run with fewer chunks of partial sums (512 -> 512: 3 of 16.8 MB
    each) and the same bits for 1 and 2 threads; where even one chunk does
    not fit (C x F above about 1M) dW goes to im2col, auto and explicit.
    A shrunk budget reduces the chunks and threads, not the result."""
    rng = np.random.default_rng(22)
    x = rng.standard_normal((2, 4, 5, 512)).astype(np.float32)
    w = (rng.standard_normal((3, 3, 512, 512)) * 0.05).astype(np.float32)
    g = dict(strides=(1, 1), padding="same", dilation=(1, 1))
    assert nk.conv2d_algo(x.shape, w.shape, product="backward_filter", **g) == "winograd"
    dy = rng.standard_normal((2, 4, 5, 512)).astype(np.float32)
    res = []
    for t in (1, 2):
        with threads(t):
            nk.release_workspace()
            res.append(nk.conv2d_backward(dy, x, w, need_dx=False, **g))
            assert nk.workspace_bytes() <= 64 << 20   # 16 chunks would take 269 MB
    assert np.array_equal(res[0][1], res[1][1]) and np.array_equal(res[0][2], res[1][2])
    dz = dy.astype(np.float64)
    _, dwr, dbr = ref_conv_backward(dz, x.astype(np.float64), w.astype(np.float64), **g)
    lim_w, lim_b = wino_wgrad_limits(x, dz, 1, 1)
    assert np.all(np.abs(res[0][1] - dwr) <= lim_w) and np.all(np.abs(res[0][2] - dbr) <= lim_b)
    try:  # a budget for two chunks' partial sums (another order of the sums)
        nk._core._set_conv_col_budget(40 << 20)
        with threads(2):
            small = nk.conv2d_backward(dy, x, w, need_dx=False, **g)
    finally:
        nk._core._set_conv_col_budget(0)
    assert np.all(np.abs(small[1] - dwr) <= lim_w)
    big = ((1, 4, 4, 1100), (3, 3, 1100, 1100))
    assert nk.conv2d_algo(*big, product="backward_filter", **g) == "im2col"


def test_winograd_wgrad_groups_and_views():
    """Groups of 16 -> 24 channels (each group's Winograd dW reads a channel
    window of x and dy and writes one of dw: pitches above C, F) and
    non-contiguous views (copied by the API), against the reference."""
    rng = np.random.default_rng(21)
    x = rng.standard_normal((3, 10, 9, 32)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 48)).astype(np.float32)
    g = dict(strides=(1, 1), padding="same", dilation=(1, 1))
    assert nk.conv2d_algo(x.shape, w.shape, product="backward_filter", groups=2, **g) == \
        "winograd"
    y = nk.conv2d(x, w, groups=2, **g)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    _, dw, db = nk.conv2d_backward(dy, x, w, groups=2, need_dx=False, **g)
    for k in range(2):
        xs, dys = x[..., 16 * k:16 * (k + 1)], dy[..., 24 * k:24 * (k + 1)]
        _, dwr, dbr = ref_conv_backward(dys.astype(np.float64), xs.astype(np.float64),
                                        w[..., 24 * k:24 * (k + 1)].astype(np.float64), **g)
        lim_w, lim_b = wino_wgrad_limits(xs, dys.astype(np.float64), 1, 1)
        assert np.all(np.abs(dw[..., 24 * k:24 * (k + 1)] - dwr) <= lim_w)
        assert np.all(np.abs(db[24 * k:24 * (k + 1)] - dbr) <= lim_b)
    big = rng.standard_normal((6, 10, 18, 40)).astype(np.float32)
    xv = big[::2, :, ::2, 3:35]           # (3, 10, 9, 32), strided
    _, dwv, dbv = nk.conv2d_backward(dy, xv, w, groups=2, need_dx=False, **g)
    _, dwc, dbc = nk.conv2d_backward(dy, np.ascontiguousarray(xv), w, groups=2,
                                     need_dx=False, **g)
    assert np.array_equal(dwv, dwc) and np.array_equal(dbv, dbc)


@pytest.mark.parametrize("kw, w_shape", [
    (dict(), (5, 5, 3, 4)),
    (dict(), (3, 2, 3, 4)),
    (dict(strides=(1, 2)), (3, 3, 3, 4)),
    (dict(dilation=2), (3, 3, 3, 4)),
])
def test_winograd_unsupported(kw, w_shape):
    x = np.zeros((2, 9, 9, 3), np.float32)
    w = np.zeros(w_shape, np.float32)
    with pytest.raises(ValueError, match="winograd.*3x3.*strides 1.*dilation 1"):
        nk.conv2d(x, w, algo="winograd", **kw)
    y = nk.conv2d(x, w, **kw)
    with pytest.raises(ValueError, match="winograd"):
        nk.conv2d_backward(y, x, w, algo="winograd", **kw)


def test_forward_scalar_loops():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 5, 6, 3))
    w = rng.standard_normal((3, 2, 3, 4))
    b = rng.standard_normal(4)
    for g in [dict(strides=(2, 1), padding="same", dilation=(1, 2)),
              dict(strides=(1, 3), padding=((2, 0), (1, 3)), dilation=(2, 1)),
              dict(strides=1, padding="valid", dilation=1)]:
        yr = ref_conv_loops(x, w, b, **{k: (v, v) if isinstance(v, int) else v for k, v in g.items()})
        for algo in ("im2col", "direct"):
            np.testing.assert_allclose(nk.conv2d(x, w, b, algo=algo, **g), yr, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_pointwise_and_first_layer_shapes(padding):
    rng = np.random.default_rng(2)
    for (N, H, W, C, F, K, s) in [(3, 7, 5, 40, 70, 1, 1), (2, 9, 9, 64, 33, 1, 2),
                                  (4, 12, 12, 1, 32, 3, 1), (2, 11, 9, 3, 24, 5, 2)]:
        for dt in (np.float32, np.float64):
            x = rng.standard_normal((N, H, W, C)).astype(dt)
            w = rng.standard_normal((K, K, C, F)).astype(dt)
            b = rng.standard_normal(F).astype(dt)
            g = dict(strides=(s, s), padding=padding, dilation=(1, 1))
            yr = ref_conv(x, w, b, act="relu", **g)
            dy = rng.standard_normal(yr.shape).astype(dt)
            ref = ref_conv_backward(dy, x, w, act="relu", y=yr, **g)
            for algo in ("im2col", "direct"):
                close(nk.conv2d(x, w, b, activation="relu", algo=algo, **g), yr, dt, K * K * C)
                got = nk.conv2d_backward(dy, x, w, activation="relu", y=yr, algo=algo, **g)
                for a, r in zip(got, ref):
                    close(a, r, dt, 4 * N * H * W)


@settings(max_examples=60, **SETTINGS)
@given(W=st.integers(14, 53), C=st.sampled_from([1, 2, 3, 5]),
       F=st.sampled_from([1, 3, 8, 16, 17, 33, 40]), K=st.sampled_from([1, 3, 5]),
       s=st.sampled_from([1, 2]), padding=st.sampled_from(["valid", "same", ((2, 1), (3, 0))]),
       dt=st.sampled_from([np.float32, np.float64]), act=st.sampled_from([None, "relu"]),
       view=st.booleans(), isa=st.sampled_from(ISAS), seed=st.integers(0, 2**31 - 1))
def test_direct_forward_wide_rows(W, C, F, K, s, padding, dt, act, view, isa, seed):
    """The direct forward kernel on rows long enough for its widest register
    tiles (2 x RB_FWD pixels when a channel block is one vector: F <= 16 in
    float32, <= 8 in float64, and the last block of F = 17, 33, 40), their
    remainders, zero-padded rows copied in one piece, pixels LD > C apart
    (a channel slice of a wider tensor); 1 and 2 threads give the same bits."""
    rng = np.random.default_rng(seed)
    H = 3 + K
    base = rng.standard_normal((2, H, W, C + 2 * view)).astype(dt)
    x = base[..., 1:C + 1] if view else base
    w = rng.standard_normal((K, K, C, F)).astype(dt)
    b = rng.standard_normal(F).astype(dt)
    g = dict(strides=(s, s), padding=padding, dilation=(1, 1))
    (pt, pb), (pl, pr) = ref_pads(H, W, K, K, (s, s), padding, (1, 1))
    assume(W + pl + pr >= K)
    yr = ref_conv(np.ascontiguousarray(x), w, b, act=act, **g)
    outs = []
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                outs.append(nk.conv2d(x, w, b, activation=act, algo="direct", **g))
    close(outs[0], yr, dt, K * K * C)
    assert np.array_equal(outs[0], outs[1])


def test_keras_output_sizes():
    # TensorFlow: same -> ceil(H/s), valid -> ceil((H - (K-1)*d) / s)
    for H in range(1, 12):
        for K in range(1, 5):
            for s in range(1, 4):
                for d in range(1, 3):
                    shp = nk.conv2d_output_shape((1, H, H + 1, 2), (K, K, 2, 3), strides=s,
                                                 padding="same", dilation=d)
                    assert shp == (1, -(-H // s), -(-(H + 1) // s), 3)
                    ek = (K - 1) * d + 1
                    if ek <= H:
                        shp = nk.conv2d_output_shape((1, H, H, 2), (K, K, 2, 3), strides=s,
                                                     padding="valid", dilation=d)
                        assert shp[1] == -(-(H - ek + 1) // s)


def test_column_tiling_strided_dx():
    """Stride > 1 dX goes through column tiles; shrink the budget so tiles
    split images (and hold less than one image)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 9, 10, 5))
    w = rng.standard_normal((3, 2, 5, 7))
    g = dict(strides=(2, 3), padding="same", dilation=(1, 1))
    yr = ref_conv(x, w, None, **g)
    dy = rng.standard_normal(yr.shape)
    dxr = ref_conv_backward(dy, x, w, **g)[0]
    try:
        for budget in (8 * 30 * 7, 8 * 30 * 40, 8 * 30 * 1000):
            nk._core._set_conv_col_budget(budget)
            dx = nk.conv2d_backward(dy, x, w, algo="im2col", **g)[0]
            np.testing.assert_allclose(dx, dxr, rtol=1e-12, atol=1e-12)
    finally:
        nk._core._set_conv_col_budget(0)


def test_thread_count_determinism():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((8, 12, 12, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 24)).astype(np.float32)
    x1 = rng.standard_normal((8, 12, 12, 2)).astype(np.float32)
    w1 = rng.standard_normal((3, 3, 2, 24)).astype(np.float32)
    old = nk.get_num_threads()
    try:
        for xx, ww in ((x, w), (x1, w1)):
            for algo in ("im2col", "direct", "winograd"):
                res = []
                for t in (1, 2):
                    nk.set_num_threads(t)
                    y = nk.conv2d(xx, ww, activation="relu", padding="same", algo=algo)
                    dy = np.ones_like(y)
                    res.append((y,) + nk.conv2d_backward(dy, xx, ww, activation="relu", y=y,
                                                         padding="same", algo=algo))
                for a, b in zip(*res):
                    assert np.array_equal(a, b)
    finally:
        nk.set_num_threads(old)


def test_noncontiguous_inputs_and_out_buffers():
    rng = np.random.default_rng(5)
    big = rng.standard_normal((4, 14, 12, 10)).astype(np.float32)
    x = big[::2, 1:13:1, ::2, 1:8]                     # strided view (2, 12, 6, 7)
    w = np.asfortranarray(rng.standard_normal((3, 2, 7, 9)).astype(np.float32))
    b = rng.standard_normal(18).astype(np.float32)[::2]
    g = dict(strides=(1, 2), padding="same", dilation=(2, 1))
    yr = ref_conv(np.ascontiguousarray(x), np.ascontiguousarray(w), b, **g)
    out = np.full(yr.shape, np.nan, np.float32)
    y = nk.conv2d(x, w, b, out=out, **g)
    assert y is out
    close(y, yr, np.float32, 42)
    dy = rng.standard_normal((yr.shape[0], yr.shape[1], yr.shape[2] * 2, yr.shape[3])).astype(np.float32)[:, :, ::2]
    dxr, dwr, dbr = ref_conv_backward(np.ascontiguousarray(dy), np.ascontiguousarray(x),
                                      np.ascontiguousarray(w), **g)
    dx, dw, db = np.empty(x.shape, np.float32), np.empty(w.shape, np.float32), np.empty(9, np.float32)
    r = nk.conv2d_backward(dy, x, w, dx=dx, dw=dw, db=db, **g)
    assert r[0] is dx and r[1] is dw and r[2] is db
    close(dx, dxr, np.float32, 100)
    close(dw, dwr, np.float32, 100)
    close(db, dbr, np.float32, 100)
    dx2, dw2, db2 = nk.conv2d_backward(dy, x, w, need_dx=False, need_db=False, **g)
    assert dx2 is None and db2 is None
    close(dw2, dwr, np.float32, 100)


def test_empty_batch():
    x = np.zeros((0, 5, 5, 3), np.float32)
    w = np.ones((3, 3, 3, 4), np.float32)
    y = nk.conv2d(x, w, padding="same")
    assert y.shape == (0, 5, 5, 4)
    dx, dw, db = nk.conv2d_backward(y, x, w, padding="same")
    assert dx.shape == x.shape and not dw.any() and not db.any()


# ----------------------------------------------------- gradient checks (fp64)

def _loss(x, w, b, g, act, gy, algo):
    return float(np.sum(nk.conv2d(x, w, b, activation=act, algo=algo, **g) * gy))


def _away_from_kink(x, w, b, g, act, margin=1e-3):
    if act != "relu":
        return True
    z = ref_conv(x, w, b, **g)
    return np.abs(z).min() > margin


@settings(max_examples=60, **SETTINGS)
@given(case=conv_case(max_c=6, max_f=7), act=st.sampled_from([None, "relu"]),
       algo=st.sampled_from(["im2col", "direct"]), seed=st.integers(0, 2**31 - 1))
def test_directional_finite_differences(case, act, algo, seed):
    rng, x, w, b = make(case, np.float64, seed)
    g = geo(case)
    assume(_away_from_kink(x, w, b, g, act))
    y = nk.conv2d(x, w, b, activation=act, algo=algo, **g)
    gy = rng.standard_normal(y.shape)
    dx, dw, db = nk.conv2d_backward(gy, x, w, activation=act, y=y, algo=algo, **g)
    vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))
    eps = 1e-6
    lp = _loss(x + eps * vx, w + eps * vw, b + eps * vb, g, act, gy, algo)
    lm = _loss(x - eps * vx, w - eps * vw, b - eps * vb, g, act, gy, algo)
    fd = (lp - lm) / (2 * eps)
    an = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


@pytest.mark.parametrize("algo", ["im2col", "direct"])
@pytest.mark.parametrize("g", [dict(strides=(1, 1), padding="same", dilation=(1, 1)),
                               dict(strides=(2, 1), padding=((1, 0), (2, 1)), dilation=(1, 2))])
def test_exhaustive_finite_differences(algo, g):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2, 4, 5, 2))
    w = rng.standard_normal((2, 3, 2, 3))
    b = rng.standard_normal(3)
    y = nk.conv2d(x, w, b, algo=algo, **g)
    gy = rng.standard_normal(y.shape)
    dx, dw, db = nk.conv2d_backward(gy, x, w, algo=algo, **g)
    eps = 1e-6
    for arr, grad in ((x, dx), (w, dw), (b, db)):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            lp = _loss(x, w, b, g, None, gy, algo)
            arr[idx] = old - eps
            lm = _loss(x, w, b, g, None, gy, algo)
            arr[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- errors

def _xw(dt=np.float32):
    return np.zeros((2, 6, 6, 3), dt), np.zeros((3, 3, 3, 4), dt)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(strides=0), ValueError, "strides"),
    (dict(strides=-1), ValueError, "strides"),
    (dict(strides=(1, 2, 3)), ValueError, "strides"),
    (dict(strides=1.5), TypeError, "strides"),
    (dict(strides=True), TypeError, "strides"),
    (dict(strides=2**40), ValueError, "strides"),
    (dict(dilation=0), ValueError, "dilation"),
    (dict(dilation=10**30), ValueError, "dilation"),
    (dict(dilation=(1, 4)), ValueError, "does not fit"),
    (dict(padding="full"), ValueError, "padding"),
    (dict(padding=((1, -1), (0, 0))), ValueError, "padding"),
    (dict(padding=((1, 1),)), ValueError, "padding"),
    (dict(padding=((2**62, 0), (0, 0))), ValueError, "padding"),
    (dict(padding=3), ValueError, "padding"),
    (dict(activation="tanh"), ValueError, "activation"),
    (dict(algo="fft"), ValueError, "algo"),
])
def test_bad_arguments(kwargs, exc, match):
    x, w = _xw()
    with pytest.raises(exc, match=match):
        nk.conv2d(x, w, **kwargs)
    dy = np.zeros((2, 4, 4, 4), np.float32)
    with pytest.raises(exc, match=match):
        nk.conv2d_backward(dy, x, w, **kwargs)


def test_bad_shapes_and_dtypes():
    x, w = _xw()
    with pytest.raises(ValueError, match=r"input channels.*\(2, 6, 6, 3\).*\(3, 3, 2, 4\)"):
        nk.conv2d(x, np.zeros((3, 3, 2, 4), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        nk.conv2d(x[0], w)
    with pytest.raises(ValueError, match="4-D"):
        nk.conv2d(x, w[0])
    with pytest.raises(TypeError, match="same dtype"):
        nk.conv2d(x, w.astype(np.float64))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.conv2d(x.astype(np.int32), w)
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.conv2d(x.astype(np.float16), w.astype(np.float16))
    with pytest.raises(ValueError, match="does not fit"):
        nk.conv2d(x, np.zeros((7, 3, 3, 4), np.float32))
    with pytest.raises(ValueError, match=">= 1"):
        nk.conv2d(x, np.zeros((3, 3, 3, 0), np.float32))
    with pytest.raises(ValueError, match=">= 1"):
        nk.conv2d(np.zeros((2, 0, 6, 3), np.float32), w)
    with pytest.raises(ValueError, match="bias"):
        nk.conv2d(x, w, np.zeros(5, np.float32))
    with pytest.raises(TypeError, match="bias"):
        nk.conv2d(x, w, np.zeros(4, np.float64))
    # out buffers
    with pytest.raises(ValueError, match=r"out has shape"):
        nk.conv2d(x, w, out=np.zeros((2, 4, 4, 5), np.float32))
    with pytest.raises(TypeError, match="out has dtype"):
        nk.conv2d(x, w, out=np.zeros((2, 4, 4, 4), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.conv2d(x, w, out=np.zeros((2, 4, 4, 8), np.float32)[..., ::2])
    ro = np.zeros((2, 4, 4, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nk.conv2d(x, w, out=ro)
    with pytest.raises(TypeError, match="ndarray"):
        nk.conv2d(x, w, out=[0])
    buf = np.zeros(400, np.float32)
    with pytest.raises(ValueError, match="overlaps input x"):
        nk.conv2d(buf[:216].reshape(x.shape), w, out=buf[200:328].reshape(2, 4, 4, 4))
    # overflow of dimension products
    with pytest.raises(ValueError):
        nk.conv2d_output_shape((2**29, 2**29, 2**29, 2**29), (1, 1, 2**29, 1))
    with pytest.raises(ValueError):
        nk.conv2d_output_shape((1, -5, 5, 1), (1, 1, 1, 1))
    with pytest.raises(ValueError):
        nk.conv2d_output_shape((1, 2**40, 5, 1), (1, 1, 1, 1))


def test_backward_errors():
    x, w = _xw()
    dy = np.zeros((2, 4, 4, 4), np.float32)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 4, 5\), expected \(2, 4, 4, 4\)"):
        nk.conv2d_backward(np.zeros((2, 4, 4, 5), np.float32), x, w)
    with pytest.raises(ValueError, match="needs the forward output y"):
        nk.conv2d_backward(dy, x, w, activation="relu")
    with pytest.raises(ValueError, match="y has shape"):
        nk.conv2d_backward(dy, x, w, activation="relu", y=dy[:1])
    with pytest.raises(TypeError, match="same dtype"):
        nk.conv2d_backward(dy.astype(np.float64), x, w)
    with pytest.raises(ValueError, match="dx has shape"):
        nk.conv2d_backward(dy, x, w, dx=np.zeros((2, 6, 6, 4), np.float32))
    with pytest.raises(ValueError, match="dw has shape"):
        nk.conv2d_backward(dy, x, w, dw=np.zeros((3, 3, 3, 5), np.float32))
    with pytest.raises(ValueError, match="db has shape"):
        nk.conv2d_backward(dy, x, w, db=np.zeros(5, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        nk.conv2d_backward(dy, x, w, dx=x)
    buf = np.zeros(1000, np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nk.conv2d_backward(dy, x, w, dw=buf[:108].reshape(w.shape), db=buf[100:104])


def test_auto_heuristic_documented():
    assert nk.conv2d_algo((32, 28, 28, 1), (3, 3, 1, 32)) == "direct"
    cnn2 = ((32, 26, 26, 32), (3, 3, 32, 64))
    assert nk.conv2d_algo(*cnn2) == "winograd"
    assert nk.conv2d_algo(*cnn2, product="backward_data") == "winograd"
    assert nk.conv2d_algo(*cnn2, product="backward_filter") == "winograd"
    # bf16 products: Winograd's weight gradient takes them too (pairs of tiles)
    assert nk.conv2d_algo(*cnn2, product="backward_filter", precision="bfloat16") == "winograd"
    assert nk.conv2d_algo(*cnn2, strides=2, product="backward_filter",
                          precision="bfloat16") == "im2col"
    # ... and direct_wgrad's with >= 16 input channels (ResNet's strided
    # 16 -> 32) is a bf16 im2col GEMM; with fewer (the 3 -> 16 stem) float32
    down = ((128, 32, 32, 16), (3, 3, 16, 32))
    assert nk.conv2d_algo(*down, strides=2, padding="same",
                          product="backward_filter") == "direct_wgrad"
    assert nk.conv2d_algo(*down, strides=2, padding="same", product="backward_filter",
                          precision="bfloat16") == "im2col"
    assert nk.conv2d_algo((128, 32, 32, 3), (3, 3, 3, 16), padding="same",
                          product="backward_filter", precision="bfloat16") == "direct_wgrad"
    # the strided forward: direct in float32; bf16 im2col from 16 input
    # channels with a window of >= 32 values (3x3), not the 1x1 projection
    assert nk.conv2d_algo(*down, strides=2, padding="same") == "direct"
    assert nk.conv2d_algo(*down, strides=2, padding="same", precision="bfloat16") == "im2col"
    assert nk.conv2d_algo((128, 32, 32, 16), (1, 1, 16, 32), strides=2,
                          precision="bfloat16") == "direct"
    assert nk.conv2d_algo((128, 16, 16, 32), (1, 1, 32, 64), strides=2,
                          precision="bfloat16") == "im2col"
    assert nk.conv2d_algo(*cnn2, product="backward_data", precision="bfloat16") == "winograd"
    assert nk.conv2d_algo((128, 32, 32, 16), (3, 3, 16, 16), product="backward_filter",
                          padding="same", precision="bfloat16") == "winograd"
    assert nk.conv2d_algo(*cnn2, padding="same") == "winograd"
    for p in ("forward", "backward_data"):
        assert nk.conv2d_algo(*cnn2, dtype="float64", product=p) == "im2col"
    # strided: direct forward for C_in <= 32 and C_out a multiple of 32 (float32)
    assert nk.conv2d_algo(*cnn2, strides=2) == "direct"
    for p in ("backward_data", "backward_filter"):
        assert nk.conv2d_algo(*cnn2, strides=2, product=p) == "im2col"
    assert nk.conv2d_algo(*cnn2, strides=2, dtype="float64") == "im2col"
    assert nk.conv2d_algo((32, 32, 32, 16), (1, 1, 16, 32), strides=2) == "direct"
    assert nk.conv2d_algo((32, 32, 32, 16), (3, 3, 16, 16), strides=2) == "im2col"
    assert nk.conv2d_algo((32, 16, 16, 64), (3, 3, 64, 128), strides=2) == "im2col"
    assert nk.conv2d_algo(*cnn2, dilation=2) == "im2col"
    assert nk.conv2d_algo((32, 26, 26, 8), (3, 3, 8, 64)) == "im2col"    # C_in < 16
    assert nk.conv2d_algo((32, 26, 26, 32), (3, 3, 32, 8)) == "im2col"   # C_out < 16
    assert nk.conv2d_algo((32, 26, 26, 32), (5, 5, 32, 64)) == "im2col"
    for p in ("forward", "backward_data"):
        assert nk.conv2d_algo((8, 9, 9, 64), (1, 1, 64, 8), product=p) in ("im2col", "direct")
    # float32 dW with C_out <= 32 (see test_conv_wgrad.py)
    assert nk.conv2d_algo((8, 9, 9, 64), (1, 1, 64, 8), product="backward_filter") == "direct_wgrad"
    with pytest.raises(ValueError, match="product"):
        nk.conv2d_algo((8, 9, 9, 64), (1, 1, 64, 8), product="sideways")


def test_large_pixel_count_wgrad_blocks():
    """dW over >= 32768 output pixels is cut into fixed k-blocks (partial sums)."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((8, 66, 66, 8)).astype(np.float32)
    w = rng.standard_normal((3, 3, 8, 8)).astype(np.float32)
    g = dict(strides=(1, 1), padding="valid", dilation=(1, 1))
    yr = ref_conv(x, w, None, act="relu", **g)
    dy = rng.standard_normal(yr.shape).astype(np.float32)
    ref = ref_conv_backward(dy, x, w, act="relu", y=yr, **g)
    for n in (8, 5):  # 4 and 2 blocks
        got = nk.conv2d_backward(dy[:n], x[:n], w, activation="relu", y=yr[:n], algo="im2col", **g)
        refn = ref_conv_backward(dy[:n], x[:n], w, act="relu", y=yr[:n], **g)
        for a, r in zip(got, refn):
            close(a, r, np.float32, 4 * dy[:n].size // 8)
    assert ref[1].shape == w.shape

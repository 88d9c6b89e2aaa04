"""NumPy float64 references for the kernels and the comparison used by every
numerical test.

Tolerances are per element and scaled by the magnitude of what was summed
(|alpha| * |op(a)| @ |op(b)| + |beta * c| + |bias|), so a wrong element
(wrong index, missing term, stray read) is off by O(scale) and always caught,
while rounding in any summation order stays far inside:
  float32: 1e-5 * sqrt(K) * scale    (worst-case rounding is ~6e-8 * K * scale)
  float64: 1e-12 * scale             (worst-case ~1.1e-16 * K * scale)
"""
import contextlib
import math

import numpy as np

import nnkernels as nk

F64 = np.float64


def rtol_for(dtype, k):
    if np.dtype(dtype) == np.float32:
        return 1e-5 * math.sqrt(max(int(k), 1))
    return 1e-12


def as_dtype_scalar(x, dtype):
    """alpha/beta as the kernel sees them (rounded to the operands' dtype)."""
    return float(np.dtype(dtype).type(x))


def gemm_ref(a, b, *, trans_a=False, trans_b=False, alpha=1.0, beta=0.0, c=None,
             bias=None, activation=None, dtype=None):
    """(reference, scale) in float64 for act(alpha op(a) op(b) + beta c + bias)."""
    dtype = np.dtype(dtype if dtype is not None else np.asarray(a).dtype)
    # contiguous float64 copies: NumPy's matmul is only fast (BLAS) on those
    A = np.array(a, dtype=F64, order="C")
    B = np.array(b, dtype=F64, order="C")
    if trans_a:
        A = A.T
    if trans_b:
        B = B.T
    al = as_dtype_scalar(alpha, dtype)
    be = as_dtype_scalar(beta, dtype)
    ref = al * (A @ B)
    scale = abs(al) * (np.abs(A) @ np.abs(B))
    if be != 0.0:
        C = np.asarray(c, dtype=F64)
        ref = ref + be * C
        scale = scale + np.abs(be * C)
    if bias is not None:
        bb = np.asarray(bias, dtype=F64)
        ref = ref + bb
        scale = scale + np.abs(bb)
    if activation == "relu":
        ref = np.maximum(ref, 0.0)  # NaN propagates, like the kernels
    return ref, scale


def assert_close(got, ref, scale, dtype, k, what="result"):
    """Every element of `got` within rtol_for(dtype, k) * scale of `ref`.
    Where `ref` is NaN, `got` must be NaN too; elsewhere NaN is a failure."""
    got = np.asarray(got)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    g = got.astype(F64)
    # relative to the magnitudes summed, plus a floor for results that
    # underflow (subnormal spacing per operation)
    tol = (rtol_for(dtype, k) * np.asarray(scale, dtype=F64)
           + 4 * (int(k) + 3) * np.finfo(dtype).smallest_subnormal)
    ref_nan = np.isnan(ref)
    with np.errstate(invalid="ignore"):
        ok = np.where(ref_nan, np.isnan(g), np.abs(g - ref) <= tol)
    if not ok.all():
        bad = np.argwhere(~ok)
        i = tuple(bad[0])
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.abs(g - ref) / np.asarray(scale, dtype=F64)
        rel = np.nan_to_num(rel[~ok], nan=np.inf, posinf=np.inf)
        worst = tuple(bad[int(np.argmax(rel))])
        raise AssertionError(
            f"{what}: {len(bad)} of {ref.size} elements wrong (dtype {np.dtype(dtype)}, "
            f"K={k}, rtol={rtol_for(dtype, k):.3g}); first at {i}: got {g[i]!r}, "
            f"expected {ref[i]!r} (scale {np.asarray(scale)[i]!r}); worst at {worst}: "
            f"got {g[worst]!r}, expected {ref[worst]!r}; wrong rows "
            f"{sorted(set(bad[:, 0].tolist()))[:20]}"
            + (f", wrong cols {sorted(set(bad[:, 1].tolist()))[:20]}" if bad.shape[1] > 1 else ""))


def dense_backward_ref(dy, x, w, y=None, activation=None):
    """(dx, dw, db) and their scales (|dz| @ |w|.T, |x|.T @ |dz|, |dz|.sum(0))
    in float64; relu' is taken from the forward output: y > 0."""
    DY = np.array(dy, dtype=F64, order="C")
    X = np.array(x, dtype=F64, order="C")
    W = np.array(w, dtype=F64, order="C")
    if activation == "relu":
        DZ = DY * (np.asarray(y) > 0)
    else:
        DZ = DY
    aDZ = np.abs(DZ)
    return (
        (DZ @ W.T, aDZ @ np.abs(W).T),
        (X.T @ DZ, np.abs(X).T @ aDZ),
        (DZ.sum(axis=0), aDZ.sum(axis=0)),
    )


def bits(x):
    """Raw bytes of an array's values (for bitwise comparisons; -0.0 != 0.0
    and NaN payloads count)."""
    x = np.ascontiguousarray(x)
    return x.view(np.uint32 if x.dtype == np.float32 else np.uint64)


def assert_bitwise_equal(x, y, what="result"):
    bx, by = bits(x), bits(y)
    assert bx.shape == by.shape, f"{what}: shapes {bx.shape} vs {by.shape}"
    if not np.array_equal(bx, by):
        bad = np.argwhere(bx != by)
        i = tuple(bad[0])
        raise AssertionError(
            f"{what}: {len(bad)} of {bx.size} elements differ bitwise; first at {i}: "
            f"{np.asarray(x)[i]!r} vs {np.asarray(y)[i]!r}")


# bfloat16 bit patterns by NumPy bit operations (not the kernels' code)
def _u32(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)


def rne_bits(a):
    """bfloat16 bit patterns of float32 `a`: nearest even, denormals kept,
    NaN quieted (sign and top payload bits kept)."""
    u = _u32(a)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    r = np.where(nan, (u >> 16) | 0x40, r)
    return r.astype(np.uint16)


def ftz_bits(a):
    """As rne_bits, but zero and denormal inputs give a signed zero."""
    u = _u32(a)
    r = rne_bits(a).astype(np.uint64)
    r = np.where((u & 0x7F800000) == 0, (u >> 16) & 0x8000, r)
    return r.astype(np.uint16)


def widen(bits16):
    return (bits16.astype(np.uint32) << 16).view(np.float32)


# Kernel state for one block of a test (hypothesis examples run inside it).
@contextlib.contextmanager
def isa(name):
    old = nk.get_isa()
    nk.set_isa(name)
    try:
        yield
    finally:
        nk.set_isa(old)


@contextlib.contextmanager
def threads(n):
    old = nk.get_num_threads()
    nk.set_num_threads(n)
    try:
        yield
    finally:
        nk.set_num_threads(old)


@contextlib.contextmanager
def wino4(on):
    """Winograd F(4x4, 3x3) where it applies (on, the default) or F(2x2, 3x3)
    everywhere (off) inside the block."""
    from nnkernels import _core
    old = _core._set_winograd4(on)
    try:
        yield
    finally:
        _core._set_winograd4(old)


# ----------------------------------------------------------- convolution --
# The references loop over the KH x KW taps and use einsum over each tap's
# window (no im2col), so they share no code or idea with the kernels beyond
# the definition of a convolution.  Grouped and depthwise convolutions are
# written as independent convolutions on channel slices.

def ref_pads(H, W, KH, KW, strides, padding, dilation):
    sh, sw = strides
    dh, dw = dilation
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":  # TensorFlow's rule
        oh, ow = -(-H // sh), -(-W // sw)
        th = max((oh - 1) * sh + (KH - 1) * dh + 1 - H, 0)
        tw = max((ow - 1) * sw + (KW - 1) * dw + 1 - W, 0)
        return (th // 2, th - th // 2), (tw // 2, tw - tw // 2)
    return tuple(padding[0]), tuple(padding[1])


def _windows(xp, kh, kw, OH, OW, strides, dilation):
    (sh, sw), (dh, dw) = strides, dilation
    return (slice(None), slice(kh * dh, kh * dh + (OH - 1) * sh + 1, sh),
            slice(kw * dw, kw * dw + (OW - 1) * sw + 1, sw))


def ref_conv(x, w, b, strides, padding, dilation, act=None):
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, strides, padding, dilation)
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    OH = (H + pt + pb - (KH - 1) * dilation[0] - 1) // strides[0] + 1
    OW = (W + pl + pr - (KW - 1) * dilation[1] - 1) // strides[1] + 1
    y = np.zeros((N, OH, OW, F), x.dtype)
    for kh in range(KH):
        for kw in range(KW):
            win = xp[_windows(xp, kh, kw, OH, OW, strides, dilation)]
            y += np.einsum("nhwc,cf->nhwf", win, w[kh, kw])
    if b is not None:
        y += b
    if act == "relu":
        y = np.maximum(y, 0)
    return y


def ref_conv_backward(dy, x, w, strides, padding, dilation, act=None, y=None):
    N, H, W, C = x.shape
    KH, KW, _, F = w.shape
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, strides, padding, dilation)
    dz = dy * (y > 0) if act == "relu" else dy
    OH, OW = dy.shape[1:3]
    xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for kh in range(KH):
        for kw in range(KW):
            sl = _windows(xp, kh, kw, OH, OW, strides, dilation)
            dw[kh, kw] = np.einsum("nhwc,nhwf->cf", xp[sl], dz)
            dxp[sl] += np.einsum("nhwf,cf->nhwc", dz, w[kh, kw])
    return dxp[:, pt:pt + H, pl:pl + W], dw, dz.sum(axis=(0, 1, 2))


def ref_conv_grouped(x, w, b, strides, padding, dilation, groups=1, act=None):
    """Keras Conv2D(groups=g): output block j (F/g channels) is the
    convolution of input block j (C/g channels) with w[..., block j]."""
    C, F = x.shape[3], w.shape[3]
    cg, fg = C // groups, F // groups
    y = np.concatenate(
        [ref_conv(x[..., j * cg:(j + 1) * cg], w[..., j * fg:(j + 1) * fg],
                  None if b is None else b[j * fg:(j + 1) * fg], strides, padding, dilation)
         for j in range(groups)], axis=3)
    return np.maximum(y, 0) if act == "relu" else y


def ref_conv_grouped_backward(dy, x, w, strides, padding, dilation, groups=1, act=None, y=None):
    """(dx, dw, db) of ref_conv_grouped, group by group."""
    C, F = x.shape[3], w.shape[3]
    cg, fg = C // groups, F // groups
    dz = dy * (y > 0) if act == "relu" else dy
    parts = [ref_conv_backward(dz[..., j * fg:(j + 1) * fg], x[..., j * cg:(j + 1) * cg],
                               w[..., j * fg:(j + 1) * fg], strides, padding, dilation)
             for j in range(groups)]
    return tuple(np.concatenate([p[i] for p in parts], axis=3 if i < 2 else 0) for i in range(3))


def ref_depthwise(x, w, b, strides, padding, dilation, act=None):
    """Keras DepthwiseConv2D, w (KH, KW, C, M): output channel c*M + m is
    x[..., c] convolved with w[:, :, c, m], i.e. groups=C with C*M filters."""
    KH, KW, C, M = w.shape
    return ref_conv_grouped(x, w.reshape(KH, KW, 1, C * M), b, strides, padding, dilation,
                            groups=C, act=act)


def ref_depthwise_backward(dy, x, w, strides, padding, dilation, act=None, y=None):
    KH, KW, C, M = w.shape
    dx, dw, db = ref_conv_grouped_backward(dy, x, w.reshape(KH, KW, 1, C * M), strides, padding,
                                           dilation, groups=C, act=act, y=y)
    return dx, dw.reshape(w.shape), db


WINO_C = 8   # F(2x2, 3x3)'s bound (see test_conv.py)
# Winograd F(4x4, 3x3) (nk_conv_wino4.h, float32 only) is bounded like
# F(2x2, 3x3) (test_conv.py, WINO_C) over its 6x6 patches (wino_scale(...,
# m=4)), but its transforms multiply by up to 5 (B^T) and 8 (A^T) before the
# cancellation: observed ratios up to ~6.4 over 300 random shapes with
# magnitudes spread over six decades, so WINO4_C = 64; a wrong transform,
# tile or padding gives errors of order 1 / eps.
WINO4_C = 64


def assert_wino_bound(got, exact, scale, dt, c, what="result"):
    """|got - exact| <= c * eps * scale (+ tiny) everywhere (scale: wino_scale)."""
    err = np.abs(got.astype(F64) - exact)
    lim = c * np.finfo(dt).eps * scale + np.finfo(dt).tiny
    worst = float((err / lim).max()) if err.size else 0.0
    assert worst <= 1.0, f"{what}: error {worst:.3g} x the Winograd bound"


def wino_scale(x, w, b, pt, pl, OH, OW, m=2):
    """sum_c P_c K_c (+ |b|) per output of Winograd F(m x m, 3x3) (m = 2 or
    4): P_c = sum of |x| over the (m + 2) x (m + 2) patch of the output's
    tile, read at (m th - pt + a, m tw - pl + b) of source x (N, H, W, C)
    (zero outside; pt, pl may be negative), K_c = sum of |w| over the kernel
    w (3, 3, C, F)."""
    N, H, W, C = x.shape
    TH, TW = -(-OH // m), -(-OW // m)
    M = m + 2 + max(abs(pt), abs(pl))
    xp = np.zeros((N, H + 2 * M + m * TH, W + 2 * M + m * TW, C))
    xp[:, M:M + H, M:M + W] = np.abs(x)
    P = np.zeros((N, TH, TW, C))
    for a in range(m + 2):
        for bb in range(m + 2):
            r0, c0 = M - pt + a, M - pl + bb
            P += xp[:, r0:r0 + m * TH:m, c0:c0 + m * TW:m]
    S = np.einsum("nhwc,cf->nhwf", P, np.abs(w).sum(axis=(0, 1)))
    S = S.repeat(m, axis=1).repeat(m, axis=2)[:, :OH, :OW]
    return S + (np.abs(b) if b is not None else 0)


def wino_wgrad_scale(x, dz, pt, pl, m=2):
    """(S, depth) bounding the float32 Winograd weight gradient (3x3,
    stride 1; F(m x m, 3x3), m = 2: nk_conv_wino_wgrad.h, m = 4:
    nk_conv_wino4_wgrad.h): |dW - dW_exact| <= c * eps * depth * S.
    Per tile t the transformed products are bounded by P_c(t) Q_f(t) (P_c:
    sum of |x_c| over t's (m + 2) x (m + 2) source patch at (m th - pt,
    m tw - pl), zero outside the image; Q_f: sum of |dz_f| over its m x m
    outputs) times the transforms' growth (1 for m = 2; the constant c
    takes it for m = 4) and G^T M G adds them with weights of total size
    <= 4: S[c, f] = sum_t P_c Q_f, broadcast to dW's (3, 3, C, F).  depth:
    the summation depth, the tiles of one of the 16 chunks in order, then
    the chunks (db: plain sums of the same depth)."""
    x = np.abs(np.asarray(x, F64))
    N, H, W, C = x.shape
    _, OH, OW, F = dz.shape
    TH, TW = -(-OH // m), -(-OW // m)
    zp = np.zeros((N, m * TH, m * TW, F))
    zp[:, :OH, :OW] = np.abs(dz)
    Q = sum(zp[:, i::m, j::m] for i in range(m) for j in range(m))
    M = m + 2 + max(abs(pt), abs(pl))
    xp = np.zeros((N, H + 2 * M + m * TH, W + 2 * M + m * TW, C))
    xp[:, M:M + H, M:M + W] = x
    P = np.zeros((N, TH, TW, C))
    for a in range(m + 2):
        for b in range(m + 2):
            P += xp[:, M - pt + a:M - pt + a + m * TH:m, M - pl + b:M - pl + b + m * TW:m]
    S = np.einsum("nhwc,nhwf->cf", P, Q)
    depth = -(-(N * TH * TW) // 16) + 16
    return np.broadcast_to(S, (3, 3, C, F)), depth


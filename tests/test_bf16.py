"""bfloat16 in nnkernels: the conversions and the products with
precision="bfloat16" (gemm, dense, conv2d), against NumPy references.

The references round with NumPy bit operations written here (not by the
kernels' code): `rne` is round-to-nearest-even keeping denormals (what
nk.to_bf16 promises, and what ml_dtypes does), `ftz` the rounding of the
products' operands (VCVTNEPS2BF16: the same, denormals to signed zero).  A
product's result is compared with the float64 product of the rounded
operands at float32 tolerances (the accumulation is float32), and with the
product of the unrounded operands at bfloat16's: 8 significant bits, so
each operand is within 2**-9 relative, each product within about 2**-8.
"""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnkernels as nk
from reference import (
    assert_bitwise_equal,
    assert_close,
    dense_backward_ref,
    ftz_bits,
    gemm_ref,
    ref_conv,
    ref_conv_backward,
    rne_bits,
    threads,
    widen,
    wino_wgrad_scale,
)
from reference import isa as use_isa
from strategies import dims, layouts, make_array

F64 = np.float64
BF16_RTOL = 2.0 ** -7  # two operands each within 2**-9, plus float32 sums: generous but O(scale)
BF16_PATHS = ["native", "emulated"] if nk.bf16_native_supported() else ["emulated"]


# ------------------------------------------------------------ references --

def ftz(a):
    """float32 values of `a` rounded as the products' operands are."""
    return widen(ftz_bits(np.asarray(a, np.float32))).reshape(np.shape(a))


def assert_bf16_close(got, ref_unrounded, scale, what):
    """Within bfloat16 accuracy of the exact (unrounded-operand) result."""
    got = np.asarray(got, F64)
    tol = BF16_RTOL * np.asarray(scale, F64) + 1e-30
    bad = np.abs(got - ref_unrounded) > tol
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} elements beyond bfloat16 "
                           f"accuracy; worst excess "
                           f"{float(np.max((np.abs(got - ref_unrounded) - tol)[bad])):.3g}")


@pytest.fixture(params=BF16_PATHS)
def bf16_path(request):
    """Run the test with VDPBF16PS (where the CPU has it) and emulated."""
    old = nk.bf16_path()
    nk.set_bf16_native(request.param == "native")
    try:
        yield request.param
    finally:
        if nk.bf16_native_supported():
            nk.set_bf16_native(old == "avx512_bf16")


# ----------------------------------------------------------- conversions --

SPECIALS = np.array([0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, -np.nan,
                     np.finfo(np.float32).max, -np.finfo(np.float32).max,
                     np.finfo(np.float32).tiny, np.finfo(np.float32).smallest_subnormal,
                     -np.finfo(np.float32).smallest_subnormal, 1e-40, -3e-39,
                     np.uint32(0x7F7FC000).view(np.float32),  # above bf16's max: rounds to inf
                     1.00390625,    # 1 + 2**-8: a tie, rounds to even (1.0)
                     1.01171875,    # 1 + 3 * 2**-8: a tie, rounds to even (1.015625)
                     np.nextafter(np.float32(1.00390625), np.float32(2)),  # above the tie: up
                     ], dtype=np.float32)


def test_to_bf16_special_values():
    got = nk.to_bf16(SPECIALS)
    assert got.dtype == np.uint16 and got.shape == SPECIALS.shape
    want = rne_bits(SPECIALS)
    assert np.array_equal(got, want), list(zip(SPECIALS, got, want))
    back = nk.from_bf16(got)
    assert back.dtype == np.float32
    assert back[16] == 1.0 and back[17] == 1.015625 and back[18] == 1.0078125
    assert np.isinf(back[15]) and back[15] > 0
    assert np.isnan(back[6]) and np.isnan(back[7])
    assert back[13] != 0.0 and back[14] != 0.0, "denormals are kept by to_bf16"
    assert np.signbit(back[1]) and not np.signbit(back[0])


@given(seed=st.integers(0, 2**32 - 1), n=dims(1, 3000))
def test_to_bf16_random_bits_match_reference(seed, n):
    """Any bit pattern (NaN payloads, denormals, infinities) converts as the
    reference does, and from_bf16 inverts it exactly."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32).view(np.float32)
    got = nk.to_bf16(x)
    assert np.array_equal(got, rne_bits(x))
    assert np.array_equal(nk.from_bf16(got).view(np.uint32), got.astype(np.uint32) << 16)


def test_to_bf16_matches_ml_dtypes():
    """An independent check against ml_dtypes (the bfloat16 of JAX and TF),
    NaN excepted (payload conventions differ; both stay NaN)."""
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="ml_dtypes not installed")
    rng = np.random.default_rng(3)
    x = np.concatenate([SPECIALS, rng.standard_normal(10000).astype(np.float32) * 1e3,
                        rng.integers(0, 2**32, 10000, dtype=np.uint64).astype(np.uint32)
                        .view(np.float32)])
    ours = nk.to_bf16(x)
    with np.errstate(invalid="ignore"):
        theirs = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    nan = np.isnan(x)
    assert np.array_equal(ours[~nan], theirs[~nan])
    assert np.isnan(nk.from_bf16(ours)[nan]).all()


def test_conversion_arguments():
    with pytest.raises(TypeError):
        nk.to_bf16(np.zeros(3, np.float64))
    with pytest.raises(TypeError):
        nk.from_bf16(np.zeros(3, np.int32))
    with pytest.raises(ValueError):
        nk.to_bf16(np.zeros(3, np.float32), out=np.zeros(4, np.uint16))
    x = np.arange(6, dtype=np.float32).reshape(2, 3)[:, ::2]  # non-contiguous input is fine
    assert np.array_equal(nk.from_bf16(nk.to_bf16(x)), x)
    out = np.empty((2, 2), np.uint16)
    assert nk.to_bf16(x, out=out) is out


# --------------------------------------------------------------- gemm --

@st.composite
def bf16_gemm_cases(draw, max_dim=200):
    return dict(m=draw(dims(1, max_dim)), n=draw(dims(1, max_dim)), k=draw(dims(1, 600)),
                trans_a=draw(st.booleans()), trans_b=draw(st.booleans()),
                la=draw(layouts()), lb=draw(layouts()), bias=draw(st.booleans()),
                act=draw(st.sampled_from([None, "relu"])), beta=draw(st.sampled_from([0.0, 1.0, -0.5])),
                alpha=draw(st.sampled_from([1.0, 0.5, -2.0])), seed=draw(st.integers(0, 2**31)))


def _gemm_operands(c):
    sa = (c["k"], c["m"]) if c["trans_a"] else (c["m"], c["k"])
    sb = (c["n"], c["k"]) if c["trans_b"] else (c["k"], c["n"])
    a = make_array(sa, np.float32, c["la"], c["seed"])
    b = make_array(sb, np.float32, c["lb"], c["seed"] + 1)
    bias = make_array((1, c["n"]), np.float32, "C", c["seed"] + 2)[0] if c["bias"] else None
    cc = make_array((c["m"], c["n"]), np.float32, "C", c["seed"] + 3)
    return a, b, bias, cc


@given(case=bf16_gemm_cases())
def test_gemm_bf16_matches_reference(case, isa, num_threads, bf16_path):
    a, b, bias, cc = _gemm_operands(case)
    kw = dict(trans_a=case["trans_a"], trans_b=case["trans_b"], alpha=case["alpha"],
              beta=case["beta"], c=cc if case["beta"] else None, bias=bias,
              activation=case["act"])
    got = nk.gemm(a, b, precision="bfloat16", **kw)
    ref, scale = gemm_ref(ftz(a), ftz(b), dtype=np.float32, **kw)
    assert_close(got, ref, scale, np.float32, case["k"], "gemm bf16 vs rounded operands")
    exact, _ = gemm_ref(a, b, dtype=np.float32, **kw)
    assert_bf16_close(got, exact, scale, "gemm bf16 vs exact")


def _across_paths_and_threads(isa, fn):
    """[((path, threads), fn())] for 1 and 2 threads on every bf16 path of
    this ISA (VDPBF16PS and its emulation on avx512 where the CPU has it,
    else the emulation); the native path is restored afterwards."""
    runs = []
    try:
        for path in BF16_PATHS if isa == "avx512" else ["emulated"]:
            if nk.bf16_native_supported():
                nk.set_bf16_native(path == "native")
            for t in (1, 2):
                nk.set_num_threads(t)
                runs.append(((path, t), fn()))
    finally:
        if nk.bf16_native_supported():
            nk.set_bf16_native(True)
    return runs


@given(case=bf16_gemm_cases(max_dim=120))
def test_gemm_bf16_bitwise_across_threads_and_paths(case, isa):
    """Same bits for 1 and 2 threads, and (AVX-512) for VDPBF16PS and its
    emulation: the operands round identically and each pair is accumulated
    in the same order."""
    a, b, bias, cc = _gemm_operands(case)
    kw = dict(trans_a=case["trans_a"], trans_b=case["trans_b"], bias=bias,
              activation=case["act"], precision="bfloat16")
    runs = _across_paths_and_threads(isa, lambda: (nk.gemm(a, b, **kw),))
    for who, (r,) in runs[1:]:
        assert_bitwise_equal(r, runs[0][1][0], f"gemm bf16 {who} vs {runs[0][0]}")


def test_gemm_bf16_rounds_operands_not_accumulation():
    """1 + 2**-9 is not a bfloat16: it rounds to 1 as an operand, but a sum
    of 256 products of 1 * 2**-9 keeps float32 precision."""
    a = np.full((1, 256), 1.0, np.float32)
    b = np.full((256, 1), 2.0 ** -9, np.float32)
    assert nk.gemm(a, b, precision="bfloat16")[0, 0] == 0.5
    a2 = np.full((1, 1), 1 + 2.0 ** -9, np.float32)
    b2 = np.ones((1, 1), np.float32)
    assert nk.gemm(a2, b2, precision="bfloat16")[0, 0] == 1.0
    assert nk.gemm(a2, b2)[0, 0] == np.float32(1 + 2.0 ** -9)


def test_gemm_bf16_nan_inf_propagate(bf16_path):
    a = np.ones((4, 6), np.float32)
    b = np.ones((6, 3), np.float32)
    a[1, 2] = np.nan
    a[2, 0] = np.inf
    got = nk.gemm(a, b, precision="bfloat16")
    assert np.isnan(got[1]).all() and np.isposinf(got[2]).all()
    assert (got[[0, 3]] == 6).all()


def test_gemm_bf16_few_rows_two_threads():
    """A regression: with 2 threads, few rows (< 2 tiles per thread) and one
    column sliver the driver falls back to one thread, whose workspace
    layout did not match what was allocated (A and the float32 scratch
    overlapped: results off by O(1); float32 with a packed B wrote past it)."""
    rng = np.random.default_rng(11)
    for m, k, n in [(24, 251, 31), (24, 250, 32), (17, 64, 1)]:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        for t in (1, 2):
            nk.set_num_threads(t)
            got = nk.gemm(a, b, precision="bfloat16")
            ref, scale = gemm_ref(ftz(a), ftz(b), dtype=np.float32)
            assert_close(got, ref, scale, np.float32, k, f"bf16 {(m, k, n)} {t} threads")
            dy = rng.standard_normal((k, n)).astype(np.float32)
            _, dw, db = nk.dense_backward(dy, a.T.copy(), np.ones((m, n), np.float32),
                                          need_dx=False)   # float32, bcolsum: a packed B
            ref, scale = gemm_ref(a, dy)
            assert_close(dw, ref, scale, np.float32, k, f"float32 dW {(m, k, n)} {t} threads")


def test_conversions_of_misaligned_views():
    buf = np.zeros(4 * 10 + 1, np.uint8)
    x = buf[1:].view(np.float32)          # C-contiguous, misaligned
    x[...] = np.arange(10, dtype=np.float32) / 3
    assert not x.flags.aligned
    assert np.array_equal(nk.to_bf16(x), rne_bits(np.arange(10, dtype=np.float32) / 3))
    ubuf = np.zeros(2 * 10 + 1, np.uint8)
    u = ubuf[1:].view(np.uint16)
    u[...] = nk.to_bf16(np.arange(10, dtype=np.float32))
    assert np.array_equal(nk.from_bf16(u), np.arange(10, dtype=np.float32))
    with pytest.raises(ValueError):
        nk.from_bf16(u, out=buf[1:].view(np.float32))   # a misaligned out is refused


def test_precision_arguments():
    a = np.ones((2, 3), np.float32)
    b = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="precision"):
        nk.gemm(a, b, precision="float16")
    with pytest.raises(TypeError, match="float32"):
        nk.gemm(a.astype(F64), b.astype(F64), precision="bfloat16")
    assert np.array_equal(nk.gemm(a, b, precision="float32"), nk.gemm(a, b))
    assert np.array_equal(nk.gemm(a, b, precision="bf16"), nk.gemm(a, b, precision="bfloat16"))


# ---------------------------------------------------------------- dense --

@given(batch=dims(1, 150), n_in=dims(1, 300), units=dims(1, 150), relu=st.booleans(),
       seed=st.integers(0, 2**31))
def test_dense_bf16_forward_backward(batch, n_in, units, relu, seed, num_threads, bf16_path):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((batch, n_in)).astype(np.float32)
    w = rng.standard_normal((n_in, units)).astype(np.float32)
    b = rng.standard_normal(units).astype(np.float32)
    act = "relu" if relu else None
    y = nk.dense_forward(x, w, b, activation=act, precision="bfloat16")
    ref, scale = gemm_ref(ftz(x), ftz(w), bias=b, activation=act, dtype=np.float32)
    assert_close(y, ref, scale, np.float32, n_in, "dense forward bf16")
    dy = rng.standard_normal((batch, units)).astype(np.float32)
    dx, dw, db = nk.dense_backward(dy, x, w, y=y if relu else None, activation=act,
                                   precision="bfloat16")
    dz = dy * (y > 0) if relu else dy
    (rdx, sdx), (rdw, sdw), _ = dense_backward_ref(ftz(dz), ftz(x), ftz(w))
    assert_close(dx, rdx, sdx, np.float32, units, "dense dx bf16")
    assert_close(dw, rdw, sdw, np.float32, batch, "dense dw bf16")
    # db: the unrounded dz, float32
    (_, _, (rdb, sdb)) = dense_backward_ref(dz, x, w)
    assert_close(db, rdb, sdb, np.float32, batch, "dense db")


# ----------------------------------------------------------------- conv --

_WB = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], F64)   # B^T
_WG = np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], F64)
_WA = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], F64)                            # A^T


def winograd_bf16_scale(src, w, pt, pl, oh, ow):
    """The error bound's scale of a Winograd F(2x2, 3x3) with bfloat16
    products: |A^T| (sum_c |V| |U|) |A| per 2x2 output tile, V = B^T d B of
    the source's 4x4 patches (zero outside, patch of tile (i, j) at (2i - pt,
    2j - pl)), U = G g G^T.  Rounding V and U to bf16 (each within 2**-9)
    changes each product by at most ~2**-8 |V| |U|; the transforms are float32."""
    n, h, wd, c = src.shape
    th, tw = (oh + 1) // 2, (ow + 1) // 2
    mg = 4   # margin: source pixel (r, s) at pad[:, mg + r, mg + s]; 0 <= pt, pl <= 2 here
    pad = np.zeros((n, h + 2 * th + 2 * mg, wd + 2 * tw + 2 * mg, c), F64)
    pad[:, mg:mg + h, mg:mg + wd] = src
    rows = np.arange(th)[:, None] * 2 + np.arange(4)[None, :] - pt + mg   # (th, 4)
    cols = np.arange(tw)[:, None] * 2 + np.arange(4)[None, :] - pl + mg
    d = pad[:, rows[:, None, :, None], cols[None, :, None, :]]  # n, th, tw, 4, 4, c
    v = np.abs(np.einsum("ia,ntwabc,jb->ntwijc", _WB, d, _WB))
    u = np.abs(np.einsum("ia,abcf,jb->ijcf", _WG, w.astype(F64), _WG))
    m = np.einsum("ntwijc,ijcf->ntwijf", v, u)
    y = np.einsum("ai,ntwijf,bj->ntawbf", np.abs(_WA), m, np.abs(_WA))
    return y.reshape(n, 2 * th, 2 * tw, -1)[:, :oh, :ow]



def wino_wgrad_bf16_limit(x, dz, pt):
    """The error bound of the Winograd weight gradient with bf16 products
    (3x3, stride 1, padding pt on both axes; nk_conv_wino_wgrad.h): V = B^T d B
    and Z = A dz A^T are bounded by P and Q of wino_wgrad_scale and each
    rounds to bf16 within 2**-8 of itself, so each transformed product moves
    by at most (2 * 2**-8 + 2**-16) P Q; G^T M G adds them with weights of
    total size <= 4: 4 * 2**-7 * (1 + 2**-9) * S, plus the float32 sums'."""
    S, depth = wino_wgrad_scale(x, dz, pt, pt)
    return ((4 * 2.0 ** -7 * (1 + 2.0 ** -9) + (8 + depth) * np.finfo(np.float32).eps) * S
            + np.finfo(np.float32).tiny)


@given(n=st.integers(1, 3), h=st.integers(3, 12), w_=st.integers(3, 12),
       c=st.sampled_from([1, 3, 16, 17, 32]), f=st.sampled_from([1, 8, 16, 33]),
       k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
       padding=st.sampled_from(["valid", "same"]), relu=st.booleans(),
       seed=st.integers(0, 2**31))
def test_conv2d_bf16_forward_backward(n, h, w_, c, f, k, stride, padding, relu, seed,
                                      num_threads, bf16_path):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, h, w_, c)).astype(np.float32)
    w = (rng.standard_normal((k, k, c, f)) * 0.3).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    act = "relu" if relu else None
    geo = dict(strides=(stride, stride), padding=padding, dilation=(1, 1))
    y = nk.conv2d(x, w, b, activation=act, precision="bfloat16", **geo)
    # which products take bf16 operands (documented in nnkernels.conv2d):
    # those auto gives to im2col, and a direct forward pass with >= 32
    # channels; Winograd with more than 32 channels on a side rounds its
    # transformed operands (checked against the exact result below); the
    # others are float32, so their references take the unrounded operands
    algo = {p: nk.conv2d_algo(x.shape, w.shape, product=p, precision="bfloat16", **geo)
            for p in ("forward", "backward_data", "backward_filter")}
    bf = {"forward": algo["forward"] == "im2col" or (algo["forward"] == "direct" and c >= 32),
          "backward_data": algo["backward_data"] == "im2col",
          "backward_filter": algo["backward_filter"] == "im2col"}

    def rnd(a, product):
        return (ftz(a) if bf[product] else a).astype(F64)

    xr, wr = rnd(x, "forward"), rnd(w, "forward")
    ref = ref_conv(xr, wr, b.astype(F64), geo["strides"], padding, geo["dilation"], act)
    scale = ref_conv(np.abs(xr), np.abs(wr), np.abs(b).astype(F64), geo["strides"], padding,
                     geo["dilation"])
    kk = k * k * c
    pt = 1 if padding == "same" else 0
    if algo["forward"] == "winograd":   # bf16 transformed operands when > 32 channels on a side
        wscale = winograd_bf16_scale(x, w, pt, pt, *y.shape[1:3]) + scale
        assert_bf16_close(y, ref, wscale, "conv2d bf16 (winograd)")
    else:
        assert_close(y, ref, scale, np.float32, kk, f"conv2d bf16 ({algo['forward']})")
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = nk.conv2d_backward(dy, x, w, activation=act, y=y if relu else None,
                                    precision="bfloat16", **geo)
    dz = dy * (y > 0) if relu else dy
    _, rdw, _ = ref_conv_backward(rnd(dz, "backward_filter"), rnd(x, "backward_filter"),
                                  rnd(w, "backward_filter"), geo["strides"], padding,
                                  geo["dilation"])
    _, sdw, _ = ref_conv_backward(np.abs(dz).astype(F64), np.abs(x).astype(F64),
                                  np.abs(w).astype(F64), geo["strides"], padding, geo["dilation"])
    if algo["backward_filter"] == "winograd":  # bf16 products: wino_wgrad_bf16_limit
        assert np.all(np.abs(dw - rdw) <= wino_wgrad_bf16_limit(x, dz, pt)), \
            "conv dw bf16 (winograd, bf16 products)"
    else:
        assert_close(dw, rdw, sdw, np.float32, n * y.shape[1] * y.shape[2],
                     f"conv dw bf16 ({algo['backward_filter']})")
    rdx, _, _ = ref_conv_backward(rnd(dz, "backward_data"), rnd(x, "backward_data"),
                                  rnd(w, "backward_data"), geo["strides"], padding,
                                  geo["dilation"])
    sdx, _, _ = ref_conv_backward(np.abs(dz).astype(F64), np.abs(x).astype(F64),
                                  np.abs(w).astype(F64), geo["strides"], padding, geo["dilation"])
    # Winograd's own rounding is bounded as in tests/test_conv.py; every
    # path is within bfloat16 accuracy of the exact gradient
    edx, _, edb = ref_conv_backward(dz.astype(F64), x.astype(F64), w.astype(F64),
                                    geo["strides"], padding, geo["dilation"])
    if algo["backward_data"] == "winograd":
        w_rot = w[::-1, ::-1].transpose(0, 1, 3, 2)
        sdx = sdx + winograd_bf16_scale(dz, w_rot, 2 - pt, 2 - pt, h, w_)
    assert_bf16_close(dx, edx, sdx, "conv dx bf16")
    if algo["backward_data"] != "winograd":
        assert_close(dx, rdx, sdx, np.float32, k * k * f, f"conv dx bf16 ({algo['backward_data']})")
    assert_close(db, edb, np.abs(dz).astype(F64).sum(axis=(0, 1, 2)), np.float32,
                 dz.size // f, "conv db")


# (C_in, C_out): the fused Winograd (bf16 products: up to 64 channels on
# both sides) and the blocked one (forward: C_in > 64; dX: C_out > 64)
@pytest.mark.parametrize("c,f", [(16, 24), (40, 24), (24, 40), (72, 24), (24, 72)])
def test_conv2d_bf16_bitwise_across_threads_and_paths(isa, c, f):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 14, 14, c)).astype(np.float32)
    w = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    dy = rng.standard_normal((4, 14, 14, f)).astype(np.float32)
    def run():
        y = nk.conv2d(x, w, padding="same", activation="relu", precision="bfloat16")
        return (y,) + nk.conv2d_backward(dy, x, w, padding="same", activation="relu", y=y,
                                         precision="bfloat16")

    runs = _across_paths_and_threads(isa, run)
    for who, arrays in runs[1:]:
        for name, a0, a in zip(("y", "dx", "dw", "db"), runs[0][1], arrays):
            assert_bitwise_equal(a, a0, f"conv bf16 {name} {who} vs {runs[0][0]}")


@pytest.mark.usefixtures("winograd2")
def test_conv2d_bf16_fused_winograd_same_bits_on_every_isa():
    """The fused Winograd's bf16 products (forward and dX, up to 64 channels)
    and the Winograd weight gradient's (pairs of tiles) give the same bits on
    every ISA path, VDPBF16PS or emulated, 1 or 2 threads: the operands
    round identically and each pair is accumulated in VDPBF16PS's order."""
    rng = np.random.default_rng(11)
    # (32, 64), (64, 32), (64, 64): bodies compiled with the counts constant
    for c, f, h in [(16, 16, 12), (17, 40, 9), (64, 33, 6), (32, 64, 7), (64, 32, 5), (64, 64, 4)]:
        x = rng.standard_normal((2, h, h, c)).astype(np.float32)
        w = rng.standard_normal((3, 3, c, f)).astype(np.float32)
        dy = rng.standard_normal((2, h, h, f)).astype(np.float32)

        def run():
            y = nk.conv2d(x, w, padding="same", precision="bfloat16")
            dx = nk.conv2d_backward(dy, x, w, padding="same", need_dw=False, need_db=False,
                                    precision="bfloat16")[0]
            dw = nk.conv2d_backward(dy, x, w, padding="same", activation="relu", y=y,
                                    need_dx=False, precision="bfloat16")[1]
            return y, dx, dw

        runs = []
        for isa in nk.available_isas():
            with use_isa(isa), threads(nk.get_num_threads()):
                runs += [((isa,) + who, out) for who, out in _across_paths_and_threads(isa, run)]
        for who, arrays in runs[1:]:
            for name, a0, a in zip(("y", "dx", "dw"), runs[0][1], arrays):
                assert_bitwise_equal(a, a0, f"fused winograd bf16 {name} {who} vs {runs[0][0]}")


# The im2col weight gradient under bf16 (auto picks it for strided 3x3
# convolutions with C_in >= 32 and C_out > 32; stride 1 goes to Winograd and
# is forced to im2col here): with the native kernels and C_in % 8 == 0 its A operand (the
# transposed windows) is packed straight into bf16 pairs, with the emulated
# ones as float32 slivers then converted -- the same bits either way; an odd
# pixel count leaves an odd last pair (zero partner), C_in % 16 == 8 a half
# block of channels, and stride 2 / padding take pixels out of the image.
# Its B operand (dz, masked by the ReLU on the fly) is packed straight into
# pairs too (full 32-column slivers: C_out = 33 and 40 leave a ragged one).
@pytest.mark.parametrize("n,h,c,f,stride,padding", [
    (3, 13, 40, 48, 1, "same"), (2, 15, 32, 40, 2, "same"), (1, 9, 48, 33, 1, "valid"),
    (2, 11, 56, 64, 2, "valid"), (1, 5, 33, 40, 1, "same")])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_bf16_im2col_wgrad(isa, n, h, c, f, stride, padding, relu):
    geo = dict(strides=(stride, stride), padding=padding, dilation=(1, 1))
    if stride > 1:
        assert nk.conv2d_algo((n, h, h, c), (3, 3, c, f), product="backward_filter",
                              precision="bfloat16", **geo) == "im2col"
    rng = np.random.default_rng(c * f + h)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    x[0, 1, 2, :4] = [1e-40, -1e-40, 3.0e37, 1.0 + 2.0**-8]  # flushed, large, a tie (to even)
    w = rng.standard_normal((3, 3, c, f)).astype(np.float32)
    dy = rng.standard_normal(nk.conv2d_output_shape(x.shape, w.shape, **geo)).astype(np.float32)
    # relu: dz = y > 0 ? dy : 0 on the fly while B (dz) is packed, with NaN in y
    y = rng.standard_normal(dy.shape).astype(np.float32) if relu else None
    if relu:
        y[0, 0, 0, :3] = [np.nan, 0.0, -0.0]

    def run():
        return nk.conv2d_backward(dy, x, w, need_dx=False, precision="bfloat16", algo="im2col",
                                  activation="relu" if relu else None, y=y, **geo)[1:]

    runs = _across_paths_and_threads(isa, run)
    for who, arrays in runs[1:]:
        for name, a0, a in zip(("dw", "db"), runs[0][1], arrays):
            assert_bitwise_equal(a, a0, f"conv bf16 {name} {who} vs {runs[0][0]}")
    if relu:
        dy = np.where(y > 0, dy, np.float32(0))
    _, rdw, _ = ref_conv_backward(ftz(dy).astype(F64), ftz(x).astype(F64), w.astype(F64),
                                  geo["strides"], padding, geo["dilation"])
    _, sdw, _ = ref_conv_backward(np.abs(dy).astype(F64), np.abs(x).astype(F64),
                                  np.abs(w).astype(F64), geo["strides"], padding, geo["dilation"])
    assert_close(runs[0][1][0], rdw, sdw, np.float32, dy.size // f, "conv dw bf16 (im2col)")


# The im2col forward under bf16 (auto picks it for strided 3x3 and 1x1
# convolutions; forced here for the others): with the native kernels and an
# even C_in its A operand (the windows) is packed straight into bf16 pairs,
# 8 output pixels x 16 channels at a time, with the emulated ones as float32
# slivers then converted -- the same bits either way.  The cases take
# output rows of fewer and more than 8 pixels (one sliver spanning two rows
# or two images), pixel counts that leave a ragged last sliver, channel
# counts with a half or odd block (C_in % 16 = 8, 6, 2; odd C_in packs
# float32 slivers on both paths), kernels 1, 3 and 5, stride 2 and padding
# (pixels outside the image); the data gradient of a stride-1 convolution
# with C_in >= 64 packs dz the same way, masked by the ReLU (NaN in y).
@pytest.mark.parametrize("n,h,c,f,k,stride,padding", [
    (2, 16, 16, 32, 3, 2, "same"), (3, 13, 24, 17, 3, 2, "same"), (1, 9, 40, 33, 3, 1, "valid"),
    (2, 11, 6, 8, 5, 2, "same"), (1, 7, 2, 16, 3, 1, "same"), (2, 10, 16, 32, 1, 2, "same"),
    (1, 12, 7, 16, 3, 2, "same"), (5, 3, 32, 64, 3, 2, "valid")])
def test_conv2d_bf16_im2col_forward(isa, n, h, c, f, k, stride, padding):
    geo = dict(strides=(stride, stride), padding=padding, dilation=(1, 1))
    rng = np.random.default_rng(c * f + h + k)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    x[0, 1, 2, :2] = [1e-40, 1.0 + 2.0**-8]  # flushed, a tie (to even)
    x[-1, -1, -1, -1] = 3.0e37
    w = (rng.standard_normal((k, k, c, f)) * 0.3).astype(np.float32)
    y16 = np.empty(nk.conv2d_output_shape(x.shape, w.shape, **geo), np.uint16)

    def run():
        y = nk.conv2d(x, w, precision="bfloat16", algo="im2col", **geo)
        nk.conv2d(x, w, precision="bfloat16", algo="im2col", out=y16, **geo)
        return y, y16.copy()

    runs = _across_paths_and_threads(isa, run)
    for who, (y, y16b) in runs[1:]:
        assert_bitwise_equal(y, runs[0][1][0], f"conv bf16 im2col y {who} vs {runs[0][0]}")
        np.testing.assert_array_equal(y16b, runs[0][1][1], f"bf16 output {who} vs {runs[0][0]}")
    y, y16b = runs[0][1]
    np.testing.assert_array_equal(y16b, nk.to_bf16(y), "the bf16 output: float32's, rounded")
    ref = ref_conv(ftz(x).astype(F64), ftz(w).astype(F64), None, geo["strides"], padding,
                   geo["dilation"])
    scale = ref_conv(np.abs(x).astype(F64), np.abs(w).astype(F64), None, geo["strides"],
                     padding, geo["dilation"])
    assert_close(y, ref, scale, np.float32, k * k * c, "conv2d bf16 (im2col)")


# A bf16 output of the paths that compute float32 (direct, im2col) is
# rounded a few images at a time (512 KiB of float32 outputs: 2 of these
# images), so 3 images take two passes; the bits are those of the float32
# output rounded, for 1 and 2 threads.
@pytest.mark.parametrize("h,c,f,k,stride,algo", [(32, 3, 64, 3, 1, "direct"),
                                                 (64, 16, 64, 1, 2, "im2col"),
                                                 (64, 16, 64, 3, 2, "auto")])
def test_conv2d_bf16_output_in_passes_of_a_few_images(h, c, f, k, stride, algo):
    rng = np.random.default_rng(h + c + k)
    x = rng.standard_normal((3, h, h, c)).astype(np.float32)
    w = (rng.standard_normal((k, k, c, f)) * 0.3).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    geo = dict(strides=(stride, stride), padding="same", algo=algo)
    for t in (1, 2):
        with threads(t):
            y = nk.conv2d(x, w, b, activation="relu", precision="bfloat16", **geo)
            y16 = np.full(y.shape, 0xFFFF, np.uint16)
            nk.conv2d(x, w, b, activation="relu", precision="bfloat16", out=y16, **geo)
        np.testing.assert_array_equal(y16, nk.to_bf16(y), f"{algo} bf16 output, {t} threads")


@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_bf16_im2col_data_gradient_masked(isa, relu):
    n, h, c, f = 2, 9, 64, 24
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    w = (rng.standard_normal((3, 3, c, f)) * 0.3).astype(np.float32)
    dy = rng.standard_normal((n, h, h, f)).astype(np.float32)
    dy[0, 0, 0, 0] = 1e-40
    y = rng.standard_normal(dy.shape).astype(np.float32) if relu else None
    if relu:
        y[0, 1, 1, :3] = [np.nan, 0.0, -0.0]

    def run():
        return nk.conv2d_backward(dy, x, w, padding="same", need_dw=False, need_db=False,
                                  precision="bfloat16", algo="im2col",
                                  activation="relu" if relu else None, y=y)[:1]

    runs = _across_paths_and_threads(isa, run)
    for who, (dx,) in runs[1:]:
        assert_bitwise_equal(dx, runs[0][1][0], f"conv bf16 im2col dx {who} vs {runs[0][0]}")
    dz = np.where(y > 0, dy, np.float32(0)) if relu else dy
    rdx, _, _ = ref_conv_backward(ftz(dz).astype(F64), x.astype(F64), ftz(w).astype(F64),
                                  (1, 1), "same", (1, 1))
    sdx, _, _ = ref_conv_backward(np.abs(dz).astype(F64), np.abs(x).astype(F64),
                                  np.abs(w).astype(F64), (1, 1), "same", (1, 1))
    assert_close(runs[0][1][0], rdx, sdx, np.float32, 9 * f, "conv dx bf16 (im2col)")


@pytest.mark.parametrize("n,h,c,f,padding", [(8, 26, 32, 64, "valid"), (3, 9, 64, 64, "same"),
                                               (2, 7, 65, 17, "same"), (1, 5, 33, 33, "valid"),
                                               (4, 12, 16, 16, "same"), (2, 9, 32, 32, "valid"),
                                               (3, 8, 17, 24, "same"), (2, 11, 24, 17, "valid")])
@pytest.mark.usefixtures("winograd2")
def test_conv2d_bf16_winograd_accuracy(n, h, c, f, padding, num_threads, bf16_path):
    """Winograd's forward pass and data gradient, blocked (more than 64
    channels on a side) and fused (at most 64; channel counts that leave a
    partial vector and an odd last pair), round their transformed operands
    V = B^T d B and U = G g G^T to bfloat16, and its weight gradient V and
    Z = A dz A^T: within bfloat16 accuracy of the exact results, and not the
    float32 result (the bf16 products are really used, natively or
    emulated)."""
    rng = np.random.default_rng(h * c + f)
    x = rng.standard_normal((n, h, h, c)).astype(np.float32)
    w = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    geo = dict(padding=padding, algo="winograd")
    y = nk.conv2d(x, w, b, precision="bfloat16", **geo)
    ref = ref_conv(x.astype(F64), w.astype(F64), b.astype(F64), (1, 1), padding, (1, 1), None)
    scale = ref_conv(np.abs(x).astype(F64), np.abs(w).astype(F64), np.abs(b).astype(F64),
                     (1, 1), padding, (1, 1))
    pt = 1 if padding == "same" else 0
    wscale = winograd_bf16_scale(x, w, pt, pt, *y.shape[1:3]) + scale   # + scale: bias, float32
    assert_bf16_close(y, ref, wscale, "conv2d bf16 winograd")
    assert not np.array_equal(y, nk.conv2d(x, w, b, **geo))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = nk.conv2d_backward(dy, x, w, need_dw=False, need_db=False, precision="bfloat16",
                            **geo)[0]
    edx, _, _ = ref_conv_backward(dy.astype(F64), x.astype(F64), w.astype(F64), (1, 1), padding,
                                  (1, 1))
    sdx, _, _ = ref_conv_backward(np.abs(dy).astype(F64), np.abs(x).astype(F64),
                                  np.abs(w).astype(F64), (1, 1), padding, (1, 1))
    w_rot = w[::-1, ::-1].transpose(0, 1, 3, 2)    # dX: the rotated, channel-swapped kernel
    wsdx = winograd_bf16_scale(dy, w_rot, 2 - pt, 2 - pt, h, h) + sdx
    assert_bf16_close(dx, edx, wsdx, "conv dx bf16 winograd")
    assert not np.array_equal(dx, nk.conv2d_backward(dy, x, w, need_dw=False, need_db=False,
                                                     **geo)[0])
    # dW: Winograd with bf16 products on pairs of tiles (an odd tile count
    # leaves a zero partner), db from the unrounded dz
    _, dw, db = nk.conv2d_backward(dy, x, w, need_dx=False, precision="bfloat16", **geo)
    _, edw, edb = ref_conv_backward(dy.astype(F64), x.astype(F64), w.astype(F64), (1, 1),
                                    padding, (1, 1))
    assert np.all(np.abs(dw - edw) <= wino_wgrad_bf16_limit(x, dy, pt)), "conv dw bf16 winograd"
    dw32, db32 = nk.conv2d_backward(dy, x, w, need_dx=False, **geo)[1:]
    assert not np.array_equal(dw, dw32)
    assert_bitwise_equal(db, db32, "conv db bf16 winograd (float32 sums of dz)")


def test_bf16_environment_switch():
    """NNKERNELS_BF16=emulate turns VDPBF16PS off at import; a bad value is
    an ImportError that says what is accepted."""
    # -I: the installed package (the source tree of a checkout has no compiled module)
    env = dict(os.environ, NNKERNELS_BF16="emulate")
    out = subprocess.run([sys.executable, "-I", "-c",
                          "import nnkernels; print(nnkernels.bf16_path())"],
                         env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert out == "emulated"
    env["NNKERNELS_BF16"] = "fast"
    res = subprocess.run([sys.executable, "-I", "-c", "import nnkernels"], env=env,
                         capture_output=True, text=True)
    assert res.returncode != 0 and "native, emulate or auto" in res.stderr
    if not nk.bf16_native_supported():
        env["NNKERNELS_BF16"] = "native"
        res = subprocess.run([sys.executable, "-I", "-c", "import nnkernels"], env=env,
                             capture_output=True, text=True)
        assert res.returncode != 0 and "AVX512_BF16" in res.stderr

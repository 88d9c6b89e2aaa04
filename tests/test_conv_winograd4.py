"""Winograd F(4x4, 3x3) (nnkernels/src/nk_conv_wino4.h,
nk_conv_wino4_wgrad.h): the float32 forward pass (with bias, ReLU and the
fused 2x2 max pooling), data gradient (with the ReLU mask and accumulation
into dx) and weight and bias gradients, C_in and C_out up to 64 (16 with
bf16 products requested).  Against the float64 reference
within its bound (reference.WINO4_C), bitwise equal for 1 and 2 threads,
the pooled forward bit for bit max_pool2d of the convolution, and running
exactly where conv2d's docstring says (compared with F(2x2, 3x3), forced by
the testing switch)."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import WINO4_C, WINO_C, assert_bitwise_equal, assert_wino_bound, ref_conv
from reference import ref_conv_backward, ref_pads
from reference import isa as use_isa
from reference import threads, wino4, wino_scale, wino_wgrad_scale
from strategies import wino_geometry

ISAS = nk.available_isas()
F32, F64 = np.float32, np.float64


def _bound(got, exact, scale, what):
    assert_wino_bound(got, exact, scale, F32, WINO4_C, what)


@st.composite
def case(draw):
    H, W, padding, (pt, pl) = draw(wino_geometry([1, 2, 3, 4, 5, 6, 7, 9, 11, 13], ref_pads))
    groups = draw(st.sampled_from([1, 1, 2]))
    cg = draw(st.sampled_from([1, 2, 3, 5, 13, 16, 17, 32, 33, 48, 64]))
    fg = draw(st.sampled_from([1, 3, 16, 17, 33, 64]))
    if groups == 2:
        cg, fg = min(cg, 32), min(fg, 33)
    return dict(N=draw(st.sampled_from([1, 2, 3])), H=H, W=W, C=cg * groups, F=fg * groups,
                groups=groups, padding=padding, pt=pt, pl=pl)


@settings(max_examples=80)
@given(c=case(), act=st.sampled_from([None, "relu"]), isa=st.sampled_from(ISAS),
       seed=st.integers(0, 2**31 - 1), use_bias=st.booleans(), accumulate=st.booleans())
def test_winograd4_vs_reference(c, act, isa, seed, use_bias, accumulate):
    rng = np.random.default_rng(seed)
    G = c["groups"]
    x = rng.standard_normal((c["N"], c["H"], c["W"], c["C"])).astype(F32)
    w = rng.standard_normal((3, 3, c["C"] // G, c["F"])).astype(F32)
    b = rng.standard_normal(c["F"]).astype(F32) if use_bias else None
    g = dict(padding=c["padding"], groups=G)
    x64, w64 = x.astype(F64), w.astype(F64)
    b64 = b.astype(F64) if b is not None else None
    cg, fg = c["C"] // G, c["F"] // G

    def part(a, j, n):  # group j's channel window of the last axis
        return a[..., j * n:(j + 1) * n]

    # the reference and the bounds per group (each group is a convolution)
    yr = np.concatenate([ref_conv(part(x64, j, cg), part(w64, j, fg),
                                  part(b64, j, fg) if b is not None else None, (1, 1),
                                  c["padding"], (1, 1), act) for j in range(G)], axis=-1)
    OH, OW = yr.shape[1:3]
    scale = np.concatenate([wino_scale(part(x64, j, cg), part(w64, j, fg),
                                       part(b64, j, fg) if b is not None else None,
                                       c["pt"], c["pl"], OH, OW, 4) for j in range(G)], axis=-1)
    y_dt = np.concatenate([ref_conv(part(x, j, cg), part(w, j, fg),
                                    part(b, j, fg) if b is not None else None, (1, 1),
                                    c["padding"], (1, 1), act) for j in range(G)],
                          axis=-1).astype(F32)   # the mask the caller holds
    dy = rng.standard_normal(yr.shape).astype(F32)
    dz = dy.astype(F64) * ((y_dt > 0) if act == "relu" else 1)
    dxr = np.concatenate([ref_conv_backward(part(dz, j, fg), part(x64, j, cg), part(w64, j, fg),
                                            (1, 1), c["padding"], (1, 1))[0] for j in range(G)],
                         axis=-1)
    dscale = np.concatenate([wino_scale(part(dz, j, fg), part(w64, j, fg).transpose(0, 1, 3, 2),
                                        None, 2 - c["pt"], 2 - c["pl"], c["H"], c["W"], 4)
                             for j in range(G)], axis=-1)
    dx0 = rng.standard_normal(x.shape).astype(F32)
    res = []
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                y = nk.conv2d(x, w, b, activation=act, algo="winograd", **g)
                dx = dx0.copy() if accumulate else None
                dx, dw, db = nk.conv2d_backward(dy, x, w, activation=act, y=y_dt,
                                                algo="winograd", dx=dx,
                                                accumulate_dx=accumulate, **g)
                res.append((y, dx, dw, db))
    for r1, r2 in zip(res, res[1:]):
        for a1, a2, what in zip(r1, r2, ("y", "dx", "dw", "db")):
            assert_bitwise_equal(a2, a1, f"{what}, 2 threads vs 1")
    y, dx, dw, db = res[0]
    # dW, db: each group's transformed products summed over its tiles
    eps, tiny = np.finfo(F32).eps, np.finfo(F32).tiny
    for j in range(G):
        _, dwr, dbr = ref_conv_backward(part(dz, j, fg), part(x64, j, cg), part(w64, j, fg),
                                        (1, 1), c["padding"], (1, 1))
        m = nk._core._winograd_tile(cg, fg, wgrad=True)   # F(2x2) above 32 input channels
        S, depth = wino_wgrad_scale(part(x64, j, cg), part(dz, j, fg), c["pt"], c["pl"], m)
        k = (WINO4_C if m == 4 else WINO_C) + depth
        lim_w = k * eps * S + tiny
        lim_b = k * eps * np.abs(part(dz, j, fg)).sum(axis=(0, 1, 2)) + tiny
        err = np.abs(part(dw, j, fg) - dwr)
        assert np.all(err <= lim_w), f"dW error {float((err / lim_w).max()):.3g} x its bound"
        assert np.all(np.abs(part(db, j, fg) - dbr) <= lim_b)
    assert y.shape == yr.shape and y.dtype == F32
    _bound(y, yr, scale, "forward")
    if accumulate:
        dxr, dscale = dxr + dx0, dscale + np.abs(dx0)
    _bound(dx, dxr, dscale, "dx")


@pytest.mark.parametrize("C, F, fwd4, dx4, dw4", [
    (16, 16, True, True, True), (32, 32, True, True, True), (16, 64, True, True, True),
    (13, 20, True, True, True), (32, 64, True, True, True),   # the default CNN's conv2
    (64, 64, True, True, False), (64, 16, True, True, False),  # dW: F(4x4) up to 32 in
    (65, 16, False, False, False), (16, 65, False, False, False),  # the blocked F(2x2)
])
def test_winograd4_runs_where_documented(C, F, fwd4, dx4, dw4):
    """Where F(4x4, 3x3) applies (nk_conv_use_wino4: forward and dX up to 64
    channels on each side, dW up to 32 input and 64 output channels) its
    results differ from F(2x2, 3x3)'s (other roundings), elsewhere they are
    the same bits; the testing hook _winograd_tile agrees; conv2d_algo says
    "winograd" either way (from 16 channels on each side)."""
    rng = np.random.default_rng(C * 100 + F)
    x = rng.standard_normal((2, 12, 10, C)).astype(F32)
    w = rng.standard_normal((3, 3, C, F)).astype(F32)
    dy = rng.standard_normal((2, 12, 10, F)).astype(F32)
    if min(C, F) >= 16:   # auto's choice (fewer channels: im2col; winograd when asked for)
        assert nk.conv2d_algo(x.shape, w.shape, padding="same") == "winograd"
    got = {}
    for on in (True, False):
        with wino4(on):
            y = nk.conv2d(x, w, padding="same", algo="winograd")
            dx, dw, _ = nk.conv2d_backward(dy, x, w, padding="same", algo="winograd")
            got[on] = (y, dx, dw)
            tiles = (nk._core._winograd_tile(C, F), nk._core._winograd_tile(F, C),
                     nk._core._winograd_tile(C, F, wgrad=True))
            assert tiles == tuple(4 if on and r else 2 for r in (fwd4, dx4, dw4))
    for a4, a2, runs, what in zip(got[True], got[False], (fwd4, dx4, dw4), ("y", "dx", "dw")):
        if runs:
            assert not np.array_equal(a4, a2), f"{what}: F(4x4, 3x3) did not run"
        else:
            assert_bitwise_equal(a4, a2, what)


@pytest.mark.parametrize("C, F, f4", [(16, 16, True), (13, 16, True), (16, 32, False),
                                      (32, 32, False), (64, 64, False)])
def test_winograd4_with_bf16_products_requested(C, F, f4):
    """precision="bfloat16" takes F(4x4, 3x3) with float32 products for the
    forward pass, dX and dW where that is faster than F(2x2, 3x3) with bf16
    products (16 channels or fewer on both sides): then the float32 result,
    bit for bit; elsewhere the bf16 products of F(2x2, 3x3) as before."""
    rng = np.random.default_rng(C + F)
    x = rng.standard_normal((2, 9, 11, C)).astype(F32)
    w = rng.standard_normal((3, 3, C, F)).astype(F32)
    dy = rng.standard_normal((2, 9, 11, F)).astype(F32)

    def run(**kw):
        dx, dw, _ = nk.conv2d_backward(dy, x, w, padding="same", algo="winograd", **kw)
        return nk.conv2d(x, w, padding="same", algo="winograd", **kw), dx, dw

    bf, f32 = run(precision="bfloat16"), run()
    with wino4(False):
        bf2 = run(precision="bfloat16")
    for a, a32, a2, what in zip(bf, f32, bf2, ("y", "dx", "dw")):
        if f4:
            assert_bitwise_equal(a, a32, f"{what}: bf16 requested vs float32")
        else:
            assert_bitwise_equal(a, a2, f"{what}: bf16 products of F(2x2, 3x3)")
            assert not np.array_equal(a, a32)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("N, H, W, C, F, padding, act", [
    (3, 26, 26, 32, 64, "valid", "relu"),     # the default CNN's second convolution
    (2, 11, 14, 16, 16, "same", "relu"),      # odd rows: the last window row dropped
    (1, 9, 7, 5, 3, "same", None),            # partial tiles, partial vectors
    (2, 6, 6, 17, 40, "valid", None),         # 4x4 outputs: one tile, four windows
])
def test_winograd4_maxpool_bitwise(isa, N, H, W, C, F, padding, act):
    """conv2d_maxpool pools each F(4x4, 3x3) tile's four 2x2 windows in the
    output transform: values and indices exactly max_pool2d(conv2d(...)),
    y too when asked for, 1 and 2 threads alike."""
    rng = np.random.default_rng(H * W + C)
    x = rng.standard_normal((N, H, W, C)).astype(F32)
    w = rng.standard_normal((3, 3, C, F)).astype(F32)
    b = rng.standard_normal(F).astype(F32)
    with use_isa(isa):
        for t in (1, 2):
            with threads(t):
                y = nk.conv2d(x, w, b, padding=padding, activation=act, algo="winograd")
                p, i = nk.max_pool2d(y, (2, 2))
                out, idx = nk.conv2d_maxpool(x, w, b, padding=padding, activation=act,
                                             algo="winograd")
                assert_bitwise_equal(out, p, "pooled values")
                assert np.array_equal(idx, i), "pooled indices"
                y2 = np.empty_like(y)
                out2, idx2 = nk.conv2d_maxpool(x, w, b, padding=padding, activation=act,
                                               algo="winograd", y=y2)
                assert_bitwise_equal(y2, y, "y written by conv2d_maxpool")
                assert_bitwise_equal(out2, p, "pooled values with y")

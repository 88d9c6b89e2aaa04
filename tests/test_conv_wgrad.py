"""The direct weight gradient (algo="direct_wgrad", nk_conv_wgrad.h): dW and
db against the float64 NumPy references of reference.py (tolerances scaled
by the sums of |x| |dz| each element adds up), on every ISA path, bitwise the
same for 1 and 2 threads; the auto heuristic; the products it leaves to
other algorithms (forward, dx, float64)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import (assert_bitwise_equal, assert_close, isa, ref_conv,
                       ref_conv_backward, ref_conv_grouped, ref_conv_grouped_backward,
                       ref_pads, threads)

ISAS = nk.available_isas()
F64 = np.float64


def _pairs(g):
    """Geometry with (h, w) pairs, as the references take it."""
    return {k: (v if k == "padding" or not isinstance(v, int) else (v, v)) for k, v in g.items()}


def _ref_dw_db(dy, x, w, g, act, y, groups=1):
    """(dw, db), their scales and the number of terms of one element."""
    g = _pairs(g)
    dy64, x64, w64 = (np.asarray(a, F64) for a in (dy, x, w))
    bwd = ref_conv_grouped_backward if groups > 1 else ref_conv_backward
    kw = dict(groups=groups) if groups > 1 else {}
    _, dwr, dbr = bwd(dy64, x64, w64, act=act, y=y, **g, **kw)
    _, dws, dbs = bwd(np.abs(dy64), np.abs(x64), w64, act=act, y=y, **g, **kw)
    return dwr, dbr, dws, dbs, dy.size // dy.shape[3]


def _check(x, w, dy, g, act=None, y=None, groups=1, what=""):
    """direct_wgrad's dw, db vs the reference, for 1 and 2 threads (bitwise
    equal), with and without db and dx; returns dw."""
    dwr, dbr, dws, dbs, k = _ref_dw_db(dy, x, w, g, act, y, groups)
    res = []
    for t in (1, 2):
        with threads(t):
            res.append(nk.conv2d_backward(dy, x, w, activation=act, y=y, groups=groups,
                                          need_dx=False, algo="direct_wgrad", **g))
    assert res[0][0] is None
    assert_close(res[0][1], dwr, dws, np.float32, k, what + " dw")
    assert_close(res[0][2], dbr, dbs, np.float32, k, what + " db")
    assert_bitwise_equal(res[0][1], res[1][1], what + " dw, 1 vs 2 threads")
    assert_bitwise_equal(res[0][2], res[1][2], what + " db, 1 vs 2 threads")
    # dw alone: the same bits; with dx: dx as the auto algorithm computes it
    _, dw1, db1 = nk.conv2d_backward(dy, x, w, activation=act, y=y, groups=groups,
                                     need_dx=False, need_db=False, algo="direct_wgrad", **g)
    assert db1 is None
    assert_bitwise_equal(dw1, res[0][1], what + " dw without db")
    dx, dw2, _ = nk.conv2d_backward(dy, x, w, activation=act, y=y, groups=groups,
                                    algo="direct_wgrad", **g)
    dxa = nk.conv2d_backward(dy, x, w, activation=act, y=y, groups=groups, need_dw=False,
                             need_db=False, **g)[0]
    assert_bitwise_equal(dx, dxa, what + " dx (auto's algorithm)")
    assert_bitwise_equal(dw2, res[0][1], what + " dw with dx")
    return res[0][1]


@st.composite
def wgrad_case(draw):
    KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.sampled_from([1, 1, 1, 2, 3])), draw(st.sampled_from([1, 1, 1, 2, 3]))
    kind = draw(st.sampled_from(["valid", "same", "same", "explicit"]))
    if kind == "explicit":
        padding = ((draw(st.integers(0, 3)), draw(st.integers(0, 3))),
                   (draw(st.integers(0, 3)), draw(st.integers(0, 3))))
    else:
        padding = kind
    H, W = draw(st.sampled_from([1, 2, 3, 5, 7, 8, 11, 13])), draw(st.sampled_from([1, 2, 3, 5, 7, 9, 13]))
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, (sh, sw), padding, (dh, dw))
    assume(H + pt + pb >= (KH - 1) * dh + 1 and W + pl + pr >= (KW - 1) * dw + 1)
    return dict(N=draw(st.integers(1, 3)), H=H, W=W,
                C=draw(st.sampled_from([1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 64, 70])),
                F=draw(st.sampled_from([1, 3, 7, 8, 15, 16, 17, 31, 32, 33, 48, 64, 65, 100])),
                KH=KH, KW=KW, strides=(sh, sw), dilation=(dh, dw), padding=padding)


@settings(max_examples=80)
@given(case=wgrad_case(), act=st.sampled_from([None, "relu"]), isa_name=st.sampled_from(ISAS),
       seed=st.integers(0, 2**31 - 1))
def test_wgrad_vs_reference(case, act, isa_name, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["H"], case["W"], case["C"])).astype(np.float32)
    w = rng.standard_normal((case["KH"], case["KW"], case["C"], case["F"])).astype(np.float32)
    g = dict(strides=case["strides"], padding=case["padding"], dilation=case["dilation"])
    y = ref_conv(x, w, None, act=act, **g).astype(np.float32) if act else None
    dy = rng.standard_normal(nk.conv2d_output_shape(x.shape, w.shape, **g)).astype(np.float32)
    with isa(isa_name):
        _check(x, w, dy, g, act, y, what=str(case))


# Fixed shapes: ResNet-20's (small batch), first layers, F around the
# vector widths (8, 16 floats), C up to 70, strides, dilation, groups that
# span images (OW * rows < 128 pixels), every ISA path.
FIXED = [
    ((3, 32, 32, 3), (3, 3, 3, 16), dict(padding="same")),                 # ResNet stem
    ((2, 32, 32, 16), (3, 3, 16, 16), dict(padding="same")),
    ((2, 16, 16, 32), (3, 3, 32, 32), dict(padding="same")),
    ((2, 8, 8, 64), (3, 3, 64, 64), dict(padding="same")),
    ((2, 32, 32, 16), (3, 3, 16, 32), dict(strides=2, padding="same")),
    ((2, 32, 32, 16), (1, 1, 16, 32), dict(strides=2, padding="same")),    # 1x1 projection
    ((3, 28, 28, 1), (3, 3, 1, 32), dict()),                               # default CNN
    ((2, 13, 11, 70), (3, 3, 70, 17), dict(padding="same")),
    ((2, 11, 13, 5), (5, 3, 5, 33), dict(strides=(2, 3), padding="same")),
    ((2, 12, 13, 7), (3, 3, 7, 9), dict(dilation=(2, 3), padding="same")),
    ((5, 3, 4, 2), (2, 2, 2, 100), dict(padding=((1, 2), (0, 3)))),
    ((4, 7, 7, 1), (7, 7, 1, 1), dict(padding="same")),
    ((1, 1, 1, 3), (1, 1, 3, 5), dict()),
]


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("xs, ws, g", FIXED)
def test_wgrad_fixed_shapes(xs, ws, g, isa_name):
    rng = np.random.default_rng(11)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    g = dict(dict(strides=1, padding="valid", dilation=1), **g)
    y = nk.conv2d(x, w, activation="relu", **g)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    with isa(isa_name):
        _check(x, w, dy, g, what=f"{xs} {ws} {g}")
        _check(x, w, dy, g, act="relu", y=y, what=f"{xs} {ws} {g} relu")


def test_wgrad_many_blocks_and_threads():
    """More output rows than blocks, blocks and groups not aligned with
    images: 1 and 2 threads bitwise equal, close to the reference."""
    rng = np.random.default_rng(12)
    x = rng.standard_normal((37, 9, 10, 6)).astype(np.float32)
    w = rng.standard_normal((3, 3, 6, 20)).astype(np.float32)
    g = dict(strides=1, padding="same", dilation=1)
    dy = rng.standard_normal(nk.conv2d_output_shape(x.shape, w.shape, **g)).astype(np.float32)
    for name in ISAS:
        with isa(name):
            _check(x, w, dy, g, what=name)


def test_wgrad_groups_and_noncontiguous():
    """Groups (channel windows of x, dy and dw: pixel pitches above C, F)
    and strided input views (copied by the API)."""
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 9, 8, 12)).astype(np.float32)
    w = rng.standard_normal((3, 3, 4, 18)).astype(np.float32)
    g = dict(strides=1, padding="same", dilation=1)
    y = ref_conv_grouped(x.astype(F64), w.astype(F64), None, groups=3, **_pairs(g))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    for name in ISAS:
        with isa(name):
            _check(x, w, dy, g, groups=3, what=name + " groups=3")
    big = rng.standard_normal((4, 14, 12, 10)).astype(np.float32)
    xv = big[::2, 1:13, ::2, 1:8]
    wv = np.asfortranarray(rng.standard_normal((3, 2, 7, 9)).astype(np.float32))
    g = dict(strides=(1, 2), padding="same", dilation=(2, 1))
    dyv = rng.standard_normal(nk.conv2d_output_shape(xv.shape, wv.shape, **g) * np.array([1, 1, 1, 2]))
    dyv = dyv.astype(np.float32)[..., ::2]
    _check(xv, wv, dyv, g, what="views")


def test_wgrad_float64_and_other_products():
    """float64 dw takes auto's algorithm; the forward pass too."""
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 8, 8, 16))
    w = rng.standard_normal((3, 3, 16, 16))
    g = dict(padding="same")
    y = nk.conv2d(x, w, **g)
    assert_bitwise_equal(nk.conv2d(x, w, algo="direct_wgrad", **g), y, "float64 forward")
    dy = rng.standard_normal(y.shape)
    for a, b in zip(nk.conv2d_backward(dy, x, w, algo="direct_wgrad", **g),
                    nk.conv2d_backward(dy, x, w, **g)):
        assert_bitwise_equal(a, b, "float64 backward")
    x32, w32 = x.astype(np.float32), w.astype(np.float32)
    assert_bitwise_equal(nk.conv2d(x32, w32, algo="direct_wgrad", **g), nk.conv2d(x32, w32, **g),
                         "float32 forward")
    dx = nk.conv2d_backward_data(dy.astype(np.float32), w32, x32.shape, algo="direct_wgrad", **g)
    assert_bitwise_equal(dx, nk.conv2d_backward_data(dy.astype(np.float32), w32, x32.shape, **g),
                         "float32 backward_data")


def test_wgrad_empty():
    x = np.zeros((0, 5, 5, 3), np.float32)
    w = np.ones((3, 3, 3, 4), np.float32)
    dy = np.zeros((0, 5, 5, 4), np.float32)
    _, dw, db = nk.conv2d_backward(dy, x, w, padding="same", algo="direct_wgrad")
    assert dw.shape == w.shape and not dw.any() and not db.any()


def test_wgrad_auto_choice():
    bf = dict(dtype="float32", product="backward_filter")
    # ResNet-20 (batch 128, same padding)
    for xs, ws, s, want in [((128, 32, 32, 3), (3, 3, 3, 16), 1, "direct_wgrad"),
                            ((128, 32, 32, 16), (3, 3, 16, 16), 1, "winograd"),
                            ((128, 16, 16, 32), (3, 3, 32, 32), 1, "winograd"),
                            ((128, 32, 32, 16), (3, 3, 16, 32), 2, "direct_wgrad"),
                            ((128, 32, 32, 16), (1, 1, 16, 32), 2, "direct_wgrad"),
                            ((128, 8, 8, 64), (3, 3, 64, 64), 1, "winograd"),
                            ((128, 16, 16, 32), (3, 3, 32, 64), 2, "im2col")]:
        assert nk.conv2d_algo(xs, ws, s, "same", **bf) == want, (xs, ws)
    # the default CNN: direct for its first layer, Winograd for its second
    assert nk.conv2d_algo((128, 28, 28, 1), (3, 3, 1, 32), **bf) == "direct"
    assert nk.conv2d_algo((128, 26, 26, 32), (3, 3, 32, 64), **bf) == "winograd"
    # float64 and the other products never
    assert nk.conv2d_algo((8, 32, 32, 16), (3, 3, 16, 16), dtype="float64",
                          product="backward_filter") == "im2col"
    assert nk.conv2d_algo((8, 32, 32, 3), (3, 3, 3, 16), dtype="float64",
                          product="backward_filter") == "direct"
    for p in ("forward", "backward_data"):
        assert nk.conv2d_algo((8, 32, 32, 16), (3, 3, 16, 16), product=p) == "winograd"

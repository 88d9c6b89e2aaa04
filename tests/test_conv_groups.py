"""Tests of the data-gradient-only convolution (conv2d_backward_data,
need_dw=False), grouped convolution (groups=) and depthwise convolution
against the NumPy float64 references of reference.py (grouped = g
independent convolutions on channel slices, depthwise = groups=C with C*M
filters)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import (assert_bitwise_equal, isa as use_isa, ref_conv_grouped,
                       ref_conv_grouped_backward, ref_depthwise, ref_depthwise_backward,
                       ref_pads, threads as use_threads)
from strategies import conv_paddings

ISAS = tuple(nk.available_isas())
DTYPES = (np.float32, np.float64)


def close(got, ref, scale, dt, k, what="result"):
    """|got - ref| <= rtol * sqrt(k) * scale elementwise, scale = the sum of
    the magnitudes that were added (a reference on |operands|)."""
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, expected {ref.shape}"
    rtol = (1e-5 if dt == np.float32 else 1e-12) * max(1, k) ** 0.5
    err = np.abs(got.astype(np.float64) - ref)
    lim = rtol * (scale + 1e-30)
    bad = err > lim
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(f"{what}: {int(bad.sum())} of {ref.size} wrong; first at {i}: "
                             f"got {got[i]!r}, expected {ref[i]!r} (scale {scale[i]!r})")


# ---------------------------------------------------------------- strategies

@st.composite
def geometry(draw, max_k=4, max_h=11, max_w=13, max_n=3):
    """Kernel size, strides, dilation, padding (valid / same / explicit) and
    an image size the dilated kernel fits in."""
    KH, KW = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    dh, dw = draw(st.sampled_from([1, 1, 2, 3])), draw(st.sampled_from([1, 1, 2]))
    padding = draw(conv_paddings())
    H, W = draw(st.integers(1, max_h)), draw(st.integers(1, max_w))
    (pt, pb), (pl, pr) = ref_pads(H, W, KH, KW, (sh, sw), padding, (dh, dw))
    assume(H + pt + pb >= (KH - 1) * dh + 1 and W + pl + pr >= (KW - 1) * dw + 1)
    return dict(N=draw(st.sampled_from([1, 1, 2, max_n])), H=H, W=W, KH=KH, KW=KW,
                strides=(sh, sw), dilation=(dh, dw), padding=padding)


def geo(case):
    return dict(strides=case["strides"], padding=case["padding"], dilation=case["dilation"])


@st.composite
def conv_cases(draw, groups=(1,), cg=(1, 2, 3, 5, 8, 13, 17), fg=(1, 3, 16, 17, 33)):
    case = draw(geometry())
    g = draw(st.sampled_from(groups))
    case.update(G=g, C=g * draw(st.sampled_from(cg)), F=g * draw(st.sampled_from(fg)))
    return case


def make(case, dt, seed, layout="C"):
    """x, w, b and the generator; layout "strided" gives x and w as
    non-contiguous views (every other element of a bigger array)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["H"], case["W"], case["C"])).astype(dt)
    w = rng.standard_normal((case["KH"], case["KW"], case["C"] // case["G"],
                             case["F"])).astype(dt)
    b = rng.standard_normal(case["F"]).astype(dt)
    if layout == "strided":
        xb = np.full(x.shape[:3] + (2 * x.shape[3],), np.nan, dt)
        xb[..., ::2] = x
        wb = np.full((w.shape[0], 2 * w.shape[1]) + w.shape[2:], np.nan, dt)
        wb[:, ::2] = w
        x, w = xb[..., ::2], wb[:, ::2]
    return rng, x, w, b


def refs(x, w, b, g, groups, act, rng):
    """float64 reference forward / backward with scales (the same sums over
    |x|, |w|, |dz|) and the dy used."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    yr = ref_conv_grouped(x64, w64, b64, groups=groups, act=act, **g)
    ys = ref_conv_grouped(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64),
                          groups=groups, **g)
    dy = rng.standard_normal(yr.shape).astype(x.dtype)
    # relu: the mask the caller passes is the forward output in x's dtype;
    # take it from the kernel itself so rounding at 0 cannot disagree
    y_dt = nk.conv2d(x, w, b, activation=act, groups=groups, algo="im2col", **g) \
        if act == "relu" else None
    dz = dy.astype(np.float64) * ((y_dt > 0) if act == "relu" else 1)
    dxr, dwr, dbr = ref_conv_grouped_backward(dz, x64, w64, groups=groups, **g)
    dxs, dws, dbs = ref_conv_grouped_backward(np.abs(dz), np.abs(x64), np.abs(w64),
                                              groups=groups, **g)
    return dict(y=(yr, ys), dx=(dxr, dxs), dw=(dwr, dws), db=(dbr, dbs), dy=dy, y_dt=y_dt)


def algos_for(case):
    out = ["im2col", "direct", "auto"]
    if case["KH"] == case["KW"] == 3 and case["strides"] == (1, 1) \
            and case["dilation"] == (1, 1):
        out.append("winograd")
    return out


# ------------------------------------------------- data gradient alone

@settings(max_examples=100)
@given(case=conv_cases(), dt=st.sampled_from(DTYPES), act=st.sampled_from([None, "relu"]),
       isa=st.sampled_from(ISAS), nthreads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["C", "strided"]))
def test_backward_data_vs_reference(case, dt, act, isa, nthreads, seed, layout):
    rng, x, w, b = make(case, dt, seed, layout)
    g = geo(case)
    r = refs(x, w, b, g, 1, act, rng)
    dy, y = r["dy"], r["y_dt"]
    kdx = case["KH"] * case["KW"] * case["F"]
    with use_isa(isa), use_threads(nthreads):
        for algo in algos_for(case):
            dx = nk.conv2d_backward_data(dy, w, x.shape, activation=act, y=y, algo=algo, **g)
            assert dx.dtype == dt and dx.shape == x.shape
            if algo != "winograd":  # winograd: its own error bound, tested in test_conv
                close(dx, *r["dx"], dt, kdx, f"dx ({algo})")
            # the same kernels as the full backward: bitwise the same dx
            full = nk.conv2d_backward(dy, x, w, activation=act, y=y, algo=algo, **g)
            assert_bitwise_equal(dx, full[0], f"dx ({algo}) vs conv2d_backward")
            dx2, dw2, db2 = nk.conv2d_backward(dy, x, w, activation=act, y=y, algo=algo,
                                               need_dw=False, **g)
            assert dw2 is None
            assert_bitwise_equal(dx2, full[0], f"dx ({algo}) with need_dw=False")
            close(db2, *r["db"], dt, dy.size // case["F"], "db (need_dw=False)")


def test_backward_data_threads_bitwise():
    rng = np.random.default_rng(11)
    cases = [((4, 13, 11, 20), (3, 3, 20, 24), dict(padding="same")),        # winograd
             ((3, 12, 12, 70), (3, 3, 70, 5), dict(padding="same")),         # full-conv GEMM
             ((3, 15, 14, 6), (3, 2, 6, 40), dict(strides=2, padding="same")),  # direct
             ((2, 17, 15, 12), (3, 3, 12, 9), dict(strides=(2, 3), dilation=(1, 2)))]  # columns
    for xs, ws, g in cases:
        w = rng.standard_normal(ws).astype(np.float32)
        dys = nk.conv2d_output_shape(xs, ws, **g)
        dy = rng.standard_normal(dys).astype(np.float32)
        y = rng.standard_normal(dys).astype(np.float32)
        res = []
        for t in (1, 2):
            with use_threads(t):
                res.append((nk.conv2d_backward_data(dy, w, xs, activation="relu", y=y, **g),
                            nk.conv2d_backward(dy, np.zeros(xs, np.float32), w,
                                               activation="relu", y=y, need_dw=False,
                                               need_dx=False, **g)[2]))
        assert_bitwise_equal(res[0][0], res[1][0], f"dx {xs} {ws}")
        assert_bitwise_equal(res[0][1], res[1][1], f"db {xs} {ws}")


def test_backward_data_is_transposed_conv():
    """<conv2d(x, w), dy> == <x, conv2d_backward_data(dy, w)> (adjoint), and
    the data gradient matches finite differences of that inner product."""
    rng = np.random.default_rng(12)
    for xs, ws, g in [((2, 7, 9, 3), (3, 2, 3, 4), dict(strides=(2, 1), padding="same")),
                      ((1, 8, 8, 5), (2, 3, 5, 2),
                       dict(strides=(1, 2), padding=((2, 0), (1, 3)), dilation=(2, 1))),
                      ((2, 9, 8, 2), (3, 3, 2, 3), dict(strides=3, padding="valid"))]:
        x, w = rng.standard_normal(xs), rng.standard_normal(ws)
        y = nk.conv2d(x, w, **g)
        dy = rng.standard_normal(y.shape)
        dx = nk.conv2d_backward_data(dy, w, xs, **g)
        assert abs(np.sum(y * dy) - np.sum(x * dx)) <= 1e-12 * np.abs(y * dy).sum()
        v, eps = rng.standard_normal(xs), 1e-6
        fd = (np.sum(nk.conv2d(x + eps * v, w, **g) * dy)
              - np.sum(nk.conv2d(x - eps * v, w, **g) * dy)) / (2 * eps)
        assert abs(fd - np.sum(dx * v)) <= 1e-7 * max(1.0, abs(fd))


def test_backward_data_out_and_empty():
    rng = np.random.default_rng(13)
    w = rng.standard_normal((3, 3, 4, 6)).astype(np.float32)
    dy = rng.standard_normal((2, 5, 5, 6)).astype(np.float32)
    out = np.full((2, 5, 5, 4), np.nan, np.float32)
    r = nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), padding="same", out=out)
    assert r is out and np.isfinite(out).all()
    ref = nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), padding="same")
    assert_bitwise_equal(out, ref)
    # non-contiguous dy and w are copied first
    dyb = np.repeat(dy, 2, axis=2)[:, :, ::2]
    assert_bitwise_equal(nk.conv2d_backward_data(dyb, np.asfortranarray(w), (2, 5, 5, 4),
                                                 padding="same"), ref)
    dx = nk.conv2d_backward_data(np.zeros((0, 5, 5, 6), np.float32), w, (0, 5, 5, 4),
                                 padding="same")
    assert dx.shape == (0, 5, 5, 4)


def test_backward_data_errors():
    w = np.zeros((3, 3, 4, 6), np.float32)
    dy = np.zeros((2, 3, 3, 6), np.float32)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 3, 3, 6\), expected \(2, 5, 5, 6\)"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), padding="same")
    with pytest.raises(ValueError, match="x_shape"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5))
    with pytest.raises(TypeError, match="x_shape"):
        nk.conv2d_backward_data(dy, w, (2, 5.0, 5, 4))
    with pytest.raises(TypeError, match="x_shape"):
        nk.conv2d_backward_data(dy, w, 5)
    with pytest.raises(ValueError, match=r"input channels.*\(2, 5, 5, 3\)"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5, 3))
    with pytest.raises(ValueError, match="needs the forward output y"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), activation="relu")
    with pytest.raises(ValueError, match="y has shape"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), activation="relu", y=dy[:1])
    with pytest.raises(TypeError, match="same dtype"):
        nk.conv2d_backward_data(dy.astype(np.float64), w, (2, 5, 5, 4))
    with pytest.raises(ValueError, match="out has shape"):
        nk.conv2d_backward_data(dy, w, (2, 5, 5, 4), out=np.zeros((2, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        nk.conv2d_backward_data(dy, w, (2, 3, 3, 4), padding="same",
                                out=dy.reshape(-1)[:72].reshape(2, 3, 3, 4))
    with pytest.raises(ValueError, match="winograd"):
        nk.conv2d_backward_data(dy, w, (2, 6, 6, 4), strides=2, algo="winograd")
    with pytest.raises(ValueError, match="does not fit"):
        nk.conv2d_backward_data(dy, w, (2, 1, 1, 4))


# ------------------------------------------------------------------ groups

def per_group(fn, x, w, b, groups, **kw):
    """conv2d on each group's contiguous slices, concatenated: what the
    grouped call must reproduce bit for bit (same kernels on the same
    values, only the channel pitch differs)."""
    cg, fg = x.shape[3] // groups, w.shape[3] // groups
    outs = [fn(np.ascontiguousarray(x[..., j * cg:(j + 1) * cg]),
               np.ascontiguousarray(w[..., j * fg:(j + 1) * fg]),
               None if b is None else np.ascontiguousarray(b[j * fg:(j + 1) * fg]), j, **kw)
            for j in range(groups)]
    return outs


@settings(max_examples=100)
@given(case=conv_cases(groups=(2, 3, 4, 7), cg=(1, 2, 3, 5, 8, 16, 17), fg=(1, 2, 3, 16, 17)),
       dt=st.sampled_from(DTYPES), act=st.sampled_from([None, "relu"]),
       isa=st.sampled_from(ISAS), nthreads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["C", "strided"]),
       use_bias=st.booleans())
def test_grouped_vs_reference_and_slices(case, dt, act, isa, nthreads, seed, layout, use_bias):
    rng, x, w, b = make(case, dt, seed, layout)
    b = b if use_bias else None
    G, g = case["G"], geo(case)
    cg, fg = case["C"] // G, case["F"] // G
    r = refs(x, w, b, g, G, act, rng)
    dy, y = r["dy"], r["y_dt"]
    assert nk.conv2d_output_shape(x.shape, w.shape, groups=G, **g) == r["y"][0].shape
    with use_isa(isa), use_threads(nthreads):
        for algo in algos_for(case):
            yk = nk.conv2d(x, w, b, groups=G, activation=act, algo=algo, **g)
            dx, dw, db = nk.conv2d_backward(dy, x, w, groups=G, activation=act, y=y, algo=algo,
                                            **g)
            if algo != "winograd":
                close(yk, *r["y"], dt, case["KH"] * case["KW"] * cg, f"y ({algo})")
                close(dx, *r["dx"], dt, case["KH"] * case["KW"] * fg, f"dx ({algo})")
                close(dw, *r["dw"], dt, dy.size // case["F"], f"dw ({algo})")
                close(db, *r["db"], dt, dy.size // case["F"], f"db ({algo})")
            if algo == "auto" and cg == 1:
                continue  # the depthwise kernels (tested below), not the group loop
            ys = per_group(lambda xj, wj, bj, j: nk.conv2d(xj, wj, bj, activation=act,
                                                           algo=algo, **g), x, w, b, G)
            assert_bitwise_equal(yk, np.concatenate(ys, axis=3), f"y ({algo}) vs slices")
            bs = per_group(lambda xj, wj, bj, j: nk.conv2d_backward(
                np.ascontiguousarray(dy[..., j * fg:(j + 1) * fg]), xj, wj, activation=act,
                y=None if y is None else np.ascontiguousarray(y[..., j * fg:(j + 1) * fg]),
                algo=algo, **g), x, w, b, G)
            for i, (got, nm) in enumerate(((dx, "dx"), (dw, "dw"), (db, "db"))):
                assert_bitwise_equal(got, np.concatenate([p[i] for p in bs], axis=-1),
                                     f"{nm} ({algo}) vs slices")
            dxd = nk.conv2d_backward_data(dy, w, x.shape, groups=G, activation=act, y=y,
                                          algo=algo, **g)
            assert_bitwise_equal(dxd, dx, f"conv2d_backward_data ({algo})")
            dx2, dw2, db2 = nk.conv2d_backward(dy, x, w, groups=G, activation=act, y=y,
                                               algo=algo, need_dx=False, need_dw=False, **g)
            assert dx2 is None and dw2 is None
            close(db2, *r["db"], dt, dy.size // case["F"], "db alone")


def test_grouped_threads_bitwise_and_winograd_bound():
    """Bigger grouped convolutions (every algorithm, one winograd-sized):
    1 and 2 threads give the same bits."""
    rng = np.random.default_rng(21)
    for xs, ws, G, g in [((4, 14, 13, 64), (3, 3, 16, 64), 4, dict(padding="same")),
                         ((3, 12, 12, 12), (3, 3, 3, 24), 4, dict(strides=2, padding="same")),
                         ((2, 10, 9, 96), (1, 1, 48, 40), 2, dict()),
                         ((2, 11, 11, 64), (3, 3, 32, 18), 2,
                          dict(strides=(2, 1), dilation=(1, 2)))]:
        x = rng.standard_normal(xs).astype(np.float32)
        w = rng.standard_normal(ws).astype(np.float32)
        b = rng.standard_normal(ws[3]).astype(np.float32)
        for algo in ("auto", "im2col", "direct"):
            res = []
            for t in (1, 2):
                with use_threads(t):
                    y = nk.conv2d(x, w, b, groups=G, activation="relu", algo=algo, **g)
                    dy = np.cos(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
                    res.append((y,) + nk.conv2d_backward(dy, x, w, groups=G, activation="relu",
                                                         y=y, algo=algo, **g))
            for a, c, nm in zip(res[0], res[1], ("y", "dx", "dw", "db")):
                assert_bitwise_equal(a, c, f"{nm} {xs} {ws} groups={G} ({algo})")


@settings(max_examples=25)
@given(case=conv_cases(groups=(2, 3), cg=(1, 2, 3), fg=(1, 2, 3)),
       act=st.sampled_from([None, "relu"]), algo=st.sampled_from(["im2col", "direct"]),
       seed=st.integers(0, 2**31 - 1))
def test_grouped_finite_differences(case, act, algo, seed):
    rng, x, w, b = make(case, np.float64, seed)
    G, g = case["G"], geo(case)
    if act == "relu":
        z = ref_conv_grouped(x, w, b, groups=G, **g)
        assume(np.abs(z).min() > 1e-3)
    f = lambda x_, w_, b_: nk.conv2d(x_, w_, b_, groups=G, activation=act, algo=algo, **g)
    y = f(x, w, b)
    gy = rng.standard_normal(y.shape)
    dx, dw, db = nk.conv2d_backward(gy, x, w, groups=G, activation=act, y=y, algo=algo, **g)
    vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))
    eps = 1e-6
    fd = (np.sum(f(x + eps * vx, w + eps * vw, b + eps * vb) * gy)
          - np.sum(f(x - eps * vx, w - eps * vw, b - eps * vb) * gy)) / (2 * eps)
    an = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


def test_grouped_shapes_algo_and_errors():
    assert nk.conv2d_output_shape((2, 9, 9, 12), (3, 3, 4, 6), groups=3, padding="same") \
        == (2, 9, 9, 6)
    # the algorithm is the one of one group's (C_in, C_out)
    assert nk.conv2d_algo((2, 9, 9, 64), (3, 3, 16, 64), groups=4) == "winograd"
    assert nk.conv2d_algo((2, 9, 9, 64), (3, 3, 4, 64), groups=16) == "direct"
    assert nk.conv2d_algo((2, 9, 9, 64), (3, 3, 32, 16), groups=2) == "im2col"
    x = np.zeros((2, 6, 6, 12), np.float32)
    w = np.zeros((3, 3, 4, 6), np.float32)
    y = nk.conv2d(x, w, groups=3)
    assert y.shape == (2, 4, 4, 6)
    for bad, exc in ((0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError),
                     ("3", TypeError), (2**40, ValueError)):
        with pytest.raises(exc, match="groups"):
            nk.conv2d(x, w, groups=bad)
        with pytest.raises(exc, match="groups"):
            nk.conv2d_backward(y, x, w, groups=bad)
        with pytest.raises(exc, match="groups"):
            nk.conv2d_backward_data(y, w, x.shape, groups=bad)
        with pytest.raises(exc, match="groups"):
            nk.conv2d_output_shape(x.shape, w.shape, groups=bad)
    # C_in != groups * w.shape[2]
    with pytest.raises(ValueError, match=r"groups=2: x\(2, 6, 6, 12\).*w\(3, 3, 4, 6\)"):
        nk.conv2d(x, w, groups=2)
    # C_out not divisible by groups
    with pytest.raises(ValueError, match=r"groups=4.*w\(3, 3, 3, 6\)"):
        nk.conv2d(x, np.zeros((3, 3, 3, 6), np.float32), groups=4)
    with pytest.raises(ValueError, match="bias"):
        nk.conv2d(x, w, np.zeros(2, np.float32), groups=3)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 4, 7\), expected \(2, 4, 4, 6\)"):
        nk.conv2d_backward(np.zeros((2, 4, 4, 7), np.float32), x, w, groups=3)
    with pytest.raises(ValueError, match="db has shape"):
        nk.conv2d_backward(y, x, w, groups=3, db=np.zeros(2, np.float32))


# --------------------------------------------------------------- depthwise

@st.composite
def dw_cases(draw, max_h=21, max_w=23):
    case = draw(geometry(max_k=5, max_h=max_h, max_w=max_w, max_n=4))
    C = draw(st.sampled_from([1, 2, 3, 5, 8, 13, 16, 17, 31, 32, 33, 48, 64, 97]))
    M = draw(st.sampled_from([1, 1, 1, 2, 3]))
    case.update(C=C, M=M)
    return case


def make_dw(case, dt, seed, layout="C"):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((case["N"], case["H"], case["W"], case["C"])).astype(dt)
    w = rng.standard_normal((case["KH"], case["KW"], case["C"], case["M"])).astype(dt)
    b = rng.standard_normal(case["C"] * case["M"]).astype(dt)
    if layout == "strided":  # x: a window of a wider array's channels; w Fortran-ordered
        xb = np.full(x.shape[:3] + (x.shape[3] + 3,), np.nan, dt)
        xb[..., 1:1 + x.shape[3]] = x
        x, w = xb[..., 1:1 + x.shape[3]], np.asfortranarray(w)
    return rng, x, w, b


def dw_refs(x, w, b, g, act, rng):
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    b64 = None if b is None else b.astype(np.float64)
    yr = ref_depthwise(x64, w64, b64, act=act, **g)
    ys = ref_depthwise(np.abs(x64), np.abs(w64), None if b is None else np.abs(b64), **g)
    dy = rng.standard_normal(yr.shape).astype(x.dtype)
    y_dt = nk.depthwise_conv2d(x, w, b, activation=act, **g) if act == "relu" else None
    dz = dy.astype(np.float64) * ((y_dt > 0) if act == "relu" else 1)
    grads = ref_depthwise_backward(dz, x64, w64, **g)
    scales = ref_depthwise_backward(np.abs(dz), np.abs(x64), np.abs(w64), **g)
    return dict(y=(yr, ys), dx=(grads[0], scales[0]), dw=(grads[1], scales[1]),
                db=(grads[2], scales[2]), dy=dy, y_dt=y_dt)


@settings(max_examples=150)
@given(case=dw_cases(), dt=st.sampled_from(DTYPES), act=st.sampled_from([None, "relu"]),
       isa=st.sampled_from(ISAS), nthreads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**31 - 1), layout=st.sampled_from(["C", "strided"]),
       use_bias=st.booleans())
def test_depthwise_vs_reference(case, dt, act, isa, nthreads, seed, layout, use_bias):
    rng, x, w, b = make_dw(case, dt, seed, layout)
    b = b if use_bias else None
    g = geo(case)
    C, M, KK = case["C"], case["M"], case["KH"] * case["KW"]
    with use_isa(isa), use_threads(nthreads):
        r = dw_refs(x, w, b, g, act, rng)
        dy, y = r["dy"], r["y_dt"]
        yk = nk.depthwise_conv2d(x, w, b, activation=act, **g)
        assert yk.shape == r["y"][0].shape and yk.dtype == dt
        close(yk, *r["y"], dt, KK, "y")
        dx, dw, db = nk.depthwise_conv2d_backward(dy, x, w, activation=act, y=y, **g)
        assert dw.shape == w.shape
        close(dx, *r["dx"], dt, KK * M, "dx")
        close(dw, *r["dw"], dt, dy.size // (C * M), "dw")
        close(db, *r["db"], dt, dy.size // (C * M), "db")
        # the same as conv2d with groups=C and the (KH, KW, 1, C*M) kernel
        wg = np.ascontiguousarray(w).reshape(case["KH"], case["KW"], 1, C * M)
        assert nk.conv2d_algo(x.shape, wg.shape, groups=C, **g) == \
            ("depthwise" if C > 1 else "direct")
        assert_bitwise_equal(nk.conv2d(x, wg, b, groups=C, activation=act, **g), yk,
                             "conv2d(groups=C)")
        assert_bitwise_equal(nk.conv2d_backward_data(dy, wg, x.shape, groups=C, activation=act,
                                                     y=y, **g), dx,
                             "conv2d_backward_data(groups=C)")
        if C == 1:  # one group: algo="auto" runs the direct kernels; the depthwise ones:
            close(nk.conv2d(x, wg, b, activation=act, algo="depthwise", **g), *r["y"], dt, KK,
                  "y (algo='depthwise', C=1)")
        # gradients one at a time: the same bits
        only = nk.depthwise_conv2d_backward(dy, x, w, activation=act, y=y, need_dw=False,
                                            need_db=False, **g)
        assert only[1] is None and only[2] is None
        assert_bitwise_equal(only[0], dx, "dx alone")
        only = nk.depthwise_conv2d_backward(dy, x, w, activation=act, y=y, need_dx=False, **g)
        assert only[0] is None
        assert_bitwise_equal(only[1], dw, "dw without dx")
        assert_bitwise_equal(only[2], db, "db without dx")
        only = nk.depthwise_conv2d_backward(dy, x, w, activation=act, y=y, need_dx=False,
                                            need_dw=False, **g)
        close(only[2], *r["db"], dt, dy.size // (C * M), "db alone")


def test_depthwise_vs_group_loop_and_threads():
    """Bigger shapes (several dW blocks, rows reused from the ring, rows read
    in place, M > 1, partial channel vectors): the depthwise kernels agree
    with C one-channel convolutions (algo="direct"), and 1 and 2 threads
    give the same bits, on every ISA."""
    rng = np.random.default_rng(31)
    cases = [((4, 20, 19, 32), 1, (3, 3), dict(padding="same")),
             ((3, 17, 18, 48), 1, (3, 3), dict(padding="valid")),          # rows in place
             ((2, 21, 16, 24), 2, (3, 3), dict(strides=2, padding="same")),
             ((2, 15, 15, 20), 3, (5, 5), dict(padding="same", dilation=(2, 1))),
             ((5, 9, 13, 7), 1, (3, 2), dict(strides=(1, 2), padding=((2, 1), (0, 3))))]
    for isa in ISAS:
        with use_isa(isa):
            for xs, M, (KH, KW), g in cases:
                x = rng.standard_normal(xs).astype(np.float32)
                w = rng.standard_normal((KH, KW, xs[3], M)).astype(np.float32)
                b = rng.standard_normal(xs[3] * M).astype(np.float32)
                res = []
                for t in (1, 2):
                    with use_threads(t):
                        y = nk.depthwise_conv2d(x, w, b, activation="relu", **g)
                        dy = np.sin(np.arange(y.size, dtype=np.float32)).reshape(y.shape)
                        res.append((y,) + nk.depthwise_conv2d_backward(
                            dy, x, w, activation="relu", y=y, **g))
                for a, c, nm in zip(res[0], res[1], ("y", "dx", "dw", "db")):
                    assert_bitwise_equal(a, c, f"{nm} {isa} {xs} M={M}")
                y, dx, dw, db = res[0]
                wg = w.reshape(KH, KW, 1, -1)
                yl = nk.conv2d(x, wg, b, groups=xs[3], activation="relu", algo="direct", **g)
                np.testing.assert_allclose(y, yl, rtol=1e-5, atol=1e-5 * np.abs(yl).max())
                dl = nk.conv2d_backward(dy, x, wg, groups=xs[3], activation="relu", y=y,
                                        algo="direct", **g)
                for a, c in zip((dx, dw.reshape(wg.shape), db), dl):
                    np.testing.assert_allclose(a, c, rtol=1e-4, atol=1e-4 * np.abs(c).max())


@settings(max_examples=30)
@given(case=dw_cases(max_h=9, max_w=9), act=st.sampled_from([None, "relu"]),
       seed=st.integers(0, 2**31 - 1))
def test_depthwise_finite_differences(case, act, seed):
    rng, x, w, b = make_dw(case, np.float64, seed)
    g = geo(case)
    if act == "relu":
        assume(np.abs(ref_depthwise(x, w, b, **g)).min() > 1e-3)
    f = lambda x_, w_, b_: nk.depthwise_conv2d(x_, w_, b_, activation=act, **g)
    y = f(x, w, b)
    gy = rng.standard_normal(y.shape)
    dx, dw, db = nk.depthwise_conv2d_backward(gy, x, w, activation=act, y=y, **g)
    vx, vw, vb = (rng.standard_normal(a.shape) for a in (x, w, b))
    eps = 1e-6
    fd = (np.sum(f(x + eps * vx, w + eps * vw, b + eps * vb) * gy)
          - np.sum(f(x - eps * vx, w - eps * vw, b - eps * vb) * gy)) / (2 * eps)
    an = np.sum(dx * vx) + np.sum(dw * vw) + np.sum(db * vb)
    assert abs(fd - an) <= 1e-6 * max(1.0, abs(an)), (fd, an)


def test_depthwise_exhaustive_finite_differences():
    rng = np.random.default_rng(32)
    x = rng.standard_normal((2, 5, 4, 3))
    w = rng.standard_normal((2, 3, 3, 2))
    b = rng.standard_normal(6)
    g = dict(strides=(2, 1), padding="same", dilation=(1, 2))
    y = nk.depthwise_conv2d(x, w, b, **g)
    gy = rng.standard_normal(y.shape)
    grads = nk.depthwise_conv2d_backward(gy, x, w, **g)
    loss = lambda: float(np.sum(nk.depthwise_conv2d(x, w, b, **g) * gy))
    eps = 1e-6
    for arr, grad in zip((x, w, b), grads):
        num = np.zeros_like(arr)
        for idx in np.ndindex(arr.shape):
            old = arr[idx]
            arr[idx] = old + eps
            lp = loss()
            arr[idx] = old - eps
            lm = loss()
            arr[idx] = old
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grad, num, rtol=1e-6, atol=1e-7)


def test_depthwise_out_buffers_and_empty():
    rng = np.random.default_rng(33)
    x = rng.standard_normal((2, 6, 7, 5)).astype(np.float32)
    w = rng.standard_normal((3, 3, 5, 2)).astype(np.float32)
    b = rng.standard_normal(10).astype(np.float32)
    y = nk.depthwise_conv2d(x, w, b, padding="same")
    out = np.full(y.shape, np.nan, np.float32)
    assert nk.depthwise_conv2d(x, w, b, padding="same", out=out) is out
    assert_bitwise_equal(out, y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    ref = nk.depthwise_conv2d_backward(dy, x, w, padding="same")
    bufs = (np.full(x.shape, np.nan, np.float32), np.full(w.shape, np.nan, np.float32),
            np.full(10, np.nan, np.float32))
    got = nk.depthwise_conv2d_backward(dy, x, w, padding="same", dx=bufs[0], dw=bufs[1],
                                       db=bufs[2])
    for a, c, buf in zip(got, ref, bufs):
        assert a is buf
        assert_bitwise_equal(a, c)
    # empty batch: zero gradients
    x0 = np.zeros((0, 6, 7, 5), np.float32)
    y0 = nk.depthwise_conv2d(x0, w, padding="same")
    assert y0.shape == (0, 6, 7, 10)
    dx0, dw0, db0 = nk.depthwise_conv2d_backward(y0, x0, w, padding="same")
    assert dx0.shape == x0.shape and dw0.shape == w.shape and not dw0.any() and not db0.any()


def test_depthwise_errors():
    x = np.zeros((2, 6, 6, 4), np.float32)
    w = np.zeros((3, 3, 4, 2), np.float32)
    dy = np.zeros((2, 4, 4, 8), np.float32)
    with pytest.raises(ValueError, match=r"depthwise: x\(2, 6, 6, 4\) has C=4.*w\(3, 3, 3, 2\)"):
        nk.depthwise_conv2d(x, np.zeros((3, 3, 3, 2), np.float32))
    with pytest.raises(ValueError, match=r"depthwise.*\(3, 3, 3, 2\)"):
        nk.depthwise_conv2d_backward(dy, x, np.zeros((3, 3, 3, 2), np.float32))
    with pytest.raises(ValueError, match="depth multiplier 0"):
        nk.depthwise_conv2d(x, np.zeros((3, 3, 4, 0), np.float32))
    with pytest.raises(ValueError, match="4-D"):
        nk.depthwise_conv2d(x, w[0])
    with pytest.raises(ValueError, match="bias"):
        nk.depthwise_conv2d(x, w, np.zeros(4, np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        nk.depthwise_conv2d(x, w.astype(np.float64))
    with pytest.raises(ValueError, match="strides"):
        nk.depthwise_conv2d(x, w, strides=0)
    with pytest.raises(ValueError, match="does not fit"):
        nk.depthwise_conv2d(x, w, dilation=4)
    with pytest.raises(ValueError, match=r"dy has shape \(2, 4, 4, 4\), expected \(2, 4, 4, 8\)"):
        nk.depthwise_conv2d_backward(dy[..., :4], x, w)
    with pytest.raises(ValueError, match="needs the forward output y"):
        nk.depthwise_conv2d_backward(dy, x, w, activation="relu")
    with pytest.raises(ValueError, match=r"dw has shape \(3, 3, 1, 8\), expected \(3, 3, 4, 2\)"):
        nk.depthwise_conv2d_backward(dy, x, w, dw=np.zeros((3, 3, 1, 8), np.float32))
    with pytest.raises(ValueError, match="db has shape"):
        nk.depthwise_conv2d_backward(dy, x, w, db=np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        nk.depthwise_conv2d_backward(dy, x, w, dx=x)
    with pytest.raises(ValueError, match="algo"):
        nk.depthwise_conv2d(x, w, algo="fft")
    # algo="depthwise" needs one input channel per group
    with pytest.raises(ValueError, match="depthwise.*one input channel per group"):
        nk.conv2d(x, np.zeros((3, 3, 2, 4), np.float32), groups=2, algo="depthwise")
    with pytest.raises(ValueError, match="depthwise.*one input channel per group"):
        nk.conv2d(x, np.zeros((3, 3, 4, 4), np.float32), algo="depthwise")
    # one input channel and one group: a plain convolution the depthwise kernels can run
    x1 = np.random.default_rng(0).standard_normal((2, 6, 6, 1)).astype(np.float32)
    w1 = np.random.default_rng(1).standard_normal((3, 3, 1, 5)).astype(np.float32)
    np.testing.assert_allclose(nk.conv2d(x1, w1, algo="depthwise"), nk.conv2d(x1, w1),
                               rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------- accumulate

ACC_CASES = [  # every data-gradient path: x shape, w shape, groups, geometry, algo
    ((2, 6, 7, 40), (1, 1, 40, 24), 1, dict(), "im2col"),                       # pointwise GEMM
    ((2, 7, 6, 70), (3, 3, 70, 9), 1, dict(padding="same"), "im2col"),          # full conv GEMM
    ((2, 9, 8, 12), (3, 2, 12, 7), 1, dict(strides=2, padding="same"), "im2col"),  # columns
    ((2, 9, 8, 5), (3, 3, 5, 20), 1, dict(strides=(1, 2), dilation=(2, 1)), "direct"),
    ((2, 8, 9, 20), (3, 3, 20, 24), 1, dict(padding="same"), "winograd"),
    ((2, 8, 9, 24), (3, 3, 8, 12), 3, dict(padding="same"), "auto"),            # groups
    ((2, 8, 9, 24), (3, 3, 1, 24), 24, dict(padding="same"), "auto"),           # depthwise
    ((2, 8, 9, 5), (3, 3, 1, 15), 5, dict(strides=2, padding="same"), "auto"),  # depthwise M=3
]


@pytest.mark.parametrize("dt", DTYPES)
@pytest.mark.parametrize("xs, ws, G, g, algo", ACC_CASES)
def test_accumulate_dx(xs, ws, G, g, algo, dt):
    rng = np.random.default_rng(41)
    x = rng.standard_normal(xs).astype(dt)
    w = rng.standard_normal(ws).astype(dt)
    y = nk.conv2d(x, w, groups=G, activation="relu", algo=algo, **g)
    dy = rng.standard_normal(y.shape).astype(dt)
    fresh = nk.conv2d_backward_data(dy, w, xs, groups=G, activation="relu", y=y, algo=algo, **g)
    prev = rng.standard_normal(xs).astype(dt)
    scale = np.abs(prev.astype(np.float64)) + np.abs(fresh)
    out = prev.copy()
    r = nk.conv2d_backward_data(dy, w, xs, groups=G, activation="relu", y=y, algo=algo,
                                out=out, accumulate=True, **g)
    assert r is out
    close(out, prev.astype(np.float64) + fresh, scale, dt, 4 * np.prod(ws[:2]) * ws[3],
          "dx += (conv2d_backward_data)")
    dx = prev.copy()
    got = nk.conv2d_backward(dy, x, w, groups=G, activation="relu", y=y, algo=algo, dx=dx,
                             accumulate_dx=True, **g)
    assert got[0] is dx
    assert_bitwise_equal(dx, out, "dx += (conv2d_backward)")
    if G == xs[3] and G > 1:
        dxd = prev.copy()
        nk.depthwise_conv2d_backward(dy, x, w.reshape(ws[0], ws[1], G, -1), activation="relu",
                                     y=y, dx=dxd, accumulate_dx=True, **g)
        assert_bitwise_equal(dxd, out, "dx += (depthwise_conv2d_backward)")


def test_accumulate_split_columns_and_empty():
    """Column tiles that split images scatter-add into dx (no zeroing pass
    when accumulating); an empty batch; the argument errors."""
    rng = np.random.default_rng(42)
    x = rng.standard_normal((3, 9, 10, 5))
    w = rng.standard_normal((3, 2, 5, 7))
    g = dict(strides=(2, 3), padding="same")
    dy = rng.standard_normal(nk.conv2d_output_shape(x.shape, w.shape, **g))
    fresh = nk.conv2d_backward_data(dy, w, x.shape, algo="im2col", **g)
    prev = rng.standard_normal(x.shape)
    try:
        nk._core._set_conv_col_budget(8 * 30 * 7)
        out = prev.copy()
        nk.conv2d_backward_data(dy, w, x.shape, algo="im2col", out=out, accumulate=True, **g)
    finally:
        nk._core._set_conv_col_budget(0)
    np.testing.assert_allclose(out, prev + fresh, rtol=1e-12, atol=1e-12)
    out0 = np.ones((0, 9, 10, 5))
    nk.conv2d_backward_data(np.zeros((0,) + dy.shape[1:]), w, out0.shape, out=out0,
                            accumulate=True, **g)
    with pytest.raises(ValueError, match="accumulate=True needs out"):
        nk.conv2d_backward_data(dy, w, x.shape, accumulate=True, **g)
    with pytest.raises(ValueError, match="accumulate_dx=True needs"):
        nk.conv2d_backward(dy, x, w, accumulate_dx=True, **g)
    with pytest.raises(ValueError, match="accumulate_dx=True needs"):
        nk.conv2d_backward(dy, x, w, accumulate_dx=True, need_dx=False, dx=prev.copy(), **g)

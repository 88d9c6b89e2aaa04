"""Average pooling, global average / max pooling, nearest upsampling, zero
padding and cropping (NHWC): forward and backward against NumPy float64
references, on every ISA path and with 1 and 2 threads; bitwise identity
across paths and thread counts; finite-difference gradient checks; argument
errors."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_bitwise_equal, assert_close, isa, threads

F64 = np.float64
ISAS = nk.available_isas()
DTYPES = ("float32", "float64")
THREADS = (1, 2)


# ------------------------------------------------------------ references --

def geometry(H, W, pool, strides, padding):
    """(OH, OW, pad_top, pad_left), Keras/TF rules."""
    (ph, pw), (sh, sw) = pool, strides
    if padding == "valid":
        return (H - ph) // sh + 1, (W - pw) // sw + 1, 0, 0
    OH, OW = -(-H // sh), -(-W // sw)
    pt = max((OH - 1) * sh + ph - H, 0) // 2
    pl = max((OW - 1) * sw + pw - W, 0) // 2
    return OH, OW, pt, pl


def windows(x_shape, pool, strides, padding):
    """Yields (oh, ow, rows slice, cols slice) of the in-bounds windows."""
    _, H, W, _ = x_shape
    OH, OW, pt, pl = geometry(H, W, pool, strides, padding)
    for oh in range(OH):
        h0 = oh * strides[0] - pt
        for ow in range(OW):
            w0 = ow * strides[1] - pl
            yield (oh, ow, slice(max(h0, 0), min(h0 + pool[0], H)),
                   slice(max(w0, 0), min(w0 + pool[1], W)))


def ref_avg_pool(x, pool, strides, padding):
    """Mean over the in-bounds part of each window, float64."""
    X = np.asarray(x, F64)
    N, H, W, C = X.shape
    OH, OW, _, _ = geometry(H, W, pool, strides, padding)
    y = np.empty((N, OH, OW, C))
    for oh, ow, hs, ws in windows(X.shape, pool, strides, padding):
        y[:, oh, ow, :] = X[:, hs, ws, :].mean(axis=(1, 2))
    return y


def ref_avg_pool_backward(dy, x_shape, pool, strides, padding):
    DY = np.asarray(dy, F64)
    dx = np.zeros(x_shape)
    for oh, ow, hs, ws in windows(x_shape, pool, strides, padding):
        k = (hs.stop - hs.start) * (ws.stop - ws.start)
        dx[:, hs, ws, :] += (DY[:, oh, ow, :] / k)[:, None, None, :]
    return dx


def ref_global_max(x):
    """(max, index of the first maximum, NaN winning) via np.argmax."""
    N, H, W, C = x.shape
    flat = x.reshape(N, H * W, C)
    idx = np.argmax(flat, axis=1).astype(np.int32)  # first max; first NaN if any
    return np.take_along_axis(flat, idx[:, None, :], axis=1)[:, 0, :], idx


def ref_global_max_backward(dy, idx, x_shape):
    N, H, W, C = x_shape
    dx = np.zeros((N, H * W, C), dy.dtype)
    np.put_along_axis(dx, idx[:, None, :].astype(np.int64), dy[:, None, :], axis=1)
    return dx.reshape(x_shape)


def ref_upsample(x, size):
    return np.repeat(np.repeat(np.asarray(x), size[0], axis=1), size[1], axis=2)


def ref_upsample_backward(dy, size):
    N, OH, OW, C = dy.shape
    return np.asarray(dy, F64).reshape(N, OH // size[0], size[0], OW // size[1], size[1],
                                       C).sum(axis=(2, 4))


# ------------------------------------------------------------ strategies --

LAYOUTS4 = ("C", "strided", "negative", "channel_offset", "nchw")


def with_layout4(values, layout):
    """An array equal to `values` (4-D) with the given memory layout; memory
    around a view is NaN (a kernel reading outside it would show NaN)."""
    v = np.asarray(values)
    N, H, W, C = v.shape
    if layout == "C":
        return np.ascontiguousarray(v)
    if layout == "strided":
        big = np.full((N, 2 * H, W, 2 * C + 1), np.nan, v.dtype)
        view = big[:, ::2, :, 1::2]
    elif layout == "negative":
        big = np.full(v.shape, np.nan, v.dtype)
        view = big[::-1, :, ::-1, ::-1]
    elif layout == "channel_offset":
        big = np.full((N, H, W, C + 1), np.nan, v.dtype)
        view = big[..., 1:]
    elif layout == "nchw":
        big = np.full((N, C, H, W), np.nan, v.dtype)
        view = big.transpose(0, 2, 3, 1)
    else:
        raise ValueError(layout)
    view[...] = v
    assert view.shape == v.shape
    return view


SPATIAL = st.one_of(st.sampled_from([1, 2, 3, 5, 7, 11, 13]), st.integers(1, 12))
CHANNELS = st.sampled_from([1, 2, 3, 5, 7, 13, 16, 17, 31, 33, 64, 67, 130])


@st.composite
def nhwc_cases(draw, max_batch=3):
    shape = (draw(st.integers(1, max_batch)), draw(SPATIAL), draw(SPATIAL), draw(CHANNELS))
    return dict(shape=shape, dtype=draw(st.sampled_from(DTYPES)),
                layout=draw(st.sampled_from(LAYOUTS4)), seed=draw(st.integers(0, 2**32 - 1)),
                isa=draw(st.sampled_from(ISAS)), threads=draw(st.sampled_from(THREADS)),
                given_out=draw(st.booleans()))


def build(case, shape=None, kind="normal"):
    rng = np.random.default_rng(case["seed"])
    shape = case["shape"] if shape is None else shape
    if kind == "ties":
        v = rng.integers(-2, 3, size=shape).astype(case["dtype"])
    else:
        v = rng.standard_normal(shape).astype(case["dtype"])
    return rng, with_layout4(v, case["layout"])


def nan_out(shape, dtype):
    """A preallocated output full of NaN: every element must be overwritten."""
    return np.full(shape, np.nan, dtype)


def pool_args(draw, shape):
    _, H, W, _ = shape
    pool = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    strides = draw(st.one_of(st.none(), st.tuples(st.integers(1, 4), st.integers(1, 4))))
    padding = draw(st.sampled_from(["valid", "same"]))
    return pool, strides, padding


# --------------------------------------------------------- average pooling --

@given(case=nhwc_cases(), data=st.data())
def test_avg_pool_matches_reference(case, data):
    rng, x = build(case)
    pool, strides, padding = pool_args(data.draw, x.shape)
    N, H, W, C = x.shape
    if padding == "valid":  # the pool must fit
        pool = (min(pool[0], H), min(pool[1], W))
    st_ = pool if strides is None else strides
    dt = np.dtype(case["dtype"])
    OH, OW, _, _ = geometry(H, W, pool, st_, padding)
    assert nk.max_pool2d_output_shape(x.shape, pool, strides, padding) == (N, OH, OW, C)
    with isa(case["isa"]), threads(case["threads"]):
        out = nan_out((N, OH, OW, C), dt) if case["given_out"] else None
        y = nk.avg_pool2d(x, pool, strides, padding, out=out)
        if out is not None:
            assert y is out
        assert y.dtype == dt and y.shape == (N, OH, OW, C) and y.flags.c_contiguous
        assert_close(y, ref_avg_pool(x, pool, st_, padding),
                     ref_avg_pool(np.abs(x.astype(F64)), pool, st_, padding), dt,
                     pool[0] * pool[1], "avg_pool2d")
        dy = with_layout4(rng.standard_normal((N, OH, OW, C)).astype(dt), case["layout"])
        out = nan_out(x.shape, dt) if case["given_out"] else None
        dx = nk.avg_pool2d_backward(dy, x.shape, pool, strides, padding, out=out)
        if out is not None:
            assert dx is out
        k = -(-pool[0] // st_[0]) * -(-pool[1] // st_[1])  # windows covering one element
        assert_close(dx, ref_avg_pool_backward(dy, x.shape, pool, st_, padding),
                     ref_avg_pool_backward(np.abs(dy.astype(F64)), x.shape, pool, st_, padding),
                     dt, k, "avg_pool2d_backward")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_avg_pool_same_padding_not_counted(isa_name, dtype):
    """Keras/TF "same": the divisor is the number of in-bounds elements."""
    x = np.ones((1, 5, 5, 3), dtype)
    with isa(isa_name):
        y = nk.avg_pool2d(x, 3, 2, "same")  # OH = 3, total pad 2: one row each side
        assert (y == 1).all()
        x = np.arange(25, dtype=dtype).reshape(1, 5, 5, 1)
        y = nk.avg_pool2d(x, 2, 2, "same")  # 3x3 output, last row/col window of 1 row/col
        assert y[0, 2, 2, 0] == 24 and y[0, 0, 2, 0] == (4 + 9) / 2 and y[0, 0, 0, 0] == 3
        dx = nk.avg_pool2d_backward(np.ones((1, 3, 3, 1), dtype), x.shape, 2, 2, "same")
        assert dx[0, 4, 4, 0] == 1 and dx[0, 0, 4, 0] == 0.5 and dx[0, 0, 0, 0] == 0.25
        # valid with a remainder: uncovered elements get zero gradient
        dx = nk.avg_pool2d_backward(np.ones((1, 2, 2, 1), dtype), x.shape, 2)
        assert (dx[0, 4, :, 0] == 0).all() and (dx[0, :, 4, 0] == 0).all()
        assert (dx[0, :4, :4, 0] == 0.25).all()


# ---------------------------------------------------------- global pooling --

@given(case=nhwc_cases(), kind=st.sampled_from(["normal", "ties", "nan"]))
def test_global_pools_match_reference(case, kind):
    rng, x = build(case, kind="ties" if kind == "ties" else "normal")
    if kind == "nan":
        vals = np.array(x)
        vals[rng.random(vals.shape) < 0.05] = np.nan
        x = with_layout4(vals, case["layout"])
    N, H, W, C = x.shape
    dt = np.dtype(case["dtype"])
    xc = np.ascontiguousarray(x)
    with isa(case["isa"]), threads(case["threads"]):
        out = nan_out((N, C), dt) if case["given_out"] else None
        y = nk.global_avg_pool2d(x, out=out)
        assert out is None or y is out
        assert_close(y, xc.astype(F64).mean(axis=(1, 2)),
                     np.abs(xc.astype(F64)).mean(axis=(1, 2)), dt, 1, "global_avg_pool2d")
        dy = rng.standard_normal((N, C)).astype(dt)
        out = nan_out(x.shape, dt) if case["given_out"] else None
        dx = nk.global_avg_pool2d_backward(dy, x.shape, out=out)
        assert out is None or dx is out
        ref = np.broadcast_to((dy.astype(F64) / (H * W))[:, None, None, :], x.shape)
        assert_close(dx, ref, np.abs(ref), dt, 1, "global_avg_pool2d_backward")

        if case["given_out"]:
            out, idx_out = nan_out((N, C), dt), np.full((N, C), -7, np.int32)
            y, idx = nk.global_max_pool2d(x, out=out, indices=idx_out)
            assert y is out and idx is idx_out
        else:
            y, idx = nk.global_max_pool2d(x)
        y_ref, idx_ref = ref_global_max(xc)
        assert idx.dtype == np.int32
        np.testing.assert_array_equal(idx, idx_ref)
        assert_bitwise_equal(y, y_ref, "global_max_pool2d")
        out = nan_out(x.shape, dt) if case["given_out"] else None
        dx = nk.global_max_pool2d_backward(dy, idx, x.shape, out=out)
        assert out is None or dx is out
        assert_bitwise_equal(dx, ref_global_max_backward(dy, idx_ref, x.shape),
                             "global_max_pool2d_backward")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_global_max_ties_and_nan(isa_name, dtype):
    x = np.zeros((2, 3, 4, 19), dtype)
    x[0, 1, 2, 0] = 5.0
    x[0, 2, 3, 0] = 5.0           # tie: the first (row-major) wins
    x[0, 0, 1, 1] = 1.0
    x[0, 2, 0, 1] = np.nan        # NaN after a larger number still wins
    x[0, 1, 0, 2] = np.nan
    x[0, 2, 2, 2] = np.nan        # two NaNs: the first wins
    x[1] = -np.inf                # all -inf: index 0
    with isa(isa_name):
        y, idx = nk.global_max_pool2d(x)
    assert y[0, 0] == 5 and idx[0, 0] == 1 * 4 + 2
    assert np.isnan(y[0, 1]) and idx[0, 1] == 2 * 4 + 0
    assert np.isnan(y[0, 2]) and idx[0, 2] == 1 * 4 + 0
    assert (y[0, 3:] == 0).all() and (idx[0, 3:] == 0).all()
    assert np.isneginf(y[1]).all() and (idx[1] == 0).all()


# -------------------------------------------------------------- upsampling --

@given(case=nhwc_cases(), size=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       as_int=st.booleans())
def test_upsample_matches_reference(case, size, as_int):
    rng, x = build(case)
    if as_int:
        size = (size[0], size[0])
    arg = size[0] if as_int else size
    N, H, W, C = x.shape
    dt = np.dtype(case["dtype"])
    oshape = (N, H * size[0], W * size[1], C)
    with isa(case["isa"]), threads(case["threads"]):
        out = nan_out(oshape, dt) if case["given_out"] else None
        y = nk.upsample2d_nearest(x, arg, out=out)
        assert out is None or y is out
        assert_bitwise_equal(y, ref_upsample(x, size), "upsample2d_nearest")
        dy = with_layout4(rng.standard_normal(oshape).astype(dt), case["layout"])
        out = nan_out(x.shape, dt) if case["given_out"] else None
        dx = nk.upsample2d_nearest_backward(dy, arg, out=out)
        assert out is None or dx is out
        assert_close(dx, ref_upsample_backward(dy, size),
                     ref_upsample_backward(np.abs(dy.astype(F64)), size), dt,
                     size[0] * size[1], "upsample2d_nearest_backward")


# ------------------------------------------------------ padding / cropping --

@st.composite
def borders(draw, max_value=4):
    form = draw(st.sampled_from(["int", "pair", "pairs"]))
    v = st.integers(0, max_value)
    if form == "int":
        p = draw(v)
        return p, ((p, p), (p, p))
    if form == "pair":
        a, b = draw(v), draw(v)
        return (a, b), ((a, a), (b, b))
    t = ((draw(v), draw(v)), (draw(v), draw(v)))
    return t, t


@given(case=nhwc_cases(), border=borders())
def test_pad_crop_match_reference(case, border):
    rng, x = build(case)
    arg, ((t, b), (l, r)) = border
    N, H, W, C = x.shape
    dt = np.dtype(case["dtype"])
    oshape = (N, H + t + b, W + l + r, C)
    with isa(case["isa"]), threads(case["threads"]):
        out = nan_out(oshape, dt) if case["given_out"] else None
        y = nk.pad2d(x, arg, out=out)
        assert out is None or y is out
        assert_bitwise_equal(y, np.pad(x, ((0, 0), (t, b), (l, r), (0, 0))), "pad2d")
        # crop is pad's backward (and its inverse)
        dy = with_layout4(rng.standard_normal(oshape).astype(dt), case["layout"])
        out = nan_out(x.shape, dt) if case["given_out"] else None
        dx = nk.crop2d(dy, arg, out=out)
        assert out is None or dx is out
        assert_bitwise_equal(dx, dy[:, t:t + H, l:l + W, :], "crop2d")
        assert_bitwise_equal(nk.crop2d(y, arg), x, "crop2d(pad2d(x))")
        if t + b <= H and l + r <= W:  # cropping x itself (possibly to nothing)
            c = nk.crop2d(x, arg)
            assert_bitwise_equal(c, x[:, t:H - b, l:W - r, :], "crop2d(x)")
            assert_bitwise_equal(nk.pad2d(c, arg),
                                 np.pad(x[:, t:H - b, l:W - r, :], ((0, 0), (t, b), (l, r), (0, 0))),
                                 "pad2d(crop2d(x))")


# ------------------------------------------- every path, thread counts ----

def run_all(x, rng_seed):
    """Every kernel of this module on x (results as a list of arrays)."""
    rng = np.random.default_rng(rng_seed)
    dt = x.dtype
    res = []
    for pool, strides, padding in [((3, 3), (2, 2), "same"), ((2, 2), None, "valid"),
                                   ((3, 2), (1, 3), "valid")]:
        y = nk.avg_pool2d(x, pool, strides, padding)
        dy = rng.standard_normal(y.shape).astype(dt)
        res += [y, nk.avg_pool2d_backward(dy, x.shape, pool, strides, padding)]
    N, H, W, C = x.shape
    dy = rng.standard_normal((N, C)).astype(dt)
    y, idx = nk.global_max_pool2d(x)
    res += [nk.global_avg_pool2d(x), nk.global_avg_pool2d_backward(dy, x.shape), y, idx,
            nk.global_max_pool2d_backward(dy, idx, x.shape)]
    y = nk.upsample2d_nearest(x, (2, 3))
    res += [y, nk.upsample2d_nearest_backward(rng.standard_normal(y.shape).astype(dt), (2, 3))]
    y = nk.pad2d(x, ((1, 2), (3, 0)))
    res += [y, nk.crop2d(y, ((2, 1), (0, 3)))]
    return res


@pytest.mark.parametrize("shape", [(6, 23, 21, 37), (1, 64, 64, 40), (2, 31, 17, 130)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_isa_paths_and_threads_bitwise_identical(shape, dtype):
    """Large enough for 2 threads to split the work (rows, or channel blocks
    of the global passes for a batch of one)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    x[rng.random(shape) < 0.002] = np.nan
    x[rng.random(shape) < 0.1] = 0.5  # ties
    first = None
    for name in ISAS:
        for nt in THREADS:
            with isa(name), threads(nt):
                res = run_all(x, 1)
            if first is None:
                first = res
                continue
            for i, (a, b) in enumerate(zip(first, res)):
                if a.dtype == np.int32:
                    np.testing.assert_array_equal(a, b, f"indices on {name} with {nt} threads")
                else:
                    assert_bitwise_equal(a, b, f"result {i} on {name} with {nt} threads")


# ---------------------------------------------------------- gradient checks --

def check_directional(f, backward, x, rng, eps=1e-3, rtol=1e-7):
    """<backward(g), d> == d/dt sum(f(x + t d) * g) at 0 (central difference;
    exact up to rounding for the linear maps, and for max away from ties)."""
    y = f(x)
    g = rng.standard_normal(y.shape)
    dx = backward(g)
    assert dx.shape == x.shape
    for _ in range(2):
        d = rng.standard_normal(x.shape)
        num = (np.sum(f(x + eps * d) * g) - np.sum(f(x - eps * d) * g)) / (2 * eps)
        ana = np.sum(dx * d)
        assert np.isclose(num, ana, rtol=rtol, atol=1e-9), (num, ana)
    # exhaustive on a few coordinates
    for k in rng.choice(x.size, min(x.size, 6), replace=False):
        e = np.zeros(x.shape)
        e.flat[k] = 1.0
        num = (np.sum(f(x + eps * e) * g) - np.sum(f(x - eps * e) * g)) / (2 * eps)
        assert np.isclose(num, dx.flat[k], rtol=rtol, atol=1e-9), (k, num, dx.flat[k])


@pytest.mark.parametrize("pool,strides,padding", [
    ((2, 2), None, "valid"), ((3, 3), (2, 2), "same"), ((3, 2), (1, 2), "same"),
    ((2, 3), (3, 1), "valid"), ((4, 1), (1, 1), "same")])
def test_avg_pool_gradient(pool, strides, padding):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 7, 6, 5))
    check_directional(lambda z: nk.avg_pool2d(z, pool, strides, padding),
                      lambda g: nk.avg_pool2d_backward(g, x.shape, pool, strides, padding),
                      x, rng)


def test_global_pool_gradients():
    rng = np.random.default_rng(2)
    shape = (3, 5, 7, 4)
    x = rng.standard_normal(shape)
    check_directional(nk.global_avg_pool2d,
                      lambda g: nk.global_avg_pool2d_backward(g, shape), x, rng)
    # well separated values: no tie or kink within eps
    x = rng.permutation(np.prod(shape)).reshape(shape) * 0.1
    _, idx = nk.global_max_pool2d(x)
    check_directional(lambda z: nk.global_max_pool2d(z)[0],
                      lambda g: nk.global_max_pool2d_backward(g, idx, shape), x, rng)


@pytest.mark.parametrize("size", [(2, 2), (1, 3), (3, 1)])
def test_upsample_gradient(size):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4, 5, 3))
    check_directional(lambda z: nk.upsample2d_nearest(z, size),
                      lambda g: nk.upsample2d_nearest_backward(g, size), x, rng)


@pytest.mark.parametrize("border", [((1, 2), (0, 3)), 1, (0, 2)])
def test_pad_crop_gradients(border):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 5, 6, 3))
    check_directional(lambda z: nk.pad2d(z, border), lambda g: nk.crop2d(g, border), x, rng)
    check_directional(lambda z: nk.crop2d(z, border), lambda g: nk.pad2d(g, border), x, rng)


# ------------------------------------------------------------ empty shapes --

def test_empty_shapes():
    for dt in DTYPES:
        assert nk.avg_pool2d(np.zeros((0, 4, 4, 3), dt)).shape == (0, 2, 2, 3)
        assert nk.avg_pool2d(np.zeros((2, 4, 4, 0), dt), padding="same").shape == (2, 2, 2, 0)
        assert nk.avg_pool2d(np.zeros((2, 0, 4, 3), dt), padding="same").shape == (2, 0, 2, 3)
        assert nk.avg_pool2d_backward(np.zeros((0, 2, 2, 3), dt), (0, 4, 4, 3)).shape == (0, 4, 4, 3)
        assert nk.global_avg_pool2d(np.zeros((0, 3, 3, 2), dt)).shape == (0, 2)
        assert nk.global_avg_pool2d(np.zeros((2, 0, 3, 0), dt)).shape == (2, 0)
        assert nk.global_avg_pool2d_backward(np.zeros((2, 3), dt), (2, 0, 4, 3)).shape == (2, 0, 4, 3)
        y, idx = nk.global_max_pool2d(np.zeros((0, 3, 3, 2), dt))
        assert y.shape == idx.shape == (0, 2)
        assert nk.global_max_pool2d_backward(np.zeros((0, 2), dt), np.zeros((0, 2), np.int32),
                                             (0, 3, 3, 2)).shape == (0, 3, 3, 2)
        assert nk.upsample2d_nearest(np.zeros((1, 0, 3, 2), dt), 3).shape == (1, 0, 9, 2)
        assert nk.upsample2d_nearest_backward(np.zeros((1, 0, 9, 2), dt), 3).shape == (1, 0, 3, 2)
        y = nk.pad2d(np.zeros((2, 0, 3, 2), dt), ((1, 1), (0, 2)))
        assert y.shape == (2, 2, 5, 2) and (y == 0).all()
        y = nk.pad2d(np.zeros((2, 3, 0, 2), dt), 1)
        assert y.shape == (2, 5, 2, 2) and (y == 0).all()
        assert nk.crop2d(np.ones((2, 3, 4, 2), dt), ((1, 2), (2, 2))).shape == (2, 0, 0, 2)


# ---------------------------------------------------------------- errors --

def test_avg_pool_errors():
    x = np.zeros((2, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        nk.avg_pool2d(np.zeros((6, 6, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.avg_pool2d(x.astype(np.int32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.avg_pool2d(x.astype(">f4"))
    for bad in [0, -1, (2, 0), (1, 2, 3), 2**31]:
        with pytest.raises(ValueError, match="pool_size"):
            nk.avg_pool2d(x, bad)
    for bad in [True, "2", 2.0, (2, 2.0), None]:
        with pytest.raises((TypeError, ValueError), match="pool_size"):
            nk.avg_pool2d(x, bad)
    with pytest.raises(ValueError, match="strides"):
        nk.avg_pool2d(x, 2, (0, 1))
    for bad in ["full", None, 1]:
        with pytest.raises(ValueError, match="padding"):
            nk.avg_pool2d(x, 2, padding=bad)
    with pytest.raises(ValueError, match="larger than the input"):
        nk.avg_pool2d(x, (7, 2))
    with pytest.raises(ValueError, match="shape"):
        nk.avg_pool2d(x, 2, out=np.empty((2, 3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        nk.avg_pool2d(x, 2, out=np.empty((2, 3, 3, 3), np.float64))
    with pytest.raises(TypeError, match="ndarray"):
        nk.avg_pool2d(x, 2, out=[[0.0]])
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.avg_pool2d(x, 2, out=np.empty((2, 3, 3, 6), np.float32)[..., ::2])
    raw = np.empty(2 * 3 * 3 * 3 * 4 + 1, np.uint8)[1:].view(np.float32).reshape(2, 3, 3, 3)
    with pytest.raises(ValueError, match="aligned"):
        nk.avg_pool2d(x, 2, out=raw)
    ro = np.empty((2, 3, 3, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nk.avg_pool2d(x, 2, out=ro)
    with pytest.raises(ValueError, match="overlaps"):
        nk.avg_pool2d(x, 2, out=x.reshape(-1)[:54].reshape(2, 3, 3, 3))

    dy = np.zeros((2, 3, 3, 3), np.float32)
    with pytest.raises(ValueError, match="expected|shape"):
        nk.avg_pool2d_backward(dy, x.shape, 3)
    with pytest.raises(ValueError, match="shape"):
        nk.avg_pool2d_backward(dy, (2, 6, 6, 4))
    with pytest.raises(ValueError, match="4 entries"):
        nk.avg_pool2d_backward(dy, (2, 6, 6))
    with pytest.raises(TypeError, match="x_shape"):
        nk.avg_pool2d_backward(dy, 6)
    with pytest.raises(TypeError, match="x_shape"):
        nk.avg_pool2d_backward(dy, (2, 6.0, 6, 3))
    with pytest.raises(ValueError, match="negative"):
        nk.avg_pool2d_backward(dy, (2, -6, 6, 3))
    with pytest.raises(ValueError, match="padding"):
        nk.avg_pool2d_backward(dy, x.shape, 2, None, "full")
    with pytest.raises(TypeError, match="dtype"):
        nk.avg_pool2d_backward(dy, x.shape, out=np.empty(x.shape))
    with pytest.raises(ValueError, match="shape"):
        nk.avg_pool2d_backward(dy, x.shape, out=np.empty((2, 6, 6, 4), np.float32))
    big = np.zeros((2, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nk.avg_pool2d_backward(big.reshape(-1)[:54].reshape(2, 3, 3, 3), x.shape, out=big)


def test_global_pool_errors():
    x = np.zeros((2, 4, 5, 3))
    with pytest.raises(ValueError, match="4-D"):
        nk.global_avg_pool2d(np.zeros((4, 5, 3)))
    with pytest.raises(ValueError, match="H\\*W > 0"):
        nk.global_avg_pool2d(np.zeros((2, 0, 5, 3)))
    with pytest.raises(ValueError, match="H\\*W > 0"):
        nk.global_max_pool2d(np.zeros((2, 4, 0, 3)))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.global_max_pool2d(x.astype(np.float16))
    with pytest.raises(ValueError, match="shape"):
        nk.global_avg_pool2d(x, out=np.empty((2, 4)))
    with pytest.raises(ValueError, match="overlaps"):
        nk.global_avg_pool2d(x, out=x.reshape(-1)[:6].reshape(2, 3))
    with pytest.raises(TypeError, match="int32"):
        nk.global_max_pool2d(x, indices=np.empty((2, 3), np.int64))
    with pytest.raises(TypeError, match="ndarray"):
        nk.global_max_pool2d(x, indices=[[0, 0, 0]] * 2)
    out = np.empty((2, 3))
    with pytest.raises(ValueError, match="overlaps"):
        nk.global_max_pool2d(x, out=out, indices=out.view(np.int32).reshape(-1)[:6].reshape(2, 3))

    dy = np.zeros((2, 3))
    with pytest.raises(ValueError, match="2-D"):
        nk.global_avg_pool2d_backward(dy[None], x.shape)
    with pytest.raises(ValueError, match="expected"):
        nk.global_avg_pool2d_backward(dy, (2, 4, 5, 4))
    with pytest.raises(ValueError, match="4 entries"):
        nk.global_avg_pool2d_backward(dy, (2, 4, 5))
    with pytest.raises(TypeError, match="dtype"):
        nk.global_avg_pool2d_backward(dy, x.shape, out=np.empty(x.shape, np.float32))

    _, idx = nk.global_max_pool2d(x)
    with pytest.raises(TypeError, match="int32"):
        nk.global_max_pool2d_backward(dy, idx.astype(np.int64), x.shape)
    with pytest.raises(TypeError, match="ndarray"):
        nk.global_max_pool2d_backward(dy, idx.tolist(), x.shape)
    with pytest.raises(ValueError, match="shape"):
        nk.global_max_pool2d_backward(dy, idx[:, :2], x.shape)
    with pytest.raises(ValueError, match="expected"):
        nk.global_max_pool2d_backward(dy, idx, (3, 4, 5, 3))
    with pytest.raises(ValueError, match="int32"):
        nk.global_max_pool2d_backward(dy, idx, (2, 2**16, 2**16, 3))
    with pytest.raises(ValueError, match="overlaps"):
        nk.global_max_pool2d_backward(dy, idx, (2, 1, 1, 3), out=dy.reshape(2, 1, 1, 3))
    for bad in (-1, 20, 2**31 - 1, -2**31):
        i2 = idx.copy()
        i2[1, 2] = bad
        with pytest.raises(ValueError, match="outside"):
            nk.global_max_pool2d_backward(dy, i2, x.shape)
    with pytest.raises(ValueError, match="outside"):
        nk.global_max_pool2d_backward(dy, idx, (2, 0, 5, 3))
    # a non-contiguous index array is copied, not rejected
    i3 = np.zeros((2, 6), np.int32)[:, ::2]
    dx = nk.global_max_pool2d_backward(np.ones((2, 3)), i3, x.shape)
    assert (dx[:, 0, 0] == 1).all() and dx.sum() == 6


def test_upsample_errors():
    x = np.zeros((2, 3, 4, 5), np.float32)
    for bad in [0, -2, (2, 0), (1, 2, 3), 2**31]:
        with pytest.raises(ValueError, match="size"):
            nk.upsample2d_nearest(x, bad)
    for bad in [True, 2.0, "2", None]:
        with pytest.raises((TypeError, ValueError), match="size"):
            nk.upsample2d_nearest(x, bad)
    with pytest.raises(ValueError, match="4-D"):
        nk.upsample2d_nearest(x[0])
    with pytest.raises(ValueError, match="shape"):
        nk.upsample2d_nearest(x, 2, out=np.empty((2, 6, 8, 4), np.float32))
    with pytest.raises(ValueError, match="multiples"):
        nk.upsample2d_nearest_backward(np.zeros((2, 5, 4, 3)), 2)
    with pytest.raises(ValueError, match="multiples"):
        nk.upsample2d_nearest_backward(np.zeros((2, 4, 4, 3)), (2, 3))
    with pytest.raises(TypeError, match="dtype"):
        nk.upsample2d_nearest_backward(np.zeros((2, 4, 4, 3)), 2, out=np.empty((2, 2, 2, 3), np.float32))
    y = np.zeros((2, 4, 4, 3))
    with pytest.raises(ValueError, match="overlaps"):
        nk.upsample2d_nearest_backward(y, 2, out=y.reshape(-1)[:24].reshape(2, 2, 2, 3))
    with pytest.raises(ValueError, match="overlaps"):
        nk.upsample2d_nearest(y, 1, out=y)


def test_pad_crop_errors():
    x = np.zeros((2, 3, 4, 5))
    for fn, name in ((nk.pad2d, "padding"), (nk.crop2d, "cropping")):
        for bad in [-1, (1, -1), ((0, 1), (2, -3)), ((0, 1), (2,)), (1, 2, 3), 2**40]:
            with pytest.raises(ValueError, match=name):
                fn(x, bad)
        for bad in [None, 1.0, "1", True, ((0, 1), (2, 3.0)), ((0, 1), 2)]:
            with pytest.raises(TypeError, match=name):
                fn(x, bad)
        with pytest.raises(ValueError, match="4-D"):
            fn(x[0], 1)
        with pytest.raises(TypeError, match="float32 or float64"):
            fn(x.astype(np.int64), 1)
    with pytest.raises(ValueError, match="removes more"):
        nk.crop2d(x, ((2, 2), (0, 0)))
    with pytest.raises(ValueError, match="removes more"):
        nk.crop2d(x, (0, 3))
    with pytest.raises(ValueError, match="shape"):
        nk.pad2d(x, 1, out=np.empty((2, 5, 5, 5)))
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.pad2d(x, 1, out=np.empty((2, 5, 6, 10))[..., ::2])
    big = np.zeros((2, 5, 6, 5))
    with pytest.raises(ValueError, match="overlaps"):
        nk.crop2d(big, 1, out=big.reshape(-1)[:120].reshape(2, 3, 4, 5))
    with pytest.raises(ValueError, match="overlaps"):
        nk.pad2d(x, 0, out=x)

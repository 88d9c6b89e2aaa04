"""conv2d_maxpool: a convolution followed by 2x2 stride-2 max pooling in one
call (pooled inside Winograd's output transform where the forward pass runs
there).  It must give max_pool2d(conv2d(...)) bit for bit -- values and
indices, NaN included -- on every ISA path, 1 and 2 threads, float32 /
float64 / bfloat16 products, with and without the convolution's output y;
and the values agree with the NumPy references of both."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_bitwise_equal, isa, ref_conv, threads
from test_pool import ref_max_pool

ISAS = nk.available_isas()


@st.composite
def cases(draw):
    n = draw(st.integers(1, 3))
    h = draw(st.sampled_from([2, 3, 5, 7, 8, 11, 13]))
    w = draw(st.sampled_from([2, 3, 4, 7, 10, 13]))
    c = draw(st.sampled_from([1, 3, 16, 17, 32, 33, 40]))
    f = draw(st.sampled_from([1, 8, 16, 17, 33, 64]))
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 1, 2]))
    padding = draw(st.sampled_from(["valid", "same"]))
    if padding == "valid":
        oh, ow = (h - k) // stride + 1, (w - k) // stride + 1
    else:
        oh, ow = -(-h // stride), -(-w // stride)
    assume(oh >= 2 and ow >= 2)
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    precision = draw(st.sampled_from([None, "bfloat16"])) if dtype == np.float32 else None
    return dict(n=n, h=h, w=w, c=c, f=f, k=k, stride=stride, padding=padding, dtype=dtype,
                precision=precision, relu=draw(st.booleans()), bias=draw(st.booleans()),
                nan=draw(st.booleans()), give_y=draw(st.booleans()),
                isa=draw(st.sampled_from(ISAS)), threads=draw(st.sampled_from([1, 2])),
                seed=draw(st.integers(0, 2**31)))


def _operands(cs):
    rng = np.random.default_rng(cs["seed"])
    dt = cs["dtype"]
    x = rng.standard_normal((cs["n"], cs["h"], cs["w"], cs["c"])).astype(dt)
    if cs["nan"]:
        x[0, rng.integers(cs["h"]), rng.integers(cs["w"]), rng.integers(cs["c"])] = np.nan
    wt = (rng.standard_normal((cs["k"], cs["k"], cs["c"], cs["f"])) * 0.3).astype(dt)
    b = rng.standard_normal(cs["f"]).astype(dt) if cs["bias"] else None
    kw = dict(strides=cs["stride"], padding=cs["padding"],
              activation="relu" if cs["relu"] else None, precision=cs["precision"])
    return x, wt, b, kw


@given(cs=cases())
def test_conv2d_maxpool_is_conv_then_pool_bitwise(cs):
    x, wt, b, kw = _operands(cs)
    with isa(cs["isa"]), threads(cs["threads"]):
        y = nk.conv2d(x, wt, b, **kw)
        ref_p, ref_i = nk.max_pool2d(y, (2, 2))
        y_out = np.full_like(y, 7.0) if cs["give_y"] else None
        p, i = nk.conv2d_maxpool(x, wt, b, y=y_out, **kw)
    assert p.dtype == ref_p.dtype
    assert_bitwise_equal(p, ref_p, "pooled values")
    np.testing.assert_array_equal(i, ref_i)
    if y_out is not None:
        assert_bitwise_equal(y_out, y, "the convolution's output")


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("c,f,padding", [(16, 16, "same"), (32, 64, "valid"), (3, 17, "same"),
                                         (40, 24, "valid")])
def test_conv2d_maxpool_matches_numpy_references(isa_name, n_threads, c, f, padding):
    """Against the NumPy convolution and pooling references (float64 sums):
    values within float32 rounding; each index points at its window's
    maximum of the reference output up to that rounding."""
    rng = np.random.default_rng(c * f)
    x = rng.standard_normal((3, 9, 10, c)).astype(np.float32)
    wt = (rng.standard_normal((3, 3, c, f)) / np.sqrt(9 * c)).astype(np.float32)
    b = rng.standard_normal(f).astype(np.float32)
    with isa(isa_name), threads(n_threads):
        p, i = nk.conv2d_maxpool(x, wt, b, padding=padding, activation="relu")
    yr = ref_conv(x.astype(np.float64), wt.astype(np.float64), b.astype(np.float64), (1, 1),
                  padding, (1, 1), "relu")
    pr, _ = ref_max_pool(yr, (2, 2), (2, 2), "valid")
    np.testing.assert_allclose(p, pr, rtol=1e-5, atol=1e-5)
    n_, oh, ow, ch = np.indices(i.shape)
    at = yr[n_, i // yr.shape[2], i % yr.shape[2], ch]
    np.testing.assert_allclose(at, pr, rtol=1e-5, atol=1e-5)
    rows, cols = i // yr.shape[2], i % yr.shape[2]
    assert ((rows // 2 == oh) & (cols // 2 == ow)).all()   # inside its own window


def test_conv2d_maxpool_arguments():
    x = np.ones((1, 5, 5, 2), np.float32)
    w = np.ones((3, 3, 2, 4), np.float32)
    with pytest.raises(ValueError, match="2x2"):
        nk.conv2d_maxpool(x[:, :3], w)
    with pytest.raises(TypeError, match="int32"):
        nk.conv2d_maxpool(x, w, indices=np.zeros((1, 1, 1, 4), np.int64))
    with pytest.raises(TypeError, match="ndarray"):
        nk.conv2d_maxpool(x, w, indices=[0])
    with pytest.raises(ValueError):
        nk.conv2d_maxpool(x, w, out=np.zeros((1, 2, 2, 4), np.float32))   # wrong shape
    y = np.zeros((1, 3, 3, 4), np.float32)
    with pytest.raises(ValueError):
        nk.conv2d_maxpool(x, w, y=y, out=y[:, :1, :1])                  # overlapping
    p, i = nk.conv2d_maxpool(x, w, padding="same")           # 5x5 -> pooled 2x2
    assert p.shape == (1, 2, 2, 4) and i.dtype == np.int32
    assert (p == nk.max_pool2d(nk.conv2d(x, w, padding="same"), 2)[0]).all()


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ops_conv2d_maxpool_forward_cpu_matches_numpy_ops(padding):
    """pynn's Ops.conv2d_maxpool_forward (the NumPy/CuPy reference: conv
    then pool) and CPUOps' (this kernel) agree: values to float64 rounding,
    indices exactly (random data: no ties)."""
    from pynn import backend
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 9, 8, 5))
    w = rng.standard_normal((3, 3, 5, 7)) * 0.3
    b = rng.standard_normal(7)
    kw = dict(padding=padding, activation="relu")
    pr, ir = backend.Ops().conv2d_maxpool_forward(x, w, b, **kw)
    pc, ic = backend.get_ops("cpu").conv2d_maxpool_forward(x, w, b, **kw)
    np.testing.assert_allclose(pc, pr, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(ic, ir)


# ------------------------------------------------------------------ backward
# conv2d_maxpool_backward: the gradients of conv2d_maxpool's convolution from
# the pooled output's gradient.  Where both products run as F(2x2, 3x3)
# Winograd (float32 with bf16 products here, valid or even padding) the
# transforms read dz through the pooled gradient and its indices; elsewhere
# the pooling's backward writes dz first.  Either way: the bits of
# max_pool2d_backward followed by conv2d_backward.

@st.composite
def fused_cases(draw):
    """Shapes the pooled-gradient path takes (and near misses: channel counts
    off the vector width, odd outputs, explicit even padding)."""
    pt, pl = draw(st.sampled_from([(0, 0), (2, 0), (0, 2), (2, 2)]))
    h, w = draw(st.integers(4, 13)), draw(st.integers(4, 13))
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, c=draw(st.sampled_from([16, 17, 32, 33, 64])),
                f=draw(st.sampled_from([16, 24, 32, 40, 64])), k=3, stride=1,
                padding=((pt, draw(st.integers(0, 1))), (pl, draw(st.integers(0, 1)))),
                dtype=np.float32, precision="bfloat16", relu=draw(st.booleans()),
                bias=False, nan=draw(st.booleans()), isa=draw(st.sampled_from(ISAS)),
                threads=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**31)))


NEEDS = [(True, True, True), (True, False, False), (False, True, True), (False, True, False),
         (True, True, False), (True, False, True)]


def _check_maxpool_backward(cs, acc, need):
    x, wt, b, kw = _operands(cs)
    need_dx, need_dw, need_db = need
    acc = acc and need_dx
    rng = np.random.default_rng(cs["seed"] + 1)
    dt, relu = cs["dtype"], cs["relu"]
    geo = dict(strides=cs["stride"], padding=cs["padding"], precision=cs["precision"])
    with isa(cs["isa"]), threads(cs["threads"]):
        p, i = nk.conv2d_maxpool(x, wt, b, **kw)
        g = rng.standard_normal(p.shape).astype(dt)
        g.flat[::7] = -0.0                     # dz holds 0 + g: +0 where g is -0
        yshape = nk.conv2d_output_shape(x.shape, wt.shape, strides=cs["stride"],
                                        padding=cs["padding"])
        dz = nk.max_pool2d_backward(g, i, yshape, y=p if relu else None, pool_size=2, strides=2)
        base = rng.standard_normal(x.shape).astype(dt)
        flags = dict(need_dx=need_dx, need_dw=need_dw, need_db=need_db, accumulate_dx=acc)
        ref = nk.conv2d_backward(dz, x, wt, dx=base.copy() if acc else None, **flags, **geo)
        out = nk.conv2d_maxpool_backward(g, i, x, wt, activation=kw["activation"],
                                         y=p if relu else None,
                                         dx=base.copy() if acc else None, **flags, **geo)
    for name, r, o in zip(("dx", "dw", "db"), ref, out):
        assert (r is None) == (o is None), name
        if r is not None:
            assert_bitwise_equal(o, r, f"conv2d_maxpool_backward {name}")


@given(cs=cases(), acc=st.booleans(), need=st.sampled_from(NEEDS))
def test_conv2d_maxpool_backward_is_pool_then_conv_backward_bitwise(cs, acc, need):
    _check_maxpool_backward(cs, acc, need)


@given(cs=fused_cases(), acc=st.booleans(), need=st.sampled_from(NEEDS))
def test_conv2d_maxpool_backward_through_the_pooled_gradient_bitwise(cs, acc, need):
    _check_maxpool_backward(cs, acc, need)


@pytest.mark.parametrize("native", [True, False], ids=["vdpbf16ps", "emulated"])
@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("c,f,h,padding", [(32, 64, 26, "valid"), (64, 32, 11, "valid"),
                                           (64, 64, 8, ((2, 2), (0, 1))), (17, 40, 9, "valid")])
def test_conv2d_maxpool_backward_reads_the_pooled_gradient(native, isa_name, n_threads, c, f, h,
                                                           padding):
    """The default CNN's 32 -> 64 under bf16 and other shapes take the
    pooled-gradient path (no full-size dz), with the same bits as the two
    steps, on each bf16 path."""
    if native and (isa_name != "avx512" or not nk.bf16_native_supported()):
        pytest.skip("VDPBF16PS runs on the avx512 path of CPUs with AVX512_BF16 only "
                    "(the emulated case covers this one)")
    assert nk._core._conv2d_maxpool_backward_fused((3, h, h, c), (3, 3, c, f), padding=padding,
                                                   precision="bfloat16")
    cs = dict(n=3, h=h, w=h, c=c, f=f, k=3, stride=1, padding=padding, dtype=np.float32,
              precision="bfloat16", relu=True, bias=True, nan=False, isa=isa_name,
              threads=n_threads, seed=c * f + h)
    try:
        if nk.bf16_native_supported():
            nk.set_bf16_native(native)
        _check_maxpool_backward(cs, False, (True, True, True))
        _check_maxpool_backward(dict(cs, relu=False), True, (True, True, False))
    finally:
        if nk.bf16_native_supported():
            nk.set_bf16_native(True)


@pytest.mark.parametrize("x_shape,w_shape,kw", [
    ((2, 10, 10, 32), (3, 3, 32, 32), dict(padding="same", precision="bfloat16")),  # odd dX padding
    ((2, 10, 10, 32), (3, 3, 32, 64), dict(precision=None)),       # float32: F(4x4) / blocked dX
    ((2, 10, 10, 16), (3, 3, 16, 16), dict(precision="bfloat16")),  # F(4x4) with 16 channels
    ((2, 10, 10, 72), (3, 3, 72, 24), dict(precision="bfloat16")),  # dX on the blocked path
    ((2, 10, 10, 32), (3, 3, 16, 32), dict(precision="bfloat16", groups=2)),
    ((2, 10, 10, 32), (3, 3, 32, 64), dict(precision="bfloat16", need_dw=False)),  # db alone
])
def test_conv2d_maxpool_backward_writes_dz_elsewhere(x_shape, w_shape, kw):
    kw = dict(kw)
    need_dw = kw.pop("need_dw", True)
    assert not nk._core._conv2d_maxpool_backward_fused(x_shape, w_shape, need_dw=need_dw, **kw)


def test_conv2d_maxpool_backward_arguments():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 16)).astype(np.float32)
    w = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
    p, i = nk.conv2d_maxpool(x, w, activation="relu")
    g = np.ones_like(p)
    with pytest.raises(ValueError, match="pooled output y"):
        nk.conv2d_maxpool_backward(g, i, x, w, activation="relu")
    with pytest.raises(ValueError, match="only with activation"):
        nk.conv2d_maxpool_backward(g, i, x, w, y=p)
    with pytest.raises(TypeError, match="int32"):
        nk.conv2d_maxpool_backward(g, i.astype(np.int64), x, w)
    with pytest.raises(TypeError, match="ndarray"):
        nk.conv2d_maxpool_backward(g, i.tolist(), x, w)
    with pytest.raises(ValueError, match="indices has shape"):
        nk.conv2d_maxpool_backward(g, i[:, :1], x, w)
    with pytest.raises(ValueError, match="dy has shape"):
        nk.conv2d_maxpool_backward(g[:, :1], i, x, w)
    with pytest.raises(ValueError, match="2x2"):
        nk.conv2d_maxpool_backward(g, i, x[:, :3], w)
    with pytest.raises(ValueError, match="accumulate_dx"):
        nk.conv2d_maxpool_backward(g, i, x, w, accumulate_dx=True)
    with pytest.raises(ValueError):                                  # dx overlaps x
        nk.conv2d_maxpool_backward(g, i, x, w, dx=x)
    with pytest.raises(TypeError):
        nk.conv2d_maxpool_backward(g.astype(np.float64), i, x, w)
    dx, dw, db = nk.conv2d_maxpool_backward(g, i, x, w, activation="relu", y=p, need_db=False)
    assert dx.shape == x.shape and dw.shape == w.shape and db is None


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_ops_conv2d_maxpool_backward_cpu_matches_numpy_ops(padding):
    """pynn's Ops.conv2d_maxpool_backward (the NumPy/CuPy reference: the
    pooling's backward, then the convolution's) and CPUOps' (this kernel)
    agree to float64 rounding."""
    from pynn import backend
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 9, 8, 5))
    w = rng.standard_normal((3, 3, 5, 7)) * 0.3
    kw = dict(padding=padding, activation="relu")
    p, i = backend.get_ops("cpu").conv2d_maxpool_forward(x, w, None, **kw)
    g = rng.standard_normal(p.shape)
    r = backend.Ops().conv2d_maxpool_backward(g, i, x, w, y=p, db=np.empty(7), **kw)
    c = backend.get_ops("cpu").conv2d_maxpool_backward(g, i, x, w, y=p, db=np.empty(7), **kw)
    for a, b_ in zip(c, r):
        np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-12)

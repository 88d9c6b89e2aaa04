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

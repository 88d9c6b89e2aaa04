"""Bad arguments give the documented exception (with shapes in the message
where it is about shapes), and weird but legal inputs neither crash nor give
wrong results."""
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnkernels as nk
from reference import assert_close, gemm_ref
from strategies import DTYPES, make_array, random_values


def f32(*shape, seed=0):
    return make_array(shape, "float32", seed=seed)


def f64(*shape, seed=0):
    return make_array(shape, "float64", seed=seed)


def _shape_str(shape):
    return re.escape(str(tuple(shape)))


# ------------------------------------------------------------------ ndim --

@pytest.mark.parametrize("bad", [
    np.float32(1.0),
    np.ones((), np.float32),
    np.ones((4,), np.float32),
    np.ones((2, 3, 4), np.float32),
    np.ones((1, 1, 1, 1), np.float32),
], ids=["scalar", "0d", "1d", "3d", "4d"])
@pytest.mark.parametrize("which", ["a", "b"])
def test_ndim_not_2_is_value_error(bad, which):
    good = np.ones((4, 4), np.float32)
    args = (bad, good) if which == "a" else (good, bad)
    with pytest.raises(ValueError, match=_shape_str(np.shape(bad))):
        nk.gemm(*args)


@pytest.mark.parametrize("bad", [1.0, None, "abc", [1.0, 2.0], [[[1.0]]]],
                         ids=["float", "None", "str", "list1d", "list3d"])
def test_non_arrays_of_wrong_rank_are_rejected(bad):
    good = np.ones((1, 1))
    for args in ((bad, good), (good, bad)):
        with pytest.raises((ValueError, TypeError)):
            nk.gemm(*args)


# ----------------------------------------------------------- inner dims --

@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, False), (False, True),
                                             (True, True)])
def test_inner_dimension_mismatch_names_shapes(trans_a, trans_b):
    a = np.ones((3, 4) if not trans_a else (4, 3), np.float32)
    b = np.ones((5, 6) if not trans_b else (6, 5), np.float32)
    with pytest.raises(ValueError) as e:
        nk.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    msg = str(e.value)
    assert str(a.shape) in msg and str(b.shape) in msg, msg


def test_transpose_flag_changes_what_matches():
    a = np.ones((3, 4), np.float32)
    b = np.ones((3, 5), np.float32)
    with pytest.raises(ValueError):
        nk.gemm(a, b)
    assert nk.gemm(a, b, trans_a=True).shape == (4, 5)


# ---------------------------------------------------------------- dtypes --

@pytest.mark.parametrize("dt_a,dt_b", [("float32", "float64"), ("float64", "float32")])
def test_mixed_dtypes_are_type_error(dt_a, dt_b):
    a = np.ones((3, 4), dt_a)
    b = np.ones((4, 5), dt_b)
    with pytest.raises(TypeError):
        nk.gemm(a, b)
    with pytest.raises(TypeError):
        nk.dense_forward(a, b)


@pytest.mark.parametrize("dtype", ["int32", "int64", "float16", "complex64", "complex128",
                                   "bool", "uint8", "longdouble", "object"])
def test_non_float_dtypes_are_type_error(dtype):
    bad = np.ones((3, 3), dtype)
    good = np.ones((3, 3), np.float32)
    for args in ((bad, good), (good, bad), (bad, bad)):
        with pytest.raises(TypeError):
            nk.gemm(*args)


def test_int_lists_are_type_error_float_lists_work():
    with pytest.raises(TypeError):
        nk.gemm([[1, 2], [3, 4]], [[1, 0], [0, 1]])
    r = nk.gemm([[1.0, 2.0], [3.0, 4.0]], [[1.0, 0.0], [0.0, 1.0]])
    assert r.dtype == np.float64
    assert np.array_equal(r, [[1.0, 2.0], [3.0, 4.0]])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_non_native_byte_order_is_rejected_or_right(dtype):
    a = f64(6, 7).astype(np.dtype(dtype).newbyteorder(">"))
    b = f64(7, 5).astype(dtype)
    for args in ((a, b.astype(a.dtype)), (a, b)):
        try:
            r = nk.gemm(*args)
        except (TypeError, ValueError):
            continue
        ref, scale = gemm_ref(*args, dtype=dtype)
        assert_close(r, ref, scale, dtype, 7)


# ------------------------------------------------------------------ bias --

@pytest.mark.parametrize("dtype", DTYPES)
def test_bias_errors(dtype):
    other = "float64" if dtype == "float32" else "float32"
    a = np.ones((3, 4), dtype)
    b = np.ones((4, 5), dtype)
    for bad in (np.ones(4, dtype), np.ones(6, dtype), np.ones(0, dtype)):
        with pytest.raises(ValueError, match=r"\(5,\)"):
            nk.gemm(a, b, bias=bad)
    with pytest.raises(ValueError):
        nk.gemm(a, b, bias=np.ones((1, 5), dtype))
    with pytest.raises(ValueError):
        nk.gemm(a, b, bias=np.ones((), dtype))
    with pytest.raises(TypeError):
        nk.gemm(a, b, bias=np.ones(5, other))
    with pytest.raises(TypeError):
        nk.gemm(a, b, bias=np.ones(5, np.int32))
    with pytest.raises(ValueError):
        nk.dense_forward(a, b, np.ones(4, dtype))


def test_strided_or_misaligned_bias_is_fine():
    """bias is a length-N vector: any strides, and even a misaligned buffer,
    are accepted (copying N elements is cheap)."""
    a, b = f32(9, 4), f32(4, 40, seed=1)
    base = f32(1, 200, seed=2)[0]
    misaligned = np.frombuffer(bytearray(4 * 40 + 1), dtype=np.float32, count=40, offset=1)
    assert not misaligned.flags.aligned
    for bias in (base[::5], base[::-5][:40], misaligned):
        got = nk.gemm(a, b, bias=bias)
        assert_close(got, *gemm_ref(a, b, bias=bias), "float32", 4)


# ------------------------------------------------------------------- out --

@pytest.mark.parametrize("dtype", DTYPES)
def test_out_errors(dtype):
    other = "float64" if dtype == "float32" else "float32"
    a = np.ones((6, 4), dtype)
    b = np.ones((4, 5), dtype)

    for shape in ((5, 6), (6, 4), (6, 5, 1), (30,), (6, 6)):
        with pytest.raises(ValueError, match=_shape_str((6, 5))):
            nk.gemm(a, b, out=np.empty(shape, dtype))
    with pytest.raises(TypeError):
        nk.gemm(a, b, out=np.empty((6, 5), other))
    with pytest.raises(TypeError):
        nk.gemm(a, b, out=np.empty((6, 5), np.int32))
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=np.empty((6, 5), dtype, order="F"))
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=np.empty((6, 10), dtype)[:, ::2])
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=np.empty((6, 15), dtype)[:, ::-3])
    ro = np.empty((6, 5), dtype)
    ro.flags.writeable = False
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=ro)
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=np.broadcast_to(np.empty(5, dtype), (6, 5)))
    # rows that overlap each other (stride-0 rows, writeable)
    base = np.zeros(5, dtype)
    self_overlap = np.lib.stride_tricks.as_strided(base, (6, 5), (0, base.itemsize),
                                                   writeable=True)
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=self_overlap)
    assert np.array_equal(base, np.zeros(5, dtype))
    with pytest.raises(TypeError):
        nk.gemm(a, b, out=[[0.0] * 5] * 6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_overlapping_an_input_is_value_error(dtype):
    buf = make_array((8, 8), dtype, seed=3)
    a = buf[:, :4]
    b = make_array((4, 4), dtype, seed=4)
    saved = buf.copy()
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=buf[:, 4:])  # shares the buffer (interleaved rows)
    with pytest.raises(ValueError):
        nk.gemm(a, b, out=a)
    sq = make_array((5, 5), dtype, seed=5)
    with pytest.raises(ValueError):
        nk.gemm(sq, np.eye(5, dtype=dtype), out=sq)
    with pytest.raises(ValueError):
        nk.gemm(np.eye(5, dtype=dtype), sq, out=sq)
    with pytest.raises(ValueError):
        nk.gemm(sq.T, np.eye(5, dtype=dtype), out=sq)
    assert np.array_equal(buf, saved), "a rejected call must not write anything"


@pytest.mark.parametrize("dtype", DTYPES)
def test_out_overlapping_bias_or_c_is_value_error(dtype):
    big = np.zeros((6, 5), dtype)
    a = make_array((5, 3), dtype, seed=6)
    b = make_array((3, 5), dtype, seed=7)
    with pytest.raises(ValueError):
        nk.gemm(a, b, bias=big[4], out=big[:5])  # bias is the last row of out
    c = np.ones((6, 5), dtype)
    with pytest.raises(ValueError):
        # c overlaps out but is not out itself
        nk.gemm(a, b, beta=1.0, c=c[1:], out=c[:5])


# ------------------------------------------------------------------- c --

@pytest.mark.parametrize("dtype", DTYPES)
def test_c_errors(dtype):
    other = "float64" if dtype == "float32" else "float32"
    a = np.ones((6, 4), dtype)
    b = np.ones((4, 5), dtype)
    with pytest.raises(ValueError):
        nk.gemm(a, b, beta=1.0)
    with pytest.raises(ValueError):
        nk.gemm(a, b, beta=0.5, c=None)
    for shape in ((5, 6), (6, 4), (1, 5), (6, 1)):
        with pytest.raises(ValueError, match=_shape_str(shape)):
            nk.gemm(a, b, beta=1.0, c=np.ones(shape, dtype))
    with pytest.raises(ValueError):
        nk.gemm(a, b, beta=1.0, c=np.ones((6, 5, 1), dtype))
    with pytest.raises(TypeError):
        nk.gemm(a, b, beta=1.0, c=np.ones((6, 5), other))
    with pytest.raises(TypeError):
        nk.gemm(a, b, beta=1.0, c=np.ones((6, 5), np.int64))


# ------------------------------------------------------------ activation --

@pytest.mark.parametrize("act", ["tanh", "RELU", "Relu", "", "none", 1, 0, True, "sigmoid"])
def test_unknown_activation_is_value_error(act):
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError):
        nk.gemm(a, a, activation=act)
    with pytest.raises(ValueError):
        nk.dense_forward(a, a, activation=act)
    with pytest.raises(ValueError):
        nk.dense_backward(a, a, a, a, activation=act)


def test_unhashable_activation_is_value_error():
    a = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError):
        nk.gemm(a, a, activation=["relu"])


# ---------------------------------------------------------- misalignment --

def _misaligned(shape, dtype):
    dt = np.dtype(dtype)
    n = int(np.prod(shape))
    buf = bytearray(n * dt.itemsize + 1)
    arr = np.frombuffer(buf, dtype=dt, count=n, offset=1).reshape(shape)
    assert not arr.flags.aligned
    return arr


@pytest.mark.parametrize("dtype", DTYPES)
def test_misaligned_inputs_are_copied_misaligned_outputs_refused(dtype):
    """Inputs at a misaligned address are copied to aligned arrays (the same
    results as aligned ones; they never reach C misaligned); an output buffer
    is written in place, so a misaligned one is a ValueError."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((6, 4)).astype(dtype)
    b = rng.standard_normal((4, 5)).astype(dtype)
    c = rng.standard_normal((6, 5)).astype(dtype)

    def mis(v):
        m = _misaligned(v.shape, dtype)
        m[...] = v
        return m
    assert np.array_equal(nk.gemm(mis(a), b), nk.gemm(a, b))
    assert np.array_equal(nk.gemm(a, mis(b)), nk.gemm(a, b))
    assert np.array_equal(nk.gemm(a, b, beta=1.0, c=mis(c)), nk.gemm(a, b, beta=1.0, c=c))
    out = _misaligned((6, 5), dtype)
    out.flags.writeable = True
    with pytest.raises(ValueError, match="aligned"):
        nk.gemm(a, b, out=out)
    got = nk.dense_backward(mis(c), a, b)
    ref = nk.dense_backward(c, a, b)
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)


@pytest.mark.parametrize("dtype", DTYPES)
def test_strides_not_multiple_of_itemsize_are_copied(dtype):
    dt = np.dtype(dtype)
    buf = np.zeros(200, np.uint8)
    odd = np.ndarray((3, 4), dtype=dt, buffer=buf, strides=(3 * dt.itemsize + 2, dt.itemsize))
    buf[:] = np.arange(200) % 7  # rows overlap (14 or 26 bytes apart): read the values back
    ref = np.array(odd)
    np.testing.assert_array_equal(nk.gemm(odd, np.ones((4, 2), dt)), ref @ np.ones((4, 2), dt))
    np.testing.assert_array_equal(nk.gemm(np.ones((2, 3), dt), odd), np.ones((2, 3), dt) @ ref)


# ------------------------------------------------------- weird but legal --

@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_strides_and_broadcast_views_are_right(dtype):
    rng = np.random.default_rng(8)
    big = random_values(rng, (1000, 1200), dtype)
    a = big[::333, ::150]          # (4, 8), strides of 1000s of bytes
    b = big[::-125, 7::-1]         # (8, 8), negative strides
    got = nk.gemm(a, b)
    assert_close(got, *gemm_ref(a, b), dtype, 8)
    # zero strides (read-only broadcast views) as inputs
    a0 = np.broadcast_to(big[0, :8], (4, 8))
    b0 = np.broadcast_to(big[:8, :1], (8, 8))
    for x, y in ((a0, b), (a, b0), (a0, b0)):
        assert_close(nk.gemm(x, y), *gemm_ref(x, y), dtype, 8)
    # as_strided with a giant row stride over a small buffer
    tiny = random_values(rng, (4,), dtype)
    g = np.lib.stride_tricks.as_strided(tiny, (3, 4), (0, tiny.itemsize), writeable=False)
    assert_close(nk.gemm(g, b[:4, :3]), *gemm_ref(g, b[:4, :3]), dtype, 4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_read_only_inputs_are_fine(dtype):
    a = make_array((7, 9), dtype, seed=9)
    b = make_array((9, 3), dtype, seed=10)
    c = make_array((7, 3), dtype, seed=11)
    bias = make_array((1, 3), dtype, seed=12)[0]
    for arr in (a, b, c, bias):
        arr.flags.writeable = False
    got = nk.gemm(a, b, beta=2.0, c=c, bias=bias)
    assert_close(got, *gemm_ref(a, b, beta=2.0, c=c, bias=bias), dtype, 9)


@pytest.mark.parametrize("dtype", DTYPES)
def test_c_in_place_with_beta_zero_ignores_nan_in_out(dtype):
    a, b = make_array((4, 3), dtype, seed=13), make_array((3, 2), dtype, seed=14)
    out = np.full((4, 2), np.nan, dtype)
    nk.gemm(a, b, c=out, out=out)
    assert np.isfinite(out).all()


@given(shape_a=st.lists(st.integers(0, 3), min_size=0, max_size=4),
       shape_b=st.lists(st.integers(0, 3), min_size=0, max_size=4),
       dtype=st.sampled_from(["float32", "float64", "int32", "float16"]),
       trans_a=st.booleans(), trans_b=st.booleans())
def test_arbitrary_shapes_never_crash(shape_a, shape_b, dtype, trans_a, trans_b):
    """Any shapes/dtypes: either the right answer or ValueError/TypeError."""
    a = np.ones(shape_a, dtype)
    b = np.ones(shape_b, dtype)
    try:
        r = nk.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    except (ValueError, TypeError):
        return
    assert a.ndim == 2 and b.ndim == 2 and dtype in ("float32", "float64")
    A = a.T if trans_a else a
    B = b.T if trans_b else b
    assert np.array_equal(r, A @ B)


# --------------------------------------------------------------- dense --

@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_errors(dtype):
    other = "float64" if dtype == "float32" else "float32"
    x = np.ones((6, 4), dtype)
    w = np.ones((4, 5), dtype)
    dy = np.ones((6, 5), dtype)
    y = np.ones((6, 5), dtype)
    with pytest.raises(ValueError, match="y"):
        nk.dense_backward(dy, x, w, None, activation="relu")
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, need_dx=False, accumulate=True)  # no dw/db
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dw=np.zeros((4, 5), dtype), accumulate=True)  # no db
    nk.dense_backward(dy, x, w, dw=np.zeros((4, 5), dtype), need_db=False, accumulate=True)
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, np.ones((3, 5), dtype))
    with pytest.raises(ValueError, match=_shape_str((6, 5))):
        nk.dense_backward(np.ones((6, 4), dtype), x, w)
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, np.ones((5, 6), dtype), "relu")
    with pytest.raises(TypeError):
        nk.dense_backward(dy.astype(other), x, w)
    with pytest.raises(TypeError):
        nk.dense_backward(dy, x, w, y.astype(other), "relu")
    with pytest.raises(ValueError):
        nk.dense_backward(dy[0], x, w)
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dw=np.zeros((5, 4), dtype))
    with pytest.raises(TypeError):
        nk.dense_backward(dy, x, w, dw=np.zeros((4, 5), other))
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dx=np.zeros((6, 5), dtype))
    with pytest.raises((ValueError, TypeError)):
        nk.dense_backward(dy, x, w, db=np.zeros(4, dtype))
    with pytest.raises((ValueError, TypeError)):
        nk.dense_backward(dy, x, w, db=np.zeros(5, other))
    # outputs overlapping inputs or each other
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dw=w)
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dx=x)
    buf = np.zeros(4 * 5 + 5, dtype)
    with pytest.raises(ValueError):
        nk.dense_backward(dy, x, w, dw=buf[:20].reshape(4, 5), db=buf[15:20])

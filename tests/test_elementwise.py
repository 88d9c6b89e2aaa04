"""ReLU and dropout kernels; Philox4x32-10 against Random123's known-answer
vectors and an independent NumPy implementation."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import isa, threads

# the NumPy spec of the stream (pynn's reference Ops): uint64 products, no kernel code
from pynn.backend import dropout_keep_mask, philox4x32 as philox4x32_numpy

ISAS = nk.available_isas()
DTYPES = [np.float32, np.float64]


# ------------------------------------------------------------------ ReLU --

@settings(deadline=None, max_examples=60)
@given(n=st.sampled_from([0, 1, 3, 15, 16, 17, 63, 64, 65, 1000, 100_003]),
       dtype=st.sampled_from(DTYPES), isa_name=st.sampled_from(ISAS),
       seed=st.integers(0, 2**32 - 1))
def test_relu_forward_backward(n, dtype, isa_name, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(dtype)
    x[rng.random(n) < 0.05] = 0.0
    x[rng.random(n) < 0.02] = np.nan
    dy = rng.standard_normal(n).astype(dtype)
    with isa(isa_name):
        y = nk.relu(x)
        dx = nk.relu_backward(dy, y)
    y_ref = np.where((x > 0) | np.isnan(x), x, 0).astype(dtype)
    np.testing.assert_array_equal(y, y_ref)
    assert not np.signbit(y[~np.isnan(y)]).any()  # -0.0 -> +0.0
    np.testing.assert_array_equal(dx, np.where(y > 0, dy, 0).astype(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_relu_in_place_shapes_and_threads(dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 13, 11, 9)).astype(dtype)
    ref = np.maximum(x, 0)
    with threads(1):
        a = nk.relu(x)
    with threads(2):
        b = nk.relu(x)
    np.testing.assert_array_equal(a, ref)
    np.testing.assert_array_equal(b, ref)
    xc = x.copy()
    assert nk.relu(xc, out=xc) is xc
    np.testing.assert_array_equal(xc, ref)
    dy = rng.standard_normal(x.shape).astype(dtype)
    exp = np.where(ref > 0, dy, 0)
    assert nk.relu_backward(dy, ref, out=dy) is dy
    np.testing.assert_array_equal(dy, exp)
    v = x[:, ::2, :, 1:]  # non-contiguous input
    np.testing.assert_array_equal(nk.relu(v), np.maximum(v, 0))


def test_relu_errors():
    x = np.zeros((4, 5), np.float32)
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.relu(np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="dtype"):
        nk.relu(x, out=np.empty((4, 5), np.float64))
    with pytest.raises(ValueError, match="shape"):
        nk.relu(x, out=np.empty((5, 4), np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        big = np.zeros(21, np.float32)
        nk.relu(big[1:], out=big[:-1])
    with pytest.raises(ValueError, match="shape"):
        nk.relu_backward(x, np.zeros((4, 6), np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        nk.relu_backward(x, np.zeros((4, 5)))
    with pytest.raises(ValueError, match="overlaps"):
        y = np.zeros((4, 5), np.float32)
        nk.relu_backward(x, y, out=y)


# ------------------------------------------------------------------- add --
# 65537 and 100_003 (primes) are above the threading threshold (256 KiB
# touched) and span several 16 Ki-element chunks, so 2 threads really split
# them, with a ragged last chunk.

@settings(deadline=None, max_examples=80)
@given(n=st.sampled_from([0, 1, 2, 3, 7, 13, 17, 31, 61, 127, 1021, 16_411, 65_537, 100_003]),
       dtype=st.sampled_from(DTYPES), isa_name=st.sampled_from(ISAS),
       nt=st.sampled_from([1, 2]), mode=st.sampled_from(["new", "out", "into_a", "into_b"]),
       seed=st.integers(0, 2**32 - 1))
def test_add_matches_numpy(n, dtype, isa_name, nt, mode, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(n).astype(dtype)
    b = rng.standard_normal(n).astype(dtype)
    if n:
        a[rng.random(n) < 0.02] = np.nan
        b[rng.random(n) < 0.02] = -np.inf
        a[rng.random(n) < 0.02] = -0.0
        b[rng.random(n) < 0.02] = -0.0
    ref = np.add(a, b)
    a0, b0 = a.copy(), b.copy()
    with isa(isa_name), threads(nt):
        if mode == "new":
            r = nk.add(a, b)
        elif mode == "out":
            o = np.full(n, 7, dtype)
            r = nk.add(a, b, out=o)
            assert r is o
        elif mode == "into_a":
            r = nk.add(a, b, out=a)
            assert r is a
        else:
            r = nk.add(a, b, out=b)
            assert r is b
    assert r.dtype == dtype and r.shape == (n,) and r.flags.c_contiguous
    np.testing.assert_array_equal(r, ref)
    assert np.array_equal(r.view(np.uint8), ref.view(np.uint8))  # bitwise (-0.0, NaN)
    if mode != "into_a":
        np.testing.assert_array_equal(a, a0)
    if mode != "into_b":
        np.testing.assert_array_equal(b, b0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_add_shapes_in_place_threads(dtype):
    rng = np.random.default_rng(3)
    shape = (64, 13, 11, 9)  # 82_368 elements: several chunks, ragged end
    a = rng.standard_normal(shape).astype(dtype)
    b = rng.standard_normal(shape).astype(dtype)
    ref = a + b
    outs = []
    for name in ISAS:
        for nt in (1, 2):
            with isa(name), threads(nt):
                outs.append(nk.add(a, b))
    for o in outs:
        assert o.shape == shape
        np.testing.assert_array_equal(o, ref)
    # gradient accumulation: acc += g, in place, both ways round
    acc = a.copy()
    with threads(2):
        assert nk.add(acc, b, out=acc) is acc
    np.testing.assert_array_equal(acc, ref)
    acc = b.copy()
    with threads(2):
        assert nk.add(a, acc, out=acc) is acc
    np.testing.assert_array_equal(acc, ref)
    # a and b the same buffer, and all three the same
    np.testing.assert_array_equal(nk.add(a, a), a + a)
    c = a.copy()
    assert nk.add(c, c, out=c) is c
    np.testing.assert_array_equal(c, a + a)
    # an identical view of a counts as a itself
    c = a.copy()
    nk.add(c, b, out=c.view())
    np.testing.assert_array_equal(c, ref)
    # non-contiguous inputs are copied; out stays C-contiguous
    va, vb = a[:, :-1:2, :, 1:], b[:, 1::2, :, :-1]
    r = nk.add(va, vb)
    assert r.flags.c_contiguous and r.shape == va.shape
    np.testing.assert_array_equal(r, va + vb)
    np.testing.assert_array_equal(nk.add(a.T, b.T), a.T + b.T)
    o = np.empty(va.shape, dtype)
    assert nk.add(va, vb, out=o) is o
    np.testing.assert_array_equal(o, va + vb)
    # 0-d and empty
    s = nk.add(np.array(1.5, dtype), np.array(2.25, dtype))
    assert s.shape == () and s == 3.75
    assert nk.add(np.empty((0, 3), dtype), np.empty((0, 3), dtype)).shape == (0, 3)


def test_add_errors():
    a = np.zeros((4, 5), np.float32)
    b = np.ones((4, 5), np.float32)
    with pytest.raises(ValueError, match=r"same shape.*\(4, 5\).*\(5, 4\)"):
        nk.add(a, np.zeros((5, 4), np.float32))
    with pytest.raises(ValueError, match="same shape"):
        nk.add(a, np.zeros(20, np.float32))
    with pytest.raises(TypeError, match="same dtype"):
        nk.add(a, b.astype(np.float64))
    with pytest.raises(TypeError, match="same dtype"):
        nk.add(a.astype(np.float64), b)
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.add(np.zeros(3, np.int64), np.zeros(3, np.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.add(a, np.zeros((4, 5), np.float16))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.add(a.astype(">f4"), b)
    with pytest.raises(TypeError, match="dtype"):
        nk.add(a, b, out=np.empty((4, 5), np.float64))
    with pytest.raises(ValueError, match="shape"):
        nk.add(a, b, out=np.empty((5, 4), np.float32))
    with pytest.raises(TypeError, match="ndarray"):
        nk.add(a, b, out=[[0.0] * 5] * 4)
    ro = np.empty((4, 5), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nk.add(a, b, out=ro)
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.add(a, b, out=np.empty((5, 4), np.float32).T)
    raw = np.zeros(4 * 20 + 1, np.uint8)
    mis = raw[1:].view(np.float32).reshape(4, 5)
    assert not mis.flags.aligned
    with pytest.raises(ValueError, match="aligned"):
        nk.add(a, b, out=mis)
    mis[...] = 2.0  # a misaligned input is copied, not refused
    np.testing.assert_array_equal(nk.add(mis, b), mis + b)
    # partial overlaps of out with an input
    big = np.zeros(21, np.float32)
    with pytest.raises(ValueError, match="overlaps input a"):
        nk.add(big[1:], np.ones(20, np.float32), out=big[:-1])
    with pytest.raises(ValueError, match="overlaps input b"):
        nk.add(np.ones(20, np.float32), big[:-1], out=big[1:])
    with pytest.raises(ValueError, match="overlaps input b"):
        nk.add(big[:-1], big[1:], out=big[:-1])  # out is a but overlaps b
    with pytest.raises(ValueError, match="overlaps input a"):
        nk.add(big[:20].reshape(4, 5), b, out=big[1:].reshape(4, 5))


# ---------------------------------------------------------------- Philox --

KAT = [  # Random123 kat_vectors, philox4x32 10 rounds
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr,key,expected", KAT)
def test_philox_known_answers(ctr, key, expected):
    out = nk.philox4x32(np.array([ctr], np.uint32), np.array(key, np.uint32))
    assert out.dtype == np.uint32 and out.shape == (1, 4)
    assert tuple(int(v) for v in out[0]) == expected


def test_philox_matches_numpy():
    rng = np.random.default_rng(5)
    ctr = rng.integers(0, 2**32, size=(257, 4), dtype=np.uint32)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    np.testing.assert_array_equal(nk.philox4x32(ctr, key), philox4x32_numpy(ctr, key))
    with pytest.raises(TypeError, match="uint32"):
        nk.philox4x32(ctr.astype(np.int64), key)
    with pytest.raises(ValueError, match="shape"):
        nk.philox4x32(ctr[:, :3], key)
    with pytest.raises(ValueError, match="shape"):
        nk.philox4x32(ctr, key[:1])


# --------------------------------------------------------------- dropout --

@settings(deadline=None, max_examples=60)
@given(n=st.sampled_from([0, 1, 3, 4, 5, 63, 64, 65, 127, 191, 320, 1000, 4099]),
       rate=st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.9, 0.999]),
       seed=st.integers(0, 2**64 - 1), offset=st.integers(0, 2**64 - 1),
       dtype=st.sampled_from(DTYPES), isa_name=st.sampled_from(ISAS))
def test_dropout_matches_stream(n, rate, seed, offset, dtype, isa_name):
    rng = np.random.default_rng(seed % 2**32)
    x = rng.standard_normal(n).astype(dtype)
    m = dropout_keep_mask((n,), rate, seed, offset)
    np.testing.assert_array_equal(nk.dropout_mask(n, rate, seed, offset=offset), m)
    scale = dtype(1.0 / (1.0 - rate))
    with isa(isa_name):
        y = nk.dropout(x, rate, seed, offset=offset)
        dx = nk.dropout_backward(x, rate, seed, offset=offset)
    if rate == 0:
        np.testing.assert_array_equal(y, x)
    np.testing.assert_array_equal(y, np.where(m, x * scale, 0).astype(dtype))
    np.testing.assert_array_equal(dx, y)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_isa_threads_tiling_identical(dtype):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((128, 12, 12, 64)).astype(dtype)
    outs = []
    for name in ISAS:
        for nt in (1, 2):
            with isa(name), threads(nt):
                outs.append(nk.dropout(x, 0.25, 1234, offset=17))
    for o in outs[1:]:
        np.testing.assert_array_equal(outs[0], o)
    # counter = element index: a prefix of the tensor gets the prefix of the mask
    flat = x.reshape(-1)
    part = nk.dropout(flat[:100_001], 0.25, 1234, offset=17)
    np.testing.assert_array_equal(part, outs[0].reshape(-1)[:100_001])


def test_dropout_seeds_offsets_differ_and_statistics():
    n = 1_000_000
    rate = 0.25
    m = nk.dropout_mask(n, rate, 42)
    np.testing.assert_array_equal(m, nk.dropout_mask(n, rate, 42))
    for other in (nk.dropout_mask(n, rate, 43), nk.dropout_mask(n, rate, 42, offset=1),
                  nk.dropout_mask(n, rate, 42 + 2**32)):
        agree = np.mean(other == m)
        assert abs(agree - 0.625) < 0.005  # independent masks agree on p^2 + q^2
    p = 1 - rate
    sd = np.sqrt(p * (1 - p) / n)
    for seed in range(5):
        frac = nk.dropout_mask(n, rate, seed, offset=seed * 7).mean()
        assert abs(frac - p) < 5 * sd
    # expectation preserved
    x = np.random.default_rng(0).uniform(1, 2, n).astype(np.float64)
    y = nk.dropout(x, rate, 9)
    assert abs(y.mean() - x.mean()) < 5 * np.sqrt(rate / p * np.mean(x**2) / n)
    # runs of words: no correlation between neighbouring elements
    a, b = m[:-1].astype(float), m[1:].astype(float)
    assert abs(np.corrcoef(a, b)[0, 1]) < 5 / np.sqrt(n)


def test_dropout_backward_matches_forward_mask_and_in_place():
    rng = np.random.default_rng(2)
    x = rng.uniform(1, 2, (32, 7, 5, 3)).astype(np.float32)
    y = nk.dropout(x, 0.4, 77, offset=3)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    dx = nk.dropout_backward(dy, 0.4, 77, offset=3)
    np.testing.assert_array_equal(dx != 0, y != 0)
    np.testing.assert_array_equal(dx, np.where(y != 0, dy * np.float32(1 / 0.6), 0))
    xc = x.copy()
    assert nk.dropout(xc, 0.4, 77, offset=3, out=xc) is xc
    np.testing.assert_array_equal(xc, y)
    v = x[:, ::2]
    np.testing.assert_array_equal(nk.dropout(v, 0.4, 5), nk.dropout(np.ascontiguousarray(v), 0.4, 5))
    out = np.empty_like(x)
    assert nk.dropout(x, 0.0, 1, out=out) is out
    np.testing.assert_array_equal(out, x)


def test_dropout_errors():
    x = np.ones(10, np.float32)
    for rate in (1.0, 1.5, -0.1, float("nan")):
        with pytest.raises(ValueError, match="rate"):
            nk.dropout(x, rate, 0)
        with pytest.raises(ValueError, match="rate"):
            nk.dropout_backward(x, rate, 0)
    with pytest.raises(TypeError, match="rate"):
        nk.dropout(x, "0.5", 0)
    for seed in (-1, 2**64):
        with pytest.raises(ValueError, match="seed"):
            nk.dropout(x, 0.5, seed)
    with pytest.raises(TypeError, match="seed"):
        nk.dropout(x, 0.5, 1.5)
    with pytest.raises(ValueError, match="offset"):
        nk.dropout(x, 0.5, 1, offset=-3)
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.dropout(np.ones(3, np.int32), 0.5, 1)
    with pytest.raises(ValueError, match="shape"):
        nk.dropout(x, 0.5, 1, out=np.empty(11, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        big = np.ones(11, np.float32)
        nk.dropout(big[1:], 0.5, 1, out=big[:-1])

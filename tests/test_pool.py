"""Max pooling (NHWC): forward values and argmax indices, backward (scatter and
gather), against plain NumPy loops over windows, on every ISA path."""

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import nnkernels as nk
from reference import isa, threads

ISAS = nk.available_isas()
DTYPES = [np.float32, np.float64]


# ------------------------------------------------------------ references --

def geometry(H, W, pool, strides, padding):
    (ph, pw), (sh, sw) = pool, strides
    if padding == "valid":
        return (H - ph) // sh + 1, (W - pw) // sw + 1, 0, 0
    OH, OW = -(-H // sh), -(-W // sw)
    pt = max((OH - 1) * sh + ph - H, 0) // 2
    pl = max((OW - 1) * sw + pw - W, 0) // 2
    return OH, OW, pt, pl


def ref_max_pool(x, pool, strides, padding):
    """Loops over windows (vectorised over batch and channels only)."""
    N, H, W, C = x.shape
    OH, OW, pt, pl = geometry(H, W, pool, strides, padding)
    y = np.empty((N, OH, OW, C), x.dtype)
    idx = np.empty((N, OH, OW, C), np.int32)
    for oh in range(OH):
        for ow in range(OW):
            best = bi = None
            for i in range(pool[0]):
                for j in range(pool[1]):
                    h, w = oh * strides[0] - pt + i, ow * strides[1] - pl + j
                    if not (0 <= h < H and 0 <= w < W):
                        continue  # padding never wins
                    v = x[:, h, w, :]
                    if best is None:
                        best, bi = v.copy(), np.full(v.shape, h * W + w, np.int32)
                        continue
                    upd = (v > best) | (np.isnan(v) & ~np.isnan(best))
                    best = np.where(upd, v, best)
                    bi = np.where(upd, h * W + w, bi)
            y[:, oh, ow, :] = best
            idx[:, oh, ow, :] = bi
    return y, idx


def ref_backward(dy, idx, x_shape):
    N, H, W, C = x_shape
    dx = np.zeros(x_shape, dy.dtype)
    n_i, c_i = np.meshgrid(np.arange(N), np.arange(C), indexing="ij")
    for oh in range(dy.shape[1]):
        for ow in range(dy.shape[2]):
            p = idx[:, oh, ow, :]
            dx[n_i, p // W, p % W, c_i] += dy[:, oh, ow, :]
    return dx


# ------------------------------------------------------------ strategies --

@st.composite
def pool_cases(draw):
    N = draw(st.integers(1, 3))
    H = draw(st.integers(1, 11))
    W = draw(st.integers(1, 11))
    C = draw(st.sampled_from([1, 2, 3, 7, 8, 15, 16, 17, 24, 33, 40]))
    pool = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    strides = (draw(st.integers(1, 5)), draw(st.integers(1, 5)))
    padding = draw(st.sampled_from(["valid", "same"]))
    if padding == "valid":
        assume(H >= pool[0] and W >= pool[1])
    dtype = draw(st.sampled_from(DTYPES))
    isa_name = draw(st.sampled_from(ISAS))
    return (N, H, W, C), pool, strides, padding, dtype, isa_name


@settings(deadline=None, max_examples=150)
@given(case=pool_cases(), seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_forward_backward_match_reference(case, seed, ties):
    shape, pool, strides, padding, dtype, isa_name = case
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many ties inside windows
        x = rng.integers(-2, 3, size=shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    with isa(isa_name):
        y, idx = nk.max_pool2d(x, pool, strides, padding)
        y_ref, idx_ref = ref_max_pool(x, pool, strides, padding)
        np.testing.assert_array_equal(y, y_ref)
        np.testing.assert_array_equal(idx, idx_ref)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dx_ref = ref_backward(dy, idx_ref, shape)
        dx = nk.max_pool2d_backward(dy, idx, shape)
        np.testing.assert_array_equal(dx, dx_ref)  # same summation order: bitwise
        dx2 = nk.max_pool2d_backward(dy, idx, shape, pool_size=pool, strides=strides,
                                     padding=padding)
        np.testing.assert_array_equal(dx2, dx_ref)


@settings(deadline=None, max_examples=80)
@given(case=pool_cases(), seed=st.integers(0, 2**32 - 1), nt=st.sampled_from([1, 2]))
def test_backward_relu_mask_is_relu_backward_then_pool(case, seed, nt):
    """max_pool2d_backward(..., y=y) == max_pool2d_backward(relu_backward(dy, y))
    bit for bit, on the scatter and gather paths (overlapping windows too),
    with NaN, -0.0 and zero in y and dy (y > 0 fails for NaN: +0)."""
    shape, pool, strides, padding, dtype, isa_name = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(dtype)
    with isa(isa_name), threads(nt):
        y, idx = nk.max_pool2d(x, pool, strides, padding)
        y = y.copy()
        flat = y.reshape(-1)
        k = flat.size
        special = rng.integers(0, k, size=(3, max(1, k // 8)))
        flat[special[0]] = np.nan
        flat[special[1]] = -0.0
        flat[special[2]] = 0.0
        dy = rng.standard_normal(y.shape).astype(dtype)
        dyf = dy.reshape(-1)
        dyf[rng.integers(0, k, size=max(1, k // 8))] = np.nan
        dyf[rng.integers(0, k, size=max(1, k // 8))] = -0.0
        want = nk.max_pool2d_backward(nk.relu_backward(dy, y), idx, shape)
        got = nk.max_pool2d_backward(dy, idx, shape, y=y)
        assert got.tobytes() == want.tobytes()
        want2 = nk.max_pool2d_backward(nk.relu_backward(dy, y), idx, shape, pool_size=pool,
                                       strides=strides, padding=padding)
        got2 = nk.max_pool2d_backward(dy, idx, shape, pool_size=pool, strides=strides,
                                      padding=padding, y=y)
        assert got2.tobytes() == want2.tobytes()


def test_backward_relu_mask_errors():
    x = np.random.default_rng(0).standard_normal((2, 4, 4, 3)).astype(np.float32)
    y, idx = nk.max_pool2d(x, 2)
    with pytest.raises(ValueError, match="y has shape"):
        nk.max_pool2d_backward(y, idx, x.shape, y=y[:1])
    with pytest.raises(TypeError, match="same dtype"):
        nk.max_pool2d_backward(y, idx, x.shape, y=y.astype(np.float64))


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_ties_first_max_wins(isa_name, dtype):
    x = np.ones((2, 6, 7, 19), dtype)
    with isa(isa_name):
        y, idx = nk.max_pool2d(x, (3, 2), (2, 3), "same")
    _, _, pt, pl = geometry(6, 7, (3, 2), (2, 3), "same")
    for oh in range(y.shape[1]):
        for ow in range(y.shape[2]):
            h, w = max(oh * 2 - pt, 0), max(ow * 3 - pl, 0)
            assert (idx[:, oh, ow, :] == h * 7 + w).all()
    assert (y == 1).all()


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_and_padding_never_wins(isa_name, dtype):
    x = np.full((1, 5, 5, 20), -np.inf, dtype)
    x[0, 4, 4, 3] = -1e30
    with isa(isa_name):
        y, idx = nk.max_pool2d(x, (2, 2), padding="same")
    assert y.shape == (1, 3, 3, 20)
    # windows of only -inf: -inf wins at the first in-bounds position
    y_ref, idx_ref = ref_max_pool(x, (2, 2), (2, 2), "same")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    assert np.isneginf(y[0, 0, 0]).all() and idx[0, 0, 0, 0] == 0
    assert y[0, 2, 2, 3] == dtype(-1e30) and idx[0, 2, 2, 3] == 24
    assert (idx >= 0).all() and (idx < 25).all()


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_propagates_first_nan_wins(isa_name, dtype):
    x = np.zeros((1, 2, 2, 17), dtype)
    x[0, 0, 0, :] = 5.0
    x[0, 0, 1, 0] = np.nan          # NaN after a larger number still wins
    x[0, 1, 0, 1] = np.nan          # two NaNs: the first (row-major) wins
    x[0, 1, 1, 1] = np.nan
    x[0, 0, 0, 2] = np.nan          # NaN first, bigger numbers later do not replace it
    x[0, 1, 1, 2] = 1e30
    with isa(isa_name):
        y, idx = nk.max_pool2d(x, 2)
    assert np.isnan(y[0, 0, 0, 0]) and idx[0, 0, 0, 0] == 1
    assert np.isnan(y[0, 0, 0, 1]) and idx[0, 0, 0, 1] == 2
    assert np.isnan(y[0, 0, 0, 2]) and idx[0, 0, 0, 2] == 0
    assert (y[0, 0, 0, 3:] == 5.0).all() and (idx[0, 0, 0, 3:] == 0).all()


def test_isa_paths_and_threads_identical():
    rng = np.random.default_rng(0)
    for dtype in DTYPES:
        x = rng.standard_normal((6, 23, 21, 37)).astype(dtype)
        x[rng.random(x.shape) < 0.01] = np.nan
        x[rng.random(x.shape) < 0.2] = 0.5  # ties
        results = []
        for name in ISAS:
            for nt in (1, 2):
                with isa(name), threads(nt):
                    y, idx = nk.max_pool2d(x, (3, 3), (2, 2), "same")
                    dy = np.ones_like(y)
                    dx = nk.max_pool2d_backward(dy, idx, x.shape)
                    dx2 = nk.max_pool2d_backward(dy, idx, x.shape, pool_size=3, strides=2,
                                                 padding="same")
                    results.append((y, idx, dx, dx2))
        for r in results[1:]:
            for a, b in zip(results[0], r):
                np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(results[0][2], results[0][3])


def test_batch_one_parallel_scatter_channel_split():
    # N < threads: the scatter splits channels between threads
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 64, 64, 40))
    with threads(2):
        y, idx = nk.max_pool2d(x, 3, 1, "same")
        dy = rng.standard_normal(y.shape)
        dx = nk.max_pool2d_backward(dy, idx, x.shape)
    np.testing.assert_array_equal(dx, ref_backward(dy, idx, x.shape))


def test_finite_difference_gradient_float64():
    """Directional finite differences of sum(y * g) along a random direction,
    with inputs whose values are well separated (no ties/kinks)."""
    rng = np.random.default_rng(7)
    shape = (2, 7, 6, 5)
    x = rng.permutation(np.prod(shape)).reshape(shape).astype(np.float64) * 0.1
    for pool, strides, padding in [((2, 2), None, "valid"), ((3, 2), (1, 2), "same"),
                                   ((2, 3), (3, 1), "valid")]:
        y, idx = nk.max_pool2d(x, pool, strides, padding)
        g = rng.standard_normal(y.shape)
        dx = nk.max_pool2d_backward(g, idx, shape)
        d = rng.standard_normal(shape)
        eps = 1e-4
        f = lambda z: np.sum(nk.max_pool2d(z, pool, strides, padding)[0] * g)
        num = (f(x + eps * d) - f(x - eps * d)) / (2 * eps)
        assert np.isclose(num, np.sum(dx * d), rtol=1e-7, atol=1e-9)
        # exhaustive on a few coordinates
        for k in rng.choice(np.prod(shape), 10, replace=False):
            e = np.zeros(shape)
            e.flat[k] = 1.0
            num = (f(x + eps * e) - f(x - eps * e)) / (2 * eps)
            assert np.isclose(num, dx.flat[k], atol=1e-7)


def test_out_buffers_reused_and_views():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((4, 10, 12, 18)).astype(np.float32)
    x = base[:, ::2, :, 1:]  # non-contiguous view
    y = np.empty((4, 2, 6, 17), np.float32)
    idx = np.empty((4, 2, 6, 17), np.int32)
    y2, idx2 = nk.max_pool2d(x, 2, out=y, indices=idx)
    assert y2 is y and idx2 is idx
    y_ref, idx_ref = ref_max_pool(np.ascontiguousarray(x), (2, 2), (2, 2), "valid")
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    dx = np.full(x.shape, 7.0, np.float32)  # stale contents must be overwritten
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert nk.max_pool2d_backward(dy, idx, x.shape, out=dx) is dx
    np.testing.assert_array_equal(dx, ref_backward(dy, idx_ref, x.shape))
    dx[...] = 7.0
    nk.max_pool2d_backward(dy, idx, x.shape, out=dx, pool_size=2)
    np.testing.assert_array_equal(dx, ref_backward(dy, idx_ref, x.shape))


def test_empty_and_output_shape():
    y, idx = nk.max_pool2d(np.zeros((0, 4, 4, 3), np.float32))
    assert y.shape == (0, 2, 2, 3) and idx.shape == (0, 2, 2, 3)
    y, idx = nk.max_pool2d(np.zeros((2, 4, 4, 0)))
    assert y.shape == (2, 2, 2, 0)
    assert nk.max_pool2d_output_shape((8, 24, 24, 64)) == (8, 12, 12, 64)
    assert nk.max_pool2d_output_shape((1, 5, 7, 3), 2, None, "same") == (1, 3, 4, 3)
    assert nk.max_pool2d_output_shape((1, 5, 7, 3), (3, 2), (2, 1)) == (1, 2, 6, 3)
    dx = nk.max_pool2d_backward(np.zeros((0, 2, 2, 3)), np.zeros((0, 2, 2, 3), np.int32),
                                (0, 4, 4, 3))
    assert dx.shape == (0, 4, 4, 3)


# ---------------------------------------------------------------- errors --

def test_forward_errors():
    x = np.zeros((2, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="4-D"):
        nk.max_pool2d(np.zeros((6, 6, 3), np.float32))
    with pytest.raises(TypeError, match="float32 or float64"):
        nk.max_pool2d(x.astype(np.int32))
    for bad in [0, -1, (2, 0), (1, 2, 3), 2**31]:
        with pytest.raises(ValueError, match="pool_size"):
            nk.max_pool2d(x, bad)
    for bad in [True, "2", 2.0, (2, 2.0)]:
        with pytest.raises((TypeError, ValueError), match="pool_size"):
            nk.max_pool2d(x, bad)
    with pytest.raises(ValueError, match="strides"):
        nk.max_pool2d(x, 2, (0, 1))
    with pytest.raises(ValueError, match="padding"):
        nk.max_pool2d(x, 2, padding="full")
    with pytest.raises(ValueError, match="larger than the input"):
        nk.max_pool2d(x, (7, 2))
    with pytest.raises(ValueError, match="shape"):
        nk.max_pool2d(x, 2, out=np.empty((2, 3, 3, 4), np.float32))
    with pytest.raises(TypeError, match="dtype"):
        nk.max_pool2d(x, 2, out=np.empty((2, 3, 3, 3), np.float64))
    with pytest.raises(ValueError, match="C-contiguous"):
        nk.max_pool2d(x, 2, out=np.empty((2, 3, 3, 6), np.float32)[..., ::2])
    ro = np.empty((2, 3, 3, 3), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        nk.max_pool2d(x, 2, out=ro)
    big = np.zeros((2, 6, 6, 3), np.float32)
    with pytest.raises(ValueError, match="overlaps"):
        nk.max_pool2d(big, 2, out=big.reshape(-1)[:54].reshape(2, 3, 3, 3))
    with pytest.raises(TypeError, match="int32"):
        nk.max_pool2d(x, 2, indices=np.empty((2, 3, 3, 3), np.int64))
    with pytest.raises(ValueError, match="shape"):
        nk.max_pool2d(x, 2, indices=np.empty((2, 3, 3, 2), np.int32))
    with pytest.raises(ValueError, match="int32"):
        nk.max_pool2d_output_shape((1, 2**16, 2**16, 1))


def test_backward_errors():
    x = np.random.default_rng(0).standard_normal((2, 6, 6, 3))
    y, idx = nk.max_pool2d(x, 2)
    dy = np.ones_like(y)
    with pytest.raises(TypeError, match="int32"):
        nk.max_pool2d_backward(dy, idx.astype(np.int64), x.shape)
    with pytest.raises(TypeError, match="int32"):
        nk.max_pool2d_backward(dy, idx.tolist(), x.shape)
    with pytest.raises(ValueError, match="shape"):
        nk.max_pool2d_backward(dy, idx[:, :2], x.shape)
    with pytest.raises(ValueError, match="batch or channels"):
        nk.max_pool2d_backward(dy, idx, (2, 6, 6, 4))
    with pytest.raises(ValueError, match="4 entries"):
        nk.max_pool2d_backward(dy, idx, (2, 6, 6))
    with pytest.raises(ValueError, match="negative"):
        nk.max_pool2d_backward(dy, idx, (2, -6, 6, 3))
    with pytest.raises(ValueError, match="does not fit"):
        nk.max_pool2d_backward(dy, idx, (2, 2**16, 2**16, 3))
    with pytest.raises(TypeError, match="dtype"):
        nk.max_pool2d_backward(dy, idx, x.shape, out=np.empty(x.shape, np.float32))
    with pytest.raises(ValueError, match="overlaps"):
        nk.max_pool2d_backward(dy, idx, (2, 3, 3, 3), out=dy)
    with pytest.raises(ValueError, match="does not match the pooling"):
        nk.max_pool2d_backward(dy, idx, x.shape, pool_size=3)
    for bad in (-1, 36, 2**31 - 1, -2**31):
        i2 = idx.copy()
        i2[1, 2, 0, 1] = bad
        with pytest.raises(ValueError, match="outside"):
            nk.max_pool2d_backward(dy, i2, x.shape)
        with pytest.raises(ValueError, match="outside"):
            nk.max_pool2d_backward(dy, i2, x.shape, pool_size=2)
    i2 = idx.copy()
    i2[0, 0, 0, 0] = 35  # in range, but not in its window
    nk.max_pool2d_backward(dy, i2, x.shape)  # scatter accepts any in-range index
    with pytest.raises(ValueError, match="window"):
        nk.max_pool2d_backward(dy, i2, x.shape, pool_size=2)


@pytest.mark.parametrize("isa_name", ISAS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pool,padding,shape", [
    ((2, 2), "valid", (3, 7, 9, 17)),    # remainder row/col not covered by windows
    ((3, 2), "same", (2, 7, 5, 33)),
    ((2, 3), "valid", (1, 4, 12, 8)),
    ((1, 1), "valid", (2, 3, 3, 5)),
    ((4, 4), "same", (2, 5, 6, 16)),
])
def test_non_overlapping_gather(isa_name, dtype, pool, padding, shape):
    """strides == pool_size (the common case, with its own AVX-512 kernel)."""
    rng = np.random.default_rng(11)
    x = rng.integers(-3, 3, size=shape).astype(dtype)
    x.flat[::7] = -0.0
    with isa(isa_name):
        y, idx = nk.max_pool2d(x, pool, padding=padding)
        dy = rng.standard_normal(y.shape).astype(dtype)
        dy.flat[::5] = -0.0
        dx = np.full(shape, np.nan, dtype)
        nk.max_pool2d_backward(dy, idx, shape, out=dx, pool_size=pool, padding=padding)
        ref = ref_backward(dy, idx, shape)
        np.testing.assert_array_equal(dx, ref)
        assert not np.signbit(dx).any() or np.array_equal(np.signbit(dx), np.signbit(ref))
        bad = idx.copy()
        bad.flat[len(bad.flat) // 2] = -5
        with pytest.raises(ValueError, match="window"):
            nk.max_pool2d_backward(dy, bad, shape, pool_size=pool, padding=padding)


@pytest.mark.parametrize("isa_name", ISAS)
def test_scatter_guess_falls_back(isa_name):
    """The index-only backward first tries non-overlapping (H/OH)x(W/OW)
    windows; an in-range index outside its guessed window (past the sampled
    first row) must make it fall back to the true scatter."""
    rng = np.random.default_rng(5)
    shape = (3, 8, 6, 19)
    x = rng.standard_normal(shape)
    y, idx = nk.max_pool2d(x, 2)
    dy = rng.standard_normal(y.shape)
    idx = idx.copy()
    idx[2, 3, 1, 4] = 0            # in range, far from its window
    idx[1, 2, 2, 18] = idx[1, 2, 1, 18]  # two outputs pointing at one element
    with isa(isa_name):
        dx = nk.max_pool2d_backward(dy, idx, shape)
    np.testing.assert_array_equal(dx, ref_backward(dy, idx, shape))
    # overlapping windows (3x3 / 2): the guess is rejected, the scatter sums
    y, idx = nk.max_pool2d(x, 3, 2, "same")
    dy = rng.standard_normal(y.shape)
    with isa(isa_name):
        dx = nk.max_pool2d_backward(dy, idx, shape)
    np.testing.assert_array_equal(dx, ref_backward(dy, idx, shape))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ops_backward_relu_mask_reference_matches_cpu(dtype):
    """The backends' max_pool2d_backward(y=) (the reference Ops, written
    against NumPy/CuPy, and CPUOps on nnkernels) agree bit for bit."""
    from pynn import backend
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 8, 7, 5)).astype(dtype)
    y, idx = nk.max_pool2d(x, 2)
    y[0, 0, 0, :2] = np.nan
    y[1, 1, 1, 1] = -0.0
    dy = rng.standard_normal(y.shape).astype(dtype)
    ref = backend.Ops().max_pool2d_backward(dy, idx, x.shape, y=y, pool_size=(2, 2))
    cpu = backend.get_ops("cpu").max_pool2d_backward(dy, idx, x.shape, y=y, pool_size=(2, 2))
    assert ref.tobytes() == cpu.tobytes()
    plain = backend.get_ops("cpu").max_pool2d_backward(np.where(y > 0, dy, 0).astype(dtype),
                                                       idx, x.shape, pool_size=(2, 2))
    assert cpu.tobytes() == plain.tobytes()

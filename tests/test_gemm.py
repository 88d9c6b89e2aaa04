"""nnkernels.gemm against a float64 NumPy reference, on every kernel path."""
import concurrent.futures

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import nnkernels as nk
from reference import (
    assert_bitwise_equal,
    assert_close,
    bits,
    gemm_ref,
)
from strategies import (
    DTYPES,
    GUARD,
    GemmCase,
    dims,
    gemm_cases,
    make_array,
    ndarrays,
    random_values,
    with_layout,
)


def run_case(case: GemmCase):
    """Run one GemmCase through nk.gemm and check everything about it:
    values against the reference, identity/shape/dtype of the result, inputs
    unchanged, guard region around a rowslice out untouched."""
    d = case.build()
    a, b, c, bias, out = d["a"], d["b"], d["c"], d["bias"], d["out"]
    dt = np.dtype(case.dtype)
    before = {name: bits(arr).copy() for name, arr in
              (("a", a), ("b", b), ("bias", bias)) if arr is not None}
    if case.c_mode in ("separate", "nan_ignored"):
        before["c"] = bits(c).copy()
    beta = case.beta if case.c_mode in ("separate", "inplace") else 0.0

    result = nk.gemm(a, b, trans_a=case.trans_a, trans_b=case.trans_b,
                     alpha=case.alpha, beta=beta, c=c, bias=bias,
                     activation=case.activation, out=out)

    if out is not None:
        assert result is out, "gemm must return the `out` it was given"
    else:
        assert isinstance(result, np.ndarray)
        assert result.flags.c_contiguous
    assert result.shape == (case.m, case.n)
    assert result.dtype == dt

    ref, scale = gemm_ref(a, b, trans_a=case.trans_a, trans_b=case.trans_b,
                          alpha=case.alpha, beta=case.effective_beta, c=d["c_values"],
                          bias=bias, activation=case.activation, dtype=dt)
    assert_close(result, ref, scale, dt, case.k)

    for name, old in before.items():
        arr = {"a": a, "b": b, "bias": bias, "c": c}[name]
        assert np.array_equal(bits(arr), old), f"gemm modified its input {name}"
    if d["big"] is not None:
        big = d["big"].copy()
        big[d["window"]] = GUARD
        bad = np.argwhere(bits(big) != bits(np.full_like(big, GUARD)))
        assert bad.size == 0, (
            f"gemm wrote outside out (a row-slice view of a wider array): "
            f"{len(bad)} guard elements changed, first at {tuple(bad[0])} of big "
            f"{big.shape}, out window {d['window']}")
    return result


# ------------------------------------------------------------ properties --

@given(case=gemm_cases())
def test_gemm_matches_reference(case, isa, num_threads):
    run_case(case)


@given(case=gemm_cases(max_dim=40))
def test_gemm_small_matches_reference(case, isa):
    """Small shapes (mostly partial micro-tiles and single slivers), more of
    them per path."""
    run_case(case)


@given(data=st.data())
def test_same_array_as_a_and_b(data, isa):
    """a and b may be the same array (x @ x.T, x.T @ x): inputs may alias each
    other, only out may not alias them."""
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    m = data.draw(dims(), label="m")
    k = data.draw(dims(), label="k")
    x = data.draw(ndarrays((m, k), dtype), label="x")
    for trans_a, trans_b in ((False, True), (True, False)):
        got = nk.gemm(x, x, trans_a=trans_a, trans_b=trans_b)
        ref, scale = gemm_ref(x, x, trans_a=trans_a, trans_b=trans_b)
        assert_close(got, ref, scale, dtype, m if trans_a else k)


@st.composite
def exact_cases(draw):
    """Integer-valued operands and power-of-two alpha/beta: every product and
    partial sum is exact in float32 and float64, so the result must equal the
    reference exactly whatever the summation order."""
    case = draw(gemm_cases(kind="int"))
    alpha = draw(st.sampled_from([1.0, -1.0, 2.0, 0.5, 0.0]))
    beta = draw(st.sampled_from([1.0, -1.0, 2.0, 0.5])) if case.effective_beta else 0.0
    return GemmCase(**{**case.__dict__, "alpha": alpha, "beta": beta})


@given(case=exact_cases())
def test_gemm_exact_on_integer_values(case, isa):
    d = case.build()
    beta = case.beta if case.c_mode in ("separate", "inplace") else 0.0
    got = nk.gemm(d["a"], d["b"], trans_a=case.trans_a, trans_b=case.trans_b,
                  alpha=case.alpha, beta=beta, c=d["c"], bias=d["bias"],
                  activation=case.activation, out=d["out"])
    ref, _ = gemm_ref(d["a"], d["b"], trans_a=case.trans_a, trans_b=case.trans_b,
                      alpha=case.alpha, beta=case.effective_beta, c=d["c_values"],
                      bias=d["bias"], activation=case.activation)
    if not np.array_equal(got, ref.astype(case.dtype)):
        bad = np.argwhere(got != ref.astype(case.dtype))
        i = tuple(bad[0])
        raise AssertionError(f"{len(bad)} elements differ from the exact result; "
                             f"first at {i}: got {got[i]!r}, expected {ref[i]!r}")


# ------------------------------------------------------------ empty dims --

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(0, 5, 3), (5, 0, 3), (0, 0, 3), (0, 0, 0),
                                   (0, 5, 0), (5, 0, 0), (0, 300, 40), (300, 0, 40)])
@pytest.mark.parametrize("trans_a,trans_b", [(False, False), (True, True)])
def test_empty_output(m, n, k, dtype, trans_a, trans_b, isa):
    a = np.ones((k, m) if trans_a else (m, k), dtype)
    b = np.ones((n, k) if trans_b else (k, n), dtype)
    r = nk.gemm(a, b, trans_a=trans_a, trans_b=trans_b)
    assert r.shape == (m, n) and r.dtype == np.dtype(dtype)
    out = np.empty((m, n), dtype)
    c = np.ones((m, n), dtype)
    bias = np.ones((n,), dtype)
    r = nk.gemm(a, b, trans_a=trans_a, trans_b=trans_b, beta=1.0, c=c, bias=bias,
                activation="relu", out=out)
    assert r is out and r.shape == (m, n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 1), (5, 37), (64, 64), (33, 300)])
def test_k_zero(m, n, dtype, isa):
    """K = 0: the product is empty; out = act(beta * c + bias), zeros without
    c and bias, and out's previous content must not survive."""
    rng = np.random.default_rng(m * 1000 + n)
    a = np.ones((m, 0), dtype)
    b = np.ones((0, n), dtype)
    c = random_values(rng, (m, n), dtype, "normal")
    bias = random_values(rng, (n,), dtype, "normal")

    out = np.full((m, n), np.nan, dtype)
    r = nk.gemm(a, b, out=out)
    assert r is out
    assert np.array_equal(r, np.zeros((m, n), dtype))
    assert np.array_equal(nk.gemm(a, b, alpha=3.0), np.zeros((m, n), dtype))
    assert np.array_equal(nk.gemm(a.T.copy(), b.T.copy(), trans_a=True, trans_b=True),
                          np.zeros((m, n), dtype))

    r = nk.gemm(a, b, bias=bias)
    assert np.array_equal(r, np.broadcast_to(bias, (m, n)))

    for act in (None, "relu"):
        ref, scale = gemm_ref(a, b, beta=-1.5, c=c, bias=bias, activation=act)
        r = nk.gemm(a, b, beta=-1.5, c=with_layout(c, "strided"), bias=bias,
                    activation=act, out=np.full((m, n), np.nan, dtype))
        assert_close(r, ref, scale, dtype, 0)
        r = nk.gemm(a, b, beta=0.0, c=np.full((m, n), np.nan, dtype), activation=act)
        assert np.array_equal(r, np.zeros((m, n), dtype)), "NaN c leaked with beta=0, K=0"

    # in place: out = 2 * out
    out = c.copy()
    r = nk.gemm(a, b, beta=2.0, c=out, out=out)
    assert r is out
    assert np.array_equal(out, 2 * c)


# ------------------------------------------------------ blocking / sizes --

def _check_big(m, n, k, dtype, trans_a, trans_b, c_mode, seed=0, layout_a="C",
               layout_b="C", alpha=0.75, beta=-0.5):
    case = GemmCase(m=m, n=n, k=k, dtype=dtype, trans_a=trans_a, trans_b=trans_b,
                    layout_a=layout_a, layout_b=layout_b, alpha=alpha, beta=beta,
                    c_mode=c_mode, layout_c="C", with_bias=True, activation="relu",
                    out_mode="rowslice", seed=seed)
    return run_case(case)


def test_large_float32_crosses_every_block(isa):
    """M=400, N=3100, K=800 (float32) crosses MC (<= 192 rows), NC (3072
    columns on AVX-512, 2048/3072 elsewhere) and KC (384 / 256): several
    k-blocks, so beta*c, bias and relu must be applied exactly once."""
    nk.set_num_threads(2)
    _check_big(400, 3100, 800, "float32", False, True, "separate")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trans_a,trans_b,layout_a,layout_b", [
    (False, False, "C", "C"),
    (True, False, "F", "strided"),
    (False, True, "negative", "C"),
])
def test_k_blocks_in_place_accumulate(dtype, trans_a, trans_b, layout_a, layout_b, isa,
                                      num_threads):
    """K = 520 > KC (every path/dtype) with c = out in place (beta = 1): out is
    read as c in the first k-block and as the running sum in the later ones."""
    _check_big(150, 2100, 520, dtype, trans_a, trans_b, "inplace", seed=1,
               layout_a=layout_a, layout_b=layout_b, beta=1.0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_wide_few_rows_crosses_nc(dtype, isa, num_threads):
    """Few rows and N = 7000: with 2 threads the column-split mode, each
    thread's columns still cross NC."""
    _check_big(5, 7000, 300, dtype, False, False, "separate", seed=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 3000), (3000, 1, 7), (1, 3000, 7),
                                   (385, 33, 1), (2, 2, 1025)])
def test_degenerate_long_shapes(m, n, k, dtype, isa):
    for ta in (False, True):
        for tb in (False, True):
            run_case(GemmCase(m=m, n=n, k=k, dtype=dtype, trans_a=ta, trans_b=tb,
                              layout_a="strided", layout_b="negative", alpha=1.0,
                              beta=0.5, c_mode="separate", layout_c="F", with_bias=True,
                              activation=None, out_mode="given", seed=m + n + k))


def _b_views(k, n, dtype, seed):
    """op(B) of shape (k, n) with unit column stride in several ways (the
    layout a kernel may read in place instead of packing), plus its values."""
    rng = np.random.default_rng(seed)
    vals = random_values(rng, (k, n), dtype)
    wide = np.full((k, n + 9), np.nan, dtype)
    wide[:, 4:4 + n] = vals
    back = np.full((k, n), np.nan, dtype)
    back[::-1] = vals
    bt = np.asfortranarray(vals.T)  # (n, k) F-order: op(B) = bt.T is row-major
    return [
        ("C", vals, False),
        ("row_slice_of_wider", wide[:, 4:4 + n], False),
        ("rows_backwards", back[::-1], False),
        ("F_transposed", bt, True),
        ("broadcast_rows", np.broadcast_to(vals[0], (k, n)), False),
    ]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m", [1, 9, 64, 200])
@pytest.mark.parametrize("n", [1, 33, 2100])
def test_row_major_b_with_few_rows(m, n, dtype, isa, num_threads):
    """Few rows of A and row-major op(B) (any row stride, even negative or
    zero): B may be read in place; K = 400 crosses the k-blocks; the last
    column sliver is ragged for most n."""
    k = 400
    rng = np.random.default_rng(m * 7 + n)
    a = random_values(rng, (m, k), dtype)
    c = random_values(rng, (m, n), dtype)
    bias = random_values(rng, (n,), dtype)
    refs = {}
    for name, b, trans_b in _b_views(k, n, dtype, m + n):
        bb = b.T if trans_b else b
        got = nk.gemm(a, b, trans_b=trans_b, alpha=1.5, beta=-1.0, c=c, bias=bias,
                      activation="relu")
        key = "broadcast" if name == "broadcast_rows" else "values"
        if key not in refs:
            refs[key] = gemm_ref(a, bb, alpha=1.5, beta=-1.0, c=c, bias=bias,
                                 activation="relu")
        assert_close(got, *refs[key], dtype, k, what=f"B {name}")


# ----------------------------------------------------------------- out --

@pytest.mark.parametrize("dtype", DTYPES)
def test_out_given_equals_returned(dtype, isa):
    rng = np.random.default_rng(3)
    a = random_values(rng, (77, 130), dtype)
    b = random_values(rng, (130, 45), dtype)
    bias = random_values(rng, (45,), dtype)
    r1 = nk.gemm(a, b, bias=bias, activation="relu")
    assert r1.flags.c_contiguous and r1.flags.writeable and r1.dtype == np.dtype(dtype)
    for fill in (np.nan, np.inf, 0.0, 123.0):
        out = np.full((77, 45), fill, dtype)
        r2 = nk.gemm(a, b, bias=bias, activation="relu", out=out)
        assert r2 is out
        assert_bitwise_equal(r1, r2, f"out prefilled with {fill}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (8, 32, 5), (9, 33, 17), (6, 16, 3),
                                   (37, 70, 300), (200, 129, 400), (16, 3100, 40)])
@pytest.mark.parametrize("col0", [0, 1, 5])
def test_out_row_slice_of_wider_array(m, n, k, dtype, col0, isa, num_threads):
    """out = big[r0:r0+m, col0:col0+n] (rows unit stride, row stride wider
    than n) is accepted; every element of big outside it stays untouched."""
    rng = np.random.default_rng(m + n + k + col0)
    a = random_values(rng, (m, k), dtype)
    b = random_values(rng, (k, n), dtype)
    c = random_values(rng, (m, n), dtype)
    bias = random_values(rng, (n,), dtype)
    for beta, inplace in ((0.0, False), (1.0, True), (0.5, False)):
        big = np.full((m + 3, col0 + n + 13), GUARD, dtype)
        out = big[2:2 + m, col0:col0 + n]
        out[...] = c if inplace else np.nan
        r = nk.gemm(a, b, beta=beta, c=out if inplace else c, bias=bias, out=out)
        assert r is out
        ref, scale = gemm_ref(a, b, beta=beta, c=c, bias=bias)
        assert_close(big[2:2 + m, col0:col0 + n], ref, scale, dtype, k)
        big[2:2 + m, col0:col0 + n] = GUARD
        assert np.array_equal(bits(big), bits(np.full_like(big, GUARD))), \
            f"gemm wrote outside out (beta={beta}, inplace={inplace})"


# -------------------------------------------------------- thread counts --

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k,trans_a,trans_b", [
    (256, 512, 300, False, False),   # row split ("coop", shared B panels)
    (9, 4000, 200, True, False),     # few rows: column split
    (67, 1500, 700, False, True),    # several k-blocks, partial tiles
    (130, 3300, 90, True, True),     # crosses NC
])
def test_bitwise_identical_for_1_and_2_threads(m, n, k, trans_a, trans_b, dtype, isa):
    """Every output element is computed by one thread with k ascending, so the
    result must not depend on the thread count, to the bit."""
    rng = np.random.default_rng(m * n + k)
    a = with_layout(random_values(rng, (k, m) if trans_a else (m, k), dtype), "C")
    b = with_layout(random_values(rng, (n, k) if trans_b else (k, n), dtype), "F")
    c = random_values(rng, (m, n), dtype)
    bias = random_values(rng, (n,), dtype)
    kw = dict(trans_a=trans_a, trans_b=trans_b, alpha=0.7, beta=0.3, c=c, bias=bias,
              activation="relu")
    nk.set_num_threads(1)
    r1 = nk.gemm(a, b, **kw)
    nk.set_num_threads(2)
    r2 = nk.gemm(a, b, **kw)
    r2b = nk.gemm(a, b, **kw)
    assert_bitwise_equal(r2, r2b, "two runs with 2 threads")
    assert_bitwise_equal(r1, r2, "1 thread vs 2 threads")
    ref, scale = gemm_ref(a, b, **kw)
    assert_close(r1, ref, scale, dtype, k)


# -------------------------------------------------------------- float64 --

def test_float64_matches_numpy_closely(isa):
    rng = np.random.default_rng(4)
    a = rng.standard_normal((257, 300))
    b = rng.standard_normal((300, 129))
    got = nk.gemm(a, b)
    want = a @ b
    scale = np.abs(a) @ np.abs(b)
    err = np.abs(got - want) / scale
    assert err.max() <= 1e-13, f"float64 gemm differs from numpy by {err.max():.3g} (relative)"
    # a float32 computation could not get this close: make sure it is float64
    assert got.dtype == np.float64


# ------------------------------------------------------------------ NaN --

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n,k", [(37, 70, 19), (64, 64, 64), (3, 5, 0)])
def test_relu_propagates_nan_and_handles_inf(m, n, k, dtype, isa):
    rng = np.random.default_rng(5)
    a = random_values(rng, (m, k), dtype)
    b = random_values(rng, (k, n), dtype)
    bias = random_values(rng, (n,), dtype)
    if k:
        a[1, k // 2] = np.nan         # row 1 of the product is NaN
    bias[2] = np.nan                  # column 2 is NaN
    bias[3] = np.inf                  # column 3 is +inf
    bias[4] = -np.inf                 # column 4 is -inf -> relu 0
    for act in ("relu", None):
        got = nk.gemm(a, b, bias=bias, activation=act)
        ref, scale = gemm_ref(a, b, bias=bias, activation=act)
        assert np.isnan(got[:, 2]).all(), f"{act}: NaN bias did not propagate"
        if k:
            assert np.isnan(got[1]).all(), f"{act}: NaN in a did not propagate"
        rows = [i for i in range(m) if not (k and i == 1)]
        assert (got[rows, 3] == np.inf).all()
        assert (got[rows, 4] == (0 if act == "relu" else -np.inf)).all()
        finite = np.isfinite(ref)
        assert_close(np.where(finite, got, 0), np.where(finite, ref, 0),
                     np.where(finite, scale, 0), dtype, k)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_in_ignored_c_and_out_never_leaks(dtype, isa, num_threads):
    """beta = 0: c is not read; out's old content is not read (also with
    c = out).  Shapes with full and partial tiles and several k-blocks."""
    rng = np.random.default_rng(6)
    for m, n, k in ((70, 100, 700), (8, 32, 1), (300, 300, 300)):
        a = random_values(rng, (m, k), dtype)
        b = random_values(rng, (k, n), dtype)
        nanc = np.full((m, n), np.nan, dtype)
        ref, scale = gemm_ref(a, b, activation="relu")
        for c, out in ((nanc, None), (nanc, np.full((m, n), np.nan, dtype)),
                       (with_layout(nanc, "F"), None)):
            got = nk.gemm(a, b, beta=0.0, c=c, activation="relu", out=out)
            assert_close(got, ref, scale, dtype, k)
        out = np.full((m, n), np.nan, dtype)
        got = nk.gemm(a, b, beta=0.0, c=out, out=out, activation="relu")
        assert_close(got, ref, scale, dtype, k)


# ------------------------------------------------------- special strides --

def _views(dtype):
    """Named 2-D views of shape (40, 33) with unusual strides."""
    rng = np.random.default_rng(7)
    base = random_values(rng, (40, 33), dtype)
    huge = np.full((40 * 97, 33 * 11), np.nan, dtype)
    huge[::97, ::11] = base
    rows = np.full((40, 33 * 4), np.nan, dtype)
    rows[::-1, 1::4] = base
    return {
        "C": base,
        "F": np.asfortranarray(base),
        "step2_step3": with_layout(base, "strided"),
        "neg_rows": np.ascontiguousarray(base[::-1])[::-1],
        "neg_cols": np.ascontiguousarray(base[:, ::-1])[:, ::-1],
        "huge_strides": huge[::97, ::11],
        "neg_rows_step4_cols": rows[::-1, 1::4],
        "transposed_view": np.ascontiguousarray(base.T).T,
        "broadcast_row": np.broadcast_to(base[3], base.shape),
        "broadcast_col": np.broadcast_to(base[:, 5:6], base.shape),
    }


@pytest.mark.parametrize("dtype", DTYPES)
def test_unusual_stride_views(dtype, isa):
    views = _views(dtype)
    for name_a, a in views.items():
        for name_b, b in (("C", views["C"]), ("neg_rows", views["neg_rows"]),
                          ("huge_strides", views["huge_strides"]),
                          ("broadcast_row", views["broadcast_row"])):
            for ta, tb, aa, bb in ((False, True, a, b), (True, False, a, b)):
                got = nk.gemm(aa, bb, trans_a=ta, trans_b=tb)
                ref, scale = gemm_ref(aa, bb, trans_a=ta, trans_b=tb)
                assert_close(got, ref, scale, dtype, 33 if not ta else 40,
                             what=f"a={name_a} (trans {ta}), b={name_b} (trans {tb})")


# ------------------------------------------------------------ concurrency --

def test_concurrent_calls_from_python_threads(isa, num_threads):
    """Calls from several Python threads at once (the GIL is released; the
    packing arena is then busy and calls must fall back to private buffers)."""
    def job(seed):
        rng = np.random.default_rng(seed)
        dt = ("float32", "float64")[seed % 2]
        m, n, k = rng.integers(1, 300, size=3)
        a = random_values(rng, (m, k), dt)
        b = random_values(rng, (k, n), dt)
        bias = random_values(rng, (n,), dt)
        results = []
        for _ in range(4):
            results.append(nk.gemm(a, b, bias=bias, activation="relu"))
        ref, scale = gemm_ref(a, b, bias=bias, activation="relu")
        for r in results:
            assert_close(r, ref, scale, dt, k, what=f"job {seed} ({m}x{n}x{k} {dt})")
        return True

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as ex:
        assert all(ex.map(job, range(24)))


def test_release_workspace_between_calls():
    a = make_array((300, 400), "float32", seed=8)
    b = make_array((400, 200), "float32", seed=9)
    r1 = nk.gemm(a, b)
    nk.release_workspace()
    r2 = nk.gemm(a, b)
    nk.release_workspace()
    nk.release_workspace()
    r3 = nk.gemm(a, b)
    assert_bitwise_equal(r1, r2)
    assert_bitwise_equal(r1, r3)


def test_alpha_beta_accept_numpy_and_python_scalars():
    a = make_array((20, 30), "float64", seed=10)
    b = make_array((30, 10), "float64", seed=11)
    c = make_array((20, 10), "float64", seed=12)
    r1 = nk.gemm(a, b, alpha=2, beta=np.float32(0.5), c=c)
    ref, scale = gemm_ref(a, b, alpha=2.0, beta=0.5, c=c)
    assert_close(r1, ref, scale, "float64", 30)

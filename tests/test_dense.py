"""dense_forward / dense_backward against NumPy, plus finite-difference
gradient checks of the whole dense layer."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import nnkernels as nk
from reference import (
    assert_bitwise_equal,
    assert_close,
    dense_backward_ref,
    gemm_ref,
)
from strategies import (
    DTYPES,
    DenseCase,
    dense_cases,
    dims,
    random_values,
    seeds,
)


# --------------------------------------------------------------- forward --

@given(case=dense_cases())
def test_dense_forward_matches_numpy(case, isa):
    d = case.build()
    x, w, b = d["x"], d["w"], d["b"]
    y = nk.dense_forward(x, w, b, activation=case.activation)
    ref, scale = gemm_ref(x, w, bias=b, activation=case.activation)
    assert y.dtype == np.dtype(case.dtype)
    assert_close(y, ref, scale, case.dtype, case.n_in)
    if case.activation == "relu":
        assert (y >= 0).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("with_bias", [False, True])
def test_dense_forward_is_fused_gemm(dtype, activation, with_bias, isa):
    rng = np.random.default_rng(1)
    x = random_values(rng, (53, 70), dtype)
    w = random_values(rng, (70, 41), dtype)
    b = random_values(rng, (41,), dtype) if with_bias else None
    y = nk.dense_forward(x, w, b, activation)
    assert_bitwise_equal(y, nk.gemm(x, w, bias=b, activation=activation))
    out = np.full((53, 41), np.nan, dtype)
    y2 = nk.dense_forward(x, w, b, activation=activation, out=out)
    assert y2 is out
    assert_bitwise_equal(y, y2)
    ref, scale = gemm_ref(x, w, bias=b, activation=activation)
    assert_close(y, ref, scale, dtype, 70)


# -------------------------------------------------------------- backward --

@st.composite
def backward_options(draw):
    need_dx = draw(st.booleans())
    need_db = draw(st.booleans())
    accumulate = draw(st.booleans())
    # preallocated outputs: accumulate needs dw (and db when need_db)
    give_dw = accumulate or draw(st.booleans())
    give_db = (accumulate and need_db) or draw(st.booleans())
    give_dx = draw(st.booleans())
    return dict(need_dx=need_dx, need_db=need_db, accumulate=accumulate,
                give_dx=give_dx, give_dw=give_dw, give_db=give_db)


def _check_backward(case: DenseCase, opts, seed=0):
    d = case.build()
    x, w, y, dy = d["x"], d["w"], d["y"], d["dy"]
    dt = np.dtype(case.dtype)
    rng = np.random.default_rng(seed)
    dw0 = random_values(rng, (case.n_in, case.units), dt)
    db0 = random_values(rng, (case.units,), dt)
    kw = dict(need_dx=opts["need_dx"], need_db=opts["need_db"], accumulate=opts["accumulate"])
    if opts["give_dx"]:
        kw["dx"] = np.full((case.batch, case.n_in), np.nan, dt)
    if opts["give_dw"]:
        kw["dw"] = dw0.copy() if opts["accumulate"] else np.full(dw0.shape, np.nan, dt)
    if opts["give_db"]:
        kw["db"] = db0.copy() if opts["accumulate"] else np.full(db0.shape, np.nan, dt)
    y_arg = y if case.activation == "relu" else None
    inputs_before = [a.copy() for a in (x, w, y, dy)]

    if (opts["give_dx"] and not opts["need_dx"]) or (opts["give_db"] and not opts["need_db"]):
        # a buffer that would not be written is refused (the caller would
        # read an array the call never filled)
        with pytest.raises(ValueError, match="would not be written"):
            nk.dense_backward(dy, x, w, y_arg, activation=case.activation, **kw)
        return
    dx, dw, db = nk.dense_backward(dy, x, w, y_arg, activation=case.activation, **kw)

    (rdx, sdx), (rdw, sdw), (rdb, sdb) = dense_backward_ref(dy, x, w, y, case.activation)
    if opts["need_dx"]:
        assert dx is not None and dx.dtype == dt
        if opts["give_dx"]:
            assert dx is kw["dx"]
        assert_close(dx, rdx, sdx, dt, case.units, what="dx")
    else:
        assert dx is None
    assert dw.dtype == dt
    if opts["give_dw"]:
        assert dw is kw["dw"]
    if opts["accumulate"]:
        rdw, sdw = rdw + dw0, sdw + np.abs(dw0)
    assert_close(dw, rdw, sdw, dt, case.batch, what="dw")
    if opts["need_db"]:
        assert db is not None and db.dtype == dt and db.shape == (case.units,)
        if opts["give_db"]:
            assert db is kw["db"]
        if opts["accumulate"]:
            rdb, sdb = rdb + db0, sdb + np.abs(db0)
        assert_close(db, rdb, sdb, dt, case.batch, what="db")
    else:
        assert db is None
        if opts["give_db"]:
            untouched = db0 if opts["accumulate"] else np.full(db0.shape, np.nan, dt)
            assert np.array_equal(kw["db"], untouched, equal_nan=True), \
                "need_db=False must leave a given db alone"
    for before, after in zip(inputs_before, (x, w, y, dy)):
        assert np.array_equal(before, after), "dense_backward modified an input"


@given(case=dense_cases(), opts=backward_options(), seed=seeds())
def test_dense_backward_matches_numpy(case, opts, seed, isa, num_threads):
    _check_backward(case, opts, seed)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [None, "linear", "relu"])
@pytest.mark.parametrize("need_dx", [False, True])
@pytest.mark.parametrize("need_db", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_dense_backward_all_options(dtype, activation, need_dx, need_db, accumulate, isa):
    """Every combination of the options once, on a shape with partial tiles
    and several k-blocks of the dw product (batch 600 > KC)."""
    case = DenseCase(batch=600, n_in=37, units=70, dtype=dtype, activation=activation,
                     with_bias=True, layout_x="C", layout_w="F", layout_dy="strided",
                     layout_y="negative", seed=11)
    opts = dict(need_dx=need_dx, need_db=need_db, accumulate=accumulate,
                give_dx=False, give_dw=accumulate, give_db=accumulate and need_db)
    _check_backward(case, opts)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_accumulate_twice(dtype, isa):
    """Two batches accumulated into the same dw/db equal one batch of both."""
    rng = np.random.default_rng(2)
    x = random_values(rng, (100, 30), dtype)
    w = random_values(rng, (30, 20), dtype)
    y = np.maximum(random_values(rng, (100, 20), dtype), 0)
    dy = random_values(rng, (100, 20), dtype)
    dw = np.zeros((30, 20), dtype)
    db = np.zeros((20,), dtype)
    for sl in (slice(0, 60), slice(60, 100)):
        _, dw_r, db_r = nk.dense_backward(dy[sl], x[sl], w, y[sl], "relu", need_dx=False,
                                          dw=dw, db=db, accumulate=True)
        assert dw_r is dw and db_r is db
    (_, _), (rdw, sdw), (rdb, sdb) = dense_backward_ref(dy, x, w, y, "relu")
    assert_close(dw, rdw, sdw, dtype, 100, what="dw")
    assert_close(db, rdb, sdb, dtype, 100, what="db")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_relu_mask_uses_y(dtype, isa):
    """relu' comes from y > 0: where y == 0 the gradient is cut even though
    dy is not zero; y < 0 (not a relu output, but allowed) also cuts."""
    rng = np.random.default_rng(3)
    x = random_values(rng, (40, 9), dtype)
    w = random_values(rng, (9, 50), dtype)
    dy = np.ones((40, 50), dtype)
    y = np.ones((40, 50), dtype)
    y[:, ::3] = 0.0
    y[5, :] = -1.0
    dx, dw, db = nk.dense_backward(dy, x, w, y, "relu")
    mask = (y > 0).astype(dtype)
    assert np.array_equal(db, mask.sum(0))
    (rdx, sdx), (rdw, sdw), _ = dense_backward_ref(dy, x, w, y, "relu")
    assert_close(dx, rdx, sdx, dtype, 50, what="dx")
    assert_close(dw, rdw, sdw, dtype, 40, what="dw")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,n_in,units", [(0, 5, 7), (5, 0, 7), (5, 7, 0), (0, 0, 0)])
def test_dense_backward_empty(batch, n_in, units, dtype, isa):
    rng = np.random.default_rng(4)
    x = random_values(rng, (batch, n_in), dtype)
    w = random_values(rng, (n_in, units), dtype)
    dy = random_values(rng, (batch, units), dtype)
    y = np.abs(dy)
    dx, dw, db = nk.dense_backward(dy, x, w, y, "relu")
    (rdx, _), (rdw, _), (rdb, _) = dense_backward_ref(dy, x, w, y, "relu")
    assert dx.shape == (batch, n_in) and dw.shape == (n_in, units) and db.shape == (units,)
    assert np.allclose(dx, rdx) and np.allclose(dw, rdw) and np.allclose(db, rdb)
    # accumulate with an empty batch leaves dw/db as they were
    dw0 = random_values(rng, (n_in, units), dtype)
    db0 = random_values(rng, (units,), dtype)
    dw1, db1 = dw0.copy(), db0.copy()
    _, dw2, db2 = nk.dense_backward(dy, x, w, y, "relu", dw=dw1, db=db1, accumulate=True)
    assert dw2 is dw1 and db2 is db1
    assert np.allclose(dw1, dw0 + rdw) and np.allclose(db1, db0 + rdb)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_backward_bitwise_identical_for_1_and_2_threads(dtype, isa):
    case = DenseCase(batch=700, n_in=300, units=129, dtype=dtype, activation="relu",
                     with_bias=True, layout_x="C", layout_w="C", layout_dy="C",
                     layout_y="C", seed=5)
    d = case.build()
    args = (d["dy"], d["x"], d["w"], d["y"], "relu")
    nk.set_num_threads(1)
    r1 = nk.dense_backward(*args)
    nk.set_num_threads(2)
    r2 = nk.dense_backward(*args)
    for name, g1, g2 in zip(("dx", "dw", "db"), r1, r2):
        assert_bitwise_equal(g1, g2, name)


# ----------------------------------------------------- gradient checking --

def _layer(x, w, b, activation):
    return nk.dense_forward(x, w, b, activation=activation)


def _loss(x, w, b, activation, R):
    return float(np.sum(_layer(x, w, b, activation) * R))


def _kink_free_layer(rng, batch, n_in, units, tries=200, margin=1e-3):
    """x, w, b with |x @ w + b| >= margin everywhere (resampled until so),
    or None."""
    for _ in range(tries):
        x = rng.standard_normal((batch, n_in))
        w = rng.standard_normal((n_in, units))
        b = rng.standard_normal(units)
        if np.abs(x @ w + b).min() >= margin:
            return x, w, b
    return None


@given(batch=dims(1, 16), n_in=dims(1, 16), units=dims(1, 16),
       activation=st.sampled_from([None, "relu"]), seed=seeds())
def test_directional_derivatives_float64(batch, n_in, units, activation, seed, isa):
    """loss = sum(y * R): d loss along a random direction, by central
    differences, equals <grad, direction> from dense_backward (dy = R)."""
    rng = np.random.default_rng(seed)
    layer = _kink_free_layer(rng, batch, n_in, units)
    assume(layer is not None)
    x, w, b = layer
    R = rng.standard_normal((batch, units))
    y = _layer(x, w, b, activation)
    dx, dw, db = nk.dense_backward(R, x, w, y, activation=activation)
    eps = 1e-6
    for name, grad in (("x", dx), ("w", dw), ("b", db)):
        v = rng.standard_normal(grad.shape)
        v /= np.linalg.norm(v)
        params = {"x": x, "w": w, "b": b}
        plus = dict(params, **{name: params[name] + eps * v})
        minus = dict(params, **{name: params[name] - eps * v})
        numeric = (_loss(plus["x"], plus["w"], plus["b"], activation, R)
                   - _loss(minus["x"], minus["w"], minus["b"], activation, R)) / (2 * eps)
        analytic = float(np.sum(grad * v))
        # the loss is piecewise linear in each argument away from kinks, so
        # only rounding (~1e-16 * |terms| / eps) separates the two
        size = np.abs(_layer(x, w, b, activation) * R).sum() + 1.0
        assert abs(numeric - analytic) <= 1e-7 * size, (
            f"d loss / d {name}: finite differences {numeric!r}, "
            f"dense_backward {analytic!r}")


@pytest.mark.parametrize("activation", [None, "relu"])
def test_gradient_every_element_float64(activation, isa):
    """Element-by-element central differences on a tiny layer."""
    rng = np.random.default_rng(12345)
    x, w, b = _kink_free_layer(rng, 3, 4, 5, margin=1e-2)
    R = rng.standard_normal((3, 5))
    y = _layer(x, w, b, activation)
    if activation == "relu":
        assert 0 < (y > 0).sum() < y.size, "want both active and inactive units"
    grads = dict(zip("xwb", nk.dense_backward(R, x, w, y, activation=activation)))
    params = {"x": x, "w": w, "b": b}
    eps = 1e-6
    for name, p in params.items():
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            saved = p[idx]
            p[idx] = saved + eps
            lp = _loss(x, w, b, activation, R)
            p[idx] = saved - eps
            lm = _loss(x, w, b, activation, R)
            p[idx] = saved
            num[idx] = (lp - lm) / (2 * eps)
        np.testing.assert_allclose(grads[name], num, rtol=1e-6, atol=1e-7,
                                   err_msg=f"gradient of {name} ({activation})")


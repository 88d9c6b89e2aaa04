"""Hypothesis strategies for the nnkernels tests (after thinc's
tests/strategies.py).

Big arrays are not drawn element by element (slow, and useless output when a
test fails): a strategy draws a small, printable *spec* (shape, dtype,
layout, seed) and builds the array from it with NumPy's generator.  A failing
example therefore prints as a few numbers that rebuild the exact inputs.

Layouts (all give the same values, only the memory differs):
  C            C-contiguous
  F            Fortran-contiguous
  strided      x = big[1::2, 1::3]: positive non-unit strides in both axes
  negative     x = big[::-1, ::-1]: negative strides in both axes
  neg_rows     x = big[::-1, 1:n+1]: rows backwards, columns unit stride
  neg_strided  x = big[::-2, 2::3]: negative row stride, positive column step
  offset       x = big[1:, 1:n+1]: C rows, first element not 64-byte aligned
Every element of `big` that the view does not cover is NaN, so a kernel that
reads outside the view produces NaN in its result.
"""
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
from hypothesis import assume
from hypothesis import strategies as st

DTYPES = ("float32", "float64")
LAYOUTS = ("C", "F", "strided", "negative", "neg_rows", "neg_strided", "offset")
ACTIVATIONS = (None, "linear", "relu")

PRIMES = (7, 13, 31, 97, 127, 251)
# Multiples of 8/16/32 (whole SIMD vectors and micro-tiles) ...
MULTIPLES = (8, 16, 24, 32, 48, 64, 96, 128, 192, 256, 288)
# ... and sizes just around them, plus multiples of 6 (the AVX2 tile height).
NON_MULTIPLES = (2, 3, 4, 5, 6, 9, 12, 15, 17, 18, 33, 47, 63, 65, 100, 129,
                 191, 193, 255, 257, 299, 300)
SPECIAL_DIMS = tuple(sorted(set(PRIMES + MULTIPLES + NON_MULTIPLES)))


# --------------------------------------------------------------- scalars --

def seeds():
    return st.integers(0, 2**32 - 1)


def dims(min_value=1, max_value=300):
    """A dimension in [min_value, max_value]: min_value (1 by default) about
    10% of the time, one of SPECIAL_DIMS (primes, multiples of 8/16/32 and
    their neighbours) about half the time, otherwise any integer in range."""
    special = [d for d in SPECIAL_DIMS if min_value <= d <= max_value]

    def pick(r):
        if r == 0:
            return st.just(min_value)
        if r <= 5 and special:
            return st.sampled_from(special)
        return st.integers(min_value, max_value)

    return st.integers(0, 9).flatmap(pick)


def dtypes():
    return st.sampled_from(DTYPES)


def layouts():
    return st.sampled_from(LAYOUTS)


def activations():
    return st.sampled_from(ACTIVATIONS)


def scalars(special=(1.0, -1.0, 0.5, 2.0)):
    """alpha/beta values: simple ones often, otherwise any with |x| <= 3
    (exactly representable in float32; |x| >= 2**-10: no tiny values whose products
    underflow, which would only test the reference's rounding)."""
    return st.one_of(
        st.sampled_from(special),
        st.floats(2.0**-10, 3.0, width=32),
        st.floats(-3.0, -2.0**-10, width=32),
    )


# ---------------------------------------------------------------- arrays --

def random_values(rng, shape, dtype, kind="uniform"):
    """C-contiguous values: "uniform" in [-1, 1), "int" small integers in
    [-4, 4] (every product and partial sum is exact in float32 for K <= 2**16),
    "normal" standard normal."""
    if kind == "uniform":
        v = rng.uniform(-1.0, 1.0, size=shape)
    elif kind == "int":
        v = rng.integers(-4, 5, size=shape).astype(np.float64)
    elif kind == "normal":
        v = rng.standard_normal(size=shape)
    else:
        raise ValueError(kind)
    return v.astype(dtype)


def with_layout(values, layout):
    """An array equal to `values` (2-D) laid out as `layout` (see module
    docstring); memory around a view is NaN."""
    values = np.asarray(values)
    dt = values.dtype
    m, n = values.shape
    if layout == "C":
        return np.ascontiguousarray(values)
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "strided":
        big = np.full((2 * m + 1, 3 * n + 1), np.nan, dtype=dt)
        view = big[1::2, 1::3]
    elif layout == "negative":
        big = np.full((m, n), np.nan, dtype=dt)
        view = big[::-1, ::-1]
    elif layout == "neg_rows":
        big = np.full((m, n + 3), np.nan, dtype=dt)
        view = big[::-1, 1:n + 1]
    elif layout == "neg_strided":
        big = np.full((2 * m, 3 * n + 2), np.nan, dtype=dt)
        view = big[::-2, 2::3]
    elif layout == "offset":
        big = np.full((m + 1, n + 2), np.nan, dtype=dt)
        view = big[1:, 1:n + 1]
    else:
        raise ValueError(f"unknown layout {layout!r}")
    assert view.shape == (m, n), (layout, view.shape, (m, n))
    view[...] = values
    return view


def make_array(shape, dtype, layout="C", seed=0, kind="uniform"):
    rng = np.random.default_rng(seed)
    return with_layout(random_values(rng, shape, dtype, kind), layout)


@dataclass(frozen=True)
class MatSpec:
    """Printable recipe for one 2-D test array."""
    shape: Tuple[int, int]
    dtype: str
    layout: str
    seed: int
    kind: str = "uniform"

    def build(self):
        return make_array(self.shape, self.dtype, self.layout, self.seed, self.kind)


@st.composite
def mat_specs(draw, shape, dtype=None, layout=None, kind="uniform"):
    return MatSpec(
        shape=tuple(shape),
        dtype=dtype if dtype is not None else draw(dtypes()),
        layout=layout if layout is not None else draw(layouts()),
        seed=draw(seeds()),
        kind=kind,
    )


def ndarrays(shape, dtype=None, layout=None, kind="uniform"):
    """2-D arrays of `shape` in any layout (or the given one)."""
    return mat_specs(shape, dtype, layout, kind).map(lambda s: s.build())


# ------------------------------------------------------------ GEMM cases --

# How c enters gemm:
#   none           no c, beta = 0
#   nan_ignored    c full of NaN, beta = 0 (must never be read)
#   separate       c a separate (any-layout) array, beta != 0
#   inplace        c is out (prefilled with c's values), beta != 0
#   inplace_beta0  c is out (prefilled with NaN), beta = 0
C_MODES = ("none", "nan_ignored", "separate", "inplace", "inplace_beta0")
# How out is passed:
#   new       out=None (returned array)
#   given     a C-contiguous array prefilled with NaN (or c for inplace)
#   rowslice  a column window of a wider array with guard rows/columns around
OUT_MODES = ("new", "given", "rowslice")
GUARD = 7.25  # value of the guard region around a rowslice out


@dataclass(frozen=True)
class GemmCase:
    m: int
    n: int
    k: int
    dtype: str
    trans_a: bool
    trans_b: bool
    layout_a: str
    layout_b: str
    alpha: float
    beta: float
    c_mode: str
    layout_c: str
    with_bias: bool
    activation: Optional[str]
    out_mode: str
    seed: int
    kind: str = "uniform"

    @property
    def a_shape(self):
        return (self.k, self.m) if self.trans_a else (self.m, self.k)

    @property
    def b_shape(self):
        return (self.n, self.k) if self.trans_b else (self.k, self.n)

    def build(self):
        """Arrays for this case: dict with a, b, c (or None), bias (or None),
        out (or None), c_values (what c holds, for the reference) and, for a
        rowslice out, `big` and `window` (the index of out inside big)."""
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        a = with_layout(random_values(rng, self.a_shape, dt, self.kind), self.layout_a)
        b = with_layout(random_values(rng, self.b_shape, dt, self.kind), self.layout_b)
        cvals = random_values(rng, (self.m, self.n), dt, self.kind)
        bias = random_values(rng, (self.n,), dt, self.kind) if self.with_bias else None
        res = dict(a=a, b=b, bias=bias, c=None, c_values=None, out=None,
                   big=None, window=None)

        # initial content of out: c's values when c is out, else NaN (a
        # kernel that reads out before writing it then shows NaN)
        init = cvals if self.c_mode == "inplace" else np.full((self.m, self.n), np.nan, dt)
        c_is_out = self.c_mode.startswith("inplace")
        if self.out_mode == "given" or (self.out_mode == "new" and c_is_out):
            res["out"] = np.array(init, dtype=dt, order="C")
        elif self.out_mode == "rowslice":
            big = np.full((self.m + 2, self.n + 11), GUARD, dtype=dt)
            window = (slice(1, self.m + 1), slice(3, self.n + 3))
            big[window] = init
            res["big"], res["window"] = big, window
            res["out"] = big[window]

        if self.c_mode == "nan_ignored":
            res["c"] = with_layout(np.full((self.m, self.n), np.nan, dt), self.layout_c)
        elif self.c_mode == "separate":
            res["c"] = with_layout(cvals, self.layout_c)
            res["c_values"] = cvals
        elif self.c_mode == "inplace":
            res["c"] = res["out"]
            res["c_values"] = cvals
        elif self.c_mode == "inplace_beta0":
            res["c"] = res["out"]
        return res

    @property
    def effective_beta(self):
        return self.beta if self.c_mode in ("separate", "inplace") else 0.0


@st.composite
def gemm_cases(draw, max_dim=300, dtype=None, kind="uniform", c_modes=C_MODES,
               out_modes=OUT_MODES, activations_=ACTIVATIONS):
    m, n, k = draw(dims(1, max_dim)), draw(dims(1, max_dim)), draw(dims(1, max_dim))
    c_mode = draw(st.sampled_from(c_modes))
    if c_mode in ("separate", "inplace"):
        beta = draw(scalars()) or 1.0  # nonzero
    else:
        beta = 0.0
    return GemmCase(
        m=m, n=n, k=k,
        dtype=dtype if dtype is not None else draw(dtypes()),
        trans_a=draw(st.booleans()),
        trans_b=draw(st.booleans()),
        layout_a=draw(layouts()),
        layout_b=draw(layouts()),
        alpha=draw(scalars(special=(1.0, -1.0, 0.5, 2.0, 0.0))),
        beta=beta,
        c_mode=c_mode,
        layout_c=draw(layouts()),
        with_bias=draw(st.booleans()),
        activation=draw(st.sampled_from(activations_)),
        out_mode=draw(st.sampled_from(out_modes)),
        seed=draw(seeds()),
        kind=kind,
    )


# ----------------------------------------------------------- dense cases --

@dataclass(frozen=True)
class DenseCase:
    batch: int
    n_in: int
    units: int
    dtype: str
    activation: Optional[str]
    with_bias: bool
    layout_x: str
    layout_w: str
    layout_dy: str
    layout_y: str
    seed: int

    def build(self):
        """x, w, b, y = act(x @ w + b) (computed in float64 by NumPy, then
        rounded), dy, each in its layout."""
        rng = np.random.default_rng(self.seed)
        dt = np.dtype(self.dtype)
        x = random_values(rng, (self.batch, self.n_in), dt)
        w = random_values(rng, (self.n_in, self.units), dt)
        b = random_values(rng, (self.units,), dt) if self.with_bias else None
        z = x.astype(np.float64) @ w.astype(np.float64)
        if b is not None:
            z = z + b.astype(np.float64)
        y = np.maximum(z, 0.0) if self.activation == "relu" else z
        y = y.astype(dt)
        dy = random_values(rng, (self.batch, self.units), dt)
        return dict(
            x=with_layout(x, self.layout_x),
            w=with_layout(w, self.layout_w),
            b=b,
            y=with_layout(y, self.layout_y),
            dy=with_layout(dy, self.layout_dy),
        )


@st.composite
def dense_cases(draw, max_dim=300, dtype=None, activation="any"):
    return DenseCase(
        batch=draw(dims(1, max_dim)),
        n_in=draw(dims(1, max_dim)),
        units=draw(dims(1, max_dim)),
        dtype=dtype if dtype is not None else draw(dtypes()),
        activation=draw(activations()) if activation == "any" else activation,
        with_bias=draw(st.booleans()),
        layout_x=draw(layouts()),
        layout_w=draw(layouts()),
        layout_dy=draw(layouts()),
        layout_y=draw(layouts()),
        seed=draw(seeds()),
    )


@st.composite
def conv_paddings(draw):
    """A convolution's padding: "valid", "same" or explicit ((top, bottom),
    (left, right)), each up to 3."""
    kind = draw(st.sampled_from(["valid", "same", "explicit"]))
    if kind != "explicit":
        return kind
    return ((draw(st.integers(0, 3)), draw(st.integers(0, 3))),
            (draw(st.integers(0, 3)), draw(st.integers(0, 3))))


@st.composite
def wino_geometry(draw, sizes, ref_pads):
    """(H, W, padding, (pt, pl)) of a 3x3 stride-1 convolution for the
    Winograd tests: "valid", "same" or explicit padding up to 3 (more than 2
    makes dX's padding negative: cropping), at least one output pixel.
    ref_pads: reference.ref_pads (passed in: this module imports no
    reference code)."""
    padding = draw(conv_paddings())
    H, W = draw(st.sampled_from(sizes)), draw(st.sampled_from(sizes))
    (pt, pb), (pl, pr) = ref_pads(H, W, 3, 3, (1, 1), padding, (1, 1))
    assume(H + pt + pb >= 3 and W + pl + pr >= 3)
    return H, W, padding, (pt, pl)


# Max pooling, ReLU, add and dropout (included from _core.pyx).
#
# Validation happens here, before the GIL is released: ndim, shapes, dtypes,
# contiguity, sizes that would overflow the kernels' int32 indices, and
# aliasing of outputs with inputs.  The kernels write only through the
# buffers validated here; index values read by the backward are bounds-checked
# inside the kernel (an out-of-range index is never used as an address).

from libc.stdint cimport int32_t, uint8_t, uint32_t, uint64_t

cdef extern from "nk_pool.h" nogil:
    ctypedef struct nk_pool_geom:
        int64_t n, h, w, c
        int64_t oh, ow
        int64_t ph, pw
        int64_t sh, sw
        int64_t pt, pl
    void nk_max_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc,
                           int32_t *idx_nhwc, int dbl)
    int64_t nk_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c,
                              int64_t oh, int64_t ow, const void *dy_nhwc,
                              const int32_t *idx_nhwc, const void *ym_nhwc, void *dx_nhwc,
                              int dbl)
    int64_t nk_max_pool2d_bwd_geom(const nk_pool_geom *g, const void *dy_nhwc,
                                   const int32_t *idx_nhwc, const void *ym_nhwc, void *dx_nhwc,
                                   int dbl)

cdef extern from "nk_elementwise.h" nogil:
    void nk_relu(int64_t n, const void *x, void *y, int dbl)
    void nk_relu_backward(int64_t n, const void *dy, const void *y, void *dx, int dbl)
    void nk_add(int64_t n, const void *a, const void *b, void *out, int dbl)
    void nk_philox4x32_10(int64_t n, const uint32_t *ctr, const uint32_t *key, uint32_t *out)
    void nk_dropout(int64_t n, const void *x, void *y, uint32_t threshold, double scale,
                    uint64_t seed, uint64_t offset, int dbl)
    void nk_dropout_mask(int64_t n, uint8_t *mask, uint32_t threshold, uint64_t seed,
                         uint64_t offset)

_I32 = np.dtype(np.int32)
_INT32_MAX = 2**31 - 1


cdef object _c_array(object x, str name, int ndim=-1):
    """x as an aligned C-contiguous float32/float64 ndarray (a copy only when
    it is not one already)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if ndim >= 0 and x.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D (NHWC), got shape {x.shape}")
    _float_dtype_of(x.dtype, name)
    return _aligned(x)


cdef tuple _pair(object v, str name):
    """A positive int or a pair of positive ints -> (int, int)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        v = (v, v)
    try:
        t = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if len(t) != 2 or not all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) for e in t):
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    a, b = int(t[0]), int(t[1])
    if a < 1 or b < 1 or a > _INT32_MAX or b > _INT32_MAX:
        raise ValueError(f"{name} must be positive (and < 2**31), got {(a, b)}")
    return (a, b)


cdef str _padding(object padding):
    if not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    return padding.lower()


cdef tuple _pool_out_dims(Py_ssize_t size, Py_ssize_t k, Py_ssize_t s, str padding, str axis):
    """(output size, leading padding) along one axis, Keras rules."""
    if padding == "valid":
        if size < k:
            raise ValueError(
                f"pool size {k} is larger than the input {axis} {size} with padding='valid'")
        return ((size - k) // s + 1, 0)
    o = (size + s - 1) // s
    total = max((o - 1) * s + k - size, 0)
    return (o, total // 2)


def max_pool2d_output_shape(x_shape, pool_size=(2, 2), strides=None, padding="valid"):
    """Output shape (N, OH, OW, C) of max_pool2d for an NHWC input shape."""
    g = _pool_geometry(_int_shape(x_shape, "x_shape", 4), pool_size, strides, padding)
    return (g[0], g[4], g[5], g[3])


cdef tuple _pool_geometry(tuple x_shape, object pool_size, object strides, object padding,
                          bint int32_idx=True):
    """(n, h, w, c, oh, ow, ph, pw, sh, sw, pt, pl) after validation; with
    int32_idx (max pooling's argmax indices) H*W must fit an int32."""
    if len(x_shape) != 4:
        raise ValueError(f"x must be 4-D (NHWC), got shape {x_shape}")
    n, h, w, c = x_shape  # Python ints: an array's shape or _int_shape
    ph, pw = _pair(pool_size, "pool_size")
    sh, sw = _pair(pool_size if strides is None else strides, "strides")
    pad = _padding(padding)
    if int32_idx and h * w > _INT32_MAX:
        raise ValueError(f"H*W = {h * w} of x shape {x_shape} does not fit the int32 indices")
    oh, pt = _pool_out_dims(h, ph, sh, pad, "height")
    ow, pl = _pool_out_dims(w, pw, sw, pad, "width")
    return (n, h, w, c, oh, ow, ph, pw, sh, sw, pt, pl)


cdef void _geom_set(nk_pool_geom *g, tuple t):
    g.n, g.h, g.w, g.c, g.oh, g.ow = t[0], t[1], t[2], t[3], t[4], t[5]
    g.ph, g.pw, g.sh, g.sw, g.pt, g.pl = t[6], t[7], t[8], t[9], t[10], t[11]


# --------------------------------------------------------------- pooling --

def max_pool2d(x, pool_size=(2, 2), strides=None, padding="valid", out=None, indices=None):
    """2-D max pooling of an NHWC tensor; returns (y, indices).

    x: (N, H, W, C) float32/float64.  pool_size, strides: int or (h, w);
    strides default to pool_size.  padding: "valid" (OH = (H - PH) // SH + 1)
    or "same" (OH = ceil(H / SH), padded positions never win; Keras/TF).
    indices[n, oh, ow, c] = h * W + w: the flat spatial index, in the H x W
    plane of item n and channel c, of the element that won (PyTorch's
    convention).  Windows are scanned row-major: the first maximum wins ties,
    the first NaN wins over numbers (NaN propagates).  out (y) and indices
    may be preallocated: C-contiguous, (N, OH, OW, C), dtype of x / int32.
    """
    x = _c_array(x, "x", 4)
    t = _pool_geometry(x.shape, pool_size, strides, padding)
    dt = x.dtype
    oshape = (t[0], t[4], t[5], t[3])
    out = _c_out(out, oshape, dt, "out", [("x", x)])
    if indices is None:
        indices = np.empty(oshape, dtype=_I32)
    else:
        if not isinstance(indices, np.ndarray):
            raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
        if indices.dtype != _I32:
            raise TypeError(f"indices has dtype {indices.dtype}, expected int32")
        indices = _c_out(indices, oshape, _I32, "indices", [("x", x), ("out", out)])
    cdef nk_pool_geom g
    _geom_set(&g, t)
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    cdef int32_t *pi = <int32_t *>_p(indices)
    with nogil:
        nk_max_pool2d_fwd(&g, px, py, pi, dbl)
    return out, indices


def max_pool2d_backward(dy, indices, x_shape, out=None, *, pool_size=None, strides=None,
                        padding="valid", y=None):
    """dx of max_pool2d: zeros, plus dy[n, oh, ow, c] added at the position
    indices[n, oh, ow, c] (= h * W + w) of each output element.

    dy, indices: (N, OH, OW, C), dy float32/float64, indices int32 as
    returned by max_pool2d.  x_shape: the forward input's (N, H, W, C).
    Overlapping windows (strides < pool_size) accumulate, always in output
    order (n, oh, ow), so the result is deterministic and thread-count
    independent.  Without pool_size, the kernel first tries non-overlapping
    (H // OH) x (W // OW) windows (k x k pooling with stride k), checking
    every index against its window, and otherwise computes dx as a scatter
    (each batch item zeroed and scattered into while in cache); both give
    the same bits.  With the forward's
    pool_size (strides, padding), as a gather: each dx element written once;
    this checks too that each index lies inside its own window.  Indices that
    are out of range (or outside their window) raise ValueError after the
    kernel ran (dx then holds the valid part of the gradient); they are never
    used as an address.  out (dx) may be preallocated.  y (optional): the
    pooled values (max_pool2d's output, dy's shape and dtype); with it each
    dy counts only where y > 0 (as +0 elsewhere, NaN y included): the ReLU's
    derivative when the pooled input was relu(z), the same bits as
    relu_backward(dy, y) followed by this call, without its pass.
    """
    dy = _c_array(dy, "dy", 4)
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray of int32, got {type(indices).__name__}")
    if indices.dtype != _I32:
        raise TypeError(f"indices has dtype {indices.dtype}, expected int32")
    if indices.shape != dy.shape:
        raise ValueError(f"indices has shape {indices.shape}, expected dy's {dy.shape}")
    indices = _aligned(indices)
    xs = _int_shape(x_shape, "x_shape", 4)
    if xs[0] != dy.shape[0] or xs[3] != dy.shape[3]:
        raise ValueError(f"x_shape {xs} and dy shape {dy.shape} differ in batch or channels")
    if xs[1] * xs[2] > _INT32_MAX:
        raise ValueError(f"H*W of x_shape {xs} does not fit the int32 indices")
    dt = dy.dtype
    cdef nk_pool_geom g
    cdef bint geom = pool_size is not None
    if geom:
        t = _pool_geometry(xs, pool_size, strides, padding)
        if (t[4], t[5]) != (dy.shape[1], dy.shape[2]):
            raise ValueError(
                f"dy shape {dy.shape} does not match the pooling of x_shape {xs} "
                f"(expected {(t[0], t[4], t[5], t[3])})")
        _geom_set(&g, t)
    if y is not None:
        y = _c_array(y, "y", 4)
        if y.shape != dy.shape:
            raise ValueError(f"y has shape {y.shape}, expected dy's {dy.shape}")
        if y.dtype != dt:
            raise TypeError(f"dy ({dt}) and y ({y.dtype}) must have the same dtype")
    out = _c_out(out, xs, dt, "out", [("dy", dy), ("indices", indices)] +
                 ([("y", y)] if y is not None else []))
    cdef int dbl = dt == _F64
    cdef const void *pym = _p(y) if y is not None else NULL
    cdef void *pdy = _p(dy)
    cdef void *pdx = _p(out)
    cdef int32_t *pi = <int32_t *>_p(indices)
    cdef int64_t bad = 0
    cdef int64_t n = xs[0], h = xs[1], w = xs[2], c = xs[3]
    cdef int64_t oh = dy.shape[1], ow = dy.shape[2]
    with nogil:
        if geom:
            bad = nk_max_pool2d_bwd_geom(&g, pdy, pi, pym, pdx, dbl)
        else:
            bad = nk_max_pool2d_bwd(n, h, w, c, oh, ow, pdy, pi, pym, pdx, dbl)
    if not bad and h * w == 0 and indices.size:
        bad = indices.size  # H*W == 0: no index can be valid (the kernel writes nothing)
    if bad:
        where = "outside their pooling window" if geom else f"outside [0, H*W = {h * w})"
        raise ValueError(f"{bad} of the indices are {where} (x_shape {xs}, dy shape {dy.shape})")
    return out


# ------------------------------------------------------------------ ReLU --

def relu(x, out=None):
    """y = max(x, 0) elementwise (NaN stays NaN).  out may be x (in place)."""
    x = _c_array(x, "x")
    out = _c_out(out, x.shape, x.dtype, "out", [("x", x)], inplace_ok=x)
    cdef int dbl = x.dtype == _F64
    cdef int64_t n = x.size
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    with nogil:
        nk_relu(n, px, py, dbl)
    return out


def relu_backward(dy, y, out=None):
    """dx = dy where y > 0, else 0.  out may be dy (in place)."""
    dy = _c_array(dy, "dy")
    y = _c_array(y, "y")
    if y.shape != dy.shape:
        raise ValueError(f"y has shape {y.shape}, expected dy's {dy.shape}")
    if y.dtype != dy.dtype:
        raise TypeError(f"dy ({dy.dtype}) and y ({y.dtype}) must have the same dtype")
    out = _c_out(out, dy.shape, dy.dtype, "out", [("dy", dy), ("y", y)], inplace_ok=dy)
    cdef int dbl = dy.dtype == _F64
    cdef int64_t n = dy.size
    cdef void *pdy = _p(dy)
    cdef void *py = _p(y)
    cdef void *pdx = _p(out)
    with nogil:
        nk_relu_backward(n, pdy, py, pdx, dbl)
    return out


# ------------------------------------------------------------------- add --

def add(a, b, out=None):
    """out = a + b elementwise; a, b float32/float64 of the same shape and
    dtype (any ndim; non-contiguous inputs are copied).

    out: None (a new C-contiguous array), or a C-contiguous, aligned,
    writeable array of that shape and dtype.  out may be exactly a or
    exactly b (same buffer and layout): add(g_acc, g_new, out=g_acc) sums
    the gradients of a tensor with two consumers in place.  Any other
    overlap of out with an input is refused.  One rounding per element, so
    the result equals numpy.add bit for bit, for any thread count.
    """
    a = _c_array(a, "a")
    b = _c_array(b, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if a.dtype != b.dtype:
        raise TypeError(f"a ({a.dtype}) and b ({b.dtype}) must have the same dtype")
    out = _c_out(out, a.shape, a.dtype, "out", [])
    if out.size:
        for nm, arr in (("a", a), ("b", b)):
            if not _same_buffer(out, arr) and _may_share(out, arr):
                raise ValueError(f"out overlaps input {nm}; pass a separate buffer "
                                 f"(or exactly {nm} itself for in-place)")
    cdef int dbl = a.dtype == _F64
    cdef int64_t n = a.size
    cdef void *pa = _p(a)
    cdef void *pb = _p(b)
    cdef void *po = _p(out)
    with nogil:
        nk_add(n, pa, pb, po, dbl)
    return out


# --------------------------------------------------------------- dropout --

cdef tuple _dropout_params(object rate, object seed, object offset):
    r = _real(rate, "rate")  # TypeError for a non-number, ValueError beyond a double
    if not (0.0 <= r < 1.0):
        raise ValueError(f"dropout rate must be in [0, 1), got {rate!r}")
    for nm, v in (("seed", seed), ("offset", offset)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"{nm} must be an int, got {v!r}")
        if not (0 <= int(v) < 2**64):
            raise ValueError(f"{nm} must be in [0, 2**64), got {v}")
    thr = min(int(np.floor(r * 4294967296.0)), 4294967295)
    scale = 1.0 / (1.0 - r)
    return (thr, scale, int(seed), int(offset))


def dropout_threshold(rate):
    """The uint32 threshold of a dropout rate: element kept iff word >= it."""
    return _dropout_params(rate, 0, 0)[0]


cdef object _dropout_run(object x, object rate, object seed, object offset, object out, str xn):
    thr, scale, sd, off = _dropout_params(rate, seed, offset)
    x = _c_array(x, xn)
    out = _c_out(out, x.shape, x.dtype, "out", [(xn, x)], inplace_ok=x)
    cdef int dbl = x.dtype == _F64
    cdef int64_t n = x.size
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    cdef uint32_t t = thr
    cdef double s = scale
    cdef uint64_t k = sd, o = off
    with nogil:
        nk_dropout(n, px, py, t, s, k, o, dbl)
    return out


def dropout(x, rate, seed, *, offset=0, out=None):
    """Inverted dropout: y = x / (1 - rate) where kept, 0 where dropped.

    The keep mask is a pure function of (seed, offset, element index) through
    Philox4x32-10 (see philox4x32 and dropout_mask): the same for any thread
    count and ISA path, and regenerated by dropout_backward instead of stored.
    Element e (flat C-order) uses word e % 4 of the Philox block with counter
    (e // 4 as two 32-bit words, offset as two 32-bit words) and key = seed
    (low word first), and is kept iff that word >= floor(rate * 2**32).
    rate in [0, 1) (0 copies); seed, offset in [0, 2**64): a training loop
    passes its step number as offset.  out may be x (in place).
    """
    return _dropout_run(x, rate, seed, offset, out, "x")


def dropout_backward(dy, rate, seed, *, offset=0, out=None):
    """dx = dy / (1 - rate) where the forward kept, 0 elsewhere; the mask is
    regenerated from (seed, offset).  out may be dy (in place)."""
    return _dropout_run(dy, rate, seed, offset, out, "dy")


def dropout_mask(shape, rate, seed, *, offset=0):
    """The keep mask of dropout(x of this shape, rate, seed, offset) as bool."""
    thr, scale, sd, off = _dropout_params(rate, seed, offset)
    shp = _int_shape(shape if isinstance(shape, (tuple, list)) else (shape,), "shape")
    m = np.empty(shp, dtype=np.uint8)
    cdef int64_t n = m.size
    cdef uint8_t *pm = <uint8_t *>_p(m)
    cdef uint32_t t = thr
    cdef uint64_t k = sd, o = off
    with nogil:
        nk_dropout_mask(n, pm, t, k, o)
    return m.view(np.bool_)


def philox4x32(counter, key):
    """Philox4x32-10 of each row of counter ((n, 4) uint32) under key ((2,)
    uint32); returns (n, 4) uint32.  For testing against Random123's
    known-answer vectors and for reproducing the dropout stream elsewhere."""
    ctr = np.asarray(counter)
    k = np.asarray(key)
    if ctr.dtype != np.uint32 or k.dtype != np.uint32:
        raise TypeError(f"counter and key must be uint32, got {ctr.dtype} and {k.dtype}")
    if ctr.ndim != 2 or ctr.shape[1] != 4:
        raise ValueError(f"counter must have shape (n, 4), got {ctr.shape}")
    if k.shape != (2,):
        raise ValueError(f"key must have shape (2,), got {k.shape}")
    ctr = _aligned(ctr)
    k = _aligned(k)
    out = np.empty(ctr.shape, dtype=np.uint32)
    cdef int64_t n = ctr.shape[0]
    cdef uint32_t *pc = <uint32_t *>_p(ctr)
    cdef uint32_t *pk = <uint32_t *>_p(k)
    cdef uint32_t *po = <uint32_t *>_p(out)
    with nogil:
        nk_philox4x32_10(n, pc, pk, po)
    return out

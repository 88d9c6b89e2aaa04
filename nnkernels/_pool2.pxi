# Average pooling, global average / max pooling, nearest upsampling, zero
# padding and cropping, NHWC (included from _core.pyx after _pool.pxi and
# _conv.pxi, whose helpers it uses: _c_array, _c_out, _pool_geometry,
# _geom_set, _pair, _int_pair).
#
# As in _pool.pxi, everything is validated here before the GIL is released:
# ndim, shapes, dtypes, contiguity (non-contiguous inputs are copied), output
# buffers (shape, dtype, C-contiguity, alignment, writeability, no overlap
# with an input) and argument values.  Kernels are not called when their
# output is empty.  Argmax indices read by global_max_pool2d_backward are
# bounds-checked inside the kernel (an out-of-range index is never used as an
# address) and reported as ValueError afterwards.

cdef extern from "nk_pool2.h" nogil:
    void nk_avg_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc, int dbl)
    void nk_avg_pool2d_bwd(const nk_pool_geom *g, const void *dy_nhwc, void *dx_nhwc, int dbl)
    void nk_global_avg_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                                  void *y_nc, int dbl)
    void nk_global_avg_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *dy_nc,
                                  void *dx_nhwc, int dbl)
    void nk_global_max_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                                  void *y_nc, int32_t *idx_nc, int dbl)
    int64_t nk_global_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c,
                                     const void *dy_nc, const int32_t *idx_nc, void *dx_nhwc,
                                     int dbl)
    void nk_upsample2d_nearest_fwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                                   int64_t sw, const void *x_nhwc, void *y_nhwc, int dbl)
    void nk_upsample2d_nearest_bwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                                   int64_t sw, const void *dy_nhwc, void *dx_nhwc, int dbl)
    void nk_copy2d_nhwc(int64_t n, int64_t c, int64_t hs, int64_t ws, const void *src_nhwc,
                        int64_t hd, int64_t wd, int64_t off_h, int64_t off_w, void *dst_nhwc,
                        int dbl)


cdef tuple _x_shape_arg(object x_shape):
    """The forward input's shape as 4 non-negative Python ints (N, H, W, C)."""
    return _int_shape(x_shape, "x_shape", 4)


cdef object _nc_array(object v, str name):
    """A (N, C) float32/float64 array, C-contiguous and aligned (copied if not)."""
    v = _c_array(v, name)
    if v.ndim != 2:
        raise ValueError(f"{name} must be 2-D (N, C), got shape {v.shape}")
    return v


cdef object _index_array(object idx, tuple shape, str name):
    """An int32 ndarray of `shape`, C-contiguous and aligned (copied if not)."""
    if not isinstance(idx, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of int32, got {type(idx).__name__}")
    if idx.dtype != _I32:
        raise TypeError(f"{name} has dtype {idx.dtype}, expected int32")
    if idx.shape != shape:
        raise ValueError(f"{name} has shape {idx.shape}, expected {shape}")
    return _aligned(idx)


cdef tuple _border_arg(object v, str name):
    """((top, bottom), (left, right)) of non-negative ints from an int (all
    sides), a pair (symmetric height, symmetric width) or a pair of pairs
    (Keras ZeroPadding2D / Cropping2D)."""
    msg = (f"{name} must be an int, a pair of ints or ((top, bottom), (left, right)) "
           f"of non-negative ints, got {v!r}")
    if isinstance(v, (str, bytes)):
        raise TypeError(msg)
    try:
        if not isinstance(v, (int, np.integer, bool, np.bool_)):
            items = tuple(v)
            if len(items) == 2 and not any(
                    isinstance(e, (int, np.integer, bool, np.bool_)) for e in items):
                return (_int_pair(items[0], name, 0), _int_pair(items[1], name, 0))
        a, b = _int_pair(v, name, 0)
    except TypeError:
        raise TypeError(msg) from None
    except ValueError:
        raise ValueError(msg) from None
    return ((a, a), (b, b))


# --------------------------------------------------------- average pooling --

def avg_pool2d(x, pool_size=(2, 2), strides=None, padding="valid", out=None):
    """2-D average pooling of an NHWC tensor (Keras AveragePooling2D / TF).

    x: (N, H, W, C) float32/float64.  pool_size, strides: int or (h, w);
    strides default to pool_size.  padding: "valid" (OH = (H - PH) // SH + 1)
    or "same" (OH = ceil(H / SH), the padding split with the extra row /
    column at the bottom / right): the same geometry as max_pool2d
    (max_pool2d_output_shape gives the output shape).
    y[n, oh, ow, c] = sum of the window's in-bounds elements / their number:
    padding is not counted in the divisor (as TensorFlow's "SAME").  The sum
    is taken in the data type in row-major window order, then divided.
    out (y) may be preallocated: C-contiguous (N, OH, OW, C), dtype of x.
    """
    x = _c_array(x, "x", 4)
    t = _pool_geometry(x.shape, pool_size, strides, padding, False)
    dt = x.dtype
    out = _c_out(out, (t[0], t[4], t[5], t[3]), dt, "out", [("x", x)])
    cdef nk_pool_geom g
    _geom_set(&g, t)
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    if out.size:
        with nogil:
            nk_avg_pool2d_fwd(&g, px, py, dbl)
    return out


def avg_pool2d_backward(dy, x_shape, pool_size=(2, 2), strides=None, padding="valid", out=None):
    """dx of avg_pool2d: dx[n, h, w, c] = sum over the windows (oh, ow) that
    contain (h, w) of dy[n, oh, ow, c] / (in-bounds size of that window).

    dy: (N, OH, OW, C) float32/float64, the pooling of x_shape (N, H, W, C)
    with the forward's pool_size, strides and padding.  Computed as a gather
    (each dx element written once, windows summed in row-major order; 0
    where no window covers it): deterministic for any thread count.
    out (dx) may be preallocated: C-contiguous x_shape, dtype of dy.
    """
    dy = _c_array(dy, "dy", 4)
    xs = _x_shape_arg(x_shape)
    t = _pool_geometry(xs, pool_size, strides, padding, False)
    expected = (t[0], t[4], t[5], t[3])
    if dy.shape != expected:
        raise ValueError(f"dy has shape {dy.shape}, but avg_pool2d of x_shape {xs} "
                         f"(pool_size {pool_size!r}, strides {strides!r}, padding {padding!r}) "
                         f"has shape {expected}")
    dt = dy.dtype
    out = _c_out(out, xs, dt, "out", [("dy", dy)])
    cdef nk_pool_geom g
    _geom_set(&g, t)
    cdef int dbl = dt == _F64
    cdef void *pdy = _p(dy)
    cdef void *pdx = _p(out)
    if out.size:
        with nogil:
            nk_avg_pool2d_bwd(&g, pdy, pdx, dbl)
    return out


# ---------------------------------------------------------- global pooling --

cdef object _global_input(object x):
    x = _c_array(x, "x", 4)
    n, h, w, c = x.shape
    if h * w == 0 and n * c > 0:
        raise ValueError(f"global pooling needs H*W > 0, got x shape {x.shape}")
    return x


cdef tuple _global_dy(object dy, object x_shape):
    dy = _nc_array(dy, "dy")
    xs = _x_shape_arg(x_shape)
    if dy.shape != (xs[0], xs[3]):
        raise ValueError(f"dy has shape {dy.shape}, expected (N, C) = {(xs[0], xs[3])} "
                         f"of x_shape {xs}")
    return dy, xs


def global_avg_pool2d(x, out=None):
    """Mean over H and W of an NHWC tensor: (N, H, W, C) -> (N, C) (Keras
    GlobalAveragePooling2D).  Each mean is accumulated in float64 in
    row-major (h, w) order and rounded once: deterministic for any thread
    count.  H*W must be > 0 (unless N*C == 0).  out may be preallocated:
    C-contiguous (N, C), dtype of x.
    """
    x = _global_input(x)
    dt = x.dtype
    n, h, w, c = x.shape
    out = _c_out(out, (n, c), dt, "out", [("x", x)])
    cdef int64_t N = n, H = h, W = w, C = c
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    if out.size:
        with nogil:
            nk_global_avg_pool2d_fwd(N, H, W, C, px, py, dbl)
    return out


def global_avg_pool2d_backward(dy, x_shape, out=None):
    """dx of global_avg_pool2d: dx[n, h, w, c] = dy[n, c] / (H * W)
    (division in the data type).  dy: (N, C); x_shape: (N, H, W, C).
    out (dx) may be preallocated: C-contiguous x_shape, dtype of dy.
    """
    dy, xs = _global_dy(dy, x_shape)
    dt = dy.dtype
    out = _c_out(out, xs, dt, "out", [("dy", dy)])
    cdef int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3]
    cdef int dbl = dt == _F64
    cdef void *pdy = _p(dy)
    cdef void *pdx = _p(out)
    if out.size:
        with nogil:
            nk_global_avg_pool2d_bwd(N, H, W, C, pdy, pdx, dbl)
    return out


def global_max_pool2d(x, out=None, indices=None):
    """Maximum over H and W of an NHWC tensor; returns (y, indices), both
    (N, C) (Keras GlobalMaxPooling2D).

    indices[n, c] = h * W + w (int32) of the first maximum in row-major
    order; a NaN wins over numbers and the first NaN wins (NaN propagates),
    exactly as in max_pool2d.  H*W must be > 0 (unless N*C == 0) and fit an
    int32.  out (y) and indices may be preallocated: C-contiguous (N, C),
    dtype of x / int32.
    """
    x = _global_input(x)
    dt = x.dtype
    n, h, w, c = x.shape
    if h * w > _INT32_MAX:
        raise ValueError(f"H*W = {h * w} of x shape {x.shape} does not fit the int32 indices")
    out = _c_out(out, (n, c), dt, "out", [("x", x)])
    if indices is None:
        indices = np.empty((n, c), dtype=_I32)
    else:
        if not isinstance(indices, np.ndarray):
            raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
        if indices.dtype != _I32:
            raise TypeError(f"indices has dtype {indices.dtype}, expected int32")
        indices = _c_out(indices, (n, c), _I32, "indices", [("x", x), ("out", out)])
    cdef int64_t N = n, H = h, W = w, C = c
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    cdef int32_t *pi = <int32_t *>_p(indices)
    if out.size:
        with nogil:
            nk_global_max_pool2d_fwd(N, H, W, C, px, py, pi, dbl)
    return out, indices


def global_max_pool2d_backward(dy, indices, x_shape, out=None):
    """dx of global_max_pool2d: dx[n, h, w, c] = dy[n, c] where
    indices[n, c] == h * W + w, else 0 (every dx element written once).

    dy: (N, C) float32/float64; indices: (N, C) int32 as returned by
    global_max_pool2d; x_shape: (N, H, W, C).  Indices outside [0, H*W)
    raise ValueError after the kernel ran (dx then holds the valid part);
    they are never used as an address.  out (dx) may be preallocated.
    """
    dy, xs = _global_dy(dy, x_shape)
    indices = _index_array(indices, dy.shape, "indices")
    if xs[1] * xs[2] > _INT32_MAX:
        raise ValueError(f"H*W of x_shape {xs} does not fit the int32 indices")
    dt = dy.dtype
    out = _c_out(out, xs, dt, "out", [("dy", dy), ("indices", indices)])
    cdef int64_t N = xs[0], H = xs[1], W = xs[2], C = xs[3]
    cdef int dbl = dt == _F64
    cdef void *pdy = _p(dy)
    cdef void *pdx = _p(out)
    cdef int32_t *pi = <int32_t *>_p(indices)
    cdef int64_t bad = 0
    if out.size:
        with nogil:
            bad = nk_global_max_pool2d_bwd(N, H, W, C, pdy, pi, pdx, dbl)
    elif indices.size:
        bad = indices.size  # H*W == 0: no index can be valid
    if bad:
        raise ValueError(f"{bad} of the indices are outside [0, H*W = {xs[1] * xs[2]}) "
                         f"(x_shape {xs})")
    return out


# -------------------------------------------------------------- upsampling --

def upsample2d_nearest(x, size=(2, 2), out=None):
    """Nearest-neighbour upsampling of an NHWC tensor (Keras UpSampling2D,
    interpolation="nearest"): (N, H, W, C) -> (N, H*sh, W*sw, C),
    y[n, i, j, c] = x[n, i // sh, j // sw, c].  size: int or (sh, sw) >= 1.
    out may be preallocated: C-contiguous, dtype of x.
    """
    x = _c_array(x, "x", 4)
    sh, sw = _pair(size, "size")
    n, h, w, c = x.shape
    dt = x.dtype
    out = _c_out(out, (n, h * sh, w * sw, c), dt, "out", [("x", x)])
    cdef int64_t N = n, H = h, W = w, C = c, SH = sh, SW = sw
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    if out.size:
        with nogil:
            nk_upsample2d_nearest_fwd(N, H, W, C, SH, SW, px, py, dbl)
    return out


def upsample2d_nearest_backward(dy, size=(2, 2), out=None):
    """dx of upsample2d_nearest: dy (N, OH, OW, C) with OH, OW multiples of
    (sh, sw) -> dx (N, OH // sh, OW // sw, C), dx[n, i, j, c] = sum of the
    sh x sw block dy[n, i*sh:(i+1)*sh, j*sw:(j+1)*sw, c] (row-major order, in
    the data type).  out (dx) may be preallocated.
    """
    dy = _c_array(dy, "dy", 4)
    sh, sw = _pair(size, "size")
    n, oh, ow, c = dy.shape
    if oh % sh or ow % sw:
        raise ValueError(f"dy shape {dy.shape} is not an upsampling by size {(sh, sw)} "
                         f"(height and width must be multiples of it)")
    h, w = oh // sh, ow // sw
    dt = dy.dtype
    out = _c_out(out, (n, h, w, c), dt, "out", [("dy", dy)])
    cdef int64_t N = n, H = h, W = w, C = c, SH = sh, SW = sw
    cdef int dbl = dt == _F64
    cdef void *pdy = _p(dy)
    cdef void *pdx = _p(out)
    if out.size:
        with nogil:
            nk_upsample2d_nearest_bwd(N, H, W, C, SH, SW, pdy, pdx, dbl)
    return out


# ------------------------------------------------------ padding / cropping --

cdef object _copy2d(object x, tuple oshape, int64_t off_h, int64_t off_w, object out):
    dt = x.dtype
    out = _c_out(out, oshape, dt, "out", [("x", x)])
    cdef int64_t N = x.shape[0], C = x.shape[3], HS = x.shape[1], WS = x.shape[2]
    cdef int64_t HD = oshape[1], WD = oshape[2]
    cdef int dbl = dt == _F64
    cdef void *px = _p(x)
    cdef void *py = _p(out)
    if out.size:
        with nogil:
            nk_copy2d_nhwc(N, C, HS, WS, px, HD, WD, off_h, off_w, py, dbl)
    return out


def pad2d(x, padding, out=None):
    """Zero padding of an NHWC tensor (Keras ZeroPadding2D):
    (N, H, W, C) -> (N, top + H + bottom, left + W + right, C) with x at
    [top:top+H, left:left+W] and +0 elsewhere.  padding: an int (all sides),
    (sym_h, sym_w) or ((top, bottom), (left, right)), non-negative.
    Its backward is crop2d(dy, padding) (and vice versa).  out may be
    preallocated: C-contiguous, dtype of x.
    """
    x = _c_array(x, "x", 4)
    (t, b), (l, r) = _border_arg(padding, "padding")
    n, h, w, c = x.shape
    return _copy2d(x, (n, h + t + b, w + l + r, c), -t, -l, out)


def crop2d(x, cropping, out=None):
    """Cropping of an NHWC tensor (Keras Cropping2D): (N, H, W, C) ->
    (N, H - top - bottom, W - left - right, C) = x[:, top:H-bottom,
    left:W-right].  cropping: an int (all sides), (sym_h, sym_w) or
    ((top, bottom), (left, right)), non-negative, at most H (W) in all.
    Its backward is pad2d(dy, cropping) (and vice versa).  out may be
    preallocated: C-contiguous, dtype of x.
    """
    x = _c_array(x, "x", 4)
    (t, b), (l, r) = _border_arg(cropping, "cropping")
    n, h, w, c = x.shape
    if t + b > h or l + r > w:
        raise ValueError(f"cropping {((t, b), (l, r))} removes more than x shape {x.shape} has")
    return _copy2d(x, (n, h - t - b, w - l - r, c), t, l, out)

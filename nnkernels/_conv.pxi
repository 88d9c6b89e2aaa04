# 2-D convolution (NHWC): validation and wrappers; included from _core.pyx.

cdef extern from "nk_conv.h" nogil:
    enum:
        NK_CONV_AUTO
        NK_CONV_IM2COL
        NK_CONV_DIRECT
        NK_CONV_WINOGRAD
        NK_CONV_DEPTHWISE
        NK_CONV_DIRECT_WGRAD
        NK_CONV_FWD
        NK_CONV_BWD_DATA
        NK_CONV_BWD_FILTER
    ctypedef struct nk_conv_shape:
        int64_t n, h, w, c
        int64_t kh, kw, f
        int64_t sh, sw, dh, dw
        int64_t pt, pl
        int64_t oh, ow
        int64_t g
        int64_t ldx, ldy, ldw
        int lowp
        int out_bf16
    int nk_conv2d_forward(const nk_conv_shape *s, int dbl, int algo,
                          const void *x_nhwc, const void *w_hwcf, const void *bias_f,
                          int act, void *y_nhwf, int nthreads)
    int nk_conv2d_forward_bf16(const nk_conv_shape *s, int algo, const float *x_nhwc,
                               const float *w_hwcf, const float *bias_f, int act,
                               uint16_t *y16, int nthreads)
    int nk_conv2d_forward_maxpool(const nk_conv_shape *s, int dbl, int algo,
                                  const void *x_nhwc, const void *w_hwcf, const void *bias_f,
                                  int act, void *y_nhwf, void *pool_y, int32_t *pool_i,
                                  int nthreads)
    int nk_conv2d_backward_maxpool(const nk_conv_shape *s, int dbl, int algo,
                                   const void *dy_pool, const int32_t *pool_i,
                                   const void *pool_y, const void *x_nhwc, const void *w_hwcf,
                                   void *dx_nhwc, int dx_accumulate, void *dw_hwcf, void *db_f,
                                   int nthreads)
    int nk_conv2d_backward_maxpool_fused(const nk_conv_shape *s, int dbl, int algo,
                                         int need_dx, int need_dw, int need_db)
    int nk_conv2d_backward(const nk_conv_shape *s, int dbl, int algo,
                           const void *dy_nhwf, const void *x_nhwc, const void *w_hwcf,
                           int act, const void *y_nhwf,
                           void *dx_nhwc, int dx_accumulate, void *dw_hwcf, void *db_f,
                           int nthreads)
    int nk_conv_choose(const nk_conv_shape *s, int dbl, int pass_)
    int nk_conv_choose_run(const nk_conv_shape *s, int dbl, int pass_)
    int nk_conv_wino_ok(const nk_conv_shape *s)
    void nk_conv_set_col_budget(int64_t nbytes)
    void nk_conv_set_wino4(int on)
    int nk_conv_wino4_on()
    int nk_conv_use_wino4(int64_t c, int64_t f, int lowp, int wgrad)

_CONV_ALGOS = {"auto": NK_CONV_AUTO, "im2col": NK_CONV_IM2COL, "direct": NK_CONV_DIRECT,
               "winograd": NK_CONV_WINOGRAD, "depthwise": NK_CONV_DEPTHWISE,
               "direct_wgrad": NK_CONV_DIRECT_WGRAD}
_CONV_ALGO_NAMES = {NK_CONV_IM2COL: "im2col", NK_CONV_DIRECT: "direct",
                    NK_CONV_WINOGRAD: "winograd", NK_CONV_DEPTHWISE: "depthwise",
                    NK_CONV_DIRECT_WGRAD: "direct_wgrad"}
# Every size, stride, dilation and padding must stay below this, so that all
# index arithmetic in the kernels (products of two such numbers plus a few
# more) fits in int64 with room to spare.
_CONV_MAX_DIM = 1 << 30
_CONV_MAX_ELEMS = 1 << 60


cdef tuple _int_pair(object v, str name, long lo):
    """v as a pair of Python ints >= lo (an int means the same for both)."""
    if isinstance(v, (bool, np.bool_)):
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
    if isinstance(v, (int, np.integer)):
        v = (v, v)
    try:
        items = tuple(v)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}") from None
    if len(items) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    out = []
    for it in items:
        if isinstance(it, (bool, np.bool_)) or not isinstance(it, (int, np.integer)):
            raise TypeError(f"{name} must be an int or a pair of ints, got {v!r}")
        it = int(it)
        if it < lo or it > _CONV_MAX_DIM:
            raise ValueError(f"{name} values must be in [{lo}, {_CONV_MAX_DIM}], got {v!r}")
        out.append(it)
    return tuple(out)


cdef tuple _conv_padding(object padding, object H, object W, object kh, object kw,
                         object sh, object sw, object dh, object dw):
    """((pt, pb), (pl, pr)) as Keras/TensorFlow compute them (Python ints)."""
    if isinstance(padding, str):
        p = padding.lower()
        if p == "valid":
            return ((0, 0), (0, 0))
        if p == "same":
            oh = (H + sh - 1) // sh
            ow = (W + sw - 1) // sw
            th = max((oh - 1) * sh + (kh - 1) * dh + 1 - H, 0)
            tw = max((ow - 1) * sw + (kw - 1) * dw + 1 - W, 0)
            return ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
        raise ValueError(f"padding must be 'valid', 'same' or ((top, bottom), (left, right)), got {padding!r}")
    try:
        rows = tuple(padding)
        if len(rows) != 2:
            raise ValueError
        pr = [_int_pair(r, "padding", 0) for r in rows]
    except (TypeError, ValueError):
        raise ValueError(
            f"padding must be 'valid', 'same' or ((top, bottom), (left, right)) of ints in "
            f"[0, {_CONV_MAX_DIM}], got {padding!r}") from None
    return (pr[0], pr[1])


cdef object _nhwc(object x, str name):
    """x as an aligned C-contiguous 4-D float array (copied if it is not)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"{name} must be 4-D, got shape {x.shape}")
    _float_dtype_of(x.dtype, name)
    for d in x.shape:
        if d > _CONV_MAX_DIM:
            raise ValueError(f"{name} has shape {x.shape}: dimensions above {_CONV_MAX_DIM} are not supported")
    return _aligned(x)


cdef object _conv_out(object out, tuple shape, object dt, str name, list inputs):
    """A caller's output buffer: exact dtype and shape, C-contiguous, aligned,
    writeable, not overlapping any input (or a new array): _c_out."""
    return _c_out(out, shape, dt, name, inputs)


cdef int64_t _conv_groups(object groups) except -1:
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)):
        raise TypeError(f"groups must be an int, got {groups!r}")
    if groups < 1 or groups > _CONV_MAX_DIM:
        raise ValueError(f"groups must be in [1, {_CONV_MAX_DIM}], got {groups!r}")
    return int(groups)


cdef object _conv_geometry(tuple xs, tuple ws, object strides, object padding, object dilation,
                           object groups, nk_conv_shape *s):
    """Validate the geometry of x (N,H,W,C) and w (KH,KW,C/groups,F); fill
    s (per-group c and f, contiguous pitches).  Returns ((pt, pb), (pl, pr))."""
    cdef int64_t G = _conv_groups(groups)
    for nm, shp in (("x", xs), ("w", ws)):
        for d in shp:
            if d < 0 or d > _CONV_MAX_DIM:
                raise ValueError(f"{nm} has shape {shp}: dimensions must be in [0, {_CONV_MAX_DIM}]")
    N, H, W, C = (int(d) for d in xs)
    KH, KW, C2, F = (int(d) for d in ws)
    if G == 1 and C2 != C:
        raise ValueError(f"input channels differ: x{xs} has C={C}, w{ws} has C_in={C2} "
                         f"(w must be (KH, KW, C_in, C_out))")
    if G > 1 and (C2 * G != C or F % G):
        raise ValueError(f"groups={G}: x{xs} must have C_in = groups * w.shape[2] channels and "
                         f"w{ws} C_out divisible by groups (w must be (KH, KW, C_in/groups, "
                         f"C_out))")
    if H < 1 or W < 1 or C < 1 or KH < 1 or KW < 1 or F < 1:
        raise ValueError(f"x{xs} and w{ws}: H, W, C, KH, KW and C_out must all be >= 1")
    sh, sw = _int_pair(strides, "strides", 1)
    dh, dw = _int_pair(dilation, "dilation", 1)
    pads = _conv_padding(padding, H, W, KH, KW, sh, sw, dh, dw)
    (pt, pb), (pl, pr) = pads
    ekh = (KH - 1) * dh + 1
    ekw = (KW - 1) * dw + 1
    if H + pt + pb < ekh or W + pl + pr < ekw:
        raise ValueError(
            f"kernel {ws[:2]} with dilation {(dh, dw)} (effective {(ekh, ekw)}) does not fit in "
            f"the padded input {(H + pt + pb, W + pl + pr)} (x{xs}, padding {pads})")
    oh = (H + pt + pb - ekh) // sh + 1
    ow = (W + pl + pr - ekw) // sw + 1
    if ekh > _CONV_MAX_DIM or ekw > _CONV_MAX_DIM or H + pt + pb > _CONV_MAX_DIM or W + pl + pr > _CONV_MAX_DIM:
        raise ValueError(f"x{xs}, w{ws}: padded input or dilated kernel above {_CONV_MAX_DIM}")
    for what, v in (("x", N * H * W * C), ("w", KH * KW * C * F), ("y", N * oh * ow * F),
                    ("columns", N * oh * ow * KH * KW * C)):
        if v > _CONV_MAX_ELEMS:
            raise ValueError(f"x{xs}, w{ws}: {what} would have {v} elements, too many")
    s.n, s.h, s.w, s.c = N, H, W, C // G
    s.kh, s.kw, s.f = KH, KW, F // G
    s.sh, s.sw, s.dh, s.dw = sh, sw, dh, dw
    s.pt, s.pl = pt, pl
    s.oh, s.ow = oh, ow
    s.g, s.ldx, s.ldy, s.ldw = G, C, F, F
    s.lowp = 0
    s.out_bf16 = 0
    return pads


cdef int _conv_algo(object algo) except -1:
    try:
        return _CONV_ALGOS[algo]
    except (KeyError, TypeError):
        raise ValueError(f"algo must be one of {sorted(_CONV_ALGOS)}, got {algo!r}") from None


cdef int _conv_check_algo(int algo_id, nk_conv_shape *s) except -1:
    """Winograd F(2x2, 3x3) needs a 3x3 kernel, strides 1 and dilation 1;
    the depthwise kernels one input channel per group."""
    if algo_id == NK_CONV_DEPTHWISE and s.c != 1:
        raise ValueError(
            f"algo='depthwise' needs one input channel per group (groups == C_in), got "
            f"{s.c} channels per group ({s.g} groups)")
    if algo_id == NK_CONV_WINOGRAD and not nk_conv_wino_ok(s):
        raise ValueError(
            f"algo='winograd' needs a 3x3 kernel with strides 1 and dilation 1, got kernel "
            f"{(s.kh, s.kw)}, strides {(s.sh, s.sw)}, dilation {(s.dh, s.dw)}")
    return 0


def conv2d_output_shape(x_shape, w_shape, strides=(1, 1), padding="valid", dilation=(1, 1),
                        groups=1):
    """(N, OH, OW, C_out) of conv2d for these shapes (Keras/TensorFlow sizes)."""
    cdef nk_conv_shape s
    xs = _shape4(x_shape, "x_shape")
    ws = _shape4(w_shape, "w_shape")
    _conv_geometry(xs, ws, strides, padding, dilation, groups, &s)
    return (s.n, s.oh, s.ow, s.f * s.g)


def conv2d_algo(x_shape, w_shape, strides=(1, 1), padding="valid", dilation=(1, 1),
                dtype="float32", str product="forward", groups=1, precision=None):
    """The algorithm algo="auto" picks for one product ("forward",
    "backward_data" or "backward_filter") of this convolution: "winograd"
    for the float32 products of 3x3 convolutions with strides 1, dilation 1
    and C_in, C_out >= 16 (forward, data and weight gradients); else
    "direct_wgrad" for the float32 weight gradient when C_in >= 2 and
    (C_out <= 32 or C_in < 32); "direct" when C_in < 8; "direct" for the
    float32 forward pass of strided convolutions with C_in <= 32 and C_out a
    multiple of 32; else "im2col".  With groups, C_in and C_out are those of
    one group (each group is a convolution of its own).  With
    precision="bfloat16", the algorithm that runs under bf16 products:
    "im2col" where bf16 operands are faster than float32's choice (see
    conv2d)."""
    cdef nk_conv_shape s
    xs = _shape4(x_shape, "x_shape")
    ws = _shape4(w_shape, "w_shape")
    _conv_geometry(xs, ws, strides, padding, dilation, groups, &s)
    passes = {"forward": NK_CONV_FWD, "backward_data": NK_CONV_BWD_DATA,
              "backward_filter": NK_CONV_BWD_FILTER}
    if product not in passes:
        raise ValueError(f"product must be one of {sorted(passes)}, got {product!r}")
    dt = _float_dtype_of(np.dtype(dtype), "dtype")
    cdef int dbl = dt is _F64
    if _lowp(precision, dt):
        s.lowp = 1
        return _CONV_ALGO_NAMES[nk_conv_choose_run(&s, dbl, passes[product])]
    return _CONV_ALGO_NAMES[nk_conv_choose(&s, dbl, passes[product])]


def conv2d(x, w, bias=None, *, strides=(1, 1), padding="valid", dilation=(1, 1),
           groups=1, activation=None, algo="auto", out=None, precision=None):
    """2-D convolution, NHWC: y = act(conv(x, w) + bias).

    x: (N, H, W, C_in); w: (KH, KW, C_in, C_out); bias: (C_out,) or None;
    all float32 or all float64.  strides, dilation: int or (h, w) pair.
    padding: "valid", "same" (TensorFlow/Keras: OH = ceil(H / sh), extra
    padding row/column at the bottom/right) or ((top, bottom), (left, right)).
    activation: None, "linear" or "relu" (fused).  algo: "im2col" (implicit
    im2col GEMM, no column buffer), "direct", "winograd" (3x3 kernels,
    strides 1 and dilation 1 only, else ValueError: Winograd F(2x2, 3x3),
    2.25x fewer multiplications than direct summation, results within a few
    ulps of the magnitude of the sums of |x|*|w| over the tile's 4x4 patch
    and the kernel; in float32 with at most 64 channels on each side
    F(4x4, 3x3) instead, 4x fewer, within about 64 ulps of those sums over
    its 6x6 patch (dX alike; see nk_conv_use_wino4 in nk_conv.c for where and
    how much faster); conv2d_backward uses it for dx and, in float32, for dw
    and db: dW = G^T [sum over tiles (A dz A^T) .* (B^T d B)] G, 16 (or,
    F(4x4, 3x3) with at most 32 input and 64 output channels, 36) (C_in x
    C_out) products summed over the tiles, float64 dw takes im2col),
    "depthwise" (one input channel per group only: see
    depthwise_conv2d), "direct_wgrad" (a weight-gradient algorithm: in
    conv2d_backward the float32 dw and db come from register-tiled direct
    loops; the forward pass, dx and float64 dw take the "auto" choice) or
    "auto" (depthwise when groups > 1 and each group has one input
    channel; else per group: direct when C_in < 8, winograd for float32
    3x3 stride-1 convolutions with C_in, C_out >= 16, direct for float32
    strided forward passes with C_in <= 32 and C_out a multiple of 32, else
    im2col, and for the float32 weight gradient winograd where it applies
    with C_in, C_out >= 16, else direct_wgrad when C_in >= 2 and C_out <= 32
    or C_in < 32; see conv2d_algo).  groups (Keras Conv2D(groups=g)): x has
    C_in = g * C_g channels, w is (KH, KW, C_g, C_out) with C_out divisible
    by g, and output channels [j*C_out/g, (j+1)*C_out/g) see input channels
    [j*C_g, (j+1)*C_g) only; computed as g convolutions on channel windows
    of x and y (no copies), each with the algorithm chosen for its own
    channel counts (or, with C_g = 1, by the depthwise kernels in one pass).
    out: optional preallocated
    (N, OH, OW, C_out) C-contiguous array of the same dtype; it must not
    overlap the inputs.  Non-contiguous x / w / bias are copied first.  A
    uint16 out (float32 x and w): the output stored as bfloat16 bit patterns
    (from_bf16 widens them), each the float32 result rounded as
    VCVTNEPS2BF16 rounds (nearest even, subnormals to signed zero) -- half
    the bytes written: the fused Winograd paths round in their output
    transform, the others compute into a workspace and round it after.
    precision="bfloat16" (float32 only): bfloat16 products where they beat
    float32's algorithm -- x and w rounded to bfloat16 and their products
    accumulated in float32 (see gemm) by the im2col GEMM -- when algo (or
    auto's choice, see conv2d_algo) is "im2col", or auto picks "direct" for
    a forward pass with 16 or more input channels per group and a window
    of 32 or more values (KH * KW * C_in), or "direct_wgrad" for a weight
    gradient with 16 or more input channels; "winograd"
    rounds its transformed operands (B^T d B, G g G^T) to bfloat16 for the
    16 transformed-domain products of F(2x2, 3x3) (error within about 2**-8
    of their absolute sums; VDPBF16PS or its emulation, the same bits on
    every path), except with at most 16 channels on each side, where
    F(4x4, 3x3) with float32 products is faster (and gives the float32
    result; in conv2d_backward dW too); direct_wgrad with fewer input channels, the
    other direct cases and
    depthwise convolutions stay float32 (only more accurate).  Bias and
    activation stay float32.
    Returns y.
    """
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    return _conv2d_fwd(x, w, bias, strides, padding, dilation, groups, activation, algo, out,
                       "conv2d", precision)


cdef object _conv2d_fwd(object x, object w, object bias, object strides, object padding,
                        object dilation, object groups, object activation, object algo,
                        object out, str fname, object precision=None):
    """conv2d on x, w already through _nhwc."""
    cdef nk_conv_shape s
    dt = _same_dtype([("x", x), ("w", w)])
    cdef int act = _act_id(activation)
    cdef int algo_id = _conv_algo(algo)
    cdef int lowp = _lowp(precision, dt)
    _conv_geometry(x.shape, w.shape, strides, padding, dilation, groups, &s)
    s.lowp = lowp
    _conv_check_algo(algo_id, &s)
    if bias is not None:
        bias = _vector(bias, s.f * s.g, dt, "bias")
    # a uint16 out: the float32 output stored as bfloat16 bit patterns
    cdef bint obf = isinstance(out, np.ndarray) and out.dtype == np.uint16
    if obf and dt != _F32:
        raise TypeError(f"a bfloat16 (uint16) out needs float32 x and w, got {dt}")
    out = _conv_out(out, (s.n, s.oh, s.ow, s.f * s.g), np.dtype(np.uint16) if obf else dt,
                    "out", [("x", x), ("w", w), ("bias", bias)])
    cdef bint dbl = dt == _F64
    cdef const void *px = _p(x)
    cdef const void *pw = _p(w)
    cdef const void *pb = _p(bias) if bias is not None else NULL
    cdef void *py = _p(out)
    cdef int rc
    with nogil:
        if obf:
            rc = nk_conv2d_forward_bf16(&s, algo_id, <const float *>px, <const float *>pw,
                                        <const float *>pb, act, <uint16_t *>py, 0)
        else:
            rc = nk_conv2d_forward(&s, dbl, algo_id, px, pw, pb, act, py, 0)
    if rc != 0:
        raise MemoryError(f"nnkernels.{fname}: could not allocate the workspace")
    return out


def conv2d_maxpool(x, w, bias=None, *, strides=(1, 1), padding="valid", dilation=(1, 1),
                   groups=1, activation=None, algo="auto", out=None, indices=None, y=None,
                   precision=None):
    """max_pool2d(conv2d(x, w, bias, ...), (2, 2)) in one call: returns
    (out, indices), the values and indices max_pool2d (2x2 windows, stride 2,
    "valid") gives for y = act(conv(x, w) + bias), bit for bit.

    Same arguments as conv2d for the convolution.  Where its forward pass
    runs as Winograd (float32, groups=1; see conv2d_algo) each 2x2 output
    tile is one pooling window, pooled in the output transform: y is then
    never written unless given.  Elsewhere the convolution runs first, into
    y or, when y is None, into a workspace, and the pooling kernel after it.
    out: optional (N, OH // 2, OW // 2, C_out) array of x's dtype; indices:
    optional int32 array of that shape (h * OW + w in the OH x OW plane, as
    max_pool2d); y: optional (N, OH, OW, C_out) array that receives the
    convolution's output (all C-contiguous, not overlapping each other or
    the inputs).  OH and OW must be at least 2.
    """
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    cdef nk_conv_shape s
    dt = _same_dtype([("x", x), ("w", w)])
    cdef int act = _act_id(activation)
    cdef int algo_id = _conv_algo(algo)
    cdef int lowp = _lowp(precision, dt)
    _conv_geometry(x.shape, w.shape, strides, padding, dilation, groups, &s)
    s.lowp = lowp
    _conv_check_algo(algo_id, &s)
    if s.oh < 2 or s.ow < 2:
        raise ValueError(f"conv2d_maxpool: the convolution's output is {s.oh}x{s.ow}; 2x2 "
                         "pooling needs at least 2x2")
    if bias is not None:
        bias = _vector(bias, s.f * s.g, dt, "bias")
    named = [("x", x), ("w", w), ("bias", bias)]
    pshape = (s.n, s.oh // 2, s.ow // 2, s.f * s.g)
    out = _conv_out(out, pshape, dt, "out", named)
    if indices is not None and not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray, got {type(indices).__name__}")
    indices = _conv_out(indices, pshape, _I32, "indices", named + [("out", out)])
    if y is not None:
        y = _conv_out(y, (s.n, s.oh, s.ow, s.f * s.g), dt, "y",
                      named + [("out", out), ("indices", indices)])
    cdef bint dbl = dt == _F64
    cdef const void *px = _p(x)
    cdef const void *pw = _p(w)
    cdef const void *pb = _p(bias) if bias is not None else NULL
    cdef void *py = _p(y) if y is not None else NULL
    cdef void *po = _p(out)
    cdef int32_t *pi = <int32_t *>_p(indices)
    cdef int rc
    with nogil:
        rc = nk_conv2d_forward_maxpool(&s, dbl, algo_id, px, pw, pb, act, py, po, pi, 0)
    if rc != 0:
        raise MemoryError("nnkernels.conv2d_maxpool: could not allocate the workspace")
    return out, indices


def conv2d_maxpool_backward(dy, indices, x, w, *, strides=(1, 1), padding="valid",
                            dilation=(1, 1), groups=1, activation=None, y=None,
                            bint need_dx=True, bint need_dw=True, bint need_db=True,
                            algo="auto", dx=None, dw=None, db=None, bint accumulate_dx=False,
                            precision=None):
    """The gradients of conv2d_maxpool's convolution: conv2d_backward(dz, x,
    w, ...) where dz = max_pool2d_backward(dy, indices, ...) is the gradient
    of the 2x2 stride-2 pooling of the convolution's output, bit for bit.

    dy: dL/d(pooled output), (N, OH // 2, OW // 2, C_out); indices: the
    int32 indices conv2d_maxpool returned (same shape).  activation: None
    or "relu" (then y, the pooled output conv2d_maxpool returned, is
    required: dy counts where y > 0, the ReLU's derivative at each window's
    maximum).  Other arguments and the result (dx, dw, db) as in
    conv2d_backward.  Where both products run as F(2x2, 3x3) Winograd
    (float32 with groups=1 and even top and left padding; the data gradient
    on the fused path, see conv2d_algo) the transforms read dz from dy and
    indices, and the full-size dz is never written; elsewhere it goes to a
    workspace first.  Gradients whose index lies outside its own window are
    dropped (indices are expected from conv2d_maxpool; they are never used
    as addresses).
    """
    dy = _nhwc(dy, "dy")
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    cdef nk_conv_shape s
    cdef int act = _act_id(activation)
    cdef int algo_id = _conv_algo(algo)
    named = [("dy", dy), ("x", x), ("w", w)]
    if act != NK_ACT_NONE:
        if y is None:
            raise ValueError(f"activation={activation!r} needs the pooled output y")
        y = _nhwc(y, "y")
        named.append(("y", y))
    elif y is not None:
        raise ValueError("y (the pooled output) is read only with activation='relu'")
    dt = _same_dtype(named)
    cdef int lowp = _lowp(precision, dt)
    _conv_geometry(x.shape, w.shape, strides, padding, dilation, groups, &s)
    s.lowp = lowp
    _conv_check_algo(algo_id, &s)
    if s.oh < 2 or s.ow < 2:
        raise ValueError(f"conv2d_maxpool_backward: the convolution's output is {s.oh}x{s.ow}; "
                         "2x2 pooling needs at least 2x2")
    pshape = (s.n, s.oh // 2, s.ow // 2, s.f * s.g)
    if dy.shape != pshape:
        raise ValueError(f"dy has shape {dy.shape}, expected {pshape} (the pooled output of "
                         f"x{x.shape}, w{w.shape})")
    if y is not None and y.shape != pshape:
        raise ValueError(f"y has shape {y.shape}, expected {pshape} (the pooled output)")
    if not isinstance(indices, np.ndarray):
        raise TypeError(f"indices must be a numpy.ndarray of int32, got {type(indices).__name__}")
    if indices.dtype != _I32:
        raise TypeError(f"indices has dtype {indices.dtype}, expected int32")
    if indices.shape != pshape:
        raise ValueError(f"indices has shape {indices.shape}, expected {pshape}")
    indices = _aligned(indices)
    ins = named + [("indices", indices)]
    if accumulate_dx and (dx is None or not need_dx):
        raise ValueError("accumulate_dx=True needs need_dx=True and dx= (the array to add to)")
    for flag, buf, nm in ((need_dx, dx, "dx"), (need_dw, dw, "dw"), (need_db, db, "db")):
        if not flag:
            _unused(buf, nm, f"need_{nm}=False")
    dw = _conv_out(dw, w.shape, dt, "dw", ins) if need_dw else None
    db = _conv_out(db, (s.f * s.g,), dt, "db", ins + [("dw", dw)]) if need_db else None
    dx = _conv_out(dx, x.shape, dt, "dx", ins + [("dw", dw), ("db", db)]) if need_dx else None
    cdef bint dbl = dt == _F64
    cdef const void *pdy = _p(dy)
    cdef const int32_t *pi = <const int32_t *>_p(indices)
    cdef const void *py = _p(y) if y is not None else NULL
    cdef const void *px = _p(x)
    cdef const void *pw = _p(w)
    cdef void *pdx = _p(dx) if dx is not None else NULL
    cdef void *pdw = _p(dw) if dw is not None else NULL
    cdef void *pdb = _p(db) if db is not None else NULL
    cdef int rc
    with nogil:
        rc = nk_conv2d_backward_maxpool(&s, dbl, algo_id, pdy, pi, py, px, pw, pdx,
                                        accumulate_dx, pdw, pdb, 0)
    if rc != 0:
        raise MemoryError("nnkernels.conv2d_maxpool_backward: could not allocate the workspace")
    return dx, dw, db


def conv2d_backward(dy, x, w, *, strides=(1, 1), padding="valid", dilation=(1, 1),
                    groups=1, activation=None, y=None, bint need_dx=True, bint need_dw=True,
                    bint need_db=True, algo="auto", dx=None, dw=None, db=None,
                    bint accumulate_dx=False, precision=None):
    """Gradients of y = act(conv2d(x, w) + bias) given dy = dL/dy.

    Same geometry arguments (and groups) as conv2d.  With activation="relu"
    pass the forward output y: dz = dy * (y > 0) is applied while the operands are
    packed (never written out), and db = sum of dz is taken from the same
    packing.  need_dx / need_dw / need_db=False skip that gradient (None is
    returned in its place; with need_dw=False x is not read, and db, if
    wanted, comes from its own pass over dz).  Returns (dx, dw, db), shaped
    like x, w and (C_out,).  dx / dw / db may be preallocated C-contiguous
    arrays (they must not overlap each other or the inputs); they are
    overwritten, except dx with accumulate_dx=True: the data gradient is
    added to it (dx += dL/dx, in the same pass; dx must be given), so that a
    tensor with several consumers sums their gradients without a pass of its
    own.  precision="bfloat16": as in conv2d, for each product (dW and dX
    separately, by their algorithms): bf16 operands (dz, x, w) in the im2col
    GEMMs and Winograd's transformed operands for a dX or a dW (V = B^T d B
    and A dz A^T, in pairs of tiles; with at most 16 channels on each side
    F(4x4, 3x3) with float32 products, as in conv2d); direct_wgrad with C_in >= 16 runs as
    the bf16 im2col GEMM; with fewer, and the direct kernels, float32; db
    sums the unrounded dz in float32.
    """
    dy = _nhwc(dy, "dy")
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    return _conv2d_bwd(dy, x, w, w.shape, strides, padding, dilation, groups, activation, y,
                       need_dx, need_dw, need_db, algo, dx, dw, db, accumulate_dx,
                       "conv2d_backward", precision)


cdef tuple _conv2d_bwd(object dy, object x, object w, tuple w_shape, object strides,
                       object padding, object dilation, object groups, object activation,
                       object y, bint need_dx, bint need_dw, bint need_db, object algo,
                       object dx, object dw, object db, bint acc, str fname,
                       object precision=None):
    """conv2d_backward on dy, x, w already through _nhwc; dw is validated
    against (and returned in) w_shape, the caller's view of w's memory."""
    cdef nk_conv_shape s
    cdef int act = _act_id(activation)
    cdef int algo_id = _conv_algo(algo)
    named = [("dy", dy), ("x", x), ("w", w)]
    y_unread = None
    if act != NK_ACT_NONE:
        if y is None:
            raise ValueError(f"activation={activation!r} needs the forward output y")
        y = _nhwc(y, "y")
        named.append(("y", y))
    else:
        y_unread, y = y, None
    dt = _same_dtype(named)
    cdef int lowp = _lowp(precision, dt)
    _conv_geometry(x.shape, w.shape, strides, padding, dilation, groups, &s)
    s.lowp = lowp
    _conv_check_algo(algo_id, &s)
    _conv_check_dy(dy, y, &s, f"x{x.shape}, w{w.shape}")
    if y_unread is not None:
        _check_like(y_unread, "y", dy.shape, dt, f"not read with activation={activation!r}")
    ins = [("dy", dy), ("x", x), ("w", w), ("y", y)]
    if acc and (dx is None or not need_dx):
        raise ValueError("accumulate_dx=True needs need_dx=True and dx= (the array to add to)")
    for flag, buf, nm in ((need_dx, dx, "dx"), (need_dw, dw, "dw"), (need_db, db, "db")):
        if not flag:
            _unused(buf, nm, f"need_{nm}=False")
    dw = _conv_out(dw, w_shape, dt, "dw", ins) if need_dw else None
    db = _conv_out(db, (s.f * s.g,), dt, "db", ins + [("dw", dw)]) if need_db else None
    dx = _conv_out(dx, x.shape, dt, "dx", ins + [("dw", dw), ("db", db)]) if need_dx else None
    _conv_backward_run(&s, dt, algo_id, dy, x if need_dw else None, w, act, y, dx, acc,
                       None if dw is None else dw.reshape(w.shape), db, fname)
    return dx, dw, db


def conv2d_backward_data(dy, w, x_shape, *, strides=(1, 1), padding="valid", dilation=(1, 1),
                         groups=1, activation=None, y=None, algo="auto", out=None,
                         bint accumulate=False, precision=None):
    """The data gradient alone: dx = dL/dx of y = act(conv2d(x, w) + bias)
    for an x of shape x_shape (N, H, W, C_in), given dy = dL/dy, without
    computing dw or db (x itself is not needed).  This is also the forward
    pass of a transposed convolution (Keras Conv2DTranspose) whose kernel is
    w, mapping dy (N, OH, OW, C_out) to (N, H, W, C_in); x_shape settles the
    size that strides > 1 leave ambiguous.

    Same geometry arguments (and groups) as conv2d (padding may be
    explicit); with
    activation="relu" pass the forward output y (dz = dy * (y > 0)).
    dy must have shape conv2d_output_shape(x_shape, w.shape, ...).  algo as
    in conv2d (the data-gradient choice of conv2d_algo for "auto").  out: an
    optional preallocated x_shape C-contiguous array, overwritten; with
    accumulate=True (out required) the gradient is added to it instead.
    Returns dx.
    """
    cdef nk_conv_shape s
    dy = _nhwc(dy, "dy")
    w = _nhwc(w, "w")
    xs = _shape4(x_shape, "x_shape")
    cdef int act = _act_id(activation)
    cdef int algo_id = _conv_algo(algo)
    named = [("dy", dy), ("w", w)]
    y_unread = None
    if act != NK_ACT_NONE:
        if y is None:
            raise ValueError(f"activation={activation!r} needs the forward output y")
        y = _nhwc(y, "y")
        named.append(("y", y))
    else:
        y_unread, y = y, None
    dt = _same_dtype(named)
    cdef int lowp = _lowp(precision, dt)
    _conv_geometry(xs, w.shape, strides, padding, dilation, groups, &s)
    s.lowp = lowp
    _conv_check_algo(algo_id, &s)
    _conv_check_dy(dy, y, &s, f"x_shape {xs}, w{w.shape}")
    if y_unread is not None:
        _check_like(y_unread, "y", dy.shape, dt, f"not read with activation={activation!r}")
    if accumulate and out is None:
        raise ValueError("accumulate=True needs out= (the array to add to)")
    out = _conv_out(out, xs, dt, "out", [("dy", dy), ("w", w), ("y", y)])
    _conv_backward_run(&s, dt, algo_id, dy, None, w, act, y, out, accumulate, None, None,
                       "conv2d_backward_data")
    return out


cdef tuple _shape4(object shape, str name):
    """A 4-D shape (N, H, W, C) as a tuple of Python ints (_int_shape)."""
    return _int_shape(shape, name, 4)


cdef int _conv_check_dy(object dy, object y, nk_conv_shape *s, str what) except -1:
    """dy (and y, when given) have the convolution's output shape."""
    yshape = (s.n, s.oh, s.ow, s.f * s.g)
    if dy.shape != yshape:
        raise ValueError(f"dy has shape {dy.shape}, expected {yshape} for {what}")
    if y is not None and y.shape != yshape:
        raise ValueError(f"y has shape {y.shape}, expected {yshape} (the forward output)")
    return 0


cdef int _conv_backward_run(nk_conv_shape *s, object dt, int algo_id, object dy, object x,
                            object w, int act, object y, object dx, bint acc, object dw,
                            object db, str fname) except -1:
    """nk_conv2d_backward on validated arrays (None: NULL)."""
    cdef bint dbl = dt == _F64
    cdef const void *pdy = _p(dy)
    cdef const void *px = _p(x) if x is not None else NULL
    cdef const void *pw = _p(w)
    cdef const void *py = _p(y) if y is not None else NULL
    cdef void *pdx = _p(dx) if dx is not None else NULL
    cdef void *pdw = _p(dw) if dw is not None else NULL
    cdef void *pdb = _p(db) if db is not None else NULL
    cdef int rc
    with nogil:
        rc = nk_conv2d_backward(s, dbl, algo_id, pdy, px, pw, act, py, pdx, acc, pdw, pdb, 0)
    if rc != 0:
        raise MemoryError(f"nnkernels.{fname}: could not allocate the workspace")
    return 0


cdef object _dw_kernel(object x, object w):
    """The depthwise kernel w (KH, KW, C, M) as the grouped kernel
    (KH, KW, 1, C*M) (a view: w is C-contiguous), after checking it against
    x (N, H, W, C)."""
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"depthwise: x{x.shape} has C={x.shape[3]} channels but w{w.shape} has "
                         f"{w.shape[2]} (w must be (KH, KW, C, depth_multiplier))")
    if w.shape[3] < 1:
        raise ValueError(f"depthwise: w{w.shape} has depth multiplier {w.shape[3]}, must be >= 1")
    return w.reshape(w.shape[0], w.shape[1], 1, w.shape[2] * w.shape[3])


def depthwise_conv2d(x, w, bias=None, *, strides=(1, 1), padding="valid", dilation=(1, 1),
                     activation=None, algo="auto", out=None):
    """Depthwise 2-D convolution, NHWC (Keras DepthwiseConv2D):
    y[..., c*M + m] = act(bias[c*M + m] + conv(x[..., c], w[:, :, c, m])).

    x: (N, H, W, C); w: (KH, KW, C, M), M the depth multiplier; bias:
    (C*M,) or None; y: (N, OH, OW, C*M).  Geometry arguments, activation and
    out as in conv2d.  The same as conv2d(x, w.reshape(KH, KW, 1, C*M),
    groups=C), computed by direct loops vectorised over the (contiguous)
    channel axis, parallel over output rows; algo="auto"/"depthwise" picks
    them, "im2col"/"direct"/"winograd" run C separate one-channel
    convolutions instead (slow; for testing).  Results do not depend on the
    thread count.
    """
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    return _conv2d_fwd(x, _dw_kernel(x, w), bias, strides, padding, dilation, x.shape[3],
                       activation, algo, out, "depthwise_conv2d")


def depthwise_conv2d_backward(dy, x, w, *, strides=(1, 1), padding="valid", dilation=(1, 1),
                              activation=None, y=None, bint need_dx=True, bint need_dw=True,
                              bint need_db=True, algo="auto", dx=None, dw=None, db=None,
                              bint accumulate_dx=False):
    """Gradients of y = depthwise_conv2d(x, w, bias, activation=...) given
    dy = dL/dy: (dx, dw, db) shaped like x, w (KH, KW, C, M) and (C*M,), or
    None for a gradient not wanted.  Arguments as in conv2d_backward (relu:
    pass the forward output y; dz = dy * (y > 0) is applied as dz is read;
    accumulate_dx=True adds the data gradient to dx).
    dW and db sum fixed blocks of output rows in a fixed order: bitwise the
    same for any thread count.
    """
    dy = _nhwc(dy, "dy")
    x = _nhwc(x, "x")
    w = _nhwc(w, "w")
    return _conv2d_bwd(dy, x, _dw_kernel(x, w), w.shape, strides, padding, dilation, x.shape[3],
                       activation, y, need_dx, need_dw, need_db, algo, dx, dw, db,
                       accumulate_dx, "depthwise_conv2d_backward")


def _conv2d_maxpool_backward_fused(x_shape, w_shape, strides=(1, 1), padding="valid",
                                   dilation=(1, 1), groups=1, dtype="float32", precision=None,
                                   bint need_dx=True, bint need_dw=True, bint need_db=True,
                                   algo="auto"):
    """Whether conv2d_maxpool_backward with these arguments reads the
    convolution's gradient through the pooled one (True) or writes it to a
    workspace first (False); for tests."""
    cdef nk_conv_shape s
    xs = _shape4(x_shape, "x_shape")
    ws = _shape4(w_shape, "w_shape")
    _conv_geometry(xs, ws, strides, padding, dilation, groups, &s)
    dt = _float_dtype_of(np.dtype(dtype), "dtype")
    s.lowp = _lowp(precision, dt)
    return bool(nk_conv2d_backward_maxpool_fused(&s, dt is _F64, _conv_algo(algo), need_dx,
                                                 need_dw, need_db))


def _set_conv_col_budget(nbytes):
    """Testing hook: column-workspace budget in bytes (<= 0: the default 64 MiB)."""
    nk_conv_set_col_budget(int(nbytes))


def _set_winograd4(bint on):
    """Testing hook: Winograd F(4x4, 3x3) where it applies (True, the
    default) or F(2x2, 3x3) everywhere (False); returns the previous
    setting."""
    cdef int was = nk_conv_wino4_on()
    nk_conv_set_wino4(on)
    return bool(was)


def _winograd_tile(c_in, c_out, bint bf16=False, bint wgrad=False):
    """Testing hook: the output tile (4: F(4x4, 3x3), 2: F(2x2, 3x3)) of a
    float32 Winograd product of c_in -> c_out channels (forward C_in ->
    C_out, dX C_out -> C_in; with wgrad the weight gradient of C_in, C_out;
    bf16: bf16 products requested)."""
    return 4 if nk_conv_use_wino4(c_in, c_out, bf16, wgrad) else 2

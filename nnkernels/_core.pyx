# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled core of nnkernels: validation at the boundary, then C kernels
with the GIL released.  Everything a kernel reads or writes is checked here
(shape, dtype, strides, aliasing) so that no input can crash the process or
write out of bounds."""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint16_t
from libc.string cimport memset

cnp.import_array()

cdef extern from "nk_gemm.h" nogil:
    enum:
        NK_ACT_NONE
        NK_ACT_RELU
        NK_ISA_GENERIC
        NK_ISA_AVX2
        NK_ISA_AVX512
        NK_ISA_COUNT
    ctypedef struct nk_gemm_desc:
        int64_t m, n, k
        const void *a
        int64_t rsa, csa
        const void *b
        int64_t rsb, csb
        double alpha, beta
        const void *c
        int64_t ldc
        void *out
        int64_t ldo
        const void *bias
        int act
        const void *amask
        int64_t rsam, csam
        int adact
        const void *bmask
        int64_t rsbm, csbm
        int bdact
        void *bcolsum
        int bcolsum_accumulate
        int nthreads
        int lowp
    int nk_gemm(const nk_gemm_desc *g, int dbl)
    int nk_bf16_native_supported()
    int nk_bf16_native()
    int nk_set_bf16_native(int on)
    void nk_f32_to_bf16(const float *x, uint16_t *out, int64_t n)
    void nk_bf16_to_f32(const uint16_t *x, float *out, int64_t n)
    int nk_isa_supported(int isa)
    int nk_get_isa()
    int nk_set_isa(int isa)
    const char *nk_isa_name(int isa)
    enum:
        NK_MAX_THREADS
    void nk_set_num_threads(int n)
    int nk_get_num_threads()
    int nk_openmp_enabled()
    int nk_omp_max_threads()
    void nk_release_workspace()
    int64_t nk_workspace_bytes()
    double nk_fma_peak_run(int isa, int dbl, int nt, int64_t iters, double *flops)
    const char *nk_compiler()

cdef extern from *:
    """
    #ifndef NK_BUILD_CFLAGS
    #define NK_BUILD_CFLAGS "unknown"
    #endif
    static const char *nk_build_cflags = NK_BUILD_CFLAGS;
    """
    const char *nk_build_cflags

_ISA_IDS = {"generic": NK_ISA_GENERIC, "avx2": NK_ISA_AVX2, "avx512": NK_ISA_AVX512}
_ACTS = {None: NK_ACT_NONE, "linear": NK_ACT_NONE, "relu": NK_ACT_RELU}
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)


# ----------------------------------------------------------------- runtime --

def isa_supported(str isa):
    """True if this CPU (and OS) can run the given kernel path."""
    if isa not in _ISA_IDS:
        raise ValueError(f"unknown ISA {isa!r}; expected one of {sorted(_ISA_IDS)}")
    return bool(nk_isa_supported(_ISA_IDS[isa]))


def available_isas():
    """Kernel paths this CPU can run, best first."""
    return [name for name in ("avx512", "avx2", "generic") if nk_isa_supported(_ISA_IDS[name])]


def get_isa():
    """Name of the kernel path in use."""
    return nk_isa_name(nk_get_isa()).decode()


def set_isa(str isa):
    """Force a kernel path ("avx512", "avx2" or "generic")."""
    if isa not in _ISA_IDS:
        raise ValueError(f"unknown ISA {isa!r}; expected one of {sorted(_ISA_IDS)}")
    if nk_set_isa(_ISA_IDS[isa]) != 0:
        raise RuntimeError(f"ISA {isa!r} is not supported by this CPU; available: {available_isas()}")


# The most threads a kernel team may have (nk_gemm.h): libgomp exits the
# process when it cannot create the threads asked for, so larger counts are
# refused with ValueError here (and clamped in C).
MAX_THREADS = NK_MAX_THREADS


cdef int _thread_count(object n, str name) except -1:
    """n as a thread count in [1, MAX_THREADS]: TypeError for a non-integer
    (bool, float, str), ValueError out of range (any size of int)."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {n!r}")
    if n < 1 or n > NK_MAX_THREADS:
        raise ValueError(f"{name} must be in [1, {NK_MAX_THREADS}] (nnkernels.MAX_THREADS), "
                         f"got {n}")
    return int(n)


def bf16_native_supported():
    """True if this CPU runs VDPBF16PS (AVX512_BF16 with AVX512BW)."""
    return bool(nk_bf16_native_supported())


def bf16_path():
    """How bfloat16 products run now: "avx512_bf16" (VDPBF16PS) or
    "emulated" (float32 FMAs on the current ISA path, the same results bit
    for bit except float32 accumulators in the denormal range)."""
    return "avx512_bf16" if nk_bf16_native() else "emulated"


def set_bf16_native(bint on):
    """Use VDPBF16PS for bfloat16 products (on; the default where the CPU
    has it and the ISA path is avx512) or emulate them (off)."""
    if nk_set_bf16_native(on) != 0:
        raise RuntimeError("this CPU has no AVX512_BF16; bfloat16 products are emulated")


def to_bf16(x, out=None):
    """float32 array -> bfloat16 bit patterns (uint16, same shape), rounded
    to nearest even; denormals kept, NaN stays NaN (quiet).  NumPy has no
    bfloat16: view the result as ml_dtypes.bfloat16 if you have it.  out:
    an optional uint16 array of x's shape (C-contiguous, aligned, not
    overlapping x)."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.dtype != _F32:
        raise TypeError(f"to_bf16 needs a float32 array, got {x.dtype}")
    X = _aligned(x)
    out = _c_out(out, X.shape, np.dtype(np.uint16), "out", [("x", X)])
    cdef cnp.ndarray XA = X, OA = out
    cdef int64_t n = X.size
    with nogil:
        nk_f32_to_bf16(<const float *>cnp.PyArray_DATA(XA), <uint16_t *>cnp.PyArray_DATA(OA), n)
    return out


def from_bf16(u, out=None):
    """bfloat16 bit patterns (uint16 array) -> float32, exactly.  out: an
    optional float32 array of u's shape (C-contiguous, aligned, not
    overlapping u)."""
    if not isinstance(u, np.ndarray):
        u = np.asarray(u)
    if u.dtype != np.uint16:
        raise TypeError(f"from_bf16 needs a uint16 array of bfloat16 bit patterns, got {u.dtype}")
    U = _aligned(u)
    out = _c_out(out, U.shape, _F32, "out", [("u", U)])
    cdef cnp.ndarray UA = U, OA = out
    cdef int64_t n = U.size
    with nogil:
        nk_bf16_to_f32(<const uint16_t *>cnp.PyArray_DATA(UA), <float *>cnp.PyArray_DATA(OA), n)
    return out


def _set_num_threads(n):
    nk_set_num_threads(_thread_count(n, "number of threads"))


def get_num_threads():
    """Threads the kernels use."""
    return nk_get_num_threads()


def openmp_enabled():
    return bool(nk_openmp_enabled())


def _omp_max_threads():
    return nk_omp_max_threads()


def release_workspace():
    """Free the workspace arenas (GEMM packing, convolution scratch); they
    are re-created, and touched afresh, by the next calls."""
    nk_release_workspace()


def workspace_bytes():
    """Bytes the workspace arenas hold now."""
    return nk_workspace_bytes()


def build_info():
    return {"compiler": nk_compiler().decode(), "cflags": nk_build_cflags.decode()}


FMA_PEAK_MAX_SECONDS = 60.0


def fma_peak(str isa="auto", dtype="float32", threads=1, seconds=0.2):
    """Measured FMA throughput in GFLOP/s for one kernel path: `threads`
    threads (an int in [1, MAX_THREADS]) each run independent FMA chains for
    about `seconds` (a finite number in (0, 60])."""
    cdef int isa_id = nk_get_isa() if isa == "auto" else _ISA_IDS.get(isa, -1)
    if isa_id < 0:
        raise ValueError(f"unknown ISA {isa!r}")
    if not nk_isa_supported(isa_id):
        raise RuntimeError(f"ISA {isa!r} is not supported by this CPU")
    cdef int nt = _thread_count(threads, "threads")
    cdef double secs = _real(seconds, "seconds")
    if not (0.0 < secs <= FMA_PEAK_MAX_SECONDS):
        raise ValueError(f"seconds must be in (0, {FMA_PEAK_MAX_SECONDS:g}], got {seconds!r}")
    cdef int dbl = _float_dtype_of(np.dtype(dtype), "dtype") is _F64
    cdef double flops = 0.0, t = 0.0
    cdef int64_t iters = 100000
    with nogil:
        t = nk_fma_peak_run(isa_id, dbl, nt, iters, &flops)
    while t < secs / 4 and iters < (<int64_t>1 << 52):
        iters = <int64_t>min(iters * max(2.0, secs / max(t, 1e-6)), <double>(<int64_t>1 << 52))
        with nogil:
            t = nk_fma_peak_run(isa_id, dbl, nt, iters, &flops)
    return flops / t / 1e9


# ------------------------------------------------------------- validation --

cdef object _float_dtype_of(object dt, str name):
    """float32/float64 dtype object, TypeError otherwise."""
    if dt == _F32:
        return _F32
    if dt == _F64:
        return _F64
    raise TypeError(f"{name} must be float32 or float64, got {dt}")


cdef inline object _shp(cnp.ndarray x):
    return (<object> x).shape


cdef inline bint _is_float(int tn) noexcept:
    return tn == cnp.NPY_FLOAT32 or tn == cnp.NPY_FLOAT64


cdef object _aligned(object x):
    """The one place inputs are made fit for the kernels: the ndarray x
    itself when it is C-contiguous and aligned, else a C-contiguous, aligned
    copy of the same shape (0-d included) and dtype.  np.ascontiguousarray
    is not enough: a C-contiguous view at an odd byte offset (a float32 view
    of a uint8 buffer from byte 1) is returned as it is, misaligned, and it
    turns a 0-d array into shape (1,)."""
    if x.flags.c_contiguous and x.flags.aligned:
        return x
    return np.array(x, order="C", copy=True)


cdef tuple _int_shape(object shape, str name, int ndim=-1):
    """The one reading of a shape argument: a tuple/list (or any iterable) of
    Python ints >= 0, `ndim` of them when ndim >= 0.  TypeError for
    anything that is not an integer (float, bool, str: int() would truncate
    2.7 to 2 silently), ValueError for a wrong length or a negative size."""
    what = f"a tuple of {ndim} ints" if ndim >= 0 else "a tuple of ints"
    if isinstance(shape, (str, bytes)):
        raise TypeError(f"{name} must be {what}, got {shape!r}")
    try:
        items = tuple(shape)
    except TypeError:
        raise TypeError(f"{name} must be {what}, got {shape!r}") from None
    for d in items:
        if isinstance(d, (bool, np.bool_)) or not isinstance(d, (int, np.integer)):
            raise TypeError(f"{name} must be {what}, got {shape!r}")
    if ndim >= 0 and len(items) != ndim:
        raise ValueError(f"{name} must have {ndim} entries, got {shape!r}")
    out = tuple(int(d) for d in items)
    if any(d < 0 for d in out):
        raise ValueError(f"negative dimension in {name} {out}")
    return out


cdef int _unused(object v, str name, str why) except -1:
    """ValueError for an output buffer passed where it would not be written
    (the caller would read an array the call never filled)."""
    if v is not None:
        raise ValueError(f"{name}= was given but {why}: it would not be written")
    return 0


cdef int _check_like(object v, str name, tuple shape, object dt, str why) except -1:
    """An input given although this call does not read it (`why`): still
    checked to be an array of the expected dtype and shape, since a wrong
    one is a caller's bug."""
    a = v if isinstance(v, np.ndarray) else np.asarray(v)
    if a.dtype != dt:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dt} ({why})")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} ({why})")
    return 0


cdef cnp.ndarray _matrix(object x, str name):
    """x as a 2-D ndarray of float32/float64, aligned, whose strides are
    whole elements (read through its strides; copied by _aligned only when
    it is misaligned or its strides are not whole elements)."""
    cdef cnp.ndarray arr = x if isinstance(x, np.ndarray) else np.asarray(x)
    if cnp.PyArray_NDIM(arr) != 2:
        raise ValueError(f"{name} must be 2-D, got shape {_shp(arr)}")
    if not _is_float(cnp.PyArray_TYPE(arr)):
        raise TypeError(f"{name} must be float32 or float64, got {arr.dtype}")
    if not cnp.PyArray_ISNOTSWAPPED(arr):
        raise TypeError(f"{name} has non-native byte order ({arr.dtype.str}); use .astype(native)")
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(arr)
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(arr)
    if cnp.PyArray_SIZE(arr) and (not cnp.PyArray_ISALIGNED(arr) or st[0] % isz or st[1] % isz):
        arr = _aligned(arr)
    return arr


cdef object _same_dtype(list named):
    """The common dtype of [(name, array)...]; TypeError naming all if mixed."""
    cdef int tn = cnp.PyArray_TYPE(<cnp.ndarray> named[0][1])
    for nm, arr in named:
        if cnp.PyArray_TYPE(<cnp.ndarray> arr) != tn:
            desc = ", ".join(f"{n}: {a.dtype}" for n, a in named)
            raise TypeError(f"all operands must have the same dtype ({desc})")
    return named[0][1].dtype


cdef inline int64_t _es(cnp.ndarray x, int axis) noexcept:
    """Stride in elements (0 for an axis of length <= 1)."""
    if cnp.PyArray_DIM(x, axis) <= 1:
        return 0
    return cnp.PyArray_STRIDE(x, axis) // cnp.PyArray_ITEMSIZE(x)


cdef cnp.ndarray _vector(object v, Py_ssize_t n, object dt, str name):
    cdef cnp.ndarray arr = v if isinstance(v, np.ndarray) else np.asarray(v)
    if arr.dtype != dt:
        raise TypeError(f"{name} dtype {arr.dtype} does not match the operands' {dt}")
    if cnp.PyArray_NDIM(arr) != 1 or cnp.PyArray_DIM(arr, 0) != n:
        raise ValueError(f"{name} must have shape ({n},), got {_shp(arr)}")
    return _aligned(arr)  # a copy (length n, negligible) only if it must


cdef bint _rows_unit(cnp.ndarray x) noexcept:
    """Unit column stride, rows at a non-negative stride that keeps them apart."""
    cdef Py_ssize_t isz = cnp.PyArray_ITEMSIZE(x)
    cdef Py_ssize_t r = cnp.PyArray_DIM(x, 0), c = cnp.PyArray_DIM(x, 1)
    if r == 0 or c == 0:
        return True
    if c > 1 and cnp.PyArray_STRIDE(x, 1) != isz:
        return False
    if r > 1 and cnp.PyArray_STRIDE(x, 0) < c * isz:
        return False
    return cnp.PyArray_ISALIGNED(x) and cnp.PyArray_STRIDE(x, 0) % isz == 0


cdef bint _overlap(cnp.ndarray a, cnp.ndarray b) noexcept:
    """True if the byte ranges spanned by a and b intersect (numpy's
    may_share_memory bounds test, without the Python call)."""
    cdef char *lo[2]
    cdef char *hi[2]
    cdef cnp.ndarray x
    cdef int i, d
    cdef Py_ssize_t ext
    for i in range(2):
        x = a if i == 0 else b
        if cnp.PyArray_SIZE(x) == 0:
            return False
        lo[i] = <char *> cnp.PyArray_DATA(x)
        hi[i] = lo[i] + cnp.PyArray_ITEMSIZE(x)
        for d in range(cnp.PyArray_NDIM(x)):
            ext = (cnp.PyArray_DIM(x, d) - 1) * cnp.PyArray_STRIDE(x, d)
            if ext < 0:
                lo[i] += ext
            else:
                hi[i] += ext
    return lo[0] < hi[1] and lo[1] < hi[0]


cdef bint _may_share(object a, object b):
    """np.may_share_memory(a, b) (its bounds test), in C for two ndarrays:
    the validation of every kernel call runs it for each pair of buffers,
    a Python-level call of ~0.2 us each (some 1,600 a ResNet-20 step)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return _overlap(<cnp.ndarray> a, <cnp.ndarray> b)
    return np.may_share_memory(a, b)


cdef cnp.ndarray _output(object out, Py_ssize_t r, Py_ssize_t c, object dt, str name, list inputs):
    """Validate a caller's output buffer (or allocate one)."""
    cdef cnp.npy_intp dims[2]
    if out is None:
        dims[0] = r
        dims[1] = c
        return cnp.PyArray_EMPTY(2, dims, dt.num, 0)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    cdef cnp.ndarray o = out
    if o.dtype != dt:
        raise TypeError(f"{name} has dtype {o.dtype}, expected {dt}")
    if cnp.PyArray_NDIM(o) != 2 or cnp.PyArray_DIM(o, 0) != r or cnp.PyArray_DIM(o, 1) != c:
        raise ValueError(f"{name} has shape {_shp(o)}, expected {(r, c)}")
    if not cnp.PyArray_ISWRITEABLE(o):
        raise ValueError(f"{name} is read-only")
    if not _rows_unit(o):
        raise ValueError(
            f"{name} must be aligned, row-major with unit column stride (C-contiguous rows) "
            f"(it is written in place), got strides {(<object> o).strides}"
            + ("" if o.flags.aligned else " at a misaligned address"))
    for nm, arr in inputs:
        if arr is not None and _overlap(o, <cnp.ndarray> arr):
            raise ValueError(f"{name} overlaps input {nm}; pass a separate buffer")
    return o


cdef object _c_out(object out, tuple shape, object dt, str name, list inputs,
                   object inplace_ok=None, object inplace_ok2=None):
    """The one check of a caller's C-contiguous output buffer (or a new
    array when out is None): an ndarray of exactly dtype dt and `shape`,
    writeable, C-contiguous and aligned (ValueError otherwise: it is written
    in place, so a copy would lose the result), not overlapping any of the
    named inputs; `inplace_ok` (and `inplace_ok2`) an input that out may be
    exactly (same buffer, same layout)."""
    if out is None:
        return np.empty(shape, dtype=dt)
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(out).__name__}")
    if out.dtype != dt:
        raise TypeError(f"{name} has dtype {out.dtype}, expected {dt}")
    if out.shape != shape:
        raise ValueError(f"{name} has shape {out.shape}, expected {shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    if not (out.flags.c_contiguous and out.flags.aligned):
        raise ValueError(f"{name} must be C-contiguous and aligned (it is written in place), "
                         f"got strides {out.strides}"
                         + ("" if out.flags.aligned else " at a misaligned address"))
    for nm, arr in inputs:
        if arr is None or not out.size or not arr.size:
            continue
        ok = arr is inplace_ok or arr is inplace_ok2
        if ok and _same_buffer(out, arr):
            continue
        if _may_share(out, arr):
            raise ValueError(f"{name} overlaps input {nm}; pass a separate buffer"
                             + (" (or exactly the same array for in-place)" if ok else ""))
    return out


cdef bint _same_buffer(object a, object b):
    # the data pointers read directly: a.__array_interface__ builds a dict
    # whose keys CPython interns and drops on every call, which uses up the
    # interned-string table's slots until it is resized (a ~1 MB allocation
    # and ~235 first-touch page faults in one training step out of hundreds)
    return (cnp.PyArray_DATA(<cnp.ndarray>a) == cnp.PyArray_DATA(<cnp.ndarray>b)
            and a.shape == b.shape and a.strides == b.strides and a.dtype == b.dtype)


cdef inline int64_t _ld(cnp.ndarray x) noexcept:
    if cnp.PyArray_DIM(x, 0) > 1:
        return cnp.PyArray_STRIDE(x, 0) // cnp.PyArray_ITEMSIZE(x)
    return cnp.PyArray_DIM(x, 1)


cdef inline void *_p(cnp.ndarray x) noexcept:
    return cnp.PyArray_DATA(x)


cdef int _act_id(object activation) except -1:
    try:
        return _ACTS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported activation {activation!r}; expected None, 'linear' or 'relu'")


cdef void _desc_init(nk_gemm_desc *d) noexcept:
    memset(d, 0, sizeof(nk_gemm_desc))  # also fields Cython does not declare (pack_a)
    d.m = d.n = d.k = 0
    d.a = d.b = d.c = d.bias = d.amask = d.bmask = NULL
    d.out = d.bcolsum = NULL
    d.rsa = d.csa = d.rsb = d.csb = d.ldc = d.ldo = 0
    d.rsam = d.csam = d.rsbm = d.csbm = 0
    d.alpha = 1.0
    d.beta = 0.0
    d.act = NK_ACT_NONE
    d.adact = d.bdact = NK_ACT_NONE
    d.bcolsum_accumulate = 0
    d.nthreads = 0
    d.lowp = 0


_PRECISIONS = {None: 0, "float32": 0, "bfloat16": 1, "bf16": 1}


cdef int _lowp(object precision, object dt) except -1:
    """1 for bfloat16 products (precision "bfloat16" / "bf16", float32
    operands only), 0 for the operands' own precision (None, "float32")."""
    try:
        lowp = _PRECISIONS[precision]
    except (KeyError, TypeError):
        raise ValueError(f"precision must be None, 'float32' or 'bfloat16', got {precision!r}") \
            from None
    if lowp and dt != _F32:
        raise TypeError(f"precision={precision!r} needs float32 operands, got {dt}")
    return lowp


cdef int _run(nk_gemm_desc *d, bint dbl) except -1:
    cdef int rc
    with nogil:
        rc = nk_gemm(d, dbl)
    if rc != 0:
        raise MemoryError("nnkernels: could not allocate the GEMM packing workspace")
    return 0


# ------------------------------------------------------------------ GEMM --

def gemm(a, b, *, bint trans_a=False, bint trans_b=False, alpha=1.0, beta=0.0,
         c=None, bias=None, activation=None, out=None, precision=None):
    """out = act(alpha * op(a) @ op(b) + beta * c + bias), in one pass over out.

    precision="bfloat16" (float32 operands only): op(a) and op(b) are rounded
    to bfloat16 (nearest even; denormals to zero, as VCVTNEPS2BF16) and
    their products accumulated in float32 (VDPBF16PS where the CPU has
    AVX512_BF16, the same arithmetic with float32 FMAs elsewhere, bit for
    bit); alpha, c, bias and the activation stay float32.  None or
    "float32": the operands' own precision.

    op(x) is x.T when trans_x is set.  a, b (and c, bias, out) must share one
    dtype, float32 or float64.  a and b may be C- or F-contiguous or any 2-D
    strided view: the kernels read through the strides, nothing is copied.
    bias (length N) is broadcast over rows; activation is None, "linear" or
    "relu".  c (shape (M, N)) may be `out` itself for in-place accumulation
    (beta=1).  out, if given, must be (M, N), row-major with unit column
    stride, and must not overlap a, b or bias.  Returns out.
    """
    cdef cnp.ndarray A = _matrix(a, "a"), B = _matrix(b, "b")
    cdef cnp.ndarray C = None, O, BIAS = None
    cdef Py_ssize_t m = A.shape[1] if trans_a else A.shape[0]
    cdef Py_ssize_t ka = A.shape[0] if trans_a else A.shape[1]
    cdef Py_ssize_t kb = B.shape[1] if trans_b else B.shape[0]
    cdef Py_ssize_t n = B.shape[0] if trans_b else B.shape[1]
    a, b = A, B
    if ka != kb:
        raise ValueError(
            f"inner dimensions differ: op(a) is ({m}, {ka}) (a{_shp(A)}, trans_a={trans_a}), "
            f"op(b) is ({kb}, {n}) (b{_shp(B)}, trans_b={trans_b})")
    if cnp.PyArray_TYPE(A) != cnp.PyArray_TYPE(B):
        _same_dtype([("a", A), ("b", B)])
    dt = A.dtype
    cdef int act = _act_id(activation)
    cdef double alpha_ = _real(alpha, "alpha"), beta_ = _real(beta, "beta")
    if bias is not None:
        BIAS = _vector(bias, n, dt, "bias")
    if beta_ != 0.0 and c is None:
        raise ValueError("beta != 0 needs c")
    if c is not None:  # checked even with beta == 0 (then not read)
        C = _matrix(c, "c")
        if C.dtype != dt:
            raise TypeError(f"c dtype {C.dtype} does not match the operands' {dt}")
        if C.shape[0] != m or C.shape[1] != n:
            raise ValueError(f"c has shape {_shp(C)}, expected {(m, n)}")
        if beta_ == 0.0:
            C = None
    cdef bint c_is_out = out is not None and C is not None and C is out
    O = _output(out, m, n, dt, "out",
                [("a", A), ("b", B), ("bias", BIAS)] + ([] if c_is_out else [("c", C)]))
    if C is not None and not c_is_out and not _rows_unit(C):
        C = _aligned(C)  # (M, N): the size of the output itself

    cdef nk_gemm_desc d
    _desc_init(&d)
    d.m, d.n, d.k = m, n, ka
    d.a = _p(A)
    d.b = _p(B)
    if trans_a:
        d.rsa, d.csa = _es(A, 1), _es(A, 0)
    else:
        d.rsa, d.csa = _es(A, 0), _es(A, 1)
    if trans_b:
        d.rsb, d.csb = _es(B, 1), _es(B, 0)
    else:
        d.rsb, d.csb = _es(B, 0), _es(B, 1)
    d.alpha, d.beta = alpha_, beta_
    if C is not None:
        d.c = _p(C)
        d.ldc = _ld(C)
    d.out = _p(O)
    d.ldo = _ld(O)
    d.bias = _p(BIAS) if BIAS is not None else NULL
    d.act = act
    d.lowp = _lowp(precision, dt)
    _run(&d, cnp.PyArray_TYPE(A) == cnp.NPY_FLOAT64)
    return O


# ----------------------------------------------------------------- dense --

def dense_forward(x, w, b=None, activation=None, out=None, precision=None):
    """y = act(x @ w + b) in one fused GEMM.  x: (batch, in), w: (in, units),
    b: (units,) or None.  precision: as in gemm."""
    return gemm(x, w, bias=b, activation=activation, out=out, precision=precision)


def dense_backward(dy, x, w, y=None, activation=None, *, bint need_dx=True,
                   bint need_db=True, dx=None, dw=None, db=None, bint accumulate=False,
                   precision=None):
    """Gradients of y = act(x @ w + b).

    dz = dy * act'(.) is fused into the packing of the two GEMMs (it is never
    written to memory): dx = dz @ w.T, dw = x.T @ dz, and db = sum of dz over
    rows is accumulated while dz is packed for dw.  For activation="relu" pass
    the forward output y (act' = y > 0).  With accumulate=True, dw and db
    (which must then be given) are added to instead of overwritten.
    precision="bfloat16": the operands of both products (x, w and dz) are
    rounded to bfloat16 as in gemm; db sums the unrounded dz in float32.
    Returns (dx or None, dw, db or None).
    """
    cdef cnp.ndarray DY = _matrix(dy, "dy"), X = _matrix(x, "x"), W = _matrix(w, "w")
    cdef cnp.ndarray Y = None, DX = None, DW, DB = None
    cdef int act = _act_id(activation)
    named = [("dy", DY), ("x", X), ("w", W)]
    if act != NK_ACT_NONE:
        if y is None:
            raise ValueError(f"activation={activation!r} needs the forward output y")
        Y = _matrix(y, "y")
        named.append(("y", Y))
    dt = _same_dtype(named)
    cdef int lowp = _lowp(precision, dt)
    if Y is None and y is not None:
        _check_like(y, "y", _shp(DY), dt, f"not read with activation={activation!r}")
    if not need_dx:
        _unused(dx, "dx", "need_dx=False")
    if not need_db:
        _unused(db, "db", "need_db=False")
    cdef Py_ssize_t batch = X.shape[0], n_in = X.shape[1], units = W.shape[1]
    if W.shape[0] != n_in:
        raise ValueError(f"x{_shp(X)} and w{_shp(W)}: w must have shape ({n_in}, units)")
    if DY.shape[0] != batch or DY.shape[1] != units:
        raise ValueError(f"dy has shape {_shp(DY)}, expected {(batch, units)} for x{_shp(X)}, w{_shp(W)}")
    if Y is not None and (Y.shape[0] != batch or Y.shape[1] != units):
        raise ValueError(f"y has shape {_shp(Y)}, expected {_shp(DY)}")
    if accumulate and (dw is None or (need_db and db is None)):
        raise ValueError("accumulate=True needs dw (and db) to add into")
    ins = [("dy", DY), ("x", X), ("w", W), ("y", Y)]
    DW = _output(dw, n_in, units, dt, "dw", ins)
    if need_db:
        DB = _c_out(db, (units,), dt, "db", ins + [("dw", DW)])
    if need_dx:
        DX = _output(dx, batch, n_in, dt, "dx", ins + [("dw", DW), ("db", DB)])
    cdef bint dbl = cnp.PyArray_TYPE(DY) == cnp.NPY_FLOAT64
    cdef nk_gemm_desc d
    # dw (+)= x.T @ dz ; db (+)= colsum(dz): dz packed as B from dy (masked by y)
    _desc_init(&d)
    d.m, d.n, d.k = n_in, units, batch
    d.a = _p(X)
    d.rsa, d.csa = _es(X, 1), _es(X, 0)
    d.b = _p(DY)
    d.rsb, d.csb = _es(DY, 0), _es(DY, 1)
    if Y is not None:
        d.bmask = _p(Y)
        d.rsbm, d.csbm = _es(Y, 0), _es(Y, 1)
        d.bdact = act
    d.out = _p(DW)
    d.ldo = _ld(DW)
    if accumulate:
        d.beta = 1.0
        d.c = d.out
        d.ldc = d.ldo
    if DB is not None:
        d.bcolsum = _p(DB)
        d.bcolsum_accumulate = accumulate
    d.lowp = lowp
    _run(&d, dbl)
    if DX is not None:
        # dx = dz @ w.T: dz packed as A from dy (masked by y)
        _desc_init(&d)
        d.m, d.n, d.k = batch, n_in, units
        d.a = _p(DY)
        d.rsa, d.csa = _es(DY, 0), _es(DY, 1)
        if Y is not None:
            d.amask = _p(Y)
            d.rsam, d.csam = _es(Y, 0), _es(Y, 1)
            d.adact = act
        d.b = _p(W)
        d.rsb, d.csb = _es(W, 1), _es(W, 0)
        d.out = _p(DX)
        d.ldo = _ld(DX)
        d.lowp = lowp
        _run(&d, dbl)
    return DX, DW, DB


include "_conv.pxi"
include "_pool.pxi"
include "_pool2.pxi"
include "_train.pxi"

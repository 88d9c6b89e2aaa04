# cython: language_level=3, boundscheck=False, wraparound=False
"""Compiled core of nnkernels: validation at the boundary, then C kernels
with the GIL released.  Everything a kernel reads or writes is checked here
(shape, dtype, strides, aliasing) so that no input can crash the process or
write out of bounds."""

import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t, intptr_t

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
    int nk_gemm(const nk_gemm_desc *g, int dbl)
    int nk_isa_supported(int isa)
    int nk_get_isa()
    int nk_set_isa(int isa)
    const char *nk_isa_name(int isa)
    void nk_set_num_threads(int n)
    int nk_get_num_threads()
    int nk_openmp_enabled()
    int nk_omp_max_threads()
    void nk_release_workspace()
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


def _set_num_threads(int n):
    nk_set_num_threads(n)


def get_num_threads():
    """Threads the kernels use."""
    return nk_get_num_threads()


def openmp_enabled():
    return bool(nk_openmp_enabled())


def _omp_max_threads():
    return nk_omp_max_threads()


def release_workspace():
    """Free the packing arena (it is re-created on the next call)."""
    nk_release_workspace()


def build_info():
    return {"compiler": nk_compiler().decode(), "cflags": nk_build_cflags.decode()}


def fma_peak(str isa="auto", dtype="float32", int threads=1, double seconds=0.2):
    """Measured FMA throughput in GFLOP/s for one kernel path: `threads`
    threads each run independent FMA chains for about `seconds`."""
    cdef int isa_id = nk_get_isa() if isa == "auto" else _ISA_IDS.get(isa, -1)
    if isa_id < 0:
        raise ValueError(f"unknown ISA {isa!r}")
    if not nk_isa_supported(isa_id):
        raise RuntimeError(f"ISA {isa!r} is not supported by this CPU")
    if threads < 1:
        raise ValueError("threads must be >= 1")
    cdef int dbl = _float_dtype_of(np.dtype(dtype), "dtype") is _F64
    cdef double flops = 0.0, t = 0.0
    cdef int64_t iters = 100000
    with nogil:
        t = nk_fma_peak_run(isa_id, dbl, threads, iters, &flops)
    while t < seconds / 4:
        iters = <int64_t>(iters * max(2.0, seconds / max(t, 1e-6)))
        with nogil:
            t = nk_fma_peak_run(isa_id, dbl, threads, iters, &flops)
    return flops / t / 1e9


# ------------------------------------------------------------- validation --

cdef object _float_dtype_of(object dt, str name):
    if dt == _F32:
        return _F32
    if dt == _F64:
        return _F64
    raise TypeError(f"{name} must be float32 or float64, got {dt}")


cdef object _matrix(object x, str name):
    """x as a 2-D ndarray of float32/float64 whose strides are whole elements."""
    if not isinstance(x, np.ndarray):
        x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {x.shape}")
    _float_dtype_of(x.dtype, name)
    cdef Py_ssize_t isz = x.itemsize
    if x.size and (not x.flags.aligned or x.strides[0] % isz or x.strides[1] % isz):
        raise ValueError(f"{name} has misaligned data or strides {x.strides}; pass a copy")
    return x


cdef object _same_dtype(list named):
    """The common dtype of [(name, array)...]; TypeError naming all if mixed."""
    dt = named[0][1].dtype
    for nm, arr in named:
        if arr.dtype != dt:
            desc = ", ".join(f"{n}: {a.dtype}" for n, a in named)
            raise TypeError(f"all operands must have the same dtype ({desc})")
    return dt


cdef inline int64_t _es(object x, int axis):
    """Stride in elements (0 for an axis of length <= 1)."""
    if x.shape[axis] <= 1:
        return 0
    return x.strides[axis] // x.itemsize


cdef object _vector(object v, Py_ssize_t n, object dt, str name):
    if not isinstance(v, np.ndarray):
        v = np.asarray(v)
    if v.dtype != dt:
        raise TypeError(f"{name} dtype {v.dtype} does not match the operands' {dt}")
    if v.ndim != 1 or v.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), got {v.shape}")
    if not v.flags.c_contiguous or not v.flags.aligned:
        v = np.ascontiguousarray(v)  # length-n copy, negligible
    return v


cdef bint _rows_unit(object x):
    """Unit column stride, rows at a non-negative stride that keeps them apart."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        return True
    if x.shape[1] > 1 and x.strides[1] != x.itemsize:
        return False
    if x.shape[0] > 1 and x.strides[0] < x.shape[1] * x.itemsize:
        return False
    return x.flags.aligned and x.strides[0] % x.itemsize == 0


cdef object _output(object out, tuple shape, object dt, str name, list inputs):
    """Validate a caller's output buffer (or allocate one)."""
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
    if not _rows_unit(out):
        raise ValueError(
            f"{name} must be row-major with unit column stride (C-contiguous rows), "
            f"got strides {out.strides}")
    for nm, arr in inputs:
        if arr is not None and out.size and arr.size and np.may_share_memory(out, arr):
            raise ValueError(f"{name} overlaps input {nm}; pass a separate buffer")
    return out


cdef inline int64_t _ld(object x):
    return x.strides[0] // x.itemsize if x.shape[0] > 1 else x.shape[1]


cdef inline void *_p(cnp.ndarray x):
    return cnp.PyArray_DATA(x)


cdef int _act_id(object activation) except -1:
    try:
        return _ACTS[activation]
    except (KeyError, TypeError):
        raise ValueError(f"unsupported activation {activation!r}; expected None, 'linear' or 'relu'")


cdef void _desc_init(nk_gemm_desc *d) noexcept:
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


cdef int _run(nk_gemm_desc *d, bint dbl) except -1:
    cdef int rc
    with nogil:
        rc = nk_gemm(d, dbl)
    if rc != 0:
        raise MemoryError("nnkernels: could not allocate the GEMM packing workspace")
    return 0


# ------------------------------------------------------------------ GEMM --

def gemm(a, b, *, bint trans_a=False, bint trans_b=False, alpha=1.0, beta=0.0,
         c=None, bias=None, activation=None, out=None):
    """out = act(alpha * op(a) @ op(b) + beta * c + bias), in one pass over out.

    op(x) is x.T when trans_x is set.  a, b (and c, bias, out) must share one
    dtype, float32 or float64.  a and b may be C- or F-contiguous or any 2-D
    strided view: the kernels read through the strides, nothing is copied.
    bias (length N) is broadcast over rows; activation is None, "linear" or
    "relu".  c (shape (M, N)) may be `out` itself for in-place accumulation
    (beta=1).  out, if given, must be (M, N), row-major with unit column
    stride, and must not overlap a, b or bias.  Returns out.
    """
    a = _matrix(a, "a")
    b = _matrix(b, "b")
    named = [("a", a), ("b", b)]
    cdef Py_ssize_t m = a.shape[1] if trans_a else a.shape[0]
    cdef Py_ssize_t ka = a.shape[0] if trans_a else a.shape[1]
    cdef Py_ssize_t kb = b.shape[1] if trans_b else b.shape[0]
    cdef Py_ssize_t n = b.shape[0] if trans_b else b.shape[1]
    if ka != kb:
        raise ValueError(
            f"inner dimensions differ: op(a) is ({m}, {ka}) (a{a.shape}, trans_a={trans_a}), "
            f"op(b) is ({kb}, {n}) (b{b.shape}, trans_b={trans_b})")
    dt = _same_dtype(named)
    cdef int act = _act_id(activation)
    cdef double alpha_ = float(alpha), beta_ = float(beta)
    if bias is not None:
        bias = _vector(bias, n, dt, "bias")
    if beta_ != 0.0:
        if c is None:
            raise ValueError("beta != 0 needs c")
        c = _matrix(c, "c")
        if c.dtype != dt:
            raise TypeError(f"c dtype {c.dtype} does not match the operands' {dt}")
        if c.shape != (m, n):
            raise ValueError(f"c has shape {c.shape}, expected {(m, n)}")
    else:
        c = None
    out_given = out is not None
    c_is_out = out_given and c is not None and c is out
    out = _output(out, (m, n), dt, "out",
                  [("a", a), ("b", b), ("bias", bias)] + ([] if c_is_out else [("c", c)]))
    if c is not None and not c_is_out and not _rows_unit(c):
        c = np.ascontiguousarray(c)  # (M, N): the size of the output itself

    cdef nk_gemm_desc d
    _desc_init(&d)
    d.m, d.n, d.k = m, n, ka
    d.a = _p(a)
    d.b = _p(b)
    if trans_a:
        d.rsa, d.csa = _es(a, 1), _es(a, 0)
    else:
        d.rsa, d.csa = _es(a, 0), _es(a, 1)
    if trans_b:
        d.rsb, d.csb = _es(b, 1), _es(b, 0)
    else:
        d.rsb, d.csb = _es(b, 0), _es(b, 1)
    d.alpha, d.beta = alpha_, beta_
    if c is not None:
        d.c = _p(c)
        d.ldc = _ld(c)
    d.out = _p(out)
    d.ldo = _ld(out)
    d.bias = _p(bias) if bias is not None else NULL
    d.act = act
    _run(&d, dt == _F64)
    return out


# ----------------------------------------------------------------- dense --

def dense_forward(x, w, b=None, activation=None, out=None):
    """y = act(x @ w + b) in one fused GEMM.  x: (batch, in), w: (in, units),
    b: (units,) or None."""
    return gemm(x, w, bias=b, activation=activation, out=out)


def dense_backward(dy, x, w, y=None, activation=None, *, bint need_dx=True,
                   bint need_db=True, dx=None, dw=None, db=None, bint accumulate=False):
    """Gradients of y = act(x @ w + b).

    dz = dy * act'(.) is fused into the packing of the two GEMMs (it is never
    written to memory): dx = dz @ w.T, dw = x.T @ dz, and db = sum of dz over
    rows is accumulated while dz is packed for dw.  For activation="relu" pass
    the forward output y (act' = y > 0).  With accumulate=True, dw and db
    (which must then be given) are added to instead of overwritten.
    Returns (dx or None, dw, db or None).
    """
    dy = _matrix(dy, "dy")
    x = _matrix(x, "x")
    w = _matrix(w, "w")
    cdef int act = _act_id(activation)
    named = [("dy", dy), ("x", x), ("w", w)]
    if act != NK_ACT_NONE:
        if y is None:
            raise ValueError(f"activation={activation!r} needs the forward output y")
        y = _matrix(y, "y")
        named.append(("y", y))
    else:
        y = None
    dt = _same_dtype(named)
    cdef Py_ssize_t batch = x.shape[0], n_in = x.shape[1], units = w.shape[1]
    if w.shape[0] != n_in:
        raise ValueError(f"x{x.shape} and w{w.shape}: w must have shape ({n_in}, units)")
    if dy.shape != (batch, units):
        raise ValueError(f"dy has shape {dy.shape}, expected {(batch, units)} for x{x.shape}, w{w.shape}")
    if y is not None and y.shape != dy.shape:
        raise ValueError(f"y has shape {y.shape}, expected {dy.shape}")
    if accumulate and (dw is None or (need_db and db is None)):
        raise ValueError("accumulate=True needs dw (and db) to add into")
    ins = [("dy", dy), ("x", x), ("w", w), ("y", y)]
    dw = _output(dw, (n_in, units), dt, "dw", ins)
    if need_db:
        if db is None:
            db = np.empty((units,), dtype=dt)
        else:
            if not isinstance(db, np.ndarray) or db.dtype != dt or db.shape != (units,):
                raise ValueError(f"db must be a {dt} array of shape ({units},)")
            if not db.flags.c_contiguous or not db.flags.writeable:
                raise ValueError("db must be contiguous and writeable")
            for nm, arr in ins + [("dw", dw)]:
                if arr is not None and arr.size and db.size and np.may_share_memory(db, arr):
                    raise ValueError(f"db overlaps {nm}")
    else:
        db = None
    if need_dx:
        dx = _output(dx, (batch, n_in), dt, "dx", ins + [("dw", dw), ("db", db)])
        if np.may_share_memory(dx, dw) and dx.size and dw.size:
            raise ValueError("dx overlaps dw")
    else:
        dx = None
    cdef bint dbl = dt == _F64
    cdef nk_gemm_desc d
    # dw (+)= x.T @ dz ; db (+)= colsum(dz): dz packed as B from dy (masked by y)
    _desc_init(&d)
    d.m, d.n, d.k = n_in, units, batch
    d.a = _p(x)
    d.rsa, d.csa = _es(x, 1), _es(x, 0)
    d.b = _p(dy)
    d.rsb, d.csb = _es(dy, 0), _es(dy, 1)
    if y is not None:
        d.bmask = _p(y)
        d.rsbm, d.csbm = _es(y, 0), _es(y, 1)
        d.bdact = act
    d.out = _p(dw)
    d.ldo = _ld(dw)
    if accumulate:
        d.beta = 1.0
        d.c = d.out
        d.ldc = d.ldo
    if db is not None:
        d.bcolsum = _p(db)
        d.bcolsum_accumulate = accumulate
    _run(&d, dbl)
    if dx is not None:
        # dx = dz @ w.T: dz packed as A from dy (masked by y)
        _desc_init(&d)
        d.m, d.n, d.k = batch, n_in, units
        d.a = _p(dy)
        d.rsa, d.csa = _es(dy, 0), _es(dy, 1)
        if y is not None:
            d.amask = _p(y)
            d.rsam, d.csam = _es(y, 0), _es(y, 1)
            d.adact = act
        d.b = _p(w)
        d.rsb, d.csb = _es(w, 1), _es(w, 0)
        d.out = _p(dx)
        d.ldo = _ld(dx)
        _run(&d, dbl)
    return dx, dw, db


include "_pool.pxi"

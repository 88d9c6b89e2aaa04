# Training kernels: softmax cross-entropy, optimizer updates, batch
# normalisation with fused residual-add / ReLU epilogues (included from
# _core.pyx, after _pool.pxi whose helpers _c_array / _c_out / _same_buffer
# it uses).
#
# As everywhere: shapes, dtypes, contiguity and aliasing are checked here,
# with the GIL held, before anything is written; the kernels then run with
# the GIL released and write only through the buffers validated here.
#
# Determinism: reductions (loss, n_correct, sum_squares, batch-norm sums) sum
# fixed blocks, whose size depends only on the array sizes, in a fixed order,
# in double (float32 batch norm: float runs of 8 rows within each block);
# updates are elementwise.  Every result is bitwise the same for
# any thread count, and for any ISA setting: these kernels have one portable,
# auto-vectorised body (batch norm's row loops are compiled once per ISA
# path from that one body, without FMA contraction: nk_bn_kern.c).  The one
# exception: the sign and payload of a NaN made where two NaNs meet in one
# operation follow the compiler's operand order and may differ between the
# ISA paths (NaN or not is the same everywhere).

from libc.math cimport sqrt as c_sqrt

cdef extern from "nk_train.h" nogil:
    enum:
        NK_LABELS_I32
        NK_LABELS_I64
        NK_LABELS_DENSE
    ctypedef struct nk_xent_desc:
        int64_t n, k
        const void *logits_nk
        const void *labels
        int label_kind
        int from_logits
        void *dlogits_nk
        void *probs_nk
        double grad_scale
    int64_t nk_labels_first_bad(int64_t n, const void *labels, int label_kind, int64_t k)
    double nk_softmax_xent(const nk_xent_desc *d, int64_t *n_correct, int dbl)
    void nk_sgd_update(int64_t n, void *p, const void *g, void *m, double lr, double momentum,
                       int nesterov, int dbl)
    void nk_adam_update(int64_t n, void *p, const void *g, void *m, void *v, double alpha,
                        double beta_1, double beta_2, double epsilon, int dbl)
    void nk_rmsprop_update(int64_t n, void *p, const void *g, void *v, void *m, void *mg,
                           double lr, double rho, double epsilon, double momentum, int dbl)
    void nk_adadelta_update(int64_t n, void *p, const void *g, void *acc_g, void *acc_d,
                            double lr, double rho, double epsilon, int dbl)
    double nk_sum_squares(int64_t n, const void *x, int dbl)
    enum:
        NK_BN_F32
        NK_BN_F64
        NK_BN_F32_XBF16
    int nk_batchnorm_fwd_train(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                               const void *beta, void *y_mc, double eps, double momentum,
                               void *moving_mean, void *moving_var, void *save_mean,
                               void *save_invstd, int dbl)
    int nk_batchnorm_fwd_infer(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                               const void *beta, const void *moving_mean,
                               const void *moving_var, double eps, void *y_mc, int dbl)
    int nk_batchnorm_bwd(int64_t m, int64_t c, const void *dy_mc, const void *x_mc,
                         const void *gamma, const void *save_mean, const void *save_invstd,
                         void *dx_mc, void *dgamma, void *dbeta, int dbl)
    int nk_batchnorm_fwd_train_fused(int64_t m, int64_t c, const void *x_mc,
                                     const void *res_mc, const void *gamma, const void *beta,
                                     void *y_mc, int act, double eps, double momentum,
                                     void *moving_mean, void *moving_var, void *save_mean,
                                     void *save_invstd, void *save_scale, int dbl)
    int nk_batchnorm_fwd_infer_fused(int64_t m, int64_t c, const void *x_mc,
                                     const void *res_mc, const void *gamma, const void *beta,
                                     const void *moving_mean, const void *moving_var,
                                     double eps, void *y_mc, int act, int dbl)
    int nk_batchnorm_bwd_fused(int64_t m, int64_t c, const void *dy_mc, const void *y_mc,
                               int act, const void *x_mc, const void *gamma,
                               const void *save_mean, const void *save_invstd,
                               const void *mask_scale, const void *mask_shift, void *dx_mc,
                               void *dres_mc, void *dgamma, void *dbeta, int dbl)

_I64 = np.dtype(np.int64)


cdef double _real(object v, str name) except? -1.0:
    """A real number (not bool) as a double; TypeError otherwise."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        return float(v)
    except OverflowError:  # an int beyond the double range
        raise ValueError(f"{name} = {v} is out of the range of a float") from None


cdef object _state(object a, str name, tuple shape, object dt):
    """An array updated in place: ndarray of dtype dt and the given shape,
    writeable, C-contiguous (a copy would lose the update)."""
    if not isinstance(a, np.ndarray):  # None too: a state buffer is never allocated here
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    return _c_out(a, shape, dt, name, [])


cdef object _same_as(object a, str name, tuple shape, object dt):
    """An input of dtype dt and the given shape, as a C-contiguous array."""
    if not isinstance(a, np.ndarray):
        a = np.asarray(a)
    if a.dtype != dt:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {dt}")
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape}")
    return _aligned(a)


cdef _disjoint(list arrays):
    """ValueError if two of the named arrays share memory."""
    cdef Py_ssize_t i, j
    for i in range(len(arrays)):
        ni, ai = arrays[i]
        if ai is None or not ai.size:
            continue
        for j in range(i + 1, len(arrays)):
            nj, aj = arrays[j]
            if aj is None or not aj.size:
                continue
            if _may_share(ai, aj):
                raise ValueError(f"{ni} and {nj} overlap; they must be separate buffers")


cdef _writes_disjoint(list writes, list arrays):
    """ValueError if an array of `writes` shares memory with another entry
    of `arrays` (the same entry, updated in place, is fine)."""
    for nw, w in writes:
        if w is None or not w.size:
            continue
        for na, a in arrays:
            if a is None or na == nw or not a.size:
                continue
            if _may_share(w, a):
                raise ValueError(f"{nw} overlaps {na}; they must be separate buffers")


# ------------------------------------------------ softmax cross-entropy --

def softmax_xent(logits, labels, *, dlogits=None, probs=None, from_logits=True,
                 grad_scale=None):
    """Summed softmax cross-entropy and accuracy count of a batch; returns
    (loss_sum: float, n_correct: int).

    logits: (N, K) float32/float64 (copied if not C-contiguous).
    labels: (N,) integer class ids in [0, K) ("sparse"; int32/int64 used as
      they are, other integer dtypes converted), or (N, K) targets of the
      logits' dtype ("categorical").  Class ids outside [0, K) raise
      ValueError before anything is written.

    from_logits=True (the fused softmax + cross-entropy of the training
    step), per row, with z = logits row, lse = max(z) + log(sum exp(z - max)):
      sparse:      loss = lse - z[label]
      categorical: loss = -sum_k t_k (z_k - lse)   (terms with t_k = 0 skipped)
      probs = softmax(z),  dlogits = (softmax(z) - t) * grad_scale, t = onehot
      or the target row.
    from_logits=False (inputs are probabilities; Keras 3 semantics of its
    NumPy/JAX backends): q = p / sum(p) per row,
      loss = -sum_k t_k log(clip(q_k, 1e-7, 1 - 1e-7))   (sparse: t = onehot)
      probs = q,  dlogits = d loss / d p * grad_scale (the clip's gradient is
      0 outside [1e-7, 1 - 1e-7]).
    grad_scale defaults to 1 / N (the gradient of the mean loss).

    n_correct counts rows whose argmax equals the label (categorical: the
    argmax of the target row); argmax as numpy.argmax: first maximum wins,
    NaN counts as the maximum.  A NaN or inf in a row gives a NaN or inf
    loss.  The loss is summed in double over fixed row blocks in a fixed
    order: the same bits for any thread count.

    dlogits, probs: optional (N, K) C-contiguous outputs of the logits'
    dtype; either may be the logits array itself (in place), but they may
    not overlap each other or the targets.
    """
    x = _c_array(logits, "logits", 2)
    dt = x.dtype
    cdef int64_t n = x.shape[0], k = x.shape[1]
    if k < 1 and n > 0:
        raise ValueError(f"logits must have at least one class, got shape {x.shape}")
    if not isinstance(labels, np.ndarray):
        labels = np.asarray(labels)
    cdef int kind
    if labels.dtype.kind in "iu":
        if labels.shape == (n, 1):  # Keras accepts (N, 1) class ids
            labels = labels.reshape(n)
        if labels.shape != (n,):
            raise ValueError(f"integer labels must have shape (N,) = {(n,)}, got {labels.shape} "
                             f"(logits shape {x.shape})")
        if labels.dtype == _I32:
            kind = NK_LABELS_I32
        else:
            if labels.dtype != _I64:
                if labels.dtype.kind == "u" and labels.size and labels.max() > np.iinfo(np.int64).max:
                    raise ValueError(f"labels out of range [0, {k})")
                labels = labels.astype(_I64)
            kind = NK_LABELS_I64
        labels = _aligned(labels)
    elif labels.dtype.kind == "f":
        if labels.dtype != dt:
            raise TypeError(f"categorical labels have dtype {labels.dtype}, expected the "
                            f"logits' {dt} (or integer class ids)")
        if labels.shape != (n, k):
            raise ValueError(f"categorical labels must have the logits' shape {x.shape}, "
                             f"got {labels.shape}")
        kind = NK_LABELS_DENSE
        labels = _aligned(labels)
    else:
        raise TypeError(f"labels must be integer class ids or float targets, got dtype "
                        f"{labels.dtype}")
    gs = (1.0 / n if n > 0 else 1.0) if grad_scale is None else _real(grad_scale, "grad_scale")
    lab_in = [("labels", labels)] if kind == NK_LABELS_DENSE else []
    if dlogits is not None:
        dlogits = _c_out(dlogits, x.shape, dt, "dlogits", [("logits", x)] + lab_in, inplace_ok=x)
    if probs is not None:
        probs = _c_out(probs, x.shape, dt, "probs",
                       [("logits", x), ("dlogits", dlogits)] + lab_in, inplace_ok=x)
        # both may be `logits` itself (each alone is fine), but not the same memory
        if dlogits is not None and _may_share(probs, dlogits):
            raise ValueError("probs and dlogits must not overlap each other")
    cdef nk_xent_desc d
    d.n = n
    d.k = k
    d.logits_nk = _p(x)
    d.labels = _p(labels)
    d.label_kind = kind
    d.from_logits = 1 if from_logits else 0
    d.dlogits_nk = _p(dlogits) if dlogits is not None else NULL
    d.probs_nk = _p(probs) if probs is not None else NULL
    d.grad_scale = gs
    cdef int dbl = dt == _F64
    cdef int64_t bad = -1, correct = 0
    cdef double loss = 0.0
    if n == 0:
        return 0.0, 0
    if kind != NK_LABELS_DENSE:
        with nogil:
            bad = nk_labels_first_bad(n, d.labels, kind, k)
        if bad >= 0:
            raise ValueError(f"labels[{bad}] = {int(labels[bad])} is outside [0, {k}) "
                             f"(logits shape {x.shape})")
    with nogil:
        loss = nk_softmax_xent(&d, &correct, dbl)
    return float(loss), int(correct)


# ---------------------------------------------------------- optimizers --

cdef tuple _opt_arrays(object p, object g, list states):
    """Validate p (updated in place), g (read; copied if not contiguous) and
    the state buffers; returns (p, g, n, dbl)."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"p must be a numpy.ndarray, got {type(p).__name__}")
    dt = _float_dtype_of(p.dtype, "p")
    p = _state(p, "p", p.shape, dt)
    g = _same_as(g, "g", p.shape, dt)
    named = [("p", p), ("g", g)]
    for nm, a in states:
        named.append((nm, _state(a, nm, p.shape, dt)))
    _disjoint(named)
    return p, g, p.size, dt == _F64


def sgd_update(p, g, lr, momentum=0.0, nesterov=False, m=None):
    """Keras 3 SGD step, in place.  momentum == 0: p -= lr*g (m unused).
    Else (m required): m = momentum*m - lr*g; p += momentum*m - lr*g
    (nesterov) or p += m.

    p, g, m: float32/float64 arrays of the same shape and dtype; p and m
    C-contiguous (updated in place), g copied if it is not.  No two may
    overlap.  Computed in the arrays' dtype (hyper-parameters rounded to
    it); elementwise, so the same bits for any thread count.
    """
    cdef double lr_ = _real(lr, "lr"), mom = _real(momentum, "momentum")
    if mom != 0.0 and m is None:
        raise ValueError(f"sgd_update with momentum={mom} needs the momentum buffer m")
    p, g, n_, dbl_ = _opt_arrays(p, g, [("m", m)] if mom != 0.0 else [])
    cdef int64_t n = n_
    cdef int dbl = dbl_, nest = 1 if nesterov else 0
    cdef void *pp = _p(p)
    cdef void *pg = _p(g)
    cdef void *pm = _p(m) if mom != 0.0 else NULL
    with nogil:
        nk_sgd_update(n, pp, pg, pm, lr_, mom, nest, dbl)
    return p


def adam_update(p, g, m, v, lr, beta_1=0.9, beta_2=0.999, epsilon=1e-7, step=1):
    """Keras 3 Adam step, in place, for step t = `step` (>= 1, the 1-based
    count of this update):
      alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t)   (in double)
      m += (g - m) * (1 - beta_1);  v += (g*g - v) * (1 - beta_2)
      p -= (m * alpha) / (sqrt(v) + epsilon)
    Arrays as for sgd_update (m, v: state buffers, zeros initially).
    """
    cdef double lr_ = _real(lr, "lr"), b1 = _real(beta_1, "beta_1")
    cdef double b2 = _real(beta_2, "beta_2"), eps = _real(epsilon, "epsilon")
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int, got {step!r}")
    if step < 1 or step >= 2**63:
        raise ValueError(f"step must be in [1, 2**63) (the 1-based number of this update), "
                         f"got {step}")
    t = float(step)
    alpha_ = lr_ * np.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)
    p, g, n_, dbl_ = _opt_arrays(p, g, [("m", m), ("v", v)])
    cdef int64_t n = n_
    cdef int dbl = dbl_
    cdef double alpha = alpha_
    cdef void *pp = _p(p)
    cdef void *pg = _p(g)
    cdef void *pm = _p(m)
    cdef void *pv = _p(v)
    with nogil:
        nk_adam_update(n, pp, pg, pm, pv, alpha, b1, b2, eps, dbl)
    return p


def rmsprop_update(p, g, v, lr, rho=0.9, epsilon=1e-7, momentum=0.0, m=None,
                   centered=False, mg=None):
    """Keras 3 RMSprop step, in place:
      v = rho*v + (1-rho)*g*g
      centered: mg = rho*mg + (1-rho)*g; inc = lr*g / sqrt(v - mg*mg + epsilon)
      else:     inc = lr*g / sqrt(v + epsilon)
      momentum > 0: m = momentum*m + inc; p -= m.   Else p -= inc.
    v always, m when momentum > 0, mg when centered: state buffers (zeros
    initially).  Arrays as for sgd_update.
    """
    cdef double lr_ = _real(lr, "lr"), rho_ = _real(rho, "rho")
    cdef double eps = _real(epsilon, "epsilon"), mom = _real(momentum, "momentum")
    use_m = mom > 0.0
    if use_m and m is None:
        raise ValueError(f"rmsprop_update with momentum={mom} needs the momentum buffer m")
    if centered and mg is None:
        raise ValueError("rmsprop_update with centered=True needs the mean-gradient buffer mg")
    states = [("v", v)]
    if use_m:
        states.append(("m", m))
    if centered:
        states.append(("mg", mg))
    p, g, n_, dbl_ = _opt_arrays(p, g, states)
    cdef int64_t n = n_
    cdef int dbl = dbl_
    cdef void *pp = _p(p)
    cdef void *pg = _p(g)
    cdef void *pv = _p(v)
    cdef void *pm = _p(m) if use_m else NULL
    cdef void *pmg = _p(mg) if centered else NULL
    with nogil:
        nk_rmsprop_update(n, pp, pg, pv, pm, pmg, lr_, rho_, eps, mom, dbl)
    return p


def adadelta_update(p, g, acc_g, acc_d, lr, rho=0.95, epsilon=1e-7):
    """Keras 3 Adadelta step, in place:
      acc_g = rho*acc_g + (1-rho)*g*g
      delta = -(sqrt(acc_d + epsilon) * g) / sqrt(acc_g + epsilon)
      acc_d = rho*acc_d + (1-rho)*delta*delta
      p += lr*delta
    acc_g, acc_d: state buffers (zeros initially).  Arrays as for sgd_update.
    """
    cdef double lr_ = _real(lr, "lr"), rho_ = _real(rho, "rho"), eps = _real(epsilon, "epsilon")
    p, g, n_, dbl_ = _opt_arrays(p, g, [("acc_g", acc_g), ("acc_d", acc_d)])
    cdef int64_t n = n_
    cdef int dbl = dbl_
    cdef void *pp = _p(p)
    cdef void *pg = _p(g)
    cdef void *pa = _p(acc_g)
    cdef void *pd = _p(acc_d)
    with nogil:
        nk_adadelta_update(n, pp, pg, pa, pd, lr_, rho_, eps, dbl)
    return p


def sum_squares(x):
    """sum(x**2) over all elements as a Python float: accumulated in double
    over fixed blocks in a fixed order (the same bits for any thread count).
    For gradient clipping by norm."""
    x = _c_array(x, "x")
    cdef int64_t n = x.size
    cdef int dbl = x.dtype == _F64
    cdef void *px = _p(x)
    cdef double s = 0.0
    with nogil:
        s = nk_sum_squares(n, px, dbl)
    return float(s)


# ------------------------------------------------- batch normalisation --

cdef tuple _bn_x(object x, str name, bint bf16_ok=False):
    """x as C-contiguous float array with ndim >= 2 (or, with bf16_ok, a
    uint16 array of bfloat16 bit patterns); returns (x, M, C)."""
    if bf16_ok and isinstance(x, np.ndarray) and x.dtype == np.uint16:
        x = _aligned(x)
    else:
        x = _c_array(x, name)
    if x.ndim < 2:
        raise ValueError(f"{name} must have at least 2 dimensions ((N, C) or (N, H, W, C)), "
                         f"got shape {x.shape}")
    c = x.shape[x.ndim - 1]
    m = 1
    for s in x.shape[:x.ndim - 1]:
        m *= s
    return x, m, c


cdef object _bn_vec(object a, str name, Py_ssize_t c, object dt, bint optional):
    if a is None:
        if optional:
            return None
        raise ValueError(f"{name} is required")
    return _same_as(a, name, (c,), dt)


cdef object _bn_like(object a, str name, object ref, str refname, object dt=None):
    """An input of ref's shape and dtype (or dt) (activation-sized) as a
    C-contiguous, aligned array (copied if it is not one)."""
    a = _c_array(a, name)
    if dt is None:
        dt = ref.dtype
    if a.dtype != dt:
        raise TypeError(f"{name} has dtype {a.dtype}, expected {refname}'s {dt}")
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {refname}'s {ref.shape}")
    return a


cdef _bn_inplace_or_disjoint(object out, str oname, object a, str aname):
    """ValueError unless out and a are disjoint or exactly the same buffer
    (same address, shape, strides and dtype: elementwise in place)."""
    if out is None or a is None or not out.size or not a.size:
        return
    if _may_share(out, a) and not _same_buffer(out, a):
        raise ValueError(f"{oname} overlaps input {aname}; pass a separate buffer (or "
                         f"exactly the {aname} array itself, for in place)")


def batchnorm_forward(x, gamma, beta, *, training, moving_mean=None, moving_var=None,
                      momentum=0.99, epsilon=1e-3, out=None, save_mean=None,
                      save_invstd=None, residual=None, activation=None, save_scale=None):
    """Batch normalisation over every axis but the last (Keras
    BatchNormalization(axis=-1)), with an optional fused residual add and
    ReLU (a residual block's BN -> ReLU and BN -> Add(shortcut) -> ReLU in
    one write pass); returns out.

    x: (N, C), (N, H, W, C) or any (..., C) float32/float64, treated as
    (M, C) with M = prod(shape[:-1]) (copied if not C-contiguous); or
    uint16, bfloat16 bit patterns (to_bf16; a convolution's bf16 output,
    conv2d's out): float32 batch norm of x widened, bit for bit, reading
    half the bytes -- every other array is then float32 ("x's dtype" below
    means float32).
    gamma, beta: (C,) of x's dtype, or None for scale=False (gamma = 1) /
    center=False (beta = 0).  moving_mean, moving_var, save_mean,
    save_invstd: (C,) of x's dtype, C-contiguous.

    training=True (M >= 1): per-channel batch mean and biased variance
    (float64 x: summed in double; float32: float sums of runs of 8 rows,
    shifted by the mean of 64 sampled rows, added in double; both over
    fixed row blocks: the same bits for any thread count);  out = (x - mean) * (gamma * invstd) + beta with invstd =
    1 / sqrt(var + epsilon);  moving_mean = moving_mean*momentum +
    mean*(1 - momentum) and moving_var likewise with the biased variance
    (updated in place when given);  save_mean / save_invstd (when given)
    receive mean and invstd for batchnorm_backward, save_scale ((C,), when
    given) the scale applied, gamma * invstd rounded to x's dtype, with
    which batchnorm_backward recomputes the ReLU mask from x instead of
    reading out (forward without residual).
    training=False: out = (x - moving_mean) * (gamma / sqrt(moving_var +
    epsilon)) + beta (moving_mean, moving_var required; nothing updated).

    Fused epilogue (both modes): out = act(BN(x) + residual).
      residual: None, or an array of x's shape and dtype (copied if not
        C-contiguous), added after the affine transform.  The statistics are
        those of x only.
      activation: None / "linear" (identity) or "relu" (max(z, 0), NaN
        kept, as nnkernels.relu).
    Computed in x's dtype in the order BN, + residual, relu: the same bits
    as batchnorm_forward, then `out += residual`, then nnkernels.relu --
    in the one write pass of the kernel.  Pass `out` to batchnorm_backward
    as y (activation="relu").

    out: optional C-contiguous output of x's shape and dtype; may be x
    itself and/or residual itself (in place), but must not otherwise
    overlap them or any of the (C,) vectors.
    """
    x, m_, c_ = _bn_x(x, "x", True)
    cdef bint xbf = x.dtype == np.uint16
    dt = _F32 if xbf else x.dtype
    cdef int64_t m = m_, c = c_
    cdef bint train = bool(training)
    cdef double mom = _real(momentum, "momentum"), eps = _real(epsilon, "epsilon")
    cdef int act = _act_id(activation)
    gamma = _bn_vec(gamma, "gamma", c, dt, True)
    beta = _bn_vec(beta, "beta", c, dt, True)
    if residual is not None:
        residual = _bn_like(residual, "residual", x, "x", dt)
    if train:
        if m == 0 and c > 0:
            raise ValueError(f"batchnorm_forward(training=True) needs at least one row, "
                             f"got x shape {x.shape}")
        if moving_mean is not None:
            moving_mean = _state(moving_mean, "moving_mean", (c,), dt)
        if moving_var is not None:
            moving_var = _state(moving_var, "moving_var", (c,), dt)
        if save_mean is not None:
            save_mean = _state(save_mean, "save_mean", (c,), dt)
        if save_invstd is not None:
            save_invstd = _state(save_invstd, "save_invstd", (c,), dt)
        if save_scale is not None:
            save_scale = _state(save_scale, "save_scale", (c,), dt)
    else:
        moving_mean = _bn_vec(moving_mean, "moving_mean", c, dt, False)
        moving_var = _bn_vec(moving_var, "moving_var", c, dt, False)
        save_mean = save_invstd = save_scale = None
    ins = [("x", x), ("gamma", gamma), ("beta", beta), ("moving_mean", moving_mean),
           ("moving_var", moving_var)]
    outs = [("save_mean", save_mean), ("save_invstd", save_invstd), ("save_scale", save_scale)]
    out = _c_out(out, x.shape, dt, "out", [(nm, a) for nm, a in ins + outs if a is not None],
                 inplace_ok=None if xbf else x)
    # out may also be exactly the residual (elementwise: read before written)
    _bn_inplace_or_disjoint(out, "out", residual, "residual")
    # the (C,) vectors the kernel writes must not overlap anything else
    _writes_disjoint(outs + [("moving_mean", moving_mean), ("moving_var", moving_var)]
                     if train else [],
                     ins + outs + [("out", out), ("residual", residual)])
    cdef int dbl = NK_BN_F32_XBF16 if xbf else (NK_BN_F64 if dt == _F64 else NK_BN_F32)
    cdef void *px = _p(x)
    cdef void *pr = _p(residual) if residual is not None else NULL
    cdef void *py = _p(out)
    cdef void *pg = _p(gamma) if gamma is not None else NULL
    cdef void *pb = _p(beta) if beta is not None else NULL
    cdef void *pmm = _p(moving_mean) if moving_mean is not None else NULL
    cdef void *pmv = _p(moving_var) if moving_var is not None else NULL
    cdef void *psm = _p(save_mean) if save_mean is not None else NULL
    cdef void *psi = _p(save_invstd) if save_invstd is not None else NULL
    cdef void *pss = _p(save_scale) if save_scale is not None else NULL
    cdef int rc = 0
    with nogil:
        if train:
            rc = nk_batchnorm_fwd_train_fused(m, c, px, pr, pg, pb, py, act, eps, mom, pmm, pmv,
                                              psm, psi, pss, dbl)
        else:
            rc = nk_batchnorm_fwd_infer_fused(m, c, px, pr, pg, pb, pmm, pmv, eps, py, act, dbl)
    if rc != 0:
        raise MemoryError("batchnorm_forward: could not allocate its workspace")
    return out


def batchnorm_backward(dy, x, gamma, save_mean, save_invstd, *, y=None, activation=None,
                       dx=None, dgamma=None, dbeta=None, dresidual=None, save_scale=None,
                       beta=None):
    """Gradients of batchnorm_forward(training=True), including its fused
    residual/ReLU epilogue; returns (dx, dgamma, dbeta).

    dy, x: same shape (..., C) and dtype, treated as (M, C); or dy float32
    and x uint16, bfloat16 bit patterns (the forward's bf16 x: float32
    gradients of x widened, bit for bit).  gamma: (C,) or
    None (scale=False: gamma = 1; dgamma is still computed).  save_mean,
    save_invstd: (C,) as written by the forward.

    activation: None / "linear": dz = dy.  "relu": y (the forward's output,
    x's shape and dtype) gives dz = dy where y > 0, else 0 (as
    nnkernels.relu_backward), computed on the fly in both passes, never
    stored except into dresidual.  Without y, save_scale (the forward's
    save_scale output) and beta (its beta; None: 0) give the mask as
    (x - save_mean) * save_scale + beta > 0: the forward's pre-activation
    recomputed, bitwise the same mask as y > 0 when the forward had no
    residual, without reading y (not valid after a forward with a
    residual: pass y then).  y / save_scale / beta are not read without
    "relu" (y's shape and dtype are still checked when given).

    With xhat = (x - mean) * invstd:  dbeta = sum dz,  dgamma = sum dz*xhat,
    dx = gamma*invstd/M * (M*dz - dbeta - xhat*dgamma).  One reduction pass
    (as the forward's: double, or float runs of 8 rows added in double for
    float32; fixed row blocks: the same bits for any thread count) and one
    write pass; the results are bitwise those of relu_backward followed by
    the unfused batchnorm_backward.

    dx (x's shape; may be dy itself), dgamma, dbeta ((C,)): optional
    C-contiguous outputs of x's dtype.  dresidual: optional C-contiguous
    output of x's shape and dtype that receives dz (the gradient of the
    forward's residual input; a copy of dy without activation), written in
    the same write pass; it may be dy itself when dx is not, or y itself
    (with "relu": each element's mask is read before its dz is stored, and
    the reduction pass has read all of y before the write pass starts).
    """
    dy, m_, c_ = _bn_x(dy, "dy")
    x, _, _ = _bn_x(x, "x", True)
    if x.shape != dy.shape:
        raise ValueError(f"x has shape {x.shape}, expected dy's {dy.shape}")
    dt = dy.dtype
    cdef bint xbf = x.dtype == np.uint16
    if xbf and dt != _F32:
        raise TypeError(f"with a bfloat16 x (uint16) dy must be float32, got {dt}")
    if x.dtype != dt and not xbf:
        raise TypeError(f"dy ({dt}) and x ({x.dtype}) must have the same dtype")
    cdef int64_t m = m_, c = c_
    cdef int act = _act_id(activation)
    if act == NK_ACT_RELU and y is None:
        if save_scale is None:
            raise ValueError("batchnorm_backward(activation='relu') needs y, the forward's "
                             "output, or the forward's save_scale (and beta) for its ReLU mask")
        save_scale = _bn_vec(save_scale, "save_scale", c, dt, False)
        beta = _bn_vec(beta, "beta", c, dt, True)
    else:
        save_scale = beta = None
    if act == NK_ACT_RELU and y is not None:
        y = _bn_like(y, "y", dy, "dy")
    elif y is not None:
        # not read, but a wrong array here is a caller's bug
        ya = y if isinstance(y, np.ndarray) else np.asarray(y)
        if ya.dtype != dt:
            raise TypeError(f"y has dtype {ya.dtype}, expected dy's {dt}")
        if ya.shape != dy.shape:
            raise ValueError(f"y has shape {ya.shape}, expected dy's {dy.shape}")
        y = None
    gamma = _bn_vec(gamma, "gamma", c, dt, True)
    save_mean = _bn_vec(save_mean, "save_mean", c, dt, False)
    save_invstd = _bn_vec(save_invstd, "save_invstd", c, dt, False)
    ins = [("dy", dy), ("x", x), ("y", y), ("gamma", gamma), ("save_mean", save_mean),
           ("save_invstd", save_invstd), ("save_scale", save_scale), ("beta", beta)]
    ins = [(nm, a) for nm, a in ins if a is not None]
    dx = _c_out(dx, dy.shape, dt, "dx", ins, inplace_ok=dy)
    if dresidual is not None:
        dresidual = _c_out(dresidual, dy.shape, dt, "dresidual", ins, inplace_ok=dy,
                           inplace_ok2=y)
        if dx.size and _may_share(dx, dresidual):
            raise ValueError("dx and dresidual overlap; they must be separate buffers "
                             "(at most one of them may be dy itself)")
    outs = [("dx", dx)] + ([("dresidual", dresidual)] if dresidual is not None else [])
    dgamma = _c_out(dgamma, (c,), dt, "dgamma", ins + outs)
    dbeta = _c_out(dbeta, (c,), dt, "dbeta", ins + outs + [("dgamma", dgamma)])
    cdef int dbl = NK_BN_F32_XBF16 if xbf else (NK_BN_F64 if dt == _F64 else NK_BN_F32)
    cdef void *pdy = _p(dy)
    cdef void *px = _p(x)
    cdef void *py = _p(y) if y is not None else NULL
    cdef void *pg = _p(gamma) if gamma is not None else NULL
    cdef void *psm = _p(save_mean)
    cdef void *psi = _p(save_invstd)
    cdef void *pss = _p(save_scale) if save_scale is not None else NULL
    cdef void *pbe = _p(beta) if beta is not None else NULL
    cdef void *pdx = _p(dx)
    cdef void *pdr = _p(dresidual) if dresidual is not None else NULL
    cdef void *pdg = _p(dgamma)
    cdef void *pdb = _p(dbeta)
    cdef int rc = 0
    with nogil:
        rc = nk_batchnorm_bwd_fused(m, c, pdy, py, act, px, pg, psm, psi, pss, pbe, pdx, pdr,
                                    pdg, pdb, dbl)
    if rc != 0:
        raise MemoryError("batchnorm_backward: could not allocate its workspace")
    return dx, dgamma, dbeta

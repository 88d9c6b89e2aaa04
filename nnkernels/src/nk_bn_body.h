/* Batch-normalisation loop bodies: the reduction passes and the write passes
 * (with the fused residual-add / ReLU epilogues) of nk_batchnorm_* (nk_train.c).
 *
 * Included by nk_bn_inst.h once per (ISA, dtype), inside the ISA's target
 * region of nk_bn_kern.c, with these macros set:
 *   T     float or double        TI   unsigned integer of T's width
 *   S     s or d (names)         ISA  generic, avx2 or avx512 (names)
 *   BN_MASK_INT  1: the reduction's ReLU mask through an integer AND (float)
 * It defines static functions BN_FN(name) = name_S_ISA and the table
 * nk_bn_kern_S_ISA (nk_bn_kern.h).
 *
 * One plain-C body for every ISA, auto-vectorised across channels (the j
 * loops); only the vector width differs.  The results are bitwise the same
 * on every path: each element sees the same operations in the same order
 * (vectorising across channels does not reorder the per-channel sums, which
 * run over the rows of the block in row order), and nk_bn_kern.c compiles
 * these bodies with floating-point contraction off, so no path fuses a
 * multiply and an add into an FMA (AVX-512F has FMA instructions even
 * without the "fma" target flag).  Not covered: where two NaNs meet in one
 * operation, the one that propagates (its sign and payload) is the first
 * operand of the instruction the compiler emitted, and operand order of
 * commutative operations is the compiler's choice, per ISA and per build.
 *
 * Fused epilogues: a residual block's BN -> ReLU and BN -> Add(shortcut) ->
 * ReLU in the one write pass each way, and in the backward the ReLU mask
 * applied on the fly in the reduction pass too.  Each element is computed
 * with the operations, in T and in the order, of the unfused kernels
 * followed by the separate elementwise ones (z = bn + res, then relu: z <= 0
 * ? 0 : z, NaN kept; backward mask: y > 0 ? dy : 0, as nk_relu /
 * nk_relu_backward), so the results are bitwise those of the separate
 * passes.  In the write passes dy is loaded unconditionally before the
 * select so that the loops if-convert and vectorise.  No restrict on the
 * arrays that may alias (y/x/res, dx/dres/dy): each element is read before
 * it is written.
 *
 * y > 0 ? g : 0 (+0) in the reduction loops goes, in float, through an
 * integer mask: the plain select followed by the conversion to double keeps
 * GCC from vectorising the loop (-ftrapping-math); same bits.  In double
 * the select vectorises as it is.
 */
#define BN_CAT_(a, b, c) a##_##b##_##c
#define BN_CAT(a, b, c) BN_CAT_(a, b, c)
#define BN_FN(name) BN_CAT(name, S, ISA)

static inline T BN_FN(bn_mask)(T g, T y)
{
#if BN_MASK_INT
    TI b;
    memcpy(&b, &g, sizeof b);
    b &= -(TI)(y > (T)0);
    memcpy(&g, &b, sizeof g);
    return g;
#else
    return y > (T)0 ? g : (T)0;
#endif
}

/* s[c] += x - k, q[c] += (x - k)^2 over rows [r0, r1), in double */
static void BN_FN(bn_sums)(const T *restrict x, int64_t c, int64_t r0, int64_t r1,
                           const double *restrict k, double *restrict s, double *restrict q)
{
    for (int64_t j = 0; j < c; j++) s[j] = q[j] = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        const T *restrict xr = x + r * c;
        for (int64_t j = 0; j < c; j++) {
            const double d = (double)xr[j] - k[j];
            s[j] += d;
            q[j] += d * d;
        }
    }
}

#define BN_ROWS(BODY)                                                                    \
    for (int64_t r = r0; r < r1; r++) {                                                  \
        const int64_t o_ = r * c;                                                        \
        for (int64_t j = 0; j < c; j++) {                                                \
            BODY;                                                                        \
        }                                                                                \
    }

/* y = act((x - mu) * sc + sh + res) on rows [r0, r1); res may be NULL; y may
 * be x and/or res */
static void BN_FN(bn_apply_ep)(const T *x, const T *res, T *y, int64_t c, int64_t r0,
                               int64_t r1, const T *restrict mu, const T *restrict sc,
                               const T *restrict sh, int relu)
{
    if (res && relu) {
        BN_ROWS(const T v = (x[o_ + j] - mu[j]) * sc[j] + sh[j] + res[o_ + j];
                y[o_ + j] = v <= (T)0 ? (T)0 : v)
    } else if (res) {
        BN_ROWS(y[o_ + j] = (x[o_ + j] - mu[j]) * sc[j] + sh[j] + res[o_ + j])
    } else if (relu) {
        BN_ROWS(const T v = (x[o_ + j] - mu[j]) * sc[j] + sh[j];
                y[o_ + j] = v <= (T)0 ? (T)0 : v)
    } else {
        for (int64_t r = r0; r < r1; r++) {
            const T *xr = x + r * c;
            T *yr = y + r * c;
            for (int64_t j = 0; j < c; j++) yr[j] = (xr[j] - mu[j]) * sc[j] + sh[j];
        }
    }
}

/* sd[c] += dz, sx[c] += dz * (x - mu) over rows [r0, r1), in double; dz = dy,
 * or y > 0 ? dy : 0 when y (the forward output, for the ReLU mask) is given */
static void BN_FN(bn_bsums)(const T *restrict dy, const T *restrict y, const T *restrict x,
                            int64_t c, int64_t r0, int64_t r1, const double *restrict mu,
                            double *restrict sd, double *restrict sx)
{
    for (int64_t j = 0; j < c; j++) sd[j] = sx[j] = 0.0;
    if (y) {
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict dr = dy + r * c, *restrict yr = y + r * c;
            const T *restrict xr = x + r * c;
            for (int64_t j = 0; j < c; j++) {
                const double g = (double)BN_FN(bn_mask)(dr[j], yr[j]);
                sd[j] += g;
                sx[j] += g * ((double)xr[j] - mu[j]);
            }
        }
    } else {
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict dr = dy + r * c, *restrict xr = x + r * c;
            for (int64_t j = 0; j < c; j++) {
                const double g = (double)dr[j];
                sd[j] += g;
                sx[j] += g * ((double)xr[j] - mu[j]);
            }
        }
    }
}

/* dx = a*(dz - e) + b*(x - mu) on rows [r0, r1), dz = (y ? (y > 0 ? dy : 0) :
 * dy), and dres = dz when dres != NULL; dx and dres may each be dy */
static void BN_FN(bn_dx_ep)(const T *dy, const T *y, const T *x, T *dx, T *dres, int64_t c,
                            int64_t r0, int64_t r1, const T *restrict mu, const T *restrict a,
                            const T *restrict b, const T *restrict e)
{
    if (y && dres) {
        BN_ROWS(const T gt = dy[o_ + j]; const T xv = x[o_ + j];
                const T g = y[o_ + j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]);
                dres[o_ + j] = g)
    } else if (y) {
        BN_ROWS(const T gt = dy[o_ + j]; const T xv = x[o_ + j];
                const T g = y[o_ + j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]))
    } else if (dres) {
        BN_ROWS(const T g = dy[o_ + j]; const T xv = x[o_ + j];
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]);
                dres[o_ + j] = g)
    } else {
        for (int64_t r = r0; r < r1; r++) {
            const T *dr = dy + r * c, *restrict xr = x + r * c;
            T *o = dx + r * c;
            for (int64_t j = 0; j < c; j++) o[j] = a[j] * (dr[j] - e[j]) + b[j] * (xr[j] - mu[j]);
        }
    }
}

const BN_CAT(nk_bn, kern, S) BN_CAT(nk_bn_kern, S, ISA) = {
    BN_FN(bn_sums),
    BN_FN(bn_apply_ep),
    BN_FN(bn_bsums),
    BN_FN(bn_dx_ep),
};

#undef BN_ROWS
#undef BN_FN
#undef BN_CAT
#undef BN_CAT_

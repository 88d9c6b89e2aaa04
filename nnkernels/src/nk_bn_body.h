/* Batch-normalisation loop bodies: the reduction passes and the write passes
 * (with the fused residual-add / ReLU epilogues) of nk_batchnorm_* (nk_train.c).
 *
 * Included by nk_bn_inst.h once per (ISA, dtype), inside the ISA's target
 * region of nk_bn_kern.c, with these macros set:
 *   T     float or double        TI   unsigned integer of T's width
 *   S     s or d (names)         ISA  generic, avx2 or avx512 (names)
 *   BN_MASK_INT  1: the reduction's ReLU mask through an integer AND (float)
 *   BN_GL        lanes of the reductions' double vectors: 8 on AVX-512
 *                (half the instructions of 4: the ReLU mask recomputed from
 *                x 8-18 % faster), else 4
 *   BN_VEC       1: the vector-extension loops (AVX2, AVX-512); 0: only
 *                the plain ones, and no vector code compiled (the generic
 *                path: 32-byte vectors split in two without AVX ran twice
 *                as slow as the plain loops)
 *   BN_SUBSUM    1 (T float): the reductions of nk_bn_sums_f.h (float runs of
 *                rows added in double); 0: the ones here (all in double)
 *   BN_XBF16     (optional, T float) x -- the normalised input, which the
 *                reductions and the write passes read -- is stored as
 *                bfloat16 (uint16_t bit patterns, XT); each x is widened
 *                to float32 exactly as it is loaded, so every result is
 *                bitwise that of the float32 kernels on x widened.  The
 *                other arrays (residual, y, dy, dx, dres) stay T.
 * It defines static functions BN_FN(name) = name_S_ISA and the table
 * nk_bn_kern_S_ISA (nk_bn_kern.h).
 *
 * One C body for every ISA: on the AVX paths the loops over whole vectors
 * of channels are written with GCC / Clang vector extensions (below), the
 * rest (and the generic path) are plain loops auto-vectorised across
 * channels (the j loops).  The results are bitwise the same
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
 * applied on the fly in the reduction pass too, read from the forward's
 * output y or, without residual, recomputed from x (one array fewer to read
 * in both passes).  Each element is computed
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

/* x's element type and its scalar load (as T) */
#ifdef BN_XBF16
#define XT uint16_t
static inline T BN_FN(bn_xs)(const XT *p) { return nk_bf16_widen(*p); }
#else
#define XT T
static inline T BN_FN(bn_xs)(const XT *p) { return *p; }
#endif

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

#if BN_VEC
/* The reductions keep the double sums of a block of channels in registers
 * across the rows (GCC / Clang vector extensions: ng groups of BN_GL lanes,
 * T converted to double; blocks of 32 channels where c is a multiple of 32,
 * else of 16); per-channel sums kept in memory chain each row's addition
 * through a store and a reload, which made these passes latency bound at
 * about half the memory bandwidth.  The channels past the last whole block
 * go through the plain loops.  Each channel still adds its rows in row
 * order, with the same operations: the same bits. */
#define BN_NGMAX (32 / BN_GL)
#define BN_INL static inline __attribute__((always_inline))
#define BN_VGD BN_CAT(bn_vgd, S, ISA)
#define BN_VGT BN_CAT(bn_vgt, S, ISA)
#define BN_VGI BN_CAT(bn_vgi, S, ISA)
#define BN_VV BN_CAT(bn_vv, S, ISA)
#define BN_VVI BN_CAT(bn_vvi, S, ISA)
#define BN_VL ((int)(32 / sizeof(T))) /* lanes of BN_VV */
typedef double BN_VGD __attribute__((vector_size(8 * BN_GL)));
typedef T BN_VGT __attribute__((vector_size(BN_GL * sizeof(T))));
typedef TI BN_VGI __attribute__((vector_size(BN_GL * sizeof(T))));
typedef T BN_VV __attribute__((vector_size(32)));
typedef TI BN_VVI __attribute__((vector_size(32)));

static inline BN_VV BN_FN(bn_ldv)(const T *p)
{
    BN_VV v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline void BN_FN(bn_stv)(T *p, BN_VV v) { memcpy(p, &v, sizeof v); }

static inline BN_VGD BN_FN(bn_ldgd)(const double *p)
{
    BN_VGD v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* The reductions work on groups of BN_GL values, T converted to double;
 * each group is loaded as such and converted lane by lane, which GCC 12
 * compiles to one VCVTPS2PD (__builtin_convertvector: two half-width
 * conversions and an insert; a 32-byte vector of T loaded whole and taken
 * apart into groups went through general registers) */
static inline BN_VGT BN_FN(bn_ldtg)(const T *p)
{
    BN_VGT t;
    memcpy(&t, p, sizeof t);
    return t;
}

static inline BN_VGD BN_FN(bn_cvtg)(BN_VGT t)
{
#if BN_GL == 8
    return (BN_VGD){(double)t[0], (double)t[1], (double)t[2], (double)t[3],
                    (double)t[4], (double)t[5], (double)t[6], (double)t[7]};
#else
    return (BN_VGD){(double)t[0], (double)t[1], (double)t[2], (double)t[3]};
#endif
}

static inline BN_VGD BN_FN(bn_ldg)(const T *p) { return BN_FN(bn_cvtg)(BN_FN(bn_ldtg)(p)); }

/* x's loads: a group of BN_GL (bn_ldxg), a 32-byte vector (bn_ldxv), as T;
 * bfloat16 widened by a zero extension and a shift (exact) */
#ifdef BN_XBF16
#define BN_VXG BN_CAT(bn_vxg, S, ISA)
#define BN_VXV BN_CAT(bn_vxv, S, ISA)
typedef uint16_t BN_VXG __attribute__((vector_size(2 * BN_GL)));
typedef uint16_t BN_VXV __attribute__((vector_size(2 * BN_VL)));
static inline BN_VGT BN_FN(bn_ldxg)(const XT *p)
{
    BN_VXG h;
    memcpy(&h, p, sizeof h);
    return (BN_VGT)(__builtin_convertvector(h, BN_VGI) << 16);
}
static inline BN_VV BN_FN(bn_ldxv)(const XT *p)
{
    BN_VXV h;
    memcpy(&h, p, sizeof h);
    return (BN_VV)(__builtin_convertvector(h, BN_VVI) << 16);
}
#undef BN_VXG
#undef BN_VXV
#else
static inline BN_VGT BN_FN(bn_ldxg)(const XT *p) { return BN_FN(bn_ldtg)(p); }
static inline BN_VV BN_FN(bn_ldxv)(const XT *p) { return BN_FN(bn_ldv)(p); }
#endif

/* g where v > 0, else +0, on BN_GL lanes */
static inline BN_VGT BN_FN(bn_vposg)(BN_VGT g, BN_VGT v)
{
    const BN_VGT z = {0};
    return (BN_VGT)((BN_VGI)g & (BN_VGI)(v > z));
}

/* g where v > 0, else +0 (bn_mask on a vector) */
static inline BN_VV BN_FN(bn_vpos)(BN_VV g, BN_VV v)
{
    const BN_VV z = {0};
    return (BN_VV)((BN_VVI)g & (BN_VVI)(v > z));
}

/* v <= 0 ? +0 : v (NaN kept) */
static inline BN_VV BN_FN(bn_vrelu)(BN_VV v)
{
    const BN_VV z = {0};
    return (BN_VV)((BN_VVI)v & ~(BN_VVI)(v <= z));
}

/* A reductions' channel block from j0, ng groups of BN_GL: its start (v[g]
 * = group g of the per-channel doubles src; the two sums a and b zero) and
 * its end (a and b stored into s and q) */
BN_INL void BN_FN(bn_blk_begin)(const double *restrict src, int64_t j0, const int ng,
                                BN_VGD *v, BN_VGD *a, BN_VGD *b)
{
    for (int g = 0; g < ng; g++) {
        v[g] = BN_FN(bn_ldgd)(src + j0 + BN_GL * g);
        a[g] = b[g] = (BN_VGD){0};
    }
}

BN_INL void BN_FN(bn_blk_end)(double *restrict s, double *restrict q, int64_t j0, const int ng,
                              const BN_VGD *a, const BN_VGD *b)
{
    for (int g = 0; g < ng; g++) {
        memcpy(s + j0 + BN_GL * g, &a[g], sizeof a[g]);
        memcpy(q + j0 + BN_GL * g, &b[g], sizeof b[g]);
    }
}

#if !BN_SUBSUM
/* the channel blocks of bn_sums, ng groups of BN_GL each; returns the first
 * channel not done */
BN_INL int64_t BN_FN(bn_sums_blk)(const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                                  const double *restrict k, double *restrict s,
                                  double *restrict q, const int ng)
{
    int64_t j0 = 0;
    for (; j0 + BN_GL * ng <= c; j0 += BN_GL * ng) {
        BN_VGD kv[BN_NGMAX], as[BN_NGMAX], aq[BN_NGMAX];
        BN_FN(bn_blk_begin)(k, j0, ng, kv, as, aq);
        for (int64_t r = r0; r < r1; r++) {
            const XT *restrict xr = x + r * c + j0;
            for (int g = 0; g < ng; g++) {
                const BN_VGD d = BN_FN(bn_cvtg)(BN_FN(bn_ldxg)(xr + BN_GL * g)) - kv[g];
                as[g] += d;
                aq[g] += d * d;
            }
        }
        BN_FN(bn_blk_end)(s, q, j0, ng, as, aq);
    }
    return j0;
}

#endif /* !BN_SUBSUM */
#endif /* BN_VEC */

#if BN_SUBSUM
#include "nk_bn_sums_f.h"
#else
/* s[c] = sum (x - k), q[c] = sum (x - k)^2 over rows [r0, r1), in double */
static void BN_FN(bn_sums)(const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                           const double *restrict k, double *restrict s, double *restrict q)
{
#if BN_VEC
    const int64_t j0 = c % 32 == 0 ? BN_FN(bn_sums_blk)(x, c, r0, r1, k, s, q, 32 / BN_GL)
                                   : BN_FN(bn_sums_blk)(x, c, r0, r1, k, s, q, 16 / BN_GL);
#else
    const int64_t j0 = 0;
#endif
    if (j0 == c) return;
    for (int64_t j = j0; j < c; j++) s[j] = q[j] = 0.0;
    for (int64_t r = r0; r < r1; r++) {
        const XT *restrict xr = x + r * c;
        for (int64_t j = j0; j < c; j++) {
            const double d = (double)BN_FN(bn_xs)(xr + j) - k[j];
            s[j] += d;
            q[j] += d * d;
        }
    }
}

#endif /* BN_SUBSUM */

/* The write passes run each row's channels as 32-byte vectors up to the
 * last whole one (j0), then the rest element by element (BN_ROWS from j0):
 * the auto-vectorised row loop of c = 16 or 32 elements paid a loop set-up
 * and an aliasing check per row.  Same operations per element, in the same
 * order: the same bits.  Loads and stores go through memcpy in program
 * order, so y / dx / dres may alias their inputs as documented. */
#if BN_VEC
/* rows [r0, r1), channels [0, j0) with j0 = c rounded down to whole vectors:
 * BODY sees i_ (the element index of vector k) and jk (its channel) */
#define BN_VROWS(BODY)                                                                   \
    for (int64_t r = r0; r < r1; r++) {                                                  \
        const int64_t o_ = r * c;                                                        \
        for (int64_t jk = 0; jk < j0; jk += BN_VL) {                                     \
            const int64_t i_ = o_ + jk;                                                  \
            BODY;                                                                        \
        }                                                                                \
    }
#define BN_P(p) BN_FN(bn_ldv)((p) + jk)

#endif

#define BN_ROWS(BODY)                                                                    \
    for (int64_t r = r0; r < r1; r++) {                                                  \
        const int64_t o_ = r * c;                                                        \
        for (int64_t j = j0; j < c; j++) {                                               \
            BODY;                                                                        \
        }                                                                                \
    }

/* y = act((x - mu) * sc + sh + res) on rows [r0, r1); res may be NULL; y may
 * be x and/or res */
static void BN_FN(bn_apply_ep)(const XT *x, const T *res, T *y, int64_t c, int64_t r0,
                               int64_t r1, const T *restrict mu, const T *restrict sc,
                               const T *restrict sh, int relu)
{
#if BN_VEC
    const int64_t j0 = c - c % BN_VL;
#define BN_AFF ((BN_FN(bn_ldxv)(x + i_) - BN_P(mu)) * BN_P(sc) + BN_P(sh))
    if (res && relu) {
        BN_VROWS(BN_FN(bn_stv)(y + i_, BN_FN(bn_vrelu)(BN_AFF + BN_FN(bn_ldv)(res + i_))))
    } else if (res) {
        BN_VROWS(BN_FN(bn_stv)(y + i_, BN_AFF + BN_FN(bn_ldv)(res + i_)))
    } else if (relu) {
        BN_VROWS(BN_FN(bn_stv)(y + i_, BN_FN(bn_vrelu)(BN_AFF)))
    } else {
        BN_VROWS(BN_FN(bn_stv)(y + i_, BN_AFF))
    }
#undef BN_AFF
    if (j0 == c) return;
#else
    const int64_t j0 = 0;
#endif
    if (res && relu) {
        BN_ROWS(const T v = (BN_FN(bn_xs)(x + o_ + j) - mu[j]) * sc[j] + sh[j] + res[o_ + j];
                y[o_ + j] = v <= (T)0 ? (T)0 : v)
    } else if (res) {
        BN_ROWS(y[o_ + j] = (BN_FN(bn_xs)(x + o_ + j) - mu[j]) * sc[j] + sh[j] + res[o_ + j])
    } else if (relu) {
        BN_ROWS(const T v = (BN_FN(bn_xs)(x + o_ + j) - mu[j]) * sc[j] + sh[j];
                y[o_ + j] = v <= (T)0 ? (T)0 : v)
    } else {
        BN_ROWS(y[o_ + j] = (BN_FN(bn_xs)(x + o_ + j) - mu[j]) * sc[j] + sh[j])
    }
}

#if !BN_SUBSUM
#if BN_VEC
/* the channel blocks of bn_bsums, ng groups of BN_GL each; returns the first
 * channel not done */
BN_INL int64_t BN_FN(bn_bsums_blk)(const T *restrict dy, const T *restrict y,
                                   const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                                   const double *restrict mu, const T *restrict mmu,
                                   const T *restrict msc, const T *restrict msh,
                                   double *restrict sd, double *restrict sx, const int ng)
{
    int64_t j0 = 0;
    for (; j0 + BN_GL * ng <= c; j0 += BN_GL * ng) {
        BN_VGD mv[BN_NGMAX], ad[BN_NGMAX], ax[BN_NGMAX];
        BN_FN(bn_blk_begin)(mu, j0, ng, mv, ad, ax);
#define BN_BSUM_ROWS(DZ)                                                                 \
    for (int64_t r = r0; r < r1; r++) {                                                  \
        const int64_t o_ = r * c + j0;                                                   \
        for (int g = 0; g < ng; g++) {                                                   \
            const int64_t i_ = o_ + BN_GL * g;                                           \
            const BN_VGD dz = BN_FN(bn_cvtg)(DZ);                                        \
            ad[g] += dz;                                                                 \
            ax[g] += dz * (BN_FN(bn_cvtg)(BN_FN(bn_ldxg)(x + i_)) - mv[g]);                               \
        }                                                                                \
    }
        if (y) {
            BN_BSUM_ROWS(BN_FN(bn_vposg)(BN_FN(bn_ldtg)(dy + i_), BN_FN(bn_ldtg)(y + i_)))
        } else if (msc) {
            BN_VGT pm[BN_NGMAX], ps[BN_NGMAX], ph[BN_NGMAX];
            for (int g = 0; g < ng; g++) {
                pm[g] = BN_FN(bn_ldtg)(mmu + j0 + BN_GL * g);
                ps[g] = BN_FN(bn_ldtg)(msc + j0 + BN_GL * g);
                ph[g] = BN_FN(bn_ldtg)(msh + j0 + BN_GL * g);
            }
            BN_BSUM_ROWS(BN_FN(bn_vposg)(BN_FN(bn_ldtg)(dy + i_),
                                         (BN_FN(bn_ldxg)(x + i_) - pm[g]) * ps[g] + ph[g]))
        } else {
            BN_BSUM_ROWS(BN_FN(bn_ldtg)(dy + i_))
        }
#undef BN_BSUM_ROWS
        BN_FN(bn_blk_end)(sd, sx, j0, ng, ad, ax);
    }
    return j0;
}
#endif

/* sd[c] = sum dz, sx[c] = sum dz * (x - mu) over rows [r0, r1), in double;
 * dz = dy, or, for the ReLU mask, y > 0 ? dy : 0 when y (the forward output)
 * is given, else v > 0 ? dy : 0 when msc is given, with v = (x - mmu) * msc
 * + msh the forward's pre-activation recomputed in T as bn_apply_ep computes
 * it (a forward without residual: then v > 0 exactly where y > 0, NaN
 * included) */
static void BN_FN(bn_bsums)(const T *restrict dy, const T *restrict y, const XT *restrict x,
                            int64_t c, int64_t r0, int64_t r1, const double *restrict mu,
                            const T *restrict mmu, const T *restrict msc,
                            const T *restrict msh, double *restrict sd, double *restrict sx)
{
#if BN_VEC
    const int64_t j0 =
        c % 32 == 0
            ? BN_FN(bn_bsums_blk)(dy, y, x, c, r0, r1, mu, mmu, msc, msh, sd, sx, 32 / BN_GL)
            : BN_FN(bn_bsums_blk)(dy, y, x, c, r0, r1, mu, mmu, msc, msh, sd, sx, 16 / BN_GL);
#else
    const int64_t j0 = 0;
#endif
    if (j0 == c) return;
    for (int64_t j = j0; j < c; j++) sd[j] = sx[j] = 0.0;
    if (y) {
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict dr = dy + r * c, *restrict yr = y + r * c;
            const XT *restrict xr = x + r * c;
            for (int64_t j = j0; j < c; j++) {
                const double g = (double)BN_FN(bn_mask)(dr[j], yr[j]);
                sd[j] += g;
                sx[j] += g * ((double)BN_FN(bn_xs)(xr + j) - mu[j]);
            }
        }
    } else if (msc) {
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict dr = dy + r * c;
            const XT *restrict xr = x + r * c;
            for (int64_t j = j0; j < c; j++) {
                const T v = (BN_FN(bn_xs)(xr + j) - mmu[j]) * msc[j] + msh[j];
                const double g = (double)BN_FN(bn_mask)(dr[j], v);
                sd[j] += g;
                sx[j] += g * ((double)BN_FN(bn_xs)(xr + j) - mu[j]);
            }
        }
    } else {
        for (int64_t r = r0; r < r1; r++) {
            const T *restrict dr = dy + r * c;
            const XT *restrict xr = x + r * c;
            for (int64_t j = j0; j < c; j++) {
                const double g = (double)dr[j];
                sd[j] += g;
                sx[j] += g * ((double)BN_FN(bn_xs)(xr + j) - mu[j]);
            }
        }
    }
}

#endif /* !BN_SUBSUM */

/* dx = a*(dz - e) + b*(x - mu) on rows [r0, r1), dz as in bn_bsums (mask from
 * y, else from x with msc / msh when msc is given, else none), and dres = dz
 * when dres != NULL; dx and dres may each be dy */
static void BN_FN(bn_dx_ep)(const T *dy, const T *y, const XT *x, T *dx, T *dres, int64_t c,
                            int64_t r0, int64_t r1, const T *restrict mu, const T *restrict a,
                            const T *restrict b, const T *restrict e, const T *restrict msc,
                            const T *restrict msh)
{
#if BN_VEC
    const int64_t j0 = c - c % BN_VL;
    /* dz of the vector from its mask, then dx (and dres) */
#define BN_DX(DZ, D)                                                                     \
    const BN_VV d_ = (D);                                                                \
    const BN_VV g_ = (DZ);                                                               \
    BN_FN(bn_stv)(dx + i_, BN_P(a) * (g_ - BN_P(e)) + BN_P(b) * d_)
#define BN_DXR(DZ, D)                                                                    \
    BN_DX(DZ, D);                                                                        \
    BN_FN(bn_stv)(dres + i_, g_)
#define BN_YZ BN_FN(bn_vpos)(BN_FN(bn_ldv)(dy + i_), BN_FN(bn_ldv)(y + i_))
#define BN_XD (BN_FN(bn_ldxv)(x + i_) - BN_P(mu))
#define BN_XZ BN_FN(bn_vpos)(BN_FN(bn_ldv)(dy + i_), d_ * BN_P(msc) + BN_P(msh))
    if (y && dres) {
        BN_VROWS(BN_DXR(BN_YZ, BN_XD))
    } else if (y) {
        BN_VROWS(BN_DX(BN_YZ, BN_XD))
    } else if (msc && dres) {
        BN_VROWS(BN_DXR(BN_XZ, BN_XD))
    } else if (msc) {
        BN_VROWS(BN_DX(BN_XZ, BN_XD))
    } else if (dres) {
        BN_VROWS(BN_DXR(BN_FN(bn_ldv)(dy + i_), BN_XD))
    } else {
        BN_VROWS(BN_DX(BN_FN(bn_ldv)(dy + i_), BN_XD))
    }
#undef BN_DX
#undef BN_DXR
#undef BN_YZ
#undef BN_XD
#undef BN_XZ
    if (j0 == c) return;
#else
    const int64_t j0 = 0;
#endif
    if (y && dres) {
        BN_ROWS(const T gt = dy[o_ + j]; const T xv = BN_FN(bn_xs)(x + o_ + j);
                const T g = y[o_ + j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]);
                dres[o_ + j] = g)
    } else if (y) {
        BN_ROWS(const T gt = dy[o_ + j]; const T xv = BN_FN(bn_xs)(x + o_ + j);
                const T g = y[o_ + j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]))
    } else if (msc && dres) {
        BN_ROWS(const T gt = dy[o_ + j]; const T d = BN_FN(bn_xs)(x + o_ + j) - mu[j];
                const T g = d * msc[j] + msh[j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * d;
                dres[o_ + j] = g)
    } else if (msc) {
        BN_ROWS(const T gt = dy[o_ + j]; const T d = BN_FN(bn_xs)(x + o_ + j) - mu[j];
                const T g = d * msc[j] + msh[j] > (T)0 ? gt : (T)0;
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * d)
    } else if (dres) {
        BN_ROWS(const T g = dy[o_ + j]; const T xv = BN_FN(bn_xs)(x + o_ + j);
                dx[o_ + j] = a[j] * (g - e[j]) + b[j] * (xv - mu[j]);
                dres[o_ + j] = g)
    } else {
        BN_ROWS(dx[o_ + j] = a[j] * (dy[o_ + j] - e[j]) + b[j] * (BN_FN(bn_xs)(x + o_ + j) - mu[j]))
    }
}

const BN_CAT(nk_bn, kern, S) BN_CAT(nk_bn_kern, S, ISA) = {
    BN_FN(bn_sums),
    BN_FN(bn_apply_ep),
    BN_FN(bn_bsums),
    BN_FN(bn_dx_ep),
};

#undef BN_ROWS
#undef BN_VROWS
#undef BN_P
#undef BN_VV
#undef BN_VVI
#undef BN_VL
#undef BN_NGMAX
#undef BN_INL
#undef BN_VGD
#undef BN_VGT
#undef BN_VGI
#undef BN_FN
#undef BN_CAT
#undef BN_CAT_
#undef XT

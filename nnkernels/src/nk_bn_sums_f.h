/* The float32 batch-norm reductions (bn_sums, bn_bsums), included by
 * nk_bn_body.h for T float (BN_SUBSUM; the float64 ones stay in the body).
 *
 * Each channel's sums run in float over runs of BN_R rows; each run's sum
 * is then added, in double, to the channel's double sum for the row block.
 * Per element that is one float subtract, add, multiply and add -- a
 * vector of 2 * BN_GL floats at a time -- where summing every element in
 * double took two conversions and twice the vectors: the passes were
 * bound by that arithmetic, not by memory (about 1.4 cycles per element
 * with 16 channels, cache-warm).  A run's error is at most BN_R float
 * roundings of its terms (the differences from the shift / the mean are
 * formed in float too), far below what batch statistics need; the runs'
 * sums add in double as before.
 *
 * Bits: every element sees the same float operations in the same order on
 * every path (vector blocks of channels, plain loops for the channels past
 * them and on the generic path), and the runs are fixed by the row block,
 * so the results are the same for any ISA path and thread count.
 *
 * Uses, from the body: T, TI, XT, BN_FN, BN_CAT, bn_xs, bn_mask and, with
 * BN_VEC, BN_GL, BN_VGD, BN_VGT, bn_cvtg, BN_INL. */
#define BN_R 8          /* rows per float run */
#define BN_TC 64        /* channels per chunk of the plain loops */

#if BN_VEC
#define BN_FL (2 * BN_GL)       /* floats per accumulator vector */
#define BN_NFMAX (32 / BN_FL)   /* accumulator vectors per channel block, at most */
#define BN_VF BN_CAT(bn_vf, S, ISA)
#define BN_VFI BN_CAT(bn_vfi, S, ISA)
typedef T BN_VF __attribute__((vector_size(BN_FL * sizeof(T))));
typedef TI BN_VFI __attribute__((vector_size(BN_FL * sizeof(T))));

static inline BN_VF BN_FN(bn_ldf)(const T *p)
{
    BN_VF v;
    memcpy(&v, p, sizeof v);
    return v;
}

#ifdef BN_XBF16
#define BN_VXF BN_CAT(bn_vxf, S, ISA)
typedef uint16_t BN_VXF __attribute__((vector_size(2 * BN_FL)));
static inline BN_VF BN_FN(bn_ldxf)(const XT *p)
{
    BN_VXF h;
    memcpy(&h, p, sizeof h);
    return (BN_VF)(__builtin_convertvector(h, BN_VFI) << 16);
}
#undef BN_VXF
#else
static inline BN_VF BN_FN(bn_ldxf)(const XT *p) { return BN_FN(bn_ldf)(p); }
#endif

/* the per-channel vector p[0 .. BN_FL) of doubles (exactly floats) as floats */
static inline BN_VF BN_FN(bn_dtof)(const double *p)
{
    BN_VF v;
    for (int l = 0; l < BN_FL; l++) v[l] = (T)p[l];
    return v;
}

/* acc[0], acc[1] += the low and high halves of f, in double */
BN_INL void BN_FN(bn_flush)(BN_VGD *acc, BN_VF f)
{
    /* halves by shuffles: a memcpy out of f kept the accumulators on the stack */
#if BN_GL == 8
    const BN_VGT lo = __builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7);
    const BN_VGT hi = __builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    const BN_VGT lo = __builtin_shufflevector(f, f, 0, 1, 2, 3);
    const BN_VGT hi = __builtin_shufflevector(f, f, 4, 5, 6, 7);
#endif
    acc[0] += BN_FN(bn_cvtg)(lo);
    acc[1] += BN_FN(bn_cvtg)(hi);
}

/* nr runs of bn_sums' channel block j0 (ng vectors of BN_FL) at once: run
 * h the len rows from rb + h * BN_R (nr = 2: both whole); each run's sums
 * then added to as / aq in run order, as one run at a time.  Two runs at
 * once only for a block of one vector (16 channels on AVX-512), whose float
 * additions had one chain each; with two vectors and more the interleaved
 * rows made the passes slower in the model (ResNet-20 float32, 1 thread:
 * 16 x 16 x 32 backward 6.8-7.5 against 4.9-5.2 ms a step, cache-cold),
 * though not in a warm loop */
BN_INL void BN_FN(bn_sums_runs)(const XT *restrict x, int64_t c, int64_t j0, int64_t rb,
                                int64_t len, const int nr, const int ng, const BN_VF *kf,
                                BN_VGD *as, BN_VGD *aq)
{
    BN_VF fs[2][BN_NFMAX], fq[2][BN_NFMAX];
    for (int h = 0; h < nr; h++)
        for (int g = 0; g < ng; g++) fs[h][g] = fq[h][g] = (BN_VF){0};
    for (int64_t i = 0; i < len; i++)
        for (int h = 0; h < nr; h++) {
            const XT *restrict xr = x + (rb + h * BN_R + i) * c + j0;
            for (int g = 0; g < ng; g++) {
                const BN_VF d = BN_FN(bn_ldxf)(xr + BN_FL * g) - kf[g];
                fs[h][g] += d;
                fq[h][g] += d * d;
            }
        }
    for (int h = 0; h < nr; h++)
        for (int g = 0; g < ng; g++) {
            BN_FN(bn_flush)(as + 2 * g, fs[h][g]);
            BN_FN(bn_flush)(aq + 2 * g, fq[h][g]);
        }
}

/* the channel blocks of bn_sums, ng vectors of BN_FL each; returns the
 * first channel not done */
BN_INL int64_t BN_FN(bn_sums_blk)(const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                                  const double *restrict k, double *restrict s,
                                  double *restrict q, const int ng)
{
    int64_t j0 = 0;
    for (; j0 + BN_FL * ng <= c; j0 += BN_FL * ng) {
        BN_VF kf[BN_NFMAX];
        BN_VGD as[2 * BN_NFMAX], aq[2 * BN_NFMAX];
        for (int g = 0; g < ng; g++) {
            kf[g] = BN_FN(bn_dtof)(k + j0 + BN_FL * g);
            as[2 * g] = as[2 * g + 1] = aq[2 * g] = aq[2 * g + 1] = (BN_VGD){0};
        }
        int64_t rb = r0;
        for (; ng == 1 && rb + 2 * BN_R <= r1; rb += 2 * BN_R)
            BN_FN(bn_sums_runs)(x, c, j0, rb, BN_R, 2, ng, kf, as, aq);
        for (; rb < r1; rb += BN_R)
            BN_FN(bn_sums_runs)(x, c, j0, rb, r1 - rb < BN_R ? r1 - rb : BN_R, 1, ng, kf, as, aq);
        memcpy(s + j0, as, (size_t)ng * 2 * sizeof as[0]);
        memcpy(q + j0, aq, (size_t)ng * 2 * sizeof aq[0]);
    }
    return j0;
}
#endif /* BN_VEC */

/* s[c] = sum (x - k), q[c] = sum (x - k)^2 over rows [r0, r1): float runs
 * of BN_R rows, added in double (k: per-channel doubles that are floats) */
static void BN_FN(bn_sums)(const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                           const double *restrict k, double *restrict s, double *restrict q)
{
#if BN_VEC
    const int64_t j0 = c % 32 == 0 ? BN_FN(bn_sums_blk)(x, c, r0, r1, k, s, q, 32 / BN_FL)
                                   : BN_FN(bn_sums_blk)(x, c, r0, r1, k, s, q, 16 / BN_FL);
#else
    const int64_t j0 = 0;
#endif
    for (int64_t jc = j0; jc < c; jc += BN_TC) {
        const int64_t n = c - jc < BN_TC ? c - jc : BN_TC;
        T kf[BN_TC], fs[BN_TC], fq[BN_TC];
        for (int64_t j = 0; j < n; j++) {
            kf[j] = (T)k[jc + j];
            s[jc + j] = q[jc + j] = 0.0;
        }
        for (int64_t rb = r0; rb < r1; rb += BN_R) {
            const int64_t re = rb + BN_R < r1 ? rb + BN_R : r1;
            for (int64_t j = 0; j < n; j++) fs[j] = fq[j] = (T)0;
            for (int64_t r = rb; r < re; r++) {
                const XT *restrict xr = x + r * c + jc;
                for (int64_t j = 0; j < n; j++) {
                    const T d = BN_FN(bn_xs)(xr + j) - kf[j];
                    fs[j] += d;
                    fq[j] += d * d;
                }
            }
            for (int64_t j = 0; j < n; j++) {
                s[jc + j] += (double)fs[j];
                q[jc + j] += (double)fq[j];
            }
        }
    }
}

#if BN_VEC
/* g where v > 0, else +0, on BN_FL lanes */
static inline BN_VF BN_FN(bn_vposf)(BN_VF g, BN_VF v)
{
    const BN_VF z = {0};
    return (BN_VF)((BN_VFI)g & (BN_VFI)(v > z));
}

/* nr runs of bn_bsums' channel block j0 at once, as bn_sums_runs; mode:
 * the mask (0 none, 1 from y, 2 recomputed from x with ps / ph) */
BN_INL void BN_FN(bn_bsums_runs)(const T *restrict dy, const T *restrict y,
                                 const XT *restrict x, int64_t c, int64_t j0, int64_t rb,
                                 int64_t len, const int nr, const int ng, const int mode,
                                 const BN_VF *mv, const BN_VF *ps, const BN_VF *ph,
                                 BN_VGD *ad, BN_VGD *ax)
{
    BN_VF fd[2][BN_NFMAX], fx[2][BN_NFMAX];
    for (int h = 0; h < nr; h++)
        for (int g = 0; g < ng; g++) fd[h][g] = fx[h][g] = (BN_VF){0};
    for (int64_t i = 0; i < len; i++)
        for (int h = 0; h < nr; h++) {
            const int64_t o = (rb + h * BN_R + i) * c + j0;
            for (int g = 0; g < ng; g++) {
                const int64_t e = o + BN_FL * g;
                const BN_VF d = BN_FN(bn_ldxf)(x + e) - mv[g];
                BN_VF dz = BN_FN(bn_ldf)(dy + e);
                if (mode == 1) dz = BN_FN(bn_vposf)(dz, BN_FN(bn_ldf)(y + e));
                if (mode == 2) dz = BN_FN(bn_vposf)(dz, d * ps[g] + ph[g]);
                fd[h][g] += dz;
                fx[h][g] += dz * d;
            }
        }
    for (int h = 0; h < nr; h++)
        for (int g = 0; g < ng; g++) {
            BN_FN(bn_flush)(ad + 2 * g, fd[h][g]);
            BN_FN(bn_flush)(ax + 2 * g, fx[h][g]);
        }
}

/* the channel blocks of bn_bsums in one mask mode, ng vectors of BN_FL
 * each; returns the first channel not done */
BN_INL int64_t BN_FN(bn_bsums_blk)(const T *restrict dy, const T *restrict y,
                                   const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                                   const T *restrict mu, const T *restrict msc,
                                   const T *restrict msh, double *restrict sd,
                                   double *restrict sx, const int ng, const int mode)
{
    int64_t j0 = 0;
    for (; j0 + BN_FL * ng <= c; j0 += BN_FL * ng) {
        BN_VF mv[BN_NFMAX], ps[BN_NFMAX], ph[BN_NFMAX];
        BN_VGD ad[2 * BN_NFMAX], ax[2 * BN_NFMAX];
        for (int g = 0; g < ng; g++) {
            mv[g] = BN_FN(bn_ldf)(mu + j0 + BN_FL * g);
            if (mode == 2) {
                ps[g] = BN_FN(bn_ldf)(msc + j0 + BN_FL * g);
                ph[g] = BN_FN(bn_ldf)(msh + j0 + BN_FL * g);
            }
            ad[2 * g] = ad[2 * g + 1] = ax[2 * g] = ax[2 * g + 1] = (BN_VGD){0};
        }
        int64_t rb = r0;
        for (; ng == 1 && rb + 2 * BN_R <= r1; rb += 2 * BN_R)
            BN_FN(bn_bsums_runs)(dy, y, x, c, j0, rb, BN_R, 2, ng, mode, mv, ps, ph, ad, ax);
        for (; rb < r1; rb += BN_R)
            BN_FN(bn_bsums_runs)(dy, y, x, c, j0, rb, r1 - rb < BN_R ? r1 - rb : BN_R, 1, ng,
                                 mode, mv, ps, ph, ad, ax);
        memcpy(sd + j0, ad, (size_t)ng * 2 * sizeof ad[0]);
        memcpy(sx + j0, ax, (size_t)ng * 2 * sizeof ax[0]);
    }
    return j0;
}

/* bn_bsums_blk with the mask mode and the block width as constants */
static int64_t BN_FN(bn_bsums_vec)(const T *restrict dy, const T *restrict y,
                                   const XT *restrict x, int64_t c, int64_t r0, int64_t r1,
                                   const T *restrict mu, const T *restrict msc,
                                   const T *restrict msh, double *restrict sd,
                                   double *restrict sx)
{
#define BN_BS(ng, mode) BN_FN(bn_bsums_blk)(dy, y, x, c, r0, r1, mu, msc, msh, sd, sx, ng, mode)
    if (c % 32 == 0) return y ? BN_BS(32 / BN_FL, 1) : msc ? BN_BS(32 / BN_FL, 2) : BN_BS(32 / BN_FL, 0);
    return y ? BN_BS(16 / BN_FL, 1) : msc ? BN_BS(16 / BN_FL, 2) : BN_BS(16 / BN_FL, 0);
#undef BN_BS
}
#endif

/* sd[c] = sum dz, sx[c] = sum dz * (x - mu) over rows [r0, r1): float runs
 * of BN_R rows, added in double.  dz = dy, or, for the ReLU mask, y > 0 ?
 * dy : 0 when y (the forward output) is given, else v > 0 ? dy : 0 when
 * msc is given, with v = (x - mu) * msc + msh the forward's pre-activation
 * recomputed in T as bn_apply_ep computes it (a forward without residual:
 * then v > 0 exactly where y > 0, NaN included).  mu is the forward's
 * save_mean (T); mud, the same in double, is not read here. */
static void BN_FN(bn_bsums)(const T *restrict dy, const T *restrict y, const XT *restrict x,
                            int64_t c, int64_t r0, int64_t r1, const double *restrict mud,
                            const T *restrict mu, const T *restrict msc,
                            const T *restrict msh, double *restrict sd, double *restrict sx)
{
    (void)mud;
#if BN_VEC
    const int64_t j0 = BN_FN(bn_bsums_vec)(dy, y, x, c, r0, r1, mu, msc, msh, sd, sx);
#else
    const int64_t j0 = 0;
#endif
    for (int64_t jc = j0; jc < c; jc += BN_TC) {
        const int64_t n = c - jc < BN_TC ? c - jc : BN_TC;
        T fd[BN_TC], fx[BN_TC];
        for (int64_t j = 0; j < n; j++) sd[jc + j] = sx[jc + j] = 0.0;
        for (int64_t rb = r0; rb < r1; rb += BN_R) {
            const int64_t re = rb + BN_R < r1 ? rb + BN_R : r1;
            for (int64_t j = 0; j < n; j++) fd[j] = fx[j] = (T)0;
            for (int64_t r = rb; r < re; r++) {
                const int64_t o = r * c + jc;
                if (y) {
                    for (int64_t j = 0; j < n; j++) {
                        const T d = BN_FN(bn_xs)(x + o + j) - mu[jc + j];
                        const T g = BN_FN(bn_mask)(dy[o + j], y[o + j]);
                        fd[j] += g;
                        fx[j] += g * d;
                    }
                } else if (msc) {
                    for (int64_t j = 0; j < n; j++) {
                        const T d = BN_FN(bn_xs)(x + o + j) - mu[jc + j];
                        const T g = BN_FN(bn_mask)(dy[o + j], d * msc[jc + j] + msh[jc + j]);
                        fd[j] += g;
                        fx[j] += g * d;
                    }
                } else {
                    for (int64_t j = 0; j < n; j++) {
                        const T d = BN_FN(bn_xs)(x + o + j) - mu[jc + j];
                        const T g = dy[o + j];
                        fd[j] += g;
                        fx[j] += g * d;
                    }
                }
            }
            for (int64_t j = 0; j < n; j++) {
                sd[jc + j] += (double)fd[j];
                sx[jc + j] += (double)fx[j];
            }
        }
    }
}

#if BN_VEC
#undef BN_FL
#undef BN_NFMAX
#undef BN_VF
#undef BN_VFI
#endif
#undef BN_R
#undef BN_TC

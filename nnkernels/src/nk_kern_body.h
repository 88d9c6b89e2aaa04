/* Per-ISA GEMM kernels: packing, micro-kernel, FMA-throughput loop.
 *
 * Included once per (ISA, dtype) by nk_kern_<isa>.c with these macros set:
 *   T         scalar type            S       "s" or "d" (type prefix)
 *   V         SIMD vector type       VL      lanes per vector
 *   NV        vectors per tile row   MR      tile rows (NR = NV*VL)
 *   MC KC NC  cache blocking         KERN    kernel-table name
 *   ISA       ISA suffix (function names)
 *   V_ZERO() V_LOAD(p) (aligned, packed buffers) V_LOADU(p) V_STOREU(p,v)
 *   V_BCAST(x) V_FMA(a,b,c)=a*b+c V_MUL V_ADD V_MAX
 *   V_LOADN(p,n): first n (0 < n < VL) lanes only, the rest zero
 * One body for every ISA keeps the algorithms identical across paths; only
 * the register width and tile shape differ.
 */
#define NR (NV * VL)
#define CAT_(a, b, c) a##_##b##_##c
#define CAT(a, b, c) CAT_(a, b, c)
#define FN(name) CAT(name, S, ISA)
#define EPT_(s) nk_##s##ep
#define EPT_X(s) EPT_(s)
#define EPT EPT_X(S)
#define KERNT_(s) nk_##s##kern
#define KERNT_X(s) KERNT_(s)


static inline T FN(dact)(T v, T y, int dact)
{
    (void)dact; /* only NK_ACT_RELU exists so far */
    return y > (T)0 ? v : (T)0;
}

static void FN(pack_a)(int64_t mc, int64_t kc, const T *a, int64_t rsa,
                       int64_t csa, const T *mask, int64_t rsm, int64_t csm,
                       int dact, T *restrict a_pk)
{
    for (int64_t i0 = 0; i0 < mc; i0 += MR) {
        const int64_t mr = mc - i0 < MR ? mc - i0 : MR;
        T *restrict dst = a_pk + i0 * kc;
        const T *src = a + i0 * rsa;
        if (!mask && mr == MR && csa == 1) {
            for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 16
                for (int i = 0; i < MR; i++) dst[p * MR + i] = src[i * rsa + p];
            }
        } else if (!mask && mr == MR && rsa == 1) {
            for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 16
                for (int i = 0; i < MR; i++) dst[p * MR + i] = src[p * csa + i];
            }
        } else {
            const T *msrc = mask ? mask + i0 * rsm : NULL;
            for (int64_t p = 0; p < kc; p++) {
                int i = 0;
                for (; i < mr; i++) {
                    T v = src[i * rsa + p * csa];
                    if (msrc) v = FN(dact)(v, msrc[i * rsm + p * csm], dact);
                    dst[p * MR + i] = v;
                }
                for (; i < MR; i++) dst[p * MR + i] = (T)0;
            }
        }
    }
}

static void FN(pack_b)(int64_t kc, int64_t nc, const T *b, int64_t rsb,
                       int64_t csb, const T *mask, int64_t rsm, int64_t csm,
                       int dact, T *colsum, T *restrict b_pk)
{
    for (int64_t j0 = 0; j0 < nc; j0 += NR) {
        const int64_t nr = nc - j0 < NR ? nc - j0 : NR;
        T *restrict dst = b_pk + j0 * kc;
        const T *src = b + j0 * csb;
        if (!mask && nr == NR && csb == 1) {
            for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++)
                    V_STOREU(dst + p * NR + v * VL, V_LOADU(src + p * rsb + v * VL));
            }
        } else if (!mask && csb == 1) {
            /* ragged last sliver of a row-major B: masked loads, zero fill */
            for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) {
                    const int nv = (int)nr - v * VL;
                    V x = nv >= VL ? V_LOADU(src + p * rsb + v * VL)
                        : nv > 0   ? V_LOADN(src + p * rsb + v * VL, nv)
                                   : V_ZERO();
                    V_STOREU(dst + p * NR + v * VL, x);
                }
            }
        } else if (!mask && nr == NR && rsb == 1) {
            for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 32
                for (int j = 0; j < NR; j++) dst[p * NR + j] = src[p + j * csb];
            }
        } else {
            const T *msrc = mask ? mask + j0 * csm : NULL;
            for (int64_t p = 0; p < kc; p++) {
                int j = 0;
                for (; j < nr; j++) {
                    T v = src[p * rsb + j * csb];
                    if (msrc) v = FN(dact)(v, msrc[p * rsm + j * csm], dact);
                    dst[p * NR + j] = v;
                }
                for (; j < NR; j++) dst[p * NR + j] = (T)0;
            }
        }
        if (colsum) {
            /* ascending p per column: same order whatever the blocking */
            T *restrict cs = colsum + j0;
            if (nr == NR) {
                /* full sliver: the sums stay in registers across p */
                V acc[NV];
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) acc[v] = V_LOADU(cs + v * VL);
                for (int64_t p = 0; p < kc; p++) {
#pragma GCC unroll 4
                    for (int v = 0; v < NV; v++) acc[v] = V_ADD(acc[v], V_LOADU(dst + p * NR + v * VL));
                }
#pragma GCC unroll 4
                for (int v = 0; v < NV; v++) V_STOREU(cs + v * VL, acc[v]);
            } else {
                for (int64_t p = 0; p < kc; p++)
                    for (int j = 0; j < nr; j++) cs[j] += dst[p * NR + j];
            }
        }
    }
}

#define EPI_FN FN(epilogue)
#include "nk_kern_epi.h"
#undef EPI_FN

/* NVV (compile-time constant after inlining) vectors per row: NV for the
 * full tile, NV/2 for narrow column edges. */
static inline __attribute__((always_inline)) void
FN(ukr_impl)(int64_t kc, const T *restrict a, const T *restrict b, int64_t ldb,
             T *restrict c, int64_t ldc, const EPT *ep, int m, int n, const int NVV)
{
    V acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NVV; v++) acc[i][v] = V_ZERO();

#pragma GCC unroll 2
    for (int64_t p = 0; p < kc; p++) {
        V bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NVV; v++) bv[v] = V_LOADU(b + v * VL); /* B may be read in place */
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            const V ai = V_BCAST(a[i]);
#pragma GCC unroll 4
            for (int v = 0; v < NVV; v++) acc[i][v] = V_FMA(ai, bv[v], acc[i][v]);
        }
        a += MR;
        b += ldb;
    }

    FN(epilogue)(acc, c, ldc, ep, m, n, NVV);
}

static void FN(ukr)(int64_t kc, const T *restrict a, const T *restrict b, int64_t ldb,
                    T *restrict c, int64_t ldc, const EPT *ep, int m, int n)
{
    FN(ukr_impl)(kc, a, b, ldb, c, ldc, ep, m, n, NV);
}

static void FN(ukr_half)(int64_t kc, const T *restrict a, const T *restrict b, int64_t ldb,
                         T *restrict c, int64_t ldc, const EPT *ep, int m, int n)
{
    FN(ukr_impl)(kc, a, b, ldb, c, ldc, ep, m, n, NV / 2);
}

const KERNT_X(S) KERN = {MR, NR, MC, KC, NC, FN(pack_a), FN(pack_b), FN(ukr), FN(ukr_half)};

/* FMA throughput: 12 independent accumulator chains per iteration. */
static double FN(fma_peak)(int64_t iters)
{
    V acc[12];
    const V x = V_BCAST((T)0.999999), y = V_BCAST((T)1e-7);
#pragma GCC unroll 12
    for (int i = 0; i < 12; i++) acc[i] = V_BCAST((T)i);
    for (int64_t it = 0; it < iters; it++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) acc[i] = V_FMA(acc[i], x, y);
    }
    T out[VL] __attribute__((aligned(64)));
    V s = acc[0];
    for (int i = 1; i < 12; i++) s = V_ADD(s, acc[i]);
    V_STOREU(out, s);
    volatile T sink = out[0];
    (void)sink;
    return 2.0 * 12.0 * VL * (double)iters;
}

#undef NR
#undef FN
#undef EPT

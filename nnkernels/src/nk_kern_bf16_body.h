/* bfloat16 products with float32 accumulation: the micro-kernel and the
 * conversion of packed float32 slivers into bf16 pairs.
 *
 * Included by nk_kern_<isa>.c right after the float32 instance of
 * nk_kern_body.h (T = float and its V, VL, NV, MR, MC, KC, NC and V_* macros
 * still defined), with:
 *   ISA_B     name suffix of this instance      KERN_B   its table (nk_bkern)
 *   F32KERN   the float32 table whose packing it reuses (same MR, NR)
 *   PV        a vector of VL 32-bit lanes, each one bf16 pair
 *   PV_LOADU(p)   VL pairs from uint16_t *p       PV_BCAST(p)  the pair at p in every lane
 *   PV_DP(acc, a, b)  acc + a.hi*b.hi, then + a.lo*b.lo, each step rounded
 *                     (VDPBF16PS: the odd element of a pair first)
 *   CVT_FAST  optional: a function (kc, r, src, dst) converting the whole
 *             sliver faster than the scalar loop below, else undefined.
 *   PACK_B_ROWS  optional: the table's pack_b_rows (see nk_bkern), else NULL.
 *
 * Packed layouts (k padded to an even kc2, the pad zero):
 *   A sliver: a_pk[(p/2)*2*MR + 2*i + (p&1)]      B sliver: b_pk[(p/2)*2*NR + 2*j + (p&1)]
 * i.e. the float32 sliver [p][r] with the pair (p, p+1) of each row r
 * adjacent, so one 32-bit broadcast of A meets one vector of B.
 *
 * The operands are rounded to bf16 like VCVTNEPS2BF16 (round to nearest
 * even, NaN quieted, denormals flushed to signed zero) and products of two
 * bf16 are exact in float32, so the emulated paths (two FMAs per pair in
 * VDPBF16PS's order) give the native path's results bit for bit; only
 * accumulators in the denormal range differ (VDPBF16PS flushes them).
 */
#define NR_B (NV * VL)
#define CATB_(a, b) a##_sb_##b
#define CATB(a, b) CATB_(a, b)
#define FNB(name) CATB(name, ISA_B)
#define EPT nk_sep

/* [p][r] float32 (kc rows of r) -> [p/2][r][2] bf16 pairs, kc2 = kc
 * rounded up to even (an odd kc's last pair gets a zero partner). */
static void FNB(cvt_scalar)(int64_t kc, int r, const float *restrict src, uint16_t *restrict dst)
{
    const int64_t kfull = kc & ~(int64_t)1;
    for (int64_t p = 0; p < kfull; p += 2) {
        const float *s0 = src + p * r, *s1 = s0 + r;
        uint16_t *d = dst + p * r;
        for (int j = 0; j < r; j++) {
            d[2 * j] = nk_bf16_ftz(s0[j]);
            d[2 * j + 1] = nk_bf16_ftz(s1[j]);
        }
    }
    if (kc & 1) {
        const float *s0 = src + kfull * r;
        uint16_t *d = dst + kfull * r;
        for (int j = 0; j < r; j++) {
            d[2 * j] = nk_bf16_ftz(s0[j]);
            d[2 * j + 1] = 0;
        }
    }
}

static void FNB(cvt)(int64_t kc, int r, const float *restrict src, uint16_t *restrict dst)
{
#ifdef CVT_FAST
    CVT_FAST(kc, r, src, dst);
#else
    FNB(cvt_scalar)(kc, r, src, dst);
#endif
}

#define EPI_FN FNB(epilogue)
#include "nk_kern_epi.h"
#undef EPI_FN

static inline __attribute__((always_inline)) void
FNB(ukr_impl)(int64_t kc2, const uint16_t *restrict a, const uint16_t *restrict b,
              float *restrict c, int64_t ldc, const EPT *ep, int m, int n, const int NVV)
{
    V acc[MR][NV];
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++)
#pragma GCC unroll 4
        for (int v = 0; v < NVV; v++) acc[i][v] = V_ZERO();

#pragma GCC unroll 2
    for (int64_t p = 0; p < kc2; p += 2) {
        PV bv[NV];
#pragma GCC unroll 4
        for (int v = 0; v < NVV; v++) bv[v] = PV_LOADU(b + 2 * v * VL);
#pragma GCC unroll 16
        for (int i = 0; i < MR; i++) {
            const PV ai = PV_BCAST(a + 2 * i);
#pragma GCC unroll 4
            for (int v = 0; v < NVV; v++) acc[i][v] = PV_DP(acc[i][v], ai, bv[v]);
        }
        a += 2 * MR;
        b += 2 * NR_B;
    }
    FNB(epilogue)(acc, c, ldc, ep, m, n, NVV);
}

static void FNB(ukr)(int64_t kc2, const uint16_t *restrict a, const uint16_t *restrict b,
                     float *restrict c, int64_t ldc, const EPT *ep, int m, int n)
{
    FNB(ukr_impl)(kc2, a, b, c, ldc, ep, m, n, NV);
}

static void FNB(ukr_half)(int64_t kc2, const uint16_t *restrict a, const uint16_t *restrict b,
                          float *restrict c, int64_t ldc, const EPT *ep, int m, int n)
{
    FNB(ukr_impl)(kc2, a, b, c, ldc, ep, m, n, NV / 2);
}

#ifndef PACK_B_ROWS
#define PACK_B_ROWS NULL
#endif
const nk_bkern KERN_B = {MR,       NR_B,     MC,       KC,           NC,
                         &F32KERN, FNB(cvt), FNB(ukr), FNB(ukr_half), PACK_B_ROWS};
#undef PACK_B_ROWS

#undef NR_B
#undef CATB_
#undef CATB
#undef FNB
#undef EPT
/* the including file's parameters of this instance */
#undef ISA_B
#undef KERN_B
#undef F32KERN
#undef PV
#undef PV_LOADU
#undef PV_BCAST
#undef PV_DP
#undef CVT_FAST

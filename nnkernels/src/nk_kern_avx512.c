/* AVX-512F kernels (compiled for AVX-512 whatever the build's -march;
 * only called when CPUID and the OS say AVX-512 state is usable). */
#include "nk_internal.h"
#include "nk_target.h"
#if NK_X86
NK_TARGET_AVX512_BEGIN
#include <immintrin.h>

#define ISA avx512
/* float32 */
#define S s
#define KERN nk_skern_avx512
#include "nk_kern_avx512_s.h"
#include "nk_kern_body.h"

/* bfloat16 products on AVX-512F without AVX512_BF16: pairs unpacked to
 * float32 (the high half is the float itself, the low half shifted up),
 * two FMAs in VDPBF16PS's order */
static inline __m512 nk_dp_emul512(__m512 acc, __m512i a, __m512i b)
{
    const __m512i hi = _mm512_set1_epi32((int32_t)0xffff0000u);
    acc = _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_and_si512(a, hi)),
                          _mm512_castsi512_ps(_mm512_and_si512(b, hi)), acc);
    return _mm512_fmadd_ps(_mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),
                           _mm512_castsi512_ps(_mm512_slli_epi32(b, 16)), acc);
}
#define ISA_B avx512
#define KERN_B nk_bkern_avx512
#define F32KERN nk_skern_avx512
#define PV __m512i
#define PV_LOADU(p) _mm512_loadu_si512((const void *)(p))
#define PV_BCAST(p) _mm512_set1_epi32(nk_ld_pair(p))
#define PV_DP(acc, a, b) nk_dp_emul512(acc, a, b)
#include "nk_kern_bf16_body.h"
#include "nk_kern_undef.h"

/* float64: 8 x 16 tile */
#define T double
#define S d
#define V __m512d
#define VL 8
#define NV 2
#define MR 8
#define MC 128
#define KC 256
#define NC 2048
#define KERN nk_dkern_avx512
#define V_ZERO() _mm512_setzero_pd()
#define V_LOAD(p) _mm512_load_pd(p)
#define V_LOADU(p) _mm512_loadu_pd(p)
#define V_STOREU(p, v) _mm512_storeu_pd(p, v)
#define V_BCAST(x) _mm512_set1_pd(x)
#define V_FMA(a, b, c) _mm512_fmadd_pd(a, b, c)
#define V_MUL(a, b) _mm512_mul_pd(a, b)
#define V_ADD(a, b) _mm512_add_pd(a, b)
#define V_MAX(a, b) _mm512_max_pd(a, b)
#define V_LOADN(p, n) _mm512_maskz_loadu_pd((__mmask8)((1u << (n)) - 1), p)
#include "nk_kern_body.h"
#include "nk_kern_undef.h"

double nk_fma_peak_avx512(int dbl, int64_t iters)
{
    return dbl ? fma_peak_d_avx512(iters) : fma_peak_s_avx512(iters);
}

NK_TARGET_END

/* The native bfloat16 path: VDPBF16PS (32 multiply-adds per instruction,
 * twice an FMA's) and VCVTNE2PS2BF16 for the conversion; only called when
 * CPUID reports AVX512_BF16 and AVX512BW (nk_cpu.c). */
NK_TARGET_AVX512BF16_BEGIN
#include "nk_kern_avx512_s.h"

/* 32 floats (x: 16, y: 16) -> 32 bf16 in the word order idx gives */
static inline __m512i nk_cvt2_perm(__m512 x, __m512 y, __m512i idx)
{
    return _mm512_permutexvar_epi16(idx, (__m512i)_mm512_cvtne2ps_pbh(y, x));
}
static void nk_cvt_pairs_native(int64_t kc, int r, const float *restrict src,
                                uint16_t *restrict dst);
static void nk_pack_b_rows_native(int64_t kc, const float *b, int64_t rsb, const float *mask,
                                  int64_t rsm, float *colsum, uint16_t *b_pk);
#define PACK_B_ROWS nk_pack_b_rows_native
#define ISA_B avx512bf16
#define KERN_B nk_bkern_avx512bf16
#define F32KERN nk_skern_avx512
#define PV __m512i
#define PV_LOADU(p) _mm512_loadu_si512((const void *)(p))
#define PV_BCAST(p) _mm512_set1_epi32(nk_ld_pair(p))
#define PV_DP(acc, a, b) _mm512_dpbf16_ps(acc, (__m512bh)(a), (__m512bh)(b))
#define CVT_FAST nk_cvt_pairs_native
#include "nk_kern_bf16_body.h"

/* [p][r] -> [p/2][r][2] with one conversion and one word permutation per
 * 32 elements: r = 32 (B slivers) per pair of rows and half-row, r = 8 (A
 * slivers) per two pairs of rows; the rest (other r, the tail, an odd kc)
 * through the scalar loop, which rounds identically. */
static void nk_cvt_pairs_native(int64_t kc, int r, const float *restrict src,
                                uint16_t *restrict dst)
{
    int64_t p = 0;
    const int64_t kfull = kc & ~(int64_t)1;
    if (r == 32) {
        /* words of cvt2(x=row p, y=row p+1): x0..x15 y0..y15 -> x0 y0 x1 y1 ... */
        const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25,
                                             9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2,
                                             17, 1, 16, 0);
        for (; p < kfull; p += 2) {
            const float *s0 = src + p * 32, *s1 = s0 + 32;
            uint16_t *d = dst + p * 32;
            _mm512_storeu_si512((void *)d,
                                nk_cvt2_perm(_mm512_loadu_ps(s0), _mm512_loadu_ps(s1), idx));
            _mm512_storeu_si512((void *)(d + 32), nk_cvt2_perm(_mm512_loadu_ps(s0 + 16),
                                                               _mm512_loadu_ps(s1 + 16), idx));
        }
    } else if (r == 8) {
        /* words of cvt2(rows p, p+1 | rows p+2, p+3): a0..a7 b0..b7 c0..c7 d0..d7
         * -> a0 b0 a1 b1 ... a7 b7 c0 d0 ... c7 d7 */
        const __m512i idx = _mm512_set_epi16(31, 23, 30, 22, 29, 21, 28, 20, 27, 19, 26, 18, 25,
                                             17, 24, 16, 15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2,
                                             9, 1, 8, 0);
        for (; p + 4 <= kfull; p += 4)
            _mm512_storeu_si512((void *)(dst + p * 8),
                                nk_cvt2_perm(_mm512_loadu_ps(src + p * 8),
                                             _mm512_loadu_ps(src + p * 8 + 16), idx));
    }
    if (p < kc) cvt_scalar_sb_avx512bf16(kc - p, r, src + p * r, dst + p * r);
}

/* Row p of a 32-column sliver as the float32 packing has it: the two
 * vectors, masked (mask > 0 ? b : 0, as pack_b's dact), or zero past kc. */
static inline void nk_brow(const float *b, const float *m, __m512 *lo, __m512 *hi)
{
    *lo = _mm512_loadu_ps(b);
    *hi = _mm512_loadu_ps(b + 16);
    if (m) {
        const __m512 z = _mm512_setzero_ps();
        *lo = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(m), z, _CMP_GT_OQ), *lo);
        *hi = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_loadu_ps(m + 16), z, _CMP_GT_OQ),
                                  *hi);
    }
}

/* pack_b_rows of this table (see nk_bkern): rows p, p + 1 of the sliver
 * (32 columns) converted together into the pairs [p/2][j][2] (the layout
 * and rounding of cvt), colsum += each row in ascending p (pack_b's order:
 * the same float32 sums); an odd kc's last row gets a zero partner. */
static void nk_pack_b_rows_native(int64_t kc, const float *b, int64_t rsb, const float *mask,
                                  int64_t rsm, float *colsum, uint16_t *b_pk)
{
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9,
                                         24, 8, 23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1,
                                         16, 0);
    __m512 s0 = _mm512_setzero_ps(), s1 = s0;
    if (colsum) {
        s0 = _mm512_loadu_ps(colsum);
        s1 = _mm512_loadu_ps(colsum + 16);
    }
    for (int64_t p = 0; p < kc; p += 2) {
        __m512 a0, a1, b0 = _mm512_setzero_ps(), b1 = b0;
        nk_brow(b + p * rsb, mask ? mask + p * rsm : NULL, &a0, &a1);
        if (p + 1 < kc) nk_brow(b + (p + 1) * rsb, mask ? mask + (p + 1) * rsm : NULL, &b0, &b1);
        if (colsum) {
            s0 = _mm512_add_ps(s0, a0);
            s1 = _mm512_add_ps(s1, a1);
            if (p + 1 < kc) {
                s0 = _mm512_add_ps(s0, b0);
                s1 = _mm512_add_ps(s1, b1);
            }
        }
        uint16_t *d = b_pk + p * 32;
        _mm512_storeu_si512((void *)d, nk_cvt2_perm(a0, b0, idx));
        _mm512_storeu_si512((void *)(d + 32), nk_cvt2_perm(a1, b1, idx));
    }
    if (colsum) {
        _mm512_storeu_ps(colsum, s0);
        _mm512_storeu_ps(colsum + 16, s1);
    }
}
#include "nk_kern_undef.h"
NK_TARGET_END
#endif /* NK_X86 */

/* AVX2+FMA kernels (compiled for AVX2 whatever the build's -march; only
 * called when CPUID and the OS say AVX state is usable). */
#include "nk_internal.h"
#include "nk_target.h"
#if NK_X86
NK_TARGET_AVX2_BEGIN
#include <immintrin.h>

#define ISA avx2
/* lane masks for partial vectors: lane l active iff l < n */
static inline __m256i nk_mask8(int n)
{
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline __m256i nk_mask4(int n)
{
    return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
/* float32: 6 x 16 tile, 12 ymm accumulators */
#define T float
#define S s
#define V __m256
#define VL 8
#define NV 2
#define MR 6
#define MC 144
#define KC 256
#define NC 3072
#define KERN nk_skern_avx2
#define V_ZERO() _mm256_setzero_ps()
#define V_LOAD(p) _mm256_load_ps(p)
#define V_LOADU(p) _mm256_loadu_ps(p)
#define V_STOREU(p, v) _mm256_storeu_ps(p, v)
#define V_BCAST(x) _mm256_set1_ps(x)
#define V_FMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define V_MUL(a, b) _mm256_mul_ps(a, b)
#define V_ADD(a, b) _mm256_add_ps(a, b)
#define V_MAX(a, b) _mm256_max_ps(a, b)
#define V_LOADN(p, n) _mm256_maskload_ps(p, nk_mask8(n))
#include "nk_kern_body.h"

/* bfloat16 products, emulated: pairs unpacked to float32, two FMAs in
 * VDPBF16PS's order (see nk_kern_bf16_body.h) */
static inline __m256 nk_dp_emul256(__m256 acc, __m256i a, __m256i b)
{
    const __m256i hi = _mm256_set1_epi32((int32_t)0xffff0000u);
    acc = _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_and_si256(a, hi)),
                          _mm256_castsi256_ps(_mm256_and_si256(b, hi)), acc);
    return _mm256_fmadd_ps(_mm256_castsi256_ps(_mm256_slli_epi32(a, 16)),
                           _mm256_castsi256_ps(_mm256_slli_epi32(b, 16)), acc);
}
#define ISA_B avx2
#define KERN_B nk_bkern_avx2
#define F32KERN nk_skern_avx2
#define PV __m256i
#define PV_LOADU(p) _mm256_loadu_si256((const __m256i *)(const void *)(p))
#define PV_BCAST(p) _mm256_set1_epi32(nk_ld_pair(p))
#define PV_DP(acc, a, b) nk_dp_emul256(acc, a, b)
#include "nk_kern_bf16_body.h"
#include "nk_kern_undef.h"

/* float64: 6 x 8 tile */
#define T double
#define S d
#define V __m256d
#define VL 4
#define NV 2
#define MR 6
#define MC 96
#define KC 256
#define NC 2048
#define KERN nk_dkern_avx2
#define V_ZERO() _mm256_setzero_pd()
#define V_LOAD(p) _mm256_load_pd(p)
#define V_LOADU(p) _mm256_loadu_pd(p)
#define V_STOREU(p, v) _mm256_storeu_pd(p, v)
#define V_BCAST(x) _mm256_set1_pd(x)
#define V_FMA(a, b, c) _mm256_fmadd_pd(a, b, c)
#define V_MUL(a, b) _mm256_mul_pd(a, b)
#define V_ADD(a, b) _mm256_add_pd(a, b)
#define V_MAX(a, b) _mm256_max_pd(a, b)
#define V_LOADN(p, n) _mm256_maskload_pd(p, nk_mask4(n))
#include "nk_kern_body.h"
#include "nk_kern_undef.h"

double nk_fma_peak_avx2(int dbl, int64_t iters)
{
    return dbl ? fma_peak_d_avx2(iters) : fma_peak_s_avx2(iters);
}

NK_TARGET_END
#endif /* NK_X86 */

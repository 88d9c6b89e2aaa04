/* AVX-512F kernels (compiled for AVX-512 whatever the build's -march;
 * only called when CPUID and the OS say AVX-512 state is usable). */
#include "nk_internal.h"
#include "nk_target.h"
#if NK_X86
NK_TARGET_AVX512_BEGIN
#include <immintrin.h>

#define ISA avx512
/* float32: 8 x 32 tile, 16 zmm accumulators */
#define T float
#define S s
#define V __m512
#define VL 16
#define NV 2
#define MR 8
#define MC 192 /* A block 384 KiB: in the 1 MiB L2 of Zen 4 */
#define KC 512 /* measured: +3-4 % over 384 on 1024^3/2048^3 */
#define NC 3072
#define KERN nk_skern_avx512
#define V_ZERO() _mm512_setzero_ps()
#define V_LOAD(p) _mm512_load_ps(p)
#define V_LOADU(p) _mm512_loadu_ps(p)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_BCAST(x) _mm512_set1_ps(x)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_MAX(a, b) _mm512_max_ps(a, b)
#define V_LOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)
#include "nk_kern_body.h"
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
#endif /* NK_X86 */

/* bfloat16: which product kernels run (native VDPBF16PS or emulated with
 * float32 FMAs) and the array conversions. */
#include <string.h>
#include "nk_internal.h"
#include "nk_target.h"
#if NK_X86
#include <cpuid.h>
#include <immintrin.h>
#endif

static int g_bf16_off = 0; /* 1: emulate even where VDPBF16PS exists */

/* CPUID: AVX512_BF16 and AVX512BW (nk_bf16_native_supported asks once:
 * nk_probe_once) */
static int bf16_probe(int unused)
{
    (void)unused;
#if NK_X86
    unsigned a, b, c, d;
    if (!nk_isa_supported(NK_ISA_AVX512)) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int bw = (b >> 30) & 1;
    if (a < 1) return 0; /* no subleaf 1 */
    __cpuid_count(7, 1, a, b, c, d);
    return bw && ((a >> 5) & 1);
#else
    return 0;
#endif
}

int nk_bf16_native_supported(void)
{
    static int known;
    return nk_probe_once(&known, bf16_probe, 0);
}

int nk_bf16_native(void)
{
    return !g_bf16_off && nk_get_isa() == NK_ISA_AVX512 && nk_bf16_native_supported();
}

int nk_set_bf16_native(int on)
{
    if (on && !nk_bf16_native_supported()) return -1;
    g_bf16_off = !on;
    return 0;
}

const nk_bkern *nk_bkern_current(void)
{
#if NK_X86
    if (nk_bf16_native()) return &nk_bkern_avx512bf16;
    switch (nk_get_isa()) {
    case NK_ISA_AVX512: return &nk_bkern_avx512;
    case NK_ISA_AVX2: return &nk_bkern_avx2;
    }
#endif
    return &nk_bkern_generic;
}

void nk_f32_to_bf16(const float *x, uint16_t *out, int64_t n)
{
    NK_CHUNKED_PARALLEL(n, n * 6, {
        for (int64_t i = e0; i < e1; i++) out[i] = nk_bf16_rne(x[i]);
    });
}

/* Float32 -> bf16 as nk_bf16_ftz, branch-free so that they vectorise: runs
 * (bf16_ftz_run) and pairs of runs into 32-bit words (bf16_pairs_run: lo in
 * the low half, hi -- or zeros when NULL -- in the high half), defined once
 * per ISA they are compiled for (the baseline's SSE2 narrowing of the first
 * took 0.57 ns per element; AVX-512 and, where it runs, VCVTNEPS2BF16
 * itself, which rounds the same). */
#define NK_BF16_FTZ_LOOPS(SUF)                                                              \
    static void bf16_ftz_run##SUF(const float *restrict x, uint16_t *restrict out, int64_t n) \
    {                                                                                       \
        for (int64_t i = 0; i < n; i++) out[i] = nk_bf16_ftz(x[i]);                       \
    }                                                                                       \
    static void bf16_pairs_run##SUF(const float *restrict lo, const float *restrict hi,    \
                                    uint32_t *restrict out, int64_t n)                     \
    {                                                                                       \
        if (hi)                                                                             \
            for (int64_t i = 0; i < n; i++)                                                 \
                out[i] = (uint32_t)nk_bf16_ftz(lo[i]) | (uint32_t)nk_bf16_ftz(hi[i]) << 16; \
        else                                                                                \
            for (int64_t i = 0; i < n; i++) out[i] = nk_bf16_ftz(lo[i]);                  \
    }
NK_BF16_FTZ_LOOPS()
#if NK_X86
NK_TARGET_AVX512_BEGIN
NK_BF16_FTZ_LOOPS(_avx512)
NK_TARGET_END
#endif
#undef NK_BF16_FTZ_LOOPS

void nk_bf16_pairs_ftz(const float *lo, const float *hi, uint32_t *out, int64_t n)
{
#if NK_X86
    if (nk_get_isa() == NK_ISA_AVX512) {
        bf16_pairs_run_avx512(lo, hi, out, n);
        return;
    }
#endif
    bf16_pairs_run(lo, hi, out, n);
}

#if NK_X86
NK_TARGET_AVX512BF16_BEGIN
static void bf16_ftz_run_native(const float *restrict x, uint16_t *restrict out, int64_t n)
{
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256bh h = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
        memcpy(out + i, &h, sizeof h);
    }
    bf16_ftz_run_avx512(x + i, out + i, n - i);
}
NK_TARGET_END
#endif

void nk_f32_to_bf16_ftz_rows(const float *x, uint16_t *out, int64_t n, int64_t w, int64_t ld)
{
    void (*run)(const float *restrict, uint16_t *restrict, int64_t) = bf16_ftz_run;
#if NK_X86
    if (nk_bf16_native()) run = bf16_ftz_run_native;
    else if (nk_get_isa() == NK_ISA_AVX512) run = bf16_ftz_run_avx512;
#endif
    if (w == ld) { /* one run */
        const int64_t e = n * w;
        NK_CHUNKED_PARALLEL(e, e * 6, run(x + e0, out + e0, e1 - e0));
        return;
    }
    NK_CHUNKED_PARALLEL(n, n * w * 6, {
        for (int64_t r = e0; r < e1; r++) run(x + r * ld, out + r * ld, w);
    });
}

void nk_bf16_to_f32(const uint16_t *x, float *out, int64_t n)
{
    NK_CHUNKED_PARALLEL(n, n * 6, {
        for (int64_t i = e0; i < e1; i++) out[i] = nk_bf16_widen(x[i]);
    });
}

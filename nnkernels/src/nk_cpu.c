/* Run-time ISA detection and dispatch, thread settings. */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "nk_internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if NK_X86
#include <cpuid.h>
#endif

static int g_isa = -1;     /* -1: not yet detected */
static int g_threads = 0;  /* 0: OpenMP's default */

#if NK_X86
static uint64_t nk_xgetbv(void)
{
    uint32_t eax, edx;
    __asm__ __volatile__("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return ((uint64_t)edx << 32) | eax;
}
#endif

/* CPUID and XGETBV: what the CPU and the OS support (nk_isa_supported asks
 * once per ISA: nk_probe_once) */
static int isa_probe(int isa)
{
    if (isa == NK_ISA_GENERIC) return 1;
#if NK_X86
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
    const int osxsave = (c >> 27) & 1, fma = (c >> 12) & 1, avx = (c >> 28) & 1;
    if (!osxsave || !avx) return 0;
    const uint64_t xcr0 = nk_xgetbv();
    if ((xcr0 & 0x6) != 0x6) return 0; /* XMM and YMM state enabled by the OS */
    if (__get_cpuid_max(0, NULL) < 7) return 0;
    __cpuid_count(7, 0, a, b, c, d);
    const int avx2 = (b >> 5) & 1, avx512f = (b >> 16) & 1, avx512dq = (b >> 17) & 1,
              avx512vl = (b >> 31) & 1;
    if (isa == NK_ISA_AVX2) return avx2 && fma;
    if (isa == NK_ISA_AVX512)
        return avx2 && fma && avx512f && avx512dq && avx512vl && (xcr0 & 0xe6) == 0xe6;
#endif
    return 0;
}

int nk_isa_supported(int isa)
{
    static int known[NK_ISA_COUNT];
    if (isa < 0 || isa >= NK_ISA_COUNT) return 0;
    return nk_probe_once(&known[isa], isa_probe, isa);
}

const char *nk_isa_name(int isa)
{
    switch (isa) {
    case NK_ISA_AVX512: return "avx512";
    case NK_ISA_AVX2: return "avx2";
    case NK_ISA_GENERIC: return "generic";
    default: return "unknown";
    }
}

int nk_get_isa(void)
{
    if (g_isa < 0) {
        int best = NK_ISA_GENERIC;
        if (nk_isa_supported(NK_ISA_AVX2)) best = NK_ISA_AVX2;
        if (nk_isa_supported(NK_ISA_AVX512)) best = NK_ISA_AVX512;
        g_isa = best;
    }
    return g_isa;
}

int nk_set_isa(int isa)
{
    if (isa < 0 || isa >= NK_ISA_COUNT || !nk_isa_supported(isa)) return -1;
    g_isa = isa;
    return 0;
}

const nk_skern *nk_skern_current(void)
{
#if NK_X86
    switch (nk_get_isa()) {
    case NK_ISA_AVX512: return &nk_skern_avx512;
    case NK_ISA_AVX2: return &nk_skern_avx2;
    }
#endif
    return &nk_skern_generic;
}

const nk_dkern *nk_dkern_current(void)
{
#if NK_X86
    switch (nk_get_isa()) {
    case NK_ISA_AVX512: return &nk_dkern_avx512;
    case NK_ISA_AVX2: return &nk_dkern_avx2;
    }
#endif
    return &nk_dkern_generic;
}

double nk_fma_peak_loop(int isa, int dbl, int64_t iters)
{
    if (!nk_isa_supported(isa)) return -1.0;
#if NK_X86
    if (isa == NK_ISA_AVX512) return nk_fma_peak_avx512(dbl, iters);
    if (isa == NK_ISA_AVX2) return nk_fma_peak_avx2(dbl, iters);
#endif
    return nk_fma_peak_generic(dbl, iters);
}

int nk_openmp_enabled(void)
{
#ifdef _OPENMP
    return 1;
#else
    return 0;
#endif
}

int nk_omp_max_threads(void)
{
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static int nk_clamp_threads(int n) { return n < 1 ? 1 : (n > NK_MAX_THREADS ? NK_MAX_THREADS : n); }

void nk_set_num_threads(int n) { g_threads = n > 0 ? nk_clamp_threads(n) : 0; }

int nk_get_num_threads(void)
{
#ifdef _OPENMP
    return g_threads > 0 ? g_threads : nk_clamp_threads(omp_get_max_threads());
#else
    return 1;
#endif
}

/* Wall-clock seconds for `nt` threads each running nk_fma_peak_loop(iters). */
double nk_fma_peak_run(int isa, int dbl, int nt, int64_t iters, double *flops)
{
    double total = 0.0;
    nt = nk_clamp_threads(nt);
#ifdef _OPENMP
    double t0 = omp_get_wtime();
#pragma omp parallel num_threads(nt) reduction(+ : total)
    total += nk_fma_peak_loop(isa, dbl, iters);
    double t1 = omp_get_wtime();
    *flops = total;
    return t1 - t0;
#else
    struct timespec a, b;
    (void)nt;
    clock_gettime(CLOCK_MONOTONIC, &a);
    total = nk_fma_peak_loop(isa, dbl, iters);
    clock_gettime(CLOCK_MONOTONIC, &b);
    *flops = total;
    return (double)(b.tv_sec - a.tv_sec) + 1e-9 * (double)(b.tv_nsec - a.tv_nsec);
#endif
}

const char *nk_compiler(void)
{
#ifdef __VERSION__
#if defined(__clang__)
    return "clang " __VERSION__;
#else
    return "gcc " __VERSION__;
#endif
#else
    return "unknown";
#endif
}

/* Portable kernels: GCC/Clang vector extensions of 16 bytes (SSE2 on
 * x86-64, NEON on AArch64, scalar code elsewhere).  No intrinsics. */
#include <string.h>
#include "nk_internal.h"

typedef float nk_v4f __attribute__((vector_size(16)));
typedef double nk_v2d __attribute__((vector_size(16)));

#define NK_GEN_OPS(VT, ST)                                                        \
    static inline VT ld_##VT(const ST *p) { VT v; memcpy(&v, p, sizeof v); return v; } \
    static inline void st_##VT(ST *p, VT v) { memcpy(p, &v, sizeof v); }              \
    static inline VT ldn_##VT(const ST *p, int n)                                     \
    {                                                                                 \
        VT v = {0};                                                                   \
        memcpy(&v, p, (size_t)n * sizeof(ST));                                        \
        return v;                                                                     \
    }                                                                                 \
    static inline VT bc_##VT(ST x) { VT v = {0}; return v + x; }                      \
    static inline VT mx_##VT(VT a, VT b)                                     \
    {                                                                             \
        for (int i = 0; i < (int)(sizeof(VT) / sizeof(ST)); i++)                  \
            a[i] = a[i] > b[i] ? a[i] : b[i];                                     \
        return a;                                                                 \
    }

NK_GEN_OPS(nk_v4f, float)
NK_GEN_OPS(nk_v2d, double)

#define ISA generic
#define T float
#define S s
#define V nk_v4f
#define VL 4
#define NV 2
#define MR 4
#define MC 128
#define KC 256
#define NC 2048
#define KERN nk_skern_generic
#define V_ZERO() bc_nk_v4f(0.0f)
#define V_LOAD(p) ld_nk_v4f(p)
#define V_LOADU(p) ld_nk_v4f(p)
#define V_STOREU(p, v) st_nk_v4f(p, v)
#define V_BCAST(x) bc_nk_v4f(x)
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_MUL(a, b) ((a) * (b))
#define V_ADD(a, b) ((a) + (b))
#define V_MAX(a, b) mx_nk_v4f(a, b)
#define V_LOADN(p, n) ldn_nk_v4f(p, n)
#include "nk_kern_body.h"

/* bfloat16 products, portable: pairs unpacked to float32 (bit casts of
 * 32-bit vectors), two multiply-adds in VDPBF16PS's order; the products
 * of two bf16 are exact, so a*b + c rounds once like an FMA. */
typedef uint32_t nk_v4u __attribute__((vector_size(16)));
static inline nk_v4u nk_ldu_pairs(const uint16_t *p)
{
    nk_v4u v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline nk_v4u nk_bc_pair(const uint16_t *p)
{
    uint32_t x;
    memcpy(&x, p, 4);
    nk_v4u v = {x, x, x, x};
    return v;
}
static inline nk_v4f nk_dp_emul4(nk_v4f acc, nk_v4u a, nk_v4u b)
{
    acc = (nk_v4f)(a & 0xffff0000u) * (nk_v4f)(b & 0xffff0000u) + acc;
    return (nk_v4f)(a << 16) * (nk_v4f)(b << 16) + acc;
}
#define ISA_B generic
#define KERN_B nk_bkern_generic
#define F32KERN nk_skern_generic
#define PV nk_v4u
#define PV_LOADU(p) nk_ldu_pairs(p)
#define PV_BCAST(p) nk_bc_pair(p)
#define PV_DP(acc, a, b) nk_dp_emul4(acc, a, b)
#include "nk_kern_bf16_body.h"
#include "nk_kern_undef.h"

#define T double
#define S d
#define V nk_v2d
#define VL 2
#define NV 2
#define MR 4
#define MC 96
#define KC 256
#define NC 2048
#define KERN nk_dkern_generic
#define V_ZERO() bc_nk_v2d(0.0)
#define V_LOAD(p) ld_nk_v2d(p)
#define V_LOADU(p) ld_nk_v2d(p)
#define V_STOREU(p, v) st_nk_v2d(p, v)
#define V_BCAST(x) bc_nk_v2d(x)
#define V_FMA(a, b, c) ((a) * (b) + (c))
#define V_MUL(a, b) ((a) * (b))
#define V_ADD(a, b) ((a) + (b))
#define V_MAX(a, b) mx_nk_v2d(a, b)
#define V_LOADN(p, n) ldn_nk_v2d(p, n)
#include "nk_kern_body.h"
#include "nk_kern_undef.h"

double nk_fma_peak_generic(int dbl, int64_t iters)
{
    return dbl ? fma_peak_d_generic(iters) : fma_peak_s_generic(iters);
}

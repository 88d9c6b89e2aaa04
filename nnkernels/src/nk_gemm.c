/* GEMM drivers (float32, float64). */
#include <stdlib.h>
#include <string.h>
#include "nk_internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define NK_DIRECT_B_MAX_SLIVERS 16
#ifndef NK_MIN_FLOPS_PER_THREAD
#define NK_MIN_FLOPS_PER_THREAD 1.5e5
#endif

#define LOWP 0
#define T float
#define S s
#define ARGS nk_sgemm_args
#define KERNT nk_skern
#define EPT nk_sep
#define CURRENT nk_skern_current
#define nk_gemm_s nk_sgemm_f32
#include "nk_gemm_impl.h"
#undef T
#undef S
#undef ARGS
#undef KERNT
#undef EPT
#undef CURRENT

#define LOWP 0
#define T double
#define S d
#define ARGS nk_dgemm_args
#define KERNT nk_dkern
#define EPT nk_dep
#define CURRENT nk_dkern_current
#define nk_gemm_d nk_dgemm
#include "nk_gemm_impl.h"

#undef T
#undef S
#undef ARGS
#undef KERNT
#undef EPT
#undef CURRENT
#undef LOWP

/* float32 arguments, bfloat16 products (g->lowp) */
#define LOWP 1
#define T float
#define S sb
#define ARGS nk_sgemm_args
#define KERNT nk_bkern
#define EPT nk_sep
#define CURRENT nk_bkern_current
#define nk_gemm_sb nk_sgemm_bf16
#include "nk_gemm_impl.h"
#undef T
#undef S
#undef ARGS
#undef KERNT
#undef EPT
#undef CURRENT
#undef LOWP

int nk_sgemm(const nk_sgemm_args *g)
{
    return g->lowp ? nk_sgemm_bf16(g) : nk_sgemm_f32(g);
}

#define NK_DESC_TO(T, ARGS, dst, g)                                            \
    ARGS dst = {g->m, g->n, g->k,                                              \
                (const T *)g->a, g->rsa, g->csa,                               \
                (const T *)g->b, g->rsb, g->csb,                               \
                (T)g->alpha, (T)g->beta,                                       \
                (const T *)g->c, g->ldc, (T *)g->out, g->ldo,                  \
                (const T *)g->bias, g->act,                                    \
                (const T *)g->amask, g->rsam, g->csam, g->adact,               \
                (const T *)g->bmask, g->rsbm, g->csbm, g->bdact,               \
                (T *)g->bcolsum, g->bcolsum_accumulate, g->nthreads,        \
                g->pack_a, g->pack_a_ctx, g->lowp}

int nk_gemm(const nk_gemm_desc *g, int dbl)
{
    if (dbl) {
        NK_DESC_TO(double, nk_dgemm_args, d, g);
        return nk_dgemm(&d);
    }
    NK_DESC_TO(float, nk_sgemm_args, s, g);
    return nk_sgemm(&s);
}

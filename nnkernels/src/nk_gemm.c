/* GEMM drivers (float32, float64) and the packing-workspace arenas. */
#include <stdlib.h>
#include <string.h>
#include "nk_internal.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* A few process-wide arenas, each grown when a call needs more and then
 * reused, so steady-state calls touch no fresh pages.  Concurrent calls
 * (single-threaded GEMMs run side by side by the convolution's dW, or calls
 * from several Python threads) take different arenas; a call that finds all
 * busy gets a temporary buffer. */
#define NK_ARENAS 4
static void *g_arena[NK_ARENAS];
static size_t g_arena_size[NK_ARENAS];
static int g_arena_busy[NK_ARENAS];

static void *nk_aligned_alloc(size_t bytes)
{
    void *p = NULL;
    const size_t align = bytes >= (4u << 20) ? (2u << 20) : 64;
    if (posix_memalign(&p, align, bytes ? bytes : 64) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= (4u << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

static void *nk_workspace_acquire(size_t bytes, int *from_arena)
{
    for (int i = 0; i < NK_ARENAS; i++) {
        if (__atomic_test_and_set(&g_arena_busy[i], __ATOMIC_ACQUIRE)) continue;
        if (g_arena_size[i] < bytes) {
            free(g_arena[i]);
            g_arena_size[i] = 0;
            /* grow geometrically (and to whole 2 MiB units) */
            size_t want = bytes + bytes / 4;
            want = (want + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
            g_arena[i] = nk_aligned_alloc(want);
            if (!g_arena[i]) {
                __atomic_clear(&g_arena_busy[i], __ATOMIC_RELEASE);
                return NULL;
            }
            g_arena_size[i] = want;
        }
        *from_arena = i + 1;
        return g_arena[i];
    }
    *from_arena = 0;
    return nk_aligned_alloc(bytes);
}

static void nk_workspace_release(void *p, int from_arena)
{
    if (from_arena)
        __atomic_clear(&g_arena_busy[from_arena - 1], __ATOMIC_RELEASE);
    else
        free(p);
}

void nk_release_workspace(void)
{
    for (int i = 0; i < NK_ARENAS; i++) {
        if (!__atomic_test_and_set(&g_arena_busy[i], __ATOMIC_ACQUIRE)) {
            free(g_arena[i]);
            g_arena[i] = NULL;
            g_arena_size[i] = 0;
            __atomic_clear(&g_arena_busy[i], __ATOMIC_RELEASE);
        }
    }
}

#define NK_DIRECT_B_MAX_SLIVERS 16
#ifndef NK_MIN_FLOPS_PER_THREAD
#define NK_MIN_FLOPS_PER_THREAD 1.5e5
#endif

#define T float
#define S s
#define ARGS nk_sgemm_args
#define KERNT nk_skern
#define EPT nk_sep
#define CURRENT nk_skern_current
#define nk_gemm_s nk_sgemm
#include "nk_gemm_impl.h"
#undef T
#undef S
#undef ARGS
#undef KERNT
#undef EPT
#undef CURRENT

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
                g->pack_a, g->pack_a_ctx}

int nk_gemm(const nk_gemm_desc *g, int dbl)
{
    if (dbl) {
        NK_DESC_TO(double, nk_dgemm_args, d, g);
        return nk_dgemm(&d);
    }
    NK_DESC_TO(float, nk_sgemm_args, s, g);
    return nk_sgemm(&s);
}

/* 2-D convolution (NHWC): implicit-im2col GEMM and direct kernels.
 * See nk_conv.h for the algorithms and guarantees. */
#include <stdlib.h>
#include <string.h>
#include "nk_internal.h"
#include "nk_conv.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ------------------------------------------------------------- workspace
 * Process-wide arena (separate from the GEMM's, which is in use while our
 * GEMM calls run), grown when needed and then reused so steady-state calls
 * touch no fresh pages.  A concurrent caller that finds it busy gets a
 * temporary buffer. */
static void *g_conv_arena = NULL;
static size_t g_conv_arena_size = 0;
static int g_conv_arena_busy = 0;

static void *nk_conv_ws_acquire(size_t bytes, int *from_arena)
{
    if (!__atomic_test_and_set(&g_conv_arena_busy, __ATOMIC_ACQUIRE)) {
        if (g_conv_arena_size < bytes) {
            free(g_conv_arena);
            g_conv_arena = NULL;
            g_conv_arena_size = 0;
            size_t want = bytes + bytes / 4;
            want = (want + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
            if (posix_memalign(&g_conv_arena, 64, want) != 0) {
                g_conv_arena = NULL;
                __atomic_clear(&g_conv_arena_busy, __ATOMIC_RELEASE);
                return NULL;
            }
            g_conv_arena_size = want;
        }
        *from_arena = 1;
        return g_conv_arena;
    }
    void *p = NULL;
    *from_arena = 0;
    if (posix_memalign(&p, 64, bytes ? bytes : 64) != 0) return NULL;
    return p;
}

static void nk_conv_ws_release(void *p, int from_arena)
{
    if (from_arena)
        __atomic_clear(&g_conv_arena_busy, __ATOMIC_RELEASE);
    else
        free(p);
}

void nk_conv_release_workspace(void)
{
    if (!__atomic_test_and_set(&g_conv_arena_busy, __ATOMIC_ACQUIRE)) {
        free(g_conv_arena);
        g_conv_arena = NULL;
        g_conv_arena_size = 0;
        __atomic_clear(&g_conv_arena_busy, __ATOMIC_RELEASE);
    }
}

int64_t nk_conv_workspace_bytes(void) { return (int64_t)g_conv_arena_size; }

static int64_t g_col_budget = NK_CONV_COL_BUDGET;
void nk_conv_set_col_budget(int64_t bytes) { g_col_budget = bytes > 0 ? bytes : NK_CONV_COL_BUDGET; }

/* ---------------------------------------------------------------- helpers */

/* Window-packing context (see pack_win in nk_conv_body.h). */
typedef struct {
    const nk_conv_shape *s;    /* pack_wt only */
    const void *src, *mask;
    int64_t ga, gb;            /* row grid per image */
    int64_t sh, sw, sc;        /* source image (height, width, channels) */
    int64_t kw;
    int64_t sa, sb, oa, ob, ka, kb;
} nk_conv_win;

static int nk_conv_is_pointwise(const nk_conv_shape *s)
{
    return s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->pt == 0 && s->pl == 0 &&
           s->oh == s->h && s->ow == s->w;
}

static void nk_conv_win_fwd(nk_conv_win *cw, const nk_conv_shape *s, const void *x)
{
    memset(cw, 0, sizeof *cw);
    cw->s = s;
    cw->src = x;
    cw->ga = s->oh; cw->gb = s->ow;
    cw->sh = s->h; cw->sw = s->w; cw->sc = s->c; cw->kw = s->kw;
    cw->sa = s->sh; cw->sb = s->sw; cw->oa = -s->pt; cw->ob = -s->pl;
    cw->ka = s->dh; cw->kb = s->dw;
}

static void nk_conv_zero(void *p, size_t bytes, int nt)
{
    (void)nt;
#ifdef _OPENMP
    if (nt > 1 && bytes >= ((size_t)1 << 20)) {
        const size_t chunk = (bytes / (size_t)nt + 4095) & ~(size_t)4095;
#pragma omp parallel num_threads(nt)
        {
            const size_t a = chunk * (size_t)omp_get_thread_num();
            if (a < bytes) memset((char *)p + a, 0, bytes - a < chunk ? bytes - a : chunk);
        }
        return;
    }
#endif
    memset(p, 0, bytes);
}

/* Threads for our own parallel loops: the package setting, 1 inside another
 * team, and no more than one per ~1 MFLOP of work. */
static int nk_conv_threads(const nk_conv_shape *s, int nt, int pass)
{
    (void)pass;
    if (nt <= 0) nt = nk_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) return 1;
#else
    return 1;
#endif
    const double work = 2.0 * (double)s->n * (double)s->oh * (double)s->ow * (double)s->kh *
                        (double)s->kw * (double)s->c * (double)s->f;
    const double by_work = work / 1.0e6;
    if ((double)nt > by_work) nt = by_work < 1.0 ? 1 : (int)by_work;
    return nt < 1 ? 1 : nt;
}

/* algo="auto" heuristic (static, documented in nnkernels.conv2d):
 *  - few input channels (C < 8): direct for every product.  With C*KH*KW
 *    this small the GEMM's k (forward) or n (= C, data gradient) is a
 *    fraction of a register tile, so the GEMM wastes most of its work on
 *    packing and padding; the direct loops vectorise over F instead.
 *  - otherwise the implicit-im2col GEMM. */
int nk_conv_choose(const nk_conv_shape *s, int dbl, int pass)
{
    (void)dbl;
    (void)pass;
    if (s->c < 8) return NK_CONV_DIRECT;
    return NK_CONV_IM2COL;
}

#define NK_CONV_WGRAD_BLOCKS 16

/* -------------------------------------------- direct kernels, per ISA */
#define ISA generic
#define T float
#define S s
#define FB 32
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#define T double
#define S d
#define FB 16
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#undef ISA

#if NK_X86
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define ISA avx2
#define T float
#define S s
#define FB 32
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#define T double
#define S d
#define FB 16
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#undef ISA
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512dq,avx512vl,avx2,fma"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx512f,avx512dq,avx512vl,avx2,fma")
#endif
#define ISA avx512
#define T float
#define S s
#define FB 32
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#define T double
#define S d
#define FB 16
#include "nk_conv_direct.h"
#undef T
#undef S
#undef FB
#undef ISA
#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif
#endif /* NK_X86 */

/* ------------------------------------------------- per-dtype drivers */
#define T float
#define S s
#define ARGS nk_sgemm_args
#define GEMM nk_sgemm
#include "nk_conv_body.h"
#undef T
#undef S
#undef ARGS
#undef GEMM
#define T double
#define S d
#define ARGS nk_dgemm_args
#define GEMM nk_dgemm
#include "nk_conv_body.h"
#undef T
#undef S
#undef ARGS
#undef GEMM

int nk_conv2d_forward(const nk_conv_shape *s, int dbl, int algo, const void *x_nhwc,
                      const void *w_hwcf, const void *bias_f, int act, void *y_nhwf,
                      int nthreads)
{
    if (dbl)
        return forward_d(s, algo, (const double *)x_nhwc, (const double *)w_hwcf,
                         (const double *)bias_f, act, (double *)y_nhwf, nthreads);
    return forward_s(s, algo, (const float *)x_nhwc, (const float *)w_hwcf,
                     (const float *)bias_f, act, (float *)y_nhwf, nthreads);
}

int nk_conv2d_backward(const nk_conv_shape *s, int dbl, int algo, const void *dy_nhwf,
                       const void *x_nhwc, const void *w_hwcf, int act, const void *y_nhwf,
                       void *dx_nhwc, void *dw_hwcf, void *db_f, int nthreads)
{
    if (dbl)
        return backward_d(s, algo, (const double *)dy_nhwf, (const double *)x_nhwc,
                          (const double *)w_hwcf, act, (const double *)y_nhwf,
                          (double *)dx_nhwc, (double *)dw_hwcf, (double *)db_f, nthreads);
    return backward_s(s, algo, (const float *)dy_nhwf, (const float *)x_nhwc,
                      (const float *)w_hwcf, act, (const float *)y_nhwf, (float *)dx_nhwc,
                      (float *)dw_hwcf, (float *)db_f, nthreads);
}

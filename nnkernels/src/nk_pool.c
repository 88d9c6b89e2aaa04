/* 2-D max pooling on NHWC tensors: forward with int32 argmax, backward as a
 * scatter (indices only) or a gather (indices + geometry).  See nk_pool.h.
 *
 * Vectorised over channels (contiguous in NHWC).  The AVX-512 path uses
 * intrinsics with masked channel tails; AVX2 and the portable path compile
 * one plain-C body (auto-vectorised under each `#pragma GCC target`).  All
 * paths use the same comparison, so results are bitwise identical.
 * OpenMP over batch x output rows (forward), batch x input rows (gather) or
 * batch items (scatter); every output element is written by one thread, so
 * results do not depend on the thread count either.  Work is handed out in
 * small dynamic chunks: on a shared (oversubscribed) machine a descheduled
 * thread then delays the call by one chunk, not by half of the work.
 * Plain (not streaming) stores: streaming dx (backward) or y + idx (forward)
 * out of an L1 row buffer was measured slower here, 1.3x-1.7x at one thread
 * (the buffers of a training step are reused and partly stay in the 32 MiB
 * L3).
 */
#include <string.h>
#include "nk_internal.h"
#include "nk_target.h"
#include "nk_pool.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* ----------------------------------------------------------- plain C body --
 * FWD_ROW: one output row (n, oh) of y/idx.  The running max lives in the
 * output row itself (in L1); `upd` is the one comparison every path uses:
 * !(v <= best) && best == best  ==  v > best, or v NaN and best not NaN. */
#define NK_POOL_C_BODY(T, SUF)                                                           \
    static void fwd_row_##SUF(const nk_pool_geom *g, const T *restrict x_hwc, int64_t oh,\
                              T *restrict y_wc, int32_t *restrict i_wc)                  \
    {                                                                                    \
        const int64_t W = g->w, C = g->c;                                                \
        const int64_t h0 = oh * g->sh - g->pt;                                           \
        const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);                 \
        for (int64_t ow = 0; ow < g->ow; ow++) {                                         \
            const int64_t w0 = ow * g->sw - g->pl;                                       \
            const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);                \
            T *restrict yo = y_wc + ow * C;                                              \
            int32_t *restrict io = i_wc + ow * C;                                        \
            const int32_t p0 = (int32_t)(hs * W + ws);                                   \
            const T *restrict x0 = x_hwc + (int64_t)p0 * C;                              \
            for (int64_t c = 0; c < C; c++) {                                            \
                yo[c] = x0[c];                                                           \
                io[c] = p0;                                                              \
            }                                                                            \
            for (int64_t h = hs; h < he; h++)                                            \
                for (int64_t w = (h == hs ? ws + 1 : ws); w < we; w++) {                 \
                    const int32_t p = (int32_t)(h * W + w);                              \
                    const T *restrict xp = x_hwc + (int64_t)p * C;                       \
                    for (int64_t c = 0; c < C; c++) {                                    \
                        const T v = xp[c], b = yo[c];                                    \
                        const int upd = !(v <= b) & (b == b);                            \
                        yo[c] = upd ? v : b;                                             \
                        io[c] = upd ? p : io[c];                                         \
                    }                                                                    \
                }                                                                        \
        }                                                                                \
    }                                                                                    \
    /* GATHER_ROW: dx row (n, ih) from dy/idx of batch item n; returns matches. */      \
    static int64_t gather_row_##SUF(const nk_pool_geom *g, const T *restrict dy_n,       \
                                    const int32_t *restrict i_n, const T *restrict ym_n, \
                                    int64_t ih, T *restrict dx_wc)                       \
    {                                                                                    \
        const int64_t W = g->w, C = g->c, OW = g->ow;                                    \
        const int64_t ohl = nk_pool_win_lo(ih, g->pt, g->ph, g->sh);                     \
        const int64_t ohh = nk_imin64(nk_pool_win_hi(ih, g->pt, g->sh), g->oh - 1);      \
        int64_t cnt = 0;                                                                 \
        int64_t owl = 0, owh_ = nk_pool_win_hi(0, g->pl, g->sw);                         \
        for (int64_t iw = 0; iw < W; iw++) {                                             \
            /* windows containing iw, updated without divisions */                      \
            while (owl * g->sw - g->pl + g->pw <= iw) owl++;                             \
            while ((owh_ + 1) * g->sw - g->pl <= iw) owh_++;                             \
            const int64_t owh = nk_imin64(owh_, OW - 1);                                    \
            const int32_t pos = (int32_t)(ih * W + iw);                                  \
            T *restrict d = dx_wc + iw * C;                                              \
            for (int64_t c = 0; c < C; c++) d[c] = (T)0;                                 \
            for (int64_t oh = ohl; oh <= ohh; oh++)                                      \
                for (int64_t ow = owl; ow <= owh; ow++) {                                \
                    const int64_t o = (oh * OW + ow) * C;                                \
                    const T *restrict gy = dy_n + o;                                     \
                    const int32_t *restrict ix = i_n + o;                                \
                    int32_t k = 0;                                                       \
                    if (ym_n) {                                                          \
                        const T *restrict ym = ym_n + o;                                 \
                        for (int64_t c = 0; c < C; c++) {                                \
                            const int hit = ix[c] == pos;                                \
                            d[c] += hit & (ym[c] > (T)0) ? gy[c] : (T)0;                 \
                            k += hit;                                                    \
                        }                                                                \
                    } else {                                                             \
                        for (int64_t c = 0; c < C; c++) {                                \
                            const int hit = ix[c] == pos;                                \
                            d[c] += hit ? gy[c] : (T)0;                                  \
                            k += hit;                                                    \
                        }                                                                \
                    }                                                                    \
                    cnt += k;                                                            \
                }                                                                        \
        }                                                                                \
        return cnt;                                                                      \
    }

#if NK_X86
/* ---------------------------------------------------------------- AVX2 -- */
NK_TARGET_AVX2_BEGIN
NK_POOL_C_BODY(float, s_avx2)
NK_POOL_C_BODY(double, d_avx2)
NK_TARGET_END

/* ------------------------------------------------------------- AVX-512 -- */
NK_TARGET_AVX512_BEGIN
#include <immintrin.h>

static void fwd_row_s_avx512(const nk_pool_geom *g, const float *restrict x_hwc, int64_t oh,
                             float *restrict y_wc, int32_t *restrict i_wc)
{
    const int64_t W = g->w, C = g->c;
    const int64_t h0 = oh * g->sh - g->pt;
    const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);
    for (int64_t ow = 0; ow < g->ow; ow++) {
        const int64_t w0 = ow * g->sw - g->pl;
        const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);
        const int32_t p0 = (int32_t)(hs * W + ws);
        for (int64_t c = 0; c < C; c += 16) {
            const __mmask16 m = C - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
            __m512 best = _mm512_maskz_loadu_ps(m, x_hwc + (int64_t)p0 * C + c);
            __m512i bi = _mm512_set1_epi32(p0);
            for (int64_t h = hs; h < he; h++)
                for (int64_t w = (h == hs ? ws + 1 : ws); w < we; w++) {
                    const int32_t p = (int32_t)(h * W + w);
                    const __m512 v = _mm512_maskz_loadu_ps(m, x_hwc + (int64_t)p * C + c);
                    const __mmask16 ord = _mm512_cmp_ps_mask(best, best, _CMP_ORD_Q);
                    const __mmask16 u = _mm512_mask_cmp_ps_mask(ord, v, best, _CMP_NLE_UQ);
                    best = _mm512_mask_mov_ps(best, u, v);
                    bi = _mm512_mask_mov_epi32(bi, u, _mm512_set1_epi32(p));
                }
            _mm512_mask_storeu_ps(y_wc + ow * C + c, m, best);
            _mm512_mask_storeu_epi32(i_wc + ow * C + c, m, bi);
        }
    }
}

static void fwd_row_d_avx512(const nk_pool_geom *g, const double *restrict x_hwc, int64_t oh,
                             double *restrict y_wc, int32_t *restrict i_wc)
{
    const int64_t W = g->w, C = g->c;
    const int64_t h0 = oh * g->sh - g->pt;
    const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);
    for (int64_t ow = 0; ow < g->ow; ow++) {
        const int64_t w0 = ow * g->sw - g->pl;
        const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);
        const int32_t p0 = (int32_t)(hs * W + ws);
        for (int64_t c = 0; c < C; c += 8) {
            const __mmask8 m = C - c >= 8 ? (__mmask8)0xFF : (__mmask8)((1u << (C - c)) - 1);
            __m512d best = _mm512_maskz_loadu_pd(m, x_hwc + (int64_t)p0 * C + c);
            __m256i bi = _mm256_set1_epi32(p0);
            for (int64_t h = hs; h < he; h++)
                for (int64_t w = (h == hs ? ws + 1 : ws); w < we; w++) {
                    const int32_t p = (int32_t)(h * W + w);
                    const __m512d v = _mm512_maskz_loadu_pd(m, x_hwc + (int64_t)p * C + c);
                    const __mmask8 ord = _mm512_cmp_pd_mask(best, best, _CMP_ORD_Q);
                    const __mmask8 u = _mm512_mask_cmp_pd_mask(ord, v, best, _CMP_NLE_UQ);
                    best = _mm512_mask_mov_pd(best, u, v);
                    bi = _mm256_mask_mov_epi32(bi, u, _mm256_set1_epi32(p));
                }
            _mm512_mask_storeu_pd(y_wc + ow * C + c, m, best);
            _mm256_mask_storeu_epi32(i_wc + ow * C + c, m, bi);
        }
    }
}

static int64_t gather_row_s_avx512(const nk_pool_geom *g, const float *restrict dy_n,
                                   const int32_t *restrict i_n, const float *restrict ym_n,
                                   int64_t ih, float *restrict dx_wc)
{
    const int64_t W = g->w, C = g->c, OW = g->ow;
    const int64_t ohl = nk_pool_win_lo(ih, g->pt, g->ph, g->sh);
    const int64_t ohh = nk_imin64(nk_pool_win_hi(ih, g->pt, g->sh), g->oh - 1);
    int64_t cnt = 0;
    int64_t owl = 0, owh_ = nk_pool_win_hi(0, g->pl, g->sw);
    for (int64_t iw = 0; iw < W; iw++) {
        /* windows containing iw, updated without divisions */
        while (owl * g->sw - g->pl + g->pw <= iw) owl++;
        while ((owh_ + 1) * g->sw - g->pl <= iw) owh_++;
        const int64_t owh = nk_imin64(owh_, OW - 1);
        const __m512i pos = _mm512_set1_epi32((int32_t)(ih * W + iw));
        for (int64_t c = 0; c < C; c += 16) {
            const int full = C - c >= 16;
            const __mmask16 m = full ? (__mmask16)0xFFFF : (__mmask16)((1u << (C - c)) - 1);
            __m512 acc = _mm512_setzero_ps();
            for (int64_t oh = ohl; oh <= ohh; oh++)
                for (int64_t ow = owl; ow <= owh; ow++) {
                    const int64_t o = (oh * OW + ow) * C + c;
                    __mmask16 hit;
                    if (full) {
                        hit = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512((const void *)(i_n + o)), pos);
                        const __mmask16 add = ym_n ? _mm512_cmp_ps_mask(_mm512_loadu_ps(ym_n + o), _mm512_setzero_ps(), _CMP_GT_OQ) & hit : hit;
                        acc = _mm512_mask_add_ps(acc, add, acc, _mm512_loadu_ps(dy_n + o));
                    } else {
                        hit = _mm512_mask_cmpeq_epi32_mask(m, _mm512_maskz_loadu_epi32(m, i_n + o), pos);
                        const __mmask16 add = ym_n ? _mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(hit, ym_n + o), _mm512_setzero_ps(), _CMP_GT_OQ) & hit : hit;
                        acc = _mm512_mask_add_ps(acc, add, acc, _mm512_maskz_loadu_ps(add, dy_n + o));
                    }
                    cnt += __builtin_popcount((unsigned)hit);
                }
            if (full)
                _mm512_storeu_ps(dx_wc + iw * C + c, acc);
            else
                _mm512_mask_storeu_ps(dx_wc + iw * C + c, m, acc);
        }
    }
    return cnt;
}

static int64_t gather_row_d_avx512(const nk_pool_geom *g, const double *restrict dy_n,
                                   const int32_t *restrict i_n, const double *restrict ym_n,
                                   int64_t ih, double *restrict dx_wc)
{
    const int64_t W = g->w, C = g->c, OW = g->ow;
    const int64_t ohl = nk_pool_win_lo(ih, g->pt, g->ph, g->sh);
    const int64_t ohh = nk_imin64(nk_pool_win_hi(ih, g->pt, g->sh), g->oh - 1);
    int64_t cnt = 0;
    int64_t owl = 0, owh_ = nk_pool_win_hi(0, g->pl, g->sw);
    for (int64_t iw = 0; iw < W; iw++) {
        /* windows containing iw, updated without divisions */
        while (owl * g->sw - g->pl + g->pw <= iw) owl++;
        while ((owh_ + 1) * g->sw - g->pl <= iw) owh_++;
        const int64_t owh = nk_imin64(owh_, OW - 1);
        const __m256i pos = _mm256_set1_epi32((int32_t)(ih * W + iw));
        for (int64_t c = 0; c < C; c += 8) {
            const int full = C - c >= 8;
            const __mmask8 m = full ? (__mmask8)0xFF : (__mmask8)((1u << (C - c)) - 1);
            __m512d acc = _mm512_setzero_pd();
            for (int64_t oh = ohl; oh <= ohh; oh++)
                for (int64_t ow = owl; ow <= owh; ow++) {
                    const int64_t o = (oh * OW + ow) * C + c;
                    __mmask8 hit;
                    if (full) {
                        hit = _mm256_cmpeq_epi32_mask(_mm256_loadu_si256((const void *)(i_n + o)), pos);
                        const __mmask8 add = ym_n ? _mm512_cmp_pd_mask(_mm512_loadu_pd(ym_n + o), _mm512_setzero_pd(), _CMP_GT_OQ) & hit : hit;
                        acc = _mm512_mask_add_pd(acc, add, acc, _mm512_loadu_pd(dy_n + o));
                    } else {
                        hit = _mm256_mask_cmpeq_epi32_mask(m, _mm256_maskz_loadu_epi32(m, i_n + o), pos);
                        const __mmask8 add = ym_n ? _mm512_cmp_pd_mask(_mm512_maskz_loadu_pd(hit, ym_n + o), _mm512_setzero_pd(), _CMP_GT_OQ) & hit : hit;
                        acc = _mm512_mask_add_pd(acc, add, acc, _mm512_maskz_loadu_pd(add, dy_n + o));
                    }
                    cnt += __builtin_popcount((unsigned)hit);
                }
            if (full)
                _mm512_storeu_pd(dx_wc + iw * C + c, acc);
            else
                _mm512_mask_storeu_pd(dx_wc + iw * C + c, m, acc);
        }
    }
    return cnt;
}

#define ICMP16(m, ix, p) _mm512_mask_cmpeq_epi32_mask((m), (ix), _mm512_set1_epi32(p))
#define ICMP8(m, ix, p) _mm256_mask_cmpeq_epi32_mask((m), (ix), _mm256_set1_epi32(p))

/* Prefetch the dy, indices and mask (if any) of output row oh + 1 of the
 * same item (elements of es bytes; indices int32): the gather reads them cold. */
static inline void nov_prefetch_next(const nk_pool_geom *g, const void *dy_n, const int32_t *i_n,
                                     const void *ym_n, int64_t oh, size_t es)
{
    if (oh + 1 >= g->oh) return;
    const int64_t o = (oh + 1) * g->ow * g->c, n = g->ow * g->c;
    for (int64_t b = 0; b < n * (int64_t)es; b += 64) {
        __builtin_prefetch((const char *)dy_n + o * (int64_t)es + b);
        if (ym_n) __builtin_prefetch((const char *)ym_n + o * (int64_t)es + b);
    }
    for (int64_t b = 0; b < n * 4; b += 64) __builtin_prefetch((const char *)(i_n + o) + b);
}

/* Non-overlapping windows (strides == pool size): one task per output row
 * (n, oh) writes the dx rows of its windows; idx and dy are loaded once per
 * window.  dx rows / columns that no window covers ("valid" remainders) are
 * zeroed.  Same bits as the general gather (0 + dy where the index hits). */
static int64_t gather_nov_s_avx512(const nk_pool_geom *g, const float *restrict dy_n,
                                     const int32_t *restrict i_n, const float *restrict ym_n,
                                     int64_t oh, float *restrict dx_n)
{
    const int64_t W = g->w, C = g->c, OW = g->ow;
    const int64_t h0 = oh * g->sh - g->pt;
    nov_prefetch_next(g, dy_n, i_n, ym_n, oh, sizeof(float));
    const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);
    const int64_t wcov = nk_imin64(OW * g->sw - g->pl, W); /* columns >= wcov: no window */
    int64_t cnt = 0;
    const __m512 zero = _mm512_setzero_ps();
    /* dx row by row (one sequential write stream); the output row's idx
     * and dy are re-read from L1 for the window's later rows. */
    for (int64_t h = hs; h < he; h++)
        for (int64_t ow = 0; ow < OW; ow++) {
            const int64_t w0 = ow * g->sw - g->pl;
            const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);
            const int64_t o = (oh * OW + ow) * C;
            for (int64_t c = 0; c < C; c += 16) {
                const int full = C - c >= 16;
                const __mmask16 m = full ? (__mmask16)-1 : (__mmask16)((1u << (C - c)) - 1);
                const __m512i ix = full ? _mm512_loadu_si512((const void *)(i_n + o + c)) : _mm512_maskz_loadu_epi32(m, i_n + o + c);
                __m512 gy = full ? _mm512_loadu_ps(dy_n + o + c) : _mm512_maskz_loadu_ps(m, dy_n + o + c);
                if (ym_n) /* the ReLU derivative of the pooled value */
                    gy = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask(_mm512_maskz_loadu_ps(m, ym_n + o + c), zero, _CMP_GT_OQ), gy);
                for (int64_t w = ws; w < we; w++) {
                    const __mmask16 hit = ICMP16(m, ix, (int32_t)(h * W + w));
                    const __m512 v = _mm512_maskz_add_ps(hit, zero, gy);
                    float *d = dx_n + (h * W + w) * C + c;
                    if (full) _mm512_storeu_ps(d, v); else _mm512_mask_storeu_ps(d, m, v);
                    cnt += __builtin_popcount((unsigned)hit);
                }
            }
        }
    if (wcov < W)
        for (int64_t h = hs; h < he; h++)
            memset(dx_n + (h * W + nk_imax64(wcov, 0)) * C, 0,
                   sizeof(float) * (size_t)((W - nk_imax64(wcov, 0)) * C));
    if (oh == g->oh - 1 && he < g->h)
        memset(dx_n + he * W * C, 0, sizeof(float) * (size_t)((g->h - he) * W * C));
    return cnt;
}

static int64_t gather_nov_d_avx512(const nk_pool_geom *g, const double *restrict dy_n,
                                     const int32_t *restrict i_n, const double *restrict ym_n,
                                     int64_t oh, double *restrict dx_n)
{
    const int64_t W = g->w, C = g->c, OW = g->ow;
    const int64_t h0 = oh * g->sh - g->pt;
    nov_prefetch_next(g, dy_n, i_n, ym_n, oh, sizeof(double));
    const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);
    const int64_t wcov = nk_imin64(OW * g->sw - g->pl, W); /* columns >= wcov: no window */
    int64_t cnt = 0;
    const __m512d zero = _mm512_setzero_pd();
    /* dx row by row (one sequential write stream); the output row's idx
     * and dy are re-read from L1 for the window's later rows. */
    for (int64_t h = hs; h < he; h++)
        for (int64_t ow = 0; ow < OW; ow++) {
            const int64_t w0 = ow * g->sw - g->pl;
            const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);
            const int64_t o = (oh * OW + ow) * C;
            for (int64_t c = 0; c < C; c += 8) {
                const int full = C - c >= 8;
                const __mmask8 m = full ? (__mmask8)-1 : (__mmask8)((1u << (C - c)) - 1);
                const __m256i ix = full ? _mm256_loadu_si256((const __m256i *)(i_n + o + c)) : _mm256_maskz_loadu_epi32(m, i_n + o + c);
                __m512d gy = full ? _mm512_loadu_pd(dy_n + o + c) : _mm512_maskz_loadu_pd(m, dy_n + o + c);
                if (ym_n) /* the ReLU derivative of the pooled value */
                    gy = _mm512_maskz_mov_pd(_mm512_cmp_pd_mask(_mm512_maskz_loadu_pd(m, ym_n + o + c), zero, _CMP_GT_OQ), gy);
                for (int64_t w = ws; w < we; w++) {
                    const __mmask8 hit = ICMP8(m, ix, (int32_t)(h * W + w));
                    const __m512d v = _mm512_maskz_add_pd(hit, zero, gy);
                    double *d = dx_n + (h * W + w) * C + c;
                    if (full) _mm512_storeu_pd(d, v); else _mm512_mask_storeu_pd(d, m, v);
                    cnt += __builtin_popcount((unsigned)hit);
                }
            }
        }
    if (wcov < W)
        for (int64_t h = hs; h < he; h++)
            memset(dx_n + (h * W + nk_imax64(wcov, 0)) * C, 0,
                   sizeof(double) * (size_t)((W - nk_imax64(wcov, 0)) * C));
    if (oh == g->oh - 1 && he < g->h)
        memset(dx_n + he * W * C, 0, sizeof(double) * (size_t)((g->h - he) * W * C));
    return cnt;
}
NK_TARGET_END
#endif /* NK_X86 */

/* ------------------------------------------------------------ portable -- */
NK_POOL_C_BODY(float, s_generic)
NK_POOL_C_BODY(double, d_generic)

typedef void (*fwd_row_fn)(const nk_pool_geom *, const void *, int64_t, void *, int32_t *);
typedef int64_t (*gather_row_fn)(const nk_pool_geom *, const void *, const int32_t *,
                                 const void *, int64_t, void *);

static fwd_row_fn pick_fwd(int dbl)
{
#if NK_X86
    switch (nk_get_isa()) {
    case NK_ISA_AVX512:
        return dbl ? (fwd_row_fn)fwd_row_d_avx512 : (fwd_row_fn)fwd_row_s_avx512;
    case NK_ISA_AVX2:
        return dbl ? (fwd_row_fn)fwd_row_d_avx2 : (fwd_row_fn)fwd_row_s_avx2;
    }
#endif
    return dbl ? (fwd_row_fn)fwd_row_d_generic : (fwd_row_fn)fwd_row_s_generic;
}

static gather_row_fn pick_gather(int dbl)
{
#if NK_X86
    switch (nk_get_isa()) {
    case NK_ISA_AVX512:
        return dbl ? (gather_row_fn)gather_row_d_avx512 : (gather_row_fn)gather_row_s_avx512;
    case NK_ISA_AVX2:
        return dbl ? (gather_row_fn)gather_row_d_avx2 : (gather_row_fn)gather_row_s_avx2;
    }
#endif
    return dbl ? (gather_row_fn)gather_row_d_generic : (gather_row_fn)gather_row_s_generic;
}

void nk_max_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc,
                       int32_t *idx_nhwc, int dbl)
{
    const int64_t rows = g->n * g->oh;
    if (rows <= 0 || g->ow <= 0 || g->c <= 0) return;
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    const int64_t xplane = g->h * g->w * g->c, yrow = g->ow * g->c;
    const fwd_row_fn fn = pick_fwd(dbl);
    const int nt = nk_par_threads((int64_t)es * g->n * xplane, rows);
    const char *x = (const char *)x_nhwc;
    char *y = (char *)y_nhwc;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / g->oh, oh = r % g->oh;
        fn(g, x + es * (size_t)(n * xplane), oh, y + es * (size_t)(r * yrow), idx_nhwc + r * yrow);
    }
}

int64_t nk_max_pool2d_bwd_geom(const nk_pool_geom *g, const void *dy_nhwc,
                               const int32_t *idx_nhwc, const void *ym_nhwc, void *dx_nhwc,
                               int dbl)
{
    const int64_t rows = g->n * g->h;
    const int64_t nout = g->n * g->oh * g->ow * g->c;
    if (rows <= 0 || g->w <= 0 || g->c <= 0) return nout; /* nothing to gather into */
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    const int64_t yplane = g->oh * g->ow * g->c, xrow = g->w * g->c;
#if NK_X86
    if (nk_get_isa() == NK_ISA_AVX512 && g->sh == g->ph && g->sw == g->pw) {
        const int64_t orows = g->n * g->oh;
        const int64_t xplane = g->h * xrow;
        const int nt = nk_par_threads((int64_t)es * g->n * xplane, orows);
        const char *dy = (const char *)dy_nhwc;
        char *dx = (char *)dx_nhwc;
        int64_t matched = 0;
        if (orows <= 0) { /* no windows at all: dx is zero */
            memset(dx_nhwc, 0, es * (size_t)(g->n * xplane));
            return nout;
        }
#pragma omp parallel for num_threads(nt) schedule(dynamic, 4) reduction(+ : matched) if (nt > 1)
        for (int64_t r = 0; r < orows; r++) {
            const int64_t n = r / g->oh, oh = r % g->oh;
            if (dbl)
                matched += gather_nov_d_avx512(g, (const double *)dy + n * yplane, idx_nhwc + n * yplane,
                                               ym_nhwc ? (const double *)ym_nhwc + n * yplane : NULL,
                                               oh, (double *)dx + n * xplane);
            else
                matched += gather_nov_s_avx512(g, (const float *)dy + n * yplane, idx_nhwc + n * yplane,
                                               ym_nhwc ? (const float *)ym_nhwc + n * yplane : NULL,
                                               oh, (float *)dx + n * xplane);
        }
        (void)dy; (void)dx;
        return nout - matched;
    }
#endif
    const gather_row_fn fn = pick_gather(dbl);
    const int nt = nk_par_threads((int64_t)es * g->n * g->h * xrow, rows);
    const char *dy = (const char *)dy_nhwc;
    char *dx = (char *)dx_nhwc;
    int64_t matched = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8) reduction(+ : matched) if (nt > 1)
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / g->h, ih = r % g->h;
        matched += fn(g, dy + es * (size_t)(n * yplane), idx_nhwc + n * yplane,
                      ym_nhwc ? (const char *)ym_nhwc + es * (size_t)(n * yplane) : NULL, ih,
                      dx + es * (size_t)(r * xrow));
    }
    return nout - matched;
}

#define NK_SCATTER(T)                                                                    \
    do {                                                                                 \
        const T *dyp = (const T *)dy_nhwc;                                               \
        T *dxp = (T *)dx_nhwc;                                                           \
        _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(+ : bad) if (nt > 1)") \
        for (int64_t it = 0; it < items; it++) {                                         \
            const int64_t b = it / nblk, c0 = (it % nblk) * cbs, c1 = nk_imin64(c0 + cbs, c); \
            T *restrict d = dxp + b * hw * c;                                            \
            const T *restrict gy = dyp + b * ohw * c;                                    \
            const int32_t *restrict ix = idx_nhwc + b * ohw * c;                         \
            const T *restrict ym = ym_nhwc ? (const T *)ym_nhwc + b * ohw * c : NULL;     \
            if (nblk == 1)                                                               \
                memset(d, 0, sizeof(T) * (size_t)(hw * c));                              \
            else                                                                         \
                for (int64_t p = 0; p < hw; p++)                                         \
                    memset(d + p * c + c0, 0, sizeof(T) * (size_t)(c1 - c0));           \
            for (int64_t o = 0; o < ohw; o++)                                            \
                for (int64_t k = c0; k < c1; k++) {                                      \
                    const uint32_t p = (uint32_t)ix[o * c + k];                          \
                    if (p < (uint64_t)hw)                                                \
                        d[(int64_t)p * c + k] +=                                         \
                            !ym || ym[o * c + k] > (T)0 ? gy[o * c + k] : (T)0;          \
                    else                                                                 \
                        bad++;                                                           \
                }                                                                        \
        }                                                                                \
    } while (0)

/* Do the indices of output row 0 of item 0 lie in the windows of g? */
static int sample_in_windows(const nk_pool_geom *g, const int32_t *idx_nhwc)
{
    for (int64_t ow = 0; ow < g->ow; ow++) {
        const int64_t w0 = ow * g->sw;
        for (int64_t k = 0; k < g->c; k++) {
            const int64_t p = idx_nhwc[ow * g->c + k];
            if (p < 0 || p >= g->ph * g->w) return 0;
            const int64_t wp = p % g->w;
            if (wp < w0 || wp >= w0 + g->pw) return 0;
        }
    }
    return 1;
}

int64_t nk_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t oh,
                          int64_t ow, const void *dy_nhwc, const int32_t *idx_nhwc,
                          const void *ym_nhwc, void *dx_nhwc, int dbl)
{
    const int64_t hw = h * w, ohw = oh * ow;
    if (n <= 0 || hw <= 0 || c <= 0) return 0;
    /* Fast path: guess the common geometry, non-overlapping "valid" windows
     * of (h / oh) x (w / ow) with strides equal to them.  If every index lies
     * inside its guessed window, each dx element is hit from at most one
     * window, so the gather's result (0 + dy where the index points) is the
     * scatter's, bit for bit.  A quick look at one output row rejects most
     * wrong guesses (e.g. 3x3 / stride 2) before the full pass; if the full
     * pass still finds a stray index, the scatter below redoes dx. */
    if (oh > 0 && ow > 0 && h / oh >= 1 && w / ow >= 1) {
        const nk_pool_geom g = {n, h, w, c, oh, ow, h / oh, w / ow, h / oh, w / ow, 0, 0};
        if (sample_in_windows(&g, idx_nhwc) &&
            nk_max_pool2d_bwd_geom(&g, dy_nhwc, idx_nhwc, ym_nhwc, dx_nhwc, dbl) == 0)
            return 0;
    }
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    int nt = nk_par_threads((int64_t)es * n * hw * c, n * c);
    /* Items: batch entries, split into channel blocks when there are fewer
     * entries than threads (each block then owns a disjoint slice of dx). */
    int64_t nblk = 1, cbs = c;
    if (n < nt) {
        nblk = nk_imin64((nt + n - 1) / n, c);
        cbs = (c + nblk - 1) / nblk;
        nblk = (c + cbs - 1) / cbs;
    }
    const int64_t items = n * nblk;
    if (items < nt) nt = (int)items;
    int64_t bad = 0;
    if (dbl)
        NK_SCATTER(double);
    else
        NK_SCATTER(float);
    return bad;
}

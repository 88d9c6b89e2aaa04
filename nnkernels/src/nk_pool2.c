/* Average pooling, global average / max pooling, nearest upsampling and zero
 * padding / cropping on NHWC tensors, forward and backward.  See nk_pool2.h.
 *
 * One plain-C body per data type, compiled for each ISA path (portable, AVX2,
 * AVX-512 under `#pragma GCC target`) and auto-vectorised over channels (the
 * contiguous axis in NHWC); the dispatch table is picked per call from
 * nk_get_isa().  Every path does the same IEEE operations in the same order
 * (adds and divisions only, so no FMA contraction can change a bit), hence
 * bitwise-identical results across paths.
 * OpenMP over output rows (or, for the global forward passes, over batch
 * items x channel blocks), handed out in small dynamic chunks; each output
 * element is computed by one thread in a fixed order, so results do not
 * depend on the thread count.  Gathers, not scatters: every output element is
 * written exactly once and nothing is zeroed first.  Pure copies (upsampling
 * forward, padding, cropping) move bits (memcpy / integer loads) and do not
 * depend on the ISA.  No kernel allocates (the accumulators of the global
 * average are a fixed-size stack block).
 */
#include <math.h>
#include <string.h>
#include "nk_internal.h"
#include "nk_target.h"
#include "nk_pool2.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Channels per accumulator block of the global average (stack doubles). */
#define NK_GBLK 64

/* Run the statements after `bytes` for r in [0, rows), in chunks of whole
 * rows of about NK_PAR_CHUNK elements (`row_elems` per row) handed out
 * dynamically; threads as for every memory-bound pass (nk_par_threads). */
#define NK_ROWS_PARALLEL(r, rows, row_elems, bytes, ...)                                 \
    do {                                                                                 \
        const int64_t rows_ = (rows);                                                    \
        const int64_t rpc_ = nk_imax64(1, NK_PAR_CHUNK / nk_imax64((row_elems), 1));     \
        const int64_t nch_ = (rows_ + rpc_ - 1) / rpc_;                                  \
        const int nt_ = nk_par_threads((bytes), nch_);                                   \
        (void)nt_; /* only read by the pragma */                                        \
        _Pragma("omp parallel for num_threads(nt_) schedule(dynamic, 1) if (nt_ > 1)")   \
        for (int64_t ch_ = 0; ch_ < nch_; ch_++) {                                       \
            const int64_t r1_ = nk_imin64((ch_ + 1) * rpc_, rows_);                      \
            for (int64_t r = ch_ * rpc_; r < r1_; r++) {                                 \
                __VA_ARGS__;                                                             \
            }                                                                            \
        }                                                                                \
    } while (0)

typedef struct {
    /* one output row (n, oh) of avg pooling from batch item n's x plane */
    void (*avg_fwd_row)(const nk_pool_geom *g, const void *x_n, int64_t oh, void *y_row);
    /* one dx row (n, ih) of avg pooling from batch item n's dy */
    void (*avg_bwd_row)(const nk_pool_geom *g, const void *dy_n, int64_t ih, void *dx_row);
    /* channels [c0, c1) of one item's global average / maximum */
    void (*gavg_fwd)(int64_t hw, int64_t C, const void *x_n, int64_t c0, int64_t c1, void *y_n);
    void (*gmax_fwd)(int64_t hw, int64_t C, const void *x_n, int64_t c0, int64_t c1, void *y_n,
                     int32_t *i_n);
    /* one dx row (n, hh) of the global average / maximum */
    void (*gavg_bwd_row)(int64_t W, int64_t C, int64_t hw, const void *dy_n, void *dx_row);
    void (*gmax_bwd_row)(int64_t hh, int64_t W, int64_t C, const void *dy_n, const int32_t *i_n,
                         void *dx_row);
    /* one dx row of the upsampling backward from its sh dy rows */
    void (*up_bwd_row)(int64_t W, int64_t C, int64_t sh, int64_t sw, const void *dy_rows,
                       void *dx_row);
} pool2_fns;

/* ----------------------------------------------------------- plain C body -- */
#define NK_POOL2_BODY(T, SUF)                                                            \
    static void avg_fwd_row_##SUF(const nk_pool_geom *g, const void *x_n_, int64_t oh,  \
                                  void *y_row_)                                          \
    {                                                                                    \
        const T *restrict x_hwc = (const T *)x_n_;                                       \
        T *restrict y_wc = (T *)y_row_;                                                  \
        const int64_t W = g->w, C = g->c;                                                \
        const int64_t h0 = oh * g->sh - g->pt;                                           \
        const int64_t hs = nk_imax64(h0, 0), he = nk_imin64(h0 + g->ph, g->h);           \
        for (int64_t ow = 0; ow < g->ow; ow++) {                                         \
            const int64_t w0 = ow * g->sw - g->pl;                                       \
            const int64_t ws = nk_imax64(w0, 0), we = nk_imin64(w0 + g->pw, W);          \
            T *restrict yo = y_wc + ow * C;                                              \
            if (he <= hs || we <= ws) { /* empty window (not a Keras geometry) */       \
                for (int64_t c = 0; c < C; c++) yo[c] = (T)NAN;                          \
                continue;                                                                \
            }                                                                            \
            const T k = (T)((he - hs) * (we - ws));                                      \
            const T *restrict x0 = x_hwc + (hs * W + ws) * C;                            \
            for (int64_t c = 0; c < C; c++) yo[c] = x0[c];                               \
            for (int64_t h = hs; h < he; h++)                                            \
                for (int64_t w = (h == hs ? ws + 1 : ws); w < we; w++) {                 \
                    const T *restrict xp = x_hwc + (h * W + w) * C;                      \
                    for (int64_t c = 0; c < C; c++) yo[c] += xp[c];                      \
                }                                                                        \
            for (int64_t c = 0; c < C; c++) yo[c] = yo[c] / k;                           \
        }                                                                                \
    }                                                                                    \
    static void avg_bwd_row_##SUF(const nk_pool_geom *g, const void *dy_n_, int64_t ih, \
                                  void *dx_row_)                                         \
    {                                                                                    \
        const T *restrict dy_n = (const T *)dy_n_;                                       \
        T *restrict dx_wc = (T *)dx_row_;                                                \
        const int64_t W = g->w, C = g->c, OW = g->ow;                                    \
        const int64_t ohl = nk_pool_win_lo(ih, g->pt, g->ph, g->sh);                     \
        const int64_t ohh = nk_imin64(nk_pool_win_hi(ih, g->pt, g->sh), g->oh - 1);      \
        int64_t owl = 0, owh_ = nk_pool_win_hi(0, g->pl, g->sw);                         \
        for (int64_t iw = 0; iw < W; iw++) {                                             \
            /* windows containing iw, updated without divisions */                      \
            while (owl * g->sw - g->pl + g->pw <= iw) owl++;                             \
            while ((owh_ + 1) * g->sw - g->pl <= iw) owh_++;                             \
            const int64_t owh = nk_imin64(owh_, OW - 1);                                 \
            T *restrict d = dx_wc + iw * C;                                              \
            for (int64_t c = 0; c < C; c++) d[c] = (T)0;                                 \
            for (int64_t oh = ohl; oh <= ohh; oh++) {                                    \
                const int64_t r0 = oh * g->sh - g->pt;                                   \
                const int64_t kh = nk_imin64(r0 + g->ph, g->h) - nk_imax64(r0, 0);       \
                for (int64_t ow = owl; ow <= owh; ow++) {                                \
                    const int64_t q0 = ow * g->sw - g->pl;                               \
                    const T k = (T)(kh * (nk_imin64(q0 + g->pw, W) - nk_imax64(q0, 0))); \
                    const T *restrict gy = dy_n + (oh * OW + ow) * C;                    \
                    for (int64_t c = 0; c < C; c++) d[c] += gy[c] / k;                   \
                }                                                                        \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static void gavg_fwd_##SUF(int64_t hw, int64_t C, const void *x_n_, int64_t c0,      \
                               int64_t c1, void *y_n_)                                   \
    {                                                                                    \
        const T *restrict x_n = (const T *)x_n_;                                         \
        T *restrict y_n = (T *)y_n_;                                                     \
        double acc[NK_GBLK];                                                             \
        for (int64_t cb = c0; cb < c1; cb += NK_GBLK) {                                  \
            const int64_t nc = nk_imin64(NK_GBLK, c1 - cb);                              \
            for (int64_t c = 0; c < nc; c++) acc[c] = 0.0;                               \
            for (int64_t p = 0; p < hw; p++) {                                           \
                const T *restrict xp = x_n + p * C + cb;                                 \
                for (int64_t c = 0; c < nc; c++) acc[c] += (double)xp[c];                \
            }                                                                            \
            for (int64_t c = 0; c < nc; c++) y_n[cb + c] = (T)(acc[c] / (double)hw);     \
        }                                                                                \
    }                                                                                    \
    static void gmax_fwd_##SUF(int64_t hw, int64_t C, const void *x_n_, int64_t c0,      \
                               int64_t c1, void *y_n_, int32_t *restrict i_n)            \
    {                                                                                    \
        const T *restrict x_n = (const T *)x_n_ + c0;                                    \
        T *restrict yo = (T *)y_n_ + c0;                                                 \
        int32_t *restrict io = i_n + c0;                                                 \
        const int64_t nc = c1 - c0;                                                      \
        for (int64_t c = 0; c < nc; c++) {                                               \
            yo[c] = x_n[c];                                                              \
            io[c] = 0;                                                                   \
        }                                                                                \
        for (int64_t p = 1; p < hw; p++) {                                               \
            const T *restrict xp = x_n + p * C;                                          \
            const int32_t pi = (int32_t)p;                                               \
            for (int64_t c = 0; c < nc; c++) {                                           \
                /* v > best, or v NaN and best not (as nk_max_pool2d_fwd) */            \
                const T v = xp[c], b = yo[c];                                            \
                const int upd = !(v <= b) & (b == b);                                    \
                yo[c] = upd ? v : b;                                                     \
                io[c] = upd ? pi : io[c];                                                \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static void gavg_bwd_row_##SUF(int64_t W, int64_t C, int64_t hw, const void *dy_n_,  \
                                   void *dx_row_)                                        \
    {                                                                                    \
        const T *restrict dy_n = (const T *)dy_n_;                                       \
        T *restrict dx = (T *)dx_row_;                                                   \
        if (W <= 0) return;                                                              \
        const T k = (T)hw;                                                               \
        for (int64_t c = 0; c < C; c++) dx[c] = dy_n[c] / k;                             \
        for (int64_t w = 1; w < W; w++) memcpy(dx + w * C, dx, sizeof(T) * (size_t)C);  \
    }                                                                                    \
    static void gmax_bwd_row_##SUF(int64_t hh, int64_t W, int64_t C, const void *dy_n_, \
                                   const int32_t *restrict i_n, void *dx_row_)           \
    {                                                                                    \
        const T *restrict dy_n = (const T *)dy_n_;                                       \
        T *restrict dx = (T *)dx_row_;                                                   \
        for (int64_t w = 0; w < W; w++) {                                                \
            const int32_t p = (int32_t)(hh * W + w);                                     \
            T *restrict d = dx + w * C;                                                  \
            for (int64_t c = 0; c < C; c++) d[c] = i_n[c] == p ? dy_n[c] : (T)0;         \
        }                                                                                \
    }                                                                                    \
    static void up_bwd_row_##SUF(int64_t W, int64_t C, int64_t sh, int64_t sw,           \
                                 const void *dy_rows_, void *dx_row_)                    \
    {                                                                                    \
        const T *restrict dy = (const T *)dy_rows_;                                      \
        T *restrict dx = (T *)dx_row_;                                                   \
        const int64_t OWC = W * sw * C;                                                  \
        for (int64_t iw = 0; iw < W; iw++) {                                             \
            T *restrict d = dx + iw * C;                                                 \
            const T *restrict s0 = dy + iw * sw * C;                                     \
            for (int64_t c = 0; c < C; c++) d[c] = s0[c];                                \
            for (int64_t a = 0; a < sh; a++)                                             \
                for (int64_t b = (a == 0 ? 1 : 0); b < sw; b++) {                        \
                    const T *restrict s = s0 + a * OWC + b * C;                          \
                    for (int64_t c = 0; c < C; c++) d[c] += s[c];                        \
                }                                                                        \
        }                                                                                \
    }                                                                                    \
    static const pool2_fns tab_##SUF = {avg_fwd_row_##SUF,  avg_bwd_row_##SUF,           \
                                        gavg_fwd_##SUF,     gmax_fwd_##SUF,              \
                                        gavg_bwd_row_##SUF, gmax_bwd_row_##SUF,          \
                                        up_bwd_row_##SUF};

#if NK_X86
NK_TARGET_AVX2_BEGIN
NK_POOL2_BODY(float, s_avx2)
NK_POOL2_BODY(double, d_avx2)
NK_TARGET_END

NK_TARGET_AVX512_BEGIN
NK_POOL2_BODY(float, s_avx512)
NK_POOL2_BODY(double, d_avx512)
NK_TARGET_END
#endif

NK_POOL2_BODY(float, s_generic)
NK_POOL2_BODY(double, d_generic)

static const pool2_fns *pick(int dbl)
{
#if NK_X86
    switch (nk_get_isa()) {
    case NK_ISA_AVX512:
        return dbl ? &tab_d_avx512 : &tab_s_avx512;
    case NK_ISA_AVX2:
        return dbl ? &tab_d_avx2 : &tab_s_avx2;
    }
#endif
    return dbl ? &tab_d_generic : &tab_s_generic;
}

static inline size_t esize(int dbl) { return dbl ? sizeof(double) : sizeof(float); }

/* ------------------------------------------------------- average pooling -- */
void nk_avg_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc, int dbl)
{
    const int64_t rows = g->n * g->oh;
    if (rows <= 0 || g->ow <= 0 || g->c <= 0) return;
    const size_t es = esize(dbl);
    const int64_t xplane = g->h * g->w * g->c, yrow = g->ow * g->c;
    const pool2_fns *f = pick(dbl);
    const char *x = (const char *)x_nhwc;
    char *y = (char *)y_nhwc;
    /* work per output row: about ph * pw loads per output element */
    const int64_t work = yrow * nk_imin64(g->ph * g->pw, 64);
    NK_ROWS_PARALLEL(r, rows, work, (int64_t)es * (g->n * xplane + rows * yrow),
                     const int64_t n = r / g->oh;
                     f->avg_fwd_row(g, x + es * (size_t)(n * xplane), r - n * g->oh,
                                    y + es * (size_t)(r * yrow)));
}

void nk_avg_pool2d_bwd(const nk_pool_geom *g, const void *dy_nhwc, void *dx_nhwc, int dbl)
{
    const int64_t rows = g->n * g->h;
    if (rows <= 0 || g->w <= 0 || g->c <= 0) return;
    const size_t es = esize(dbl);
    const int64_t yplane = g->oh * g->ow * g->c, xrow = g->w * g->c;
    const pool2_fns *f = pick(dbl);
    const char *dy = (const char *)dy_nhwc;
    char *dx = (char *)dx_nhwc;
    NK_ROWS_PARALLEL(r, rows, xrow, (int64_t)es * (rows * xrow + g->n * yplane),
                     const int64_t n = r / g->h;
                     f->avg_bwd_row(g, dy + es * (size_t)(n * yplane), r - n * g->h,
                                    dx + es * (size_t)(r * xrow)));
}

/* -------------------------------------------------------- global pooling -- */

/* Channel block of the global forward passes: all channels when there are
 * enough batch items for the threads, else blocks of a multiple of 16
 * channels (a 64-byte line of float32) giving about 4 tasks per thread.
 * The result does not depend on the block (each channel is summed alone). */
static int64_t global_cblock(int64_t n, int64_t c, int64_t bytes)
{
    const int nt = nk_par_threads(bytes, n * ((c + 15) / 16));
    if (nt <= 1 || n >= 4 * nt) return c;
    const int64_t want = (n * c + 4 * nt - 1) / (4 * nt);
    const int64_t cb = nk_imax64(16, (want + 15) / 16 * 16);
    return nk_imin64(cb, c);
}

#define NK_GLOBAL_FWD_LOOP(CALL)                                                         \
    do {                                                                                 \
        const int64_t bytes_ = (int64_t)es * (n * hw * c + n * c);                       \
        const int64_t cb = global_cblock(n, c, bytes_);                                  \
        const int64_t nblk = (c + cb - 1) / cb, tasks = n * nblk;                        \
        const int nt = nk_par_threads(bytes_, tasks);                                    \
        (void)nt;                                                                        \
        _Pragma("omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)")     \
        for (int64_t t = 0; t < tasks; t++) {                                            \
            const int64_t i = t / nblk, c0 = (t - i * nblk) * cb;                        \
            const int64_t c1 = nk_imin64(c0 + cb, c);                                    \
            CALL;                                                                        \
        }                                                                                \
    } while (0)

void nk_global_avg_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                              void *y_nc, int dbl)
{
    const int64_t hw = h * w;
    if (n <= 0 || c <= 0 || hw <= 0) return;
    const size_t es = esize(dbl);
    const pool2_fns *f = pick(dbl);
    const char *x = (const char *)x_nhwc;
    char *y = (char *)y_nc;
    NK_GLOBAL_FWD_LOOP(f->gavg_fwd(hw, c, x + es * (size_t)(i * hw * c), c0, c1,
                                   y + es * (size_t)(i * c)));
}

void nk_global_max_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                              void *y_nc, int32_t *idx_nc, int dbl)
{
    const int64_t hw = h * w;
    if (n <= 0 || c <= 0 || hw <= 0) return;
    const size_t es = esize(dbl);
    const pool2_fns *f = pick(dbl);
    const char *x = (const char *)x_nhwc;
    char *y = (char *)y_nc;
    NK_GLOBAL_FWD_LOOP(f->gmax_fwd(hw, c, x + es * (size_t)(i * hw * c), c0, c1,
                                   y + es * (size_t)(i * c), idx_nc + i * c));
}

void nk_global_avg_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *dy_nc,
                              void *dx_nhwc, int dbl)
{
    const int64_t rows = n * h, hw = h * w;
    if (rows <= 0 || w <= 0 || c <= 0) return;
    const size_t es = esize(dbl);
    const pool2_fns *f = pick(dbl);
    const char *dy = (const char *)dy_nc;
    char *dx = (char *)dx_nhwc;
    NK_ROWS_PARALLEL(r, rows, w * c, (int64_t)es * (rows * w * c),
                     f->gavg_bwd_row(w, c, hw, dy + es * (size_t)((r / h) * c),
                                     dx + es * (size_t)(r * w * c)));
}

int64_t nk_global_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *dy_nc,
                                 const int32_t *idx_nc, void *dx_nhwc, int dbl)
{
    const int64_t rows = n * h, hw = h * w;
    int64_t bad = 0;
    for (int64_t i = 0; i < n * c; i++) bad += idx_nc[i] < 0 || (int64_t)idx_nc[i] >= hw;
    if (rows <= 0 || w <= 0 || c <= 0) return bad;
    const size_t es = esize(dbl);
    const pool2_fns *f = pick(dbl);
    const char *dy = (const char *)dy_nc;
    char *dx = (char *)dx_nhwc;
    NK_ROWS_PARALLEL(r, rows, w * c, (int64_t)es * (rows * w * c),
                     const int64_t i = r / h;
                     f->gmax_bwd_row(r - i * h, w, c, dy + es * (size_t)(i * c), idx_nc + i * c,
                                     dx + es * (size_t)(r * w * c)));
    return bad;
}

/* ------------------------------------------------------------ upsampling -- */

/* sh output rows from one input row (bit copies: the same on every path). */
#define NK_UP_FWD(U, SUF)                                                                \
    static void up_fwd_rows_##SUF(int64_t W, int64_t C, int64_t sh, int64_t sw,          \
                                  const U *restrict x_row, U *restrict y_rows)           \
    {                                                                                    \
        const int64_t OWC = W * sw * C;                                                  \
        for (int64_t iw = 0; iw < W; iw++) {                                             \
            const U *restrict xp = x_row + iw * C;                                       \
            U *restrict yp = y_rows + iw * sw * C;                                       \
            if (C == 1) {                                                                \
                for (int64_t b = 0; b < sw; b++) yp[b] = xp[0];                          \
            } else {                                                                     \
                for (int64_t b = 0; b < sw; b++)                                         \
                    for (int64_t q = 0; q < C; q++) yp[b * C + q] = xp[q];               \
            }                                                                            \
        }                                                                                \
        for (int64_t a = 1; a < sh; a++)                                                 \
            memcpy(y_rows + a * OWC, y_rows, sizeof(U) * (size_t)OWC);                   \
    }
NK_UP_FWD(uint32_t, 4)
NK_UP_FWD(uint64_t, 8)

void nk_upsample2d_nearest_fwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                               int64_t sw, const void *x_nhwc, void *y_nhwc, int dbl)
{
    const int64_t rows = n * h, owc = w * sw * c;
    if (rows <= 0 || owc <= 0 || sh <= 0) return;
    const size_t es = esize(dbl);
    const char *x = (const char *)x_nhwc;
    char *y = (char *)y_nhwc;
    NK_ROWS_PARALLEL(r, rows, sh * owc, (int64_t)es * (rows * w * c + rows * sh * owc),
                     const void *xr = x + es * (size_t)(r * w * c);
                     void *yr = y + es * (size_t)(r * sh * owc);
                     if (dbl) up_fwd_rows_8(w, c, sh, sw, (const uint64_t *)xr, (uint64_t *)yr);
                     else up_fwd_rows_4(w, c, sh, sw, (const uint32_t *)xr, (uint32_t *)yr));
}

void nk_upsample2d_nearest_bwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                               int64_t sw, const void *dy_nhwc, void *dx_nhwc, int dbl)
{
    const int64_t rows = n * h, owc = w * sw * c;
    if (rows <= 0 || w <= 0 || c <= 0 || sh <= 0 || sw <= 0) return;
    const size_t es = esize(dbl);
    const pool2_fns *f = pick(dbl);
    const char *dy = (const char *)dy_nhwc;
    char *dx = (char *)dx_nhwc;
    NK_ROWS_PARALLEL(r, rows, sh * owc, (int64_t)es * (rows * w * c + rows * sh * owc),
                     f->up_bwd_row(w, c, sh, sw, dy + es * (size_t)(r * sh * owc),
                                   dx + es * (size_t)(r * w * c)));
}

/* -------------------------------------------------------- pad and crop -- */
void nk_copy2d_nhwc(int64_t n, int64_t c, int64_t hs, int64_t ws, const void *src_nhwc,
                    int64_t hd, int64_t wd, int64_t off_h, int64_t off_w, void *dst_nhwc,
                    int dbl)
{
    const int64_t rows = n * hd;
    if (rows <= 0 || wd <= 0 || c <= 0) return;
    const size_t es = esize(dbl);
    const size_t pix = es * (size_t)c; /* bytes per pixel */
    /* destination columns [j0, j1) have a source column */
    const int64_t j0 = nk_imin64(nk_imax64(-off_w, 0), wd);
    const int64_t j1 = nk_imax64(nk_imin64(ws - off_w, wd), j0);
    const char *src = (const char *)src_nhwc;
    char *dst = (char *)dst_nhwc;
    NK_ROWS_PARALLEL(r, rows, wd * c, (int64_t)es * 2 * rows * wd * c,
                     const int64_t i = r / hd;
                     const int64_t si = r - i * hd + off_h;
                     char *d = dst + pix * (size_t)(r * wd);
                     if (si < 0 || si >= hs || j1 == j0) {
                         memset(d, 0, pix * (size_t)wd);
                     } else {
                         memset(d, 0, pix * (size_t)j0);
                         memcpy(d + pix * (size_t)j0,
                                src + pix * (size_t)((i * hs + si) * ws + j0 + off_w),
                                pix * (size_t)(j1 - j0));
                         memset(d + pix * (size_t)j1, 0, pix * (size_t)(wd - j1));
                     });
}

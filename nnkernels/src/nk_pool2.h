/* nnkernels: average pooling, global average / max pooling, nearest-neighbour
 * upsampling and zero padding / cropping on NHWC tensors, float32 ("dbl" = 0)
 * and float64 ("dbl" = 1), with their backward passes.
 *
 * All arrays are C-contiguous; sizes are element counts.  Every kernel writes
 * each output element exactly once (no separate zeroing pass), from one
 * thread, summing in a fixed order: the result is the same bit for bit on
 * every ISA path and for every thread count.  No kernel allocates.
 */
#ifndef NK_POOL2_H
#define NK_POOL2_H
#include <stdint.h>
#include "nk_pool.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Average pooling, geometry as max pooling (nk_pool.h, Keras/TF rules).
 * y[n, oh, ow, c] = (sum of the window's in-bounds x, row-major order) / k,
 * k = number of in-bounds elements of the window (padding is not counted,
 * as in TensorFlow's "SAME" average pooling).  The sum is in the data type. */
void nk_avg_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc, int dbl);

/* dx (n, h, w, c) as a gather: dx[n, h, w, c] = 0 + sum over the windows
 * (oh, ow) containing (h, w), in row-major (oh, ow) order, of
 * dy[n, oh, ow, c] / k(oh, ow).  Elements no window covers get 0. */
void nk_avg_pool2d_bwd(const nk_pool_geom *g, const void *dy_nhwc, void *dx_nhwc, int dbl);

/* y_nc[n, c] = (sum over h, w in row-major order, accumulated in double)
 * / (h * w), rounded once to the data type.  h * w > 0. */
void nk_global_avg_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                              void *y_nc, int dbl);

/* dx[n, h, w, c] = dy_nc[n, c] / (h * w) (division in the data type). */
void nk_global_avg_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *dy_nc,
                              void *dx_nhwc, int dbl);

/* y_nc[n, c] = max over the h x w plane, idx_nc[n, c] = hh * w + ww of the
 * first maximum in row-major order; a NaN replaces a number (the first NaN
 * wins), exactly as nk_max_pool2d_fwd.  0 < h * w < 2^31. */
void nk_global_max_pool2d_fwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *x_nhwc,
                              void *y_nc, int32_t *idx_nc, int dbl);

/* dx[n, hh, ww, c] = dy_nc[n, c] where idx_nc[n, c] == hh * w + ww, else 0.
 * Returns the number of indices outside [0, h * w) (their gradient is
 * dropped; 0 when all are valid).  h * w < 2^31. */
int64_t nk_global_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c, const void *dy_nc,
                                 const int32_t *idx_nc, void *dx_nhwc, int dbl);

/* Nearest upsampling by (sh, sw): x (n, h, w, c) -> y (n, h*sh, w*sw, c),
 * y[n, i, j, c] = x[n, i / sh, j / sw, c] (a bit copy). */
void nk_upsample2d_nearest_fwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                               int64_t sw, const void *x_nhwc, void *y_nhwc, int dbl);

/* Its backward: dy (n, h*sh, w*sw, c) -> dx (n, h, w, c), dx[n, i, j, c] =
 * sum of the sh x sw block dy[n, i*sh + a, j*sw + b, c] in row-major (a, b)
 * order, in the data type. */
void nk_upsample2d_nearest_bwd(int64_t n, int64_t h, int64_t w, int64_t c, int64_t sh,
                               int64_t sw, const void *dy_nhwc, void *dx_nhwc, int dbl);

/* Shifted copy with a zero border (zero padding and cropping, each the
 * other's backward): src (n, hs, ws, c) -> dst (n, hd, wd, c),
 * dst[n, i, j, :] = src[n, i + off_h, j + off_w, :] where that is inside src,
 * else +0.  Pad by (top, left): off = (-top, -left); crop: off = (top, left).
 * Rows are memcpy'd (bits preserved). */
void nk_copy2d_nhwc(int64_t n, int64_t c, int64_t hs, int64_t ws, const void *src_nhwc,
                    int64_t hd, int64_t wd, int64_t off_h, int64_t off_w, void *dst_nhwc,
                    int dbl);

#ifdef __cplusplus
}
#endif
#endif

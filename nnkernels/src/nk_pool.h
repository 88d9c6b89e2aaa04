/* nnkernels: 2-D max pooling on NHWC tensors, float32 ("dbl" = 0) and
 * float64 ("dbl" = 1).
 *
 * Geometry (Keras semantics):
 *   valid: OH = (H - PH) / SH + 1              (floor; H >= PH), no padding
 *   same:  OH = ceil(H / SH), pad total = max((OH-1)*SH + PH - H, 0),
 *          pad_top = total / 2 (the extra row, if any, goes to the bottom)
 * and the same along W.  Output (oh, ow) covers input rows
 * [oh*SH - pad_top, oh*SH - pad_top + PH) and columns likewise; positions
 * outside the input are padding and never win (as if they were -inf).
 *
 * Index convention: idx[n, oh, ow, c] = h * W + w, the flat spatial index of
 * the winning input element in the H x W plane of batch item n and channel c
 * (PyTorch's convention), so the gradient goes to dx[n, h, w, c].
 *
 * Ties and NaN: windows are scanned row-major; an element replaces the
 * current maximum when it is strictly greater, or when it is NaN and the
 * current maximum is not.  So the first maximum wins ties, and the first NaN
 * in a window wins (NaN propagates, as in PyTorch).  The result is the same
 * bit for bit on every ISA path and for every thread count.
 */
#ifndef NK_POOL_H
#define NK_POOL_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int64_t n, h, w, c;  /* input x_nhwc */
    int64_t oh, ow;      /* output y_nhwc */
    int64_t ph, pw;      /* pool size */
    int64_t sh, sw;      /* strides */
    int64_t pt, pl;      /* top / left padding (0 for "valid") */
} nk_pool_geom;

/* First output row/col whose window [o*s - p, o*s - p + k) contains input
 * row/col i (stride s, leading padding p, pool size k). */
static inline int64_t nk_pool_win_lo(int64_t i, int64_t p, int64_t k, int64_t s)
{
    const int64_t a = i + p - k + 1;
    return a <= 0 ? 0 : (a + s - 1) / s;
}
/* Last one (may be < nk_pool_win_lo when none does, or past the last
 * output; clamp by the caller). */
static inline int64_t nk_pool_win_hi(int64_t i, int64_t p, int64_t s) { return (i + p) / s; }

/* y_nhwc (n, oh, ow, c) and idx_nhwc (same shape) from x_nhwc (n, h, w, c).
 * All arrays C-contiguous; h * w < 2^31.  Every window must contain at least
 * one input element (true for the geometries above). */
void nk_max_pool2d_fwd(const nk_pool_geom *g, const void *x_nhwc, void *y_nhwc,
                       int32_t *idx_nhwc, int dbl);

/* Both backward passes take ym_nhwc (or NULL), the pooled values y (dy's
 * shape): each dy counts only where y > 0 (else as +0), the ReLU's
 * derivative at the window's maximum -- max pooling of relu(z), with the
 * same bits as relu_backward(dy, y) followed by the pooling's backward.
 *
 * dx_nhwc (n, h, w, c) = 0, then dx[n, idx / w, idx % w, c] += dy for every
 * output element, item by item (each batch item's plane is zeroed and
 * scattered into while it is in cache: one pass over dx in memory).
 * Deterministic: fixed order within an item, items owned by one thread.
 * When every index lies in a non-overlapping (h/oh) x (w/ow) window (the
 * usual k x k / stride k pooling) this runs as the gather below instead,
 * with the same result bit for bit.
 * Indices outside [0, h*w) are skipped (never written) and counted; returns
 * that count (0 when all are valid). */
int64_t nk_max_pool2d_bwd(int64_t n, int64_t h, int64_t w, int64_t c,
                          int64_t oh, int64_t ow, const void *dy_nhwc,
                          const int32_t *idx_nhwc, const void *ym_nhwc, void *dx_nhwc,
                          int dbl);

/* Same result computed as a gather, given the forward geometry: every dx
 * element is written exactly once (no separate zeroing), as the sum, in
 * window order, of the dy of the windows containing it whose index points at
 * it.  Returns the number of indices that do not point inside their own
 * window (those gradients are dropped; 0 when all are valid). */
int64_t nk_max_pool2d_bwd_geom(const nk_pool_geom *g, const void *dy_nhwc,
                               const int32_t *idx_nhwc, const void *ym_nhwc, void *dx_nhwc,
                               int dbl);

#ifdef __cplusplus
}
#endif
#endif

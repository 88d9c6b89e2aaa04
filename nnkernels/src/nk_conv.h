/* nnkernels: 2-D convolution, NHWC activations, (KH, KW, C, F) kernels.
 *
 *   y[n,oh,ow,f] = act(bias[f] + sum_{kh,kw,c} x[n, oh*sh - pt + kh*dh,
 *                                                ow*sw - pl + kw*dw, c]
 *                                        * w[kh,kw,c,f])
 * (positions outside the image read as zero).
 *
 * Five algorithms:
 *  - NK_CONV_IM2COL: the convolution as a GEMM over the im2col matrix
 *    (rows N*OH*OW, columns KH*KW*C), but *implicit*: the GEMM's A operand
 *    is packed straight from the image through the driver's pack_a hook, so
 *    no column buffer exists.  Forward: y = cols @ w (+bias, act in the
 *    epilogue).  dW = cols^T @ dz with cols^T packed from x, dz = dy*act'
 *    masked while B is packed, db from the same packing (bcolsum).
 *    dX: stride 1 and C >= 256 bytes of channels -> implicit GEMM over the
 *    zero-padded dz with the transposed kernel (a "full" convolution, dz
 *    masked while packed); otherwise dcols = dz @ w^T per tile of whole
 *    images (about NK_CONV_COL_TILE bytes of columns, so col2im reads them
 *    from cache), then col2im in gather form (each dx element written once).
 *    With few channels the full convolution's GEMM has N = C, a single
 *    register tile wide, so packing its A (every dz element, KH*KW times)
 *    costs as much as a column pass, and it also multiplies the zero border
 *    (H*W rows instead of OH*OW).  Images whose columns exceed
 *    NK_CONV_COL_BUDGET are split across tiles (col2im scatters into a
 *    zeroed dx).  1x1 stride-1 unpadded convolutions use x as the matrix
 *    directly.
 *  - NK_CONV_DIRECT: loops over the window with register tiles (see
 *    nk_conv_direct.h), vectorised over output channels (forward: pixels x
 *    channels; dW: kernel rows x channels) or over the dot product along F
 *    (dX, gather form: every dx element written once, dz rows masked and
 *    zero-padded once into a per-thread ring); parallel over output rows /
 *    input rows / fixed blocks of output rows.  Best when C is small (first
 *    layers).
 *  - NK_CONV_WINOGRAD (3x3, stride 1, dilation 1): Winograd F(2x2, 3x3) for
 *    the forward pass and dX (the "full" correlation of dz with the rotated,
 *    channel-swapped kernel, dz masked while transformed) and the float32
 *    dW (nk_conv_wino_wgrad.h; float64 dW uses im2col).
 *    Per block of 2x2-output tiles: input transform written straight in the
 *    micro-kernel's packed-A format, 16 GEMMs (tiles x C) @ (C x F) against
 *    the transformed kernel packed once per call, output transform with
 *    bias and activation (see nk_conv_body.h, nk_conv_wino.h).  float32
 *    with small C and F (both <= 32, 64 with bf16 products): a fused kernel
 *    instead, per block of a few tiles all in L1 (V stored
 *    channels-contiguous, products as broadcast-FMA register tiles, no
 *    packing or transposes).  float32 with float32 products and C, F <= 64
 *    (dW: C <= 32): F(4x4, 3x3) on that fused path, 36 products per 4x4
 *    outputs instead of 64 (nk_conv_wino4.h, nk_conv_wino4_wgrad.h; where
 *    exactly: nk_conv_use_wino4).
 *
 *  - NK_CONV_DEPTHWISE (one input channel per group, g = C groups of
 *    f = M outputs: Keras DepthwiseConv2D): direct loops vectorised over
 *    the E = C*M contiguous output channels, rows of x (expanded to E
 *    channels when M > 1, zero-padded) and of dz (masked, zero-upsampled)
 *    from small per-thread rings; forward parallel over output rows, dX
 *    over input rows, dW/db over fixed blocks of output rows -- with dX in
 *    the same pass when both are wanted (see CFN(dw_wgrad) in
 *    nk_conv_body.h, kernels in nk_conv_dw.h).
 *  - NK_CONV_DIRECT_WGRAD (dW and db only, float32; the forward pass and dX
 *    take the AUTO choice, float64 dW too): register tiles of KHT kernel
 *    rows x JB consecutive (kw, c) elements x NF vectors of output channels
 *    (up to 28 zmm accumulators), over groups of output rows whose x rows
 *    (zero-padded copies, or x itself) and dz rows stay in cache: per
 *    output pixel NF dz vectors loaded once, one broadcast FMA per
 *    accumulator (see nk_conv_wgrad.h); fixed blocks of output rows in
 *    parallel, partial sums added in block order.
 *
 * Groups (s->g > 1): output channels [j*f, (j+1)*f) are the convolution of
 * input channels [j*c, (j+1)*c) with w[..., j*f:(j+1)*f]: the depthwise
 * kernels when c == 1, else g convolutions on channel windows (pointer
 * offsets, pixel pitches ldx / ldy / ldw; no copies), each with the
 * algorithm chosen for its (c, f).
 *
 * Backward products are independent: dW alone, dX alone (the forward pass
 * of a transposed convolution; x is not read), db alone or any mix, and dX
 * may be added to the caller's array instead of overwriting it.
 *
 * Determinism: every output element is produced by one thread with a fixed
 * summation order; dW/db sum fixed blocks (of output rows for the direct,
 * direct-dW and depthwise algorithms, of pixels for im2col) in block order.  Results
 * are identical for any thread count (given an ISA path and algorithm).
 *
 * Workspaces (transposed kernel, column tiles, dW partials, scratch rows
 * and row pointers) live in a process-wide arena that grows once and is
 * reused; nothing of the geometry's size goes on the stack.
 */
#ifndef NK_CONV_H
#define NK_CONV_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { NK_CONV_AUTO = 0, NK_CONV_IM2COL = 1, NK_CONV_DIRECT = 2, NK_CONV_WINOGRAD = 3,
       NK_CONV_DEPTHWISE = 4, NK_CONV_DIRECT_WGRAD = 5 };
/* which product, for nk_conv_choose */
enum { NK_CONV_FWD = 0, NK_CONV_BWD_DATA = 1, NK_CONV_BWD_FILTER = 2 };

#define NK_CONV_COL_BUDGET ((int64_t)64 << 20) /* bytes of column workspace */
#define NK_CONV_COL_TILE ((int64_t)1 << 20)    /* column tile target (cache-sized) */

typedef struct {
    int64_t n, h, w, c;    /* x_nhwc (c: channels per group) */
    int64_t kh, kw, f;     /* w_hwcf: (kh, kw, c, g*f) (f: output channels per group) */
    int64_t sh, sw, dh, dw;
    int64_t pt, pl;        /* top / left zero padding (bottom/right follow from oh, ow) */
    int64_t oh, ow;        /* output size */
    int64_t g;             /* groups (<= 1: one) */
    /* Pitches in elements (<= 0: contiguous): between pixels of x / dx
     * (default g*c), between pixels of y / dy (g*f), between the rows
     * (kh, kw, c) of w / dw (g*f).  A pitch above the default reads and
     * writes a channel window of a wider array (other channels untouched). */
    int64_t ldx, ldy, ldw;
    /* float32 only: bfloat16 products (operands rounded, float32
     * accumulation; see nk_gemm.h) where they are faster than float32's
     * algorithm: a product that algo (or AUTO's choice) gives to the im2col
     * GEMM, and the forward pass that AUTO gives to the direct kernel with
     * 32 or more input channels, run as bf16 im2col GEMMs; Winograd's
     * forward and dX (blocked and fused paths) round the transformed
     * operands to bf16; its dW (at most 32 channels on both sides),
     * direct_wgrad, the other direct cases and the depthwise kernels stay
     * float32 (see nk_conv_lowp in nk_conv.c for the measurements). */
    int lowp;
    /* float32 forward only (set by nk_conv2d_forward_bf16, 0 elsewhere): y
     * is bfloat16 bit patterns (uint16_t), which the fused Winograd paths
     * store; every other path returns NK_CONV_NEED_F32 */
    int out_bf16;
} nk_conv_shape;
#define NK_CONV_NEED_F32 (-3)

/* All return 0, or -1 when workspace memory could not be obtained.
 * nthreads <= 0: nk_get_num_threads().  act: NK_ACT_NONE / NK_ACT_RELU. */

/* float32 forward pass whose output y16 is stored as bfloat16 bit patterns
 * (pixels s->ldy apart), each value rounded as VCVTNEPS2BF16 rounds
 * (nk_bf16_ftz: nearest even, NaN quieted, subnormals to signed zero): the
 * bits of nk_conv2d_forward's float32 output so rounded.  The fused
 * Winograd paths (F(2x2) and F(4x4), one group: ResNet's 3x3 stride-1
 * layers) round in their output transform, so the float32 output is never
 * written; the other paths write it to a workspace and round it after. */
int nk_conv2d_forward_bf16(const nk_conv_shape *s, int algo, const float *x_nhwc,
                           const float *w_hwcf, const float *bias_f, int act, uint16_t *y16,
                           int nthreads);
int nk_conv2d_forward(const nk_conv_shape *s, int dbl, int algo,
                      const void *x_nhwc, const void *w_hwcf, const void *bias_f,
                      int act, void *y_nhwf, int nthreads);

/* The forward pass followed by 2x2 stride-2 "valid" max pooling of its
 * output: pool_y (N, oh/2, ow/2, g*f) and pool_i (int32, h * ow + w of each
 * window's winner) exactly as nk_max_pool2d_fwd on y.  Where the forward
 * pass runs as Winograd (float32, one group) the pooling happens in its
 * output transform and y (may be NULL) is not needed; elsewhere y, or a
 * workspace when NULL, receives the output first.  y pixels must be
 * contiguous (ldy = g*f). */
int nk_conv2d_forward_maxpool(const nk_conv_shape *s, int dbl, int algo,
                              const void *x_nhwc, const void *w_hwcf, const void *bias_f,
                              int act, void *y_nhwf, void *pool_y, int32_t *pool_i,
                              int nthreads);

/* The backward of nk_conv2d_forward_maxpool: dx, dw, db of the convolution
 * (as nk_conv2d_backward) given dy_pool = dL/dpool_y (contiguous, N x oh/2
 * x ow/2 x g*f), the pooling's indices pool_i (same layout) and, with act
 * ReLU, pool_y (the mask: pool_y > 0, the ReLU's derivative at each
 * window's maximum; NULL with act NONE).  The convolution's dz is the
 * pooling's gradient (nk_max_pool2d_bwd_geom: an index outside its own
 * window is dropped).  Where both products run as F(2x2, 3x3) Winograd
 * (float32, one group, even top and left padding, dX on the fused path)
 * the transforms read dz from dy_pool and pool_i and the full-size dz is
 * never written; elsewhere it goes to a workspace first.  Same bits either
 * way. */
int nk_conv2d_backward_maxpool(const nk_conv_shape *s, int dbl, int algo, const void *dy_pool,
                               const int32_t *pool_i, const void *pool_y, const void *x_nhwc,
                               const void *w_hwcf, void *dx_nhwc, int dx_accumulate,
                               void *dw_hwcf, void *db_f, int nthreads);

/* Whether nk_conv2d_backward_maxpool with these products wanted reads dz
 * through the pooled gradient (1) or writes it first (0) */
int nk_conv2d_backward_maxpool_fused(const nk_conv_shape *s, int dbl, int algo, int need_dx,
                                     int need_dw, int need_db);

/* dz = dy * act'(y) (y: forward output, needed for relu).  Any of dx_nhwc,
 * dw_hwcf and db_f may be NULL (not wanted): with dw_hwcf == NULL no weight
 * gradient is computed (x is not read; the data gradient alone is the
 * forward pass of a transposed convolution); db then comes from its own
 * pass over dz (fixed pixel blocks, summed in order).  dx_accumulate: add
 * the data gradient to dx_nhwc (a tensor with several consumers sums their
 * gradients without a pass of its own) instead of overwriting it. */
int nk_conv2d_backward(const nk_conv_shape *s, int dbl, int algo,
                       const void *dy_nhwf, const void *x_nhwc, const void *w_hwcf,
                       int act, const void *y_nhwf,
                       void *dx_nhwc, int dx_accumulate, void *dw_hwcf, void *db_f,
                       int nthreads);

/* Whether Winograd F(2x2, 3x3) applies: a 3x3 kernel, strides 1, dilation 1. */
int nk_conv_wino_ok(const nk_conv_shape *s);
/* The algorithm algo=AUTO uses for one product (NK_CONV_FWD, ...). */
int nk_conv_choose(const nk_conv_shape *s, int dbl, int pass);
/* The algorithm that runs for it: with s->lowp (bf16 products), where bf16
 * im2col replaces float32's choice (nk_conv_precision in nk_conv.c). */
int nk_conv_choose_run(const nk_conv_shape *s, int dbl, int pass);

/* Column-workspace budget in bytes (tests shrink it to exercise tiling);
 * <= 0 restores NK_CONV_COL_BUDGET. */
void nk_conv_set_col_budget(int64_t bytes);

/* Winograd F(4x4, 3x3) where it applies (on, the default) or F(2x2, 3x3)
 * everywhere (off; tests compare the two) */
void nk_conv_set_wino4(int on);
int nk_conv_wino4_on(void);
/* Whether a float32 Winograd product of c -> f channels (wgrad: the weight
 * gradient of C_in = c, C_out = f) takes F(4x4, 3x3) */
int nk_conv_use_wino4(int64_t c, int64_t f, int lowp, int wgrad);

#ifdef __cplusplus
}
#endif
#endif

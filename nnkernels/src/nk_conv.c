/* 2-D convolution (NHWC): implicit-im2col GEMM and direct kernels.
 * See nk_conv.h for the algorithms and guarantees. */
#include <stdlib.h>
#include <string.h>
#include <math.h>
#include "nk_internal.h"
#include "nk_conv.h"
#include "nk_pool.h"
#include "nk_target.h"
_Static_assert(sizeof(void *) <= 8, "nk_conv_ptr_elems assumes pointers of at most 8 bytes");
#ifdef _OPENMP
#include <omp.h>
#endif

static int64_t g_col_budget = NK_CONV_COL_BUDGET;
void nk_conv_set_col_budget(int64_t bytes) { g_col_budget = bytes > 0 ? bytes : NK_CONV_COL_BUDGET; }

static int g_wino4_off = 0;
void nk_conv_set_wino4(int on) { g_wino4_off = !on; }
int nk_conv_wino4_on(void) { return !g_wino4_off; }

/* Whether a float32 Winograd product takes F(4x4, 3x3) (nk_conv_wino4.h,
 * nk_conv_wino4_wgrad.h) instead of F(2x2, 3x3), unless switched off
 * (nk_conv_set_wino4).  c, f: the source and output channels of a forward
 * pass or data gradient (GEMM k and n: forward C_in -> C_out, dX C_out ->
 * C_in), with wgrad the weight gradient's C_in and C_out.  With float32
 * products up to 64 channels on each side (the fused path's register tiles;
 * beyond, F(2x2)'s blocked path), the weight gradient up to 32 input
 * channels (64 -> 64 on 8x8 ties isolated and loses in ResNet-20's step);
 * with bf16 products requested (lowp) up to 16 channels on each side,
 * forward, dX and dW, where F(4x4)'s float32 products still beat F(2x2)'s
 * bf16 ones.  (dW there lost in ResNet-20's step at first, 49.1-50.1 ->
 * 50.4-52.8 ms for that stage's convolution backward; since the chunk
 * sums run as contiguous runs (CFN(sum_chunks)) it wins: 1 thread 48.3-50.7
 * against 49.8-52.8 ms with F(2x2)'s bf16 dW, 2 threads 25.7-26.9 against
 * 25.95-27.6, three interleaved pairs each.)
 * Measured (AVX-512, batch 128, 1 thread, Zen 4; forward / dX / dW in ms,
 * F(2x2) -> F(4x4)):
 *   16 -> 16 on 32x32  4.1 / 4.1 / 5.0 -> 2.7 / 2.7 / 3.2
 *   32 -> 32 on 16x16  3.1 / 3.1 / 3.5 -> 2.05 / 2.05 / 2.5
 *   64 -> 64 on 8x8    3.1 / 3.1 / 3.5 -> 2.0 / 2.0 / (3.45)
 *   the default CNN's 32 -> 64 on 26x26: forward with its 2x2 max pooling
 *   17.4 -> 11.7, dX (relu mask) 22.2 -> 15.9, dW 17.0 -> 14.5
 *   in ResNet-20's step, its 8x8 stage's convolution backward with dW of
 *   64 -> 64 by F(4x4): 39.3-40.1 -> 44.5-45.0 ms, so it stays F(2x2)
 * bf16 products requested, F(2x2)'s bf16 products -> F(4x4)'s float32 ones:
 *   16 -> 16 on 32x32  3.0 / 3.0 / 4.1 -> 2.5 / 2.6 / 3.5-3.9
 *   32 -> 32 ties (2.0 / 2.0 / 2.45); 64 -> 64 and the CNN's 32 -> 64 lose
 *   (forward 1.85 -> 2.05, 10.0 -> 10.5). */
int nk_conv_use_wino4(int64_t c, int64_t f, int lowp, int wgrad)
{
    if (g_wino4_off) return 0;
    if (lowp) return c <= 16 && f <= 16;
    return c <= (wgrad ? 32 : 64) && f <= 64;
}

/* ---------------------------------------------------------------- helpers */

/* Window-packing context (see pack_win in nk_conv_body.h). */
typedef struct {
    const nk_conv_shape *s;    /* pack_wt only */
    const void *src, *mask;
    int64_t ga, gb;            /* row grid per image */
    int64_t sh, sw, sc;        /* source image (height, width, channels) */
    int64_t sp;                /* elements between source pixels (>= sc) */
    int64_t kw;
    int64_t sa, sb, oa, ob, ka, kb;
    int64_t p_off;             /* pack_wt: first pixel of this GEMM's k range */
} nk_conv_win;

/* s with the group count and pitches filled in (see nk_conv_shape). */
static nk_conv_shape nk_conv_norm(const nk_conv_shape *s)
{
    nk_conv_shape t = *s;
    if (t.g < 1) t.g = 1;
    if (t.ldx <= 0) t.ldx = t.g * t.c;
    if (t.ldy <= 0) t.ldy = t.g * t.f;
    if (t.ldw <= 0) t.ldw = t.g * t.f;
    return t;
}

/* Whether the depthwise kernels run: one input channel per group, and
 * algo DEPTHWISE, or AUTO with several groups. */
static int nk_conv_use_dw(const nk_conv_shape *s, int algo)
{
    return s->c == 1 && (algo == NK_CONV_DEPTHWISE || (algo == NK_CONV_AUTO && s->g > 1));
}

static int nk_conv_is_pointwise(const nk_conv_shape *s)
{
    return s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->pt == 0 && s->pl == 0 &&
           s->oh == s->h && s->ow == s->w;
}

/* The taps of the im2col data gradient's col2im (gather form), in
 * nk_col2im_taps_len(s) entries: per input row h, its count then the offset
 * of each tap row kh (ascending) into an image's columns, (oh * OW) * KKC +
 * kh * KW * C; then per input column iw, its count then the offset of each
 * tap kw (ascending), ow * KKC + kw * C.  Built once per call: the strided
 * data gradients (3x3 and 1x1 stride 2) spent most of their col2im time on
 * the divisions by the stride when they were made per pixel. */
static int64_t nk_col2im_taps_len(const nk_conv_shape *s)
{
    return s->h * (s->kh + 1) + s->w * (s->kw + 1);
}

static void nk_col2im_taps(const nk_conv_shape *s, int64_t *taps)
{
    const int64_t KH = s->kh, KW = s->kw, kkc = KH * KW * s->c;
    int64_t *t = taps;
    for (int64_t h = 0; h < s->h; h++, t += KH + 1) {
        int64_t cnt = 0;
        for (int64_t kh = 0; kh < KH; kh++) {
            const int64_t th = h + s->pt - kh * s->dh;
            if (th < 0) break; /* th decreases with kh */
            const int64_t oh = th / s->sh;
            if (oh * s->sh == th && oh < s->oh) t[1 + cnt++] = oh * s->ow * kkc + kh * KW * s->c;
        }
        t[0] = cnt;
    }
    for (int64_t iw = 0; iw < s->w; iw++, t += KW + 1) {
        int64_t cnt = 0;
        for (int64_t kw = 0; kw < KW; kw++) {
            const int64_t tw = iw + s->pl - kw * s->dw;
            if (tw < 0) break;
            const int64_t ow = tw / s->sw;
            if (ow * s->sw == tw && ow < s->ow) t[1 + cnt++] = ow * kkc + kw * s->c;
        }
        t[0] = cnt;
    }
}

static void nk_conv_win_fwd(nk_conv_win *cw, const nk_conv_shape *s, const void *x)
{
    memset(cw, 0, sizeof *cw);
    cw->s = s;
    cw->src = x;
    cw->ga = s->oh; cw->gb = s->ow;
    cw->sh = s->h; cw->sw = s->w; cw->sc = s->c; cw->sp = s->ldx; cw->kw = s->kw;
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

/* Zero npx pixels of c elements (of elsz bytes) spaced ld apart. */
static void nk_conv_zero_px(void *p, int64_t npx, int64_t c, int64_t ld, size_t elsz, int nt)
{
    if (ld == c) {
        nk_conv_zero(p, (size_t)(npx * c) * elsz, nt);
        return;
    }
    const int par = nt > 1 && npx * c * (int64_t)elsz >= ((int64_t)1 << 20);
    (void)par;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (par)
#endif
    for (int64_t q = 0; q < npx; q++)
        memset((char *)p + (size_t)(q * ld) * elsz, 0, (size_t)c * elsz);
}

/* Threads for our own parallel loops: the package setting, 1 inside another
 * team, and no more than one per ~1 MFLOP of work. */
static int nk_conv_threads(const nk_conv_shape *s, int nt)
{
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

/* Winograd F(2x2, 3x3) geometry (see nk_conv_wino.h, CFN(wino) in
 * nk_conv_body.h).  The forward pass uses it on x; the data gradient on dz
 * (a "full" correlation, so pt/pl may be negative: cropping). */
typedef struct {
    int64_t n, h, w, c;  /* source image (x or dz), c: GEMM k */
    int64_t f;           /* output channels (GEMM n) */
    int64_t sp, op;      /* pixel pitches of the source and the output */
    int64_t ldw;         /* row pitch of the kernel (see CFN(wino)) */
    int accum;           /* add the output transform to y instead of storing it */
    int64_t oh, ow;      /* output size */
    int64_t pt, pl;      /* source pixel of output (0, 0): (-pt, -pl) */
    int64_t th, tw;      /* tile grid: ceil(oh / 2) x ceil(ow / 2) (m4: ceil(oh / 4) x ...) */
    int m4;              /* F(4x4, 3x3) tiles (fused path, nk_conv_wino4.h); else F(2x2, 3x3) */
    int64_t mr, kc;      /* micro-kernel rows, k-block (channels) */
    int64_t tb;          /* tiles per block, a multiple of mr */
    int64_t v_xs, m_xs;  /* distance between the 16 planes of a block's V, M */
    int lowp;            /* float32: bf16 products (blocked path: CFN(wino); dW: wgemm_bf) */
    /* forward only: 2x2 stride-2 max pooling of act(output) in the output
     * transform (each full 2x2 tile is one window): pooled values (N, oh/2,
     * ow/2, f, T) and their int32 indices h * ow + w as nk_max_pool2d_fwd;
     * NULL: none.  y may then be NULL (the output itself not stored). */
    void *pool_y;
    int32_t *pool_i;
    /* float32 forward on the fused path (nk_conv2d_forward_bf16): the
     * output stored as bfloat16 bit patterns here instead of into y, with
     * VCVTNEPS2BF16 when y16_native, else its emulation (the same bits) */
    uint16_t *y16;
    int y16_native;
    /* float32, fused path with bf16 products (NULL: float32 products): U in
     * bf16 pairs (plane xi, channel pair k, column f at (xi * c2 + k) * fp +
     * f) and the product M = V @ U of a block whose V is in pairs (tile j,
     * plane xi, pair k at (16 j + xi) * c2 + k); see nk_wino_fgemm_bf16 */
    const uint32_t *u_bf;
    void (*fgemm_bf)(const uint32_t *vw, const uint32_t *uw, int64_t c2, int64_t fp, void *mb);
    int bf_native; /* VDPBF16PS (and VCVTNEPS2BF16) run; else their emulation */
    /* the weight gradient with bf16 products (lowp): a block's 16 products
     * on V and Z in bf16 pairs of tiles (nk_conv_wino_wgrad.h) */
    void (*wgemm_bf)(const uint32_t *vw, const uint32_t *zw, int64_t np, int64_t c, int64_t cp,
                     int64_t fp, int64_t vxs, int64_t zxs, void *mp);
    /* conv2d_maxpool's backward (CFN(backward_maxpool)), F(2x2, 3x3) only:
     * with up_i, dz (the source of dX, the dy of dW) is read from the
     * gradient of the output's 2x2 stride-2 max pooling (N x up_ph x up_pw
     * windows, the full dz's pixel pitch) and its int32 indices up_i (same
     * layout): each window's gradient at the pixel its index names (h * OW
     * + w), zero at the others and outside the windows; with up_m (the
     * pooled output, same layout) only where up_m > 0 (the ReLU's
     * derivative at the window's maximum).  The values are those
     * nk_max_pool2d_bwd writes (0 + gradient), so the results are the same
     * bits as through a written dz. */
    const int32_t *up_i;
    const void *up_m;
    int64_t up_ph, up_pw;
} nk_wino;
/* the pooled gradient's indices, mask and windows (nk_wino.up_i ...) */
typedef struct {
    const int32_t *i;
    const void *m;
    int64_t ph, pw;
} nk_unpool;
static void nk_wino_set_up(nk_wino *g, const nk_unpool *up)
{
    if (!up) return;
    g->up_i = up->i;
    g->up_m = up->m;
    g->up_ph = up->ph;
    g->up_pw = up->pw;
}
#define WINO_MR_MAX 8 /* micro-kernel rows the transforms handle (all kernels: 4..8) */

/* F(4x4, 3x3)'s kernel transform G (6x3; nk_conv_wino4.h), for U = G g G^T
 * (CFN(wino4_u)) and the weight gradient's dW = G^T M G (CFN(wino4_gmg)) */
static const double nk_wino4_G[6][3] = {{1.0 / 4, 0, 0},
                                        {-1.0 / 6, -1.0 / 6, -1.0 / 6},
                                        {-1.0 / 6, 1.0 / 6, -1.0 / 6},
                                        {1.0 / 24, 1.0 / 12, 1.0 / 6},
                                        {1.0 / 24, -1.0 / 12, 1.0 / 6},
                                        {0, 0, 1}};

/* The Winograd weight gradient's NP products of a block (16 planes of
 * F(2x2, 3x3), 36 of F(4x4, 3x3); float32, every ISA and the bf16 ones
 * alike), plane by plane: plane xi's V rows at
 * v0 + xi * vxs, its Z at z0 + xi * zxs, its sums M (cp x fp) at
 * m0 + xi * cp * fp; register tiles TILE(v, z, m, rows, vectors) of 8 rows
 * x two vectors of 16 columns, the last vector as 16 rows x one (rows of a
 * partial tile beyond C are the operands' zero padding, computed into M's
 * padding rows, which exist: M has cp rows). */
#define NK_WWG_PLANES(NP, v0, vxs, z0, zxs, m0, C, cp, fp, TILE)                           \
    for (int64_t xi_ = 0; xi_ < (NP); xi_++) {                                              \
        const __typeof__(v0) v_ = (v0) + xi_ * (vxs);                                       \
        const __typeof__(z0) z_ = (z0) + xi_ * (zxs);                                       \
        const __typeof__(m0) m_ = (m0) + xi_ * (cp) * (fp);                                 \
        int64_t f0_ = 0;                                                                    \
        for (; f0_ + 32 <= (fp); f0_ += 32)                                                 \
            for (int64_t c0_ = 0; c0_ < (C); c0_ += 8)                                      \
                TILE(v_ + c0_, z_ + f0_, m_ + c0_ * (fp) + f0_, 8, 2);                      \
        for (; f0_ < (fp); f0_ += 16)                                                       \
            for (int64_t c0_ = 0; c0_ < (C); c0_ += 16)                                     \
                TILE(v_ + c0_, z_ + f0_, m_ + c0_ * (fp) + f0_, 16, 1);                     \
    }

/* A tile's place (n, th, tw) on the N x TH x TW grid: found once per run of
 * tiles (nk_wtile_at, two divisions) and stepped along it (nk_wtile_next);
 * divisions per tile were a measurable part of the small-channel kernels. */
typedef struct {
    int64_t n, th, tw;
} nk_wtile;

static inline nk_wtile nk_wtile_at(const nk_wino *g, int64_t t)
{
    const int64_t tpi = g->th * g->tw, n = t / tpi, r = t - n * tpi, th = r / g->tw;
    return (nk_wtile){n, th, r - th * g->tw};
}

static inline void nk_wtile_next(const nk_wino *g, nk_wtile *p)
{
    if (++p->tw == g->tw) {
        p->tw = 0;
        if (++p->th == g->th) {
            p->th = 0;
            p->n++;
        }
    }
}

/* Winograd applies: 3x3, stride 1, dilation 1. */
int nk_conv_wino_ok(const nk_conv_shape *s)
{
    return s->kh == 3 && s->kw == 3 && s->sh == 1 && s->sw == 1 && s->dh == 1 && s->dw == 1;
}

/* algo="auto" heuristic (static, documented in nnkernels.conv2d):
 *  - groups of one input channel (depthwise): the depthwise kernels when
 *    their workspace fits (nk_conv_ws_fits); otherwise per group, with c
 *    and f those of one group:
 *  - few input channels (C < 8): direct for every product (when its
 *    workspace fits: nk_conv_ws_fits; else im2col).  With C*KH*KW
 *    this small the GEMM's k (forward) or n (= C, data gradient) is a
 *    fraction of a register tile, so the GEMM wastes most of its work on
 *    packing and padding; the direct loops vectorise over F instead.
 *  - float32 dW of a 3x3 stride-1 dilation-1 convolution with C, F >= 16:
 *    Winograd F(2x2, 3x3) (nk_conv_wino_wgrad.h; batch 128, 1 thread, Zen 5:
 *    16 -> 16 on 32x32 2.9 -> 2.3 ms, 32 -> 32 on 16x16 2.4 -> 1.65,
 *    64 -> 64 on 8x8 2.6 -> 1.8, the default CNN's 32 -> 64 on 26x26 12.4
 *    -> 7.2; its 16 transformed-domain products run at the FMA peak).
 *  - other float32 dW with C >= 2 and F <= 32 or C < 32: the direct dW with
 *    register-resident tiles (nk_conv_wgrad.h): it reads x and dz once per
 *    tile pass from cache instead of packing the KH*KW-times larger column
 *    matrix (1.2-8x faster than im2col / direct for ResNet-20's other
 *    shapes at batch 128).  With C >= 32 and F > 32 the GEMM is as fast and
 *    keeps dW; C == 1 (the default CNN's first layer) keeps the direct
 *    kernels (the register-tiled kernel is faster there too, but the
 *    default CNN's training bits are recorded: tests/test_sequential_unchanged.py).
 *  - float32 3x3 stride-1 dilation-1 with C, F >= 16: Winograd F(2x2, 3x3)
 *    for the forward pass and dX (2.25x fewer multiplications; float64
 *    keeps im2col, whose sums are plain dot products).  dW: as above, else
 *    im2col.
 *  - float32 strided forward pass with C <= 32 and F a multiple of 32
 *    (whole channel blocks of the direct kernels): direct.  The strided
 *    window rows make im2col's packing (and its k = KH*KW*C GEMM) costlier
 *    than the direct loops there: ResNet's downsampling 3x3 stride-2
 *    16 -> 32 about 25 % and 1x1 stride-2 projections 20-40 % faster (1
 *    thread); with F = 16, C = 8 or C = 64 im2col is as fast or faster.
 *  - otherwise the implicit-im2col GEMM. */
static int nk_conv_direct_fits(const nk_conv_shape *s, size_t esz, int pass);

/* Whether a float32 product with s->lowp set runs with bfloat16 operands,
 * given the algorithm float32 would use for it: only where that is faster
 * (measured per product on the default CNN's and ResNet-20's layers, 1
 * thread, Zen 4): instead of an im2col GEMM (a float32 dW of 3x3x32->64:
 * 16.6 -> 11.3 ms), instead of the direct forward kernel with 32 or more
 * input channels (as an im2col GEMM: strided 32->64: 1.30 -> 0.93 ms) or 16
 * or more and a window of 32 or more values (ResNet's strided 16->32 3x3,
 * same binary, three interleaved rounds: 3.96-4.19 -> 2.92-3.27 ms; its
 * 1x1 projection stays direct: 0.44-0.47 vs 0.51-0.59), and
 * in Winograd's blocked path (more than 32 channels on either side: the
 * transforms stay float32, the 16 transformed-domain GEMMs take bf16
 * operands; batch 128, 1 thread, Zen 5: 3x3x32->64 on 26x26 forward 9.2 ->
 * 7.5 ms, dX 13.1 -> 11.6; 64->64 on 8x8 forward and dX 1.55 -> 1.24 / 1.34;
 * the error stays within 2**-8 of sum |V| |U|, tests/test_bf16.py), and in
 * the fused small-channel Winograd's products (V and U in bf16 pairs of
 * channels, VDPBF16PS register tiles, nk_wino_fgemm_bf16; V rounded as the
 * input transform stores it: batch 128, 1 thread, Zen 5: 16->16 on 32x32
 * forward 2.06 -> 1.56 ms, dX 1.98 -> 1.54; 32->32 on 16x16 1.43 -> 0.91 /
 * 0.93; the emulated paths give the same bits, slower than float32), and
 * in Winograd's weight gradient (V and Z in bf16 pairs of tiles, one
 * VDPBF16PS per pair, nk_wino_wgemm_bf16: batch 128, 1 thread, Zen 4:
 * 16->16 on 32x32 4.95 -> 3.85 ms, 32->32 on 16x16 3.58 -> 2.39, and
 * 64->64 on 8x8 3.33 -> 2.39 instead of the bf16 im2col GEMM), and
 * instead of the register-tiled direct_wgrad with 16 or more input channels
 * (as an im2col GEMM: ResNet's strided 16->32 3x3 3.2 -> 2.56 ms, 1x1 0.55
 * -> 0.42; batch 128, 1 thread, Zen 4).  direct_wgrad with fewer channels
 * (first layers: the 3->16 stem 1.34 vs 5.5 ms) and the direct kernels
 * with few channels stay float32. */
static int nk_conv_lowp(const nk_conv_shape *s, int pass, int algo)
{
    if (algo == NK_CONV_IM2COL || algo == NK_CONV_WINOGRAD) return 1;
    if (algo == NK_CONV_DIRECT_WGRAD) return s->c >= 16;
    return pass == NK_CONV_FWD && algo == NK_CONV_DIRECT && s->c >= 16 &&
           s->kh * s->kw * s->c >= 32;
}

/* The shape one product runs on, given *algo (float32's choice for it):
 * s itself without s->lowp; with it, s where bf16 products win
 * (nk_conv_lowp; *algo becomes IM2COL unless it is Winograd), else *f32 =
 * s with lowp cleared. */
static const nk_conv_shape *nk_conv_precision(const nk_conv_shape *s, int pass, int *algo,
                                              nk_conv_shape *f32)
{
    if (!s->lowp) return s;
    if (nk_conv_lowp(s, pass, *algo)) {
        if (*algo != NK_CONV_WINOGRAD) *algo = NK_CONV_IM2COL;
        return s;
    }
    *f32 = *s;
    f32->lowp = 0;
    return f32;
}
static int nk_conv_dw_fits(const nk_conv_shape *s, size_t esz, int pass);
static int nk_conv_wwg_fits(const nk_conv_shape *s);

int nk_conv_choose_run(const nk_conv_shape *s, int dbl, int pass)
{
    int a = nk_conv_choose(s, dbl, pass);
    nk_conv_shape f32;
    if (!dbl) nk_conv_precision(s, pass, &a, &f32);
    return a;
}

int nk_conv_choose(const nk_conv_shape *s, int dbl, int pass)
{
    const size_t esz = dbl ? sizeof(double) : sizeof(float);
    if (s->g > 1 && s->c == 1 && nk_conv_dw_fits(s, esz, pass)) return NK_CONV_DEPTHWISE;
    if (!dbl && pass == NK_CONV_BWD_FILTER && nk_conv_wino_ok(s) && s->c >= 16 && s->f >= 16 &&
        nk_conv_wwg_fits(s))
        return NK_CONV_WINOGRAD;
    if (!dbl && pass == NK_CONV_BWD_FILTER && s->c >= 2 && (s->f <= 32 || s->c < 32))
        return NK_CONV_DIRECT_WGRAD;
    if (s->c < 8) return nk_conv_direct_fits(s, esz, pass) ? NK_CONV_DIRECT : NK_CONV_IM2COL;
    if (!dbl && pass != NK_CONV_BWD_FILTER && nk_conv_wino_ok(s) && s->c >= 16 && s->f >= 16)
        return NK_CONV_WINOGRAD;
    if (!dbl && pass == NK_CONV_FWD && (s->sh > 1 || s->sw > 1) && s->c <= 32 && s->f % 32 == 0 &&
        nk_conv_direct_fits(s, esz, pass))
        return NK_CONV_DIRECT;
    return NK_CONV_IM2COL;
}

#define NK_CONV_WGRAD_BLOCKS 16
#define NK_CONV_WGRAD_KBLOCK 8192 /* min pixels per k-block of the im2col dW */
/* direct_wgrad: output rows per group sized so that the group's dz rows take
 * about this many bytes (and hold at least this many pixels); partial sums of all blocks at most this many bytes
 * (fewer blocks beyond) */
#define NK_CONV_WG2_GROUP_BYTES ((int64_t)8 << 10)
#define NK_CONV_WG2_GROUP_PX 128
#define NK_CONV_WG2_PART_BYTES ((int64_t)64 << 20)
/* Winograd dW: V and Z of a block of tiles (per thread) about this many bytes */
#define NK_CONV_WWG_BYTES ((int64_t)512 << 10)

/* Winograd dW workspace in elements of 4 bytes (see CFN(wino_wgrad)): per
 * thread the V and Z of a block of tb tiles; shared the zero row and nb
 * chunks' partial sums (16 planes of cp x fp, plus fp). */
static double nk_conv_wwg_scr(int64_t cp, int64_t fp, int64_t tb)
{
    return 16.0 * ((double)tb * (double)(cp + fp) + 32.0) + 80.0;
}
static double nk_conv_wwg_part(int64_t cp, int64_t fp)
{
    return 16.0 * (double)cp * (double)fp + (double)fp;
}
/* Whether the Winograd dW fits the column budget with one chunk, one
 * thread and the smallest block (8 tiles): else im2col computes dW. */
static int nk_conv_wwg_fits(const nk_conv_shape *s)
{
    const int64_t cp = (s->c + 15) / 16 * 16, fp = (s->f + 15) / 16 * 16;
    return 4.0 * ((double)cp + nk_conv_wwg_part(cp, fp) + nk_conv_wwg_scr(cp, fp, 8)) <=
           (double)g_col_budget;
}

/* Elements of esz bytes that hold n pointers (or int64) in per-thread
 * scratch (row pointers, ring tags: never arrays on the stack), in whole
 * 64-byte lines. */
static inline int64_t nk_conv_ptr_elems(int64_t n, size_t esz)
{
    return (n * 8 + 63) / 64 * 64 / (int64_t)esz;
}

/* Geometry of the direct kernels' scratch rows (see nk_conv_direct.h). */
/* input pixels an output row's windows span (zero-padded input row) */
static inline int64_t nk_conv_xrow_px(const nk_conv_shape *s)
{
    return (s->ow - 1) * s->sw + (s->kw - 1) * s->dw + 1;
}
/* dz rows one input row can need: output rows oh with oh*sh in an
 * interval of length (KH-1)*dh, and never more than OH (the ring is indexed
 * by oh mod this: with OH slots every row has its own) */
static inline int64_t nk_conv_dz_slots(const nk_conv_shape *s)
{
    const int64_t k = (s->kh - 1) * s->dh / s->sh + 1;
    return k < s->oh ? k : (s->oh > 0 ? s->oh : 1);
}
/* zero pixels left of a dz ring row (dx column w reads pixel w + pl - kw*dw) */
static inline int64_t nk_conv_dz_lp(const nk_conv_shape *s)
{
    const int64_t l = (s->kw - 1) * s->dw - s->pl;
    return l > 0 ? l : 0;
}
static inline int64_t nk_conv_dz_row_px(const nk_conv_shape *s)
{
    const int64_t a = s->w + s->pl, b = (s->ow - 1) * s->sw + 1;
    return nk_conv_dz_lp(s) + (a > b ? a : b);
}

/* Depthwise (nk_conv_dw.h): channels E = g*f rounded up to whole 64-byte
 * vectors, the pitch of every scratch row. */
static inline int64_t nk_conv_dw_ep(const nk_conv_shape *s, size_t esz)
{
    const int64_t vl = 64 / (int64_t)esz, e = s->g * s->f;
    return (e + vl - 1) / vl * vl;
}
/* rows of x a window spans (the forward / dW ring: ih mod this is unique
 * among the rows one output row reads), and never more than H (only rows
 * inside the image are stored: with H slots every row has its own) */
static inline int64_t nk_conv_dw_xslots(const nk_conv_shape *s)
{
    const int64_t k = (s->kh - 1) * s->dh + 1;
    return k < s->h ? k : (s->h > 0 ? s->h : 1);
}
/* Threads: as nk_conv_threads for the whole (all-group) work, and no more
 * than `items` (rows). */
static int nk_conv_dw_threads(const nk_conv_shape *s, int64_t items, int nt)
{
    nk_conv_shape t = *s;
    t.f = s->g * s->f;
    nt = nk_conv_threads(&t, nt);
    return (int64_t)nt > items ? (int)(items > 0 ? items : 1) : nt;
}

/* ------------------------------------- direct / depthwise workspaces
 * The one account of what the direct and depthwise kernels allocate, used
 * by the kernels to carve their workspace and by nk_conv_choose and the
 * drivers to decide whether they run.  In elements of esz bytes, as
 * doubles: evaluated for any validated geometry before anything of that
 * size exists (products of several sizes up to 2**30 overflow int64); exact
 * (below 2**53) whenever the workspace fits, which is when it is used. */

/* Direct kernels (nk_conv_direct.h), one group (s->c, s->f), one product:
 * *per elements per thread (row pointers, then the zero-padded x rows of
 * xrows or, for the data gradient, the dz ring and its tags); returns the
 * elements needed once (an upper bound: the weights zero-padded to Fp
 * channels and the bias, plus the dW partial sums of the blocks). */
static double nk_conv_direct_ws(const nk_conv_shape *s, size_t esz, int pass, double *per)
{
    const double fbk = (double)(128 / esz), vl = (double)(64 / esz);
    const double Fp = ceil((double)s->f / fbk) * fbk;
    const double R = (double)s->kh * (double)s->kw * (double)s->c;
    const double ptr_kh = (double)nk_conv_ptr_elems(s->kh, esz);
    double p;
    if (pass == NK_CONV_BWD_DATA) {
        const double ns = (double)nk_conv_dz_slots(s);
        p = ns * (double)nk_conv_dz_row_px(s) * Fp + ptr_kh +
            (double)nk_conv_ptr_elems(nk_conv_dz_slots(s), esz);
    } else {
        p = ptr_kh + (double)s->kh * (double)nk_conv_xrow_px(s) * (double)s->c;
    }
    *per = ceil(p / vl) * vl;
    double shared = (R + 1.0) * Fp;
    if (pass == NK_CONV_BWD_FILTER) {
        const double rows = (double)s->n * (double)s->oh;
        shared += (rows < NK_CONV_WGRAD_BLOCKS ? rows : NK_CONV_WGRAD_BLOCKS) * (R + 1.0) * Fp;
    }
    return shared;
}

/* Depthwise kernels (nk_conv_dw.h; s->c == 1, E = g*f channels).  Per
 * thread: the x-row ring of the forward / dW (row pointers, slot tags and,
 * unless rows point into x, nk_conv_dw_xslots rows of WX x Ep), and for the
 * data gradient the dz ring (nk_conv_dz_slots rows of nk_conv_dz_row_px x
 * Ep, pointers, tags and, with f > 1, a W x Ep row of sums). */
static int nk_conv_dw_rows_in_x(const nk_conv_shape *s, size_t esz)
{
    return s->f == 1 && s->g == nk_conv_dw_ep(s, esz) && s->ldx == s->g && s->pl == 0 &&
           nk_conv_xrow_px(s) <= s->w;
}
static double nk_conv_dw_xscr(const nk_conv_shape *s, size_t esz)
{
    const int64_t nsl = nk_conv_dw_xslots(s);
    return (double)nk_conv_ptr_elems(s->kh, esz) + (double)nk_conv_ptr_elems(nsl, esz) +
           (nk_conv_dw_rows_in_x(s, esz)
                ? 0.0
                : (double)nsl * (double)nk_conv_xrow_px(s) * (double)nk_conv_dw_ep(s, esz));
}
static double nk_conv_dw_dzscr(const nk_conv_shape *s, size_t esz)
{
    const int64_t ns = nk_conv_dz_slots(s), Ep = nk_conv_dw_ep(s, esz);
    return (double)ns * (double)nk_conv_dz_row_px(s) * (double)Ep +
           (double)nk_conv_ptr_elems(s->kh, esz) + (double)nk_conv_ptr_elems(ns, esz) +
           (s->f > 1 ? (double)s->w * (double)Ep : 0.0);
}
/* As nk_conv_direct_ws, for the depthwise kernels; BWD_FILTER is the dW
 * pass with the data gradient fused (both rings). */
static double nk_conv_dw_ws(const nk_conv_shape *s, size_t esz, int pass, double *per)
{
    const double vl = (double)(64 / esz), Ep = (double)nk_conv_dw_ep(s, esz);
    const double KK = (double)s->kh * (double)s->kw;
    const double xs = ceil(nk_conv_dw_xscr(s, esz) / vl) * vl;
    const double zs = ceil(nk_conv_dw_dzscr(s, esz) / vl) * vl;
    if (pass == NK_CONV_FWD) {
        *per = xs;
        return (KK + 1.0) * Ep;
    }
    if (pass == NK_CONV_BWD_DATA) {
        *per = zs;
        return KK * Ep;
    }
    const double rows = (double)s->n * (double)s->oh;
    *per = xs + zs;
    return ceil((double)nk_conv_xrow_px(s) * Ep / vl) * vl + KK * Ep +
           (rows < NK_CONV_WGRAD_BLOCKS ? rows : NK_CONV_WGRAD_BLOCKS) * (KK + 1.0) * Ep;
}

/* Whether a workspace of `per` elements per thread and `shared` once is
 * bounded by the work: with one thread at most NK_CONV_COL_BUDGET bytes,
 * and at most NK_CONV_WS_SLACK elements more than NK_CONV_WS_PER_MAC per
 * multiply-add of the product (macs).  Wide padding, large strides or
 * dilations make the direct kernels' zero-padded rows and rings large while
 * the work stays small: such convolutions go to im2col, whose workspaces
 * are tiles within the budget and copies of w. */
#define NK_CONV_WS_SLACK ((double)(1 << 20))
#define NK_CONV_WS_PER_MAC 8.0
static int nk_conv_ws_fits(double per, double shared, size_t esz, double macs)
{
    const double el = per + shared;
    return el * (double)esz <= (double)NK_CONV_COL_BUDGET &&
           el <= NK_CONV_WS_SLACK + NK_CONV_WS_PER_MAC * macs;
}

/* Threads (at most nt, at least 1) whose scratch, with the shared part,
 * stays within NK_CONV_COL_BUDGET.  The direct and depthwise results do not
 * depend on the thread count, so this changes only the speed. */
static int nk_conv_ws_threads(double per, double shared, size_t esz, int nt)
{
    const double room = (double)NK_CONV_COL_BUDGET / (double)esz - shared;
    if (nt > 1 && shared + (double)nt * per > (double)NK_CONV_COL_BUDGET / (double)esz) {
        const double k = per > 0.0 ? floor(room / per) : (double)nt;
        nt = k < 1.0 ? 1 : (k < (double)nt ? (int)k : nt);
    }
    return nt < 1 ? 1 : nt;
}

static double nk_conv_macs1(const nk_conv_shape *s)
{
    return (double)s->n * (double)s->oh * (double)s->ow * (double)s->kh * (double)s->kw *
           (double)s->c * (double)s->f;
}

/* Whether the direct kernels run this product of one group (s->c, s->f)
 * within their bounds (else im2col does, for algo AUTO and DIRECT alike). */
static int nk_conv_direct_fits(const nk_conv_shape *s, size_t esz, int pass)
{
    double per, shared = nk_conv_direct_ws(s, esz, pass, &per);
    return nk_conv_ws_fits(per, shared, esz, nk_conv_macs1(s));
}

/* Whether the depthwise kernels run this product (else the groups run as
 * separate one-channel convolutions, each direct or im2col). */
static int nk_conv_dw_fits(const nk_conv_shape *s, size_t esz, int pass)
{
    double per, shared = nk_conv_dw_ws(s, esz, pass, &per);
    return nk_conv_ws_fits(per, shared, esz, nk_conv_macs1(s) * (double)(s->g > 1 ? s->g : 1));
}

/* -------------------------------------------- direct kernels, per ISA
 * FB: channels per block (two 64-byte vectors); RB_*: register tile sizes
 * (pixels for forward and dX, kernel rows for dW; <= 12 for dW), chosen so
 * that the accumulators (2 * RB vectors) fit the ISA's register file;
 * depthwise (one vector of channels per tile): RB_DW pixels (forward, dX),
 * RB_DWW kernel taps (dW), both <= 12; WINO_FR: tiles per block (and
 * register tile, one vector of F each) of the fused Winograd, <= 12. */
#define ISA generic
#define RB_FWD 2
#define RB_WG 2
#define RB_DG 2
#define RB_DW 2
#define RB_DWW 2
#define WG_VB 16
#define WG_ACC 12
#define WG_NFMAX 4
#define WINO_FR 2
#include "nk_conv_direct_inst.h"

#if NK_X86
NK_TARGET_AVX2_BEGIN
#define ISA avx2
#define RB_FWD 3
#define RB_WG 3
#define RB_DG 3
#define RB_DW 4
#define RB_DWW 4
#define WG_VB 32
#define WG_ACC 12
#define WG_NFMAX 3
#define WINO_FR 6
#include "nk_conv_direct_inst.h"
NK_TARGET_END

NK_TARGET_AVX512_BEGIN
#define ISA avx512
#define RB_FWD 8
#define RB_WG 12
#define RB_DG 8
#define RB_DW 12
#define RB_DWW 12
#define WG_VB 64
#define WG_ACC 28
#define WG_NFMAX 4
#define WINO_FR 12
#include "nk_conv_direct_inst.h"
NK_TARGET_END
#endif /* NK_X86 */

/* ------------------------------- float window packing, MR = 8, AVX2
 * pack_win's layout (see nk_conv_body.h) for 8-row slivers: per tap, the 8
 * rows' channel runs are loaded 8 channels at a time and transposed in
 * registers (8x8), instead of 64 scalar strided stores. */
#if NK_X86
NK_TARGET_AVX2_BEGIN
#include <immintrin.h>
/* r[i][j] -> r[j][i]: an 8x8 transpose of 32-bit lanes in registers */
static inline __attribute__((always_inline)) void nk_tr8x8(__m256 r[8])
{
    __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
    __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
    __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
    __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
    __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
    __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
    __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
    r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
    r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
    r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
    r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
    r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
    r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
    r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
    r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

static inline void nk_tr8x8_store(__m256 r0, __m256 r1, __m256 r2, __m256 r3, __m256 r4,
                                  __m256 r5, __m256 r6, __m256 r7, float *dst)
{
    __m256 r[8] = {r0, r1, r2, r3, r4, r5, r6, r7};
    nk_tr8x8(r);
    for (int j = 0; j < 8; j++) _mm256_storeu_ps(dst + 8 * j, r[j]);
}

static inline __m256 nk_ld8(const float *p, const float *m)
{
    __m256 v = _mm256_loadu_ps(p);
    if (m) v = _mm256_and_ps(v, _mm256_cmp_ps(_mm256_loadu_ps(m), _mm256_setzero_ps(), _CMP_GT_OQ));
    return v;
}

/* One full 8-row sliver (all rows < mc), columns [p0, p0+kc). */
static void nk_pack_win8_s_avx2(const nk_conv_win *cw, int64_t row0, int64_t p0, int64_t kc,
                                float *restrict dst)
{
    const float *src = (const float *)cw->src, *msk = (const float *)cw->mask;
    const int64_t SH = cw->sh, SW = cw->sw, SC = cw->sc, SP = cw->sp, KW = cw->kw;
    const int64_t gab = cw->ga * cw->gb, img = SH * SW * SP;
    int64_t ha[8], wb[8], nb[8];
    for (int i = 0; i < 8; i++) {
        const int64_t row = row0 + i, n = row / gab, rem = row - n * gab;
        const int64_t a = rem / cw->gb, b = rem - a * cw->gb;
        ha[i] = a * cw->sa + cw->oa;
        wb[i] = b * cw->sb + cw->ob;
        nb[i] = n * img;
    }
    const int64_t kk0 = p0 / SC;
    int64_t kh = kk0 / KW, kw = kk0 - kh * KW, ch = p0 - kk0 * SC, p = 0;
    while (p < kc) {
        const int64_t run = SC - ch < kc - p ? SC - ch : kc - p;
        const float *sp[8], *mp[8];
        for (int i = 0; i < 8; i++) {
            const int64_t ih = ha[i] + kh * cw->ka, iw = wb[i] + kw * cw->kb;
            if ((uint64_t)ih < (uint64_t)SH && (uint64_t)iw < (uint64_t)SW) {
                const int64_t off = nb[i] + (ih * SW + iw) * SP + ch;
                sp[i] = src + off;
                mp[i] = msk ? msk + off : NULL;
            } else {
                sp[i] = NULL;
                mp[i] = NULL;
            }
        }
        float *d = dst + p * 8;
        int64_t q = 0;
        if (!msk && sp[0] && sp[1] && sp[2] && sp[3] && sp[4] && sp[5] && sp[6] && sp[7]) {
            /* all eight rows inside the image, no mask: no per-block tests */
            for (; q + 8 <= run; q += 8)
                nk_tr8x8_store(_mm256_loadu_ps(sp[0] + q), _mm256_loadu_ps(sp[1] + q),
                               _mm256_loadu_ps(sp[2] + q), _mm256_loadu_ps(sp[3] + q),
                               _mm256_loadu_ps(sp[4] + q), _mm256_loadu_ps(sp[5] + q),
                               _mm256_loadu_ps(sp[6] + q), _mm256_loadu_ps(sp[7] + q),
                               d + q * 8);
        }
        for (; q + 8 <= run; q += 8) {
            __m256 r[8];
            for (int i = 0; i < 8; i++)
                r[i] = sp[i] ? nk_ld8(sp[i] + q, mp[i] ? mp[i] + q : NULL) : _mm256_setzero_ps();
            nk_tr8x8_store(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], d + q * 8);
        }
        for (; q < run; q++)
            for (int i = 0; i < 8; i++) {
                float v = 0.0f;
                if (sp[i]) {
                    v = sp[i][q];
                    if (mp[i] && !(mp[i][q] > 0.0f)) v = 0.0f;
                }
                d[q * 8 + i] = v;
            }
        p += run;
        ch = 0;
        if (++kw == KW) { kw = 0; kh++; }
    }
}
NK_TARGET_END

/* The dW GEMM's A block (rows [i0, i0 + mc) of cols^T, pixels [p0, p0 +
 * kc): see pack_wt in nk_conv_body.h) packed by AVX-512 code, when C % 8 ==
 * 0 and the kernel's MR is 8 (every 8-row sliver is then one tap's
 * consecutive channels; the GEMM blocks rows in multiples of MR):
 * nk_pack_wt8_s_avx512 into float32 slivers (pack_wt's layout and values),
 * nk_pack_wt_bf16_s straight into the bf16 kernel's pair slivers
 * (nk_pack_a_fn's pack_a_lowp; VCVTNE2PS2BF16: round to nearest even, NaN
 * quieted, denormals to signed zero, as the conversion of float32 slivers,
 * and one word permutation per pixel pair and 16 channels).  Both walk the
 * pixels in runs whose source positions (tap (0, 0), padding not applied)
 * are computed once for all taps; a tap's pixel outside the image reads
 * nothing (a zero mask) and packs zeros. */
#define NK_WT_RUN 256
typedef struct {
    int64_t base[NK_WT_RUN + 1];        /* image offset of tap (0, 0)'s pixel */
    int32_t ih0[NK_WT_RUN + 1], iw0[NK_WT_RUN + 1];
    int64_t n, oh, ow;                  /* the position after the run */
} nk_wt_run;

static void nk_wt_run_start(const nk_conv_win *cw, int64_t p0, nk_wt_run *r)
{
    const nk_conv_shape *s = cw->s;
    const int64_t pp = p0 + cw->p_off, ohw = s->oh * s->ow, rem = pp % ohw;
    r->n = pp / ohw;
    r->oh = rem / s->ow;
    r->ow = rem % s->ow;
}

/* the next qn (<= NK_WT_RUN) pixels; entry qn never lies inside the image
 * (the partner of an odd kc's last pixel) */
static void nk_wt_run_fill(const nk_conv_shape *s, int64_t qn, nk_wt_run *r)
{
    const int64_t W = s->w, LD = s->ldx, img = s->h * W * LD;
    for (int64_t q = 0; q < qn; q++) {
        r->ih0[q] = (int32_t)(r->oh * s->sh);
        r->iw0[q] = (int32_t)(r->ow * s->sw);
        r->base[q] = r->n * img + (r->oh * s->sh * W + r->ow * s->sw) * LD;
        if (++r->ow == s->ow) { r->ow = 0; if (++r->oh == s->oh) { r->oh = 0; r->n++; } }
    }
    r->ih0[qn] = (int32_t)(s->h + 1 + s->dh * s->kh + s->pt);
    r->iw0[qn] = 0;
    r->base[qn] = 0;
}

/* Rows [g0, g1) of the block: one tap and its channels [c0, c0 + g1 - g0);
 * returns g1. */
static inline int64_t nk_wt_tap(const nk_conv_shape *s, int64_t i0, int64_t g0, int64_t mc,
                                int64_t *offh, int64_t *offw, int64_t *c0)
{
    const int64_t r = i0 + g0, kk = r / s->c, kh = kk / s->kw, kw = kk - kh * s->kw;
    *c0 = r - kk * s->c;
    *offh = kh * s->dh - s->pt;
    *offw = kw * s->dw - s->pl;
    return g0 + (s->c - *c0) < mc ? g0 + (s->c - *c0) : mc;
}

static inline int nk_wt_in(const nk_conv_shape *s, const nk_wt_run *r, int64_t q, int64_t offh,
                           int64_t offw)
{
    return (uint64_t)(r->ih0[q] + offh) < (uint64_t)s->h &&
           (uint64_t)(r->iw0[q] + offw) < (uint64_t)s->w;
}

NK_TARGET_AVX512_BEGIN
static void nk_pack_wt8_s_avx512(const void *ctx, int64_t i0, int64_t mc, int64_t p0,
                                 int64_t kc, int mr, void *a_pk)
{
    const nk_conv_win *cw = (const nk_conv_win *)ctx;
    const nk_conv_shape *s = cw->s;
    const float *x = (const float *)cw->src;
    float *pk = (float *)a_pk;
    nk_wt_run run;
    (void)mr; /* 8: checked by the caller */
    nk_wt_run_start(cw, p0, &run);
    for (int64_t q0 = 0; q0 < kc; q0 += NK_WT_RUN) {
        const int64_t qn = kc - q0 < NK_WT_RUN ? kc - q0 : NK_WT_RUN;
        nk_wt_run_fill(s, qn, &run);
        for (int64_t g0 = 0, g1; g0 < mc; g0 = g1) {
            int64_t offh, offw, c0;
            g1 = nk_wt_tap(s, i0, g0, mc, &offh, &offw, &c0);
            const int64_t nch = g1 - g0, toff = (offh * s->w + offw) * s->ldx + c0;
            float *dst = pk + g0 * kc + q0 * 8; /* sliver g0 / 8, pixel q0 */
            for (int64_t q = 0; q < qn; q++) {
                const int v = nk_wt_in(s, &run, q, offh, offw);
                const float *pa = v ? x + run.base[q] + toff : x;
                const __mmask16 m = v ? 0xFFFF : 0;
                float *d = dst + q * 8; /* + sliver * 8 kc */
                int64_t c = 0;
                for (; c + 16 <= nch; c += 16) {
                    const __m512 a = _mm512_maskz_loadu_ps(m, pa + (v ? c : 0));
                    _mm256_storeu_ps(d + c * kc, _mm512_castps512_ps256(a));
                    _mm256_storeu_ps(d + (c + 8) * kc, _mm512_extractf32x8_ps(a, 1));
                }
                if (c < nch)
                    _mm256_storeu_ps(d + c * kc, _mm256_maskz_loadu_ps((__mmask8)m, pa + (v ? c : 0)));
            }
        }
    }
}
NK_TARGET_END

NK_TARGET_AVX512BF16_BEGIN
static const uint16_t nk_pair_idx16[32] = {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23,
                                           8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31};
static const uint16_t nk_pair_idx8[16] = {0, 8, 1, 9, 2, 10, 3, 11, 4, 12, 5, 13, 6, 14, 7, 15};

static void nk_pack_wt_bf16_s(const void *ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                              int mr, void *a_pk)
{
    const nk_conv_win *cw = (const nk_conv_win *)ctx;
    const nk_conv_shape *s = cw->s;
    const float *x = (const float *)cw->src;
    const int64_t kc2 = (kc + 1) & ~(int64_t)1;
    uint16_t *pk = (uint16_t *)a_pk;
    const __m512i idx16 = _mm512_loadu_si512((const void *)nk_pair_idx16);
    const __m256i idx8 = _mm256_loadu_si256((const __m256i *)nk_pair_idx8);
    nk_wt_run run;
    (void)mr; /* 8: checked by the caller */
    nk_wt_run_start(cw, p0, &run);
    for (int64_t q0 = 0; q0 < kc; q0 += NK_WT_RUN) { /* NK_WT_RUN even: q0 starts a pair */
        const int64_t qn = kc - q0 < NK_WT_RUN ? kc - q0 : NK_WT_RUN;
        nk_wt_run_fill(s, qn, &run);
        for (int64_t g0 = 0, g1; g0 < mc; g0 = g1) {
            int64_t offh, offw, c0;
            g1 = nk_wt_tap(s, i0, g0, mc, &offh, &offw, &c0);
            const int64_t nch = g1 - g0, toff = (offh * s->w + offw) * s->ldx + c0;
            uint16_t *dst = pk + g0 * kc2 + q0 * 8; /* sliver g0 / 8, pair q0 / 2 */
            for (int64_t q = 0; q < qn; q += 2) {
                const int va = nk_wt_in(s, &run, q, offh, offw);
                const int vb = nk_wt_in(s, &run, q + 1, offh, offw);
                const float *pa = va ? x + run.base[q] + toff : x;
                const float *pb = vb ? x + run.base[q + 1] + toff : x;
                const __mmask16 ma = va ? 0xFFFF : 0, mb = vb ? 0xFFFF : 0;
                uint16_t *d = dst + q * 8; /* + sliver * 8 kc2 */
                int64_t c = 0;
                for (; c + 16 <= nch; c += 16) {
                    const __m512 a = _mm512_maskz_loadu_ps(ma, pa + (va ? c : 0));
                    const __m512 b = _mm512_maskz_loadu_ps(mb, pb + (vb ? c : 0));
                    const __m512i v =
                        _mm512_permutexvar_epi16(idx16, (__m512i)_mm512_cvtne2ps_pbh(b, a));
                    _mm256_storeu_si256((__m256i *)(d + c * kc2), _mm512_castsi512_si256(v));
                    _mm256_storeu_si256((__m256i *)(d + (c + 8) * kc2),
                                        _mm512_extracti64x4_epi64(v, 1));
                }
                if (c < nch) { /* 8 channels left */
                    const __m256 a = _mm256_maskz_loadu_ps((__mmask8)ma, pa + (va ? c : 0));
                    const __m256 b = _mm256_maskz_loadu_ps((__mmask8)mb, pb + (vb ? c : 0));
                    const __m512 ab = _mm512_insertf32x8(_mm512_castps256_ps512(a), b, 1);
                    const __m256i v =
                        _mm256_permutexvar_epi16(idx8, (__m256i)_mm512_cvtneps_pbh(ab));
                    _mm256_storeu_si256((__m256i *)(d + c * kc2), v);
                }
            }
        }
    }
}

/* 8 rows x 16 float32 channels (lanes past cnt zero, pointers where the
 * mask m[i] is 0 not read) rounded to bf16 and stored as the 8 pairs
 * [pair][row][2] at d (the pairs holding the first cnt channels). */
static inline __attribute__((always_inline)) void
nk_win_bf16_block(const float *const *sp, const __mmask16 *m, int cnt, uint16_t *d)
{
    __m256 r[8];
    for (int i = 0; i < 8; i++)
        r[i] = _mm256_castsi256_ps((__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m[i], sp[i])));
    nk_tr8x8(r); /* r[j]: pair j of the 8 rows */
    for (int j = 0; 2 * j < cnt; j++) _mm256_storeu_ps((float *)(d + 16 * j), r[j]);
}

/* pack_win's block (see nk_conv_body.h) straight into the bf16 kernel's
 * pair slivers of 8 rows (nk_pack_a_fn's pack_a_lowp): per tap, 8 rows x 16
 * channels are loaded (masked where the row lies outside the image, past mc
 * or the mask is not > 0), rounded by VCVTNEPS2BF16 as the conversion of
 * pack_win's float32 slivers rounds them, and the 8 x 8 channel pairs
 * transposed in registers: half the shuffles of the float32 packing and no
 * second pass.  Needs an even source channel count and an even p0 (a pair
 * never spans two taps; nk_conv_pack_win_bf16_ok); an odd kc's last pair
 * gets a zero partner from the masked load.  Where a sliver's 8 pixels lie
 * in one source row, inside the image and unmasked, plain strided loads
 * without per-row tests (16 -> 32 stride 2 on 32x32, batch 128, 1 thread:
 * 2.66 -> 2.32 ms). */
static void nk_pack_win_bf16_s(const void *ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                               int mr, void *a_pk)
{
    const nk_conv_win *cw = (const nk_conv_win *)ctx;
    const float *src = (const float *)cw->src, *msk = (const float *)cw->mask;
    const int64_t SH = cw->sh, SW = cw->sw, SC = cw->sc, SP = cw->sp, KW = cw->kw;
    const int64_t gab = cw->ga * cw->gb, img = SH * SW * SP;
    const int64_t kc2 = (kc + 1) & ~(int64_t)1, kk0 = p0 / SC;
    (void)mr; /* 8: checked by the caller */
    for (int64_t r0 = 0; r0 < mc; r0 += 8) {
        uint16_t *dst = (uint16_t *)a_pk + r0 * kc2;
        const int64_t row = i0 + r0, n = row / gab, rem = row - n * gab;
        const int64_t a = rem / cw->gb, b = rem - a * cw->gb;
        /* the 8 rows share n and a (pixels b .. b + 7 of one grid row) */
        const int same = r0 + 8 <= mc && b + 8 <= cw->gb;
        int64_t ha[8], wb[8], nb[8];
        for (int i = 0; i < 8; i++) { /* row r0 + i: grid (n, a, b) stepped by i */
            int64_t ni = n, ai = a, bi = b + i;
            while (bi >= cw->gb) { bi -= cw->gb; if (++ai == cw->ga) { ai = 0; ni++; } }
            ha[i] = r0 + i < mc ? ai * cw->sa + cw->oa : INT64_MIN / 2; /* never inside */
            wb[i] = bi * cw->sb + cw->ob;
            nb[i] = ni * img;
        }
        {   /* the source rows of the sliver 3 ahead (in this block) into L1
             * (16 -> 32 stride 2, 32x32 images: 2.4 -> 2.2 ms, 1 thread) */
            const int64_t fr = row + 8 * 3, fn = fr / gab, frem = fr - fn * gab;
            const int64_t fa = frem / cw->gb, fb = frem - fa * cw->gb;
            const int64_t kh1 = (p0 + kc - 1) / SC / KW;
            int64_t c0 = fb * cw->sb + cw->ob, c1 = c0 + 7 * cw->sb + (KW - 1) * cw->kb + 1;
            if (c0 < 0) c0 = 0;
            if (c1 > SW) c1 = SW;
            if (fr + 8 <= i0 + mc && fb + 8 <= cw->gb && cw->kb > 0 && cw->sb > 0)
                for (int64_t k = kk0 / KW; k <= kh1; k++) {
                    const int64_t ih = fa * cw->sa + cw->oa + k * cw->ka;
                    if ((uint64_t)ih >= (uint64_t)SH || c1 <= c0) continue;
                    const char *b0 = (const char *)(src + fn * img + (ih * SW + c0) * SP);
                    const char *b1 = (const char *)(src + fn * img + (ih * SW + c1) * SP);
                    for (; b0 < b1; b0 += 64) _mm_prefetch(b0, _MM_HINT_T0);
                }
        }
        int64_t kh = kk0 / KW, kw = kk0 - kh * KW, ch = p0 - kk0 * SC, p = 0;
        while (p < kc) {
            const int64_t run = SC - ch < kc - p ? SC - ch : kc - p;
            uint16_t *d = dst + p * 8; /* pair p / 2 */
            const float *sp[8];
            __mmask16 m[8];
            int64_t q = 0;
            const int64_t ih = ha[0] + kh * cw->ka, iw0 = wb[0] + kw * cw->kb;
            const int64_t iw7 = wb[7] + kw * cw->kb;
            if (same && !msk && (uint64_t)ih < (uint64_t)SH && (uint64_t)iw0 < (uint64_t)SW &&
                (uint64_t)iw7 < (uint64_t)SW) {
                /* one source row, every pixel inside (the columns between
                 * iw0 and iw7 are too): plain strided loads */
                const float *s0 = src + nb[0] + (ih * SW + iw0) * SP + ch;
                const int64_t rs = cw->sb * SP;
                for (int i = 0; i < 8; i++) { sp[i] = s0 + i * rs; m[i] = 0xFFFF; }
                for (; q + 16 <= run; q += 16) {
                    const float *spq[8] = {sp[0] + q, sp[1] + q, sp[2] + q, sp[3] + q,
                                           sp[4] + q, sp[5] + q, sp[6] + q, sp[7] + q};
                    nk_win_bf16_block(spq, m, 16, d + q * 8);
                }
            } else {
                for (int i = 0; i < 8; i++) {
                    const int64_t ihi = ha[i] + kh * cw->ka, iwi = wb[i] + kw * cw->kb;
                    const int in = (uint64_t)ihi < (uint64_t)SH && (uint64_t)iwi < (uint64_t)SW;
                    sp[i] = src + (in ? nb[i] + (ihi * SW + iwi) * SP + ch : 0);
                    m[i] = in ? 0xFFFF : 0;
                }
            }
            for (; q < run; q += 16) {
                const int cnt = run - q < 16 ? (int)(run - q) : 16;
                const __mmask16 lm = (__mmask16)((1u << cnt) - 1);
                const float *spq[8];
                __mmask16 mq[8];
                for (int i = 0; i < 8; i++) {
                    mq[i] = m[i] & lm;
                    if (msk && mq[i]) /* the mask's zeros: zeros */
                        mq[i] = _mm512_mask_cmp_ps_mask(
                            mq[i], _mm512_maskz_loadu_ps(mq[i], msk + (sp[i] - src) + q),
                            _mm512_setzero_ps(), _CMP_GT_OQ);
                    spq[i] = mq[i] ? sp[i] + q : src;
                }
                nk_win_bf16_block(spq, mq, cnt, d + q * 8);
            }
            p += run;
            ch = 0;
            if (++kw == KW) { kw = 0; kh++; }
        }
    }
}

/* The 16 products M = V @ U of a fused Winograd block (WFN(wino_fused_b),
 * float32 with bf16 products, WINO_FR = 12 tiles) with VDPBF16PS: V and U
 * in bf16 pairs of channels (layouts: nk_wino.u_bf), M in float32 (tile j,
 * plane xi at (16 j + xi) * fp).  Register tiles of 12 tiles x one or two
 * vectors of F; channel pairs in ascending order.  Half the instructions of
 * the float32 products (each does two multiply-adds per lane). */
#define NK_FBF_TILE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
static void nk_wino_fgemm_bf16(const uint32_t *vw, const uint32_t *uw, int64_t c2, int64_t fp,
                               void *mb_)
{
    float *mb = (float *)mb_;
    for (int64_t xi = 0; xi < 16; xi++) {
        const uint32_t *vr = vw + xi * c2;
        float *mr = mb + xi * fp;
        const uint32_t *up = uw + xi * c2 * fp;
        int64_t f0 = 0;
#define NK_FBF_ACC(j) __m512 a##j = _mm512_setzero_ps(), b##j = _mm512_setzero_ps();
#define NK_FBF_ACC1(j) __m512 a##j = _mm512_setzero_ps();
#define NK_FBF_DP2(j)                                                                       \
    {                                                                                       \
        const __m512bh vj = (__m512bh)_mm512_set1_epi32((int)vr[(16 * (j)) * c2 + k]);      \
        a##j = _mm512_dpbf16_ps(a##j, u0, vj);                                              \
        b##j = _mm512_dpbf16_ps(b##j, u1, vj);                                              \
    }
#define NK_FBF_ST2(j)                                                                       \
    _mm512_storeu_ps(mr + (16 * (j)) * fp + f0, a##j);                                      \
    _mm512_storeu_ps(mr + (16 * (j)) * fp + f0 + 16, b##j);
        for (; f0 + 32 <= fp; f0 += 32) {
            NK_FBF_TILE(NK_FBF_ACC)
            for (int64_t k = 0; k < c2; k++) {
                const __m512bh u0 = (__m512bh)_mm512_loadu_si512(up + k * fp + f0);
                const __m512bh u1 = (__m512bh)_mm512_loadu_si512(up + k * fp + f0 + 16);
                NK_FBF_TILE(NK_FBF_DP2)
            }
            NK_FBF_TILE(NK_FBF_ST2)
        }
#define NK_FBF_DP1(j)                                                                       \
    a##j = _mm512_dpbf16_ps(a##j, u0,                                                       \
                            (__m512bh)_mm512_set1_epi32((int)vr[(16 * (j)) * c2 + k]));
#define NK_FBF_ST1(j) _mm512_storeu_ps(mr + (16 * (j)) * fp + f0, a##j);
        for (; f0 < fp; f0 += 16) {
            NK_FBF_TILE(NK_FBF_ACC1)
            for (int64_t k = 0; k < c2; k++) {
                const __m512bh u0 = (__m512bh)_mm512_loadu_si512(up + k * fp + f0);
                NK_FBF_TILE(NK_FBF_DP1)
            }
            NK_FBF_TILE(NK_FBF_ST1)
        }
#undef NK_FBF_ACC
#undef NK_FBF_ACC1
#undef NK_FBF_DP2
#undef NK_FBF_ST2
#undef NK_FBF_DP1
#undef NK_FBF_ST1
    }
}
#undef NK_FBF_TILE

/* One register tile of nk_wino_wgemm_bf16: CB rows (channels of x) x NVF
 * vectors of F, over np pairs of tiles in ascending order */
static inline __attribute__((always_inline)) void
nk_wwg_bf16_tile(const uint32_t *restrict v, const uint32_t *restrict z, int64_t np, int64_t cp,
                 int64_t fp, float *restrict m, const int CB, const int NVF)
{
    __m512 acc[16][2];
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) acc[i][k] = _mm512_loadu_ps(m + i * fp + k * 16);
    for (int64_t q = 0; q < np; q++) {
        __m512bh zv[2];
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) zv[k] = (__m512bh)_mm512_loadu_si512(z + q * fp + k * 16);
        const uint32_t *vr = v + q * cp;
#pragma GCC unroll 16
        for (int i = 0; i < CB; i++) {
            const __m512bh b = (__m512bh)_mm512_set1_epi32((int)vr[i]);
#pragma GCC unroll 2
            for (int k = 0; k < NVF; k++) acc[i][k] = _mm512_dpbf16_ps(acc[i][k], zv[k], b);
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) _mm512_storeu_ps(m + i * fp + k * 16, acc[i][k]);
}

/* The 16 products of a Winograd weight-gradient block with bf16 products
 * (nk_wino.wgemm_bf; layouts in nk_conv_wino_wgrad.h) with VDPBF16PS:
 * M[xi] (cp x fp, float32) += V[xi]^T Z[xi] over np pairs of tiles, one
 * instruction per pair, register tiles of 8 rows x 2 vectors or 16 x 1 */
static void nk_wino_wgemm_bf16(const uint32_t *vw, const uint32_t *zw, int64_t np, int64_t C,
                               int64_t cp, int64_t fp, int64_t vxs, int64_t zxs, void *mp_)
{
    float *mp = (float *)mp_;
#define NK_WWG_BF16_TILE(v, z, m, CB, NVF) nk_wwg_bf16_tile(v, z, np, cp, fp, m, CB, NVF)
    NK_WWG_PLANES(16, vw, vxs, zw, zxs, mp, C, cp, fp, NK_WWG_BF16_TILE)
#undef NK_WWG_BF16_TILE
}

NK_TARGET_END

/* Whether the packers above can pack this dW GEMM's A: C % 8 == 0 and the
 * float32 kernel of the running ISA is AVX-512's (MR 8), and for the bf16
 * one the bf16 kernels in use are the native ones (with the emulated ones
 * the float32 packing and its conversion run: the same bits). */
static int nk_conv_pack_wt8_ok(const nk_conv_shape *s)
{
    return s->c % 8 == 0 && nk_get_isa() == NK_ISA_AVX512 && nk_skern_current()->mr == 8;
}

static int nk_conv_bf16_packers_ok(void)
{
    const nk_bkern *bk = nk_bkern_current();
    return nk_bf16_native() && bk == &nk_bkern_avx512bf16 && bk->mr == 8 && bk->kc % 2 == 0;
}

static int nk_conv_pack_wt_bf16_ok(const nk_conv_shape *s)
{
    return s->c % 8 == 0 && nk_conv_bf16_packers_ok();
}

/* Whether nk_pack_win_bf16_s can pack the window GEMM of cw: the native
 * bf16 kernel as above, an even channel count (and even column blocks:
 * an even KC). */
static int nk_conv_pack_win_bf16_ok(const nk_conv_win *cw)
{
    return cw->sc % 2 == 0 && nk_conv_bf16_packers_ok();
}
#endif /* NK_X86 */

/* ------------------------------------------------- per-dtype drivers */
#define T float
#define S s
#define ARGS nk_sgemm_args
#define GEMM nk_sgemm
#define KTAB nk_skern
#define KCUR nk_skern_current
#define EPT nk_sep
#define NK_CONV_FLOAT 1
#include "nk_conv_body.h"
#undef NK_CONV_FLOAT
#define T double
#define S d
#define ARGS nk_dgemm_args
#define GEMM nk_dgemm
#define KTAB nk_dkern
#define KCUR nk_dkern_current
#define EPT nk_dep
#include "nk_conv_body.h"

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

#ifndef NK_CONV_BF16_CHUNK
#define NK_CONV_BF16_CHUNK (512 << 10) /* bytes of float32 outputs per pass */
#endif
int nk_conv2d_forward_bf16(const nk_conv_shape *s, int algo, const float *x_nhwc,
                           const float *w_hwcf, const float *bias_f, int act, uint16_t *y16,
                           int nthreads)
{
    nk_conv_shape t = *s;
    t.out_bf16 = 1;
    int rc = forward_s(&t, algo, x_nhwc, w_hwcf, bias_f, act, (float *)y16, nthreads);
    if (rc != NK_CONV_NEED_F32) return rc;
    /* the other paths: float32 into a workspace (the output's pixels at
     * their pitch), then rounded; a few images at a time, so that the
     * float32 outputs are rounded while they are in cache (every output
     * pixel's sum is the same with any batch: the same bits).  In
     * ResNet-20's step (bf16, batch 128, 1 thread), against one float32
     * workspace for the batch: the first convolution (3 -> 16, direct)
     * 2.76 -> 1.92 ms, the strided ones (im2col) 6.2 -> 6.0 ms together. */
    t.out_bf16 = 0;
    const nk_conv_shape u = nk_conv_norm(&t); /* the output's pitch and channels */
    const int64_t ldy = u.ldy, width = u.g * u.f, ipix = u.oh * u.ow;
    const int64_t ipitch = u.h * u.w * u.ldx; /* x's elements per image */
    if (u.n == 0 || ipix * ldy == 0) return 0; /* no outputs */
    int64_t nb = NK_CONV_BF16_CHUNK / (ipix * ldy * (int64_t)sizeof(float));
    if (nb < 1) nb = 1;
    if (nb > u.n) nb = u.n;
    int slot = 0;
    float *y = (float *)nk_ws_acquire((size_t)(nb * ipix * ldy) * sizeof(float) + 64, &slot);
    if (!y) return -1;
    rc = 0;
    for (int64_t n0 = 0; n0 < u.n && rc == 0; n0 += nb) {
        t.n = u.n - n0 < nb ? u.n - n0 : nb;
        rc = forward_s(&t, algo, x_nhwc + n0 * ipitch, w_hwcf, bias_f, act, y, nthreads);
        if (rc == 0) nk_f32_to_bf16_ftz_rows(y, y16 + n0 * ipix * ldy, t.n * ipix, width, ldy);
    }
    nk_ws_release(y, slot);
    return rc;
}

int nk_conv2d_forward_maxpool(const nk_conv_shape *s, int dbl, int algo, const void *x_nhwc,
                              const void *w_hwcf, const void *bias_f, int act, void *y_nhwf,
                              void *pool_y, int32_t *pool_i, int nthreads)
{
    if (dbl)
        return forward_pool_d(s, algo, (const double *)x_nhwc, (const double *)w_hwcf,
                              (const double *)bias_f, act, (double *)y_nhwf, (double *)pool_y,
                              pool_i, nthreads);
    return forward_pool_s(s, algo, (const float *)x_nhwc, (const float *)w_hwcf,
                          (const float *)bias_f, act, (float *)y_nhwf, (float *)pool_y, pool_i,
                          nthreads);
}

int nk_conv2d_backward_maxpool(const nk_conv_shape *s, int dbl, int algo, const void *dy_pool,
                               const int32_t *pool_i, const void *pool_y, const void *x_nhwc,
                               const void *w_hwcf, void *dx_nhwc, int dx_accumulate,
                               void *dw_hwcf, void *db_f, int nthreads)
{
    if (dbl)
        return backward_maxpool_d(s, algo, (const double *)dy_pool, pool_i,
                                  (const double *)pool_y, (const double *)x_nhwc,
                                  (const double *)w_hwcf, (double *)dx_nhwc, dx_accumulate,
                                  (double *)dw_hwcf, (double *)db_f, nthreads);
    return backward_maxpool_s(s, algo, (const float *)dy_pool, pool_i, (const float *)pool_y,
                              (const float *)x_nhwc, (const float *)w_hwcf, (float *)dx_nhwc,
                              dx_accumulate, (float *)dw_hwcf, (float *)db_f, nthreads);
}

int nk_conv2d_backward_maxpool_fused(const nk_conv_shape *s, int dbl, int algo, int need_dx,
                                     int need_dw, int need_db)
{
    nk_conv_shape t = nk_conv_norm(s), a, b;
    const nk_conv_shape *pa, *pb;
    if (dbl) return 0;
    return maxpool_bwd_fused_s(&t, algo, need_dx, need_dw, need_db, &pa, &a, &pb, &b);
}

int nk_conv2d_backward(const nk_conv_shape *s, int dbl, int algo, const void *dy_nhwf,
                       const void *x_nhwc, const void *w_hwcf, int act, const void *y_nhwf,
                       void *dx_nhwc, int dx_accumulate, void *dw_hwcf, void *db_f,
                       int nthreads)
{
    if (dbl)
        return backward_d(s, algo, (const double *)dy_nhwf, (const double *)x_nhwc,
                          (const double *)w_hwcf, act, (const double *)y_nhwf,
                          (double *)dx_nhwc, dx_accumulate, (double *)dw_hwcf, (double *)db_f,
                          nthreads);
    return backward_s(s, algo, (const float *)dy_nhwf, (const float *)x_nhwc,
                      (const float *)w_hwcf, act, (const float *)y_nhwf, (float *)dx_nhwc,
                      dx_accumulate, (float *)dw_hwcf, (float *)db_f, nthreads);
}

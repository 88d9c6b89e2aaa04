/* Winograd F(4x4, 3x3) on the fused path (float32 products, C and F at
 * most 64; where: nk_conv_use_wino4): included by nk_conv_wino.h (float32 only) with its T, WV, WVL,
 * WFN, WFR_* and helpers.  The algorithm is F(2x2, 3x3)'s (nk_conv_body.h,
 * CFN(wino)) with 4x4 output tiles read from 6x6 patches and 36 transformed
 * planes, xi = 6 * row + column (Lavin and Gray 2016, points 0, 1, -1, 2,
 * -2 and infinity):
 *
 *   B^T = [4  0 -5  0 1 0;  0 -4 -4  1 1 0;  0  4 -4 -1 1 0;
 *          0 -2 -1  2 1 0;  0  2 -1 -2 1 0;  0  4  0 -5 0 1]
 *   A^T = [1 1  1 1  1 0;  0 1 -1 2 -2 0;  0 1 1 4 4 0;  0 1 -1 8 -8 1]
 *   G   = [1/4 0 0; -1/6 -1/6 -1/6; -1/6 1/6 -1/6; 1/24 1/12 1/6;
 *          1/24 -1/12 1/6; 0 0 1]                (CFN(wino4_u))
 *
 * 4x4 outputs take 36 products per channel pair instead of 4 x 16 = 64 (and
 * 144 direct): 1.78x fewer than F(2x2, 3x3).  The larger coefficients cost
 * accuracy: errors up to 48 (forward) and 73 (dX) ulps of the magnitude
 * (the sum of |x| |w|) of the output in random shapes, against 2 and 7.5
 * for F(2x2, 3x3); tested within 64 ulps of that sum over the 6x6 patch
 * (reference.WINO4_C, tests/test_conv_winograd4.py).  Hence float32 with
 * float32 products only.
 *
 * Tile t = (n, th, tw) on the N x TH x TW grid (TH = ceil(OH / 4)) covers
 * outputs (4th + a, 4tw + b), a, b < 4, and reads the 6x6 patch whose
 * top-left pixel is (4th - pt, 4tw - pl), zero outside the image. */

/* The 1-D input transform t = B^T d of six vectors */
WAI void WFN(w4_bt)(WV d0, WV d1, WV d2, WV d3, WV d4, WV d5, WV *t, const int ts)
{
    const WV s12 = d1 + d2, m12 = d1 - d2, m42 = d4 - d2, m31 = d3 - d1;
    t[0] = (d4 - (T)5 * d2) + (T)4 * d0;
    t[ts] = (d3 + d4) - (T)4 * s12;
    t[2 * ts] = (d4 - d3) + (T)4 * m12;
    t[3 * ts] = m42 + (T)2 * m31;
    t[4 * ts] = m42 - (T)2 * m31;
    t[5 * ts] = (d5 - (T)5 * d3) + (T)4 * d1;
}

/* The 1-D output transform o = A^T m of six vectors */
WAI void WFN(w4_at)(WV m0, WV m1, WV m2, WV m3, WV m4, WV m5, WV *o, const int os)
{
    const WV s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    o[0] = (m0 + s12) + s34;
    o[os] = d12 + (T)2 * d34;
    o[2 * os] = s12 + (T)4 * s34;
    o[3 * os] = (d12 + (T)8 * d34) + m5;
}

/* Column b of the row stage B^T d of patch q: u[6a + b], a < 6, channels
 * [c0, c0 + cn) */
WAI void WFN(w4_col)(const WFN(wsrc) *q, uint64_t ok, const T *zero, int masked, int64_t c0,
                     int64_t cn, const int b, WV *u)
{
    WV d[6];
#pragma GCC unroll 6
    for (int a = 0; a < 6; a++) d[a] = WFN(wino_ld)(q, ok, zero, masked, a, b, c0, cn, 4);
    WFN(w4_bt)(d[0], d[1], d[2], d[3], d[4], d[5], u + b, 6);
}

/* The tile's V = B^T d B, channels [c0, c0 + cn), into its 36 planes v[xi]:
 * with left, the row stage of columns 0, 1 is the left neighbour's columns
 * 4, 5 kept in keep (same operations, so same results); keep then holds
 * this tile's (unless keep is NULL). */
WAI void WFN(w4_vtile)(const WFN(wsrc) *q, uint64_t ok, const T *zero, int masked, int64_t c0,
                       int64_t cn, int left, WV *keep, WV *v)
{
    WV uu[36];
    if (left) {
#pragma GCC unroll 6
        for (int a = 0; a < 6; a++) {
            uu[6 * a] = keep[2 * a];
            uu[6 * a + 1] = keep[2 * a + 1];
        }
    } else {
        WFN(w4_col)(q, ok, zero, masked, c0, cn, 0, uu);
        WFN(w4_col)(q, ok, zero, masked, c0, cn, 1, uu);
    }
#pragma GCC unroll 4
    for (int b = 2; b < 6; b++) WFN(w4_col)(q, ok, zero, masked, c0, cn, b, uu);
    if (keep)
#pragma GCC unroll 6
        for (int a = 0; a < 6; a++) {
            keep[2 * a] = uu[6 * a + 4];
            keep[2 * a + 1] = uu[6 * a + 5];
        }
    /* columns: (B^T d) B */
#pragma GCC unroll 6
    for (int a = 0; a < 6; a++) {
        const WV *r = uu + 6 * a;
        WFN(w4_bt)(r[0], r[1], r[2], r[3], r[4], r[5], v + 6 * a, 1);
    }
}

/* w4_vtile of patch q (wino_src, once per tile): the whole tiles inside the
 * image compiled apart, without the selects */
WAI void WFN(w4_vtile_at)(const WFN(wsrc) *q, const T *zero, int masked, int64_t c0, int64_t cn,
                          int left, WV *keep, WV *v)
{
    if (q->ok == WINO_ALL(4))
        WFN(w4_vtile)(q, WINO_ALL(4), zero, masked, c0, cn, left, keep, v);
    else
        WFN(w4_vtile)(q, q->ok, zero, masked, c0, cn, left, keep, v);
}

/* The 4x4 output tile o (row a, column b at o[4a + b]; act applied) of
 * tile (n, oh / 4, ow / 4): rows / columns inside the output stored into y
 * (added to it with g->accum; if y is NULL, with y16 (a constant: see
 * wino4_fused_y16) into g->y16 as bf16, else nowhere), and with g->pool_y each
 * of its whole 2x2 windows' maximum and index, as wino_store does for its
 * one window. */
WAI void WFN(w4_store)(const nk_wino *g, WV *o, T *y, int64_t n, int64_t oh, int64_t ow, int rows,
                       int cols, int64_t f0, int64_t fn, const int y16)
{
    const int64_t OW = g->ow, OP = g->op;
    if (y) {
        T *yp = y + ((n * g->oh + oh) * OW + ow) * OP + f0;
        for (int a = 0; a < rows; a++)
            for (int b = 0; b < cols; b++) {
                T *q = yp + (a * OW + b) * OP;
                WV v = o[4 * a + b];
                if (g->accum) v += WFN(wld)(q, fn);
                WFN(wst)(q, v, fn);
            }
    } else if (y16) {
        uint16_t *yp = g->y16 + ((n * g->oh + oh) * OW + ow) * OP + f0;
        for (int a = 0; a < rows; a++)
            for (int b = 0; b < cols; b++)
                WFN(wst_bf16)(yp + (a * OW + b) * OP, o[4 * a + b], fn, g->y16_native);
    }
    if (g->pool_y)
        for (int wa = 0; 2 * wa + 1 < rows; wa++)
            for (int wb = 0; 2 * wb + 1 < cols; wb++) {
                WV w4[4] = {o[8 * wa + 2 * wb], o[8 * wa + 2 * wb + 1], o[8 * wa + 4 + 2 * wb],
                            o[8 * wa + 4 + 2 * wb + 1]};
                WFN(wino_pool)(g, w4, n, oh + 2 * wa, ow + 2 * wb, f0, fn);
            }
}

/* One fused block of F(4x4, 3x3) tiles [t0, t0 + cnt) (cnt <= WINO_FR), as
 * wino_fused_b: V of tile r, plane xi at vb + (36 r + xi) * cp, the 36
 * products M = V @ U by wino_fgemm into mb (plane-major: tile r, plane xi
 * at (WINO_FR xi + r) * fp), then y = act(bias + A^T M A) (or += with
 * g->accum).  With masked (a constant), the source is read where mask > 0.
 * u: U, plane xi, channel c at (xi * C + c) * fp.  A tile whose left
 * neighbour precedes it in the block reuses that tile's row stage of their
 * two shared columns (same operations, so same results). */
WAI void WFN(wino4_fused_b)(const nk_wino *g, const T *src, const T *mask, const T *zero,
                            const T *u, const int64_t C, const int64_t F, const int64_t cp,
                            const int64_t fp, int64_t t0, int64_t cnt, T *restrict vb,
                            T *restrict mb, const T *bias, int act, T *y, const int y16,
                            const int masked)
{
    const int64_t OH = g->oh, OW = g->ow;
    const nk_wtile p0 = nk_wtile_at(g, t0);
    WV keep[4][12]; /* columns 4, 5 of the previous tile's row stage, per vector of C */
    nk_wtile p = p0;
    for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
        /* the source rows one tile row below, and this tile's output lines
         * for writing, a tile at a time: issued all at the block's start
         * they stalled the transforms (16 -> 16 on 32x32, bf16 output,
         * cache-cold, 1 thread: forward 3.27 -> 2.89 ms with the prefetch
         * of the output; ResNet-20's step, bf16, 1 thread, one burst a
         * block -> a tile at a time: 175.3-184.3 -> 169.4-175.0 ms, five
         * interleaved pairs) */
        WFN(wino_prefetch)(g, src, mask, p, 1);
        if (y || y16) WFN(wino_prefetch_y)(g, y, p, 1);
        const int left = i > 0 && p.tw > 0;
        const WFN(wsrc) q = WFN(wino_src)(g, src, mask, p, 4);
        for (int64_t c0 = 0; c0 < C; c0 += WVL) {
            WV v[36];
            WFN(w4_vtile_at)(&q, zero, masked, c0, C - c0 < WVL ? C - c0 : WVL, left,
                             keep[c0 / WVL], v);
            T *dst = vb + 36 * i * cp + c0;
#pragma GCC unroll 36
            for (int xi = 0; xi < 36; xi++) memcpy(dst + xi * cp, &v[xi], sizeof(WV));
        }
    }
    WFN(wino_fgemm)(vb, u, C, cp, fp, mb, 36, 1);
    p = p0;
    for (int64_t j = 0; j < cnt; j++, nk_wtile_next(g, &p)) {
        const int64_t n = p.n, oh = 4 * p.th, ow = 4 * p.tw;
        const int rows = OH - oh < 4 ? (int)(OH - oh) : 4, cols = OW - ow < 4 ? (int)(OW - ow) : 4;
        const T *mp = mb + j * fp; /* plane xi at mp + xi * WINO_FR * fp */
        for (int64_t f0 = 0; f0 < F; f0 += WVL) {
            const int64_t fn = F - f0 < WVL ? F - f0 : WVL;
            WV t[24], o[16];
            /* rows: A^T m, column by column (t[6a + b], a < 4) */
#pragma GCC unroll 6
            for (int b = 0; b < 6; b++) {
                WV m[6];
#pragma GCC unroll 6
                for (int a = 0; a < 6; a++)
                    memcpy(&m[a], mp + (6 * a + b) * WINO_FR * fp + f0, sizeof(WV));
                WFN(w4_at)(m[0], m[1], m[2], m[3], m[4], m[5], t + b, 6);
            }
            /* columns: (A^T m) A */
#pragma GCC unroll 4
            for (int a = 0; a < 4; a++) {
                const WV *q = t + 6 * a;
                WFN(w4_at)(q[0], q[1], q[2], q[3], q[4], q[5], o + 4 * a, 1);
            }
            if (bias) {
                const WV bv = WFN(wld)(bias + f0, fn);
#pragma GCC unroll 16
                for (int k = 0; k < 16; k++) o[k] += bv;
            }
            if (act == NK_ACT_RELU) {
#pragma GCC unroll 16
                for (int k = 0; k < 16; k++) o[k] = (WV)((WVI)o[k] & ~(WVI)(o[k] < (T)0));
            }
            if (rows == 4 && cols == 4) /* whole tiles: the stores unrolled, o in registers */
                WFN(w4_store)(g, o, y, n, oh, ow, 4, 4, f0, fn, y16);
            else
                WFN(w4_store)(g, o, y, n, oh, ow, rows, cols, f0, fn, y16);
        }
    }
}

/* wino4_fused_b with C = CV and F = FV vectors constant, each its own
 * function (as wino_fused's) */
#define W4F_FN(CV, FV)                                                                         \
    static __attribute__((noinline)) void WCAT(WFN(wino4_fused_k), CV, FV)(                     \
        const nk_wino *g, const T *src, const T *zero, const T *u, int64_t t0, int64_t cnt,     \
        T *restrict vb, T *restrict mb, const T *bias, int act, T *y)                          \
    {                                                                                          \
        WFN(wino4_fused_b)(g, src, NULL, zero, u, CV * WVL, FV * WVL, CV * WVL, FV * WVL, t0,    \
                           cnt, vb, mb, bias, act, y, 0, 0);                                   \
    }
W4F_FN(1, 1)
W4F_FN(1, 2)
W4F_FN(2, 1)
W4F_FN(2, 2)
#undef W4F_FN
/* the channel counts of ResNet's first two stages constant (without a
 * mask: with one, dX after a fused ReLU, the generic body) */
static void WFN(wino4_fused)(const nk_wino *g, const T *src, const T *mask, const T *zero,
                             const T *u, int64_t cp, int64_t fp, int64_t t0, int64_t cnt,
                             T *restrict vb, T *restrict mb, const T *bias, int act, T *y)
{
    const int64_t C = g->c, F = g->f;
    const int cv = C % WVL ? 0 : (int)(C / WVL), fv = F % WVL ? 0 : (int)(F / WVL);
#define W4F_CASE(CV, FV)                                                                       \
    if (cv == CV && fv == FV) {                                                                \
        WCAT(WFN(wino4_fused_k), CV, FV)(g, src, zero, u, t0, cnt, vb, mb, bias, act, y);       \
        return;                                                                                \
    }
    if (!mask) {
        W4F_CASE(1, 1)
        W4F_CASE(1, 2)
        W4F_CASE(2, 1)
        W4F_CASE(2, 2)
    }
#undef W4F_CASE
    WFN(wino4_fused_b)(g, src, mask, zero, u, C, F, cp, fp, t0, cnt, vb, mb, bias, act, y, 0,
                       mask != NULL);
}

/* wino4_fused with the output stored as bf16 into g->y16 (y unused), in a
 * function of its own: in wino4_fused's, its variants made the float32
 * ones 5-8 % slower (16 -> 16 on 32x32, batch 128, 1 thread) */
static void WFN(wino4_fused_y16)(const nk_wino *g, const T *src, const T *mask, const T *zero,
                                 const T *u, int64_t cp, int64_t fp, int64_t t0, int64_t cnt,
                                 T *restrict vb, T *restrict mb, const T *bias, int act, T *y)
{
    const int64_t C = g->c, F = g->f;
    (void)y;
    if (C == WVL && F == WVL && !mask) /* ResNet's first stage under bf16 */
        WFN(wino4_fused_b)(g, src, mask, zero, u, WVL, WVL, WVL, WVL, t0, cnt, vb, mb, bias, act,
                           NULL, 1, 0);
    else
        WFN(wino4_fused_b)(g, src, mask, zero, u, C, F, cp, fp, t0, cnt, vb, mb, bias, act, NULL,
                           1, mask != NULL);
}

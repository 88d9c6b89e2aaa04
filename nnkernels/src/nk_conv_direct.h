/* Direct convolution kernels (and the column dX's col2im), included by
 * nk_conv.c once per (ISA, dtype)
 * with T, TI (same-width integer), S (s|d), ISA, FB (channels per block: two
 * 64-byte vectors) and the register-block sizes RB_FWD / RB_WG / RB_DG
 * defined, inside a `#pragma GCC target` region for the ISA.
 *
 * Written with GCC vector extensions (64-byte vectors V, two per channel
 * block) so every ISA runs the same code: the compiler maps a V onto one
 * zmm, two ymm or four xmm registers.  Each kernel keeps a register tile of
 * accumulators (RB pixels or kernel rows x FB channels) so every vector
 * loaded from memory feeds several FMAs:
 *   forward: RB_FWD output pixels x FB output channels, one weight vector
 *            pair per (tap, c) reused by all pixels;
 *   dW:      RB_WG kernel rows (kh, kw, c) x FB channels, one dz vector pair
 *            per output pixel reused by all rows (the GEMM cols^T @ dz with
 *            the columns read straight from the image);
 *   dX:      RB_DG input pixels, dot products along F (gather form: every dx
 *            element is written once), against rows of dz that are masked
 *            (relu), zero-padded and, for strides > 1, zero-upsampled once
 *            into a small per-thread ring, so the inner loop has no bounds
 *            checks and no masking.
 * Kernels whose F is not a multiple of FB read weights from a zero-padded
 * copy (Fp columns) and never store the padding channels. */
#define DCAT_(a, b, c) a##_##b##_##c
#define DCAT(a, b, c) DCAT_(a, b, c)
#define DFN(name) DCAT(name, S, ISA)
#define V DCAT(vec, S, ISA)
#define VI DCAT(veci, S, ISA)
#define VL ((int)(64 / sizeof(T)))
#define AI static inline __attribute__((always_inline))
/* Register tiles are spelled as separate variables a0_<j>, a1_<j>, one
 * statement per j guarded by the (compile-time) tile size: GCC keeps
 * accumulator *arrays* in memory across the outer loops. */
#define TILE12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
#define ACC_DECL(j) V a0_##j = (V){0}, a1_##j = (V){0};

typedef T V __attribute__((vector_size(64)));
typedef TI VI __attribute__((vector_size(64)));

AI V DFN(vld)(const T *p)
{
    V v;
    memcpy(&v, p, sizeof v);
    return v;
}

AI void DFN(vst)(T *p, V v) { memcpy(p, &v, sizeof v); }

/* m > 0 ? d : 0 (an and, so a NaN d is zeroed where the mask is off) */
AI V DFN(vmask)(V d, V m) { return (V)((VI)d & (VI)(m > (T)0)); }

/* fixed-order (pairwise) sum of the lanes: halves added until 16 bytes */
typedef T DCAT(vec32, S, ISA) __attribute__((vector_size(32)));
typedef T DCAT(vec16, S, ISA) __attribute__((vector_size(16)));
AI T DFN(hsum)(V v)
{
    DCAT(vec32, S, ISA) a, b;
    DCAT(vec16, S, ISA) c, d;
    memcpy(&a, &v, 32);
    memcpy(&b, (const char *)&v + 32, 32);
    a += b;
    memcpy(&c, &a, 16);
    memcpy(&d, (const char *)&a + 16, 16);
    c += d;
    T t[16 / sizeof(T)];
    memcpy(t, &c, 16);
    if (sizeof(T) == 4) return (t[0] + t[2]) + (t[1] + t[3]);
    return t[0] + t[1];
}

/* dz[0..FB) = (mask) dy[0..fb), zero beyond fb */
AI void DFN(load_dz)(const T *dp, const T *mp, int64_t fb, V *d0, V *d1)
{
    if (fb == FB) {
        *d0 = DFN(vld)(dp);
        *d1 = DFN(vld)(dp + VL);
        if (mp) {
            *d0 = DFN(vmask)(*d0, DFN(vld)(mp));
            *d1 = DFN(vmask)(*d1, DFN(vld)(mp + VL));
        }
        return;
    }
    T t[FB], m[FB];
    memset(t, 0, sizeof t);
    memset(m, 0, sizeof m);
    memcpy(t, dp, (size_t)fb * sizeof(T));
    if (mp) memcpy(m, mp, (size_t)fb * sizeof(T));
    *d0 = DFN(vld)(t);
    *d1 = DFN(vld)(t + VL);
    if (mp) {
        *d0 = DFN(vmask)(*d0, DFN(vld)(m));
        *d1 = DFN(vmask)(*d1, DFN(vld)(m + VL));
    }
}

/* Input rows for output row (n, oh): xr[kh][(ow*sw + kw*dw)*C + c] is
 * x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c], zero outside the image,
 * for ow < OW, kw < KW.  Rows point into x where no padding is involved
 * and x's pixels are C apart, else into scr (KH * nk_conv_xrow_px(s) * C
 * elements). */
static void DFN(xrows)(const nk_conv_shape *s, const T *x, int64_t n, int64_t oh, T *scr,
                       const T **xr)
{
    const int64_t H = s->h, W = s->w, C = s->c, LD = s->ldx, WX = nk_conv_xrow_px(s);
    const int inside_w = s->pl == 0 && WX <= W && LD == C;
    for (int64_t kh = 0; kh < s->kh; kh++) {
        const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
        const int in_h = (uint64_t)ih < (uint64_t)H;
        if (in_h && inside_w) {
            xr[kh] = x + (n * H + ih) * W * LD;
            continue;
        }
        T *d = scr + kh * WX * C;
        if (!in_h) {
            memset(d, 0, (size_t)(WX * C) * sizeof(T));
        } else {
            /* pixels u in [u0, u1) are inside the image (iw = u - pl); a
             * pixel-by-pixel copy was 40 % of the 3 -> 16 stem's time */
            const T *xrow = x + (n * H + ih) * W * LD;
            const int64_t u0 = s->pl < WX ? s->pl : WX;
            const int64_t u1 = s->pl + W < WX ? s->pl + W : WX;
            memset(d, 0, (size_t)(u0 * C) * sizeof(T));
            if (LD == C)
                memcpy(d + u0 * C, xrow + (u0 - s->pl) * C, (size_t)((u1 - u0) * C) * sizeof(T));
            else
                for (int64_t u = u0; u < u1; u++)
                    memcpy(d + u * C, xrow + (u - s->pl) * LD, (size_t)C * sizeof(T));
            memset(d + u1 * C, 0, (size_t)((WX - u1) * C) * sizeof(T));
        }
        xr[kh] = d;
    }
}

/* ------------------------------------------------------------- forward */

/* act(r) into yp[0..fb) */
AI void DFN(fwd_store)(V r0, V r1, int act, int64_t fb, T *yp)
{
    if (act == NK_ACT_RELU) { /* v < 0 ? 0 : v (NaN and -0 kept) */
        r0 = (V)((VI)r0 & ~(VI)(r0 < (T)0));
        r1 = (V)((VI)r1 & ~(VI)(r1 < (T)0));
    }
    if (fb == FB) {
        DFN(vst)(yp, r0);
        DFN(vst)(yp + VL, r1);
    } else if (fb == VL) {
        DFN(vst)(yp, r0);
    } else {
        T t[FB];
        DFN(vst)(t, r0);
        DFN(vst)(t + VL, r1);
        memcpy(yp, t, (size_t)fb * sizeof(T));
    }
}

/* OB output pixels [ow0, ow0+OB) x channels [f0, f0+fb) of one output row;
 * with half (fb <= VL: the block's second vector would be padding), 2 OB
 * pixels [ow0, ow0+2OB) x one vector of channels: the a1 tile holds pixels
 * OB.. instead of the second vector, so every FMA is a useful one (with the
 * one-piece row copy of xrows: ResNet's stem, 3 -> 16 channels, 2.32 ->
 * 0.85 ms at batch 128, one thread). */
AI void DFN(fwd_tile)(const nk_conv_shape *s, const T *const *xr, const T *wp, int64_t Fp,
                      const T *bp, int act, int64_t ow0, int64_t f0, int64_t fb, const int OB,
                      const int half, T *yrow)
{
    const int64_t C = s->c, KW = s->kw, xs = s->sw * C, LDY = s->ldy;
    TILE12(ACC_DECL)
    for (int64_t kh = 0; kh < s->kh; kh++) {
        const T *xk = xr[kh] + ow0 * xs;
        for (int64_t kw = 0; kw < KW; kw++) {
            const T *xp = xk + kw * s->dw * C;
            const T *wk = wp + (kh * KW + kw) * C * Fp + f0;
            for (int64_t c = 0; c < C; c++) {
                const V w0 = DFN(vld)(wk + c * Fp), w1 = half ? w0 : DFN(vld)(wk + c * Fp + VL);
#define FWD_STEP(j)                                                                        \
    if ((j) < OB) {                                                                        \
        const T xv = xp[(j) * xs + c];                                                     \
        a0_##j += xv * w0;                                                                 \
        a1_##j += (half ? xp[((j) + OB) * xs + c] : xv) * w1;                              \
    }
                TILE12(FWD_STEP)
#undef FWD_STEP
            }
        }
    }
    V b0 = (V){0}, b1 = (V){0};
    if (bp) {
        b0 = DFN(vld)(bp + f0);
        b1 = half ? b0 : DFN(vld)(bp + f0 + VL);
    }
#define FWD_OUT(j)                                                                         \
    if ((j) < OB && !half)                                                                 \
        DFN(fwd_store)(a0_##j + b0, a1_##j + b1, act, fb, yrow + (ow0 + (j)) * LDY + f0);   \
    if ((j) < OB && half) {                                                                \
        DFN(fwd_store)(a0_##j + b0, b0, act, fb, yrow + (ow0 + (j)) * LDY + f0);            \
        DFN(fwd_store)(a1_##j + b0, b0, act, fb, yrow + (ow0 + OB + (j)) * LDY + f0);       \
    }
    TILE12(FWD_OUT)
#undef FWD_OUT
}

/* Tiles of RB_FWD, then 4, then 2 pixel groups (2 pixels a group with
 * half, else 1) along one output row from ow0 while they fit; returns the
 * first pixel left. */
AI int64_t DFN(fwd_runs)(const nk_conv_shape *s, const T *const *xr, const T *wp, int64_t Fp,
                         const T *bp, int act, int64_t ow0, int64_t f0, int64_t fb,
                         const int half, T *yrow)
{
    const int64_t OW = s->ow, px = half ? 2 : 1;
    for (; ow0 + px * RB_FWD <= OW; ow0 += px * RB_FWD)
        DFN(fwd_tile)(s, xr, wp, Fp, bp, act, ow0, f0, fb, RB_FWD, half, yrow);
    if (RB_FWD > 4 && ow0 + px * 4 <= OW) {
        DFN(fwd_tile)(s, xr, wp, Fp, bp, act, ow0, f0, fb, 4, half, yrow);
        ow0 += px * 4;
    }
    if (RB_FWD > 2 && ow0 + px * 2 <= OW) {
        DFN(fwd_tile)(s, xr, wp, Fp, bp, act, ow0, f0, fb, 2, half, yrow);
        ow0 += px * 2;
    }
    return ow0;
}

/* Rows ahead of the current output row whose input pixels and output
 * lines direct_fwd prefetches (for its output, for writing) */
#ifndef DIRECT_FWD_PF_ROWS
#define DIRECT_FWD_PF_ROWS 2
#endif

/* Software prefetch of output row r's input pixels (the KH source rows, only
 * the pixels a 1x1 kernel with stride > 1 reads, else the whole span of the
 * windows) and of its output pixels for writing: a strided convolution reads
 * a cold activation in runs the hardware prefetchers do not keep ahead of
 * (ResNet-20's 16 -> 32 1x1 stride-2 shortcut on 32x32, batch 128, 1
 * thread, cache-cold: 1.30 -> 1.05-1.10 ms, two interleaved pairs). */
AI void DFN(fwd_prefetch)(const nk_conv_shape *s, const T *x, const T *y, int64_t r)
{
    const int64_t OH = s->oh, OW = s->ow, n = r / OH, oh = r - n * OH, H = s->h, W = s->w;
    const int64_t px = (int64_t)sizeof(T) * s->ldx, cb = (int64_t)sizeof(T) * s->c;
    int64_t iw1 = (OW - 1) * s->sw - s->pl + (s->kw - 1) * s->dw + 1; /* past the last column */
    if (iw1 > W) iw1 = W;
    for (int64_t kh = 0; kh < s->kh; kh++) {
        const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
        if ((uint64_t)ih >= (uint64_t)H) continue;
        const char *row = (const char *)(x + (n * H + ih) * W * s->ldx);
        if (s->kw == 1 && s->sw > 1) { /* every sw-th pixel */
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t iw = ow * s->sw - s->pl;
                if ((uint64_t)iw >= (uint64_t)W) continue;
                for (int64_t o = 0; o < cb; o += 64) __builtin_prefetch(row + iw * px + o, 0, 3);
            }
        } else {
            for (int64_t o = 0; o < iw1 * px; o += 64) __builtin_prefetch(row + o, 0, 3);
        }
    }
    const char *yr = (const char *)(y + r * OW * s->ldy);
    const int64_t yb = (int64_t)sizeof(T) * ((OW - 1) * s->ldy + s->f);
    for (int64_t o = 0; o < yb; o += 64) __builtin_prefetch(yr + o, 1, 3);
}

/* y = act(bias + conv(x, w)); parallel over output rows (n, oh).
 * wp: weights (KH*KW*C, Fp), bp: bias (Fp) or NULL, scr: per-thread
 * scratch of scr_per elements: KH row pointers (nk_conv_ptr_elems), then
 * the padded rows of xrows. */
static void DFN(direct_fwd)(const nk_conv_shape *s, const T *x, const T *wp, int64_t Fp,
                            const T *bp, int act, T *y, T *scr, int64_t scr_per, int nt)
{
    const int64_t F = s->f, OH = s->oh, OW = s->ow, rows = s->n * s->oh;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *my = scr + scr_per * nk_thread_num();
        const T **xr = (const T **)(void *)my;
        my += nk_conv_ptr_elems(s->kh, sizeof(T));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            const int64_t n = r / OH, oh = r - n * OH;
            if (r + DIRECT_FWD_PF_ROWS < rows) DFN(fwd_prefetch)(s, x, y, r + DIRECT_FWD_PF_ROWS);
            DFN(xrows)(s, x, n, oh, my, xr);
            T *yrow = y + r * OW * s->ldy;
            for (int64_t f0 = 0; f0 < F; f0 += FB) {
                const int64_t fb = F - f0 < FB ? F - f0 : FB;
                int64_t ow0 = 0;
                if (fb <= VL) /* one vector of channels: tiles of 2 OB pixels */
                    ow0 = DFN(fwd_runs)(s, xr, wp, Fp, bp, act, 0, f0, fb, 1, yrow);
                ow0 = DFN(fwd_runs)(s, xr, wp, Fp, bp, act, ow0, f0, fb, 0, yrow);
                for (; ow0 < OW; ow0++)
                    DFN(fwd_tile)(s, xr, wp, Fp, bp, act, ow0, f0, fb, 1, 0, yrow);
            }
        }
    }
}

/* ---------------------------------------------------------------- dW */

/* MB kernel rows x channels [f0, f0+fb) over one output row (dz pixels F
 * apart): pw (row stride Fp) += sum_ow xb[i][ow*xs] * dz[ow]; pb (if not
 * NULL) += sum_ow dz[ow]. */
AI void DFN(wg_tile)(const T *const *xb, int64_t xs, const T *dzr, const T *mr, int64_t F,
                     int64_t fb, int64_t OW, const int MB, T *pw, int64_t Fp, T *pb)
{
    V s0 = (V){0}, s1 = (V){0};
#define WG_DECL(i)                                                                         \
    V a0_##i = (V){0}, a1_##i = (V){0};                                                    \
    const T *xq_##i = (i) < MB ? xb[i] : NULL;                                             \
    if ((i) < MB) {                                                                        \
        a0_##i = DFN(vld)(pw + (i) * Fp);                                                  \
        a1_##i = DFN(vld)(pw + (i) * Fp + VL);                                             \
    }
    TILE12(WG_DECL)
#undef WG_DECL
    for (int64_t ow = 0; ow < OW; ow++) {
        V d0, d1;
        DFN(load_dz)(dzr + ow * F, mr ? mr + ow * F : NULL, fb, &d0, &d1);
        s0 += d0;
        s1 += d1;
#define WG_STEP(i)                                                                         \
    if ((i) < MB) {                                                                        \
        const T xv = xq_##i[ow * xs];                                                      \
        a0_##i += xv * d0;                                                                 \
        a1_##i += xv * d1;                                                                 \
    }
        TILE12(WG_STEP)
#undef WG_STEP
    }
#define WG_OUT(i)                                                                          \
    if ((i) < MB) {                                                                        \
        DFN(vst)(pw + (i) * Fp, a0_##i);                                                   \
        DFN(vst)(pw + (i) * Fp + VL, a1_##i);                                              \
    }
    TILE12(WG_OUT)
#undef WG_OUT
    if (pb) {
        DFN(vst)(pb, DFN(vld)(pb) + s0);
        DFN(vst)(pb + VL, DFN(vld)(pb + VL) + s1);
    }
}

/* Output rows ahead whose dz (and mask) direct_wgrad_block prefetches: a
 * cold pass over dz was latency-bound (the default CNN's first layer, dz
 * and mask 11 MB each: 1.5 ms cold vs 0.55 in cache, one thread). */
#ifndef NK_WG_PF_ROWS
#define NK_WG_PF_ROWS 2
#endif

/* dW, db over output rows [r0, r1) (rows = (n, oh)) into part_w (KH*KW*C
 * rows of Fp) and part_b (Fp), overwritten.  scr: KH row pointers
 * (nk_conv_ptr_elems), then KH * nk_conv_xrow_px * C elements. */
static void DFN(direct_wgrad_block)(const nk_conv_shape *s, const T *dy, const T *ymask,
                                    const T *x, int64_t r0, int64_t r1, int64_t Fp, T *part_w,
                                    T *part_b, T *scr)
{
    const int64_t C = s->c, F = s->f, KW = s->kw, OH = s->oh, OW = s->ow;
    const int64_t R = s->kh * KW * C, xs = s->sw * C;
    const int64_t ng = (R + RB_WG - 1) / RB_WG;
    memset(part_w, 0, (size_t)(R * Fp) * sizeof(T));
    memset(part_b, 0, (size_t)Fp * sizeof(T));
    const T **xr = (const T **)(void *)scr;
    const T *xb[RB_WG];
    const int64_t LDY = s->ldy;
    scr += nk_conv_ptr_elems(s->kh, sizeof(T));
    for (int64_t r = r0; r < r1; r++) {
        const int64_t n = r / OH, oh = r - n * OH;
        DFN(xrows)(s, x, n, oh, scr, xr);
        const T *dzr = dy + r * OW * LDY, *mr = ymask ? ymask + r * OW * LDY : NULL;
        if (r + NK_WG_PF_ROWS < r1) { /* the row NK_WG_PF_ROWS ahead: dz and its mask */
            const char *pz = (const char *)(dzr + NK_WG_PF_ROWS * OW * LDY);
            const char *pm = mr ? (const char *)(mr + NK_WG_PF_ROWS * OW * LDY) : NULL;
            for (int64_t o = 0; o < OW * LDY * (int64_t)sizeof(T); o += 64) {
                __builtin_prefetch(pz + o);
                if (pm) __builtin_prefetch(pm + o);
            }
        }
        for (int64_t g = 0; g < ng; g++) {
            const int64_t i0 = R * g / ng, i1 = R * (g + 1) / ng;
            for (int64_t i = i0; i < i1; i++) {
                const int64_t kk = i / C, c = i - kk * C, kh = kk / KW, kw = kk - kh * KW;
                xb[i - i0] = xr[kh] + kw * s->dw * C + c;
            }
            for (int64_t f0 = 0; f0 < F; f0 += FB) {
                const int64_t fb = F - f0 < FB ? F - f0 : FB;
                T *pw = part_w + i0 * Fp + f0, *pb = g == 0 ? part_b + f0 : NULL;
                const T *dz = dzr + f0, *m = mr ? mr + f0 : NULL;
                switch ((int)(i1 - i0)) {
#define WG_CASE(k) \
    case k: DFN(wg_tile)(xb, xs, dz, m, LDY, fb, OW, (k) <= RB_WG ? (k) : 1, pw, Fp, pb); break;
                WG_CASE(1) WG_CASE(2) WG_CASE(3) WG_CASE(4) WG_CASE(5) WG_CASE(6)
                WG_CASE(7) WG_CASE(8) WG_CASE(9) WG_CASE(10) WG_CASE(11) WG_CASE(12)
#undef WG_CASE
                default: break; /* groups never exceed RB_WG <= 12 rows */
                }
            }
        }
    }
}

/* ---------------------------------------------------------------- dX */

/* OB input pixels [w0, w0+OB) of channel c: dx = sum over taps and F of
 * w[kh,kw,c,:] . dzrow_kh[w + pl - kw*dw], dz rows from the ring. */
AI void DFN(dg_tile)(const nk_conv_shape *s, const T *const *zr, const T *wp, int64_t Fp,
                     int64_t w0, int64_t c, const int OB, int acc, T *dxrow)
{
    const int64_t C = s->c, KW = s->kw, LDX = s->ldx;
    TILE12(ACC_DECL)
    for (int64_t kh = 0; kh < s->kh; kh++) {
        if (!zr[kh]) continue;
        for (int64_t kw = 0; kw < KW; kw++) {
            const T *zp = zr[kh] + (w0 - kw * s->dw) * Fp;
            const T *wk = wp + ((kh * KW + kw) * C + c) * Fp;
            for (int64_t f0 = 0; f0 < Fp; f0 += FB) {
                const V w_0 = DFN(vld)(wk + f0), w_1 = DFN(vld)(wk + f0 + VL);
#define DG_STEP(j)                                                                         \
    if ((j) < OB) {                                                                        \
        a0_##j += DFN(vld)(zp + (j) * Fp + f0) * w_0;                                      \
        a1_##j += DFN(vld)(zp + (j) * Fp + f0 + VL) * w_1;                                 \
    }
                TILE12(DG_STEP)
#undef DG_STEP
            }
        }
    }
#define DG_OUT(j)                                                                          \
    if ((j) < OB) {                                                                        \
        T *d_ = dxrow + (w0 + (j)) * LDX + c;                                              \
        const T v_ = DFN(hsum)(a0_##j + a1_##j);                                           \
        *d_ = acc ? *d_ + v_ : v_;                                                         \
    }
    TILE12(DG_OUT)
#undef DG_OUT
}

/* dx[n,h,w,c] = sum over the outputs (oh, ow) and taps (kh, kw) with
 * oh*sh - pt + kh*dh = h, ow*sw - pl + kw*dw = w of w[kh,kw,c,:] . dz[n,oh,ow,:].
 * Parallel over input rows (n, h), contiguous per thread.  Each thread keeps
 * a ring of nk_conv_dz_slots(s) dz rows, each laid out as
 * nk_conv_dz_row_px(s) pixels of Fp channels: pixel LP + ow*sw holds
 * mask(dz[n,oh,ow,:]), every other pixel and channel >= F is zero (after
 * the ring in scr: the row pointers and slot tags, nk_conv_ptr_elems each). */
static void DFN(direct_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *wp,
                              int64_t Fp, T *dx, int acc, T *scr, int64_t scr_per, int nt)
{
    const int64_t H = s->h, W = s->w, C = s->c, F = s->f, OH = s->oh, OW = s->ow;
    const int64_t rows = s->n * H, KH = s->kh, LDY = s->ldy;
    const int64_t nslots = nk_conv_dz_slots(s), WB = nk_conv_dz_row_px(s);
    const int64_t LP = nk_conv_dz_lp(s), slot = WB * Fp;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *ring = scr + scr_per * nk_thread_num();
        const T **zr = (const T **)(void *)(ring + nslots * slot);
        int64_t *tag = (int64_t *)(void *)(ring + nslots * slot + nk_conv_ptr_elems(KH, sizeof(T)));
        for (int64_t k = 0; k < nslots; k++) tag[k] = -1;
        memset(ring, 0, (size_t)(nslots * slot) * sizeof(T));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows; r++) {
            const int64_t n = r / H, h = r - n * H;
            for (int64_t kh = 0; kh < KH; kh++) {
                const int64_t t = h + s->pt - kh * s->dh;
                const int64_t oh = t >= 0 ? t / s->sh : -1;
                zr[kh] = NULL;
                if (t < 0 || oh * s->sh != t || oh >= OH) continue;
                const int64_t k = oh % nslots, id = n * OH + oh;
                T *zs = ring + k * slot;
                if (tag[k] != id) {
                    const T *dp = dy + id * OW * LDY, *mp = ymask ? ymask + id * OW * LDY : NULL;
                    for (int64_t ow = 0; ow < OW; ow++) {
                        T *d = zs + (LP + ow * s->sw) * Fp;
                        for (int64_t f0 = 0; f0 < F; f0 += FB) {
                            V d0, d1;
                            DFN(load_dz)(dp + ow * LDY + f0, mp ? mp + ow * LDY + f0 : NULL,
                                         F - f0 < FB ? F - f0 : FB, &d0, &d1);
                            DFN(vst)(d + f0, d0);
                            DFN(vst)(d + f0 + VL, d1);
                        }
                    }
                    tag[k] = id;
                }
                zr[kh] = zs + (LP + s->pl) * Fp;
            }
            T *dxrow = dx + r * W * s->ldx;
            for (int64_t c = 0; c < C; c++) {
                int64_t w0 = 0;
                for (; w0 + RB_DG <= W; w0 += RB_DG)
                    DFN(dg_tile)(s, zr, wp, Fp, w0, c, RB_DG, acc, dxrow);
                if (RB_DG > 4 && w0 + 4 <= W) {
                    DFN(dg_tile)(s, zr, wp, Fp, w0, c, 4, acc, dxrow);
                    w0 += 4;
                }
                if (RB_DG > 2 && w0 + 2 <= W) {
                    DFN(dg_tile)(s, zr, wp, Fp, w0, c, 2, acc, dxrow);
                    w0 += 2;
                }
                for (; w0 < W; w0++) DFN(dg_tile)(s, zr, wp, Fp, w0, c, 1, acc, dxrow);
            }
        }
    }
}

/* ----------------------------------------------- col2im (column dX) */

/* col2im in gather form for the whole images [n0, n1) whose columns are in
 * dcols: every dx element is written once (no zeroing pass; added to with
 * acc, which leaves pixels without taps untouched), summing its taps in
 * (kh, kw) order, as tabulated by nk_col2im_taps (no divisions per pixel);
 * parallel over input rows. */
static void DFN(col2im_gather)(const nk_conv_shape *s, const int64_t *taps, const T *dcols,
                               int64_t n0, int64_t n1, T *dx, int acc, int nt)
{
    const int64_t H = s->h, W = s->w, C = s->c, KH = s->kh, KW = s->kw;
    const int64_t OH = s->oh, OW = s->ow, kkc = KH * KW * C, rows = (n1 - n0) * H;
    const int64_t *rtab = taps, *ctab = taps + H * (KH + 1);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t nl = r / H, h = r - nl * H;
        T *d = dx + ((n0 + nl) * H + h) * W * s->ldx;
        const int64_t *rt = rtab + h * (KH + 1), nr = rt[0];
        const T *img = dcols + nl * OH * OW * kkc;
        for (int64_t iw = 0; iw < W; iw++) {
            T *restrict dp = d + iw * s->ldx;
            const int64_t *ct = ctab + iw * (KW + 1), nc = nr ? ct[0] : 0;
            if (nc == 0) { /* no taps: zero, or nothing to add */
                if (!acc)
                    for (int64_t c = 0; c < C; c++) dp[c] = (T)0;
                continue;
            }
            /* ADD for every tap (kh, then kw ascending), src its columns */
#define C2I_TAPS(ADD)                                                                   \
    for (int64_t i = 1; i <= nr; i++)                                                   \
        for (int64_t j = 1; j <= nc; j++) {                                             \
            const T *src = img + rt[i] + ct[j];                                         \
            ADD;                                                                        \
        }
            int64_t c = 0;
            for (; c + 2 * VL <= C; c += 2 * VL) {
                V a0 = (V){0}, a1 = (V){0};
                C2I_TAPS(a0 += DFN(vld)(src + c); a1 += DFN(vld)(src + c + VL))
                if (acc) {
                    a0 = DFN(vld)(dp + c) + a0;
                    a1 = DFN(vld)(dp + c + VL) + a1;
                }
                DFN(vst)(dp + c, a0);
                DFN(vst)(dp + c + VL, a1);
            }
            for (; c + VL <= C; c += VL) {
                V a0 = (V){0};
                C2I_TAPS(a0 += DFN(vld)(src + c))
                if (acc) a0 = DFN(vld)(dp + c) + a0;
                DFN(vst)(dp + c, a0);
            }
            for (; c < C; c++) {
                T a0 = (T)0;
                C2I_TAPS(a0 += src[c])
                dp[c] = acc ? dp[c] + a0 : a0;
            }
#undef C2I_TAPS
        }
    }
}

#undef AI
#undef TILE12
#undef ACC_DECL
#undef VL
#undef V
#undef VI
#undef DCAT_
#undef DCAT
#undef DFN

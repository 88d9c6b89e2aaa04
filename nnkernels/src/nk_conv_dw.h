/* Depthwise convolution kernels (the drivers, workspaces and threading are
 * CFN(dw_*) in nk_conv_body.h), included by nk_conv_direct_inst.h once per
 * (ISA, dtype) with T, TI, S and ISA defined inside the ISA's
 * `#pragma GCC target` region, and RB_DW (pixels per forward / dX register
 * tile, <= 12) and RB_DWW (kernel taps per dW register tile, <= 12).
 *
 * A depthwise convolution is a grouped one with one input channel per group
 * (nk_conv_shape: g = C groups, c = 1, f = M, the depth multiplier): output
 * channel e = c*M + m of the E = C*M is x[..., c] correlated with the
 * kernel column w[:, :, 0, e].  NHWC makes e the contiguous axis, so every
 * kernel is vectorised over it (64-byte GCC vectors, as in
 * nk_conv_direct.h: one zmm, two ymm or four xmm), channels in blocks of
 * DVL, the last block partial.  Rows are read from scratch "rows" of Ep
 * channels per pixel (E rounded up to DVL, zero beyond E), so the inner
 * loops have no bounds checks:
 *   forward: y[ow] = act(b + sum_{kh,kw} xrow_kh[ow*sw + kw*dw] * w[kh,kw]),
 *            a tile of RB_DW output pixels per channel block, one weight
 *            vector per tap reused by all of them;
 *   dX:      the same loop over rows of dz (masked, zero-padded and, for
 *            strides > 1, zero-upsampled): dx[w] = sum dzrow_kh[w - kw*dw]
 *            * w[kh,kw] (gather form, every dx element written once);
 *   dW, db:  per output row, RB_DWW taps x one channel block of
 *            accumulators, one dz vector per output pixel reused by all of
 *            them. */
#define DWCAT_(a, b, c) a##_##b##_##c
#define DWCAT(a, b, c) DWCAT_(a, b, c)
#define DWFN(name) DWCAT(name, S, ISA)
#define DV DWCAT(dwvec, S, ISA)
#define DVI DWCAT(dwveci, S, ISA)
#define DVL ((int64_t)(64 / sizeof(T)))
#define DAI static inline __attribute__((always_inline))
#define DTILE12(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)

typedef T DV __attribute__((vector_size(64)));
typedef TI DVI __attribute__((vector_size(64)));

DAI DV DWFN(dld)(const T *p)
{
    DV v;
    memcpy(&v, p, sizeof v);
    return v;
}

DAI void DWFN(dst)(T *p, DV v) { memcpy(p, &v, sizeof v); }

/* n (< DVL) elements, zero beyond */
DAI DV DWFN(dldn)(const T *p, int64_t n)
{
    T t[64 / sizeof(T)];
    memset(t, 0, sizeof t);
    memcpy(t, p, (size_t)n * sizeof(T));
    return DWFN(dld)(t);
}

/* the first n lanes of v at p; n == DVL: the whole vector */
DAI void DWFN(dstn)(T *p, DV v, int64_t n)
{
    if (n == DVL) {
        DWFN(dst)(p, v);
    } else {
        T t[64 / sizeof(T)];
        DWFN(dst)(t, v);
        memcpy(p, t, (size_t)n * sizeof(T));
    }
}

/* ------------------------------------------------- forward and dX rows */

/* OB consecutive outputs p0 .. p0+OB-1 of one row, channels [e0, e0+en):
 * out[p] = act(bias + sum_{kh, kw} rows[kh][p*xs + kw*ks + e0] * w[kh,kw,e0..])
 * (xs, ks in elements; rows[kh] NULL: that kernel row is skipped), each
 * sum in (kh, kw) order.  wk = w + e0 with taps Ep apart, bp = bias + e0
 * or NULL.  K3 = +1 / -1: KW = 3 and ks = +xs / -xs (stride-1 forward,
 * dilation-1 dX), where the three taps of a kernel row read overlapping
 * pixels: each pixel vector is loaded once and feeds the (up to) three
 * accumulators it belongs to, streamed so that every accumulator still
 * gets its taps in kw order (the same sums, bit for bit, as K3 = 0). */
DAI void DWFN(dwr_tile)(const T *const *rows, int64_t KH, int64_t KW, int64_t xs, int64_t ks,
                        const T *wk, int64_t Ep, const T *bp, int act, int64_t p0, int64_t e0,
                        int64_t en, const int OB, const int K3, T *out, int64_t ldo, int accum)
{
#define DW_DECL(j) DV a_##j = (DV){0};
    DTILE12(DW_DECL)
#undef DW_DECL
    DV a_12 = (DV){0}, a_13 = (DV){0}, a_m1 = (DV){0}, a_m2 = (DV){0}; /* never used */
    (void)a_12; (void)a_13; (void)a_m1; (void)a_m2;
    const int64_t off = p0 * xs + e0;
    for (int64_t kh = 0; kh < KH; kh++) {
        const T *xk = rows[kh];
        if (!xk) continue;
        xk += off;
        const T *wt = wk + kh * KW * Ep;
        if (K3 != 0) {
            const DV w0 = DWFN(dld)(wt), w1 = DWFN(dld)(wt + Ep), w2 = DWFN(dld)(wt + 2 * Ep);
            if (K3 > 0) { /* pixel q = j + kw, q ascending */
#define DW3U(q, q1, q2)                                                                    \
    if ((q) < OB + 2) {                                                                    \
        const DV u = DWFN(dld)(xk + (q) * xs);                                             \
        if ((q) < OB) a_##q += u * w0;                                                     \
        if ((q) >= 1 && (q) - 1 < OB) a_##q1 += u * w1;                                    \
        if ((q) >= 2 && (q) - 2 < OB) a_##q2 += u * w2;                                    \
    }
                DW3U(0, m1, m2) DW3U(1, 0, m1) DW3U(2, 1, 0) DW3U(3, 2, 1) DW3U(4, 3, 2)
                DW3U(5, 4, 3) DW3U(6, 5, 4) DW3U(7, 6, 5) DW3U(8, 7, 6) DW3U(9, 8, 7)
                DW3U(10, 9, 8) DW3U(11, 10, 9) DW3U(12, 11, 10) DW3U(13, 12, 11)
#undef DW3U
            } else { /* pixel i - 2 = j - kw, i descending */
#define DW3D(i, i1, i2)                                                                    \
    if ((i) < OB + 2) {                                                                    \
        const DV u = DWFN(dld)(xk + ((i) - 2) * xs);                                       \
        if ((i) >= 2 && (i) - 2 < OB) a_##i2 += u * w0;                                    \
        if ((i) >= 1 && (i) - 1 < OB) a_##i1 += u * w1;                                    \
        if ((i) < OB) a_##i += u * w2;                                                     \
    }
                DW3D(13, 12, 11) DW3D(12, 11, 10) DW3D(11, 10, 9) DW3D(10, 9, 8) DW3D(9, 8, 7)
                DW3D(8, 7, 6) DW3D(7, 6, 5) DW3D(6, 5, 4) DW3D(5, 4, 3) DW3D(4, 3, 2)
                DW3D(3, 2, 1) DW3D(2, 1, 0) DW3D(1, 0, m1) DW3D(0, m1, m2)
#undef DW3D
            }
            continue;
        }
        for (int64_t kw = 0; kw < KW; kw++) {
            const DV wv = DWFN(dld)(wt + kw * Ep);
            const T *xp = xk + kw * ks;
#define DW_STEP(j) \
    if ((j) < OB) a_##j += DWFN(dld)(xp + (j) * xs) * wv;
            DTILE12(DW_STEP)
#undef DW_STEP
        }
    }
    DV bv = (DV){0};
    if (bp) bv = DWFN(dld)(bp);
#define DW_OUT(j)                                                                          \
    if ((j) < OB) {                                                                        \
        DV r = bp ? a_##j + bv : a_##j;                                                    \
        if (act == NK_ACT_RELU) r = (DV)((DVI)r & ~(DVI)(r < (T)0)); /* NaN, -0 kept */    \
        T *o_ = out + (p0 + (j)) * ldo + e0;                                               \
        if (accum) r = (en == DVL ? DWFN(dld)(o_) : DWFN(dldn)(o_, en)) + r;               \
        DWFN(dstn)(o_, r, en);                                                             \
    }
    DTILE12(DW_OUT)
#undef DW_OUT
}

/* All npx outputs of one row, all E channels (see dwr_tile), K3 fixed. */
DAI void DWFN(dw_row_k)(const T *const *rows, int64_t KH, int64_t KW, int64_t xs, int64_t ks,
                        const T *w, const T *bias, int act, int64_t E, int64_t Ep, int64_t npx,
                        T *out, int64_t ldo, int accum, const int K3)
{
    for (int64_t e0 = 0; e0 < E; e0 += DVL) {
        const int64_t en = E - e0 < DVL ? E - e0 : DVL;
        const T *wk = w + e0, *bp = bias ? bias + e0 : NULL;
        int64_t p0 = 0;
        for (; p0 + RB_DW <= npx; p0 += RB_DW)
            DWFN(dwr_tile)(rows, KH, KW, xs, ks, wk, Ep, bp, act, p0, e0, en, RB_DW, K3, out,
                           ldo, accum);
        if (RB_DW > 4 && p0 + 4 <= npx) {
            DWFN(dwr_tile)(rows, KH, KW, xs, ks, wk, Ep, bp, act, p0, e0, en, 4, K3, out, ldo,
                           accum);
            p0 += 4;
        }
        if (RB_DW > 2 && p0 + 2 <= npx) {
            DWFN(dwr_tile)(rows, KH, KW, xs, ks, wk, Ep, bp, act, p0, e0, en, 2, K3, out, ldo,
                           accum);
            p0 += 2;
        }
        for (; p0 < npx; p0++)
            DWFN(dwr_tile)(rows, KH, KW, xs, ks, wk, Ep, bp, act, p0, e0, en, 1, K3, out, ldo,
                           accum);
    }
}

/* All npx outputs of one row, all E channels (see dwr_tile); accum: out +=
 * the result (after bias and activation). */
static void DWFN(dw_row)(const T *const *rows, int64_t KH, int64_t KW, int64_t xs, int64_t ks,
                         const T *w, const T *bias, int act, int64_t E, int64_t Ep, int64_t npx,
                         T *out, int64_t ldo, int accum)
{
    if (KW == 3 && ks == xs)
        DWFN(dw_row_k)(rows, KH, KW, xs, ks, w, bias, act, E, Ep, npx, out, ldo, accum, 1);
    else if (KW == 3 && ks == -xs)
        DWFN(dw_row_k)(rows, KH, KW, xs, ks, w, bias, act, E, Ep, npx, out, ldo, accum, -1);
    else
        DWFN(dw_row_k)(rows, KH, KW, xs, ks, w, bias, act, E, Ep, npx, out, ldo, accum, 0);
}

/* ------------------------------------------------------------------ dW */

/* NT taps t0 .. t0+NT-1 (t = kh*KW + kw) x channels [e0, e0+en) over the
 * OW pixels of one output row: pw[t*Ep] += sum_ow rows[kh][ow*xs + kw*ks + e0]
 * * dz[ow]; pb (if not NULL) += sum_ow dz[ow].  dz pixels ldy apart, masked
 * by mr > 0 when mr; pw, pb, dz, mr already offset by e0. */
DAI void DWFN(dww_tile)(const T *const *rows, int64_t KW, int64_t xs, int64_t ks, int64_t e0,
                       const T *dz, const T *mr, int64_t ldy, int64_t OW, int64_t en, int64_t t0,
                       const int NT, T *pw, int64_t Ep, T *pb)
{
    DV sb = (DV){0};
#define DWG_DECL(i)                                                                        \
    DV a_##i = (DV){0};                                                                    \
    const T *xq_##i = NULL;                                                                \
    if ((i) < NT) {                                                                        \
        const int64_t t = t0 + (i), kh = t / KW, kw = t - kh * KW;                         \
        xq_##i = rows[kh] + kw * ks + e0;                                                  \
        a_##i = DWFN(dld)(pw + t * Ep);                                                    \
    }
    DTILE12(DWG_DECL)
#undef DWG_DECL
    for (int64_t ow = 0; ow < OW; ow++) {
        DV d = en == DVL ? DWFN(dld)(dz + ow * ldy) : DWFN(dldn)(dz + ow * ldy, en);
        if (mr) {
            const DV m = en == DVL ? DWFN(dld)(mr + ow * ldy) : DWFN(dldn)(mr + ow * ldy, en);
            d = (DV)((DVI)d & (DVI)(m > (T)0));
        }
        sb += d;
#define DWG_STEP(i) \
    if ((i) < NT) a_##i += DWFN(dld)(xq_##i + ow * xs) * d;
        DTILE12(DWG_STEP)
#undef DWG_STEP
    }
#define DWG_OUT(i) \
    if ((i) < NT) DWFN(dst)(pw + (t0 + (i)) * Ep, a_##i);
    DTILE12(DWG_OUT)
#undef DWG_OUT
    if (pb) DWFN(dst)(pb, DWFN(dld)(pb) + sb);
}

/* One output row's contribution to the partial dW (KH*KW taps x Ep) and db
 * (Ep): rows[kh] (never NULL: a zero row outside the image) as in the
 * forward pass (xs = sw*Ep, ks = dw*Ep), dz row dz (masked by mr > 0 when
 * mr, pixels ldy apart). */
static void DWFN(dw_wgrad_row)(const T *const *rows, int64_t KH, int64_t KW, int64_t xs,
                               int64_t ks, const T *dz, const T *mr, int64_t ldy, int64_t OW,
                               int64_t E, int64_t Ep, T *part_w, T *part_b)
{
    const int64_t nt = KH * KW, ng = (nt + RB_DWW - 1) / RB_DWW;
    for (int64_t e0 = 0; e0 < E; e0 += DVL) {
        const int64_t en = E - e0 < DVL ? E - e0 : DVL;
        const T *dze = dz + e0, *mre = mr ? mr + e0 : NULL;
        for (int64_t g = 0; g < ng; g++) {
            const int64_t t0 = nt * g / ng, t1 = nt * (g + 1) / ng;
            T *pw = part_w + e0, *pb = g == 0 ? part_b + e0 : NULL;
            switch ((int)(t1 - t0)) {
#define DWG_CASE(k)                                                                        \
    case k:                                                                                \
        DWFN(dww_tile)(rows, KW, xs, ks, e0, dze, mre, ldy, OW, en, t0,                     \
                      (k) <= RB_DWW ? (k) : 1, pw, Ep, pb);                                \
        break;
                DWG_CASE(1) DWG_CASE(2) DWG_CASE(3) DWG_CASE(4) DWG_CASE(5) DWG_CASE(6)
                DWG_CASE(7) DWG_CASE(8) DWG_CASE(9) DWG_CASE(10) DWG_CASE(11) DWG_CASE(12)
#undef DWG_CASE
            default: break; /* groups never exceed RB_DWW <= 12 taps */
            }
        }
    }
}

#undef DAI
#undef DTILE12
#undef DVL
#undef DV
#undef DVI
#undef DWFN
#undef DWCAT
#undef DWCAT_

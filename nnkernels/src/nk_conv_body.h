/* Per-dtype convolution drivers, included by nk_conv.c with T, S (s|d),
 * ARGS (nk_sgemm_args|nk_dgemm_args), GEMM (nk_sgemm|nk_dgemm), and the
 * micro-kernel table type, getter and epilogue type KTAB (nk_skern|nk_dkern),
 * KCUR (nk_skern_current|nk_dkern_current), EPT (nk_sep|nk_dep) set. */
#define CFN_(name, s) name##_##s
#define CFNX(name, s) CFN_(name, s)
#define CFN(name) CFNX(name, S)

/* ---------------------------------------------------------------- packing
 * Window packing, the GEMM's pack_a hook (layout: see nk_pack_a_fn).
 * Rows i = (n, a, b) on a grid n x ga x gb; columns p = (kh, kw, ch), ch < sc;
 * element = src[n, a*sa + oa + kh*ka, b*sb + ob + kw*kb, ch] (zero outside
 * the sh x sw source image), masked by mask > 0 at the same place if mask. */
static inline __attribute__((always_inline)) void
CFN(pack_win_mr)(const nk_conv_win *cw, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                 const int MRc, T *restrict pk)
{
    const T *src = (const T *)cw->src, *msk = (const T *)cw->mask;
    const int64_t SH = cw->sh, SW = cw->sw, SC = cw->sc, SP = cw->sp, KW = cw->kw;
    const int64_t gab = cw->ga * cw->gb, img = SH * SW * SP;
    const int64_t kk0 = p0 / SC, ch0 = p0 - kk0 * SC;
    for (int64_t r0 = 0; r0 < mc; r0 += MRc) {
        T *restrict dst = pk + r0 * kc;
        const int mr = mc - r0 < MRc ? (int)(mc - r0) : MRc;
        for (int i = 0; i < MRc; i++) {
            if (i >= mr) {
                for (int64_t p = 0; p < kc; p++) dst[p * MRc + i] = (T)0;
                continue;
            }
            const int64_t row = i0 + r0 + i;
            const int64_t n = row / gab, rem = row - n * gab;
            const int64_t a = rem / cw->gb, b = rem - a * cw->gb;
            const int64_t ha = a * cw->sa + cw->oa, wb = b * cw->sb + cw->ob;
            const T *sn = src + n * img;
            const T *mn = msk ? msk + n * img : NULL;
            int64_t kh = kk0 / KW, kw = kk0 - kh * KW, ch = ch0, p = 0;
            while (p < kc) {
                const int64_t run = SC - ch < kc - p ? SC - ch : kc - p;
                const int64_t ih = ha + kh * cw->ka, iw = wb + kw * cw->kb;
                T *restrict d = dst + p * MRc + i;
                if ((uint64_t)ih < (uint64_t)SH && (uint64_t)iw < (uint64_t)SW) {
                    const int64_t off = (ih * SW + iw) * SP + ch;
                    const T *sp = sn + off;
                    if (mn) {
                        const T *mp = mn + off;
                        for (int64_t q = 0; q < run; q++) {
                            const T v = sp[q]; /* unconditional load, see nk_conv_direct.h */
                            d[q * MRc] = mp[q] > (T)0 ? v : (T)0;
                        }
                    } else {
                        for (int64_t q = 0; q < run; q++) d[q * MRc] = sp[q];
                    }
                } else {
                    for (int64_t q = 0; q < run; q++) d[q * MRc] = (T)0;
                }
                p += run;
                ch = 0;
                if (++kw == KW) { kw = 0; kh++; }
            }
        }
    }
}

static void CFN(pack_win)(const void *ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                          int mr, void *a_pk)
{
    const nk_conv_win *cw = (const nk_conv_win *)ctx;
#if defined(NK_CONV_FLOAT) && NK_X86
    if (mr == 8 && nk_get_isa() >= NK_ISA_AVX2) {
        const int64_t full = mc / 8 * 8;
        for (int64_t r0 = 0; r0 < full; r0 += 8)
            nk_pack_win8_s_avx2(cw, i0 + r0, p0, kc, (float *)a_pk + r0 * kc);
        if (full < mc)
            CFN(pack_win_mr)(cw, i0 + full, mc - full, p0, kc, 8, (float *)a_pk + full * kc);
        return;
    }
#endif
    switch (mr) {
    case 8: CFN(pack_win_mr)(cw, i0, mc, p0, kc, 8, (T *)a_pk); break;
    case 6: CFN(pack_win_mr)(cw, i0, mc, p0, kc, 6, (T *)a_pk); break;
    case 4: CFN(pack_win_mr)(cw, i0, mc, p0, kc, 4, (T *)a_pk); break;
    default: CFN(pack_win_mr)(cw, i0, mc, p0, kc, mr, (T *)a_pk); break;
    }
}

/* Transposed window packing for dW = cols^T @ dz: rows r = (kh, kw, c) of
 * cols^T, columns p = output pixels (n, oh, ow); element = x[n, oh*sh - pt +
 * kh*dh, ow*sw - pl + kw*dw, c] or 0. */
static inline __attribute__((always_inline)) void
CFN(pack_wt_mr)(const nk_conv_win *cw, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                const int MRc, T *restrict pk)
{
    const nk_conv_shape *s = cw->s;
    const T *x = (const T *)cw->src;
    const int64_t H = s->h, W = s->w, C = s->c, KW = s->kw, OH = s->oh, OW = s->ow;
    const int64_t LD = s->ldx, img = H * W * LD;
    /* C a multiple of MR: every full sliver is MR consecutive channels of
     * one tap.  Per tap, pixel-major: each pixel's channel run is read once,
     * contiguously, and split over that tap's slivers (sliver-major would
     * re-read the kc pixels once per sliver). */
    const int64_t full = C % MRc == 0 ? mc / MRc * MRc : 0;
    const int64_t pp0 = p0 + cw->p_off;
    for (int64_t g0 = 0; g0 < full;) {
        const int64_t r = i0 + g0, kk = r / C, kh = kk / KW, kw = kk - kh * KW;
        const int64_t c0 = r - kk * C;
        int64_t g1 = g0 + (C - c0);
        if (g1 > full) g1 = full;
        const int64_t nsl = (g1 - g0) / MRc;
        const int64_t offh = kh * s->dh - s->pt, offw = kw * s->dw - s->pl;
        int64_t n = pp0 / (OH * OW), rem = pp0 - n * (OH * OW);
        int64_t oh = rem / OW, ow = rem - oh * OW;
        T *restrict dst = pk + g0 * kc;
        for (int64_t p = 0; p < kc; p++) {
            const int64_t ih = oh * s->sh + offh, iw = ow * s->sw + offw;
            T *restrict d = dst + p * MRc;
            if ((uint64_t)ih < (uint64_t)H && (uint64_t)iw < (uint64_t)W) {
                const T *xp = x + n * img + (ih * W + iw) * LD + c0;
                for (int64_t sl = 0; sl < nsl; sl++)
                    memcpy(d + sl * MRc * kc, xp + sl * MRc, MRc * sizeof(T));
            } else {
                for (int64_t sl = 0; sl < nsl; sl++) memset(d + sl * MRc * kc, 0, MRc * sizeof(T));
            }
            if (++ow == OW) { ow = 0; if (++oh == OH) { oh = 0; n++; } }
        }
        g0 = g1;
    }
    for (int64_t r0 = full; r0 < mc; r0 += MRc) {
        T *restrict dst = pk + r0 * kc;
        const int mr = mc - r0 < MRc ? (int)(mc - r0) : MRc;
        const int64_t rf = i0 + r0, rl = rf + mr - 1;
        const int64_t kkf = rf / C, kkl = rl / C;
        /* pixel index decomposition, advanced incrementally */
        const int64_t pp = p0 + cw->p_off;
        int64_t n = pp / (OH * OW), rem = pp - n * (OH * OW);
        int64_t oh = rem / OW, ow = rem - oh * OW;
        if (mr == MRc && kkf == kkl) {
            /* all rows: one tap, consecutive channels */
            const int64_t kh = kkf / KW, kw = kkf - kh * KW, c0 = rf - kkf * C;
            const int64_t offh = kh * s->dh - s->pt, offw = kw * s->dw - s->pl;
            for (int64_t p = 0; p < kc; p++) {
                const int64_t ih = oh * s->sh + offh, iw = ow * s->sw + offw;
                T *restrict d = dst + p * MRc;
                if ((uint64_t)ih < (uint64_t)H && (uint64_t)iw < (uint64_t)W) {
                    const T *xp = x + n * img + (ih * W + iw) * LD + c0;
                    for (int i = 0; i < MRc; i++) d[i] = xp[i];
                } else {
                    for (int i = 0; i < MRc; i++) d[i] = (T)0;
                }
                if (++ow == OW) { ow = 0; if (++oh == OH) { oh = 0; n++; } }
            }
        } else {
            int64_t offh[64], offw[64], cc[64];
            const int lim = MRc < 64 ? MRc : 64;
            for (int i = 0; i < mr && i < lim; i++) {
                const int64_t r = rf + i, kk = r / C, kh = kk / KW, kw = kk - kh * KW;
                cc[i] = r - kk * C;
                offh[i] = kh * s->dh - s->pt;
                offw[i] = kw * s->dw - s->pl;
            }
            for (int64_t p = 0; p < kc; p++) {
                T *restrict d = dst + p * MRc;
                const T *xn = x + n * img;
                for (int i = 0; i < MRc; i++) {
                    T v = (T)0;
                    if (i < mr) {
                        int64_t ih, iw, c;
                        if (i < lim) {
                            ih = oh * s->sh + offh[i]; iw = ow * s->sw + offw[i]; c = cc[i];
                        } else { /* mr > 64: never with the kernels we have */
                            const int64_t r = rf + i, kk = r / C, kh = kk / KW, kw = kk - kh * KW;
                            c = r - kk * C;
                            ih = oh * s->sh + kh * s->dh - s->pt;
                            iw = ow * s->sw + kw * s->dw - s->pl;
                        }
                        if ((uint64_t)ih < (uint64_t)H && (uint64_t)iw < (uint64_t)W)
                            v = xn[(ih * W + iw) * LD + c];
                    }
                    d[i] = v;
                }
                if (++ow == OW) { ow = 0; if (++oh == OH) { oh = 0; n++; } }
            }
        }
    }
}

static void CFN(pack_wt)(const void *ctx, int64_t i0, int64_t mc, int64_t p0, int64_t kc,
                         int mr, void *a_pk)
{
    const nk_conv_win *cw = (const nk_conv_win *)ctx;
    switch (mr) {
    case 8: CFN(pack_wt_mr)(cw, i0, mc, p0, kc, 8, (T *)a_pk); break;
    case 6: CFN(pack_wt_mr)(cw, i0, mc, p0, kc, 6, (T *)a_pk); break;
    case 4: CFN(pack_wt_mr)(cw, i0, mc, p0, kc, 4, (T *)a_pk); break;
    default: CFN(pack_wt_mr)(cw, i0, mc, p0, kc, mr, (T *)a_pk); break;
    }
}

static void CFN(gemm_init)(ARGS *g, const nk_conv_shape *s, int nt)
{
    memset(g, 0, sizeof *g);
    g->alpha = (T)1;
    g->nthreads = nt;
    g->lowp = sizeof(T) == 4 && s->lowp;
}

/* ----------------------------------------------------------------- im2col */

static int CFN(im2col_fwd)(const nk_conv_shape *s, const T *x, const T *w, const T *bias,
                           int act, T *y, int nt)
{
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, s, nt);
    g.n = s->f;
    g.k = s->kh * s->kw * s->c;
    g.b = w; g.rsb = s->ldw; g.csb = 1;
    g.out = y; g.ldo = s->ldy;
    g.bias = bias;
    g.act = act;
    if (nk_conv_is_pointwise(s)) {
        g.m = s->n * s->h * s->w;
        g.a = x; g.rsa = s->ldx; g.csa = 1;
    } else {
        g.m = s->n * s->oh * s->ow;
        nk_conv_win_fwd(&cw, s, x);
        g.pack_a = CFN(pack_win);
        g.pack_a_ctx = &cw;
#if defined(NK_CONV_FLOAT) && NK_X86
        if (g.lowp && nk_conv_pack_win_bf16_ok(&cw)) g.pack_a_lowp = nk_pack_win_bf16_s;
#endif
    }
    return GEMM(&g);
}

/* dW (+ db) over output pixels [k0, k1) into out_w (rows ldo apart; and
 * out_b) with one GEMM of nt threads. */
static int CFN(im2col_wgrad_part)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                                  const T *x, int64_t k0, int64_t k1, T *out_w, int64_t ldo,
                                  T *out_b, int nt)
{
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, s, nt);
    g.m = s->kh * s->kw * s->c;
    g.n = s->f;
    g.k = k1 - k0;
    if (nk_conv_is_pointwise(s)) {
        g.a = x + k0 * s->ldx; g.rsa = 1; g.csa = s->ldx; /* x^T viewed as (C, N*H*W) */
    } else {
        memset(&cw, 0, sizeof cw);
        cw.s = s;
        cw.src = x;
        cw.p_off = k0;
        g.pack_a = CFN(pack_wt);
        g.pack_a_ctx = &cw;
#if defined(NK_CONV_FLOAT) && NK_X86
        if (nk_conv_pack_wt8_ok(s)) g.pack_a = nk_pack_wt8_s_avx512;
        if (g.lowp && nk_conv_pack_wt_bf16_ok(s)) g.pack_a_lowp = nk_pack_wt_bf16_s;
#endif
    }
    g.b = dy + k0 * s->ldy; g.rsb = s->ldy; g.csb = 1;
    if (ymask) {
        g.bmask = ymask + k0 * s->ldy; g.rsbm = s->ldy; g.csbm = 1; g.bdact = act;
    }
    g.out = out_w; g.ldo = ldo;
    g.bcolsum = out_b;
    return GEMM(&g);
}

/* dW = cols^T @ dz.  The pixel (k) range is cut into a fixed number of
 * blocks (by shape only, so results do not depend on the thread count),
 * each a single-threaded GEMM, run in parallel, partial sums added in block
 * order.  One barrier-free GEMM per thread instead of one team that must
 * synchronise once per KC pixels: m = KH*KW*C is small here and k huge. */
static int CFN(im2col_wgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                             const T *x, T *dw, T *db, int nt)
{
    const int64_t K = s->n * s->oh * s->ow, kkcf = s->kh * s->kw * s->c * s->f, F = s->f;
    const int64_t nbk = K >= 4 * NK_CONV_WGRAD_KBLOCK ? 4 : K >= 2 * NK_CONV_WGRAD_KBLOCK ? 2 : 1;
    if (nt <= 0) nt = nk_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) nt = 1;
#endif
    if (nbk == 1) return CFN(im2col_wgrad_part)(s, dy, ymask, act, x, 0, K, dw, s->ldw, db, nt);
    const int64_t per = kkcf + F;
    int from_arena = 0;
    T *part = (T *)nk_ws_acquire((size_t)((nbk - 1) * per) * sizeof(T), &from_arena);
    if (!part) return -1;
    int rc = 0;
    const int team = nt < nbk ? nt : (int)nbk;
    (void)team;
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(dynamic, 1) reduction(| : rc) if (team > 1)
#endif
    for (int64_t b = 0; b < nbk; b++) {
        T *ow = b == 0 ? dw : part + (b - 1) * per;
        T *ob = db ? (b == 0 ? db : part + (b - 1) * per + kkcf) : NULL;
        rc |= CFN(im2col_wgrad_part)(s, dy, ymask, act, x, K * b / nbk, K * (b + 1) / nbk, ow,
                                     b == 0 ? s->ldw : F, ob, 1);
    }
    if (rc == 0) {
        for (int64_t b = 1; b < nbk; b++) {
            const T *pw = part + (b - 1) * per;
            for (int64_t r = 0; r < kkcf / F; r++)
                for (int64_t f = 0; f < F; f++) dw[r * s->ldw + f] += pw[r * F + f];
            if (db)
                for (int64_t f = 0; f < F; f++) db[f] += pw[kkcf + f];
        }
    }
    nk_ws_release(part, from_arena);
    return rc ? -1 : 0;
}

/* col2im for output pixels [q0, q1): dx[...] += dcols[q - q0, (kh, kw, c)].
 * Parallel over the images the range touches (no two threads write the
 * same image). */
static void CFN(col2im)(const nk_conv_shape *s, const T *dcols, int64_t q0, int64_t q1, T *dx,
                        int nt)
{
    const int64_t H = s->h, W = s->w, C = s->c, KH = s->kh, KW = s->kw, LD = s->ldx;
    const int64_t ohw = s->oh * s->ow, kkc = KH * KW * C;
    const int64_t n0 = q0 / ohw, n1 = (q1 - 1) / ohw + 1;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && n1 - n0 > 1)
#endif
    for (int64_t n = n0; n < n1; n++) {
        int64_t a = n * ohw, b = a + ohw;
        if (a < q0) a = q0;
        if (b > q1) b = q1;
        T *dxn = dx + n * H * W * LD;
        for (int64_t q = a; q < b; q++) {
            const int64_t rem = q - n * ohw, oh = rem / s->ow, ow = rem - oh * s->ow;
            const T *dc = dcols + (q - q0) * kkc;
            for (int64_t kh = 0; kh < KH; kh++) {
                const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
                if ((uint64_t)ih >= (uint64_t)H) continue;
                for (int64_t kw = 0; kw < KW; kw++) {
                    const int64_t iw = ow * s->sw - s->pl + kw * s->dw;
                    if ((uint64_t)iw >= (uint64_t)W) continue;
                    T *d = dxn + (ih * W + iw) * LD;
                    const T *src = dc + (kh * KW + kw) * C;
                    for (int64_t c = 0; c < C; c++) d[c] += src[c];
                }
            }
        }
    }
}

/* per-ISA kernels (nk_conv_direct.h) for the running ISA */
#if NK_X86
#define CFN_ISA(name)                                                                   \
    (nk_get_isa() == NK_ISA_AVX512 ? CFNX(name, CFNX(S, avx512))                         \
     : nk_get_isa() == NK_ISA_AVX2 ? CFNX(name, CFNX(S, avx2))                           \
                                   : CFNX(name, CFNX(S, generic)))
#else
#define CFN_ISA(name) CFNX(name, CFNX(S, generic))
#endif

/* dx (=, or += with acc) the data gradient; the two GEMM paths add dx as
 * their beta = 1 source, the column path adds in col2im. */
/* One tile of output pixels [t * tile, ...) of im2col_dgrad: dcols = dz @
 * w^T into `mine`, then col2im into dx, with `inner` threads (in gather
 * form with the tap tables `taps` when tiles are whole images, else NULL). */
static int CFN(dgrad_tile)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                           const T *w_fk, T *mine, int64_t t, int64_t tile,
                           const int64_t *taps, T *dx, int acc, int inner)
{
    const int64_t kkc = s->kh * s->kw * s->c, ohw = s->oh * s->ow, npix = s->n * ohw;
    const int64_t q0 = t * tile, q1 = npix - q0 < tile ? npix : q0 + tile;
    ARGS gt;
    CFN(gemm_init)(&gt, s, inner);
    gt.m = q1 - q0; gt.n = kkc; gt.k = s->f;
    gt.a = dy + q0 * s->ldy; gt.rsa = s->ldy; gt.csa = 1;
    if (ymask) {
        gt.amask = ymask + q0 * s->ldy; gt.rsam = s->ldy; gt.csam = 1; gt.adact = act;
    }
    gt.b = w_fk; gt.rsb = kkc; gt.csb = 1;
    gt.out = mine; gt.ldo = kkc;
    if (GEMM(&gt) != 0) return 1;
    if (taps) /* whole images */
        CFN_ISA(col2im_gather)(s, taps, mine, q0 / ohw, q1 / ohw, dx, acc, inner);
    else
        CFN(col2im)(s, mine, q0, q1, dx, inner);
    return 0;
}

static int CFN(im2col_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                             const T *w, T *dx, int acc, int nt)
{
    const int64_t KK = s->kh * s->kw, C = s->c, F = s->f;
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, s, nt);
    if (nk_conv_is_pointwise(s)) {
        /* dx = dz @ w^T, w^T (F, C) read through strides */
        g.m = s->n * s->h * s->w; g.n = C; g.k = F;
        g.a = dy; g.rsa = s->ldy; g.csa = 1;
        if (ymask) { g.amask = ymask; g.rsam = s->ldy; g.csam = 1; g.adact = act; }
        g.b = w; g.rsb = 1; g.csb = s->ldw;
        g.out = dx; g.ldo = s->ldx;
        if (acc) { g.beta = (T)1; g.c = dx; g.ldc = s->ldx; }
        return GEMM(&g);
    }
    if (s->sh == 1 && s->sw == 1 && C * (int64_t)sizeof(T) >= 256) {
        /* "full" convolution of dz with the kernel, transposed to (KK*F, C) */
        int from_arena = 0;
        T *wt = (T *)nk_ws_acquire((size_t)(KK * F * C) * sizeof(T), &from_arena);
        if (!wt) return -1;
        for (int64_t kk = 0; kk < KK; kk++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t f = 0; f < F; f++)
                    wt[(kk * F + f) * C + c] = w[(kk * C + c) * s->ldw + f];
        g.m = s->n * s->h * s->w; g.n = C; g.k = KK * F;
        memset(&cw, 0, sizeof cw);
        cw.src = dy; cw.mask = ymask;
        cw.ga = s->h; cw.gb = s->w;
        cw.sh = s->oh; cw.sw = s->ow; cw.sc = F; cw.sp = s->ldy; cw.kw = s->kw;
        cw.sa = 1; cw.sb = 1; cw.oa = s->pt; cw.ob = s->pl; cw.ka = -s->dh; cw.kb = -s->dw;
        g.pack_a = CFN(pack_win);
        g.pack_a_ctx = &cw;
#if defined(NK_CONV_FLOAT) && NK_X86
        if (g.lowp && nk_conv_pack_win_bf16_ok(&cw)) g.pack_a_lowp = nk_pack_win_bf16_s;
#endif
        g.b = wt; g.rsb = C; g.csb = 1;
        g.out = dx; g.ldo = s->ldx;
        if (acc) { g.beta = (T)1; g.c = dx; g.ldc = s->ldx; }
        const int rc = GEMM(&g);
        nk_ws_release(wt, from_arena);
        return rc;
    }
    /* dcols = dz @ w^T per tile of output pixels, then col2im.  Tiles are
     * whole images of about NK_CONV_COL_TILE bytes of columns (cache-sized:
     * written by the GEMM, read back by col2im while still cached), col2im
     * in gather form; when one image's columns exceed the budget, tiles
     * split images and col2im scatters into a zeroed dx. */
    const int64_t kkc = KK * C, ohw = s->oh * s->ow, npix = s->n * ohw;
    const int64_t img_bytes = (int64_t)sizeof(T) * kkc * ohw;
    int64_t tile;
    const int whole = img_bytes <= g_col_budget;
    if (whole) {
        const int64_t want = g_col_budget < NK_CONV_COL_TILE ? g_col_budget : NK_CONV_COL_TILE;
        int64_t imgs = want / img_bytes;
        if (imgs < 1) imgs = 1;
        if (imgs > s->n) imgs = s->n;
        tile = imgs * ohw;
    } else {
        tile = g_col_budget / ((int64_t)sizeof(T) * kkc);
        if (tile < 1) tile = 1;
    }
    /* whole-image tiles: with enough of them, each thread runs its own
     * tiles (single-threaded GEMM and col2im, no barriers), else the tiles
     * run in turn, each with the whole team */
    const int64_t ntiles = (npix + tile - 1) / tile;
    int outer = 1;
    if (nt <= 0) nt = nk_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) nt = 1;
#endif
    if (whole && nt > 1 && ntiles >= 2 * (int64_t)nt) outer = nt;
    const int inner = outer > 1 ? 1 : nt;
    /* w^T (F, KK*C) transposed once, so every tile's GEMM packs B with
     * contiguous vector loads; then, for whole images, col2im's tap tables */
    int from_arena = 0;
    const size_t tab_at = ((size_t)(outer * tile * kkc + F * kkc) * sizeof(T) + 63) & ~(size_t)63;
    const size_t tab_len = whole ? (size_t)nk_col2im_taps_len(s) : 0;
    T *cols = (T *)nk_ws_acquire(tab_at + tab_len * sizeof(int64_t), &from_arena);
    if (!cols) return -1;
    T *w_fk = cols + outer * tile * kkc;
    int64_t *taps = whole ? (int64_t *)((char *)cols + tab_at) : NULL;
    if (taps) nk_col2im_taps(s, taps);
    for (int64_t j = 0; j < kkc; j++)
        for (int64_t f = 0; f < F; f++) w_fk[f * kkc + j] = w[j * s->ldw + f];
    if (!whole && !acc) nk_conv_zero_px(dx, s->n * s->h * s->w, C, s->ldx, sizeof(T), nt);
    int rc = 0;
    /* No parallel construct at all with one outer thread: a GEMM or col2im
     * team nested in an inactive region (`if (outer > 1)` false) is a new
     * nested team to libgomp, whose threads it created and retired on every
     * call (a 1x1 stride-2 dX at 2 threads took 4-7 ms instead of 0.35). */
    if (outer > 1) {
#ifdef _OPENMP
#pragma omp parallel for num_threads(outer) schedule(static) reduction(| : rc)
#endif
        for (int64_t t = 0; t < ntiles; t++)
            rc |= CFN(dgrad_tile)(s, dy, ymask, act, w_fk, cols + nk_thread_num() * tile * kkc,
                                  t, tile, taps, dx, acc, 1);
    } else {
        for (int64_t t = 0; t < ntiles && rc == 0; t++)
            rc |= CFN(dgrad_tile)(s, dy, ymask, act, w_fk, cols, t, tile, taps, dx, acc, inner);
    }
    nk_ws_release(cols, from_arena);
    return rc ? -1 : 0;
}

/* ----------------------------------------------------------------- direct */

/* Operands of the direct kernels, in one workspace: the weights (KH*KW*C,
 * Fp) and bias (Fp) zero-padded to Fp = F rounded up to a channel block
 * (only when F is not a multiple of it; else used in place; w = NULL: no
 * weights), then `nt` per-thread scratch areas of `per` elements each
 * (64-byte aligned), then `extra` elements. */
typedef struct {
    const T *w, *b;
    T *scr;
    int64_t fp, scr_per;
    void *ws;
    int from_arena;
} CFN(direct_ops);

static int CFN(direct_ops_get)(CFN(direct_ops) *o, const nk_conv_shape *s, const T *w,
                               const T *bias, int64_t per, int64_t extra, int nt)
{
    const int64_t fbk = (int64_t)(128 / sizeof(T)), F = s->f, R = s->kh * s->kw * s->c;
    const int64_t Fp = (F + fbk - 1) / fbk * fbk, ve = 64 / (int64_t)sizeof(T);
    const int64_t wlen = w && (Fp != F || s->ldw != F) ? (R + 1) * Fp : 0;
    o->fp = Fp;
    o->scr_per = (per + ve - 1) / ve * ve;
    o->ws = nk_ws_acquire((size_t)(wlen + nt * o->scr_per + extra) * sizeof(T),
                               &o->from_arena);
    if (!o->ws) return -1;
    T *base = (T *)o->ws;
    o->w = w;
    o->b = bias;
    if (wlen) {
        T *wp = base, *bp = base + R * Fp;
        for (int64_t r = 0; r < R; r++) {
            memcpy(wp + r * Fp, w + r * s->ldw, (size_t)F * sizeof(T));
            memset(wp + r * Fp + F, 0, (size_t)(Fp - F) * sizeof(T));
        }
        memset(bp, 0, (size_t)Fp * sizeof(T));
        if (bias) memcpy(bp, bias, (size_t)F * sizeof(T));
        o->w = wp;
        o->b = bias ? bp : NULL;
    }
    o->scr = base + wlen;
    return 0;
}

static int CFN(direct_fwd)(const nk_conv_shape *s, const T *x, const T *w, const T *bias,
                           int act, T *y, int nt)
{
    CFN(direct_ops) o;
    double per;
    const double shared = nk_conv_direct_ws(s, sizeof(T), NK_CONV_FWD, &per);
    nt = nk_conv_ws_threads(per, shared, sizeof(T), nt);
    if (CFN(direct_ops_get)(&o, s, w, bias, (int64_t)per, 0, nt)) return -1;
    CFN_ISA(direct_fwd)(s, x, o.w, o.fp, o.b, act, y, o.scr, o.scr_per, nt);
    nk_ws_release(o.ws, o.from_arena);
    return 0;
}

static int CFN(direct_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *w,
                             T *dx, int acc, int nt)
{
    CFN(direct_ops) o;
    double per;
    const double shared = nk_conv_direct_ws(s, sizeof(T), NK_CONV_BWD_DATA, &per);
    nt = nk_conv_ws_threads(per, shared, sizeof(T), nt);
    if (CFN(direct_ops_get)(&o, s, w, NULL, (int64_t)per, 0, nt)) return -1;
    CFN_ISA(direct_dgrad)(s, dy, ymask, o.w, o.fp, dx, acc, o.scr, o.scr_per, nt);
    nk_ws_release(o.ws, o.from_arena);
    return 0;
}

/* acc[i] += p[i], i < n: one chunk's partial sums added into the running
 * ones (CFN(sum_chunks) a run at a time; wino_wgrad a chunk as it completes) */
static void CFN(add_chunk)(T *restrict acc, const T *restrict p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) acc[i] += p[i];
}

/* The partial sums of a weight gradient's nb chunks (per elements each,
 * chunk b at part + b * per) added into chunk 0's, in chunk order: each
 * element gets the additions, in the order, of acc = part[o]; acc +=
 * part[b * per + o] for b = 1 .. nb - 1 (the same bits), done as contiguous
 * runs.  Summed element by element, Winograd's dW read nb x 16 (or 36)
 * strided streams at once and missed on nearly every load: 0.7 of the 3.1 ms
 * of a 64 -> 64 dW on 8x8 (batch 128, 1 thread, Zen 4).  Called by every
 * thread of the parallel region (an orphaned omp for: the runs shared among
 * the team, then its barrier). */
static void CFN(sum_chunks)(T *part, int64_t nb, int64_t per)
{
    const int64_t run = 2048, nr = (per + run - 1) / run;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t q = 0; q < nr; q++) {
        T *restrict p0 = part + q * run;
        const int64_t len = per - q * run < run ? per - q * run : run;
        for (int64_t b = 1; b < nb; b++) CFN(add_chunk)(p0, p0 + b * per, len);
    }
}

/* dW, db: a fixed number of blocks of output rows (by shape only, not by
 * thread count), partial sums reduced in block order -> deterministic. */
static int CFN(direct_wgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *x,
                             T *dw, T *db, int nt)
{
    const int64_t R = s->kh * s->kw * s->c, F = s->f, rows = s->n * s->oh;
    const int64_t nb = rows < NK_CONV_WGRAD_BLOCKS ? rows : NK_CONV_WGRAD_BLOCKS;
    const int64_t fbk = (int64_t)(128 / sizeof(T)), Fp = (F + fbk - 1) / fbk * fbk;
    const int64_t per = (R + 1) * Fp; /* partial dw rows, partial db */
    CFN(direct_ops) o;
    double scr_per;
    const double shared = nk_conv_direct_ws(s, sizeof(T), NK_CONV_BWD_FILTER, &scr_per);
    nt = nk_conv_ws_threads(scr_per, shared, sizeof(T), nt);
    if (CFN(direct_ops_get)(&o, s, NULL, NULL, (int64_t)scr_per, nb * per, nt)) return -1;
    T *part = o.scr + nt * o.scr_per;
    void (*blk)(const nk_conv_shape *, const T *, const T *, const T *, int64_t, int64_t, int64_t,
                T *, T *, T *) = CFN_ISA(direct_wgrad_block);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *scr = o.scr + o.scr_per * nk_thread_num();
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < nb; b++) {
            T *pw = part + b * per;
            blk(s, dy, ymask, x, rows * b / nb, rows * (b + 1) / nb, Fp, pw, pw + R * Fp, scr);
        }
        CFN(sum_chunks)(part, nb, per);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t e = 0; e < (R + 1) * F; e++) {
            const int64_t r = e / F, f = e - r * F;
            if (r < R) dw[r * s->ldw + f] = part[r * Fp + f];
            else if (db) db[f] = part[r * Fp + f];
        }
    }
    nk_ws_release(o.ws, o.from_arena);
    return 0;
}

#ifdef NK_CONV_FLOAT
/* dW, db with register-resident dW tiles (nk_conv_wgrad.h): a fixed number
 * of blocks of output rows (by shape only), each thread's blocks into their
 * own partial sums, added in block order at the end -> results do not
 * depend on the thread count. */
static int CFN(wg2_wgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *x,
                          T *dw, T *db, int nt)
{
    const int64_t R = s->kh * s->kw * s->c, F = s->f, rows = s->n * s->oh;
    const int64_t vn = CFN_ISA(wg2_vn)(), Fp = (F + vn - 1) / vn * vn, ve = 64 / sizeof(T);
    /* output rows per group: about NK_CONV_WG2_GROUP_BYTES of dz, at least
     * NK_CONV_WG2_GROUP_PX pixels (groups may span images) */
    int64_t G = NK_CONV_WG2_GROUP_BYTES / (s->ow * Fp * (int64_t)sizeof(T));
    const int64_t gpx = (NK_CONV_WG2_GROUP_PX + s->ow - 1) / s->ow;
    if (G < gpx) G = gpx;
    if (G > rows) G = rows;
    if (G < 1) G = 1;
    const int64_t per = ((R + 1) * Fp + ve - 1) / ve * ve; /* partial dw rows, partial db */
    int64_t nb = rows < NK_CONV_WGRAD_BLOCKS ? rows : NK_CONV_WGRAD_BLOCKS;
    while (nb > 1 && nb * per * (int64_t)sizeof(T) > NK_CONV_WG2_PART_BYTES) nb--;
    if (nt > nb) nt = (int)nb;
    const int64_t scr_per = (CFN_ISA(wg2_scr)(s, G, Fp) + ve - 1) / ve * ve;
    const int64_t zlen = (CFN_ISA(wg2_zlen)(s) + ve - 1) / ve * ve;
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(zlen + nb * per + nt * scr_per) * sizeof(T),
                               &from_arena);
    if (!ws) return -1;
    T *zero = ws, *part = ws + zlen, *scr0 = part + nb * per;
    memset(zero, 0, (size_t)zlen * sizeof(T));
    void (*blk)(const nk_conv_shape *, const T *, const T *, const T *, int64_t, int64_t, int64_t,
                int64_t, T *, T *, const T *, T *) = CFN_ISA(wg2_block);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *scr = scr0 + scr_per * nk_thread_num();
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < nb; b++) {
            T *pw = part + b * per;
            blk(s, dy, ymask, x, rows * b / nb, rows * (b + 1) / nb, G, Fp, pw,
                db ? pw + R * Fp : NULL, zero, scr);
        }
        CFN(sum_chunks)(part, nb, per);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t e = 0; e < (R + (db ? 1 : 0)) * F; e++) {
            const int64_t r = e / F, f = e - r * F;
            if (r < R) dw[r * s->ldw + f] = part[r * Fp + f];
            else db[f] = part[r * Fp + f];
        }
    }
    nk_ws_release(ws, from_arena);
    return 0;
}

/* F(4x4, 3x3)'s dW[u][v] = (G^T M G)[u][v] (u, v < 3) of channel pair
 * (c, f): M[xi] the chunks' sums of plane xi (CFN(sum_chunks)) at part, G =
 * nk_wino4_G, in double, each tap rounded once; tap (u, v) at
 * dw + (3u + v) * tap_stride. */
static void CFN(wino4_gmg)(const T *part, int64_t cp, int64_t fp, int64_t c, int64_t f, T *dw,
                           int64_t tap_stride)
{
    const double(*G)[3] = nk_wino4_G;
    double m[36], t[3][6];
    for (int xi = 0; xi < 36; xi++) m[xi] = (double)part[(xi * cp + c) * fp + f];
    for (int u = 0; u < 3; u++) /* G^T M */
        for (int j = 0; j < 6; j++) {
            double a = 0;
            for (int i = 0; i < 6; i++) a += G[i][u] * m[6 * i + j];
            t[u][j] = a;
        }
    for (int u = 0; u < 3; u++) /* (G^T M) G */
        for (int v = 0; v < 3; v++) {
            double a = 0;
            for (int j = 0; j < 6; j++) a += t[u][j] * G[j][v];
            dw[(3 * u + v) * tap_stride] = (T)a;
        }
}

/* Chunk b of nb of a Winograd weight gradient's ntiles tiles, in blocks of
 * tb tiles, into the partial sums pm (its transformed-domain sums, then the
 * bias sums) */
static void CFN(wgrad_chunk)(const nk_wino *g,
                             void (*blk)(const nk_wino *, const T *, const T *, const T *,
                                         const T *, int64_t, int64_t, int64_t, T *, T *, T *,
                                         T *),
                             const T *x, const T *dy, const T *ymask, const T *zero,
                             int64_t ntiles, int64_t nb, int64_t b, int64_t tb, T *vb, T *zb,
                             T *pm)
{
    const int64_t np = g->m4 ? 36 : 16, ve = 64 / (int64_t)sizeof(T);
    const int64_t cp = (g->c + ve - 1) / ve * ve, fp = (g->f + ve - 1) / ve * ve;
    const int64_t c0 = ntiles * b / nb, c1 = ntiles * (b + 1) / nb;
    for (int64_t t0 = c0; t0 < c1; t0 += tb)
        blk(g, x, dy, ymask, zero, t0, c1 - t0 < tb ? c1 - t0 : tb, tb, vb, zb, pm,
            pm + np * cp * fp);
}

/* dW, db by Winograd F(2x2, 3x3) (3x3, stride 1, dilation 1; see
 * nk_conv_wino_wgrad.h) or F(4x4, 3x3) (nk_conv_wino4_wgrad.h; float32
 * products; where nk_conv_use_wino4 says, with its measurements): the tiles in a fixed
 * number of chunks (by shape only), each chunk's transformed-domain sums M
 * (16 or 36 planes of C x F) and bias sums its own partials, added in chunk
 * order; then dW = G^T M G per (c, f).  Results do not depend on the thread
 * count. */
static int CFN(wino_wgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *x,
                           T *dw, T *db, int nt, const nk_unpool *up)
{
    nk_wino g;
    memset(&g, 0, sizeof g);
    nk_wino_set_up(&g, up); /* dy: the pooled gradient (F(2x2) only: see backward_maxpool) */
    g.n = s->n; g.h = s->h; g.w = s->w; g.c = s->c;
    g.f = s->f; g.oh = s->oh; g.ow = s->ow;
    g.pt = s->pt; g.pl = s->pl;
    g.sp = s->ldx; g.op = s->ldy;
    g.m4 = nk_conv_use_wino4(s->c, s->f, s->lowp, 1);
    g.th = g.m4 ? (g.oh + 3) / 4 : (g.oh + 1) / 2;
    g.tw = g.m4 ? (g.ow + 3) / 4 : (g.ow + 1) / 2;
    const int64_t np = g.m4 ? 36 : 16; /* planes */
    /* bf16 products (float32 with s->lowp): VDPBF16PS on pairs of tiles, or
     * its emulation (the same bits); F(4x4, 3x3) takes float32 products */
    g.lowp = s->lowp && !g.m4;
    if (g.lowp) {
        g.wgemm_bf = CFN_ISA(wgw_gemm_bfe);
#if NK_X86
        if (nk_bf16_native() && CFN_ISA(wino_fr) == 12) { /* the AVX-512 transforms */
            g.wgemm_bf = nk_wino_wgemm_bf16;
            g.bf_native = 1;
        }
#endif
    }
    const int64_t C = s->c, F = s->f, ve = 64 / (int64_t)sizeof(T);
    const int64_t cp = (C + ve - 1) / ve * ve, fp = (F + ve - 1) / ve * ve;
    const int64_t ntiles = g.n * g.th * g.tw;
    /* tiles per block: the block's V and Z in NK_CONV_WWG_BYTES */
    int64_t tb = NK_CONV_WWG_BYTES / (np * (cp + fp) * (int64_t)sizeof(T));
    if (tb < 8) tb = 8;
    if (tb > ntiles) tb = ntiles;
    const int64_t per = np * cp * fp + fp;            /* partial M, partial db */
    /* V and Z of a block (planes a line apart, see wino_wg_block), Z a
     * few lines after V */
    const int64_t scr_per = np * (tb * cp + ve) + 5 * ve + np * (tb * fp + ve);
    /* chunks: NK_CONV_WGRAD_BLOCKS, fewer when their partial sums would
     * pass the workspace budget (by shape only: the same for any thread
     * count); then threads within what is left */
    const double budget = (double)g_col_budget / (double)sizeof(T);
    int64_t nb = ntiles < NK_CONV_WGRAD_BLOCKS ? ntiles : NK_CONV_WGRAD_BLOCKS;
    while (nb > 1 && (double)(cp + nb * per + scr_per) > budget) nb--;
    if (nt > nb) nt = (int)nb;
    /* With several chunks a thread (run): each chunk into its thread's own
     * partial, added into the running sum (chunk 0's, computed in place) in
     * chunk order as it completes (an ordered loop), so the partials stay in
     * the thread's L2 instead of nb of them passing through memory to be
     * zeroed, filled and summed at the end; same additions, same order, same
     * bits as CFN(sum_chunks).  (ResNet-20's 64 -> 64 on 8x8: 16 chunks of
     * 256 KiB.)  With about a chunk per thread the ordered additions would
     * run one after another: all nb partials, then CFN(sum_chunks). */
    const int run = nb > 1 && nb >= 4 * (int64_t)nt;
    while (nt > 1 && (double)(cp + (run ? 1 + nt : nb) * per + nt * scr_per) > budget) nt--;
    const int64_t nbufs = run ? 1 + nt : nb; /* partial sums */
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(cp + nbufs * per + nt * scr_per) * sizeof(T), &from_arena);
    if (!ws) return -1;
    T *zero = ws, *part = ws + cp, *scr0 = part + nbufs * per;
    memset(zero, 0, (size_t)cp * sizeof(T));
    void (*blk)(const nk_wino *, const T *, const T *, const T *, const T *, int64_t, int64_t,
                int64_t, T *, T *, T *, T *) =
        g.m4 ? CFN_ISA(wino4_wg_block) : CFN_ISA(wino_wg_block);
    const nk_wino *gp = &g;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *vb = scr0 + scr_per * nk_thread_num(), *zb = vb + np * (tb * cp + ve) + 5 * ve;
        memset(vb, 0, (size_t)scr_per * sizeof(T));
        if (run) {
            T *own = part + per * (1 + nk_thread_num()); /* this thread's partial */
#ifdef _OPENMP
#pragma omp for schedule(static, 1) ordered
#endif
            for (int64_t b = 0; b < nb; b++) {
                T *pm = b ? own : part;
                memset(pm, 0, (size_t)per * sizeof(T));
                CFN(wgrad_chunk)(gp, blk, x, dy, ymask, zero, ntiles, nb, b, tb, vb, zb, pm);
#ifdef _OPENMP
#pragma omp ordered
#endif
                if (b) CFN(add_chunk)(part, pm, per);
            }
        } else {
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
            for (int64_t b = 0; b < nb; b++) {
                T *pm = part + b * per;
                memset(pm, 0, (size_t)per * sizeof(T)); /* by its thread, right before use */
                CFN(wgrad_chunk)(gp, blk, x, dy, ymask, zero, ntiles, nb, b, tb, vb, zb, pm);
            }
            /* sum the chunks (in order) */
            CFN(sum_chunks)(part, nb, per);
        }
        /* dW[u][v] = (G^T M G)[u][v] */
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t e = 0; e < C * F; e++) {
            const int64_t c = e / F, f = e - c * F;
            if (g.m4) {
                CFN(wino4_gmg)(part, cp, fp, c, f, dw + (int64_t)c * s->ldw + f, C * s->ldw);
                continue;
            }
            T m[16];
            for (int xi = 0; xi < 16; xi++) m[xi] = part[(xi * cp + c) * fp + f];
            T t[12]; /* G^T M: 3 x 4 */
            for (int j = 0; j < 4; j++) {
                const T h = (T)0.5 * (m[4 + j] + m[8 + j]);
                t[j] = m[j] + h;
                t[4 + j] = (T)0.5 * (m[4 + j] - m[8 + j]);
                t[8 + j] = h + m[12 + j];
            }
            for (int u = 0; u < 3; u++) {
                const T *r = t + 4 * u;
                const T h = (T)0.5 * (r[1] + r[2]);
                dw[((u * 3 + 0) * C + c) * s->ldw + f] = r[0] + h;
                dw[((u * 3 + 1) * C + c) * s->ldw + f] = (T)0.5 * (r[1] - r[2]);
                dw[((u * 3 + 2) * C + c) * s->ldw + f] = h + r[3];
            }
        }
    }
    if (db)
        for (int64_t f = 0; f < F; f++) db[f] = part[np * cp * fp + f];
    nk_ws_release(ws, from_arena);
    return 0;
}
#endif

/* db alone (no dW): db[f] = sum over output pixels of dz[p, f], over a
 * fixed number of pixel blocks (by shape only) whose partial sums are added
 * in block order, so the result does not depend on the thread count. */
static int CFN(bias_grad)(const nk_conv_shape *s, const T *dy, const T *ymask, T *db, int nt)
{
    const int64_t P = s->n * s->oh * s->ow, F = s->f;
    const int64_t nb = P < NK_CONV_WGRAD_BLOCKS ? P : NK_CONV_WGRAD_BLOCKS;
    int from_arena = 0;
    T *part = (T *)nk_ws_acquire((size_t)(nb * F) * sizeof(T), &from_arena);
    if (!part) return -1;
    (void)nt;
    const int team = nk_par_threads(P * F * (int64_t)sizeof(T) * (ymask ? 2 : 1), nb);
    (void)team;
#ifdef _OPENMP
#pragma omp parallel for num_threads(team) schedule(static) if (team > 1)
#endif
    for (int64_t b = 0; b < nb; b++) {
        T *restrict acc = part + b * F;
        for (int64_t f = 0; f < F; f++) acc[f] = (T)0;
        for (int64_t p = P * b / nb; p < P * (b + 1) / nb; p++) {
            const T *d = dy + p * s->ldy;
            if (ymask) {
                const T *m = ymask + p * s->ldy;
                for (int64_t f = 0; f < F; f++) acc[f] += m[f] > (T)0 ? d[f] : (T)0;
            } else {
                for (int64_t f = 0; f < F; f++) acc[f] += d[f];
            }
        }
    }
    for (int64_t f = 0; f < F; f++) {
        T t = part[f];
        for (int64_t b = 1; b < nb; b++) t += part[b * F + f];
        db[f] = t;
    }
    nk_ws_release(part, from_arena);
    return 0;
}

/* --------------------------------------------------------------- winograd
 * Winograd F(2x2, 3x3): each 2x2 block of outputs ("tile") from its 4x4
 * input patch d as Y = A^T [ sum_c (G g_c G^T) .* (B^T d_c B) ] A: per tile
 * 16 products of length C instead of 36, i.e. 16 GEMMs (one per transformed
 * position xi) of (tiles x C) @ (C x F).  The weight transform U = G g G^T
 * is done once per call and each of its 16 (C, F) planes packed once in the
 * micro-kernel's B format.  Tiles are processed in blocks of tb (a multiple
 * of mr, V and M of a block sized for L2): the input transform writes V
 * straight in the packed-A format (no pack_a), the micro-kernel computes
 * M = V @ U per plane, the output transform writes act(bias + A^T M A).
 * Parallel over blocks; every tile is computed by one thread the same way
 * whatever the block or thread count, so results are bitwise identical for
 * any thread count.
 *
 * src (N, H, W, C; pixels g->sp apart) with optional relu mask; w: the
 * (3, 3, C, F) kernel, or with flip, the forward kernel (3, 3, F, C) rotated
 * by 180 degrees with its channel axes swapped (the data gradient); its rows
 * g->ldw apart.  Output pixels g->op apart.  Tiles of the output plane
 * (oh, ow) read src at (2th - pt + a, 2tw - pl + b).  Where
 * nk_conv_use_wino4 (nk_conv.c) says, F(4x4, 3x3) runs instead, on the
 * fused path (g->m4: nk_conv_wino4.h; its weight gradient
 * nk_conv_wino4_wgrad.h). */
#define WINO_L2_BYTES ((int64_t)256 << 10) /* V + M of one block */

/* The 3x3 kernel g of channel pair (c, f) (GEMM k, n): w's taps, or with
 * flip (the data gradient) the forward kernel (3, 3, F, C) rotated by 180
 * degrees with its channel axes swapped; rows g->ldw apart. */
static void CFN(wino_taps)(const nk_wino *g, const T *w, int flip, int64_t c, int64_t f,
                           T gk[3][3])
{
    const int64_t C = g->c, F = g->f;
    for (int a = 0; a < 3; a++)
        for (int b = 0; b < 3; b++)
            gk[a][b] = flip ? w[(((2 - a) * 3 + (2 - b)) * F + f) * g->ldw + c]
                            : w[((a * 3 + b) * C + c) * g->ldw + f];
}

/* U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]: plane xi,
 * channel c, column f at u + (xi * C + c) * fp + f (f < F; fp >= F).
 * Columns in runs of WINO_U_RUN (the taps gathered first, then each entry
 * the same operations as one (c, f) at a time: vectorised across f), the
 * channels shared among nt threads: element by element, a 64 -> 64 U took
 * 9 % of its forward pass, in one thread (batch 128, 8x8, Zen 4). */
#define WINO_U_RUN 16
static void CFN(wino_u)(const nk_wino *g, const T *w, int flip, int64_t fp, T *u_out, int nt)
{
    const int64_t C = g->c, F = g->f, P = C * fp;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1 && C * F >= 1024)
#endif
    for (int64_t c = 0; c < C; c++)
        for (int64_t f0 = 0; f0 < F; f0 += WINO_U_RUN) {
            const int64_t fn = F - f0 < WINO_U_RUN ? F - f0 : WINO_U_RUN;
            T gk[9][WINO_U_RUN] = {{0}};
            for (int64_t j = 0; j < fn; j++) {
                T tap[3][3];
                CFN(wino_taps)(g, w, flip, c, f0 + j, tap);
                for (int k = 0; k < 9; k++) gk[k][j] = tap[k / 3][k % 3];
            }
            T t[4][3][WINO_U_RUN]; /* G g: row a, column b */
            for (int b = 0; b < 3; b++)
                for (int64_t j = 0; j < WINO_U_RUN; j++) {
                    t[0][b][j] = gk[b][j];
                    t[1][b][j] = (T)0.5 * (gk[b][j] + gk[3 + b][j] + gk[6 + b][j]);
                    t[2][b][j] = (T)0.5 * (gk[b][j] - gk[3 + b][j] + gk[6 + b][j]);
                    t[3][b][j] = gk[6 + b][j];
                }
            for (int a = 0; a < 4; a++) { /* (G g) G^T */
                T *restrict q = u_out + (a * 4) * P + c * fp + f0;
                const T *t0 = t[a][0], *t1 = t[a][1], *t2 = t[a][2];
                for (int64_t j = 0; j < fn; j++) q[j] = t0[j];
                for (int64_t j = 0; j < fn; j++) q[P + j] = (T)0.5 * (t0[j] + t1[j] + t2[j]);
                for (int64_t j = 0; j < fn; j++) q[2 * P + j] = (T)0.5 * (t0[j] - t1[j] + t2[j]);
                for (int64_t j = 0; j < fn; j++) q[3 * P + j] = t2[j];
            }
        }
}
#undef WINO_U_RUN

/* U = G g G^T for F(4x4, 3x3) (G = nk_wino4_G): plane xi = 6a + b,
 * channel c, column f at u + (xi * C + c) * fp + f; each entry computed in
 * double and rounded once. */
static void CFN(wino4_u)(const nk_wino *g, const T *w, int flip, int64_t fp, T *u_out)
{
    const double(*G)[3] = nk_wino4_G;
    const int64_t C = g->c, F = g->f;
    for (int64_t c = 0; c < C; c++)
        for (int64_t f = 0; f < F; f++) {
            T gt[3][3];
            double gk[3][3], t[6][3];
            CFN(wino_taps)(g, w, flip, c, f, gt);
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++) gk[a][b] = (double)gt[a][b];
            for (int a = 0; a < 6; a++)
                for (int b = 0; b < 3; b++)
                    t[a][b] = G[a][0] * gk[0][b] + G[a][1] * gk[1][b] + G[a][2] * gk[2][b];
            for (int a = 0; a < 6; a++)
                for (int b = 0; b < 6; b++)
                    u_out[((6 * a + b) * C + c) * fp + f] =
                        (T)(t[a][0] * G[b][0] + t[a][1] * G[b][1] + t[a][2] * G[b][2]);
        }
}

/* Whether F(4x4, 3x3) runs on the fused path (g->m4, nk_conv_wino4.h):
 * nk_conv_use_wino4 (nk_conv.c), float32 only. */
static int CFN(wino_use_f4)(const nk_wino *g)
{
    return sizeof(T) == 4 && nk_conv_use_wino4(g->c, g->f, g->lowp, 0);
}

/* Whether the fused Winograd (WFN(wino_fused) in nk_conv_wino.h) runs: C
 * and F (GEMM k and n) at most 32, where the blocked path's transposes and
 * micro-kernel calls of k = C cost as much as the products.  Measured
 * (AVX-512, 1 thread, forward and dX alike): C = F = 16 about 40 % faster,
 * C = 16 / F = 32 and C = 32 / F = 16 15-25 %, C = F = 32 about 15 %;
 * C = F = 64 slower with float32 products (U no longer fits L1).  With
 * bf16 products (lowp) up to 64: U in pairs is half the size, and the
 * blocked path's separate conversion of V goes too (batch 128, 1 thread,
 * Zen 5: the default CNN's 32 -> 64 on 26x26 forward with pooling 5.55 ->
 * 4.40 ms, dX 7.37 -> 5.14; 64 -> 64 on 8x8 1.06 -> 0.93 / 1.07 -> 0.92).
 * float32 only (float64 keeps the blocked path). */
static int CFN(wino_use_fused)(int64_t C, int64_t F, int lowp)
{
    const int64_t most = lowp ? 64 : 32;
    return sizeof(T) == 4 && C <= most && F <= most;
}

/* The fused path: blocks of fr tiles, parallel over blocks (static). */
static int CFN(wino_fused_run)(nk_wino *g, const T *src, const T *mask, const T *w, int flip,
                               const T *bias, int act, T *y, int nt)
{
    const int64_t C = g->c, F = g->f, ve = 64 / (int64_t)sizeof(T);
    const int64_t cp = (C + ve - 1) / ve * ve, fp = (F + ve - 1) / ve * ve;
    const int64_t fr = CFN_ISA(wino_fr);
    const int64_t ntiles = g->n * g->th * g->tw, nblk = (ntiles + fr - 1) / fr;
    if (nt > nblk) nt = (int)nblk;
    /* bf16 products (float32 with g->lowp: VDPBF16PS or its emulation, the
     * same bits): V and U in pairs of channels, c2 words per tile and plane
     * (uint32_t has T's size here) */
    int bf = 0;
#ifdef NK_CONV_FLOAT
    bf = g->lowp && !g->m4; /* F(4x4, 3x3) takes float32 products */
#endif
    const int64_t np = g->m4 ? 36 : 16; /* planes */
    const int64_t c2 = cp / 2, uw_len = bf ? 16 * c2 * fp : 0;
    /* per thread: V (float32, or its pairs in c2 words per tile and plane), M */
    const int64_t vb_len = fr * np * (bf ? c2 : cp), u_len = np * C * fp;
    const int64_t per = vb_len + fr * np * fp;
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(u_len + uw_len + cp + nt * per) * sizeof(T),
                               &from_arena);
    if (!ws) return -1;
    T *u = ws, *zero = u + u_len + uw_len, *scr = zero + cp;
    memset(u, 0, (size_t)(u_len + uw_len + cp) * sizeof(T));
    if (g->m4)
        CFN(wino4_u)(g, w, flip, fp, u);
    else
        CFN(wino_u)(g, w, flip, fp, u, nt);
    g->u_bf = NULL;
    g->fgemm_bf = NULL;
    g->bf_native = 0;
#ifdef NK_CONV_FLOAT
    if (bf) { /* U's pairs: channels 2k, 2k + 1 (zero beyond C), rounded as VCVTNEPS2BF16 */
        uint32_t *uw = (uint32_t *)(u + u_len);
        for (int64_t xi = 0; xi < 16; xi++)
            for (int64_t k = 0; k < c2; k++) {
                uint32_t *dst = uw + (xi * c2 + k) * fp;
                if (2 * k < C) {
                    const T *lo = u + (xi * C + 2 * k) * fp;
                    nk_bf16_pairs_ftz(lo, 2 * k + 1 < C ? lo + fp : NULL, dst, fp);
                } else
                    memset(dst, 0, (size_t)fp * sizeof *dst);
            }
        g->u_bf = uw;
        g->fgemm_bf = CFN_ISA(wino_fgemm_bfe);
#if NK_X86
        if (nk_bf16_native() && fr == 12) { /* its register tile: AVX-512's 12 tiles */
            g->fgemm_bf = nk_wino_fgemm_bf16;
            g->bf_native = 1;
        }
#endif
    }
#endif
    void (*run)(const nk_wino *, const T *, const T *, const T *, const T *, int64_t, int64_t,
                int64_t, int64_t, T *, uint32_t *, T *, const T *, int, T *) = CFN_ISA(wino_fused);
    void (*run4)(const nk_wino *, const T *, const T *, const T *, const T *, int64_t, int64_t,
                 int64_t, int64_t, T *, T *, const T *, int, T *) = NULL;
#ifdef NK_CONV_FLOAT
    if (g->m4) run4 = g->y16 ? CFN_ISA(wino4_fused_y16) : CFN_ISA(wino4_fused);
#endif
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *vb = scr + per * nk_thread_num(), *mb = vb + vb_len;
        uint32_t *vw = bf ? (uint32_t *)vb : NULL; /* then vb is not used */
        memset(vb, 0, (size_t)per * sizeof(T));
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t t0 = blk * fr, cnt = ntiles - t0 < fr ? ntiles - t0 : fr;
            if (run4)
                run4(g, src, mask, zero, u, cp, fp, t0, cnt, vb, mb, bias, act, y);
            else
                run(g, src, mask, zero, u, cp, fp, t0, cnt, vb, vw, mb, bias, act, y);
        }
    }
    nk_ws_release(ws, from_arena);
    return 0;
}

#ifdef NK_CONV_FLOAT
#define BK_ON (bk != NULL)
#else
#define BK_ON 0
#endif
static int CFN(wino)(nk_wino *g, const T *src, const T *mask, const T *w, int flip,
                     const T *bias, int act, T *y, int nt)
{
    const KTAB *kr = KCUR();
    const int64_t C = g->c, F = g->f, mr = kr->mr, nr = kr->nr, kc = kr->kc;
    const int64_t Fp = (F + nr - 1) / nr * nr, ve = 64 / (int64_t)sizeof(T);
    g->m4 = CFN(wino_use_f4)(g);
    g->th = g->m4 ? (g->oh + 3) / 4 : (g->oh + 1) / 2;
    g->tw = g->m4 ? (g->ow + 3) / 4 : (g->ow + 1) / 2;
    g->mr = mr;
    g->kc = kc;
    if (g->m4 || CFN(wino_use_fused)(C, F, g->lowp))
        return CFN(wino_fused_run)(g, src, mask, w, flip, bias, act, y, nt);
    if (g->y16) return NK_CONV_NEED_F32; /* the blocked path stores float32 only */
    const int64_t ntiles = g->n * g->th * g->tw;
    /* tiles per block: V + M of a block in WINO_L2_BYTES, [mr, 32 mr] */
    int64_t tb = WINO_L2_BYTES / (16 * (C + F) * (int64_t)sizeof(T)) / mr * mr;
    if (tb < mr) tb = mr;
    if (tb > 32 * mr) tb = 32 * mr;
    if (tb > (ntiles + mr - 1) / mr * mr) tb = (ntiles + mr - 1) / mr * mr;
    g->tb = tb;
    /* plane strides padded by a cache line so the 16 planes' streams do not
     * all map to the same L1 sets */
    g->v_xs = (tb * C + ve - 1) / ve * ve + ve;
    g->m_xs = (tb * F + ve - 1) / ve * ve + ve;
    const int64_t nblk = (ntiles + tb - 1) / tb;
    if (nt > nblk) nt = (int)nblk;
    /* each part 64-byte aligned (ws is) */
    const int64_t u_len = (16 * C * F + ve - 1) / ve * ve, upk_len = (16 * C * Fp + ve - 1) / ve * ve;
    const int64_t z_len = (C + ve - 1) / ve * ve;
    /* bf16 products (float32, g->lowp): the transforms stay float32; V and U
     * are converted to the bf16 kernel's pair slivers (the same mr, nr, kc as
     * the float32 kernel, whose packed layouts they convert) right before
     * the GEMMs: U once per call, V per block while in L2.  In uint16: a
     * plane of U is (C + 1) * Fp, of V tb * (C + 1) (k padded to even). */
#ifdef NK_CONV_FLOAT
    const nk_bkern *bk = g->lowp ? nk_bkern_current() : NULL;
    if (bk && (bk->mr != mr || bk->nr != nr || bk->kc != kc)) bk = NULL;
#endif
    const int lowp = BK_ON;
    const int64_t ub_xs = (C + 1) * Fp, vb_xs = (tb * (C + 1) + 31) / 32 * 32;
    const int64_t ub_len = lowp ? (16 * ub_xs / 2 + ve - 1) / ve * ve : 0;
    const int64_t per = 16 * (g->v_xs + g->m_xs) + (lowp ? 16 * vb_xs / 2 : 0);
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire(
        (size_t)(u_len + upk_len + ub_len + z_len + nt * per) * sizeof(T), &from_arena);
    if (!ws) return -1;
    T *u_xcf = ws, *u_pk = u_xcf + u_len, *zero = u_pk + upk_len + ub_len, *scr = zero + z_len;
    uint16_t *u_bf = (uint16_t *)(u_pk + upk_len);
    (void)u_bf;
    (void)vb_xs;
    memset(zero, 0, (size_t)z_len * sizeof(T));

    CFN(wino_u)(g, w, flip, F, u_xcf, nt);
    /* plane xi, k-block [pc, pc + kcur): u_pk + xi*C*Fp + pc*Fp, nr-column
     * sliver j0 at + j0*kcur */
    for (int64_t xi = 0; xi < 16; xi++)
        for (int64_t pc = 0; pc < C; pc += kc) {
            const int64_t kcur = C - pc < kc ? C - pc : kc;
            kr->pack_b(kcur, F, u_xcf + (xi * C + pc) * F, F, 1, NULL, 0, 0, 0, NULL,
                       u_pk + xi * C * Fp + pc * Fp);
#ifdef NK_CONV_FLOAT
            if (lowp)
                for (int64_t j0 = 0; j0 < F; j0 += nr)
                    bk->cvt(kcur, (int)nr, u_pk + xi * C * Fp + pc * Fp + j0 * kcur,
                            u_bf + xi * ub_xs + pc * Fp + j0 * ((kcur + 1) & ~(int64_t)1));
#endif
        }

    void (*in)(const nk_wino *, const T *, const T *, int64_t, int64_t, T *, const T *) =
        CFN_ISA(wino_in);
    void (*out)(const nk_wino *, const T *, int64_t, int64_t, const T *, int, T *) =
        CFN_ISA(wino_out); /* y = (or += with g->accum) */
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *v_pk = scr + per * nk_thread_num();
        T *m_blk = v_pk + 16 * g->v_xs;
        uint16_t *v_bf = (uint16_t *)(m_blk + 16 * g->m_xs);
        (void)v_bf;
        EPT ep;
        memset(&ep, 0, sizeof ep);
        ep.alpha = (T)1;
        ep.act = NK_ACT_NONE;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t blk = 0; blk < nblk; blk++) {
            const int64_t t0 = blk * tb, cnt = ntiles - t0 < tb ? ntiles - t0 : tb;
            in(g, src, mask, t0, cnt, v_pk, zero);
#ifdef NK_CONV_FLOAT
            if (lowp) {
                const int64_t nsl = (cnt + mr - 1) / mr;
                for (int64_t xi = 0; xi < 16; xi++)
                    for (int64_t pc = 0; pc < C; pc += kc) {
                        const int64_t kcur = C - pc < kc ? C - pc : kc;
                        const int64_t kp = (kcur + 1) & ~(int64_t)1;
                        const T *v = v_pk + xi * g->v_xs + pc * tb;
                        uint16_t *vb = v_bf + xi * vb_xs + pc * tb;
                        for (int64_t sl = 0; sl < nsl; sl++)
                            bk->cvt(kcur, (int)mr, v + sl * mr * kcur, vb + sl * mr * kp);
                        for (int64_t j0 = 0; j0 < F; j0 += nr) {
                            const int nn = (int)(F - j0 < nr ? F - j0 : nr);
                            const uint16_t *b = u_bf + xi * ub_xs + pc * Fp + j0 * kp;
                            ep.accum = pc > 0;
                            for (int64_t i0 = 0; i0 < cnt; i0 += mr) {
                                const int mm = (int)(cnt - i0 < mr ? cnt - i0 : mr);
                                (nn <= nr / 2 ? bk->ukr_half : bk->ukr)(
                                    kp, vb + i0 * kp, b, m_blk + xi * g->m_xs + i0 * F + j0, F,
                                    &ep, mm, nn);
                            }
                        }
                    }
                out(g, m_blk, t0, cnt, bias, act, y);
                continue;
            }
#endif
            for (int64_t xi = 0; xi < 16; xi++) {
                const T *v_x = v_pk + xi * g->v_xs, *u_x = u_pk + xi * C * Fp;
                T *m_x = m_blk + xi * g->m_xs;
                for (int64_t pc = 0; pc < C; pc += kc) {
                    const int64_t kcur = C - pc < kc ? C - pc : kc;
                    ep.accum = pc > 0;
                    for (int64_t j0 = 0; j0 < F; j0 += nr) {
                        const int nn = (int)(F - j0 < nr ? F - j0 : nr);
                        const T *b = u_x + pc * Fp + j0 * kcur;
                        for (int64_t i0 = 0; i0 < cnt; i0 += mr) {
                            const int mm = (int)(cnt - i0 < mr ? cnt - i0 : mr);
                            (nn <= nr / 2 ? kr->ukr_half : kr->ukr)(
                                kcur, v_x + pc * tb + i0 * kcur, b, nr, m_x + i0 * F + j0, F,
                                &ep, mm, nn);
                        }
                    }
                }
            }
            out(g, m_blk, t0, cnt, bias, act, y);
        }
    }
    nk_ws_release(ws, from_arena);
    return 0;
}
#undef BK_ON

/* pool_y / pool_i: see nk_wino (NULL: no pooling; with them y may be NULL) */
static int CFN(wino_fwd)(const nk_conv_shape *s, const T *x, const T *w, const T *bias, int act,
                         T *y, int nt, T *pool_y, int32_t *pool_i)
{
    nk_wino g;
    memset(&g, 0, sizeof g);
    g.pool_y = pool_y;
    g.pool_i = pool_i;
    g.n = s->n; g.h = s->h; g.w = s->w; g.c = s->c;
    g.f = s->f; g.oh = s->oh; g.ow = s->ow;
    g.pt = s->pt; g.pl = s->pl;
    g.sp = s->ldx; g.op = s->ldy; g.ldw = s->ldw;
    g.lowp = sizeof(T) == 4 && s->lowp;
    if (s->out_bf16) { /* float32 only (nk_conv2d_forward_bf16) */
        g.y16 = (uint16_t *)y;
        y = NULL;
#if NK_X86
        g.y16_native = nk_bf16_native() && CFN_ISA(wino_fr) == 12; /* the AVX-512 transforms */
#endif
    }
    return CFN(wino)(&g, x, NULL, w, 0, bias, act, y, nk_conv_threads(s, nt));
}

/* dX: the "full" correlation of dz (OH x OW, F channels) with the rotated,
 * channel-swapped kernel: dx[h, w] reads dz[h + pt - 2 + a, w + pl - 2 + b],
 * i.e. padding 2 - pt (negative: cropping); dz = dy masked while read. */
static int CFN(wino_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *w,
                           T *dx, int acc, int nt, const nk_unpool *up)
{
    nk_wino g;
    memset(&g, 0, sizeof g);
    nk_wino_set_up(&g, up); /* dy: the pooled gradient (fused path only: see backward_maxpool) */
    g.accum = acc;
    g.n = s->n; g.h = s->oh; g.w = s->ow; g.c = s->f;
    g.f = s->c; g.oh = s->h; g.ow = s->w;
    g.pt = 2 - s->pt; g.pl = 2 - s->pl;
    g.sp = s->ldy; g.op = s->ldx; g.ldw = s->ldw;
    g.lowp = sizeof(T) == 4 && s->lowp;
    return CFN(wino)(&g, dy, ymask, w, 1, NULL, NK_ACT_NONE, dx, nk_conv_threads(s, nt));
}

/* -------------------------------------------------------------- depthwise
 * s: g = C groups of one input channel (c == 1) and f = M outputs each; the
 * E = C*M output channels are e = c*M + m (Keras DepthwiseConv2D with depth
 * multiplier M).  Kernels: nk_conv_dw.h.  Every scratch row holds pixels of
 * Ep channels (E rounded up to a 64-byte vector, zero beyond E); the
 * weights (and bias) are copied once per call into that pitch.
 *
 * Forward and dW read x through a per-thread ring of input rows, expanded
 * to E channels (channel e holds x[..., e / M]) and zero-padded in width:
 * slot ih mod nk_conv_dw_xslots, each row copied once per thread (rows are
 * handed out in contiguous ranges).  With M = 1, C a whole number of
 * vectors, x contiguous and no padding in width, rows point into x.
 * Forward: parallel over output rows (n, oh).  dX: parallel over input rows
 * (n, h), dz rows masked (relu) and zero-upsampled into a ring as in
 * direct_dgrad; with M > 1 the E per-channel sums of a row go to scratch and
 * are added over m (ascending) into dx.  dW, db: fixed blocks of output rows
 * (by shape only), partial sums added in block order, with dX in the same
 * pass when both are wanted (see dw_wgrad).  Every result is thus
 * independent of the thread count. */

/* Geometry of the forward / dW input rows (WX pixels of Ep channels). */
typedef struct {
    const nk_conv_shape *s;
    int64_t E, Ep, WX, nsl;
    int direct;          /* rows point into x */
    const T *zero;       /* NULL: rows outside the image are NULL; else this zero row */
} CFN(dw_geo);

static void CFN(dw_geo_init)(CFN(dw_geo) *d, const nk_conv_shape *s)
{
    d->s = s;
    d->E = s->g * s->f;
    d->Ep = nk_conv_dw_ep(s, sizeof(T));
    d->WX = nk_conv_xrow_px(s);
    d->nsl = nk_conv_dw_xslots(s);
    d->direct = nk_conv_dw_rows_in_x(s, sizeof(T));
    d->zero = NULL;
}

/* per-thread scratch elements: row pointers, slot tags, the ring */
static int64_t CFN(dw_xscr)(const CFN(dw_geo) *d)
{
    return (int64_t)nk_conv_dw_xscr(d->s, sizeof(T)); /* fits: see nk_conv_dw_fits */
}

/* nt capped so that the workspace of this product stays within the budget */
static int CFN(dw_ws_threads)(const nk_conv_shape *s, int pass, int nt)
{
    double per;
    const double shared = nk_conv_dw_ws(s, sizeof(T), pass, &per);
    return nk_conv_ws_threads(per, shared, sizeof(T), nt);
}

/* Carve a thread's scratch (see dw_xscr) and clear its ring. */
static void CFN(dw_xscr_init)(const CFN(dw_geo) *d, T *my, const T ***rows, int64_t **tags,
                              T **ring)
{
    *rows = (const T **)(void *)my;
    *tags = (int64_t *)(void *)(my + nk_conv_ptr_elems(d->s->kh, sizeof(T)));
    *ring = my + nk_conv_ptr_elems(d->s->kh, sizeof(T)) + nk_conv_ptr_elems(d->nsl, sizeof(T));
    for (int64_t k = 0; k < d->nsl; k++) (*tags)[k] = -1;
    if (!d->direct) memset(*ring, 0, (size_t)(d->nsl * d->WX * d->Ep) * sizeof(T));
}

/* rows[kh] for output row (n, oh): the expanded, padded input rows. */
static void CFN(dw_xrows)(const CFN(dw_geo) *d, const T *x, int64_t n, int64_t oh,
                          const T **rows, int64_t *tags, T *ring)
{
    const nk_conv_shape *s = d->s;
    const int64_t H = s->h, W = s->w, C = s->g, M = s->f, LD = s->ldx, Ep = d->Ep;
    for (int64_t kh = 0; kh < s->kh; kh++) {
        const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
        if ((uint64_t)ih >= (uint64_t)H) {
            rows[kh] = d->zero;
            continue;
        }
        const T *xrow = x + (n * H + ih) * W * LD;
        if (d->direct) {
            rows[kh] = xrow;
            continue;
        }
        const int64_t k = ih % d->nsl, id = n * H + ih;
        T *slot = ring + k * d->WX * Ep;
        if (tags[k] != id) {
            /* in-image pixels only: the padding pixels and channels >= E
             * stay zero from dw_xscr_init */
            int64_t u0 = s->pl > 0 ? s->pl : 0, u1 = nk_imin64(d->WX, W + s->pl);
            if (M == 1 && LD == Ep && u1 > u0) { /* pixels contiguous on both sides */
                memcpy(slot + u0 * Ep, xrow + (u0 - s->pl) * LD,
                       (size_t)((u1 - u0) * Ep) * sizeof(T));
                u1 = u0;
            }
            for (int64_t u = u0; u < u1; u++) {
                const T *src = xrow + (u - s->pl) * LD;
                T *dst = slot + u * Ep;
                if (M == 1) {
                    memcpy(dst, src, (size_t)C * sizeof(T));
                } else {
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t m = 0; m < M; m++) dst[c * M + m] = src[c];
                }
            }
            tags[k] = id;
        }
        rows[kh] = slot;
    }
}

/* w (KH*KW rows, ldw apart) and bias into Ep-channel rows, zero beyond E. */
static void CFN(dw_pad_w)(const nk_conv_shape *s, int64_t E, int64_t Ep, const T *w,
                          const T *bias, T *wpad, T *bpad)
{
    const int64_t KK = s->kh * s->kw;
    for (int64_t t = 0; t < KK; t++) {
        memcpy(wpad + t * Ep, w + t * s->ldw, (size_t)E * sizeof(T));
        memset(wpad + t * Ep + E, 0, (size_t)(Ep - E) * sizeof(T));
    }
    if (bpad) {
        memcpy(bpad, bias, (size_t)E * sizeof(T));
        memset(bpad + E, 0, (size_t)(Ep - E) * sizeof(T));
    }
}

static int CFN(dw_forward)(const nk_conv_shape *s, const T *x, const T *w, const T *bias,
                           int act, T *y, int nt)
{
    CFN(dw_geo) d;
    CFN(dw_geo_init)(&d, s);
    const int64_t Ep = d.Ep, KK = s->kh * s->kw, rows_n = s->n * s->oh, ve = 64 / sizeof(T);
    nt = nk_conv_dw_threads(s, rows_n, nt);
    nt = CFN(dw_ws_threads)(s, NK_CONV_FWD, nt);
    const int64_t per = (CFN(dw_xscr)(&d) + ve - 1) / ve * ve, shared = (KK + 1) * Ep;
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(shared + nt * per) * sizeof(T), &from_arena);
    if (!ws) return -1;
    T *wpad = ws, *bpad = ws + KK * Ep, *scr = ws + shared;
    CFN(dw_pad_w)(s, d.E, Ep, w, bias, wpad, bias ? bpad : NULL);
    void (*row)(const T *const *, int64_t, int64_t, int64_t, int64_t, const T *, const T *, int,
                int64_t, int64_t, int64_t, T *, int64_t, int) = CFN_ISA(dw_row);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        const T **rows;
        int64_t *tags;
        T *ring;
        CFN(dw_xscr_init)(&d, scr + per * nk_thread_num(), &rows, &tags, &ring);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows_n; r++) {
            const int64_t n = r / s->oh, oh = r - n * s->oh;
            CFN(dw_xrows)(&d, x, n, oh, rows, tags, ring);
            row(rows, s->kh, s->kw, s->sw * Ep, s->dw * Ep, wpad, bias ? bpad : NULL, act, d.E,
                Ep, s->ow, y + r * s->ow * s->ldy, s->ldy, 0);
        }
    }
    nk_ws_release(ws, from_arena);
    return 0;
}

/* The dX side: a per-thread ring of nk_conv_dz_slots(s) dz rows, each
 * nk_conv_dz_row_px(s) pixels of Ep channels, pixel LP + ow*sw holding
 * mask(dz[n, oh, ow, :]) and every other pixel and channel zero (as in
 * direct_dgrad); then the row pointers (KH), the slot tags and, with M > 1,
 * one row of W x Ep per-channel sums. */
typedef struct {
    const nk_conv_shape *s;
    int64_t E, Ep, nslots, WB, LP, slot;
    void (*row)(const T *const *, int64_t, int64_t, int64_t, int64_t, const T *, const T *, int,
                int64_t, int64_t, int64_t, T *, int64_t, int);
} CFN(dw_dz);

static void CFN(dw_dz_init)(CFN(dw_dz) *z, const nk_conv_shape *s)
{
    z->s = s;
    z->E = s->g * s->f;
    z->Ep = nk_conv_dw_ep(s, sizeof(T));
    z->nslots = nk_conv_dz_slots(s);
    z->WB = nk_conv_dz_row_px(s);
    z->LP = nk_conv_dz_lp(s);
    z->slot = z->WB * z->Ep;
    z->row = CFN_ISA(dw_row);
}

static int64_t CFN(dw_dz_scr)(const CFN(dw_dz) *z)
{
    return (int64_t)nk_conv_dw_dzscr(z->s, sizeof(T)); /* fits: see nk_conv_dw_fits */
}

typedef struct {
    T *ring, *acc;
    const T **zr;
    int64_t *tag;
} CFN(dw_dz_thr);

static void CFN(dw_dz_thr_init)(const CFN(dw_dz) *z, T *my, CFN(dw_dz_thr) *t)
{
    t->ring = my;
    t->zr = (const T **)(void *)(my + z->nslots * z->slot);
    t->tag = (int64_t *)(void *)(my + z->nslots * z->slot +
                                 nk_conv_ptr_elems(z->s->kh, sizeof(T)));
    t->acc = my + z->nslots * z->slot + nk_conv_ptr_elems(z->s->kh, sizeof(T)) +
             nk_conv_ptr_elems(z->nslots, sizeof(T));
    for (int64_t k = 0; k < z->nslots; k++) t->tag[k] = -1;
    memset(t->ring, 0, (size_t)(z->nslots * z->slot) * sizeof(T));
}

/* The ring slot holding dz row id = n*OH + oh (loaded, masked, unless it is
 * there already). */
static T *CFN(dw_dz_row)(const CFN(dw_dz) *z, CFN(dw_dz_thr) *t, const T *dy, const T *ymask,
                         int64_t id)
{
    const nk_conv_shape *s = z->s;
    const int64_t OW = s->ow, E = z->E, Ep = z->Ep, oh = id % s->oh, k = oh % z->nslots;
    T *zs = t->ring + k * z->slot;
    if (t->tag[k] != id && !ymask && s->sw == 1 && s->ldy == Ep) { /* one contiguous run */
        memcpy(zs + z->LP * Ep, dy + id * OW * Ep, (size_t)(OW * Ep) * sizeof(T));
        t->tag[k] = id;
    }
    if (t->tag[k] != id) {
        for (int64_t ow = 0; ow < OW; ow++) {
            const T *dp = dy + (id * OW + ow) * s->ldy;
            T *restrict dd = zs + (z->LP + ow * s->sw) * Ep;
            if (ymask) {
                const T *mp = ymask + (id * OW + ow) * s->ldy;
                for (int64_t e = 0; e < E; e++) {
                    const T v = dp[e]; /* unconditional load, see nk_conv_direct.h */
                    dd[e] = mp[e] > (T)0 ? v : (T)0;
                }
            } else {
                memcpy(dd, dp, (size_t)E * sizeof(T));
            }
        }
        t->tag[k] = id;
    }
    return zs;
}

/* dx row r = n*H + h (= or += with accum): dx[h, w] = sum over the taps
 * of the dz rows oh with oh*sh = h + pt - kh*dh of dz[oh, (w + pl - kw*dw)
 * / sw] * w[kh, kw] (gather form), then with M > 1 summed over m. */
static void CFN(dw_dx_row)(const CFN(dw_dz) *z, CFN(dw_dz_thr) *t, const T *dy, const T *ymask,
                           const T *wpad, int64_t r, T *dx, int accum)
{
    const nk_conv_shape *s = z->s;
    const int64_t H = s->h, W = s->w, C = s->g, M = s->f, Ep = z->Ep;
    const int64_t n = r / H, h = r - n * H;
    for (int64_t kh = 0; kh < s->kh; kh++) {
        const int64_t tt = h + s->pt - kh * s->dh;
        const int64_t oh = tt >= 0 ? tt / s->sh : -1;
        t->zr[kh] = NULL;
        if (tt < 0 || oh * s->sh != tt || oh >= s->oh) continue;
        t->zr[kh] = CFN(dw_dz_row)(z, t, dy, ymask, n * s->oh + oh) + (z->LP + s->pl) * Ep;
    }
    T *dxrow = dx + r * W * s->ldx;
    if (M == 1) {
        z->row(t->zr, s->kh, s->kw, Ep, -s->dw * Ep, wpad, NULL, NK_ACT_NONE, z->E, Ep, W, dxrow,
               s->ldx, accum);
        return;
    }
    z->row(t->zr, s->kh, s->kw, Ep, -s->dw * Ep, wpad, NULL, NK_ACT_NONE, z->E, Ep, W, t->acc, Ep,
           0);
    for (int64_t iw = 0; iw < W; iw++) {
        const T *a = t->acc + iw * Ep;
        T *o = dxrow + iw * s->ldx;
        for (int64_t c = 0; c < C; c++) {
            T v = a[c * M];
            for (int64_t m = 1; m < M; m++) v += a[c * M + m];
            o[c] = accum ? o[c] + v : v;
        }
    }
}

/* dX alone: parallel over input rows (n, h), contiguous per thread. */
static int CFN(dw_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *w, T *dx,
                         int accum, int nt)
{
    CFN(dw_dz) z;
    CFN(dw_dz_init)(&z, s);
    const int64_t KK = s->kh * s->kw, rows_n = s->n * s->h, ve = 64 / sizeof(T), Ep = z.Ep;
    nt = nk_conv_dw_threads(s, rows_n, nt);
    nt = CFN(dw_ws_threads)(s, NK_CONV_BWD_DATA, nt);
    const int64_t per = (CFN(dw_dz_scr)(&z) + ve - 1) / ve * ve;
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(KK * Ep + nt * per) * sizeof(T), &from_arena);
    if (!ws) return -1;
    T *wpad = ws, *scr = ws + KK * Ep;
    CFN(dw_pad_w)(s, z.E, Ep, w, NULL, wpad, NULL);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        CFN(dw_dz_thr) t;
        CFN(dw_dz_thr_init)(&z, scr + per * nk_thread_num(), &t);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t r = 0; r < rows_n; r++) CFN(dw_dx_row)(&z, &t, dy, ymask, wpad, r, dx, accum);
    }
    nk_ws_release(ws, from_arena);
    return 0;
}

/* dW, db (and, with dx, the data gradient in the same pass): fixed blocks
 * of output rows (by shape only), partial sums added in block order.
 * Fused (dx != NULL): a block walks its output rows r in order, each dz
 * row is masked into the dX ring once and feeds both the dW sums (read
 * from the ring) and the dx rows whose last contributing output row is r
 * ("owned" by r: h in [oh*sh - pt, (oh+1)*sh - pt), the last output row
 * also owning the rows below it); the up to nk_conv_dz_slots - 1 dz rows
 * before the block that its first dx rows need are loaded first.  So dy
 * and the relu mask are read once for both gradients, and the results are
 * bitwise those of the separate passes. */
static int CFN(dw_wgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *x,
                         const T *w, T *dw, T *db, T *dx, int accum, int nt)
{
    CFN(dw_geo) d;
    CFN(dw_geo_init)(&d, s);
    CFN(dw_dz) z;
    CFN(dw_dz_init)(&z, s);
    const int64_t E = d.E, Ep = d.Ep, KK = s->kh * s->kw, rows_n = s->n * s->oh;
    const int64_t OH = s->oh, H = s->h;
    const int64_t nb = rows_n < NK_CONV_WGRAD_BLOCKS ? rows_n : NK_CONV_WGRAD_BLOCKS;
    const int64_t ve = 64 / sizeof(T), bper = (KK + 1) * Ep;
    nt = nk_conv_dw_threads(s, nb, nt);
    nt = CFN(dw_ws_threads)(s, NK_CONV_BWD_FILTER, nt);
    const int64_t xper = (CFN(dw_xscr)(&d) + ve - 1) / ve * ve;
    const int64_t per = xper + (dx ? (CFN(dw_dz_scr)(&z) + ve - 1) / ve * ve : 0);
    const int64_t zlen = (d.WX * Ep + ve - 1) / ve * ve, wlen = dx ? KK * Ep : 0;
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(zlen + wlen + nb * bper + nt * per) * sizeof(T),
                               &from_arena);
    if (!ws) return -1;
    T *zero = ws, *wpad = ws + zlen, *part = wpad + wlen, *scr = part + nb * bper;
    memset(zero, 0, (size_t)zlen * sizeof(T));
    d.zero = zero;
    if (dx) CFN(dw_pad_w)(s, E, Ep, w, NULL, wpad, NULL);
    void (*wrow)(const T *const *, int64_t, int64_t, int64_t, int64_t, const T *, const T *,
                 int64_t, int64_t, int64_t, int64_t, T *, T *) = CFN_ISA(dw_wgrad_row);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        const T **rows;
        int64_t *tags;
        T *ring;
        T *my = scr + per * nk_thread_num();
        CFN(dw_xscr_init)(&d, my, &rows, &tags, &ring);
        CFN(dw_dz_thr) t;
        if (dx) CFN(dw_dz_thr_init)(&z, my + xper, &t);
#ifdef _OPENMP
#pragma omp for schedule(dynamic, 1)
#endif
        for (int64_t b = 0; b < nb; b++) {
            T *pw = part + b * bper;
            const int64_t r0 = rows_n * b / nb, r1 = rows_n * (b + 1) / nb;
            memset(pw, 0, (size_t)bper * sizeof(T));
            int64_t rs = r0;
            if (dx) { /* the earlier dz rows this block's first dx rows need */
                rs = r0 - (z.nslots - 1);
                if (rs < r0 / OH * OH) rs = r0 / OH * OH;
            }
            for (int64_t r = rs; r < r1; r++) {
                const int64_t n = r / OH, oh = r - n * OH;
                if (!dx) {
                    CFN(dw_xrows)(&d, x, n, oh, rows, tags, ring);
                    wrow(rows, s->kh, s->kw, s->sw * Ep, s->dw * Ep, dy + r * s->ow * s->ldy,
                         ymask ? ymask + r * s->ow * s->ldy : NULL, s->ldy, s->ow, E, Ep, pw,
                         pw + KK * Ep);
                    continue;
                }
                const T *zs = CFN(dw_dz_row)(&z, &t, dy, ymask, r);
                if (r < r0) continue;
                CFN(dw_xrows)(&d, x, n, oh, rows, tags, ring);
                wrow(rows, s->kh, s->kw, s->sw * Ep, s->dw * Ep, zs + z.LP * Ep, NULL,
                     s->sw * Ep, s->ow, E, Ep, pw, pw + KK * Ep);
                int64_t ha = oh * s->sh - s->pt, hb = oh == OH - 1 ? H : ha + s->sh;
                if (ha < 0) ha = 0;
                if (hb > H) hb = H;
                for (int64_t h = ha; h < hb; h++)
                    CFN(dw_dx_row)(&z, &t, dy, ymask, wpad, n * H + h, dx, accum);
            }
        }
        CFN(sum_chunks)(part, nb, bper);
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t i = 0; i < (KK + 1) * E; i++) {
            const int64_t tp = i / E, e = i - tp * E;
            if (tp < KK) dw[tp * s->ldw + e] = part[tp * Ep + e];
            else if (db) db[e] = part[tp * Ep + e];
        }
    }
    nk_ws_release(ws, from_arena);
    return 0;
}

#undef CFN_ISA

/* ------------------------------------------------------------- top level */

static int CFN(forward1)(const nk_conv_shape *s, int algo, const T *x, const T *w, const T *bias,
                        int act, T *y, int nt)
{
    if (s->n == 0 || s->oh == 0 || s->ow == 0 || s->f == 0) return 0;
    if (algo == NK_CONV_AUTO || algo == NK_CONV_DIRECT_WGRAD) /* a dW algorithm only */
        algo = nk_conv_choose(s, sizeof(T) == 8, NK_CONV_FWD);
    nk_conv_shape f32s;
    s = nk_conv_precision(s, NK_CONV_FWD, &algo, &f32s); /* bf16 only where faster */
    const int wino = algo == NK_CONV_WINOGRAD && nk_conv_wino_ok(s) && KCUR()->mr <= WINO_MR_MAX;
    if (s->out_bf16 && !wino) return NK_CONV_NEED_F32; /* only Winograd stores bf16 */
    if (algo == NK_CONV_DIRECT && nk_conv_direct_fits(s, sizeof(T), NK_CONV_FWD))
        return CFN(direct_fwd)(s, x, w, bias, act, y, nk_conv_threads(s, nt));
    if (wino) return CFN(wino_fwd)(s, x, w, bias, act, y, nt, NULL, NULL);
    return CFN(im2col_fwd)(s, x, w, bias, act, y, nt);
}

static int CFN(backward1)(const nk_conv_shape *s, int algo, const T *dy, const T *x, const T *w,
                          int act, const T *y, T *dx, int acc, T *dw, T *db, int nt)
{
    const T *ymask = act == NK_ACT_NONE ? NULL : y;
    const int64_t kkcf = s->kh * s->kw * s->c * s->f;
    if (s->n == 0 || s->oh == 0 || s->ow == 0 || s->f == 0) {
        /* no outputs: every gradient is zero */
        if (dw)
            for (int64_t e = 0; e < kkcf; e++) dw[e / s->f * s->ldw + e % s->f] = (T)0;
        if (db)
            for (int64_t f = 0; f < s->f; f++) db[f] = (T)0;
        if (dx && !acc) nk_conv_zero_px(dx, s->n * s->h * s->w, s->c, s->ldx, sizeof(T), 1);
        return 0;
    }
    int a, rc = 0;
    /* bf16 products only where they are faster than float32's algorithm:
     * each product on the shape nk_conv_precision gives it */
    nk_conv_shape f32s;
    const nk_conv_shape *const s0 = s;
    if (dw) {
        a = algo == NK_CONV_AUTO ? nk_conv_choose(s, sizeof(T) == 8, NK_CONV_BWD_FILTER) : algo;
        s = nk_conv_precision(s0, NK_CONV_BWD_FILTER, &a, &f32s);
#ifndef NK_CONV_FLOAT
        if (a == NK_CONV_DIRECT_WGRAD) /* float32 only: float64 takes auto's choice */
            a = nk_conv_choose(s, 1, NK_CONV_BWD_FILTER);
#endif
        if (a == NK_CONV_DIRECT && nk_conv_direct_fits(s, sizeof(T), NK_CONV_BWD_FILTER))
            rc = CFN(direct_wgrad)(s, dy, ymask, x, dw, db, nk_conv_threads(s, nt));
#ifdef NK_CONV_FLOAT
        else if (a == NK_CONV_DIRECT_WGRAD)
            rc = CFN(wg2_wgrad)(s, dy, ymask, x, dw, db, nk_conv_threads(s, nt));
        else if (a == NK_CONV_WINOGRAD && nk_conv_wino_ok(s) && nk_conv_wwg_fits(s))
            rc = CFN(wino_wgrad)(s, dy, ymask, x, dw, db, nk_conv_threads(s, nt), NULL);
#endif
        else
            rc = CFN(im2col_wgrad)(s, dy, ymask, act, x, dw, db, nt);
    } else if (db) {
        rc = CFN(bias_grad)(s, dy, ymask, db, nt);
    }
    if (rc || !dx) return rc;
    s = s0;
    a = algo == NK_CONV_AUTO || algo == NK_CONV_DIRECT_WGRAD /* a dW algorithm only */
            ? nk_conv_choose(s, sizeof(T) == 8, NK_CONV_BWD_DATA)
            : algo;
    s = nk_conv_precision(s0, NK_CONV_BWD_DATA, &a, &f32s);
    if (a == NK_CONV_DIRECT && nk_conv_direct_fits(s, sizeof(T), NK_CONV_BWD_DATA))
        return CFN(direct_dgrad)(s, dy, ymask, w, dx, acc, nk_conv_threads(s, nt));
    if (a == NK_CONV_WINOGRAD && nk_conv_wino_ok(s) && KCUR()->mr <= WINO_MR_MAX)
        return CFN(wino_dgrad)(s, dy, ymask, w, dx, acc, nt, NULL);
    return CFN(im2col_dgrad)(s, dy, ymask, act, w, dx, acc, nt);
}

/* Groups: one convolution per channel window (see nk_conv.h). */
static int CFN(forward)(const nk_conv_shape *s0, int algo, const T *x, const T *w, const T *bias,
                        int act, T *y, int nt)
{
    nk_conv_shape s = nk_conv_norm(s0);
    const int64_t G = s.g;
    if (sizeof(T) != 4) s.lowp = 0;
    if (nk_conv_use_dw(&s, algo) && nk_conv_dw_fits(&s, sizeof(T), NK_CONV_FWD)) {
        if (s.out_bf16) return NK_CONV_NEED_F32;
        if (s.n == 0 || s.oh == 0 || s.ow == 0 || s.f == 0) return 0;
        return CFN(dw_forward)(&s, x, w, bias, act, y, nt);
    }
    if (algo == NK_CONV_DEPTHWISE) algo = NK_CONV_AUTO; /* c > 1: not a depthwise shape */
    if (s.out_bf16 && G > 1) return NK_CONV_NEED_F32;
    s.g = 1;
    int rc = 0;
    for (int64_t j = 0; j < G && rc == 0; j++)
        rc = CFN(forward1)(&s, algo, x + j * s.c, w + j * s.f, bias ? bias + j * s.f : NULL, act,
                           y + j * s.f, nt);
    return rc;
}

static int CFN(backward)(const nk_conv_shape *s0, int algo, const T *dy, const T *x, const T *w,
                         int act, const T *y, T *dx, int acc, T *dw, T *db, int nt)
{
    nk_conv_shape s = nk_conv_norm(s0);
    const int64_t G = s.g, C = s.c, F = s.f;
    int rc = 0;
    if (sizeof(T) != 4) s.lowp = 0;
    if (nk_conv_use_dw(&s, algo) && s.n > 0 && s.oh > 0 && s.ow > 0 && s.f > 0 &&
        nk_conv_dw_fits(&s, sizeof(T), dw ? NK_CONV_BWD_FILTER : NK_CONV_BWD_DATA)) {
        const T *ymask = act == NK_ACT_NONE ? NULL : y;
        if (dw) /* with dx: both in one pass */
            return CFN(dw_wgrad)(&s, dy, ymask, x, w, dw, db, dx, acc, nt);
        if (db) {
            nk_conv_shape t = s; /* all G*F channels as one group */
            t.g = 1;
            t.f = G * F;
            rc = CFN(bias_grad)(&t, dy, ymask, db, nt);
        }
        if (rc == 0 && dx) rc = CFN(dw_dgrad)(&s, dy, ymask, w, dx, acc, nt);
        return rc;
    }
    if (algo == NK_CONV_DEPTHWISE) algo = NK_CONV_AUTO;
    s.g = 1;
    for (int64_t j = 0; j < G && rc == 0; j++)
        rc = CFN(backward1)(&s, algo, dy + j * F, x ? x + j * C : NULL, w + j * F, act,
                            y ? y + j * F : NULL, dx ? dx + j * C : NULL, acc,
                            dw ? dw + j * F : NULL, db ? db + j * F : NULL, nt);
    return rc;
}

/* py, pi = 2x2 stride-2 max pooling of y = act(conv(x) + bias) (see
 * nk_conv2d_forward_maxpool): in Winograd's output transform when the
 * forward pass runs there (one group, float32: y is then stored only when
 * given), else the convolution into y (or a workspace) and the pooling
 * kernel after it. */
static int CFN(forward_pool)(const nk_conv_shape *s0, int algo, const T *x, const T *w,
                             const T *bias, int act, T *y, T *py, int32_t *pi, int nt)
{
    nk_conv_shape s = nk_conv_norm(s0);
    if (sizeof(T) != 4) s.lowp = 0;
    const int64_t F = s.f * (s.g > 1 ? s.g : 1);
    const int plain = s.ldy == F && s.n > 0 && s.oh > 1 && s.ow > 1 && s.f > 0;
    if (sizeof(T) == 4 && s.g <= 1 && plain && algo != NK_CONV_DEPTHWISE) {
        int a = algo == NK_CONV_AUTO || algo == NK_CONV_DIRECT_WGRAD
                    ? nk_conv_choose(&s, 0, NK_CONV_FWD)
                    : algo;
        nk_conv_shape f32s;
        const nk_conv_shape *sp = nk_conv_precision(&s, NK_CONV_FWD, &a, &f32s);
        if (a == NK_CONV_WINOGRAD && nk_conv_wino_ok(sp) && KCUR()->mr <= WINO_MR_MAX)
            return CFN(wino_fwd)(sp, x, w, bias, act, y, nt, py, pi);
    }
    int slot = 0;
    T *yy = y;
    if (!yy) {
        yy = (T *)nk_ws_acquire((size_t)(s.n * s.oh * s.ow * F) * sizeof(T) + 64, &slot);
        if (!yy) return -1;
    }
    int rc = CFN(forward)(&s, algo, x, w, bias, act, yy, nt);
    if (rc == 0) {
        nk_pool_geom pg;
        memset(&pg, 0, sizeof pg);
        pg.n = s.n; pg.h = s.oh; pg.w = s.ow; pg.c = F;
        pg.oh = s.oh / 2; pg.ow = s.ow / 2;
        pg.ph = pg.pw = pg.sh = pg.sw = 2;
        nk_max_pool2d_fwd(&pg, yy, py, pi, sizeof(T) == 8);
    }
    if (!y) nk_ws_release(yy, slot);
    return rc;
}

/* The gradients of py = 2x2 stride-2 max pooling of act(conv(x) + bias)
 * (nk_conv2d_backward_maxpool) given dyp = dL/dpy, the pooling's indices pi
 * and, for act ReLU, py itself (its mask: the ReLU's derivative at each
 * window's maximum).  Where both products run as F(2x2, 3x3) Winograd --
 * float32 (bf16 products or not), groups 1, dX on the fused path and its
 * patches starting on even pixels (the convolution's top and left padding
 * even) -- their transforms read dz from dyp and pi (nk_wino.up_i) and the
 * full-size dz is never written; else nk_max_pool2d_bwd writes it to a
 * workspace and the convolution's backward reads it.  Same bits either
 * way.  The pooled arrays are contiguous (N, OH / 2, OW / 2, F). */
/* Whether CFN(backward_maxpool) reads dz through the pooled gradient (1),
 * with the shapes its dW and dX run on in *sw, *sx (f32w, f32x: storage) */
static int CFN(maxpool_bwd_fused)(const nk_conv_shape *s, int algo, int need_dx, int need_dw,
                                  int need_db, const nk_conv_shape **sw, nk_conv_shape *f32w,
                                  const nk_conv_shape **sx, nk_conv_shape *f32x)
{
    const int64_t F = s->f * (s->g > 1 ? s->g : 1);
    int fused = sizeof(T) == 4 && s->g <= 1 && s->ldy == F && s->n > 0 && s->oh >= 2 &&
                s->ow >= 2 && s->f > 0 && (need_dw || !need_db) && (need_dx || need_dw) &&
                algo != NK_CONV_DEPTHWISE;
    *sw = *sx = s;
    if (fused && need_dw) {
        int a = algo == NK_CONV_AUTO ? nk_conv_choose(s, 0, NK_CONV_BWD_FILTER) : algo;
        *sw = nk_conv_precision(s, NK_CONV_BWD_FILTER, &a, f32w);
        fused = a == NK_CONV_WINOGRAD && nk_conv_wino_ok(*sw) && nk_conv_wwg_fits(*sw) &&
                !nk_conv_use_wino4((*sw)->c, (*sw)->f, (*sw)->lowp, 1);
    }
    if (fused && need_dx) {
        int a = algo == NK_CONV_AUTO || algo == NK_CONV_DIRECT_WGRAD
                    ? nk_conv_choose(s, 0, NK_CONV_BWD_DATA)
                    : algo;
        const nk_conv_shape *x = nk_conv_precision(s, NK_CONV_BWD_DATA, &a, f32x);
        *sx = x;
        /* dX's tiles read dz from (2 th + pt - 2, 2 tw + pl - 2): whole windows */
        fused = a == NK_CONV_WINOGRAD && nk_conv_wino_ok(x) && KCUR()->mr <= WINO_MR_MAX &&
                !nk_conv_use_wino4(x->f, x->c, x->lowp, 0) &&
                CFN(wino_use_fused)(x->f, x->c, x->lowp) && x->pt % 2 == 0 && x->pl % 2 == 0;
    }
    return fused;
}

static int CFN(backward_maxpool)(const nk_conv_shape *s0, int algo, const T *dyp,
                                 const int32_t *pi, const T *py, const T *x, const T *w, T *dx,
                                 int acc, T *dw, T *db, int nt)
{
    nk_conv_shape s = nk_conv_norm(s0);
    if (sizeof(T) != 4) s.lowp = 0;
    const int64_t F = s.f * (s.g > 1 ? s.g : 1);
    nk_conv_shape f32w, f32x;
    const nk_conv_shape *sw, *sx;
    const int fused = CFN(maxpool_bwd_fused)(&s, algo, dx != NULL, dw != NULL, db != NULL, &sw,
                                             &f32w, &sx, &f32x);
#ifdef NK_CONV_FLOAT
    if (fused) {
        const nk_unpool up = {pi, py, s.oh / 2, s.ow / 2};
        int rc = 0;
        if (dw) rc = CFN(wino_wgrad)(sw, dyp, NULL, x, dw, db, nk_conv_threads(sw, nt), &up);
        if (rc == 0 && dx) rc = CFN(wino_dgrad)(sx, dyp, NULL, w, dx, acc, nt, &up);
        return rc;
    }
#else
    (void)fused;
#endif
    /* dz written, then the convolution's backward */
    int slot = 0;
    T *dz = (T *)nk_ws_acquire((size_t)(s.n * s.oh * s.ow * F) * sizeof(T) + 64, &slot);
    if (!dz) return -1;
    nk_pool_geom pg;
    memset(&pg, 0, sizeof pg);
    pg.n = s.n; pg.h = s.oh; pg.w = s.ow; pg.c = F;
    pg.oh = s.oh / 2; pg.ow = s.ow / 2;
    pg.ph = pg.pw = pg.sh = pg.sw = 2;
    nk_max_pool2d_bwd_geom(&pg, dyp, pi, py, dz, sizeof(T) == 8);
    nk_conv_shape t = s;
    t.ldy = F; /* dz: contiguous */
    const int rc = CFN(backward)(&t, algo, dz, x, w, NK_ACT_NONE, NULL, dx, acc, dw, db, nt);
    nk_ws_release(dz, slot);
    return rc;
}

#undef CFN_
#undef CFNX
#undef CFN
/* the including file defines these per dtype before each inclusion */
#undef T
#undef S
#undef ARGS
#undef GEMM
#undef KTAB
#undef KCUR
#undef EPT

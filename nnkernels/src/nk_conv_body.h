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
    const int64_t SH = cw->sh, SW = cw->sw, SC = cw->sc, KW = cw->kw;
    const int64_t gab = cw->ga * cw->gb, img = SH * SW * SC;
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
                    const int64_t off = (ih * SW + iw) * SC + ch;
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
    const int64_t img = H * W * C;
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
                const T *xp = x + n * img + (ih * W + iw) * C + c0;
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
                    const T *xp = x + n * img + (ih * W + iw) * C + c0;
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
                            v = xn[(ih * W + iw) * C + c];
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

static void CFN(gemm_init)(ARGS *g, int nt)
{
    memset(g, 0, sizeof *g);
    g->alpha = (T)1;
    g->nthreads = nt;
}

/* ----------------------------------------------------------------- im2col */

static int CFN(im2col_fwd)(const nk_conv_shape *s, const T *x, const T *w, const T *bias,
                           int act, T *y, int nt)
{
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, nt);
    g.n = s->f;
    g.k = s->kh * s->kw * s->c;
    g.b = w; g.rsb = s->f; g.csb = 1;
    g.out = y; g.ldo = s->f;
    g.bias = bias;
    g.act = act;
    if (nk_conv_is_pointwise(s)) {
        g.m = s->n * s->h * s->w;
        g.a = x; g.rsa = s->c; g.csa = 1;
    } else {
        g.m = s->n * s->oh * s->ow;
        nk_conv_win_fwd(&cw, s, x);
        g.pack_a = CFN(pack_win);
        g.pack_a_ctx = &cw;
    }
    return GEMM(&g);
}

/* dW (+ db) over output pixels [k0, k1) into out_w (and out_b) with one
 * GEMM of nt threads. */
static int CFN(im2col_wgrad_part)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                                  const T *x, int64_t k0, int64_t k1, T *out_w, T *out_b, int nt)
{
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, nt);
    g.m = s->kh * s->kw * s->c;
    g.n = s->f;
    g.k = k1 - k0;
    if (nk_conv_is_pointwise(s)) {
        g.a = x + k0 * s->c; g.rsa = 1; g.csa = s->c;     /* x^T viewed as (C, N*H*W) */
    } else {
        memset(&cw, 0, sizeof cw);
        cw.s = s;
        cw.src = x;
        cw.p_off = k0;
        g.pack_a = CFN(pack_wt);
        g.pack_a_ctx = &cw;
    }
    g.b = dy + k0 * s->f; g.rsb = s->f; g.csb = 1;
    if (ymask) {
        g.bmask = ymask + k0 * s->f; g.rsbm = s->f; g.csbm = 1; g.bdact = act;
    }
    g.out = out_w; g.ldo = s->f;
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
    if (nbk == 1) return CFN(im2col_wgrad_part)(s, dy, ymask, act, x, 0, K, dw, db, nt);
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
                                     ob, 1);
    }
    if (rc == 0) {
        for (int64_t b = 1; b < nbk; b++) {
            const T *pw = part + (b - 1) * per;
            for (int64_t e = 0; e < kkcf; e++) dw[e] += pw[e];
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
    const int64_t H = s->h, W = s->w, C = s->c, KH = s->kh, KW = s->kw;
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
        T *dxn = dx + n * H * W * C;
        for (int64_t q = a; q < b; q++) {
            const int64_t rem = q - n * ohw, oh = rem / s->ow, ow = rem - oh * s->ow;
            const T *dc = dcols + (q - q0) * kkc;
            for (int64_t kh = 0; kh < KH; kh++) {
                const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
                if ((uint64_t)ih >= (uint64_t)H) continue;
                for (int64_t kw = 0; kw < KW; kw++) {
                    const int64_t iw = ow * s->sw - s->pl + kw * s->dw;
                    if ((uint64_t)iw >= (uint64_t)W) continue;
                    T *d = dxn + (ih * W + iw) * C;
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

static int CFN(im2col_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, int act,
                             const T *w, T *dx, int nt)
{
    const int64_t KK = s->kh * s->kw, C = s->c, F = s->f;
    ARGS g;
    nk_conv_win cw;
    CFN(gemm_init)(&g, nt);
    if (nk_conv_is_pointwise(s)) {
        /* dx = dz @ w^T, w^T (F, C) read through strides */
        g.m = s->n * s->h * s->w; g.n = C; g.k = F;
        g.a = dy; g.rsa = F; g.csa = 1;
        if (ymask) { g.amask = ymask; g.rsam = F; g.csam = 1; g.adact = act; }
        g.b = w; g.rsb = 1; g.csb = F;
        g.out = dx; g.ldo = C;
        return GEMM(&g);
    }
    if (s->sh == 1 && s->sw == 1 && C * (int64_t)sizeof(T) >= 256) {
        /* "full" convolution of dz with the kernel, transposed to (KK*F, C) */
        int from_arena = 0;
        T *wt = (T *)nk_ws_acquire((size_t)(KK * F * C) * sizeof(T), &from_arena);
        if (!wt) return -1;
        for (int64_t kk = 0; kk < KK; kk++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t f = 0; f < F; f++) wt[(kk * F + f) * C + c] = w[(kk * C + c) * F + f];
        g.m = s->n * s->h * s->w; g.n = C; g.k = KK * F;
        memset(&cw, 0, sizeof cw);
        cw.src = dy; cw.mask = ymask;
        cw.ga = s->h; cw.gb = s->w;
        cw.sh = s->oh; cw.sw = s->ow; cw.sc = F; cw.kw = s->kw;
        cw.sa = 1; cw.sb = 1; cw.oa = s->pt; cw.ob = s->pl; cw.ka = -s->dh; cw.kb = -s->dw;
        g.pack_a = CFN(pack_win);
        g.pack_a_ctx = &cw;
        g.b = wt; g.rsb = C; g.csb = 1;
        g.out = dx; g.ldo = C;
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
     * contiguous vector loads */
    int from_arena = 0;
    T *cols = (T *)nk_ws_acquire((size_t)(outer * tile * kkc + F * kkc) * sizeof(T),
                                      &from_arena);
    if (!cols) return -1;
    T *w_fk = cols + outer * tile * kkc;
    for (int64_t j = 0; j < kkc; j++)
        for (int64_t f = 0; f < F; f++) w_fk[f * kkc + j] = w[j * F + f];
    if (!whole) nk_conv_zero(dx, (size_t)(s->n * s->h * s->w * C) * sizeof(T), nt);
    int rc = 0;
#ifdef _OPENMP
#pragma omp parallel for num_threads(outer) schedule(static) reduction(| : rc) if (outer > 1)
#endif
    for (int64_t t = 0; t < ntiles; t++) {
        const int64_t q0 = t * tile, q1 = npix - q0 < tile ? npix : q0 + tile;
        T *mine = cols + (outer > 1 ? nk_thread_num() : 0) * tile * kkc;
        ARGS gt;
        CFN(gemm_init)(&gt, inner);
        gt.m = q1 - q0; gt.n = kkc; gt.k = F;
        gt.a = dy + q0 * F; gt.rsa = F; gt.csa = 1;
        if (ymask) { gt.amask = ymask + q0 * F; gt.rsam = F; gt.csam = 1; gt.adact = act; }
        gt.b = w_fk; gt.rsb = kkc; gt.csb = 1;
        gt.out = mine; gt.ldo = kkc;
        const int r = GEMM(&gt);
        rc |= r;
        if (r != 0) continue;
        if (whole)
            CFN_ISA(col2im_gather)(s, mine, q0 / ohw, q1 / ohw, dx, inner);
        else
            CFN(col2im)(s, mine, q0, q1, dx, inner);
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
    const int64_t wlen = w && Fp != F ? (R + 1) * Fp : 0;
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
            memcpy(wp + r * Fp, w + r * F, (size_t)F * sizeof(T));
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
    if (CFN(direct_ops_get)(&o, s, w, bias, s->kh * nk_conv_xrow_px(s) * s->c, 0, nt))
        return -1;
    CFN_ISA(direct_fwd)(s, x, o.w, o.fp, o.b, act, y, o.scr, o.scr_per, nt);
    nk_ws_release(o.ws, o.from_arena);
    return 0;
}

static int CFN(direct_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *w,
                             T *dx, int nt)
{
    CFN(direct_ops) o;
    const int64_t fbk = (int64_t)(128 / sizeof(T)), Fp = (s->f + fbk - 1) / fbk * fbk;
    if (CFN(direct_ops_get)(&o, s, w, NULL, nk_conv_dz_slots(s) * nk_conv_dz_row_px(s) * Fp, 0,
                            nt))
        return -1;
    CFN_ISA(direct_dgrad)(s, dy, ymask, o.w, o.fp, dx, o.scr, o.scr_per, nt);
    nk_ws_release(o.ws, o.from_arena);
    return 0;
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
    if (CFN(direct_ops_get)(&o, s, NULL, NULL, s->kh * nk_conv_xrow_px(s) * s->c, nb * per, nt))
        return -1;
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
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t e = 0; e < (R + 1) * F; e++) {
            const int64_t r = e / F, f = e - r * F;
            T acc = part[r * Fp + f];
            for (int64_t b = 1; b < nb; b++) acc += part[b * per + r * Fp + f];
            if (r < R) dw[e] = acc;
            else if (db) db[f] = acc;
        }
    }
    nk_ws_release(o.ws, o.from_arena);
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
 * src (N, H, W, C) with optional relu mask; w: the (3, 3, C, F) kernel, or
 * with flip, the forward kernel (3, 3, F, C) rotated by 180 degrees with
 * its channel axes swapped (the data gradient).  Tiles of the output plane
 * (oh, ow) read src at (2th - pt + a, 2tw - pl + b). */
#define WINO_L2_BYTES ((int64_t)256 << 10) /* V + M of one block */

static int CFN(wino)(nk_wino *g, const T *src, const T *mask, const T *w, int flip,
                     const T *bias, int act, T *y, int nt)
{
    const KTAB *kr = KCUR();
    const int64_t C = g->c, F = g->f, mr = kr->mr, nr = kr->nr, kc = kr->kc;
    const int64_t Fp = (F + nr - 1) / nr * nr, ve = 64 / (int64_t)sizeof(T);
    g->th = (g->oh + 1) / 2;
    g->tw = (g->ow + 1) / 2;
    g->mr = mr;
    g->kc = kc;
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
    const int64_t per = 16 * (g->v_xs + g->m_xs);
    int from_arena = 0;
    T *ws = (T *)nk_ws_acquire((size_t)(u_len + upk_len + z_len + nt * per) * sizeof(T),
                               &from_arena);
    if (!ws) return -1;
    T *u_xcf = ws, *u_pk = u_xcf + u_len, *zero = u_pk + upk_len, *scr = zero + z_len;
    memset(zero, 0, (size_t)z_len * sizeof(T));

    /* U = G g G^T, G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1] */
    for (int64_t c = 0; c < C; c++)
        for (int64_t f = 0; f < F; f++) {
            T gk[3][3], t[4][3];
            for (int a = 0; a < 3; a++)
                for (int b = 0; b < 3; b++)
                    gk[a][b] = flip ? w[(((2 - a) * 3 + (2 - b)) * F + f) * C + c]
                                    : w[((a * 3 + b) * C + c) * F + f];
            for (int b = 0; b < 3; b++) {
                t[0][b] = gk[0][b];
                t[1][b] = (T)0.5 * (gk[0][b] + gk[1][b] + gk[2][b]);
                t[2][b] = (T)0.5 * (gk[0][b] - gk[1][b] + gk[2][b]);
                t[3][b] = gk[2][b];
            }
            for (int a = 0; a < 4; a++) {
                T *u = u_xcf + (a * 4) * C * F + c * F + f;
                u[0] = t[a][0];
                u[C * F] = (T)0.5 * (t[a][0] + t[a][1] + t[a][2]);
                u[2 * C * F] = (T)0.5 * (t[a][0] - t[a][1] + t[a][2]);
                u[3 * C * F] = t[a][2];
            }
        }
    /* plane xi, k-block [pc, pc + kcur): u_pk + xi*C*Fp + pc*Fp, nr-column
     * sliver j0 at + j0*kcur */
    for (int64_t xi = 0; xi < 16; xi++)
        for (int64_t pc = 0; pc < C; pc += kc) {
            const int64_t kcur = C - pc < kc ? C - pc : kc;
            kr->pack_b(kcur, F, u_xcf + (xi * C + pc) * F, F, 1, NULL, 0, 0, 0, NULL,
                       u_pk + xi * C * Fp + pc * Fp);
        }

    void (*in)(const nk_wino *, const T *, const T *, int64_t, int64_t, T *, const T *) =
        CFN_ISA(wino_in);
    void (*out)(const nk_wino *, const T *, int64_t, int64_t, const T *, int, T *) =
        CFN_ISA(wino_out);
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
    {
        T *v_pk = scr + per * nk_thread_num();
        T *m_blk = v_pk + 16 * g->v_xs;
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

static int CFN(wino_fwd)(const nk_conv_shape *s, const T *x, const T *w, const T *bias, int act,
                         T *y, int nt)
{
    nk_wino g;
    memset(&g, 0, sizeof g);
    g.n = s->n; g.h = s->h; g.w = s->w; g.c = s->c;
    g.f = s->f; g.oh = s->oh; g.ow = s->ow;
    g.pt = s->pt; g.pl = s->pl;
    return CFN(wino)(&g, x, NULL, w, 0, bias, act, y, nk_conv_threads(s, nt));
}

/* dX: the "full" correlation of dz (OH x OW, F channels) with the rotated,
 * channel-swapped kernel: dx[h, w] reads dz[h + pt - 2 + a, w + pl - 2 + b],
 * i.e. padding 2 - pt (negative: cropping); dz = dy masked while read. */
static int CFN(wino_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *w,
                           T *dx, int nt)
{
    nk_wino g;
    memset(&g, 0, sizeof g);
    g.n = s->n; g.h = s->oh; g.w = s->ow; g.c = s->f;
    g.f = s->c; g.oh = s->h; g.ow = s->w;
    g.pt = 2 - s->pt; g.pl = 2 - s->pl;
    return CFN(wino)(&g, dy, ymask, w, 1, NULL, NK_ACT_NONE, dx, nk_conv_threads(s, nt));
}

#undef CFN_ISA

/* ------------------------------------------------------------- top level */

static int CFN(forward)(const nk_conv_shape *s, int algo, const T *x, const T *w, const T *bias,
                        int act, T *y, int nt)
{
    if (s->n == 0 || s->oh == 0 || s->ow == 0 || s->f == 0) return 0;
    if (algo == NK_CONV_AUTO) algo = nk_conv_choose(s, sizeof(T) == 8, NK_CONV_FWD);
    if (algo == NK_CONV_DIRECT) {
        return CFN(direct_fwd)(s, x, w, bias, act, y, nk_conv_threads(s, nt));
    }
    if (algo == NK_CONV_WINOGRAD && nk_conv_wino_ok(s) && KCUR()->mr <= WINO_MR_MAX)
        return CFN(wino_fwd)(s, x, w, bias, act, y, nt);
    return CFN(im2col_fwd)(s, x, w, bias, act, y, nt);
}

static int CFN(backward)(const nk_conv_shape *s, int algo, const T *dy, const T *x, const T *w,
                         int act, const T *y, T *dx, T *dw, T *db, int nt)
{
    const T *ymask = act == NK_ACT_NONE ? NULL : y;
    const int64_t kkcf = s->kh * s->kw * s->c * s->f;
    if (s->n == 0 || s->oh == 0 || s->ow == 0 || s->f == 0) {
        /* no outputs: every gradient is zero */
        for (int64_t e = 0; e < kkcf; e++) dw[e] = (T)0;
        if (db)
            for (int64_t f = 0; f < s->f; f++) db[f] = (T)0;
        if (dx) nk_conv_zero(dx, (size_t)(s->n * s->h * s->w * s->c) * sizeof(T), 1);
        return 0;
    }
    int a = algo == NK_CONV_AUTO ? nk_conv_choose(s, sizeof(T) == 8, NK_CONV_BWD_FILTER) : algo;
    int rc;
    if (a == NK_CONV_DIRECT)
        rc = CFN(direct_wgrad)(s, dy, ymask, x, dw, db, nk_conv_threads(s, nt));
    else
        rc = CFN(im2col_wgrad)(s, dy, ymask, act, x, dw, db, nt);
    if (rc || !dx) return rc;
    a = algo == NK_CONV_AUTO ? nk_conv_choose(s, sizeof(T) == 8, NK_CONV_BWD_DATA) : algo;
    if (a == NK_CONV_DIRECT) {
        return CFN(direct_dgrad)(s, dy, ymask, w, dx, nk_conv_threads(s, nt));
    }
    if (a == NK_CONV_WINOGRAD && nk_conv_wino_ok(s) && KCUR()->mr <= WINO_MR_MAX)
        return CFN(wino_dgrad)(s, dy, ymask, w, dx, nt);
    return CFN(im2col_dgrad)(s, dy, ymask, act, w, dx, nt);
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

/* Direct weight gradient with register-resident dW tiles (algorithm
 * NK_CONV_DIRECT_WGRAD), included by nk_conv_direct_inst.h once per ISA for
 * float32 (T, S, ISA set) with
 *   WG_VB     bytes of the ISA's native vector (64 / 32 / 16),
 *   WG_ACC    accumulator vectors of a register tile (<= 28),
 *   WG_NFMAX  output-channel vectors per tile (<= 4).
 *
 * dW[kh, kw, c, f] = sum over output pixels (n, oh, ow) of
 *     x[n, oh*sh - pt + kh*dh, ow*sw - pl + kw*dw, c] * dz[n, oh, ow, f].
 * For one kernel row kh the (kw, c) pairs form a run of L = KW*C elements,
 * j = kw*C + c, which with dilation 1 is contiguous in the (zero-padded)
 * input row: element j of output pixel ow is xrow[ow*sw*C + j].  (With
 * dilation > 1 the input row is first expanded to OW runs of L elements.)
 * A tile is KHT kernel rows x JB consecutive run elements x NF vectors of
 * output channels, KHT*JB*NF accumulators held in registers (KHT, JB, NF
 * compile-time, one instance each): per output pixel the NF dz vectors are
 * loaded once and every accumulator row gets one broadcast x element
 * (an FMA with a broadcast memory operand on AVX-512).  The tile runs over
 * a group of G output rows of one image (x and dz rows of the group stay in
 * L1/L2), loading its accumulators from the block's partial dW before and
 * storing them after, so each partial element is summed over the pixels in
 * order (row by row, left to right) whatever the tiling.
 *
 * Padding costs no branch in the inner loop: input rows are copied
 * zero-padded into per-thread scratch (or read in place when no padding is
 * involved and x's pixels are C apart), rows outside the image point to a
 * shared zero row (skipped outright by single-row tiles); dz rows are read
 * in place when F is a multiple of the vector width and there is no relu
 * mask, else masked and zero-padded to Fp channels into scratch.  The next
 * group's dy (mask) and x rows are prefetched into L2 a few lines before
 * each tile (measured 3-8 % on ResNet-20's shapes at batch 128). */
#define WCAT_(a, b, c) a##_##b##_##c
#define WCAT(a, b, c) WCAT_(a, b, c)
#define WFN(name) WCAT(name, S, ISA)
#define WV WCAT(wgvec, S, ISA)
#define WVN ((int)(WG_VB / sizeof(T)))
#define WAI static inline __attribute__((always_inline))

typedef T WV __attribute__((vector_size(WG_VB)));

WAI WV WFN(wg2ld)(const T *p)
{
    WV v;
    memcpy(&v, p, sizeof v);
    return v;
}

WAI void WFN(wg2st)(T *p, WV v) { memcpy(p, &v, sizeof v); }

/* elements of a vector (the padding unit of F) */
static int WFN(wg2_vn)(void) { return WVN; }

#define WG_R28(X)                                                                          \
    X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15) \
    X(16) X(17) X(18) X(19) X(20) X(21) X(22) X(23) X(24) X(25) X(26) X(27)

/* One tile over `nrows` output rows of `npx` pixels: accumulator row
 * i = k*JB + j (k < KHT kernel rows, j < JB run elements) reads input row
 * xr[g*xrs + k] (+ j0 + j + p*xs for pixel p) and dW row pw + k*pwk +
 * j*Fp; dz of pixel p of row g at dz + g*dzr + p*dzp (NF vectors). */
WAI void WFN(wg2_tile)(const T *const *xr, int64_t xrs, int64_t j0, const T *zero,
                       int64_t nrows, int64_t npx, int64_t xs, const T *dz, int64_t dzp,
                       int64_t dzr, T *pw, int64_t pwk, int64_t Fp, const int KHT,
                       const int JB, const int NF)
{
    const int MB = KHT * JB;
#define WG_DECL(i)                                                                         \
    WV a##i##_0 = (WV){0}, a##i##_1 = (WV){0}, a##i##_2 = (WV){0}, a##i##_3 = (WV){0};     \
    if ((i) < MB) {                                                                        \
        const T *q_ = pw + ((i) / JB) * pwk + ((i) % JB) * Fp;                             \
        a##i##_0 = WFN(wg2ld)(q_);                                                           \
        if (NF > 1) a##i##_1 = WFN(wg2ld)(q_ + WVN);                                         \
        if (NF > 2) a##i##_2 = WFN(wg2ld)(q_ + 2 * WVN);                                     \
        if (NF > 3) a##i##_3 = WFN(wg2ld)(q_ + 3 * WVN);                                     \
    }
    WG_R28(WG_DECL)
#undef WG_DECL
    for (int64_t g = 0; g < nrows; g++) {
        const T *x0 = xr[g * xrs];
        const T *x1 = KHT > 1 ? xr[g * xrs + 1] : x0;
        const T *x2 = KHT > 2 ? xr[g * xrs + 2] : x0;
        if (KHT == 1 && x0 == zero) continue; /* a padding row: nothing to add */
        x0 += j0;
        x1 += j0;
        x2 += j0;
        const T *d = dz + g * dzr;
        for (int64_t p = 0; p < npx; p++) {
            const WV d0 = WFN(wg2ld)(d);
            const WV d1 = NF > 1 ? WFN(wg2ld)(d + WVN) : d0;
            const WV d2 = NF > 2 ? WFN(wg2ld)(d + 2 * WVN) : d0;
            const WV d3 = NF > 3 ? WFN(wg2ld)(d + 3 * WVN) : d0;
#define WG_STEP(i)                                                                         \
    if ((i) < MB) {                                                                        \
        const T xv_ = ((i) / JB == 0 ? x0 : (i) / JB == 1 ? x1 : x2)[(i) % JB];              \
        a##i##_0 += xv_ * d0;                                                              \
        if (NF > 1) a##i##_1 += xv_ * d1;                                                  \
        if (NF > 2) a##i##_2 += xv_ * d2;                                                  \
        if (NF > 3) a##i##_3 += xv_ * d3;                                                  \
    }
            WG_R28(WG_STEP)
#undef WG_STEP
            x0 += xs;
            x1 += xs;
            x2 += xs;
            d += dzp;
        }
    }
#define WG_OUT(i)                                                                          \
    if ((i) < MB) {                                                                        \
        T *q_ = pw + ((i) / JB) * pwk + ((i) % JB) * Fp;                                   \
        WFN(wg2st)(q_, a##i##_0);                                                            \
        if (NF > 1) WFN(wg2st)(q_ + WVN, a##i##_1);                                          \
        if (NF > 2) WFN(wg2st)(q_ + 2 * WVN, a##i##_2);                                      \
        if (NF > 3) WFN(wg2st)(q_ + 3 * WVN, a##i##_3);                                      \
    }
    WG_R28(WG_OUT)
#undef WG_OUT
}

typedef void (*WCAT(wg2_fn, S, ISA))(const T *const *, int64_t, int64_t, const T *,
                                     int64_t, int64_t, int64_t, const T *, int64_t, int64_t,
                                     T *, int64_t, int64_t);

/* One instance per (NF, KHT, JB); those with more than WG_ACC accumulators
 * are never called (their bodies compile to nothing). */
#define WG_INST(nf, kht, jb)                                                               \
    static void WCAT(WFN(wg2_k), nf, WCAT(kht, jb, x))(                                   \
        const T *const *xr, int64_t xrs, int64_t j0, const T *zero,                        \
        int64_t nrows, int64_t npx, int64_t xs, const T *dz, int64_t dzp, int64_t dzr,     \
        T *pw, int64_t pwk, int64_t Fp)                                                    \
    {                                                                                      \
        if ((nf) <= WG_NFMAX && (nf) * (kht) * (jb) <= WG_ACC)                             \
            WFN(wg2_tile)(xr, xrs, j0, zero, nrows, npx, xs, dz, dzp, dzr, pw, pwk, Fp,    \
                          kht, jb, nf);                                                    \
    }
#define WG_JBS(X, nf, kht)                                                                 \
    X(nf, kht, 1) X(nf, kht, 2) X(nf, kht, 3) X(nf, kht, 4) X(nf, kht, 5) X(nf, kht, 6)    \
    X(nf, kht, 7) X(nf, kht, 8) X(nf, kht, 9) X(nf, kht, 10) X(nf, kht, 11)                \
    X(nf, kht, 12) X(nf, kht, 13) X(nf, kht, 14) X(nf, kht, 15) X(nf, kht, 16)             \
    X(nf, kht, 17) X(nf, kht, 18) X(nf, kht, 19) X(nf, kht, 20) X(nf, kht, 21)             \
    X(nf, kht, 22) X(nf, kht, 23) X(nf, kht, 24) X(nf, kht, 25) X(nf, kht, 26)             \
    X(nf, kht, 27) X(nf, kht, 28)
#define WG_ALL(X)                                                                          \
    WG_JBS(X, 1, 1) WG_JBS(X, 1, 2) WG_JBS(X, 1, 3) WG_JBS(X, 2, 1) WG_JBS(X, 2, 2)        \
    WG_JBS(X, 2, 3) WG_JBS(X, 3, 1) WG_JBS(X, 3, 2) WG_JBS(X, 3, 3) WG_JBS(X, 4, 1)        \
    WG_JBS(X, 4, 2) WG_JBS(X, 4, 3)
WG_ALL(WG_INST)
#define WG_ENT(nf, kht, jb) [(nf) - 1][(kht) - 1][(jb) - 1] = WCAT(WFN(wg2_k), nf, WCAT(kht, jb, x)),
static const WCAT(wg2_fn, S, ISA) WFN(wg2_tab)[4][3][28] = {WG_ALL(WG_ENT)};
#undef WG_ENT
#undef WG_INST
#undef WG_JBS
#undef WG_ALL
#undef WG_R28

/* Input rows a group of G output rows (of one or more images) reads: per
 * image, (g - 1)*sh + (KH - 1)*dh + 1 for its g rows; a group spans at most
 * G / OH + 2 images. */
static int64_t WFN(wg2_xrows)(const nk_conv_shape *s, int64_t G)
{
    int64_t nseg = G / s->oh + 2;
    if (nseg > G) nseg = G;
    return G * s->sh + nseg * ((s->kh - 1) * s->dh + 1);
}

/* Length (elements) of an input row as the tiles read it (and of the
 * shared zero row). */
static int64_t WFN(wg2_zlen)(const nk_conv_shape *s)
{
    const int64_t WX = (s->ow - 1) * s->sw + (s->kw - 1) * s->dw + 1;
    return s->dw == 1 ? WX * s->c : s->ow * s->kw * s->c;
}

/* Per-thread scratch (elements) of wg2_block for groups of G output rows:
 * G*KH row pointers, slot pointers, the input rows copied, G*OW dz pixels
 * of Fp. */
static int64_t WFN(wg2_scr)(const nk_conv_shape *s, int64_t G, int64_t Fp)
{
    const int64_t ve = 64 / (int64_t)sizeof(T), xlp = (WFN(wg2_zlen)(s) + ve - 1) / ve * ve;
    const int64_t XRM = WFN(wg2_xrows)(s, G);
    return nk_conv_ptr_elems(G * s->kh, sizeof(T)) + nk_conv_ptr_elems(XRM, sizeof(T)) +
           XRM * xlp + G * s->ow * Fp;
}

/* dW (KH*KW*C rows of Fp, overwritten) and db (Fp, if not NULL) over output
 * rows [r0, r1) (rows = (n, oh)) in groups of at most G rows. */
static void WFN(wg2_block)(const nk_conv_shape *s, const T *dy, const T *ymask, const T *x,
                           int64_t r0, int64_t r1, int64_t G, int64_t Fp, T *part_w,
                           T *part_b, const T *zero, T *scr)
{
    const int64_t C = s->c, F = s->f, H = s->h, W = s->w, KH = s->kh, KW = s->kw;
    const int64_t OH = s->oh, OW = s->ow, sh = s->sh, dh = s->dh, LDX = s->ldx, LDY = s->ldy;
    const int64_t L = KW * C, R = KH * L;
    const int dil = s->dw != 1;
    const int64_t xs = dil ? L : s->sw * C;
    const int64_t WX = (OW - 1) * s->sw + (KW - 1) * s->dw + 1;
    const int64_t ve = 64 / (int64_t)sizeof(T), xlp = (WFN(wg2_zlen)(s) + ve - 1) / ve * ve;
    const int direct_x = !dil && s->pl == 0 && WX <= W && LDX == C;
    const int direct_dz = !ymask && Fp == F;
    const int64_t XRM = WFN(wg2_xrows)(s, G);
    const T **xr = (const T **)(void *)scr; /* [q*KH + kh]: the tiles' row pointers */
    const T **sp = (const T **)(void *)(scr + nk_conv_ptr_elems(G * KH, sizeof(T))); /* slots */
    T *xbuf = scr + nk_conv_ptr_elems(G * KH, sizeof(T)) + nk_conv_ptr_elems(XRM, sizeof(T));
    T *dzbuf = xbuf + XRM * xlp;
    /* the tiling: f-blocks of NF vectors, tiles of KHT kernel rows x JB
     * run elements, at most WG_ACC accumulators */
    const int64_t NFT = Fp / WVN, nfb = (NFT + WG_NFMAX - 1) / WG_NFMAX;
    memset(part_w, 0, (size_t)(R * Fp) * sizeof(T));
    if (part_b) memset(part_b, 0, (size_t)Fp * sizeof(T));
    for (int64_t r = r0; r < r1;) {
        const int64_t g = G < r1 - r ? G : r1 - r;
        /* input rows: per image segment of the group, slot i of the
         * segment holds row ih0 + i (copied once, when first needed) */
        int64_t slot0 = 0;
        for (int64_t q0 = 0; q0 < g;) {
            const int64_t n = (r + q0) / OH, oh0 = (r + q0) - n * OH;
            const int64_t gs = OH - oh0 < g - q0 ? OH - oh0 : g - q0;
            const int64_t ih0 = oh0 * sh - s->pt, nrow = (gs - 1) * sh + (KH - 1) * dh + 1;
            for (int64_t i = 0; i < nrow; i++) sp[slot0 + i] = NULL;
            for (int64_t q = q0; q < q0 + gs; q++)
                for (int64_t kh = 0; kh < KH; kh++) {
                    const int64_t i = (q - q0) * sh + kh * dh, ih = ih0 + i;
                    const T *p = sp[slot0 + i];
                    if (!p) {
                        if ((uint64_t)ih >= (uint64_t)H) {
                            p = zero;
                        } else if (direct_x) {
                            p = x + (n * H + ih) * W * LDX;
                        } else {
                            const T *xrow = x + (n * H + ih) * W * LDX;
                            T *d = xbuf + (slot0 + i) * xlp;
                            if (!dil && LDX == C) { /* zero pads around one contiguous run */
                                int64_t a = s->pl, b = s->pl + W; /* u in [a, b): inside */
                                a = a < 0 ? 0 : a > WX ? WX : a;
                                b = b < a ? a : b > WX ? WX : b;
                                memset(d, 0, (size_t)(a * C) * sizeof(T));
                                memcpy(d + a * C, xrow + (a - s->pl) * C,
                                       (size_t)((b - a) * C) * sizeof(T));
                                memset(d + b * C, 0, (size_t)((WX - b) * C) * sizeof(T));
                            } else if (!dil) {
                                for (int64_t u = 0; u < WX; u++) {
                                    const int64_t iw = u - s->pl;
                                    if ((uint64_t)iw < (uint64_t)W)
                                        memcpy(d + u * C, xrow + iw * LDX, (size_t)C * sizeof(T));
                                    else
                                        memset(d + u * C, 0, (size_t)C * sizeof(T));
                                }
                            } else {
                                for (int64_t ow = 0; ow < OW; ow++)
                                    for (int64_t kw = 0; kw < KW; kw++) {
                                        const int64_t iw = ow * s->sw - s->pl + kw * s->dw;
                                        T *dd = d + ow * L + kw * C;
                                        if ((uint64_t)iw < (uint64_t)W)
                                            memcpy(dd, xrow + iw * LDX, (size_t)C * sizeof(T));
                                        else
                                            memset(dd, 0, (size_t)C * sizeof(T));
                                    }
                            }
                            p = d;
                        }
                        sp[slot0 + i] = p;
                    }
                    xr[q * KH + kh] = p;
                }
            slot0 += nrow;
            q0 += gs;
        }
        /* dz rows of the group (consecutive in dy) */
        const T *dz;
        int64_t dzp, dzr;
        if (direct_dz) {
            dz = dy + r * OW * LDY;
            dzp = LDY;
            dzr = OW * LDY;
        } else {
            for (int64_t q = 0; q < g * OW; q++) {
                const T *dp = dy + (r * OW + q) * LDY;
                T *dd = dzbuf + q * Fp;
                if (ymask) {
                    const T *mp = ymask + (r * OW + q) * LDY;
                    for (int64_t f = 0; f < F; f++) {
                        const T v = dp[f]; /* unconditional load, see nk_conv_direct.h */
                        dd[f] = mp[f] > (T)0 ? v : (T)0;
                    }
                } else {
                    memcpy(dd, dp, (size_t)F * sizeof(T));
                }
                for (int64_t f = F; f < Fp; f++) dd[f] = (T)0;
            }
            dz = dzbuf;
            dzp = Fp;
            dzr = OW * Fp;
        }
        if (part_b) /* db: per vector, 4 register sums over the group's pixels
                     * (pixel mod 4), combined in a fixed order */
            for (int64_t v = 0; v < NFT; v++) {
                WV b0 = (WV){0}, b1 = (WV){0}, b2 = (WV){0}, b3 = (WV){0};
                for (int64_t q = 0; q < g; q++) {
                    const T *dp = dz + q * dzr + v * WVN;
                    int64_t p = 0;
                    for (; p + 4 <= OW; p += 4) {
                        b0 += WFN(wg2ld)(dp + p * dzp);
                        b1 += WFN(wg2ld)(dp + (p + 1) * dzp);
                        b2 += WFN(wg2ld)(dp + (p + 2) * dzp);
                        b3 += WFN(wg2ld)(dp + (p + 3) * dzp);
                    }
                    for (; p < OW; p++) b0 += WFN(wg2ld)(dp + p * dzp);
                }
                WFN(wg2st)(part_b + v * WVN, WFN(wg2ld)(part_b + v * WVN) + ((b0 + b1) + (b2 + b3)));
            }
        /* the next group's dy (and mask) and x rows are prefetched into L2
         * a few lines before each tile: the tiles then stream them from
         * there instead of waiting on memory in the next group's first pass */
        const char *pf[3] = {NULL, NULL, NULL};
        int64_t pfn[3] = {0, 0, 0}, pfl = 0, pfper = 0, ntiles = 0;
        if (r + g < r1) {
            const int64_t rn = r + g, gn = G < r1 - rn ? G : r1 - rn;
            pf[0] = (const char *)(dy + rn * OW * LDY);
            pfn[0] = (gn * OW * LDY * (int64_t)sizeof(T) + 63) / 64;
            if (ymask) {
                pf[1] = (const char *)(ymask + rn * OW * LDY);
                pfn[1] = pfn[0];
            }
            /* x rows from the first row the next group reads on */
            const int64_t na = rn / OH, nz = (rn + gn - 1) / OH;
            int64_t ia = (rn - na * OH) * sh - s->pt;
            int64_t iz = (rn + gn - 1 - nz * OH) * sh - s->pt + (KH - 1) * dh;
            ia = ia < 0 ? 0 : ia >= H ? H - 1 : ia;
            iz = iz < 0 ? 0 : iz >= H ? H - 1 : iz;
            pf[2] = (const char *)(x + (na * H + ia) * W * LDX);
            pfn[2] = (((nz * H + iz + 1) - (na * H + ia)) * W * LDX * (int64_t)sizeof(T) + 63) / 64;
            if (pfn[2] < 0) pfn[2] = 0;
            for (int64_t fb = 0; fb < nfb; fb++) {
                const int64_t nf = NFT * (fb + 1) / nfb - NFT * fb / nfb, rb = WG_ACC / nf;
                int64_t kht = rb / L;
                kht = kht > 3 ? 3 : kht > KH ? KH : kht < 1 ? 1 : kht;
                ntiles += (KH + kht - 1) / kht * (L <= rb ? 1 : (L + rb - 1) / rb);
            }
            pfl = pfn[0] + pfn[1] + pfn[2];
            pfper = (pfl + ntiles - 1) / ntiles;
        }
        int64_t pfi = 0;
        /* the tiles */
        for (int64_t fb = 0; fb < nfb; fb++) {
            const int64_t v0 = NFT * fb / nfb, nf = NFT * (fb + 1) / nfb - v0;
            const int64_t rb = WG_ACC / nf; /* accumulator rows */
            int64_t kht = rb / L;
            if (kht > 3) kht = 3;
            if (kht > KH) kht = KH;
            if (kht < 1) kht = 1;
            const int64_t nj = L <= rb ? 1 : (L + rb - 1) / rb;
            for (int64_t kh0 = 0; kh0 < KH; kh0 += kht) {
                const int64_t kt = KH - kh0 < kht ? KH - kh0 : kht;
                for (int64_t t = 0; t < nj; t++) {
                    const int64_t j0 = L * t / nj, jb = L * (t + 1) / nj - j0;
                    for (int64_t e = 0; e < pfper && pfi < pfl; e++, pfi++) {
                        const int64_t k = pfi < pfn[0] ? 0 : pfi < pfn[0] + pfn[1] ? 1 : 2;
                        const int64_t o = pfi - (k > 0 ? pfn[0] : 0) - (k > 1 ? pfn[1] : 0);
                        __builtin_prefetch(pf[k] + o * 64, 0, 2);
                    }
                    WFN(wg2_tab)[nf - 1][kt - 1][jb - 1](
                        xr + kh0, KH, j0, zero, g, OW, xs, dz + v0 * WVN, dzp, dzr,
                        part_w + (kh0 * L + j0) * Fp + v0 * WVN, L * Fp, Fp);
                }
            }
        }
        r += g;
    }
}

#undef WCAT_
#undef WCAT
#undef WFN
#undef WV
#undef WVN
#undef WAI

/* Winograd F(2x2, 3x3) weight gradient: one block of tiles (included by
 * nk_conv_wino.h, float32 only, with its T, WV, WVL, WFN and helpers).
 *
 * The forward pass is Y = A^T [ (G g G^T) .* (B^T d B) ] A per tile, so the
 * gradient of the 3x3 kernel g is
 *     dW = G^T [ sum over tiles of (A dz A^T) .* (B^T d B) ] G
 * with d the tile's 4x4 patch of x (the forward's V, wino_col) and dz its
 * 2x2 block of output gradients.  Per transformed position xi (16 of them)
 * and channel pair (c, f):  M[xi][c][f] += V[xi][t][c] * Z[xi][t][f] summed
 * over the tiles t: 16 (C x F) products of length "tiles" (2.25x fewer
 * multiplications than the 9 of the direct weight gradient per 4 outputs).
 * G^T M G is applied once per call (CFN(wino_wgrad), nk_conv_body.h).
 *
 * A = [1 0; 1 1; 1 -1; 0 -1] (the transpose of wino_out's A^T), so the dz
 * transform of a column (z0, z1) is (z0, z0 + z1, z0 - z1, -z1). */

/* Z = A dz A^T of the 2x2 block d (d[2a + b]: output row a, column b). */
WAI void WFN(wgw_ztrans)(const WV *d, WV *z)
{
    WV u[8]; /* columns b: rows a of A dz */
#pragma GCC unroll 2
    for (int b = 0; b < 2; b++) {
        u[b] = d[b];
        u[2 + b] = d[b] + d[2 + b];
        u[4 + b] = d[b] - d[2 + b];
        u[6 + b] = -d[2 + b];
    }
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++) { /* rows a: (A dz) A^T */
        z[4 * a + 0] = u[2 * a];
        z[4 * a + 1] = u[2 * a] + u[2 * a + 1];
        z[4 * a + 2] = u[2 * a] - u[2 * a + 1];
        z[4 * a + 3] = -u[2 * a + 1];
    }
}

/* One pixel's vector of dz, channels [f0, f0 + fn) at dy + off: dy where
 * ymask > 0 (every dy without ymask); whole: fn is a whole vector and the
 * pixel inside OH x OW (the common case, no checks); else zero where
 * outside (in false). */
WAI WV WFN(wgw_dz1)(const T *dy, const T *ymask, int64_t off, int whole, int in, int64_t fn)
{
    WV d;
    if (whole) {
        memcpy(&d, dy + off, sizeof(WV));
        if (ymask) {
            WV m;
            memcpy(&m, ymask + off, sizeof m);
            d = (WV)((WVI)d & (WVI)(m > (T)0));
        }
    } else if (in) {
        d = WFN(wld)(dy + off, fn);
        if (ymask) d = (WV)((WVI)d & (WVI)(WFN(wld)(ymask + off, fn) > (T)0));
    } else {
        d = (WV){0};
    }
    return d;
}

/* The 2x2 dz block of tile (n, th, tw), channels [f0, f0 + fn): dy where
 * ymask > 0 (every dy without ymask), zero outside OH x OW. */
WAI void WFN(wgw_dz)(const nk_wino *g, const T *dy, const T *ymask, int64_t n, int64_t th,
                     int64_t tw, int64_t f0, int64_t fn, WV *d)
{
    const int64_t oh = 2 * th, ow = 2 * tw, OP = g->op;
    const int inside = oh + 1 < g->oh && ow + 1 < g->ow && fn == WVL;
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++) {
        const int64_t r = oh + (k >> 1), c = ow + (k & 1);
        const int64_t off = ((n * g->oh + r) * g->ow + c) * OP + f0;
        d[k] = WFN(wgw_dz1)(dy, ymask, off, inside, r < g->oh && c < g->ow, fn);
    }
}

/* wgw_dz through the gradient of dz's 2x2 stride-2 max pooling (nk_wino.up_i;
 * up 3: with its mask up_m): tile (th, tw) is window (th, tw), whose
 * gradient (as 0 + g, the value nk_max_pool2d_bwd writes) goes to the pixel
 * its index names; zero where the tile has no window. */
WAI void WFN(wgw_dz_up)(const nk_wino *g, const T *gp, int64_t n, int64_t th, int64_t tw,
                        int64_t f0, int64_t fn, WV *d, const int up)
{
    if (th >= g->up_ph || tw >= g->up_pw) {
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) d[k] = (WV){0};
        return;
    }
    const int64_t off = ((n * g->up_ph + th) * g->up_pw + tw) * g->op + f0;
    WV v = WFN(wld)(gp + off, fn) + (T)0;
    if (up == 3) v = (WV)((WVI)v & (WVI)(WFN(wld)((const T *)g->up_m + off, fn) > (T)0));
    const WV iv = WFN(wld)((const T *)(const void *)g->up_i + off, fn);
    const int64_t base = 2 * th * g->ow + 2 * tw;
#pragma GCC unroll 4
    for (int k = 0; k < 4; k++)
        d[k] = (WV)((WVI)v &
                    (WVI)((WVI)iv == (WVI){0} + (TI)(base + (k >> 1) * g->ow + (k & 1))));
}

/* mp[xi][c][f] += sum over the cnt tiles of vb[xi][t][c] * zb[xi][t][f]
 * for rows [c0, c0 + CB) and vectors [f0, f0 + NVF * WVL) of plane xi; the
 * tiles in ascending order, tile t's V row at v + t * vs and Z row at
 * z + t * zs; M's rows fp apart. */
WAI void WFN(wgw_gemm_tile)(const T *restrict v, int64_t vs, const T *restrict z, int64_t zs,
                            int64_t cnt, int64_t fp, T *restrict m, const int CB, const int NVF)
{
    WV acc[16][2];
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) memcpy(&acc[i][k], m + i * fp + k * WVL, sizeof(WV));
    for (int64_t t = 0; t < cnt; t++) {
        WV zv[2];
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) memcpy(&zv[k], z + t * zs + k * WVL, sizeof(WV));
        const T *vr = v + t * vs;
#pragma GCC unroll 16
        for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
            for (int k = 0; k < NVF; k++) acc[i][k] += vr[i] * zv[k];
    }
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) memcpy(m + i * fp + k * WVL, &acc[i][k], sizeof(WV));
}

/* bf16 products (nk_wino.lowp, float32): a block's V and Z are stored as
 * bf16 pairs of tiles, plane xi, tile pair q = i / 2, channel c in the word
 * q * cp + c (V) and q * fp + f (Z), tile 2q in its low half and 2q + 1 in
 * the high half (a block's missing last odd tile zero in both); each pair
 * is then one VDPBF16PS multiply-add per word (nk_wino_wgemm_bf16) or its
 * emulation (wgw_gemm_bfe), the same bits.  The transforms, the bias
 * gradient and G^T M G stay float32. */

/* v rounded to bf16 (as VCVTNEPS2BF16: the instruction where native, else
 * wino_bf16_int) into tile i's half of the 16 words at w: an even tile
 * writes the words (their high half zero), an odd one adds its half */
WAI void WFN(wgw_bf_put)(WV v, uint32_t *w, int odd, int native)
{
    typedef WCAT(wvecu, S, ISA) WU;
    WU b;
#if defined(__AVX512F__) && NK_X86
    if (native) /* rounded into 16 words, then widened to the 16 lanes */
        __asm__("vcvtneps2bf16 %1, %t0\n\tvpmovzxwd %t0, %0" : "=v"(b) : "v"(v));
    else
#endif
        b = WFN(wino_bf16_int)(v);
    (void)native;
    if (odd) {
        WU old;
        memcpy(&old, w, sizeof old);
        b = old | (b << 16);
    }
    memcpy(w, &b, sizeof b);
}

/* wgw_gemm_tile on np bf16 pairs of tiles without VDPBF16PS: a product of
 * two bf16 is exact in float32, so one multiply-add per element of a pair,
 * the high (odd tile) one first, gives the instruction's bits (as
 * wino_fgemm_bfe; accumulators in the denormal range aside) */
WAI void WFN(wgw_gemm_bfe_tile)(const uint32_t *restrict v, const uint32_t *restrict z, int64_t np,
                                int64_t cp, int64_t fp, T *restrict m, const int CB, const int NVF)
{
    WV acc[16][2];
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) memcpy(&acc[i][k], m + i * fp + k * WVL, sizeof(WV));
    for (int64_t q = 0; q < np; q++) {
        WV zh[2], zl[2];
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) WFN(wino_bf16_split)(z + q * fp + k * WVL, &zh[k], &zl[k]);
        const uint32_t *vr = v + q * cp;
#pragma GCC unroll 16
        for (int i = 0; i < CB; i++) {
            T vh, vl;
            WFN(wino_bf16_split1)(vr[i], &vh, &vl);
#pragma GCC unroll 2
            for (int k = 0; k < NVF; k++) {
                acc[i][k] += vh * zh[k];
                acc[i][k] += vl * zl[k];
            }
        }
    }
#pragma GCC unroll 16
    for (int i = 0; i < CB; i++)
#pragma GCC unroll 2
        for (int k = 0; k < NVF; k++) memcpy(m + i * fp + k * WVL, &acc[i][k], sizeof(WV));
}

/* The 16 products of a block in bf16 pairs (np pairs; V plane xi at
 * vw + xi * vxs, Z at zw + xi * zxs) added into mp (16 planes of cp x fp):
 * the emulated nk_wino.wgemm_bf, register tiles as the float32 products */
static void WFN(wgw_gemm_bfe)(const uint32_t *vw, const uint32_t *zw, int64_t np, int64_t C,
                              int64_t cp, int64_t fp, int64_t vxs, int64_t zxs, void *mp_)
{
    T *mp = (T *)mp_;
#define WGW_BFE_TILE(v, z, m, CB, NVF) WFN(wgw_gemm_bfe_tile)(v, z, np, cp, fp, m, CB, NVF)
    NK_WWG_PLANES(16, vw, vxs, zw, zxs, mp, C, cp, fp, WGW_BFE_TILE)
#undef WGW_BFE_TILE
}

#ifndef WWG_KEEP
#define WWG_KEEP 4 /* vectors of channels whose row stage the next tile reuses */
#endif

/* One block of tiles [t0, t0 + cnt) (cnt <= tb) into the partial sums mp
 * (16 planes of C rows of fp) and bp (fp): the input transform of x into
 * vb (plane xi, tile r at xi * (tb * cp + WVL) + r * cp), the dz transform
 * into zb (at xi * (tb * fp + WVL) + r * fp), then the 16 products.  Every sum runs over the
 * block's tiles in order, so a chunk's sums do not depend on the block
 * size's placement or the thread. */
WAI void WFN(wino_wg_block_b)(const nk_wino *g, const T *x, const T *dy, const T *ymask,
                              const T *zero, int64_t t0, int64_t cnt, int64_t tb, T *restrict vb,
                              T *restrict zb, T *restrict mp, T *restrict bp, const int64_t C,
                              const int64_t F, const int up)
{
    const int64_t ve = WVL;
    const int64_t cp = (C + ve - 1) / ve * ve, fp = (F + ve - 1) / ve * ve;
    /* plane strides a cache line more than the planes: the 16 planes'
     * store streams must not share L1 sets */
    const int64_t vxs = tb * cp + ve, zxs = tb * fp + ve;
    /* bf16 products: V and Z in pairs of tiles, in vb's and zb's memory */
    const int bf = g->lowp;
    uint32_t *restrict vw = (uint32_t *)vb, *restrict zw = (uint32_t *)zb;
    const int64_t vws = (tb + 1) / 2 * cp + ve, zws = (tb + 1) / 2 * fp + ve;
    /* tile (n, th, tw) of t0, then stepped along; dz (and its mask) read
     * WINO_OUT_AHEAD tiles ahead (dz was written a whole pass earlier: its
     * loads stalled) */
    nk_wtile p = nk_wtile_at(g, t0), ahead = p;
    const int64_t dist = cnt < WINO_OUT_AHEAD ? cnt : WINO_OUT_AHEAD;
    if (!up)
        WFN(wino_prefetch_out)(g, dy, ymask, &ahead, dist, 0);
    else /* the windows of the first dist tiles */
        for (int64_t k = 0; k < dist; k++, nk_wtile_next(g, &ahead))
            WFN(wino_prefetch_win)(g, dy, g->op, g->f, ahead.n, ahead.th, ahead.tw);
    WV keep[WWG_KEEP][8];
    for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
        const int64_t n = p.n, th = p.th, tw = p.tw;
        if (!up && i + dist < cnt) WFN(wino_prefetch_out)(g, dy, ymask, &ahead, 1, 0);
        if (up && i + dist < cnt) {
            WFN(wino_prefetch_win)(g, dy, g->op, g->f, ahead.n, ahead.th, ahead.tw);
            nk_wtile_next(g, &ahead);
        }
        /* input transform V = B^T d B (as the forward's) */
        const WFN(wsrc) q = WFN(wino_src)(g, x, NULL, p, 2);
        if ((i & 7) == 0) WFN(wino_prefetch)(g, x, NULL, p, cnt - i < 8 ? cnt - i : 8);
        /* the left neighbour's columns 2, 3 are this tile's 0, 1: their row
         * stage is reused (up to WWG_KEEP vectors of channels; same results) */
        const int left = i > 0 && tw > 0 && C <= WWG_KEEP * ve;
        for (int64_t c0 = 0; c0 < C; c0 += ve) {
            const int64_t cn = C - c0 < ve ? C - c0 : ve;
            WV u[16];
            WV *kp = keep[c0 / ve < WWG_KEEP ? c0 / ve : 0];
            /* one body with the selects for every tile (the inside tiles compiled
             * apart, as the forward does, measured no faster here) */
            WFN(wino_rows_ok)(&q, q.ok, zero, 0, c0, cn, left, kp, u);
            if (C <= WWG_KEEP * ve)
#pragma GCC unroll 4
                for (int a = 0; a < 4; a++) {
                    kp[2 * a] = u[4 * a + 2];
                    kp[2 * a + 1] = u[4 * a + 3];
                }
            if (bf) {
                WV v[16];
                WFN(wino_vcols)(u, v);
#pragma GCC unroll 16
                for (int xi = 0; xi < 16; xi++)
                    WFN(wgw_bf_put)(v[xi], vw + xi * vws + (i >> 1) * cp + c0, (int)(i & 1),
                                    g->bf_native);
            } else {
                WFN(wino_vstore)(u, vb + i * cp + c0, vxs);
            }
        }
        /* dz transform Z = A dz A^T, and the bias gradient */
        for (int64_t f0 = 0; f0 < F; f0 += ve) {
            const int64_t fn = F - f0 < ve ? F - f0 : ve;
            WV d[4], z[16], bsum;
            if (up)
                WFN(wgw_dz_up)(g, dy, n, th, tw, f0, fn, d, up);
            else
                WFN(wgw_dz)(g, dy, ymask, n, th, tw, f0, fn, d);
            memcpy(&bsum, bp + f0, sizeof bsum);
            bsum += (d[0] + d[1]) + (d[2] + d[3]);
            memcpy(bp + f0, &bsum, sizeof bsum);
            WFN(wgw_ztrans)(d, z);
            if (bf) {
#pragma GCC unroll 16
                for (int xi = 0; xi < 16; xi++)
                    WFN(wgw_bf_put)(z[xi], zw + xi * zws + (i >> 1) * fp + f0, (int)(i & 1),
                                    g->bf_native);
                continue;
            }
            T *restrict zt = zb + i * fp + f0;
#pragma GCC unroll 16
            for (int xi = 0; xi < 16; xi++) memcpy(zt + xi * zxs, &z[xi], sizeof(WV));
        }
    }
    if (bf) {
        g->wgemm_bf(vw, zw, (cnt + 1) / 2, C, cp, fp, vws, zws, mp);
        return;
    }
    /* the 16 products (NK_WWG_PLANES) */
#define WGW_TILE(v, z, m, CB, NVF) WFN(wgw_gemm_tile)(v, cp, z, fp, cnt, fp, m, CB, NVF)
    NK_WWG_PLANES(16, (const T *)vb, vxs, (const T *)zb, zxs, mp, C, cp, fp, WGW_TILE)
#undef WGW_TILE
}

/* wino_wg_block_b with C = CV and F = FV vectors constant (as wino_fused's
 * shapes, each its own function); the others the generic body */
#define WWG_FN(CV, FV)                                                                         \
    static __attribute__((noinline)) void WCAT(WFN(wino_wg_block_k), CV, FV)(                   \
        const nk_wino *g, const T *x, const T *dy, const T *ymask, const T *zero, int64_t t0,   \
        int64_t cnt, int64_t tb, T *restrict vb, T *restrict zb, T *restrict mp,                \
        T *restrict bp)                                                                        \
    {                                                                                          \
        WFN(wino_wg_block_b)(g, x, dy, ymask, zero, t0, cnt, tb, vb, zb, mp, bp, CV * WVL,       \
                             FV * WVL, 0);                                                     \
    }                                                                                          \
    static __attribute__((noinline)) void WCAT(WFN(wino_wg_block_u), CV, FV)(                   \
        const nk_wino *g, const T *x, const T *dy, const T *zero, int64_t t0, int64_t cnt,      \
        int64_t tb, T *restrict vb, T *restrict zb, T *restrict mp, T *restrict bp)            \
    {                                                                                          \
        WFN(wino_wg_block_b)(g, x, dy, NULL, zero, t0, cnt, tb, vb, zb, mp, bp, CV * WVL,        \
                             FV * WVL, 3);                                                     \
    }
WWG_FN(1, 2)
WWG_FN(2, 1)
WWG_FN(2, 2)
WWG_FN(2, 4)
WWG_FN(4, 2)
WWG_FN(4, 4)
static void WFN(wino_wg_block)(const nk_wino *g, const T *x, const T *dy, const T *ymask,
                               const T *zero, int64_t t0, int64_t cnt, int64_t tb, T *restrict vb,
                               T *restrict zb, T *restrict mp, T *restrict bp)
{
    const int64_t C = g->c, F = g->f;
    const int cv = C % WVL ? 0 : (int)(C / WVL), fv = F % WVL ? 0 : (int)(F / WVL);
    const int up = g->up_i ? (g->up_m ? 3 : 2) : 0; /* through a pooled gradient */
#define WWG_CASE(CV, FV)                                                                       \
    if (cv == CV && fv == FV && up == 0) {                                                     \
        WCAT(WFN(wino_wg_block_k), CV, FV)(g, x, dy, ymask, zero, t0, cnt, tb, vb, zb, mp, bp); \
        return;                                                                                \
    }                                                                                          \
    if (cv == CV && fv == FV && up == 3) {                                                     \
        WCAT(WFN(wino_wg_block_u), CV, FV)(g, x, dy, zero, t0, cnt, tb, vb, zb, mp, bp);        \
        return;                                                                                \
    }
    WWG_CASE(1, 2)
    WWG_CASE(2, 1)
    WWG_CASE(2, 2)
    WWG_CASE(2, 4)
    WWG_CASE(4, 2)
    WWG_CASE(4, 4)
#undef WWG_CASE
    if (up == 2)
        WFN(wino_wg_block_b)(g, x, dy, NULL, zero, t0, cnt, tb, vb, zb, mp, bp, C, F, 2);
    else if (up == 3)
        WFN(wino_wg_block_b)(g, x, dy, NULL, zero, t0, cnt, tb, vb, zb, mp, bp, C, F, 3);
    else
        WFN(wino_wg_block_b)(g, x, dy, ymask, zero, t0, cnt, tb, vb, zb, mp, bp, C, F, 0);
}
#undef WWG_FN

/* Winograd F(4x4, 3x3) weight gradient: one block of tiles (included by
 * nk_conv_wino.h after nk_conv_wino_wgrad.h, float32 only, with its T, WV,
 * WVL, WFN, the F(4x4) transforms of nk_conv_wino4.h and wgw_gemm_tile).
 *
 * As nk_conv_wino_wgrad.h with 4x4 tiles and 36 planes:
 *     dW = G^T [ sum over tiles of (A dz A^T) .* (B^T d B) ] G
 * with d the tile's 6x6 patch of x (the forward's V, w4_vtile) and dz its
 * 4x4 block of output gradients; A = (A^T)^T is 6x4, so the dz transform of
 * a column (z0, z1, z2, z3) is (z0, z0 + z1 + z2 + z3, z0 - z1 + z2 - z3,
 * z0 + 2 z1 + 4 z2 + 8 z3, z0 - 2 z1 + 4 z2 - 8 z3, z3).  36 (C x F)
 * products per 16 outputs instead of 64.  G^T M G is applied once per call
 * (CFN(wino_wgrad), nk_conv_body.h, in double). */

/* The 1-D dz transform z = A d of four vectors into six, z[k * zs] */
WAI void WFN(w4_a)(WV d0, WV d1, WV d2, WV d3, WV *z, const int zs)
{
    const WV s02 = d0 + d2, s13 = d1 + d3, t02 = d0 + (T)4 * d2, t13 = (T)2 * d1 + (T)8 * d3;
    z[0] = d0;
    z[zs] = s02 + s13;
    z[2 * zs] = s02 - s13;
    z[3 * zs] = t02 + t13;
    z[4 * zs] = t02 - t13;
    z[5 * zs] = d3;
}

/* The 4x4 dz block of tile (n, th, tw), channels [f0, f0 + fn): dy where
 * ymask > 0 (every dy without masked), zero outside OH x OW; d[4a + b] */
WAI void WFN(w4_dz)(const nk_wino *g, const T *dy, const T *ymask, int masked, nk_wtile p,
                    int64_t f0, int64_t fn, WV *d)
{
    const int64_t oh = 4 * p.th, ow = 4 * p.tw, OP = g->op;
    const int inside = oh + 4 <= g->oh && ow + 4 <= g->ow && fn == WVL;
    const int64_t off0 = ((p.n * g->oh + oh) * g->ow + ow) * OP + f0;
#pragma GCC unroll 16
    for (int k = 0; k < 16; k++) {
        const int64_t r = oh + (k >> 2), c = ow + (k & 3);
        d[k] = WFN(wgw_dz1)(dy, masked ? ymask : NULL, off0 + ((k >> 2) * g->ow + (k & 3)) * OP,
                            inside, r < g->oh && c < g->ow, fn);
    }
}

/* One block of tiles [t0, t0 + cnt) (cnt <= tb) into the partial sums mp
 * (36 planes of cp rows of fp) and bp (fp): V of x into vb (tile r, plane
 * xi at (36 r + xi) * cp: each tile's 36 vectors written contiguously, not
 * as 36 store streams), Z = A dz A^T into zb (at (36 r + xi) * fp), then
 * the 36 products (wgw_gemm_tile, the tiles in ascending order), as
 * wino_wg_block. */
WAI void WFN(wino4_wg_b)(const nk_wino *g, const T *x, const T *dy, const T *ymask,
                         const T *zero, int64_t t0, int64_t cnt, T *restrict vb, T *restrict zb,
                         T *restrict mp, T *restrict bp, const int64_t C, const int64_t F,
                         const int masked)
{
    const int64_t ve = WVL;
    const int64_t cp = (C + ve - 1) / ve * ve, fp = (F + ve - 1) / ve * ve;
    const int reuse = C <= 4 * ve; /* the left neighbour's row stage kept for up to 4 vectors */
    WV keep[4][12];
    /* dz (and its mask) read WINO_OUT_AHEAD tiles ahead, as wino_wg_block's
     * (without, its loads waited on memory: 16 -> 16 on 32x32 dW 3.9 -> 3.3
     * ms, batch 128, 1 thread) */
    nk_wtile p = nk_wtile_at(g, t0), ahead = p;
    const int64_t dist = cnt < WINO_OUT_AHEAD ? cnt : WINO_OUT_AHEAD;
    WFN(wino_prefetch_out)(g, dy, masked ? ymask : NULL, &ahead, dist, 0);
    for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
        if (i + dist < cnt) WFN(wino_prefetch_out)(g, dy, masked ? ymask : NULL, &ahead, 1, 0);
        if ((i & 7) == 0) WFN(wino_prefetch)(g, x, NULL, p, cnt - i < 8 ? cnt - i : 8);
        const int left = reuse && i > 0 && p.tw > 0;
        const WFN(wsrc) q = WFN(wino_src)(g, x, NULL, p, 4);
        for (int64_t c0 = 0; c0 < C; c0 += ve) {
            WV v[36];
            WFN(w4_vtile_at)(&q, zero, 0, c0, C - c0 < ve ? C - c0 : ve, left,
                             reuse ? keep[c0 / ve] : NULL, v);
            T *restrict vt = vb + 36 * i * cp + c0;
#pragma GCC unroll 36
            for (int xi = 0; xi < 36; xi++) memcpy(vt + xi * cp, &v[xi], sizeof(WV));
        }
        for (int64_t f0 = 0; f0 < F; f0 += ve) {
            WV d[16], t[24], z[36], bsum;
            WFN(w4_dz)(g, dy, ymask, masked, p, f0, F - f0 < ve ? F - f0 : ve, d);
            memcpy(&bsum, bp + f0, sizeof bsum);
            bsum += ((d[0] + d[1]) + (d[2] + d[3])) + ((d[4] + d[5]) + (d[6] + d[7])) +
                    (((d[8] + d[9]) + (d[10] + d[11])) + ((d[12] + d[13]) + (d[14] + d[15])));
            memcpy(bp + f0, &bsum, sizeof bsum);
            /* columns b: A dz (t[6 * ... ]: row a of column b at t[4a + b]) */
#pragma GCC unroll 4
            for (int b = 0; b < 4; b++) WFN(w4_a)(d[b], d[4 + b], d[8 + b], d[12 + b], t + b, 4);
            /* rows a: (A dz) A^T */
#pragma GCC unroll 6
            for (int a = 0; a < 6; a++) {
                const WV *q = t + 4 * a;
                WFN(w4_a)(q[0], q[1], q[2], q[3], z + 6 * a, 1);
            }
            T *restrict zt = zb + 36 * i * fp + f0;
#pragma GCC unroll 36
            for (int xi = 0; xi < 36; xi++) memcpy(zt + xi * fp, &z[xi], sizeof(WV));
        }
    }
    /* the 36 products */
#define WGW4_TILE(v, z, m, CB, NVF) WFN(wgw_gemm_tile)(v, 36 * cp, z, 36 * fp, cnt, fp, m, CB, NVF)
    NK_WWG_PLANES(36, (const T *)vb, cp, (const T *)zb, fp, mp, C, cp, fp, WGW4_TILE)
#undef WGW4_TILE
}

/* wino4_wg_b with ResNet's first-stage channel counts constant and no mask
 * (tile-major V and Z: cnt <= tb tiles of 36 rows fit the scratch) */
static void WFN(wino4_wg_block)(const nk_wino *g, const T *x, const T *dy, const T *ymask,
                                const T *zero, int64_t t0, int64_t cnt, int64_t tb,
                                T *restrict vb, T *restrict zb, T *restrict mp, T *restrict bp)
{
    (void)tb;
    if (!ymask && g->c == WVL && g->f == WVL)
        WFN(wino4_wg_b)(g, x, dy, NULL, zero, t0, cnt, vb, zb, mp, bp, WVL, WVL, 0);
    else
        WFN(wino4_wg_b)(g, x, dy, ymask, zero, t0, cnt, vb, zb, mp, bp, g->c, g->f, ymask != NULL);
}

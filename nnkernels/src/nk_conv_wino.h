/* Winograd F(2x2, 3x3) transforms (see nk_conv_wino in nk_conv_body.h for
 * the algorithm), included by nk_conv_direct_inst.h once per (ISA, dtype)
 * with T, TI, S and ISA defined, inside the ISA's `#pragma GCC target`
 * region.  Vectorised over channels (contiguous in NHWC) with 64-byte GCC
 * vectors, like nk_conv_direct.h.
 *
 * Tile t = (n, th, tw) on the N x TH x TW grid covers outputs (2th + a,
 * 2tw + b), a, b < 2, and reads the 4x4 source patch whose top-left pixel
 * is (2th - pt, 2tw - pl) (zero outside the source image).  The 16
 * transformed planes are indexed xi = 4 * row + col. */
#define WCAT_(a, b, c) a##_##b##_##c
#define WCAT(a, b, c) WCAT_(a, b, c)
#define WFN(name) WCAT(name, S, ISA)
#define WV WCAT(wvec, S, ISA)
#define WVI WCAT(wveci, S, ISA)
#define WVL ((int64_t)(64 / sizeof(T)))
#define WAI static inline __attribute__((always_inline))

typedef T WV __attribute__((vector_size(64)));
typedef TI WVI __attribute__((vector_size(64)));

/* n (<= WVL) elements from p, zero beyond */
WAI WV WFN(wld)(const T *p, int64_t n)
{
    WV v;
    if (n == WVL) {
        memcpy(&v, p, sizeof v);
    } else {
        T t[64 / sizeof(T)];
        memset(t, 0, sizeof t);
        memcpy(t, p, (size_t)n * sizeof(T));
        memcpy(&v, t, sizeof v);
    }
    return v;
}

WAI void WFN(wst)(T *p, WV v, int64_t n)
{
    if (n == WVL) {
        memcpy(p, &v, sizeof v);
    } else {
        T t[64 / sizeof(T)];
        memcpy(t, &v, sizeof v);
        memcpy(p, t, (size_t)n * sizeof(T));
    }
}

/* dst[kk * 8 + i] = r[i][kk] for kk < WVL (an 8 x WVL transpose): three
 * rounds of two-input shuffles, each moving one bit of the row index i into
 * the lane index and one bit of kk out of it. */
#if FB == 32 /* float: 16 lanes */
#define WINO_SH1 {0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23}
#define WINO_SH1H {8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31}
#define WINO_SH2 {0, 1, 16, 17, 2, 3, 18, 19, 4, 5, 20, 21, 6, 7, 22, 23}
#define WINO_SH2H {8, 9, 24, 25, 10, 11, 26, 27, 12, 13, 28, 29, 14, 15, 30, 31}
#define WINO_SH3 {0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23}
#define WINO_SH3H {8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31}
#else /* double: 8 lanes */
#define WINO_SH1 {0, 8, 1, 9, 2, 10, 3, 11}
#define WINO_SH1H {4, 12, 5, 13, 6, 14, 7, 15}
#define WINO_SH2 {0, 1, 8, 9, 2, 3, 10, 11}
#define WINO_SH2H {4, 5, 12, 13, 6, 7, 14, 15}
#define WINO_SH3 {0, 1, 2, 3, 8, 9, 10, 11}
#define WINO_SH3H {4, 5, 6, 7, 12, 13, 14, 15}
#endif
WAI void WFN(tr8)(const WV *r, T *dst)
{
    const WVI m1 = WINO_SH1, m1h = WINO_SH1H, m2 = WINO_SH2, m2h = WINO_SH2H;
    const WVI m3 = WINO_SH3, m3h = WINO_SH3H;
    WV x[8], z[8];
    for (int p = 0; p < 4; p++) { /* rows 2p, 2p+1 -> x[2p + top bit of kk] */
        x[2 * p] = __builtin_shuffle(r[2 * p], r[2 * p + 1], m1);
        x[2 * p + 1] = __builtin_shuffle(r[2 * p], r[2 * p + 1], m1h);
    }
    for (int i2 = 0; i2 < 2; i2++) /* rows differing in bit 1 */
        for (int h = 0; h < 2; h++) {
            const WV a = x[4 * i2 + h], b = x[4 * i2 + 2 + h];
            z[4 * i2 + 2 * h] = __builtin_shuffle(a, b, m2);
            z[4 * i2 + 2 * h + 1] = __builtin_shuffle(a, b, m2h);
        }
    for (int q = 0; q < 4; q++) { /* rows differing in bit 2 */
        const WV a = z[q], b = z[4 + q];
        const WV lo = __builtin_shuffle(a, b, m3), hi = __builtin_shuffle(a, b, m3h);
        memcpy(dst + (2 * q) * WVL, &lo, sizeof lo);
        memcpy(dst + (2 * q + 1) * WVL, &hi, sizeof hi);
    }
}
#undef WINO_SH1
#undef WINO_SH1H
#undef WINO_SH2
#undef WINO_SH2H
#undef WINO_SH3
#undef WINO_SH3H

/* Tile p's (m + 2) x (m + 2) patch (m: 2, or 4 for F(4x4)): pixel (a, b)
 * of the source at q.x + a * q.rs + b * q.sp bytes (of the mask at q.m +
 * ...), inside the image where bit 8a + b of q.ok is set (WINO_ALL(m):
 * every pixel); the others read as zero.  One base per tile instead of an
 * array of pointers per pixel (whose setup and reloads were a third of
 * F(4x4)'s input transform); an outside pixel's address is formed but
 * never read. */
#ifndef WINO_ALL
#define WINO_ALL(m) ((m) == 4 ? UINT64_C(0x3f3f3f3f3f3f) : UINT64_C(0x0f0f0f0f))
#endif
typedef struct {
    uintptr_t x, m;
    int64_t rs, sp;
    uint64_t ok;
    /* read through a pooled gradient (wino_src_up): the mask's window (0:
     * none), the index of patch pixel (0, 0) and the row length OW */
    uintptr_t y;
    int64_t pb, pw;
} WFN(wsrc);

WAI WFN(wsrc) WFN(wino_src)(const nk_wino *g, const T *src, const T *mask, nk_wtile p, const int m)
{
    const int64_t H = g->h, W = g->w, P = m + 2;
    const int64_t ih = m * p.th - g->pt, iw = m * p.tw - g->pl;
    const int64_t off = ((p.n * H + ih) * W + iw) * g->sp * (int64_t)sizeof(T);
    WFN(wsrc) q = {(uintptr_t)src + (uintptr_t)off, mask ? (uintptr_t)mask + (uintptr_t)off : 0,
                   W * g->sp * (int64_t)sizeof(T), g->sp * (int64_t)sizeof(T), WINO_ALL(m)};
    if (ih >= 0 && ih + P <= H && iw >= 0 && iw + P <= W) return q; /* inside the image */
    uint64_t rows = 0, cols = 0;
    for (int k = 0; k < P; k++) {
        rows |= (uint64_t)((uint64_t)(ih + k) < (uint64_t)H) << (8 * k);
        cols |= (uint64_t)((uint64_t)(iw + k) < (uint64_t)W) << k;
    }
    q.ok = rows * 0xff & cols * UINT64_C(0x010101010101);
    return q;
}

#if FB == 32
/* Tile p's 4x4 patch (F(2x2)) of a dz read through the gradient of its 2x2
 * stride-2 max pooling (nk_wino.up_i): the patch's top-left pixel is even
 * in both coordinates (CFN(backward_maxpool) checks), so each of its 2x2
 * quarters is one window.  x, m, y: the window of pixel (0, 0) in src (the
 * pooled gradient), the indices and the mask (y 0: none), at the byte
 * offset of that window in each (int32 and T have the same size); rs, sp:
 * the window row and column pitches in bytes; ok: the pixels inside the 2
 * up_ph x 2 up_pw that windows cover (the others are zero); pb: the index
 * h * OW + w of pixel (0, 0), pw: OW. */
WAI WFN(wsrc) WFN(wino_src_up)(const nk_wino *g, const T *src, nk_wtile p)
{
    const int64_t PH = g->up_ph, PW = g->up_pw, H = 2 * PH, W = 2 * PW;
    const int64_t ih = 2 * p.th - g->pt, iw = 2 * p.tw - g->pl;
    const int64_t off = ((p.n * PH + ih / 2) * PW + iw / 2) * g->sp * (int64_t)sizeof(T);
    WFN(wsrc) q = {(uintptr_t)src + (uintptr_t)off, (uintptr_t)g->up_i + (uintptr_t)off,
                   PW * g->sp * (int64_t)sizeof(T), g->sp * (int64_t)sizeof(T), WINO_ALL(2),
                   g->up_m ? (uintptr_t)g->up_m + (uintptr_t)off : 0, ih * g->w + iw, g->w};
    if (ih >= 0 && ih + 4 <= H && iw >= 0 && iw + 4 <= W) return q;
    uint64_t rows = 0, cols = 0;
    for (int k = 0; k < 4; k++) {
        rows |= (uint64_t)((uint64_t)(ih + k) < (uint64_t)H) << (8 * k);
        cols |= (uint64_t)((uint64_t)(iw + k) < (uint64_t)W) << k;
    }
    q.ok = rows * 0xff & cols * UINT64_C(0x010101010101);
    return q;
}
#endif

/* Pixel (a, b) of patch q, channels [c0, c0 + cn) (zero outside the
 * image; with masked 1, also where the mask is not > 0; masked 2 and 3:
 * through a pooled gradient, wino_src_up, 3 with its mask).  ok is q.ok
 * passed apart, so that a constant WINO_ALL drops the selects. */
WAI WV WFN(wino_ld)(const WFN(wsrc) *q, uint64_t ok, const T *zero, int masked, int a, int b,
                    int64_t c0, int64_t cn, const int m)
{
    const int in = ok == WINO_ALL(m) || (ok >> (8 * a + b) & 1);
#if FB == 32
    if (masked >= 2) { /* the window's gradient where its index names this pixel, as 0 + g */
        const uintptr_t w = (uintptr_t)((a >> 1) * q->rs + (b >> 1) * q->sp);
        WV d = WFN(wld)((in ? (const T *)(q->x + w) : zero) + c0, cn) + (T)0;
        if (masked == 3)
            d = (WV)((WVI)d & (WVI)(WFN(wld)((in ? (const T *)(q->y + w) : zero) + c0, cn) > (T)0));
        /* the index relative to the window's top-left pixel (one per
         * window), against 0, 1, OW or OW + 1 */
        const WV iv = WFN(wld)((in ? (const T *)(q->m + w) : zero) + c0, cn);
        const WVI rel = (WVI)iv - ((WVI){0} + (TI)(q->pb + 2 * (a >> 1) * q->pw + 2 * (b >> 1)));
        return (WV)((WVI)d & (WVI)(rel == (WVI){0} + (TI)((a & 1) * q->pw + (b & 1))));
    }
#endif
    const uintptr_t o = (uintptr_t)(a * q->rs + b * q->sp);
    WV d = WFN(wld)((in ? (const T *)(q->x + o) : zero) + c0, cn);
    if (masked)
        d = (WV)((WVI)d & (WVI)(WFN(wld)((in ? (const T *)(q->m + o) : zero) + c0, cn) > (T)0));
    return d;
}

/* The prefetches of what the transforms read go to L2 (locality 2,
 * PREFETCHT1), not L1: a fused block's V, M and U (up to ~90 KB with
 * F(4x4)) already overflow L1, which evicted the lines before their use.
 * Cache-cold, batch 128, 1 thread, bf16: 16 -> 16 on 32x32 forward 3.45 ->
 * 3.15 ms, dX 3.23 -> 2.83, dW 3.59 -> 2.81; 64 -> 64 on 8x8 dW 2.30 -> 2.10 */
#define WINO_PF_LEVEL 2
/* Software prefetch of the source rows the tiles one tile row below
 * tiles [t, t + cnt) add (patch rows 2 .. m + 1 of those tiles, m the tile
 * size: 2, or 4 with g->m4; the columns a left neighbour does not share),
 * all channels (and the mask's): the transform reads each patch as short
 * runs the hardware prefetchers do not follow (the GEMMs between blocks
 * break their streams). */
WAI void WFN(wino_prefetch)(const nk_wino *g, const T *src, const T *mask, nk_wtile p,
                            int64_t cnt)
{
    const int64_t H = g->h, W = g->w, bytes = g->c * (int64_t)sizeof(T);
    const int m = g->m4 ? 4 : 2;
    for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
        const int64_t n = p.n, th = p.th + 1, tw = p.tw;
        for (int a = 2; a < m + 2; a++) {
            const int64_t ih = m * th - g->pt + a;
            if ((uint64_t)ih >= (uint64_t)H) continue;
            for (int b = tw > 0 ? 2 : 0; b < m + 2; b++) {
                const int64_t iw = m * tw - g->pl + b;
                if ((uint64_t)iw >= (uint64_t)W) continue;
                const int64_t off = ((n * H + ih) * W + iw) * g->sp;
                for (int64_t o = 0; o < bytes; o += 64) {
                    __builtin_prefetch((const char *)(src + off) + o, 0, WINO_PF_LEVEL);
                    if (mask) __builtin_prefetch((const char *)(mask + off) + o, 0, WINO_PF_LEVEL);
                }
            }
        }
    }
}

#if FB == 32
/* The lines of window (n, wr, wc) of a pooled gradient (nk_wino.up_i;
 * pixels sp apart, ch channels), in the gradient src, the indices and the
 * mask, for reading; nothing outside the windows */
WAI void WFN(wino_prefetch_win)(const nk_wino *g, const T *src, int64_t sp, int64_t ch,
                                int64_t n, int64_t wr, int64_t wc)
{
    if ((uint64_t)wr >= (uint64_t)g->up_ph || (uint64_t)wc >= (uint64_t)g->up_pw) return;
    const int64_t off = ((n * g->up_ph + wr) * g->up_pw + wc) * sp;
    const int64_t bytes = ch * (int64_t)sizeof(T);
    for (int64_t o = 0; o < bytes; o += 64) {
        __builtin_prefetch((const char *)(src + off) + o, 0, WINO_PF_LEVEL);
        __builtin_prefetch((const char *)(g->up_i + off) + o, 0, WINO_PF_LEVEL);
        if (g->up_m) __builtin_prefetch((const char *)((const T *)g->up_m + off) + o, 0, WINO_PF_LEVEL);
    }
}

/* wino_prefetch through a pooled gradient (wino_src_up): the windows the
 * tiles one tile row below [t, t + cnt) add (their patches' bottom row of
 * windows; the right one only, after a left neighbour) */
WAI void WFN(wino_prefetch_up)(const nk_wino *g, const T *src, nk_wtile p, int64_t cnt)
{
    for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
        const int64_t wr = (2 * (p.th + 1) - g->pt) / 2 + 1, wc = (2 * p.tw - g->pl) / 2;
        if (p.tw == 0) WFN(wino_prefetch_win)(g, src, g->sp, g->c, p.n, wr, wc);
        WFN(wino_prefetch_win)(g, src, g->sp, g->c, p.n, wr, wc + 1);
    }
}
#endif

/* Software prefetch of the output-shaped pixels (channels [0, F)) of the
 * cnt tiles from *p, in a and, when not NULL, b; *p steps past them.  For
 * writing (write = 1): the Winograd output transforms' outputs, a pass over
 * memory the training step last touched long ago, whose stores stalled on
 * their lines (ResNet-20, batch 128, 1 thread: the step 128 -> 118 ms with
 * bf16 products, 147 -> 139 with float32; the default CNN with bf16 27.1 ->
 * 25.7); each tile writes two rows, which the hardware prefetchers do not
 * follow.  For reading: the weight gradient's dz blocks and their mask. */
WAI void WFN(wino_prefetch_out_e)(const nk_wino *g, const void *a, const void *b, nk_wtile *p,
                                  int64_t cnt, const int write, const int64_t esz)
{
    const int64_t OH = g->oh, OW = g->ow, OP = g->op, m = g->m4 ? 4 : 2;
    const int64_t bytes = g->f * esz;
    for (int64_t i = 0; i < cnt && p->n < g->n; i++, nk_wtile_next(g, p)) {
        const int64_t ow = m * p->tw, cols = OW - ow < m ? OW - ow : m;
        const int64_t span = (cols - 1) * OP * esz + bytes;
        for (int64_t r = 0; r < m && m * p->th + r < OH; r++) {
            const int64_t off = ((p->n * OH + m * p->th + r) * OW + ow) * OP * esz;
            const char *arr[2] = {(const char *)a, (const char *)b};
            for (int k = 0; k < 2 && arr[k]; k++) {
                const char *q = arr[k] + off, *end = q + span;
                for (q -= (uintptr_t)q & 63; q < end; q += 64) {
                    if (write)
                        __builtin_prefetch(q, 1);
                    else
                        __builtin_prefetch(q, 0, WINO_PF_LEVEL);
                }
            }
        }
    }
}

/* wino_prefetch_out of T elements */
WAI void WFN(wino_prefetch_out)(const nk_wino *g, const T *a, const T *b, nk_wtile *p,
                                int64_t cnt, const int write)
{
    WFN(wino_prefetch_out_e)(g, a, b, p, cnt, write, (int64_t)sizeof(T));
}

/* for writing, the lines of a fused pass's output tiles: y (T), else
 * g->y16 (bf16) where it stores there */
WAI void WFN(wino_prefetch_y)(const nk_wino *g, const T *y, nk_wtile p, int64_t cnt)
{
    if (y)
        WFN(wino_prefetch_out_e)(g, y, NULL, &p, cnt, 1, (int64_t)sizeof(T));
    else if (g->y16)
        WFN(wino_prefetch_out_e)(g, g->y16, NULL, &p, cnt, 1, 2);
}

/* Column b of the row stage B^T d (B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0;
 * 0 1 0 -1]) for channels [c0, c0 + cn): u[4a + b], a < 4. */
WAI void WFN(wino_col)(const WFN(wsrc) *q, uint64_t ok, const T *zero, int masked, int64_t c0,
                       int64_t cn, const int b, WV *u)
{
    WV d[4];
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++) d[a] = WFN(wino_ld)(q, ok, zero, masked, a, b, c0, cn, 2);
    u[b] = d[0] - d[2];
    u[4 + b] = d[1] + d[2];
    u[8 + b] = d[2] - d[1];
    u[12 + b] = d[1] - d[3];
}

/* The row stage u[4a + b] of patch q (ok: q->ok or the constant WINO_ALL(2));
 * with left, columns 0, 1 are the left neighbour's 2, 3 (same operations,
 * so same results): from kin[2a], kin[2a + 1], or without kin already in
 * u's columns 2, 3 */
WAI void WFN(wino_rows_ok)(const WFN(wsrc) *q, uint64_t ok, const T *zero, int masked, int64_t c0,
                           int64_t cn, int left, const WV *kin, WV *u)
{
    if (left) {
#pragma GCC unroll 4
        for (int a = 0; a < 4; a++) {
            u[4 * a] = kin ? kin[2 * a] : u[4 * a + 2];
            u[4 * a + 1] = kin ? kin[2 * a + 1] : u[4 * a + 3];
        }
    } else {
        WFN(wino_col)(q, ok, zero, masked, c0, cn, 0, u);
        WFN(wino_col)(q, ok, zero, masked, c0, cn, 1, u);
    }
    WFN(wino_col)(q, ok, zero, masked, c0, cn, 2, u);
    WFN(wino_col)(q, ok, zero, masked, c0, cn, 3, u);
}

/* wino_rows_ok with the whole patches inside the image compiled apart,
 * without the selects */
WAI void WFN(wino_rows)(const WFN(wsrc) *q, const T *zero, int masked, int64_t c0, int64_t cn,
                        int left, const WV *kin, WV *u)
{
    if (q->ok == WINO_ALL(2))
        WFN(wino_rows_ok)(q, WINO_ALL(2), zero, masked, c0, cn, left, kin, u);
    else
        WFN(wino_rows_ok)(q, q->ok, zero, masked, c0, cn, left, kin, u);
}

/* The column stage (B^T d) B of the row stage u (u[4 * row + column]):
 * plane xi's vector into v[xi]. */
WAI void WFN(wino_vcols)(const WV *u, WV *v)
{
#pragma GCC unroll 4
    for (int a = 0; a < 4; a++) {
        const WV *q = u + 4 * a;
        v[4 * a + 0] = q[0] - q[2];
        v[4 * a + 1] = q[1] + q[2];
        v[4 * a + 2] = q[2] - q[1];
        v[4 * a + 3] = q[1] - q[3];
    }
}

/* ... the 16 planes' vectors stored at vt + xi * xs. */
WAI void WFN(wino_vstore)(const WV *u, T *restrict vt, int64_t xs)
{
    WV v[16];
    WFN(wino_vcols)(u, v);
#pragma GCC unroll 16
    for (int xi = 0; xi < 16; xi++) memcpy(vt + xi * xs, &v[xi], sizeof(WV));
}

#if FB == 32 /* float32: the fused path's bf16 products (nk_wino.fgemm_bf) */
#define WINO_BF16_PAIRS 1
typedef uint32_t WCAT(wvecu, S, ISA) __attribute__((vector_size(64)));
typedef uint32_t WCAT(wvecu8, S, ISA) __attribute__((vector_size(32)));
/* v's 16 lanes rounded to bf16 in integer arithmetic as VCVTNEPS2BF16 does
 * (nk_bf16_ftz: nearest even, NaN quieted, zero and subnormals to a signed
 * zero): lane k's bf16 in the low half of its 32-bit lane (the high half zero) */
WAI WCAT(wvecu, S, ISA) WFN(wino_bf16_int)(WV v)
{
    typedef WCAT(wvecu, S, ISA) WU;
    WU u;
    memcpy(&u, &v, sizeof u);
    const WU r = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
    const WU nan = (WU)((u & 0x7fffffffu) > 0x7f800000u), sub = (WU)((u & 0x7f800000u) == 0);
    const WU b = (nan & ((u >> 16) | 0x40u)) | (~nan & r);
    return (sub & ((u >> 16) & 0x8000u)) | (~sub & b);
}

/* v's 16 lanes rounded to bf16 as VCVTNEPS2BF16 does (nk_bf16_ftz: nearest
 * even, NaN quieted, zero and subnormals to a signed zero), as 8 words of
 * two channels each (lanes 2k, 2k + 1 in the low, high half of word k).
 * native: the instruction itself (the caller knows the CPU has it; the
 * assembler takes it in the AVX-512 region, where the compiler's intrinsic
 * is not available), else the same rounding in integer arithmetic. */
WAI WCAT(wvecu8, S, ISA) WFN(wino_bf16_pairs)(WV v, int native)
{
    typedef WCAT(wvecu, S, ISA) WU;
    WCAT(wvecu8, S, ISA) o;
#if defined(__AVX512F__) && NK_X86
    if (native) {
        __asm__("vcvtneps2bf16 %1, %0" : "=v"(o) : "v"(v));
        return o;
    }
#else
    (void)native;
#endif
    const WU b = WFN(wino_bf16_int)(v);
    const WU w = b | (__builtin_shuffle(b, (WU){1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14})
                      << 16);
    const WU c = __builtin_shuffle(w, (WU){0, 2, 4, 6, 8, 10, 12, 14, 0, 2, 4, 6, 8, 10, 12, 14});
    memcpy(&o, &c, sizeof o);
    return o;
}

/* v's first n lanes rounded to bf16 (wino_bf16_pairs) and stored at p:
 * a bfloat16 output (nk_wino.y16) */
WAI void WFN(wst_bf16)(uint16_t *p, WV v, int64_t n, int native)
{
    const WCAT(wvecu8, S, ISA) o = WFN(wino_bf16_pairs)(v, native);
    if (n == WVL) {
        memcpy(p, &o, sizeof o);
    } else {
        uint16_t t[16];
        memcpy(t, &o, sizeof o);
        memcpy(p, t, (size_t)n * sizeof(uint16_t));
    }
}

/* The two bf16 of the pair words at p, as float32 (exact): the high (odd)
 * elements into *hi, the low (even) ones into *lo -- 16 words, and one
 * (wino_bf16_split1); the emulated VDPBF16PS multiply-adds take them in
 * that order */
WAI void WFN(wino_bf16_split)(const uint32_t *p, WV *hi, WV *lo)
{
    typedef WCAT(wvecu, S, ISA) WU;
    WU w;
    memcpy(&w, p, sizeof w);
    const WU h = w & 0xffff0000u, l = w << 16;
    memcpy(hi, &h, sizeof h);
    memcpy(lo, &l, sizeof l);
}
WAI void WFN(wino_bf16_split1)(uint32_t w, T *hi, T *lo)
{
    const uint32_t h = w & 0xffff0000u, l = w << 16;
    memcpy(hi, &h, sizeof h);
    memcpy(lo, &l, sizeof l);
}

/* wino_vstore into bf16 pairs: plane xi's 8 words at vw + xi * xs */
WAI void WFN(wino_vstore_bf)(const WV *u, uint32_t *restrict vw, int64_t xs, int native)
{
    WV v[16];
    WFN(wino_vcols)(u, v);
#pragma GCC unroll 16
    for (int xi = 0; xi < 16; xi++) {
        const WCAT(wvecu8, S, ISA) p = WFN(wino_bf16_pairs)(v[xi], native);
        memcpy(vw + xi * xs, &p, sizeof p);
    }
}
#endif

/* Input transform V = B^T d B of tiles [t0, t0 + cnt) into the packed-A
 * operand of the 16 GEMMs of one block of tb tiles (local tile j = sliver
 * j / mr, row j % mr): plane xi at v_pk + xi * v_xs, k-block [pc, pc + kcur)
 * of the channels at + pc * tb, sliver s at + s * mr * kcur, element
 * (channel pc + kk, row i) at + kk * mr + i.  Tiles j >= cnt (up to the
 * block's last sliver) are zero.  src: (N, H, W, C); mask (or NULL): same
 * shape, d = mask > 0 ? src : 0 (relu derivative); zero: C zeros.
 * Per sliver and chunk of WVL channels, the mr tiles' V are computed into
 * registers / a small buffer (channels in lanes), then transposed into the
 * sliver's contiguous (channel, row) run. mr <= WINO_MR_MAX.  A tile whose
 * left neighbour precedes it in the sliver reuses that tile's row stage of
 * their two shared columns (same operations, so same results). */
static void WFN(wino_in)(const nk_wino *g, const T *src, const T *mask, int64_t t0, int64_t cnt,
                         T *restrict v_pk, const T *zero)
{
    const int64_t C = g->c, mr = g->mr, kc = g->kc, tb = g->tb;
    const int64_t v_xs = g->v_xs, nsl = (cnt + mr - 1) / mr;
    WV vt[16][WINO_MR_MAX];
    WFN(wsrc) ps[WINO_MR_MAX]; /* the sliver's patches */
    nk_wtile p = nk_wtile_at(g, t0);
    for (int64_t s = 0; s < nsl; s++) {
        const int64_t rows = cnt - s * mr < mr ? cnt - s * mr : mr;
        int left[WINO_MR_MAX];
        WFN(wino_prefetch)(g, src, mask, p, rows);
        for (int64_t i = 0; i < rows; i++, nk_wtile_next(g, &p)) {
            ps[i] = WFN(wino_src)(g, src, mask, p, 2);
            left[i] = p.tw > 0;
        }
        for (int64_t i = rows; i < mr; i++)
            for (int xi = 0; xi < 16; xi++) vt[xi][i] = (WV){0};
        for (int64_t c0 = 0; c0 < C; c0 += WVL) {
            const int64_t cn = C - c0 < WVL ? C - c0 : WVL;
            const int64_t pc = c0 / kc * kc, kcur = C - pc < kc ? C - pc : kc;
            WV u[16]; /* row stage of the current tile, u[4 * row + column] */
            for (int64_t i = 0; i < rows; i++) {
                WFN(wino_rows)(&ps[i], zero, mask != NULL, c0, cn, i > 0 && left[i], NULL, u);
                /* columns: (B^T d) B */
#pragma GCC unroll 4
                for (int a = 0; a < 4; a++) {
                    const WV *q = u + 4 * a;
                    vt[4 * a + 0][i] = q[0] - q[2];
                    vt[4 * a + 1][i] = q[1] + q[2];
                    vt[4 * a + 2][i] = q[2] - q[1];
                    vt[4 * a + 3][i] = q[1] - q[3];
                }
            }
            T *restrict run = v_pk + pc * tb + s * mr * kcur + (c0 - pc) * mr;
            for (int xi = 0; xi < 16; xi++) {
                T *restrict dst = run + xi * v_xs;
                if (mr == 8 && cn == WVL) {
                    WFN(tr8)(vt[xi], dst);
                } else if (mr == 8) {
                    T tmp[8 * (64 / sizeof(T))];
                    WFN(tr8)(vt[xi], tmp);
                    memcpy(dst, tmp, (size_t)(cn * 8) * sizeof(T));
                } else {
                    T lane[WINO_MR_MAX][64 / sizeof(T)];
                    memcpy(lane, vt[xi], (size_t)mr * sizeof(WV));
                    for (int64_t l = 0; l < cn; l++)
                        for (int64_t i = 0; i < mr; i++) dst[l * mr + i] = lane[i][l];
                }
            }
        }
    }
}

/* The 2x2 window o[4] (rows a, columns b at o[2a + b]) at output (oh, ow),
 * both even, into g->pool_y / g->pool_i: its maximum and index, which max
 * pooling would find in y (the same comparison and scan order as
 * nk_max_pool2d_fwd: first maximum wins ties, the first NaN wins). */
WAI void WFN(wino_pool)(const nk_wino *g, const WV *o, int64_t n, int64_t oh, int64_t ow,
                        int64_t f0, int64_t fn)
{
    const int64_t OW = g->ow, p0 = oh * OW + ow, PW = OW / 2;
    WV best = o[0];
    WVI bi = (WVI){0} + (TI)p0;
    const int64_t off[4] = {0, 1, OW, OW + 1};
#pragma GCC unroll 4
    for (int k = 1; k < 4; k++) {
        const WVI upd = ~(WVI)(o[k] <= best) & (WVI)(best == best);
        best = (WV)(((WVI)o[k] & upd) | ((WVI)best & ~upd));
        bi = (((WVI){0} + (TI)(p0 + off[k])) & upd) | (bi & ~upd);
    }
    const int64_t q = ((n * (g->oh / 2) + oh / 2) * PW + ow / 2) * g->f + f0;
    WFN(wst)((T *)g->pool_y + q, best, fn);
    TI t[64 / sizeof(T)];
    memcpy(t, &bi, sizeof bi);
    for (int64_t l = 0; l < fn; l++) g->pool_i[q + l] = (int32_t)t[l];
}

/* The output tile o[4] (rows a, columns b at o[2a + b]; act applied) of
 * tile (n, oh/2, ow/2): added to y with g->accum, stored into y (unless y
 * is NULL; then into g->y16 as bf16 when that is set), and with g->pool_y
 * its 2x2 window's maximum and index (wino_pool). */
WAI void WFN(wino_store)(const nk_wino *g, WV *o, T *y, int64_t n, int64_t oh, int64_t ow,
                         int rows, int cols, int64_t f0, int64_t fn)
{
    const int64_t OW = g->ow, OP = g->op;
    if (y) {
        T *yp = y + ((n * g->oh + oh) * OW + ow) * OP + f0;
        if (g->accum) { /* y += (rows / columns inside the output only) */
            o[0] += WFN(wld)(yp, fn);
            if (cols == 2) o[1] += WFN(wld)(yp + OP, fn);
            if (rows == 2) {
                o[2] += WFN(wld)(yp + OW * OP, fn);
                if (cols == 2) o[3] += WFN(wld)(yp + (OW + 1) * OP, fn);
            }
        }
        WFN(wst)(yp, o[0], fn);
        if (cols == 2) WFN(wst)(yp + OP, o[1], fn);
        if (rows == 2) {
            WFN(wst)(yp + OW * OP, o[2], fn);
            if (cols == 2) WFN(wst)(yp + (OW + 1) * OP, o[3], fn);
        }
    }
#ifdef WINO_BF16_PAIRS
    else if (g->y16) {
        uint16_t *yp = g->y16 + ((n * g->oh + oh) * OW + ow) * OP + f0;
        for (int a = 0; a < rows; a++)
            for (int b = 0; b < cols; b++)
                WFN(wst_bf16)(yp + (a * OW + b) * OP, o[2 * a + b], fn, g->y16_native);
    }
#endif
    if (g->pool_y && rows == 2 && cols == 2) WFN(wino_pool)(g, o, n, oh, ow, f0, fn);
}

/* Output transform y = act(bias + A^T m A) of tiles [t0, t0 + cnt); m: the
 * 16 GEMM products, plane xi at m_blk + xi * m_xs, local tile j's F values
 * at + j * F.  Only the tile's outputs inside OH x OW are stored. */
#ifndef WINO_OUT_AHEAD
#define WINO_OUT_AHEAD 8 /* tiles between a prefetch of outputs and their stores */
#endif
static void WFN(wino_out)(const nk_wino *g, const T *m_blk, int64_t t0, int64_t cnt,
                          const T *bias, int act, T *y)
{
    const int64_t F = g->f, OH = g->oh, OW = g->ow, m_xs = g->m_xs;
    nk_wtile p = nk_wtile_at(g, t0), ahead = p; /* prefetched up to ahead */
    const int64_t dist = cnt < WINO_OUT_AHEAD ? cnt : WINO_OUT_AHEAD;
    if (y) WFN(wino_prefetch_out)(g, y, NULL, &ahead, dist, 1);
    for (int64_t j = 0; j < cnt; j++, nk_wtile_next(g, &p)) {
        const int64_t n = p.n, oh = 2 * p.th, ow = 2 * p.tw;
        const int rows = oh + 1 < OH ? 2 : 1, cols = ow + 1 < OW ? 2 : 1;
        const T *mp = m_blk + j * F;
        if (y && j + dist < cnt) WFN(wino_prefetch_out)(g, y, NULL, &ahead, 1, 1);
        for (int64_t f0 = 0; f0 < F; f0 += WVL) {
            const int64_t fn = F - f0 < WVL ? F - f0 : WVL;
            WV m[16], u[8], o[4];
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++) m[k] = WFN(wld)(mp + k * m_xs + f0, fn);
            /* rows: A^T m */
#pragma GCC unroll 16
            for (int b = 0; b < 4; b++) {
                u[b] = m[b] + m[4 + b] + m[8 + b];
                u[4 + b] = m[4 + b] - m[8 + b] - m[12 + b];
            }
            /* columns: (A^T m) A */
#pragma GCC unroll 16
            for (int a = 0; a < 2; a++) {
                o[2 * a] = u[4 * a] + u[4 * a + 1] + u[4 * a + 2];
                o[2 * a + 1] = u[4 * a + 1] - u[4 * a + 2] - u[4 * a + 3];
            }
            if (bias) {
                const WV bv = WFN(wld)(bias + f0, fn);
#pragma GCC unroll 16
                for (int k = 0; k < 4; k++) o[k] += bv;
            }
#pragma GCC unroll 16
            for (int k = 0; k < 4; k++) {
                if (act == NK_ACT_RELU) o[k] = (WV)((WVI)o[k] & ~(WVI)(o[k] < (T)0)); /* NaN kept */
            }
            WFN(wino_store)(g, o, y, n, oh, ow, rows, cols, f0, fn);
        }
    }
}

/* ------------------------------------------------------- fused (small C, F)
 * One block of up to WINO_FR tiles [t0, t0 + cnt) end to end in L1: the
 * input transform stores V channels-contiguous (vb: tile r, plane xi at
 * (16 r + xi) * cp, no transpose), the 16 products M = V @ U are register
 * tiles of WINO_FR tiles x one vector of F (each V element broadcast from
 * memory, each U vector loaded once per block and plane; sums over the
 * channels in ascending order), M goes to mb (tile r, plane xi at
 * (16 r + xi) * fp) and the output transform writes y as wino_out.
 * u: U = G g G^T, plane xi, channel c at (xi * C + c) * fp, zero-padded to
 * fp (a whole number of vectors).  With 32 vector registers (AVX-512) the
 * products take two vectors of F per register tile when F allows.  The
 * ResNet channel counts (C, F in {1, 2} vectors) are compiled with the
 * counts constant (the generic body is markedly slower: runtime vector
 * counts, branches on partial vectors).  vb rows of tiles >= cnt are left as they
 * are (their products are computed and dropped).  Every tile's result
 * depends only on its own data: independent of the block and thread. */
#define WFR_ACC(j) WV a_##j = (WV){0};
#define WFR_FMA(j) if (j < WINO_FR) a_##j += vr[(NP * j) * cp + c] * uv;
#define WFR_ST(j) if (j < WINO_FR) memcpy(mr_ + j * mst + f0, &a_##j, sizeof(WV));
#define WFR_ACC2(j) WV b_##j = (WV){0};
#define WFR_FMA2(j)                                                                         \
    if (j < WINO_FR) {                                                                      \
        const T vj = vr[(NP * j) * cp + c];                                                 \
        a_##j += vj * uv;                                                                   \
        b_##j += vj * uv2;                                                                  \
    }
#define WFR_ST2(j) if (j < WINO_FR) memcpy(mr_ + j * mst + f0 + WVL, &b_##j, sizeof(WV));
#define WFR_TILE(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11)
static const int WFN(wino_fr) = WINO_FR;
/* M = V @ U of a fused block (see wino_fused) of NP planes (16: F(2x2, 3x3);
 * 36: F(4x4, 3x3), nk_conv_wino4.h): tile j's plane xi of V at
 * vb + (NP j + xi) * cp, of M at mb + (NP j + xi) * fp, or with pm at
 * mb + (WINO_FR xi + j) * fp (plane-major: each plane's WINO_FR stores
 * contiguous; F(4x4)'s 16 -> 16 forward 2.68 -> 2.56 ms, batch 128, 1 thread) */
WAI void WFN(wino_fgemm)(const T *vb, const T *u, const int64_t C, int64_t cp, int64_t fp,
                         T *mb, const int NP, const int pm)
{
    const int64_t mst = pm ? fp : NP * fp, msp = pm ? WINO_FR * fp : fp;
    for (int64_t xi = 0; xi < NP; xi++) {
        const T *vr = vb + xi * cp;
        T *mr_ = mb + xi * msp;
        int64_t f0 = 0;
#if defined(__AVX512F__) /* 32 vector registers: two vectors of F per tile */
        for (; f0 + 2 * WVL <= fp; f0 += 2 * WVL) {
            WFR_TILE(WFR_ACC)
            WFR_TILE(WFR_ACC2)
            const T *up = u + xi * C * fp + f0;
#pragma GCC unroll 2
            for (int64_t c = 0; c < C; c++) {
                WV uv, uv2;
                memcpy(&uv, up + c * fp, sizeof uv);
                memcpy(&uv2, up + c * fp + WVL, sizeof uv2);
                WFR_TILE(WFR_FMA2)
            }
            WFR_TILE(WFR_ST)
            WFR_TILE(WFR_ST2)
        }
#endif
        for (; f0 < fp; f0 += WVL) {
            WFR_TILE(WFR_ACC)
            const T *up = u + xi * C * fp + f0;
#pragma GCC unroll 4
            for (int64_t c = 0; c < C; c++) {
                WV uv;
                memcpy(&uv, up + c * fp, sizeof uv);
                WFR_TILE(WFR_FMA)
            }
            WFR_TILE(WFR_ST)
        }
    }
}
#ifdef WINO_BF16_PAIRS
/* M = V @ U of a fused block in bf16 pairs (nk_wino.u_bf's layouts) without
 * VDPBF16PS: a product of two bf16 is exact in float32, so one multiply-add
 * per element of a pair, the high (odd) one first, gives VDPBF16PS's bits
 * (nk_wino_fgemm_bf16), except for accumulators in the denormal range,
 * which the instruction flushes. */
#define WFR_FMAE(j)                                                                         \
    if (j < WINO_FR) {                                                                      \
        T vh_, vl_;                                                                         \
        WFN(wino_bf16_split1)(vr[(16 * j) * c2 + k], &vh_, &vl_);                          \
        a_##j += vh_ * uh;                                                                  \
        a_##j += vl_ * ul;                                                                  \
    }
static void WFN(wino_fgemm_bfe)(const uint32_t *vw, const uint32_t *uw, int64_t c2, int64_t fp,
                                void *mb)
{
    const int NP = 16; /* planes (WFR_ST) */
    for (int64_t xi = 0; xi < NP; xi++) {
        const uint32_t *vr = vw + xi * c2, *up = uw + xi * c2 * fp;
        T *mr_ = (T *)mb + xi * fp;
        const int64_t mst = NP * fp;
        for (int64_t f0 = 0; f0 < fp; f0 += WVL) {
            WFR_TILE(WFR_ACC)
            for (int64_t k = 0; k < c2; k++) {
                WV uh, ul;
                WFN(wino_bf16_split)(up + k * fp + f0, &uh, &ul);
                WFR_TILE(WFR_FMAE)
            }
            WFR_TILE(WFR_ST)
        }
    }
}
#undef WFR_FMAE
#endif
WAI void WFN(wino_fused_b)(const nk_wino *g, const T *src, const T *mask, const T *zero,
                           const T *u, const int64_t C, const int64_t F, const int64_t cp,
                           const int64_t fp, int64_t t0, int64_t cnt, T *restrict vb,
                           uint32_t *restrict vw, T *restrict mb, const T *bias, int act, T *y,
                           const int masked)
{
    const int64_t OH = g->oh, OW = g->ow;
    WFN(wsrc) ps[WINO_FR]; /* the block's patches */
    int left[WINO_FR];
    const nk_wtile p0 = nk_wtile_at(g, t0);
    {
        nk_wtile p = p0;
        for (int64_t i = 0; i < cnt; i++, nk_wtile_next(g, &p)) {
#if FB == 32
            if (masked >= 2)
                ps[i] = WFN(wino_src_up)(g, src, p);
            else
#endif
                ps[i] = WFN(wino_src)(g, src, mask, p, 2);
            left[i] = p.tw > 0;
        }
    }
#if FB == 32
    if (masked >= 2)
        WFN(wino_prefetch_up)(g, src, p0, cnt);
    else
#endif
        WFN(wino_prefetch)(g, src, mask, p0, cnt);
    WFN(wino_prefetch_y)(g, y, p0, cnt);
    for (int64_t c0 = 0; c0 < C; c0 += WVL) {
        const int64_t cn = C - c0 < WVL ? C - c0 : WVL;
        WV uu[16];
        for (int64_t i = 0; i < cnt; i++) {
            WFN(wino_rows)(&ps[i], zero, masked, c0, cn, i > 0 && left[i], NULL, uu);
#ifdef WINO_BF16_PAIRS
            if (vw) {
                WFN(wino_vstore_bf)(uu, vw + 16 * i * (cp / 2) + c0 / 2, cp / 2, g->bf_native);
                continue;
            }
#endif
            WFN(wino_vstore)(uu, vb + 16 * i * cp + c0, cp);
        }
    }
    if (vw)
        g->fgemm_bf(vw, g->u_bf, cp / 2, fp, mb);
    else
        WFN(wino_fgemm)(vb, u, C, cp, fp, mb, 16, 0);
    nk_wtile p = p0;
    for (int64_t j = 0; j < cnt; j++, nk_wtile_next(g, &p)) {
        const int64_t n = p.n, oh = 2 * p.th, ow = 2 * p.tw;
        const int rows = oh + 1 < OH ? 2 : 1, cols = ow + 1 < OW ? 2 : 1;
        const T *mp = mb + 16 * j * fp;
        for (int64_t f0 = 0; f0 < F; f0 += WVL) {
            const int64_t fn = F - f0 < WVL ? F - f0 : WVL;
            WV m[16], v[8], o[4];
#pragma GCC unroll 16
            for (int k = 0; k < 16; k++) memcpy(&m[k], mp + k * fp + f0, sizeof(WV));
#pragma GCC unroll 16
            for (int b = 0; b < 4; b++) {
                v[b] = m[b] + m[4 + b] + m[8 + b];
                v[4 + b] = m[4 + b] - m[8 + b] - m[12 + b];
            }
#pragma GCC unroll 16
            for (int a = 0; a < 2; a++) {
                o[2 * a] = v[4 * a] + v[4 * a + 1] + v[4 * a + 2];
                o[2 * a + 1] = v[4 * a + 1] - v[4 * a + 2] - v[4 * a + 3];
            }
            if (bias) {
                const WV bv = WFN(wld)(bias + f0, fn);
#pragma GCC unroll 16
                for (int k = 0; k < 4; k++) o[k] += bv;
            }
            if (act == NK_ACT_RELU) {
#pragma GCC unroll 16
                for (int k = 0; k < 4; k++) o[k] = (WV)((WVI)o[k] & ~(WVI)(o[k] < (T)0));
            }
            WFN(wino_store)(g, o, y, n, oh, ow, rows, cols, f0, fn);
        }
    }
}
/* wino_fused_b with C = CV and F = FV vectors constant, each its own
 * function (one body per function keeps each one's register allocation
 * and code layout apart; inlined together, adding shapes slowed the others) */
#define W2F_ARGS                                                                               \
    const nk_wino *g, const T *src, const T *mask, const T *zero, const T *u, int64_t t0,        \
        int64_t cnt, T *restrict vb, uint32_t *restrict vw, T *restrict mb, const T *bias,      \
        int act, T *y
#define W2F_FN(CV, FV)                                                                         \
    static __attribute__((noinline)) void WCAT(WFN(wino_fused_k), CV, FV)(W2F_ARGS)             \
    {                                                                                          \
        WFN(wino_fused_b)(g, src, NULL, zero, u, CV * WVL, FV * WVL, CV * WVL, FV * WVL, t0,     \
                          cnt, vb, vw, mb, bias, act, y, 0);                                   \
    }
W2F_FN(1, 1)
W2F_FN(1, 2)
W2F_FN(2, 1)
W2F_FN(2, 2)
W2F_FN(2, 4)
W2F_FN(4, 2)
W2F_FN(4, 4)
#if FB == 32 /* dX through a pooled gradient with its ReLU mask (nk_wino.up_i, up_m) */
#define W2U_FN(CV, FV)                                                                         \
    static __attribute__((noinline)) void WCAT(WFN(wino_fused_u), CV, FV)(W2F_ARGS)             \
    {                                                                                          \
        WFN(wino_fused_b)(g, src, NULL, zero, u, CV * WVL, FV * WVL, CV * WVL, FV * WVL, t0,     \
                          cnt, vb, vw, mb, bias, act, y, 3);                                   \
    }
W2U_FN(1, 1)
W2U_FN(1, 2)
W2U_FN(2, 1)
W2U_FN(2, 2)
W2U_FN(2, 4)
W2U_FN(4, 2)
W2U_FN(4, 4)
#undef W2U_FN
#endif
/* the channel counts of ResNet's stages and the default CNN's 32 -> 64
 * (forward; 64 -> 32 for its data gradient) constant; the others, and the
 * data gradient after a fused ReLU (mask), the generic body */
static void WFN(wino_fused)(const nk_wino *g, const T *src, const T *mask, const T *zero,
                            const T *u, int64_t cp, int64_t fp, int64_t t0, int64_t cnt,
                            T *restrict vb, uint32_t *restrict vw, T *restrict mb, const T *bias,
                            int act, T *y)
{
    const int64_t C = g->c, F = g->f;
    const int cv = C % WVL ? 0 : (int)(C / WVL), fv = F % WVL ? 0 : (int)(F / WVL);
#define W2F_CASE(CV, FV)                                                                       \
    if (cv == CV && fv == FV) {                                                                \
        WCAT(WFN(wino_fused_k), CV, FV)(g, src, mask, zero, u, t0, cnt, vb, vw, mb, bias, act, y); \
        return;                                                                                \
    }
#if FB == 32
    if (g->up_i) { /* through a pooled gradient (no mask array then) */
#define W2U_CASE(CV, FV)                                                                       \
    if (g->up_m && cv == CV && fv == FV) {                                                     \
        WCAT(WFN(wino_fused_u), CV, FV)(g, src, mask, zero, u, t0, cnt, vb, vw, mb, bias, act, y); \
        return;                                                                                \
    }
        W2U_CASE(1, 1)
        W2U_CASE(1, 2)
        W2U_CASE(2, 1)
        W2U_CASE(2, 2)
        W2U_CASE(2, 4)
        W2U_CASE(4, 2)
        W2U_CASE(4, 4)
#undef W2U_CASE
        WFN(wino_fused_b)(g, src, NULL, zero, u, C, F, cp, fp, t0, cnt, vb, vw, mb, bias, act, y,
                          g->up_m ? 3 : 2);
        return;
    }
#endif
    if (!mask) {
        W2F_CASE(1, 1)
        W2F_CASE(1, 2)
        W2F_CASE(2, 1)
        W2F_CASE(2, 2)
        W2F_CASE(2, 4)
        W2F_CASE(4, 2)
        W2F_CASE(4, 4)
    }
    WFN(wino_fused_b)(g, src, mask, zero, u, C, F, cp, fp, t0, cnt, vb, vw, mb, bias, act, y,
                      mask != NULL);
#undef W2F_CASE
}
#undef W2F_FN
#undef W2F_ARGS
#if FB == 32 /* float32: F(4x4, 3x3) on the fused path */
#include "nk_conv_wino4.h"
#endif
#undef WFR_ACC
#undef WFR_FMA
#undef WFR_ACC2
#undef WFR_FMA2
#undef WFR_ST2
#undef WFR_ST
#undef WFR_TILE

#if FB == 32 /* float32 */
#include "nk_conv_wino_wgrad.h"
#include "nk_conv_wino4_wgrad.h"
#endif

#undef WINO_BF16_PAIRS
#undef WINO_PF_LEVEL
#undef WAI
#undef WVL
#undef WV
#undef WVI
#undef WFN
#undef WCAT
#undef WCAT_

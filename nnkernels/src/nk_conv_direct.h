/* Direct convolution kernels, included by nk_conv.c once per (ISA, dtype)
 * with T, S (s|d), ISA and FB (channels per register block: two 64-byte
 * vectors) defined, inside a `#pragma GCC target` region for the ISA.
 * Plain C loops over fixed-width channel blocks: the compiler vectorises
 * them for the target, so every ISA runs the same algorithm. */
#define DCAT_(a, b, c) a##_##b##_##c
#define DCAT(a, b, c) DCAT_(a, b, c)
#define DFN(name) DCAT(name, S, ISA)

/* y = act(bias + conv(x, w)); parallel over output rows (n, oh). */
static void DFN(direct_fwd)(const nk_conv_shape *s, const T *x, const T *w,
                            const T *bias, int act, T *y, int nt)
{
    const int64_t H = s->h, W = s->w, C = s->c, F = s->f, KH = s->kh, KW = s->kw;
    const int64_t OH = s->oh, OW = s->ow, rows = s->n * s->oh;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / OH, oh = r - n * OH;
        const T *xn = x + n * H * W * C;
        for (int64_t ow = 0; ow < OW; ow++) {
            T *yp = y + (r * OW + ow) * F;
            for (int64_t f0 = 0; f0 < F; f0 += FB) {
                const int64_t fb = F - f0 < FB ? F - f0 : FB;
                T acc[FB];
                for (int j = 0; j < FB; j++) acc[j] = (T)0;
                for (int64_t kh = 0; kh < KH; kh++) {
                    const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
                    if ((uint64_t)ih >= (uint64_t)H) continue;
                    for (int64_t kw = 0; kw < KW; kw++) {
                        const int64_t iw = ow * s->sw - s->pl + kw * s->dw;
                        if ((uint64_t)iw >= (uint64_t)W) continue;
                        const T *xp = xn + (ih * W + iw) * C;
                        const T *wp = w + (kh * KW + kw) * C * F + f0;
                        if (fb == FB) {
                            for (int64_t c = 0; c < C; c++) {
                                const T xv = xp[c];
#pragma GCC unroll 32
                                for (int j = 0; j < FB; j++) acc[j] += xv * wp[c * F + j];
                            }
                        } else {
                            for (int64_t c = 0; c < C; c++) {
                                const T xv = xp[c];
                                for (int j = 0; j < fb; j++) acc[j] += xv * wp[c * F + j];
                            }
                        }
                    }
                }
                for (int j = 0; j < fb; j++) {
                    T v = acc[j];
                    if (bias) v += bias[f0 + j];
                    if (act == NK_ACT_RELU) v = v < (T)0 ? (T)0 : v;
                    yp[f0 + j] = v;
                }
            }
        }
    }
}

/* dx[n,h,w,c] = sum over the outputs (oh, ow, kh, kw) that read (h, w) of
 * dot(w[kh,kw,c,:], dz[n,oh,ow,:]); gather form: each dx element written
 * once, parallel over input rows (n, h), no zeroing pass. */
static void DFN(direct_dgrad)(const nk_conv_shape *s, const T *dy, const T *ymask,
                              const T *w, T *dx, int nt)
{
    const int64_t H = s->h, W = s->w, C = s->c, F = s->f, KH = s->kh, KW = s->kw;
    const int64_t OH = s->oh, OW = s->ow, rows = s->n * s->h;
    const int64_t sh = s->sh, sw = s->sw;
    (void)nt;
#ifdef _OPENMP
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
#endif
    for (int64_t r = 0; r < rows; r++) {
        const int64_t n = r / H, h = r - n * H;
        for (int64_t iw = 0; iw < W; iw++) {
            T *dxp = dx + (r * W + iw) * C;
            for (int64_t c = 0; c < C; c++) {
                T lanes[FB];
                for (int j = 0; j < FB; j++) lanes[j] = (T)0;
                for (int64_t kh = 0; kh < KH; kh++) {
                    const int64_t th = h + s->pt - kh * s->dh;
                    if (th < 0) break; /* th decreases with kh */
                    const int64_t oh = th / sh;
                    if (oh * sh != th || oh >= OH) continue;
                    for (int64_t kw = 0; kw < KW; kw++) {
                        const int64_t tw = iw + s->pl - kw * s->dw;
                        if (tw < 0) break;
                        const int64_t ow = tw / sw;
                        if (ow * sw != tw || ow >= OW) continue;
                        const int64_t o = ((n * OH + oh) * OW + ow) * F;
                        const T *dzp = dy + o;
                        const T *mp = ymask ? ymask + o : NULL;
                        const T *wp = w + ((kh * KW + kw) * C + c) * F;
                        int64_t f = 0;
                        /* d is loaded unconditionally: with `mp > 0 ? dzp[f+j] : 0`
                         * GCC 12 mis-vectorised this loop for AVX2/AVX-512 */
                        if (mp) {
                            for (; f + FB <= F; f += FB) {
#pragma GCC unroll 32
                                for (int j = 0; j < FB; j++) {
                                    const T d = dzp[f + j];
                                    lanes[j] += wp[f + j] * (mp[f + j] > (T)0 ? d : (T)0);
                                }
                            }
                            for (int j = 0; f + j < F; j++) {
                                const T d = dzp[f + j];
                                lanes[j] += wp[f + j] * (mp[f + j] > (T)0 ? d : (T)0);
                            }
                        } else {
                            for (; f + FB <= F; f += FB)
#pragma GCC unroll 32
                                for (int j = 0; j < FB; j++) lanes[j] += wp[f + j] * dzp[f + j];
                            for (int j = 0; f + j < F; j++) lanes[j] += wp[f + j] * dzp[f + j];
                        }
                    }
                }
                /* fixed-order lane reduction (pairwise) */
                for (int half = FB / 2; half > 0; half /= 2)
                    for (int j = 0; j < half; j++) lanes[j] += lanes[j + half];
                dxp[c] = lanes[0];
            }
        }
    }
}

/* dW, db over images [n0, n1) into part_w (KH*KW*C*F) and part_b (F),
 * overwritten.  dzb: F scratch elements. */
static void DFN(direct_wgrad_block)(const nk_conv_shape *s, const T *dy, const T *ymask,
                                    const T *x, int64_t n0, int64_t n1,
                                    T *part_w, T *part_b, T *dzb)
{
    const int64_t H = s->h, W = s->w, C = s->c, F = s->f, KH = s->kh, KW = s->kw;
    const int64_t OH = s->oh, OW = s->ow;
    for (int64_t e = 0; e < KH * KW * C * F; e++) part_w[e] = (T)0;
    if (part_b)
        for (int64_t f = 0; f < F; f++) part_b[f] = (T)0;
    for (int64_t n = n0; n < n1; n++) {
        const T *xn = x + n * H * W * C;
        for (int64_t oh = 0; oh < OH; oh++)
            for (int64_t ow = 0; ow < OW; ow++) {
                const int64_t o = ((n * OH + oh) * OW + ow) * F;
                const T *dzp = dy + o;
                if (ymask) {
                    const T *mp = ymask + o;
                    for (int64_t f = 0; f < F; f++) {
                        const T d = dzp[f];
                        dzb[f] = mp[f] > (T)0 ? d : (T)0;
                    }
                    dzp = dzb;
                }
                if (part_b)
                    for (int64_t f = 0; f < F; f++) part_b[f] += dzp[f];
                for (int64_t kh = 0; kh < KH; kh++) {
                    const int64_t ih = oh * s->sh - s->pt + kh * s->dh;
                    if ((uint64_t)ih >= (uint64_t)H) continue;
                    for (int64_t kw = 0; kw < KW; kw++) {
                        const int64_t iw = ow * s->sw - s->pl + kw * s->dw;
                        if ((uint64_t)iw >= (uint64_t)W) continue;
                        const T *xp = xn + (ih * W + iw) * C;
                        T *pw = part_w + (kh * KW + kw) * C * F;
                        for (int64_t c = 0; c < C; c++) {
                            const T xv = xp[c];
                            T *restrict pr = pw + c * F;
                            int64_t f = 0;
                            for (; f + FB <= F; f += FB)
#pragma GCC unroll 32
                                for (int j = 0; j < FB; j++) pr[f + j] += xv * dzp[f + j];
                            for (; f < F; f++) pr[f] += xv * dzp[f];
                        }
                    }
                }
            }
    }
}

#undef DCAT_
#undef DCAT
#undef DFN

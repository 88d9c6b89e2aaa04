/* Max pooling (NHWC) with int32 argmax indices h*W + w of the winner in its
 * (H, W) plane.  Only real input positions take part (the padding never
 * wins); the first maximum in window order (row-major) wins ties and the
 * first NaN wins over numbers, as on the CPU. */
#include "nk_common.cuh"

template <typename T>
__global__ void nk_maxpool_fwd(const T *__restrict__ x_nhwc, T *__restrict__ y_nhwc,
                               int *__restrict__ idx_nhwc, int n, int h, int w, int c, int ph,
                               int pw, int sh, int sw, int pt, int pl, int oh, int ow)
{
    const nk_i64 total = (nk_i64)n * oh * ow * c;
    NK_LOOP(e, total) {
        int t = (int)e;
        const int ci = t % c;
        t /= c;
        const int ox = t % ow;
        t /= ow;
        const int oy = t % oh;
        const int b = t / oh;
        const int h0 = oy * sh - pt, w0 = ox * sw - pl;
        const int hs = h0 > 0 ? h0 : 0, he = h0 + ph < h ? h0 + ph : h;
        const int ws = w0 > 0 ? w0 : 0, we = w0 + pw < w ? w0 + pw : w;
        const T *xb = x_nhwc + (nk_i64)b * h * w * c + ci;
        T best = nk_neg_inf<T>();
        int arg = -1;
        for (int yy = hs; yy < he; yy++)
            for (int xx = ws; xx < we; xx++) {
                const int p = yy * w + xx;
                const T v = xb[(nk_i64)p * c];
                if (arg < 0 || nk_beats(v, best)) {
                    best = v;
                    arg = p;
                }
            }
        y_nhwc[e] = best;
        idx_nhwc[e] = arg;
    }
}

/* Gather backward: each dx element sums, in output order, dy of the
 * windows that contain it and chose it. */
template <typename T>
__global__ void nk_maxpool_bwd(const T *__restrict__ dy_nhwc, const int *__restrict__ idx_nhwc,
                               T *__restrict__ dx_nhwc, int n, int h, int w, int c, int ph,
                               int pw, int sh, int sw, int pt, int pl, int oh, int ow)
{
    const nk_i64 total = (nk_i64)n * h * w * c;
    NK_LOOP(e, total) {
        int t = (int)e;
        const int ci = t % c;
        t /= c;
        const int x = t % w;
        t /= w;
        const int y = t % h;
        const int b = t / h;
        const int p = y * w + x;
        /* outputs whose window [o*s - pad, o*s - pad + k) contains y / x */
        const int ay = y + pt - ph + 1, ax = x + pl - pw + 1;
        const int oy0 = ay <= 0 ? 0 : (ay + sh - 1) / sh;
        const int ox0 = ax <= 0 ? 0 : (ax + sw - 1) / sw;
        int oy1 = (y + pt) / sh, ox1 = (x + pl) / sw;
        if (oy1 > oh - 1) oy1 = oh - 1;
        if (ox1 > ow - 1) ox1 = ow - 1;
        double acc = 0.0;
        for (int oy = oy0; oy <= oy1; oy++)
            for (int ox = ox0; ox <= ox1; ox++) {
                const nk_i64 o = (((nk_i64)b * oh + oy) * ow + ox) * c + ci;
                if (idx_nhwc[o] == p) acc += (double)dy_nhwc[o];
            }
        dx_nhwc[e] = (T)acc;
    }
}

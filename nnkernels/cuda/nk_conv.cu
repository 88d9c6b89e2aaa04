/* Convolution helpers (NHWC), bias/activation epilogues, ReLU backward and
 * per-channel column sums.  The GEMMs themselves go to cuBLAS.
 *
 * cols_pk: (P, K) with P = N*OH*OW output pixels and K = KH*KW*C taps, a row
 * (kh, kw, c) in C order, so that cols @ w_kf ((KH*KW*C, F)) lands in NHWC.
 */
#include "nk_common.cuh"

/* One thread per cols element: cols[p, (i*KW + j)*C + c] = x[b, oy*sh - pt +
 * i*dh, ox*sw - pl + j*dw, c] or 0 in the padding.  Adjacent threads take
 * adjacent channels: coalesced reads and writes. */
template <typename T>
__global__ void nk_im2col(const T *__restrict__ x_nhwc, T *__restrict__ cols_pk, int n, int h,
                          int w, int c, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
                          int pl, int oh, int ow)
{
    const nk_i64 total = (nk_i64)n * oh * ow * kh * kw * c;
    NK_LOOP(e, total) {
        int t = (int)e;
        const int ci = t % c;
        t /= c;
        const int j = t % kw;
        t /= kw;
        const int i = t % kh;
        t /= kh;
        const int ox = t % ow;
        t /= ow;
        const int oy = t % oh;
        const int b = t / oh;
        const int hy = oy * sh - pt + i * dh, wx = ox * sw - pl + j * dw;
        T v = (T)0;
        if ((unsigned)hy < (unsigned)h && (unsigned)wx < (unsigned)w)
            v = x_nhwc[(((nk_i64)b * h + hy) * w + wx) * c + ci];
        cols_pk[e] = v;
    }
}

/* Gather form of col2im: one thread per dx element sums, in tap order, the
 * dcols entries that im2col copied it to.  No atomics: deterministic. */
template <typename T>
__global__ void nk_col2im(const T *__restrict__ dcols_pk, T *__restrict__ dx_nhwc, int n, int h,
                          int w, int c, int kh, int kw, int sh, int sw, int dh, int dw, int pt,
                          int pl, int oh, int ow)
{
    const nk_i64 total = (nk_i64)n * h * w * c;
    const int k = kh * kw * c;
    NK_LOOP(e, total) {
        int t = (int)e;
        const int ci = t % c;
        t /= c;
        const int x = t % w;
        t /= w;
        const int y = t % h;
        const int b = t / h;
        double acc = 0.0;
        for (int i = 0; i < kh; i++) {
            const int ty = y + pt - i * dh;
            if (ty < 0 || ty % sh) continue;
            const int oy = ty / sh;
            if (oy >= oh) continue;
            for (int j = 0; j < kw; j++) {
                const int tx = x + pl - j * dw;
                if (tx < 0 || tx % sw) continue;
                const int ox = tx / sw;
                if (ox >= ow) continue;
                const nk_i64 p = ((nk_i64)b * oh + oy) * ow + ox;
                acc += (double)dcols_pk[p * k + (i * kw + j) * c + ci];
            }
        }
        dx_nhwc[e] = (T)acc;
    }
}

/* y[r, j] = act(y[r, j] + b[j]) in place on a (rows, c) array; b may be
 * NULL; act 0: identity, 1: relu. */
template <typename T>
__global__ void nk_bias_act(T *__restrict__ y, const T *__restrict__ b, nk_i64 total, int c,
                            int act)
{
    NK_LOOP(e, total) {
        T v = y[e];
        if (b) v += b[(int)(e % c)];
        if (act == 1) v = v <= (T)0 ? (T)0 : v;
        y[e] = v;
    }
}

/* y = relu(x); y may be x. */
template <typename T>
__global__ void nk_relu(const T *x, T *y, nk_i64 total)
{
    NK_LOOP(e, total) {
        const T v = x[e];
        y[e] = v <= (T)0 ? (T)0 : v;
    }
}

/* dx = dy where y > 0, else 0; dx may be dy. */
template <typename T>
__global__ void nk_relu_backward(const T *dy, const T *__restrict__ y, T *dx, nk_i64 total)
{
    NK_LOOP(e, total) {
        const T g = dy[e];
        dx[e] = y[e] > (T)0 ? g : (T)0;
    }
}

/* Per-channel sums of a (m, c) array over row blocks of bs rows: block
 * (gx, gy) with 32 x 8 threads covers channels gx*32 .. gx*32+31 and rows
 * [gy*bs, min(gy*bs + bs, m)); part[(gy*2 + 0)*c + j] and part[(gy*2 + 1)*c
 * + j] receive its two sums (in double), each in a fixed order.
 *   MODE 0: s += a                         (bias gradient: a = dz)
 *   MODE 1: s += a - k, q += (a - k)^2     (batch norm forward: a = x,
 *                                           shift k = the first row of a)
 *   MODE 2: s += a, q += a * (b - mu)      (batch norm backward: a = dy,
 *                                           b = x, mu = save_mean) */
template <typename T, int MODE>
__global__ void nk_colsums(const T *__restrict__ a_mc, const T *__restrict__ b_mc,
                           const T *__restrict__ mu, nk_i64 m, int c, nk_i64 bs,
                           double *__restrict__ part)
{
    __shared__ double ss[8][33], sq[8][33];
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int j = blockIdx.x * 32 + tx;
    const nk_i64 r0 = (nk_i64)blockIdx.y * bs;
    const nk_i64 r1 = r0 + bs < m ? r0 + bs : m;
    double s = 0.0, q = 0.0;
    if (j < c) {
        double k = 0.0;
        if (MODE == 1) k = (double)a_mc[j];
        if (MODE == 2) k = (double)mu[j];
        for (nk_i64 r = r0 + ty; r < r1; r += 8) {
            const double v = (double)a_mc[r * c + j];
            if (MODE == 0) {
                s += v;
            } else if (MODE == 1) {
                const double d = v - k;
                s += d;
                q += d * d;
            } else {
                s += v;
                q += v * ((double)b_mc[r * c + j] - k);
            }
        }
    }
    ss[ty][tx] = s;
    sq[ty][tx] = q;
    __syncthreads();
    if (ty == 0 && j < c) {
        for (int t = 1; t < 8; t++) {
            s += ss[t][tx];
            q += sq[t][tx];
        }
        part[((nk_i64)blockIdx.y * 2) * c + j] = s;
        part[((nk_i64)blockIdx.y * 2 + 1) * c + j] = q;
    }
}

/* out[j] = sum over the nb blocks of part[(b*2)*c + j], in block order. */
template <typename T>
__global__ void nk_colsum_finish(const double *__restrict__ part, int nb, int c,
                                 T *__restrict__ out)
{
    NK_LOOP(j, c) {
        double s = 0.0;
        for (int b = 0; b < nb; b++) s += part[(nk_i64)b * 2 * c + j];
        out[j] = (T)s;
    }
}

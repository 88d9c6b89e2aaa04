/* Training kernels: fused softmax cross-entropy, deterministic sums,
 * optimizer updates (Keras 3 formulas, the operation order of
 * nnkernels/src/nk_train.c) and the batch-norm pieces around nk_colsums. */
#include "nk_common.cuh"

#define NK_XENT_EPS 1e-7

/* Warp-wide sum, fixed butterfly order (every lane gets the same bits). */
__device__ __forceinline__ double nk_warp_sum(double v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

/* Warp-wide argmax with nk_beats semantics: each lane scans its own columns
 * in increasing order, then lanes merge; ties (and NaN against NaN) go to
 * the smaller index, so the result is that of one sequential scan. */
template <typename T>
__device__ __forceinline__ int nk_warp_argmax(const T *row, int k, int lane)
{
    T best = (T)0;
    int am = -1;
    for (int j = lane; j < k; j += 32) {
        const T v = row[j];
        if (am < 0 || nk_beats(v, best)) {
            best = v;
            am = j;
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        const T ov = __shfl_xor_sync(0xffffffffu, best, o);
        const int oa = __shfl_xor_sync(0xffffffffu, am, o);
        bool take;
        if (oa < 0) take = false;
        else if (am < 0) take = true;
        else if (nk_beats(ov, best)) take = true;
        else if (nk_beats(best, ov)) take = false;
        else take = oa < am; /* equal, or both NaN */
        if (take) {
            best = ov;
            am = oa;
        }
    }
    return am;
}

/* One warp per row of logits_nk ((n, k)).  labels: int32 (kind 1), int64
 * (kind 2) class ids, or (kind 0) a float (n, k) target `t_nk`.  Writes
 * rows[i] = the row's loss, rows[n + i] = 1 if argmax matches, rows[2n + i]
 * = 1 if the label is out of range (its loss is then NaN and its gradient
 * row NaN); dl / pr (may be NULL, may alias x) as in Ops.softmax_xent. */
template <typename T>
__global__ void nk_softmax_xent(const T *x_nk, const void *labels, const T *t_nk, int label_kind,
                                int n, int k, int from_logits, double gs, T *dl_nk, T *pr_nk,
                                double *rows)
{
    const int lane = threadIdx.x & 31;
    const nk_i64 warp = ((nk_i64)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    const nk_i64 nwarps = ((nk_i64)gridDim.x * blockDim.x) >> 5;
    /* the clip bounds in T, as Keras clips in the tensor's dtype (and the
     * CPU kernel): float32's 1 - 1e-7 is 0.99999988 */
    const double lo = (double)(T)NK_XENT_EPS, hi = (double)(T)(1.0 - NK_XENT_EPS);
    for (nk_i64 i = warp; i < n; i += nwarps) {
        const T *x = x_nk + i * k;
        const T *t = label_kind == 0 ? t_nk + i * k : (const T *)0;
        nk_i64 lab = -1;
        if (label_kind == 1) lab = ((const int *)labels)[i];
        else if (label_kind == 2) lab = ((const long long *)labels)[i];
        const bool bad = label_kind != 0 && (lab < 0 || lab >= k);
        const int am = nk_warp_argmax(x, k, lane);
        const int want = t ? nk_warp_argmax(t, k, lane) : (int)lab;
        double loss;
        double R = 0.0, S = 0.0, mx = 0.0, inv = 0.0;
        if (from_logits) {
            mx = (double)x[am];
            double s = 0.0, st = 0.0, stx = 0.0;
            for (int j = lane; j < k; j += 32) {
                const double z = (double)x[j] - mx;
                s += exp(z);
                if (t) {
                    const double tj = (double)t[j];
                    st += tj;
                    if (tj != 0.0) stx += tj * z;
                }
            }
            s = nk_warp_sum(s);
            const double ls = log(s);
            inv = 1.0 / s;
            if (t) loss = ls * nk_warp_sum(st) - nk_warp_sum(stx);
            else loss = bad ? nk_nan() : ls - ((double)x[lab] - mx);
        } else {
            for (int j = lane; j < k; j += 32) S += (double)x[j];
            S = nk_warp_sum(S);
            inv = 1.0 / S;
            double l = 0.0;
            const int j0 = t ? lane : (lane == 0 && !bad ? (int)lab : k);
            const int step = t ? 32 : k + 1;
            for (int j = j0; j < k; j += step) {
                const double tj = t ? (double)t[j] : 1.0;
                const double q = (double)x[j] * inv;
                const double qc = q < lo ? lo : (q > hi ? hi : q);
                if (tj != 0.0) l -= tj * log(qc);
                if (q >= lo && q <= hi) R += tj;
            }
            loss = bad ? nk_nan() : nk_warp_sum(l);
            R = nk_warp_sum(R);
        }
        if (dl_nk || pr_nk) {
            for (int j = lane; j < k; j += 32) {
                const double tj = t ? (double)t[j] : (double)(j == lab);
                double p, g;
                if (from_logits) {
                    p = exp((double)x[j] - mx) * inv;
                    g = (p - tj) * gs;
                } else {
                    p = (double)x[j] * inv;
                    const double r = (p >= lo && p <= hi && tj != 0.0) ? tj / p : 0.0;
                    g = (R - r) * inv * gs;
                }
                if (bad) g = nk_nan();
                if (pr_nk) pr_nk[i * k + j] = (T)p;
                if (dl_nk) dl_nk[i * k + j] = (T)g;
            }
        }
        if (lane == 0) {
            rows[i] = loss;
            rows[n + i] = (!bad && am == want) ? 1.0 : 0.0;
            rows[2 * (nk_i64)n + i] = bad ? 1.0 : 0.0;
        }
    }
}

/* out[r] (+)= sum of v[r*n .. r*n + n) for r < nv: one block of
 * NK_RED_THREADS threads, fixed order. */
extern "C" __global__ void nk_sum_rows(const double *__restrict__ v, nk_i64 n, int nv, double *out,
                            int accumulate)
{
    __shared__ double sh[NK_RED_THREADS];
    for (int r = 0; r < nv; r++) {
        double s = 0.0;
        for (nk_i64 i = threadIdx.x; i < n; i += NK_RED_THREADS) s += v[(nk_i64)r * n + i];
        s = nk_block_sum(s, sh);
        if (threadIdx.x == 0) out[r] = accumulate ? out[r] + s : s;
    }
}

/* part[b] = sum of x[i]^2 over [b*bs, min(b*bs + bs, n)), in double; one
 * block of NK_RED_THREADS threads per b. */
template <typename T>
__global__ void nk_sumsq_part(const T *__restrict__ x, nk_i64 n, nk_i64 bs, double *part)
{
    __shared__ double sh[NK_RED_THREADS];
    const nk_i64 e0 = (nk_i64)blockIdx.x * bs;
    const nk_i64 e1 = e0 + bs < n ? e0 + bs : n;
    double s = 0.0;
    for (nk_i64 e = e0 + threadIdx.x; e < e1; e += NK_RED_THREADS) {
        const double v = (double)x[e];
        s += v * v;
    }
    s = nk_block_sum(s, sh);
    if (threadIdx.x == 0) part[blockIdx.x] = s;
}

/* ---------------------------------------------------------- optimizers -- */

template <typename T>
__global__ void nk_sgd(T *__restrict__ p, const T *__restrict__ g, T *__restrict__ m, nk_i64 n,
                       T lr, T mom, int nesterov)
{
    NK_LOOP(i, n) {
        if (!m) {
            p[i] -= g[i] * lr;
        } else if (nesterov) {
            const T gl = g[i] * lr;
            const T mi = m[i] * mom - gl;
            m[i] = mi;
            p[i] += mi * mom - gl;
        } else {
            const T mi = m[i] * mom - g[i] * lr;
            m[i] = mi;
            p[i] += mi;
        }
    }
}

/* alpha = lr * sqrt(1 - beta_2**t) / (1 - beta_1**t) (host, in double) */
template <typename T>
__global__ void nk_adam(T *__restrict__ p, const T *__restrict__ g, T *__restrict__ m,
                        T *__restrict__ v, nk_i64 n, T alpha, T omb1, T omb2, T eps)
{
    NK_LOOP(i, n) {
        const T gi = g[i];
        const T mi = m[i] + (gi - m[i]) * omb1;
        const T vi = v[i] + (gi * gi - v[i]) * omb2;
        m[i] = mi;
        v[i] = vi;
        p[i] -= (mi * alpha) / (nk_sqrt(vi) + eps);
    }
}

/* m (momentum) and mg (centered) may be NULL. */
template <typename T>
__global__ void nk_rmsprop(T *__restrict__ p, const T *__restrict__ g, T *__restrict__ v,
                           T *__restrict__ m, T *__restrict__ mg, nk_i64 n, T lr, T rho, T omr,
                           T eps, T mom)
{
    NK_LOOP(i, n) {
        const T gi = g[i];
        const T vi = rho * v[i] + omr * (gi * gi);
        v[i] = vi;
        T denom = vi + eps;
        if (mg) {
            const T ai = rho * mg[i] + omr * gi;
            mg[i] = ai;
            denom = vi - ai * ai + eps;
        }
        const T inc = (lr * gi) / nk_sqrt(denom);
        if (m) {
            const T mi = mom * m[i] + inc;
            m[i] = mi;
            p[i] -= mi;
        } else {
            p[i] -= inc;
        }
    }
}

template <typename T>
__global__ void nk_adadelta(T *__restrict__ p, const T *__restrict__ g, T *__restrict__ ag,
                            T *__restrict__ ad, nk_i64 n, T lr, T rho, T omr, T eps)
{
    NK_LOOP(i, n) {
        const T gi = g[i];
        const T agi = rho * ag[i] + omr * (gi * gi);
        ag[i] = agi;
        const T delta = -((nk_sqrt(ad[i] + eps) * gi) / nk_sqrt(agi + eps));
        ad[i] = rho * ad[i] + omr * (delta * delta);
        p[i] += lr * delta;
    }
}

/* ---------------------------------------------------------- batch norm -- */

/* Training statistics from nk_colsums<T, 1> partials (nb blocks): one thread
 * per channel.  Writes coef = (mu, sc, sh) as 3 x c of T for nk_bn_apply,
 * save_mean / save_invstd and updates the moving statistics (NULL: skip). */
template <typename T>
__global__ void nk_bn_stats(const double *__restrict__ part, int nb, const T *__restrict__ x_mc,
                            nk_i64 m, int c, const T *gamma, const T *beta, double eps,
                            double momentum, T *moving_mean, T *moving_var, T *save_mean,
                            T *save_invstd, T *coef)
{
    NK_LOOP(jj, c) {
        const int j = (int)jj;
        double s = 0.0, q = 0.0;
        for (int b = 0; b < nb; b++) {
            s += part[(nk_i64)b * 2 * c + j];
            q += part[((nk_i64)b * 2 + 1) * c + j];
        }
        const double dm = (double)m;
        const double mean = (double)x_mc[j] + s / dm;
        double var = (q - s * (s / dm)) / dm;
        if (var < 0.0) var = 0.0;
        const double invstd = 1.0 / sqrt(var + eps);
        const double gj = gamma ? (double)gamma[j] : 1.0;
        coef[j] = (T)mean;
        coef[c + j] = (T)(gj * invstd);
        coef[2 * c + j] = beta ? beta[j] : (T)0;
        if (save_mean) save_mean[j] = (T)mean;
        if (save_invstd) save_invstd[j] = (T)invstd;
        if (moving_mean) moving_mean[j] = (T)((double)moving_mean[j] * momentum + mean * (1.0 - momentum));
        if (moving_var) moving_var[j] = (T)((double)moving_var[j] * momentum + var * (1.0 - momentum));
    }
}

/* Inference coefficients from the moving statistics. */
template <typename T>
__global__ void nk_bn_infer_coef(const T *gamma, const T *beta, const T *moving_mean,
                                 const T *moving_var, int c, double eps, T *coef)
{
    NK_LOOP(jj, c) {
        const int j = (int)jj;
        const double is = 1.0 / sqrt((double)moving_var[j] + eps);
        coef[j] = moving_mean[j];
        coef[c + j] = (T)((gamma ? (double)gamma[j] : 1.0) * is);
        coef[2 * c + j] = beta ? beta[j] : (T)0;
    }
}

/* y = (x - mu) * sc + sh per channel (coef = mu, sc, sh); y may be x. */
template <typename T>
__global__ void nk_bn_apply(const T *x, T *y, nk_i64 total, int c, const T *__restrict__ coef)
{
    NK_LOOP(e, total) {
        const int j = (int)(e % c);
        y[e] = (x[e] - coef[j]) * coef[c + j] + coef[2 * c + j];
    }
}

/* Backward coefficients from nk_colsums<T, 2> partials: dbeta, dgamma and
 * coef = (a, b, e) with dx = a*(dy - e) + b*(x - mu). */
template <typename T>
__global__ void nk_bn_bwd_coef(const double *__restrict__ part, int nb, nk_i64 m, int c,
                               const T *gamma, const T *save_invstd, T *dgamma, T *dbeta, T *coef)
{
    NK_LOOP(jj, c) {
        const int j = (int)jj;
        double sd = 0.0, sx = 0.0;
        for (int b = 0; b < nb; b++) {
            sd += part[(nk_i64)b * 2 * c + j];
            sx += part[((nk_i64)b * 2 + 1) * c + j];
        }
        const double dm = (double)m;
        const double is = (double)save_invstd[j];
        const double gj = gamma ? (double)gamma[j] : 1.0;
        const double dg = sx * is;
        if (dbeta) dbeta[j] = (T)sd;
        if (dgamma) dgamma[j] = (T)dg;
        const double gi = gj * is;
        coef[j] = (T)gi;
        coef[c + j] = (T)(-gi * is * dg / dm);
        coef[2 * c + j] = (T)(sd / dm);
    }
}

/* dx = a*(dy - e) + b*(x - mu); dx may be dy. */
template <typename T>
__global__ void nk_bn_dx(const T *dy, const T *__restrict__ x, T *dx, nk_i64 total, int c,
                         const T *__restrict__ mu, const T *__restrict__ coef)
{
    NK_LOOP(e, total) {
        const int j = (int)(e % c);
        dx[e] = coef[j] * (dy[e] - coef[2 * c + j]) + coef[c + j] * (x[e] - mu[j]);
    }
}

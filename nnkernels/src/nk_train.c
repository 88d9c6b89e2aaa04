/* Training kernels: softmax cross-entropy (loss, accuracy count, gradient),
 * optimizer updates (SGD, Adam, RMSprop, Adadelta), sum of squares, batch
 * normalisation forward/backward (with fused residual-add / ReLU
 * epilogues).  See nk_train.h.
 *
 * One plain-C body per dtype (macros below), auto-vectorised by -O3 (the
 * build passes -fno-math-errno so that sqrt vectorises).  These kernels are
 * memory bound (one pass over the arrays) and compiled for the build's
 * baseline only, so the results are the same on every ISA path.  The
 * exception is batch normalisation's row loops (reduction and write
 * passes, nk_bn_body.h), compiled once per ISA path in nk_bn_kern.c with
 * floating-point contraction off and picked here at run time: bitwise the
 * same results on every path as well (but for NaN signs/payloads, see
 * nk_train.h).
 *
 * Threads: fixed blocks, handed to OpenMP threads; a reduction combines the
 * block sums in block order, so results do not depend on the thread count.
 */
#include <math.h>
#include <string.h>
#include "nk_internal.h"
#include "nk_train.h"
#include "nk_bn_kern.h"
#ifdef _OPENMP
#include <omp.h>
#endif

/* Most blocks a reduction is split into (block sums live on the stack). */
#define NK_TR_MAXBLK 256
/* Batch norm keeps nb x 2 x c double partial sums: fewer, larger blocks. */
#define NK_BN_MAXBLK 64

/* Split [0, n) into nb <= maxblk blocks of bs items (bs a multiple of
 * align, at least min_bs): a function of n only. */
static void tr_blocks(int64_t n, int64_t min_bs, int64_t align, int64_t maxblk, int64_t *nb,
                      int64_t *bs)
{
    int64_t b = min_bs < 1 ? 1 : min_bs;
    if ((n + b - 1) / b > maxblk) b = (n + maxblk - 1) / maxblk;
    b = (b + align - 1) / align * align;
    *bs = b;
    *nb = n > 0 ? (n + b - 1) / b : 0;
}

/* ============================================== softmax cross-entropy == */

int64_t nk_labels_first_bad(int64_t n, const void *labels, int label_kind, int64_t k)
{
    if (label_kind == NK_LABELS_I32) {
        const int32_t *l = (const int32_t *)labels;
        for (int64_t i = 0; i < n; i++)
            if ((uint64_t)(int64_t)l[i] >= (uint64_t)k) return i;
    } else if (label_kind == NK_LABELS_I64) {
        const int64_t *l = (const int64_t *)labels;
        for (int64_t i = 0; i < n; i++)
            if ((uint64_t)l[i] >= (uint64_t)k) return i;
    }
    return -1;
}

/* Keras' epsilon for probabilities (from_logits = False). */
#define NK_XENT_EPS 1e-7

/* Per-row kernels.  `lab` >= 0: sparse class id; else `t` is the target row.
 * Returns the row's loss; *hit = argmax(x) == label.  The row of x is read
 * completely (max, sums, x[lab]) before dl / pr (which may be x) are
 * written, and the write loop reads x[j] before writing index j.
 *
 * argmax: `!(v <= best) && best == best` -- v > best, or v is NaN and best is
 * not: the first maximum wins, the first NaN wins over numbers (numpy). */
#define NK_XENT_BODY(T, SUF)                                                             \
    static inline int64_t argmax_##SUF(const T *x, int64_t k)                            \
    {                                                                                    \
        int64_t am = 0;                                                                  \
        T best = x[0];                                                                   \
        for (int64_t j = 1; j < k; j++) {                                                \
            const T v = x[j];                                                            \
            if (!(v <= best) && best == best) {                                          \
                best = v;                                                                \
                am = j;                                                                  \
            }                                                                            \
        }                                                                                \
        return am;                                                                       \
    }                                                                                    \
    /* from logits: log-softmax with the row maximum subtracted */                       \
    static double xent_logits_row_##SUF(const T *x, int64_t k, int64_t lab, const T *t,  \
                                        T *dl, T *pr, double gs, int *hit)               \
    {                                                                                    \
        const int64_t am = argmax_##SUF(x, k);                                           \
        const double mx = (double)x[am];                                                 \
        double s = 0.0, st = 0.0, stx = 0.0;                                             \
        for (int64_t j = 0; j < k; j++) {                                                \
            const double z = (double)x[j] - mx;                                          \
            s += exp(z);                                                                 \
            if (t) {                                                                     \
                const double tj = (double)t[j];                                          \
                st += tj;                                                                \
                if (tj != 0.0) stx += tj * z; /* 0 * log(0) = 0 */                                                           \
            }                                                                            \
        }                                                                                \
        const double ls = log(s);                                                        \
        double loss;                                                                     \
        if (t) {                                                                         \
            loss = ls * st - stx; /* -sum t_j (z_j - log s) */                           \
            *hit = argmax_##SUF(t, k) == am;                                             \
        } else {                                                                         \
            loss = ls - ((double)x[lab] - mx);                                           \
            *hit = am == lab;                                                            \
        }                                                                                \
        if (dl || pr) {                                                                  \
            const double inv = 1.0 / s;                                                  \
            for (int64_t j = 0; j < k; j++) {                                            \
                const double p = exp((double)x[j] - mx) * inv;                           \
                const double tj = t ? (double)t[j] : (double)(j == lab);                 \
                if (pr) pr[j] = (T)p;                                                    \
                if (dl) dl[j] = (T)((p - tj) * gs);                                      \
            }                                                                            \
        }                                                                                \
        return loss;                                                                     \
    }                                                                                    \
    /* from probabilities: q = p / sum(p), loss = -sum t_j log(clip(q_j));     \
     * gradient wrt p: (R - r_j) / S with r_j = t_j/q_j inside the clip range \
     * (0 outside), R = sum_j r_j q_j, S = sum p. */                                     \
    static double xent_probs_row_##SUF(const T *x, int64_t k, int64_t lab, const T *t,   \
                                       T *dl, T *pr, double gs, int *hit)                \
    {                                                                                    \
        const int64_t am = argmax_##SUF(x, k);                                           \
        *hit = (t ? argmax_##SUF(t, k) : lab) == am;                                     \
        double S = 0.0;                                                                  \
        for (int64_t j = 0; j < k; j++) S += (double)x[j];                               \
        /* q = x / S, divided (Keras): x * (1 / S) overflows for a subnormal S  \
         * (1 / 3e-323 = inf), clipping every q to 1 - eps. */                   \
        /* the clip bounds in T, as Keras clips in the tensor's dtype       \
         * (float32: -log(1 - 1e-7) is 1.19e-7, not 1.0e-7) */                  \
        const double lo = (double)(T)NK_XENT_EPS, hi = (double)(T)(1.0 - NK_XENT_EPS);   \
        double loss = 0.0, R = 0.0;                                                      \
        const int64_t j0 = t ? 0 : lab, j1 = t ? k : lab + 1;                            \
        for (int64_t j = j0; j < j1; j++) {                                              \
            const double tj = t ? (double)t[j] : 1.0;                                    \
            const double q = (double)x[j] / S;                                           \
            const double qc = q < lo ? lo : (q > hi ? hi : q); /* keeps NaN */           \
            if (tj != 0.0) loss -= tj * log(qc);                                         \
            if (q >= lo && q <= hi) R += tj; /* r_j q_j */                               \
        }                                                                                \
        if (dl || pr) {                                                                  \
            for (int64_t j = 0; j < k; j++) {                                            \
                const double q = (double)x[j] / S;                                       \
                const double tj = t ? (double)t[j] : (double)(j == lab);                 \
                const double r = (q >= lo && q <= hi && tj != 0.0) ? tj / q : 0.0;       \
                if (pr) pr[j] = (T)q;                                                    \
                if (dl) dl[j] = (T)((R - r) / S * gs);                                   \
            }                                                                            \
        }                                                                                \
        return loss;                                                                     \
    }                                                                                    \
    static void xent_block_##SUF(const nk_xent_desc *d, int64_t r0, int64_t r1,          \
                                 double *loss, int64_t *correct)                         \
    {                                                                                    \
        const int64_t k = d->k;                                                          \
        const T *x = (const T *)d->logits_nk;                                            \
        T *dl = (T *)d->dlogits_nk, *pr = (T *)d->probs_nk;                              \
        double acc = 0.0;                                                                \
        int64_t hits = 0;                                                                \
        for (int64_t i = r0; i < r1; i++) {                                              \
            int64_t lab = -1;                                                            \
            const T *t = NULL;                                                           \
            if (d->label_kind == NK_LABELS_I32) lab = ((const int32_t *)d->labels)[i];   \
            else if (d->label_kind == NK_LABELS_I64) lab = ((const int64_t *)d->labels)[i]; \
            else t = (const T *)d->labels + i * k;                                       \
            int hit = 0;                                                                 \
            T *dli = dl ? dl + i * k : NULL, *pri = pr ? pr + i * k : NULL;              \
            acc += d->from_logits                                                        \
                       ? xent_logits_row_##SUF(x + i * k, k, lab, t, dli, pri, d->grad_scale, &hit) \
                       : xent_probs_row_##SUF(x + i * k, k, lab, t, dli, pri, d->grad_scale, &hit); \
            hits += hit;                                                                 \
        }                                                                                \
        *loss = acc;                                                                     \
        *correct = hits;                                                                 \
    }

NK_XENT_BODY(float, s)
NK_XENT_BODY(double, d)

double nk_softmax_xent(const nk_xent_desc *d, int64_t *n_correct, int dbl)
{
    *n_correct = 0;
    if (d->n <= 0 || d->k <= 0) return 0.0;
    double bl[NK_TR_MAXBLK];
    int64_t bc[NK_TR_MAXBLK];
    int64_t nb, bs;
    tr_blocks(d->n, 64, 1, NK_TR_MAXBLK, &nb, &bs);
    const int64_t es = dbl ? 8 : 4;
    const int nt = nk_par_threads(3 * es * d->n * d->k * 8 /* exp: weigh compute */, nb);
    const int64_t n = d->n;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * bs, r1 = nk_imin64(r0 + bs, n);
        if (dbl) xent_block_d(d, r0, r1, &bl[b], &bc[b]);
        else xent_block_s(d, r0, r1, &bl[b], &bc[b]);
    }
    double loss = 0.0;
    int64_t hits = 0;
    for (int64_t b = 0; b < nb; b++) {
        loss += bl[b];
        hits += bc[b];
    }
    *n_correct = hits;
    return loss;
}

/* ========================================================= optimizers == */

#define NK_OPT_BODY(T, SUF, SQRT)                                                        \
    static void sgd_##SUF(T *restrict p, const T *restrict g, int64_t e0, int64_t e1,    \
                          T lr)                                                          \
    {                                                                                    \
        for (int64_t i = e0; i < e1; i++) p[i] -= g[i] * lr;                             \
    }                                                                                    \
    static void sgdm_##SUF(T *restrict p, const T *restrict g, T *restrict m, int64_t e0, \
                           int64_t e1, T lr, T mom, int nesterov)                        \
    {                                                                                    \
        if (nesterov) {                                                                  \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T gl = g[i] * lr;                                                  \
                const T mi = m[i] * mom - gl;                                            \
                m[i] = mi;                                                               \
                p[i] += mi * mom - gl;                                                   \
            }                                                                            \
        } else {                                                                         \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T mi = m[i] * mom - g[i] * lr;                                     \
                m[i] = mi;                                                               \
                p[i] += mi;                                                              \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static void adam_##SUF(T *restrict p, const T *restrict g, T *restrict m,            \
                           T *restrict v, int64_t e0, int64_t e1, T alpha, T omb1,       \
                           T omb2, T eps)                                                \
    {                                                                                    \
        for (int64_t i = e0; i < e1; i++) {                                              \
            const T gi = g[i];                                                           \
            const T mi = m[i] + (gi - m[i]) * omb1;                                      \
            const T vi = v[i] + (gi * gi - v[i]) * omb2;                                 \
            m[i] = mi;                                                                   \
            v[i] = vi;                                                                   \
            p[i] -= (mi * alpha) / (SQRT(vi) + eps);                                     \
        }                                                                                \
    }                                                                                    \
    static void rmsprop_##SUF(T *restrict p, const T *restrict g, T *restrict v,         \
                              T *restrict m, T *restrict mg, int64_t e0, int64_t e1,     \
                              T lr, T rho, T omr, T eps, T mom)                          \
    {                                                                                    \
        /* four loop versions, so that each one is a plain vectorisable loop */          \
        if (mg && m) {                                                                   \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T gi = g[i];                                                       \
                const T vi = rho * v[i] + omr * (gi * gi);                               \
                const T ai = rho * mg[i] + omr * gi;                                     \
                v[i] = vi;                                                               \
                mg[i] = ai;                                                              \
                const T inc = (lr * gi) / SQRT(vi - ai * ai + eps);                      \
                const T mi = mom * m[i] + inc;                                           \
                m[i] = mi;                                                               \
                p[i] -= mi;                                                              \
            }                                                                            \
        } else if (mg) {                                                                 \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T gi = g[i];                                                       \
                const T vi = rho * v[i] + omr * (gi * gi);                               \
                const T ai = rho * mg[i] + omr * gi;                                     \
                v[i] = vi;                                                               \
                mg[i] = ai;                                                              \
                p[i] -= (lr * gi) / SQRT(vi - ai * ai + eps);                            \
            }                                                                            \
        } else if (m) {                                                                  \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T gi = g[i];                                                       \
                const T vi = rho * v[i] + omr * (gi * gi);                               \
                v[i] = vi;                                                               \
                const T mi = mom * m[i] + (lr * gi) / SQRT(vi + eps);                    \
                m[i] = mi;                                                               \
                p[i] -= mi;                                                              \
            }                                                                            \
        } else {                                                                         \
            for (int64_t i = e0; i < e1; i++) {                                          \
                const T gi = g[i];                                                       \
                const T vi = rho * v[i] + omr * (gi * gi);                               \
                v[i] = vi;                                                               \
                p[i] -= (lr * gi) / SQRT(vi + eps);                                      \
            }                                                                            \
        }                                                                                \
    }                                                                                    \
    static void adadelta_##SUF(T *restrict p, const T *restrict g, T *restrict ag,       \
                               T *restrict ad, int64_t e0, int64_t e1, T lr, T rho,      \
                               T omr, T eps)                                             \
    {                                                                                    \
        for (int64_t i = e0; i < e1; i++) {                                              \
            const T gi = g[i];                                                           \
            const T agi = rho * ag[i] + omr * (gi * gi);                                 \
            ag[i] = agi;                                                                 \
            const T delta = -((SQRT(ad[i] + eps) * gi) / SQRT(agi + eps));               \
            ad[i] = rho * ad[i] + omr * (delta * delta);                                 \
            p[i] += lr * delta;                                                          \
        }                                                                                \
    }                                                                                    \
    /* 8 independent double accumulators (fixed order, vectorisable) */                  \
    static double sumsq_##SUF(const T *restrict x, int64_t e0, int64_t e1)               \
    {                                                                                    \
        double a[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                          \
        int64_t i = e0;                                                                  \
        for (; i + 8 <= e1; i += 8)                                                      \
            for (int j = 0; j < 8; j++) {                                                \
                const double v = (double)x[i + j];                                       \
                a[j] += v * v;                                                           \
            }                                                                            \
        for (int j = 0; i < e1; i++, j++) {                                              \
            const double v = (double)x[i];                                               \
            a[j] += v * v;                                                               \
        }                                                                                \
        return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));        \
    }

NK_OPT_BODY(float, s, sqrtf)
NK_OPT_BODY(double, d, sqrt)

void nk_sgd_update(int64_t n, void *p, const void *g, void *m, double lr, double momentum,
                   int nesterov, int dbl)
{
    if (n <= 0) return;
    const int64_t es = dbl ? 8 : 4, arrays = momentum != 0.0 ? 5 : 3;
    if (dbl) {
        if (momentum == 0.0)
            NK_CHUNKED_PARALLEL(n, arrays * es * n, sgd_d((double *)p, (const double *)g, e0, e1, lr));
        else
            NK_CHUNKED_PARALLEL(n, arrays * es * n,
                           sgdm_d((double *)p, (const double *)g, (double *)m, e0, e1, lr,
                                  momentum, nesterov));
    } else {
        const float flr = (float)lr, fmom = (float)momentum;
        if (momentum == 0.0)
            NK_CHUNKED_PARALLEL(n, arrays * es * n, sgd_s((float *)p, (const float *)g, e0, e1, flr));
        else
            NK_CHUNKED_PARALLEL(n, arrays * es * n,
                           sgdm_s((float *)p, (const float *)g, (float *)m, e0, e1, flr, fmom,
                                  nesterov));
    }
}

void nk_adam_update(int64_t n, void *p, const void *g, void *m, void *v, double alpha,
                    double beta_1, double beta_2, double epsilon, int dbl)
{
    if (n <= 0) return;
    const double omb1 = 1.0 - beta_1, omb2 = 1.0 - beta_2;
    if (dbl)
        NK_CHUNKED_PARALLEL(n, 56 * n,
                       adam_d((double *)p, (const double *)g, (double *)m, (double *)v, e0, e1,
                              alpha, omb1, omb2, epsilon));
    else
        NK_CHUNKED_PARALLEL(n, 28 * n,
                       adam_s((float *)p, (const float *)g, (float *)m, (float *)v, e0, e1,
                              (float)alpha, (float)omb1, (float)omb2, (float)epsilon));
}

void nk_rmsprop_update(int64_t n, void *p, const void *g, void *v, void *m, void *mg,
                       double lr, double rho, double epsilon, double momentum, int dbl)
{
    if (n <= 0) return;
    const double omr = 1.0 - rho;
    const int64_t es = dbl ? 8 : 4;
    const int64_t bytes = es * n * (4 + (m ? 2 : 0) + (mg ? 2 : 0));
    if (dbl)
        NK_CHUNKED_PARALLEL(n, bytes,
                       rmsprop_d((double *)p, (const double *)g, (double *)v, (double *)m,
                                 (double *)mg, e0, e1, lr, rho, omr, epsilon, momentum));
    else
        NK_CHUNKED_PARALLEL(n, bytes,
                       rmsprop_s((float *)p, (const float *)g, (float *)v, (float *)m,
                                 (float *)mg, e0, e1, (float)lr, (float)rho, (float)omr,
                                 (float)epsilon, (float)momentum));
}

void nk_adadelta_update(int64_t n, void *p, const void *g, void *acc_g, void *acc_d,
                        double lr, double rho, double epsilon, int dbl)
{
    if (n <= 0) return;
    const double omr = 1.0 - rho;
    if (dbl)
        NK_CHUNKED_PARALLEL(n, 56 * n,
                       adadelta_d((double *)p, (const double *)g, (double *)acc_g,
                                  (double *)acc_d, e0, e1, lr, rho, omr, epsilon));
    else
        NK_CHUNKED_PARALLEL(n, 28 * n,
                       adadelta_s((float *)p, (const float *)g, (float *)acc_g, (float *)acc_d,
                                  e0, e1, (float)lr, (float)rho, (float)omr, (float)epsilon));
}

double nk_sum_squares(int64_t n, const void *x, int dbl)
{
    if (n <= 0) return 0.0;
    double part[NK_TR_MAXBLK];
    int64_t nb, bs;
    tr_blocks(n, 8192, 64, NK_TR_MAXBLK, &nb, &bs);
    const int nt = nk_par_threads((dbl ? 8 : 4) * n, nb);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t e0 = b * bs, e1 = nk_imin64(e0 + bs, n);
        part[b] = dbl ? sumsq_d((const double *)x, e0, e1) : sumsq_s((const float *)x, e0, e1);
    }
    double s = 0.0;
    for (int64_t b = 0; b < nb; b++) s += part[b];
    return s;
}

/* ================================================ batch normalisation == */

/* Row blocks of a (m, c) array: at least ~16k elements each, at most
 * NK_BN_MAXBLK blocks; a function of (m, c) only.  The passes hand them
 * out statically (schedule(static)): each thread takes the same rows in
 * every pass, the rows the convolutions' static tile ranges around it wrote
 * or will read on that core; handed out dynamically, a pass's rows were
 * often the lines another core had just read or written, and a backward
 * writing dx over dy (pynn's graph does, pynn/models/graph.py) stored into
 * lines held by the other core (residual block's backward, 128x32x32x16,
 * 2 threads, isolated, medians: 1.36-1.43 ms with dx apart, 3.25 over dy;
 * statically 1.20-1.29 and 1.06-1.07). */
static void bn_blocks(int64_t m, int64_t c, int64_t *nb, int64_t *bs)
{
    const int64_t min_rows = c > 0 ? (16384 + c - 1) / c : 16384;
    tr_blocks(m, min_rows, 1, NK_BN_MAXBLK, nb, bs);
}

/* The workspace of the training forward and of the backward: c doubles (per
 * channel), then 2 c doubles of partial sums per row block, then four
 * per-channel vectors of T. */
typedef struct {
    int64_t nb, bs; /* row blocks and their size (bn_blocks) */
    int slot;
    double *vec, *part;
    void *t[4];
} bn_ws;

static int bn_ws_get(int64_t m, int64_t c, int dbl, bn_ws *w)
{
    bn_blocks(m, c, &w->nb, &w->bs);
    const size_t es = dbl ? 8 : 4;
    const size_t bytes =
        sizeof(double) * (size_t)c * (size_t)(1 + 2 * w->nb) + 4 * es * (size_t)c + 64;
    w->vec = (double *)nk_ws_acquire(bytes, &w->slot);
    if (!w->vec) return -1;
    w->part = w->vec + c;
    char *t = (char *)(w->part + 2 * w->nb * c);
    for (int i = 0; i < 4; i++) w->t[i] = t + (size_t)i * es * (size_t)c;
    return 0;
}

/* Channel j's two partial sums added over the blocks, in block order. */
static void bn_totals(const bn_ws *w, int64_t c, int64_t j, double *s, double *q)
{
    double a = 0.0, b = 0.0;
    for (int64_t k = 0; k < w->nb; k++) {
        a += w->part[2 * k * c + j];
        b += w->part[(2 * k + 1) * c + j];
    }
    *s = a;
    *q = b;
}

static inline double ld(const void *p, int64_t i, int dbl)
{
    return dbl ? ((const double *)p)[i] : (double)((const float *)p)[i];
}
static inline void st(void *p, int64_t i, double v, int dbl)
{
    if (dbl) ((double *)p)[i] = v;
    else ((float *)p)[i] = (float)v;
}

/* x's element i as a double (T, or bfloat16 widened) */
static inline double bn_ldx(const void *x, int64_t i, int dt)
{
    return dt == NK_BN_F32_XBF16 ? (double)nk_bf16_widen(((const uint16_t *)x)[i])
                                 : ld(x, i, dt == NK_BN_F64);
}

/* The shift k of the training forward's sums (s = sum (x - k), q = sum (x -
 * k)^2, var = q/m - (s/m)^2): the mean of BN_SHIFT_ROWS rows spread evenly
 * over the batch, rounded to T (so that x - k is formed in T by the float
 * sums), per channel.  The nearer k is to the mean, the less the variance
 * loses to cancellation: its relative error grows with 1 + (k - mean)^2 /
 * var times that of the float runs of the sums (nk_bn_sums_f.h), so a
 * first row 50 standard deviations out (the shift used before) cost three
 * digits.  Where that mean is not finite (x has inf or NaN there, and so
 * the statistics), the first row's value, as before. */
#define BN_SHIFT_ROWS 64
static void bn_shift(int64_t m, int64_t c, const void *x, int dt, double *k)
{
    const int64_t ns = m < BN_SHIFT_ROWS ? m : BN_SHIFT_ROWS;
    const int dbl = dt == NK_BN_F64;
    for (int64_t j = 0; j < c; j++) k[j] = 0.0;
    for (int64_t i = 0; i < ns; i++) {
        const int64_t r = i * m / ns;
        for (int64_t j = 0; j < c; j++) k[j] += bn_ldx(x, r * c + j, dt);
    }
    for (int64_t j = 0; j < c; j++) {
        const double v = dbl ? k[j] / (double)ns : (double)(float)(k[j] / (double)ns);
        k[j] = isfinite(v) ? v : bn_ldx(x, j, dt);
    }
}

/* y = act((x - mu) * sc + sh [+ res]) with per-channel T vectors, over row
 * blocks (res NULL and act NK_ACT_NONE: the unfused bn_apply). */
static void bn_apply_all(int64_t m, int64_t c, const void *x, const void *res, void *y,
                         const void *mu, const void *sc, const void *sh, int act, int dt)
{
    const int dbl = dt == NK_BN_F64;
    int64_t nb, bs;
    bn_blocks(m, c, &nb, &bs);
    const int relu = act == NK_ACT_RELU;
    const nk_bn_kern_s *ks = nk_bn_kern_s_current();
    const nk_bn_kern_d *kd = nk_bn_kern_d_current();
    const nk_bn_kern_h *kh = nk_bn_kern_h_current();
    const int nt = nk_par_threads((dbl ? 8 : 4) * (res ? 3 : 2) * m * c, nb);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * bs, r1 = nk_imin64(r0 + bs, m);
        if (dt == NK_BN_F32_XBF16)
            kh->apply_ep((const uint16_t *)x, (const float *)res, (float *)y, c, r0, r1,
                         (const float *)mu, (const float *)sc, (const float *)sh, relu);
        else if (dbl)
            kd->apply_ep((const double *)x, (const double *)res, (double *)y, c, r0, r1,
                         (const double *)mu, (const double *)sc, (const double *)sh, relu);
        else
            ks->apply_ep((const float *)x, (const float *)res, (float *)y, c, r0, r1,
                         (const float *)mu, (const float *)sc, (const float *)sh, relu);
    }
}

int nk_batchnorm_fwd_train(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                           const void *beta, void *y_mc, double eps, double momentum,
                           void *moving_mean, void *moving_var, void *save_mean,
                           void *save_invstd, int dbl)
{
    return nk_batchnorm_fwd_train_fused(m, c, x_mc, NULL, gamma, beta, y_mc, NK_ACT_NONE, eps,
                                        momentum, moving_mean, moving_var, save_mean,
                                        save_invstd, NULL, dbl);
}

int nk_batchnorm_fwd_train_fused(int64_t m, int64_t c, const void *x_mc, const void *res_mc,
                                 const void *gamma, const void *beta, void *y_mc, int act,
                                 double eps, double momentum, void *moving_mean,
                                 void *moving_var, void *save_mean, void *save_invstd,
                                 void *save_scale, int dt)
{
    if (m <= 0 || c <= 0) return 0;
    const int dbl = dt == NK_BN_F64, xh = dt == NK_BN_F32_XBF16;
    const int64_t es = dbl ? 8 : 4;
    bn_ws w; /* vec: the shift k; T vectors: mu, sc, sh */
    if (bn_ws_get(m, c, dbl, &w)) return -1;
    const int64_t nb = w.nb, bs = w.bs;
    double *k = w.vec, *part = w.part;
    void *mu = w.t[0], *sc = w.t[1], *sh = w.t[2];
    bn_shift(m, c, x_mc, dt, k);
    const nk_bn_kern_s *ks = nk_bn_kern_s_current();
    const nk_bn_kern_d *kd = nk_bn_kern_d_current();
    const nk_bn_kern_h *kh = nk_bn_kern_h_current();
    const int nt = nk_par_threads(es * m * c, nb);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * bs, r1 = nk_imin64(r0 + bs, m);
        double *s = part + 2 * b * c, *q = s + c;
        if (xh) kh->sums((const uint16_t *)x_mc, c, r0, r1, k, s, q);
        else if (dbl) kd->sums((const double *)x_mc, c, r0, r1, k, s, q);
        else ks->sums((const float *)x_mc, c, r0, r1, k, s, q);
    }
    const double dm = (double)m;
    for (int64_t j = 0; j < c; j++) {
        double s, q;
        bn_totals(&w, c, j, &s, &q);
        const double mean = k[j] + s / dm;
        double var = (q - s * (s / dm)) / dm;
        if (var < 0.0) var = 0.0; /* rounding; NaN stays NaN */
        const double invstd = 1.0 / sqrt(var + eps);
        const double gj = gamma ? ld(gamma, j, dbl) : 1.0;
        st(mu, j, mean, dbl);
        st(sc, j, gj * invstd, dbl);
        st(sh, j, beta ? ld(beta, j, dbl) : 0.0, dbl);
        if (save_mean) st(save_mean, j, mean, dbl);
        if (save_invstd) st(save_invstd, j, invstd, dbl);
        if (save_scale) st(save_scale, j, gj * invstd, dbl);
        if (moving_mean)
            st(moving_mean, j, ld(moving_mean, j, dbl) * momentum + mean * (1.0 - momentum), dbl);
        if (moving_var)
            st(moving_var, j, ld(moving_var, j, dbl) * momentum + var * (1.0 - momentum), dbl);
    }
    bn_apply_all(m, c, x_mc, res_mc, y_mc, mu, sc, sh, act, dt);
    nk_ws_release(w.vec, w.slot);
    return 0;
}

int nk_batchnorm_fwd_infer(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                           const void *beta, const void *moving_mean,
                           const void *moving_var, double eps, void *y_mc, int dbl)
{
    return nk_batchnorm_fwd_infer_fused(m, c, x_mc, NULL, gamma, beta, moving_mean, moving_var,
                                        eps, y_mc, NK_ACT_NONE, dbl);
}

int nk_batchnorm_fwd_infer_fused(int64_t m, int64_t c, const void *x_mc, const void *res_mc,
                                 const void *gamma, const void *beta, const void *moving_mean,
                                 const void *moving_var, double eps, void *y_mc, int act,
                                 int dt)
{
    if (m <= 0 || c <= 0) return 0;
    const int dbl = dt == NK_BN_F64;
    const int64_t es = dbl ? 8 : 4;
    int slot;
    char *ws = (char *)nk_ws_acquire((size_t)(2 * es * c) + 64, &slot);
    if (!ws) return -1;
    void *sc = ws, *sh = ws + es * c;
    for (int64_t j = 0; j < c; j++) {
        const double is = 1.0 / sqrt(ld(moving_var, j, dbl) + eps);
        st(sc, j, (gamma ? ld(gamma, j, dbl) : 1.0) * is, dbl);
        st(sh, j, beta ? ld(beta, j, dbl) : 0.0, dbl);
    }
    bn_apply_all(m, c, x_mc, res_mc, y_mc, moving_mean, sc, sh, act, dt);
    nk_ws_release(ws, slot);
    return 0;
}

int nk_batchnorm_bwd(int64_t m, int64_t c, const void *dy_mc, const void *x_mc,
                     const void *gamma, const void *save_mean, const void *save_invstd,
                     void *dx_mc, void *dgamma, void *dbeta, int dbl)
{
    return nk_batchnorm_bwd_fused(m, c, dy_mc, NULL, NK_ACT_NONE, x_mc, gamma, save_mean,
                                  save_invstd, NULL, NULL, dx_mc, NULL, dgamma, dbeta, dbl);
}

int nk_batchnorm_bwd_fused(int64_t m, int64_t c, const void *dy_mc, const void *y_mc, int act,
                           const void *x_mc, const void *gamma, const void *save_mean,
                           const void *save_invstd, const void *mask_scale,
                           const void *mask_shift, void *dx_mc, void *dres_mc, void *dgamma,
                           void *dbeta, int dt)
{
    const int dbl = dt == NK_BN_F64, xh = dt == NK_BN_F32_XBF16;
    /* the relu mask reads y, else recomputes the pre-activation from x with
     * mask_scale / mask_shift; without relu neither is used */
    const int relu = act == NK_ACT_RELU;
    const void *ym = relu ? y_mc : NULL;
    const void *msc = relu && !ym ? mask_scale : NULL;
    if (relu && !ym && !msc) return -2;
    if (c <= 0) return 0;
    if (m <= 0) {
        for (int64_t j = 0; j < c; j++) {
            st(dgamma, j, 0.0, dbl);
            st(dbeta, j, 0.0, dbl);
        }
        return 0;
    }
    const int64_t es = dbl ? 8 : 4;
    bn_ws w; /* vec: save_mean in double; T vectors: a, bb, e, the mask's shift */
    if (bn_ws_get(m, c, dbl, &w)) return -1;
    const int64_t nb = w.nb, bs = w.bs;
    double *mud = w.vec, *part = w.part;
    void *a = w.t[0], *bb = w.t[1], *e = w.t[2];
    const void *msh = NULL;
    if (msc) {
        if (mask_shift) msh = mask_shift;
        else {
            for (int64_t j = 0; j < c; j++) st(w.t[3], j, 0.0, dbl);
            msh = w.t[3];
        }
    }
    for (int64_t j = 0; j < c; j++) mud[j] = ld(save_mean, j, dbl);
    const nk_bn_kern_s *ks = nk_bn_kern_s_current();
    const nk_bn_kern_d *kd = nk_bn_kern_d_current();
    const nk_bn_kern_h *kh = nk_bn_kern_h_current();
    int nt = nk_par_threads((ym ? 3 : 2) * es * m * c, nb);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * bs, r1 = nk_imin64(r0 + bs, m);
        double *sd = part + 2 * b * c, *sx = sd + c;
        if (xh)
            kh->bsums((const float *)dy_mc, (const float *)ym, (const uint16_t *)x_mc, c, r0, r1,
                      mud, (const float *)save_mean, (const float *)msc, (const float *)msh,
                      sd, sx);
        else if (dbl)
            kd->bsums((const double *)dy_mc, (const double *)ym, (const double *)x_mc, c, r0, r1,
                      mud, (const double *)save_mean, (const double *)msc,
                      (const double *)msh, sd, sx);
        else
            ks->bsums((const float *)dy_mc, (const float *)ym, (const float *)x_mc, c, r0, r1,
                      mud, (const float *)save_mean, (const float *)msc, (const float *)msh,
                      sd, sx);
    }
    const double dm = (double)m;
    for (int64_t j = 0; j < c; j++) {
        double sd, sx;
        bn_totals(&w, c, j, &sd, &sx);
        const double is = ld(save_invstd, j, dbl);
        const double gj = gamma ? ld(gamma, j, dbl) : 1.0;
        const double dg = sx * is; /* sum dy * xhat */
        st(dbeta, j, sd, dbl);
        st(dgamma, j, dg, dbl);
        const double gi = gj * is;
        st(a, j, gi, dbl);
        st(bb, j, -gi * is * dg / dm, dbl);
        st(e, j, sd / dm, dbl); /* mean of dy: subtracted before scaling */
    }
    /* save_mean as T: the pass below subtracts it in T */
    nt = nk_par_threads((3 + (ym != NULL) + (dres_mc != NULL)) * es * m * c, nb);
#pragma omp parallel for num_threads(nt) schedule(static) if (nt > 1)
    for (int64_t b = 0; b < nb; b++) {
        const int64_t r0 = b * bs, r1 = nk_imin64(r0 + bs, m);
        if (xh)
            kh->dx_ep((const float *)dy_mc, (const float *)ym, (const uint16_t *)x_mc,
                      (float *)dx_mc, (float *)dres_mc, c, r0, r1, (const float *)save_mean,
                      (const float *)a, (const float *)bb, (const float *)e,
                      (const float *)msc, (const float *)msh);
        else if (dbl)
            kd->dx_ep((const double *)dy_mc, (const double *)ym, (const double *)x_mc,
                      (double *)dx_mc, (double *)dres_mc, c, r0, r1, (const double *)save_mean,
                      (const double *)a, (const double *)bb, (const double *)e,
                      (const double *)msc, (const double *)msh);
        else
            ks->dx_ep((const float *)dy_mc, (const float *)ym, (const float *)x_mc,
                      (float *)dx_mc, (float *)dres_mc, c, r0, r1, (const float *)save_mean,
                      (const float *)a, (const float *)bb, (const float *)e,
                      (const float *)msc, (const float *)msh);
    }
    nk_ws_release(w.vec, w.slot);
    return 0;
}

/* nnkernels: training kernels -- softmax cross-entropy, optimizer updates,
 * batch normalisation -- float32 ("dbl" = 0) / float64 ("dbl" = 1).
 *
 * All arrays are C-contiguous and validated by the caller (shapes, dtypes,
 * aliasing).  Kernels never allocate except batch normalisation's small
 * per-block partial sums, which come from the reused workspace arenas.
 *
 * Determinism: every reduction (loss, n_correct, sum of squares, batch-norm
 * sums) splits its range into blocks whose size depends only on the problem
 * size -- never on the thread count -- sums each block in a fixed order and
 * combines the block sums in block order, in double.  Elementwise updates
 * touch each element once.  So every result is bitwise the same for any
 * thread count.  The code is portable C, auto-vectorised; batch
 * normalisation's row loops are compiled once per ISA path (generic, AVX2,
 * AVX-512: nk_bn_kern.c) from one body without floating-point contraction,
 * the rest for the baseline only, so the ISA setting does not change the
 * results either -- except the sign and payload of a NaN made where two
 * NaNs meet in one operation, which follow the compiler's operand order
 * (whether an element is NaN does not change).
 */
#ifndef NK_TRAIN_H
#define NK_TRAIN_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------ softmax cross-entropy -- */

enum { NK_LABELS_I32 = 0, NK_LABELS_I64 = 1, NK_LABELS_DENSE = 2 };

typedef struct {
    int64_t n, k;             /* rows (batch), classes */
    const void *logits_nk;    /* (n, k) logits, or probabilities when !from_logits */
    const void *labels;       /* (n,) int32/int64 class ids, or (n, k) targets (dtype of logits) */
    int label_kind;           /* NK_LABELS_* */
    int from_logits;
    void *dlogits_nk;         /* (n, k) or NULL; may equal logits_nk (in place) */
    void *probs_nk;           /* (n, k) or NULL; may equal logits_nk; != dlogits_nk */
    double grad_scale;
} nk_xent_desc;

/* Index of the first class id outside [0, k), or -1 when all are valid. */
int64_t nk_labels_first_bad(int64_t n, const void *labels, int label_kind, int64_t k);

/* Sum over rows of the cross-entropy (see _train.pxi for the exact
 * definitions) and the number of rows whose argmax (first maximum wins, NaN
 * counts as the maximum like numpy.argmax) equals the label (dense targets:
 * the target row's argmax).  Writes dlogits and probs when given.  Class ids
 * must be valid (nk_labels_first_bad); rows are read entirely before the row
 * is written, so in-place use is safe. */
double nk_softmax_xent(const nk_xent_desc *d, int64_t *n_correct, int dbl);

/* ---------------------------------------------------------- optimizers -- */
/* In place on n contiguous elements; no two arrays overlap.  Formulas of
 * Keras 3, evaluated in the arrays' dtype with the hyper-parameters rounded
 * to it. */

/* momentum == 0 (m unused, may be NULL): p -= lr*g.  Else
 * m = momentum*m - lr*g; p += nesterov ? momentum*m - lr*g : m. */
void nk_sgd_update(int64_t n, void *p, const void *g, void *m, double lr, double momentum,
                   int nesterov, int dbl);

/* m += (g - m)*(1 - beta_1); v += (g*g - v)*(1 - beta_2);
 * p -= (m*alpha) / (sqrt(v) + epsilon); alpha includes the bias correction. */
void nk_adam_update(int64_t n, void *p, const void *g, void *m, void *v, double alpha,
                    double beta_1, double beta_2, double epsilon, int dbl);

/* v = rho*v + (1-rho)*g*g; mg (centered, else NULL) = rho*mg + (1-rho)*g;
 * inc = lr*g / sqrt(v - mg*mg + eps  |  v + eps);
 * m (momentum > 0, else NULL) = momentum*m + inc, p -= m  |  p -= inc. */
void nk_rmsprop_update(int64_t n, void *p, const void *g, void *v, void *m, void *mg,
                       double lr, double rho, double epsilon, double momentum, int dbl);

/* acc_g = rho*acc_g + (1-rho)*g*g;
 * delta = -(sqrt(acc_d + eps)*g) / sqrt(acc_g + eps);
 * acc_d = rho*acc_d + (1-rho)*delta*delta; p += lr*delta. */
void nk_adadelta_update(int64_t n, void *p, const void *g, void *acc_g, void *acc_d,
                        double lr, double rho, double epsilon, int dbl);

/* sum x*x in double, blocked (deterministic). */
double nk_sum_squares(int64_t n, const void *x, int dbl);

/* ------------------------------------------------- batch normalisation -- */
/* x_mc: (m, c) rows (NHWC viewed as (N*H*W, C)).  gamma, beta may be NULL
 * (1 and 0).  Per-channel vectors are of the data's dtype.  dbl: float64
 * (1) or float32 (0); the fused kernels take dt instead, one of: */
#define NK_BN_F32 0
#define NK_BN_F64 1
/* float32, with x_mc (the normalised input only: not res, y, dy, dx, dres)
 * stored as bfloat16 bit patterns (uint16_t), each widened exactly to
 * float32 as it is read: bitwise the float32 results of x widened */
#define NK_BN_F32_XBF16 2

/* Training: mean, biased var over the m rows (m >= 1); y = (x - mean) *
 * (gamma*invstd) + beta, invstd = 1/sqrt(var + eps); moving_mean/var (may be
 * NULL) = moving*momentum + batch*(1 - momentum); save_mean/save_invstd (may
 * be NULL) written.  y may equal x.  Returns 0, or -1 if the workspace could
 * not be allocated (nothing written then). */
int nk_batchnorm_fwd_train(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                           const void *beta, void *y_mc, double eps, double momentum,
                           void *moving_mean, void *moving_var, void *save_mean,
                           void *save_invstd, int dbl);

/* Inference: y = (x - moving_mean) * (gamma / sqrt(moving_var + eps)) + beta.
 * y may equal x.  Returns 0 or -1 (workspace). */
int nk_batchnorm_fwd_infer(int64_t m, int64_t c, const void *x_mc, const void *gamma,
                           const void *beta, const void *moving_mean,
                           const void *moving_var, double eps, void *y_mc, int dbl);

/* dbeta = sum dy, dgamma = sum dy*xhat (xhat = (x - mean)*invstd),
 * dx = gamma*invstd/m * (m*dy - dbeta - xhat*dgamma): one reduction pass and
 * one write pass.  dx may equal dy.  Returns 0 or -1 (workspace). */
int nk_batchnorm_bwd(int64_t m, int64_t c, const void *dy_mc, const void *x_mc,
                     const void *gamma, const void *save_mean, const void *save_invstd,
                     void *dx_mc, void *dgamma, void *dbeta, int dbl);

/* Fused epilogues (the residual-block patterns BN -> ReLU and
 * BN -> Add(shortcut) -> ReLU in one pass each way).  act: NK_ACT_NONE or
 * NK_ACT_RELU (nk_gemm.h).  With res_mc NULL / act NK_ACT_NONE / y_mc and
 * dres_mc NULL these are exactly the kernels above (which call them so).
 *
 * Forward (training and inference): the statistics are those of x only;
 * the write pass stores y = act(z), z = (x - mean) * scale + shift + res
 * (res_mc: (m, c) or NULL, added after the affine transform), relu(z) =
 * z <= 0 ? 0 : z (NaN kept), in T and in that order: bitwise the result of
 * the unfused kernel followed by a separate add and relu.  y may equal x
 * and/or res (element i is read before it is written); no other overlap.
 * save_scale (may be NULL): receives the scale applied, gamma * invstd
 * rounded to T, for the backward's ReLU mask recomputed from x. */
int nk_batchnorm_fwd_train_fused(int64_t m, int64_t c, const void *x_mc, const void *res_mc,
                                 const void *gamma, const void *beta, void *y_mc, int act,
                                 double eps, double momentum, void *moving_mean,
                                 void *moving_var, void *save_mean, void *save_invstd,
                                 void *save_scale, int dt);
int nk_batchnorm_fwd_infer_fused(int64_t m, int64_t c, const void *x_mc, const void *res_mc,
                                 const void *gamma, const void *beta, const void *moving_mean,
                                 const void *moving_var, double eps, void *y_mc, int act,
                                 int dt);

/* Backward of the fused forward: with act == NK_ACT_RELU dz = y > 0 ? dy : 0
 * where y_mc (the forward output) is given, else dz = v > 0 ? dy : 0 with
 * v = (x - save_mean) * mask_scale + mask_shift, the pre-activation of a
 * forward without residual recomputed in T (mask_scale: the forward's
 * save_scale, required then; mask_shift: its beta, NULL for 0): the same
 * mask, bitwise, without reading y (-2 when relu has neither).  Without
 * relu dz = dy (y_mc unused); dz, computed on the fly in both the reduction
 * and the write pass, replaces dy in nk_batchnorm_bwd, and dres (may be
 * NULL) = dz is written in the write pass (the gradient of the residual
 * input).  Bitwise the result of a separate relu backward followed by
 * nk_batchnorm_bwd.  dx and dres may each (not both) equal dy; no other
 * overlap. */
int nk_batchnorm_bwd_fused(int64_t m, int64_t c, const void *dy_mc, const void *y_mc, int act,
                           const void *x_mc, const void *gamma, const void *save_mean,
                           const void *save_invstd, const void *mask_scale,
                           const void *mask_shift, void *dx_mc, void *dres_mc, void *dgamma,
                           void *dbeta, int dt);

#ifdef __cplusplus
}
#endif
#endif

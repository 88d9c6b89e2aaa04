/* Internal interface between the batch-normalisation drivers (nk_train.c)
 * and their loop bodies, compiled once per ISA path (nk_bn_kern.c from the
 * one body nk_bn_body.h).  The arguments are those of the drivers' row
 * blocks: rows [r0, r1) of (m, c) C-contiguous arrays, per-channel vectors
 * of c; see nk_bn_body.h for what each computes. */
#ifndef NK_BN_KERN_H
#define NK_BN_KERN_H
#include <stdint.h>

#define NK_BN_KERN_DECL(T, X, S)                                                            \
    typedef struct {                                                                     \
        /* s = sum (x - k), q = sum (x - k)^2 per channel, in double */                  \
        void (*sums)(const X *x, int64_t c, int64_t r0, int64_t r1, const double *k,     \
                     double *s, double *q);                                              \
        /* y = act((x - mu) * sc + sh [+ res]); relu: act is ReLU */                     \
        void (*apply_ep)(const X *x, const T *res, T *y, int64_t c, int64_t r0,          \
                         int64_t r1, const T *mu, const T *sc, const T *sh, int relu);   \
        /* sd = sum dz, sx = sum dz * (x - mu); dz = y ? (y > 0 ? dy : 0) : msc ?  */    \
        /* ((x - mmu) * msc + msh > 0 ? dy : 0) : dy                               */    \
        void (*bsums)(const T *dy, const T *y, const X *x, int64_t c, int64_t r0,        \
                      int64_t r1, const double *mu, const T *mmu, const T *msc,          \
                      const T *msh, double *sd, double *sx);                             \
        /* dx = a*(dz - e) + b*(x - mu), dz as in bsums (mmu = mu), dres = dz */         \
        void (*dx_ep)(const T *dy, const T *y, const X *x, T *dx, T *dres, int64_t c,    \
                      int64_t r0, int64_t r1, const T *mu, const T *a, const T *b,       \
                      const T *e, const T *msc, const T *msh);                           \
    } nk_bn_kern_##S;

NK_BN_KERN_DECL(float, float, s)
NK_BN_KERN_DECL(double, double, d)
/* float32 with x (the normalised input) stored as bfloat16 bit patterns */
NK_BN_KERN_DECL(float, uint16_t, h)
#undef NK_BN_KERN_DECL

/* Tables per ISA path (the AVX ones exist on x86-64 only). */
extern const nk_bn_kern_s nk_bn_kern_s_generic, nk_bn_kern_s_avx2, nk_bn_kern_s_avx512;
extern const nk_bn_kern_d nk_bn_kern_d_generic, nk_bn_kern_d_avx2, nk_bn_kern_d_avx512;
extern const nk_bn_kern_h nk_bn_kern_h_generic, nk_bn_kern_h_avx2, nk_bn_kern_h_avx512;

/* The tables of the ISA path in use (nk_get_isa(): NNKERNELS_ISA / set_isa). */
const nk_bn_kern_s *nk_bn_kern_s_current(void);
const nk_bn_kern_d *nk_bn_kern_d_current(void);
const nk_bn_kern_h *nk_bn_kern_h_current(void);

#endif

/* Internal interface between the GEMM driver and the per-ISA kernels. */
#ifndef NK_INTERNAL_H
#define NK_INTERNAL_H
#include <stdint.h>
#include <stddef.h>
#include "nk_gemm.h"

#define NK_KERN_DECL(T, S)                                                     \
    typedef struct {                                                           \
        T alpha, beta;                                                         \
        const T *csrc; int64_t ldcsrc; /* beta * csrc (first k-block) */       \
        const T *bias;                 /* bias for this tile's columns */      \
        int act;                                                               \
        int accum;                     /* out += alpha*AB (later k-blocks) */  \
        int last;                      /* apply bias + activation */           \
    } nk_##S##ep;                                                              \
    typedef struct {                                                           \
        int mr, nr, mc, kc, nc;                                                \
        /* pack mc rows x kc of op(A) into mr-row slivers (zero padded) */     \
        void (*pack_a)(int64_t mc, int64_t kc, const T *a, int64_t rsa,        \
                       int64_t csa, const T *mask, int64_t rsm, int64_t csm,   \
                       int dact, T *a_pk);                                     \
        /* pack kc x nc of op(B) into nr-column slivers (zero padded) */       \
        void (*pack_b)(int64_t kc, int64_t nc, const T *b, int64_t rsb,        \
                       int64_t csb, const T *mask, int64_t rsm, int64_t csm,   \
                       int dact, T *colsum, T *b_pk);                          \
        /* C tile (m <= mr, n <= nr valid) from a packed A sliver and a B   \
         * sliver whose k-th row starts at b + k*ldb (ldb = nr when packed,  \
         * B's row stride when B is read in place). */                       \
        void (*ukr)(int64_t kc, const T *a_pk, const T *b, int64_t ldb, T *c,  \
                    int64_t ldc, const nk_##S##ep *ep, int m, int n);          \
        /* the same for n <= nr/2: half the vectors, half the work */          \
        void (*ukr_half)(int64_t kc, const T *a_pk, const T *b, int64_t ldb,   \
                         T *c, int64_t ldc, const nk_##S##ep *ep, int m, int n);\
    } nk_##S##kern;

NK_KERN_DECL(float, s)
NK_KERN_DECL(double, d)

/* Kernel tables, one per ISA (NULL entries when not compiled in). */
extern const nk_skern nk_skern_generic, nk_skern_avx2, nk_skern_avx512;
extern const nk_dkern nk_dkern_generic, nk_dkern_avx2, nk_dkern_avx512;
const nk_skern *nk_skern_current(void);
const nk_dkern *nk_dkern_current(void);

double nk_fma_peak_generic(int dbl, int64_t iters);
double nk_fma_peak_avx2(int dbl, int64_t iters);
double nk_fma_peak_avx512(int dbl, int64_t iters);

/* Workspace (nk_workspace.c): a buffer of at least `bytes`, 64-byte aligned,
 * from one of a few reused arenas (*slot > 0) or, when all are busy, freshly
 * allocated (*slot == 0); NULL if memory is exhausted.  Give it back with
 * nk_ws_release(p, slot). */
void *nk_ws_acquire(size_t bytes, int *slot);
void nk_ws_release(void *p, int slot);

#if defined(__x86_64__) || defined(_M_X64)
#define NK_X86 1
#else
#define NK_X86 0
#endif

#endif

/* The micro-kernels' epilogue, shared by the float32/float64 body
 * (nk_kern_body.h) and the bfloat16 one (nk_kern_bf16_body.h): one place
 * for what happens to a finished register tile.
 *
 *   c[i, j] = act(alpha * acc[i][j] + (beta * csrc | c when accumulating) + bias[j])
 *
 * Included with EPI_FN (the function's name), T, V, VL, NV, MR, EPT and the
 * V_* macros of the including body defined.  Vectorised for edge tiles too
 * (partial vectors are masked loads / stack-buffer stores: nothing outside
 * the m x n tile is read or written). */
/* Partial-vector store through a stack buffer: masked stores (AVX-512 and
 * AVX2 vmaskmov) are several times slower on AMD Zen 4 than this. */
#define V_STOREN(p, v, n)                                                      \
    do {                                                                       \
        T t_[VL] __attribute__((aligned(64)));                                 \
        V_STOREU(t_, v);                                                       \
        for (int q_ = 0; q_ < (n); q_++) (p)[q_] = t_[q_];                     \
    } while (0)

static inline __attribute__((always_inline)) void
EPI_FN(V acc[MR][NV], T *restrict c, int64_t ldc, const EPT *ep, int m, int n, const int NVV)
{
    const V va = V_BCAST(ep->alpha);
    const V vb = V_BCAST(ep->beta);
    const int relu = ep->last && ep->act == NK_ACT_RELU;
    const T *bias = ep->last ? ep->bias : NULL;
#pragma GCC unroll 16
    for (int i = 0; i < MR; i++) {
        if (i >= m) break;
#pragma GCC unroll 4
        for (int v = 0; v < NVV; v++) {
            const int nv = n - v * VL;
            if (nv <= 0) break;
            T *cp = c + i * ldc + v * VL;
            V r = V_MUL(acc[i][v], va);
            if (nv >= VL) {
                if (ep->accum) r = V_ADD(r, V_LOADU(cp));
                else if (ep->csrc) r = V_FMA(vb, V_LOADU(ep->csrc + i * ep->ldcsrc + v * VL), r);
                if (bias) r = V_ADD(r, V_LOADU(bias + v * VL));
                if (relu) r = V_MAX(V_ZERO(), r); /* NaN propagates */
                V_STOREU(cp, r);
            } else {
                if (ep->accum) r = V_ADD(r, V_LOADN(cp, nv));
                else if (ep->csrc) r = V_FMA(vb, V_LOADN(ep->csrc + i * ep->ldcsrc + v * VL, nv), r);
                if (bias) r = V_ADD(r, V_LOADN(bias + v * VL, nv));
                if (relu) r = V_MAX(V_ZERO(), r);
                V_STOREN(cp, r, nv);
            }
        }
    }
}

#undef V_STOREN

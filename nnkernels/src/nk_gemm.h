/* nnkernels: packed GEMM with fused epilogues and packing prologues.
 *
 * Computes, for float32 ("s") and float64 ("d"):
 *
 *     out = act(alpha * op(A) @ op(B) + beta * C + bias)
 *
 * op(A)[i,p] = a[i*rsa + p*csa]  (i < m, p < k): any 2-D strides, so
 * transposes and C/F-contiguous or strided views need no copy.
 * op(B)[p,j] = b[p*rsb + j*csb]  (p < k, j < n).
 * C (beta source, may be `out` itself) and `out` have unit column stride
 * and row strides ldc / ldo.  bias has length n (broadcast over rows).
 *
 * Prologues (used by the dense backward, so dz is never materialised):
 *   op(A)[i,p] *= dact(amask[i*rsam + p*csam])   when amask != NULL
 *   op(B)[p,j] *= dact(bmask[p*rsbm + j*csbm])   when bmask != NULL
 *   bcolsum[j] (+)= sum_p op(B)[p,j]  (after the prologue) when bcolsum != NULL
 *       (it is overwritten, not accumulated, unless bcolsum_accumulate)
 * dact is the derivative of the activation expressed through its output y:
 *   NK_ACT_RELU: y > 0 ? 1 : 0.
 *
 * Kernels never allocate on the hot path: packing buffers live in a
 * process-wide arena that grows once and is reused (page faults cost more
 * than the arithmetic on the machines we target).
 *
 * bfloat16 products (lowp != 0, float32 calls only; ignored for float64):
 * op(A) and op(B) (after the prologue) are rounded to bfloat16 as
 * VCVTNEPS2BF16 does (nearest even, NaN quieted, denormals to signed zero)
 * while packed, products accumulate in float32 pairwise along k (VDPBF16PS:
 * the odd k of each even/odd pair first, each step rounded), and the
 * epilogue (alpha, beta*C, bias, act) and bcolsum stay float32 on the
 * unrounded values.  With AVX512_BF16 the micro-kernel is VDPBF16PS (twice
 * an FMA's multiply-adds per instruction); elsewhere the same arithmetic
 * with float32 FMAs, bit for bit (only float32 accumulators in the
 * denormal range differ: VDPBF16PS flushes them to zero).
 *
 * Determinism: every output element is computed by exactly one thread with
 * its k-sum in ascending order, so results are bitwise identical for any
 * thread count (for a given ISA path).  bcolsum likewise.
 */
#ifndef NK_GEMM_H
#define NK_GEMM_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { NK_ACT_NONE = 0, NK_ACT_RELU = 1 };
enum { NK_ISA_GENERIC = 0, NK_ISA_AVX2 = 1, NK_ISA_AVX512 = 2, NK_ISA_COUNT = 3 };

/* Optional packing hook for an implicit A operand (e.g. convolution's
 * im2col, read straight from the NHWC image, so the column matrix never
 * exists).  When pack_a is non-NULL the driver calls
 *     pack_a(pack_a_ctx, i0, mc, p0, kc, mr, a_pk)
 * instead of packing from a/rsa/csa/amask (which are then ignored).  It must
 * write rows [i0, i0+mc) x columns [p0, p0+kc) of op(A) as ceil(mc/mr)
 * slivers of mr rows: element (i, p) of sliver s at
 * a_pk[s*mr*kc + p*mr + i] (i, p relative to i0, p0), rows past mc zeroed;
 * a_pk is T* (float or double, as the call).  It is called concurrently
 * from several threads on disjoint blocks: it must only read shared data.
 * pack_a_lowp (float32 calls with lowp, optional): the same block packed
 * straight into the bf16 kernel's pair slivers (uint16_t *a_pk, sliver i/mr
 * at + i * kc2, kc2 = kc rounded up to even, see nk_kern_bf16_body.h; rows
 * beyond mc and an odd kc's last partner zero), rounded as the conversion of
 * pack_a's float32 slivers would round them; used instead of pack_a and
 * that conversion. */
typedef void (*nk_pack_a_fn)(const void *ctx, int64_t i0, int64_t mc, int64_t p0,
                             int64_t kc, int mr, void *a_pk);

#define NK_GEMM_ARGS_DECL(T, NAME)                                             \
    typedef struct {                                                           \
        int64_t m, n, k;                                                       \
        const T *a; int64_t rsa, csa;                                          \
        const T *b; int64_t rsb, csb;                                          \
        T alpha, beta;                                                         \
        const T *c; int64_t ldc;     /* beta source (NULL: beta ignored) */    \
        T *out; int64_t ldo;                                                   \
        const T *bias;               /* length n or NULL */                    \
        int act;                     /* NK_ACT_* applied in the epilogue */    \
        const T *amask; int64_t rsam, csam; int adact;                         \
        const T *bmask; int64_t rsbm, csbm; int bdact;                         \
        T *bcolsum; int bcolsum_accumulate;                                    \
        int nthreads;                /* <= 0: use nk_get_num_threads() */      \
        nk_pack_a_fn pack_a;         /* NULL: pack A from a/rsa/csa */         \
        const void *pack_a_ctx;                                                \
        int lowp;                    /* float32 only: bf16 products */         \
        nk_pack_a_fn pack_a_lowp;    /* lowp: see nk_pack_a_fn */              \
    } NAME;

NK_GEMM_ARGS_DECL(float, nk_sgemm_args)
NK_GEMM_ARGS_DECL(double, nk_dgemm_args)

/* Return 0 on success, -1 if workspace memory could not be obtained. */
int nk_sgemm(const nk_sgemm_args *g);
int nk_dgemm(const nk_dgemm_args *g);

/* The same call with the element type chosen at run time (dbl: float64),
 * pointers untyped and alpha/beta as double: what the Python wrapper uses. */
typedef struct {
    int64_t m, n, k;
    const void *a; int64_t rsa, csa;
    const void *b; int64_t rsb, csb;
    double alpha, beta;
    const void *c; int64_t ldc;
    void *out; int64_t ldo;
    const void *bias;
    int act;
    const void *amask; int64_t rsam, csam; int adact;
    const void *bmask; int64_t rsbm, csbm; int bdact;
    void *bcolsum; int bcolsum_accumulate;
    int nthreads;
    nk_pack_a_fn pack_a; const void *pack_a_ctx; /* see nk_pack_a_fn */
    int lowp; /* float32 only: bf16 products (see NK_GEMM_LOWP below) */
} nk_gemm_desc;
int nk_gemm(const nk_gemm_desc *g, int dbl);

/* ISA dispatch (nk_cpu.c). */
int nk_isa_supported(int isa);        /* CPU + OS support, and compiled in */
int nk_get_isa(void);                 /* ISA in use */
int nk_set_isa(int isa);              /* 0 on success, -1 if unsupported */
const char *nk_isa_name(int isa);

/* Threads.  Every team is at most NK_MAX_THREADS (libgomp exits the
 * process when it cannot create the threads asked for): nk_set_num_threads
 * clamps to [1, NK_MAX_THREADS] (n <= 0: OpenMP's default, clamped too);
 * the Python layer refuses larger counts with ValueError. */
#define NK_MAX_THREADS 1024
void nk_set_num_threads(int n);
int nk_get_num_threads(void);
int nk_openmp_enabled(void);
int nk_omp_max_threads(void);

/* bfloat16 products: whether VDPBF16PS can run here (CPU + OS + compiled
 * in), whether it is in use (the AVX-512 path and not switched off), and
 * the switch (0: emulate with FMAs even where VDPBF16PS exists).  Returns
 * -1 if on != 0 and the CPU lacks it. */
int nk_bf16_native_supported(void);
int nk_bf16_native(void);
int nk_set_bf16_native(int on);
/* Conversions (n elements, any alignment; threads for large n): to_bf16
 * rounds to nearest even keeping denormals (as ml_dtypes / NumPy
 * references do); from_bf16 is exact. */
void nk_f32_to_bf16(const float *x, uint16_t *out, int64_t n);
void nk_bf16_to_f32(const uint16_t *x, float *out, int64_t n);
/* rows of float32 (n rows of w values, ld apart) -> bf16 as nk_bf16_ftz
 * rounds (VCVTNEPS2BF16: nearest even, NaN quieted, zero and subnormals to
 * signed zero), into rows as far apart; branch-free, vectorised */
void nk_f32_to_bf16_ftz_rows(const float *x, uint16_t *out, int64_t n, int64_t w, int64_t ld);
/* out[i] = bf16 pair (lo[i] low, hi[i] high; hi NULL: zeros), rounded as
 * nk_bf16_ftz, i < n (one thread; vectorised) */
void nk_bf16_pairs_ftz(const float *lo, const float *hi, uint32_t *out, int64_t n);

/* Free the workspace arenas (tests/benchmarks); bytes they hold now. */
void nk_release_workspace(void);
int64_t nk_workspace_bytes(void);

/* Per-ISA FMA throughput loop: runs `iters` iterations of a chain of
 * independent FMAs, returns the number of flops executed. */
double nk_fma_peak_loop(int isa, int dbl, int64_t iters);
/* nt threads run the loop concurrently; returns seconds, *flops = total. */
double nk_fma_peak_run(int isa, int dbl, int nt, int64_t iters, double *flops);
const char *nk_compiler(void);

#ifdef __cplusplus
}
#endif
#endif

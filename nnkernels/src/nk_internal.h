/* Internal interface between the GEMM driver and the per-ISA kernels. */
#ifndef NK_INTERNAL_H
#define NK_INTERNAL_H
#include <stdint.h>
#include <stddef.h>
#include "nk_gemm.h"
#ifdef _OPENMP
#include <omp.h>
#endif

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

/* bfloat16 products (float32 operands rounded to bf16 while packed, float32
 * accumulation; see nk_kern_bf16_body.h): the float32 table packs, cvt turns
 * a packed sliver [p][r] into bf16 pairs [p/2][r][2] (kc rounded up to even,
 * zero pad), the micro-kernels take kc2 (even) and pair slivers. */
typedef struct {
    int mr, nr, mc, kc, nc;
    const nk_skern *f32;
    void (*cvt)(int64_t kc, int r, const float *src, uint16_t *dst);
    void (*ukr)(int64_t kc2, const uint16_t *a_pk, const uint16_t *b_pk, float *c, int64_t ldc,
                const nk_sep *ep, int m, int n);
    void (*ukr_half)(int64_t kc2, const uint16_t *a_pk, const uint16_t *b_pk, float *c,
                     int64_t ldc, const nk_sep *ep, int m, int n);
    /* optional (NULL: f32->pack_b then cvt): one full nr-column sliver of a
     * row-major B (unit column stride; mask, if any, row-major too) packed
     * straight into pairs, with f32->pack_b's masking, colsum and rounding */
    void (*pack_b_rows)(int64_t kc, const float *b, int64_t rsb, const float *mask,
                        int64_t rsm, float *colsum, uint16_t *b_pk);
} nk_bkern;
extern const nk_bkern nk_bkern_generic, nk_bkern_avx2, nk_bkern_avx512, nk_bkern_avx512bf16;
const nk_bkern *nk_bkern_current(void);

/* float32 -> bf16, round to nearest even, NaN quieted (sign and top
 * payload kept), subnormals kept (nk.to_bf16, as ml_dtypes). */
static inline uint16_t nk_bf16_rne(float x)
{
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* ... as VCVTNEPS2BF16 does it (the products' operands): the same, but zero
 * and subnormals give a signed zero. */
static inline uint16_t nk_bf16_ftz(float x)
{
    /* without branches, so that loops of it vectorise */
    uint32_t u;
    __builtin_memcpy(&u, &x, 4);
    const uint32_t hi = u >> 16;
    const uint32_t nan = 0u - (uint32_t)((u & 0x7fffffffu) > 0x7f800000u);
    const uint32_t tiny = 0u - (uint32_t)((u & 0x7f800000u) == 0);
    uint32_t r = (u + 0x7fffu + (hi & 1u)) >> 16;
    r = (r & ~nan) | ((hi | 0x40u) & nan);
    r = (r & ~tiny) | (hi & 0x8000u & tiny);
    return (uint16_t)r;
}

/* bf16 bit pattern -> float32, exactly */
static inline float nk_bf16_widen(uint16_t h)
{
    const uint32_t u = (uint32_t)h << 16;
    float x;
    __builtin_memcpy(&x, &u, 4);
    return x;
}

/* probe(arg), asked once: *known is 0 until then, 1 + the answer after (a
 * benign race: every thread that asks stores the same value).  For the CPU
 * probes (nk_isa_supported, nk_bf16_native_supported): under a hypervisor
 * each CPUID is a VM exit, microseconds, and the dispatch asks per call. */
static inline int nk_probe_once(int *known, int (*probe)(int), int arg)
{
    int k = __atomic_load_n(known, __ATOMIC_RELAXED);
    if (!k) {
        k = 1 + probe(arg);
        __atomic_store_n(known, k, __ATOMIC_RELAXED);
    }
    return k - 1;
}

/* The bf16 pair at p (two uint16, any alignment) as one 32-bit lane. */
static inline int32_t nk_ld_pair(const uint16_t *p)
{
    int32_t v;
    __builtin_memcpy(&v, p, 4);
    return v;
}

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

/* This thread's number in the enclosing OpenMP team (0 without OpenMP). */
static inline int nk_thread_num(void)
{
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static inline int64_t nk_imin64(int64_t a, int64_t b) { return a < b ? a : b; }
static inline int64_t nk_imax64(int64_t a, int64_t b) { return a > b ? a : b; }

/* Memory-bound passes (elementwise, pooling, training updates and
 * reductions): no threading below this many bytes touched, where the
 * fork/join costs more than the work. */
#define NK_PAR_BYTES (256 * 1024)
/* Elements per chunk of NK_CHUNKED_PARALLEL. */
#define NK_PAR_CHUNK (16 * 1024)

/* Threads for such a pass over `bytes` split into `items` pieces: 1 when it
 * is small or already runs inside a parallel region, never more than the
 * pieces. */
static inline int nk_par_threads(int64_t bytes, int64_t items)
{
    int nt = nk_get_num_threads();
#ifdef _OPENMP
    if (omp_in_parallel()) nt = 1;
#endif
    if (bytes < NK_PAR_BYTES || nt < 1) nt = 1;
    if (items < nt) nt = (int)(items > 0 ? items : 1);
    return nt;
}

/* Run BODY over [0, n) in chunks [e0, e1) of NK_PAR_CHUNK elements handed
 * out dynamically (on a shared machine a descheduled thread delays the call
 * by one chunk, not by half of the work); for elementwise work whose result
 * does not depend on the split. */
#define NK_CHUNKED_PARALLEL(n, bytes, BODY)                                              \
    do {                                                                                 \
        const int64_t nch_ = ((n) + NK_PAR_CHUNK - 1) / NK_PAR_CHUNK;                    \
        const int nt_ = nk_par_threads((bytes), nch_);                                   \
        (void)nt_; /* only read by the pragma */                                        \
        _Pragma("omp parallel for num_threads(nt_) schedule(dynamic, 1) if (nt_ > 1)")   \
        for (int64_t ch_ = 0; ch_ < nch_; ch_++) {                                       \
            const int64_t e0 = ch_ * NK_PAR_CHUNK;                                       \
            const int64_t e1 = nk_imin64(e0 + NK_PAR_CHUNK, (n));                        \
            BODY;                                                                        \
        }                                                                                \
    } while (0)

#endif

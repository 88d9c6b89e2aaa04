/* Elementwise kernels: ReLU (forward/backward), add, dropout with a Philox4x32-10
 * counter-based stream (no mask stored: the backward regenerates it).
 * See nk_elementwise.h for the exact definition of the stream.
 *
 * Philox4x32-10: J. K. Salmon, M. A. Moraes, R. O. Dror, D. E. Shaw,
 * "Parallel random numbers: as easy as 1, 2, 3", SC11 (Random123).
 * The AVX-512 / AVX2 paths run 16 / 8 Philox blocks in SIMD lanes (32x32->64
 * products with _mm*_mul_epu32 on even and odd lanes), then transpose the
 * four output words into element order; integer arithmetic only, so every
 * path gives the same bits as the scalar reference.
 */
#include <string.h>
#include "nk_internal.h"
#include "nk_target.h"
#include "nk_elementwise.h"
#ifdef _OPENMP
#include <omp.h>
#endif

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

/* Thread ranges (and SIMD blocks) are multiples of this many elements. */
#define NK_EW_ALIGN 64

static inline void philox_scalar(uint32_t c[4], uint32_t k0, uint32_t k1)
{
    for (int r = 0; r < 10; r++) {
        const uint64_t p0 = (uint64_t)PHILOX_M0 * c[0], p1 = (uint64_t)PHILOX_M1 * c[2];
        const uint32_t n0 = (uint32_t)(p1 >> 32) ^ c[1] ^ k0;
        const uint32_t n2 = (uint32_t)(p0 >> 32) ^ c[3] ^ k1;
        c[0] = n0;
        c[1] = (uint32_t)p1;
        c[2] = n2;
        c[3] = (uint32_t)p0;
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
}

void nk_philox4x32_10(int64_t n, const uint32_t *ctr, const uint32_t key[2], uint32_t *out)
{
    for (int64_t i = 0; i < n; i++) {
        uint32_t c[4] = {ctr[4 * i], ctr[4 * i + 1], ctr[4 * i + 2], ctr[4 * i + 3]};
        philox_scalar(c, key[0], key[1]);
        memcpy(out + 4 * i, c, sizeof c);
    }
}

typedef struct {
    uint32_t k0, k1, off0, off1, thr;
} nk_drop_key;

static inline void drop_words(const nk_drop_key *k, uint64_t b, uint32_t w[4])
{
    w[0] = (uint32_t)b;
    w[1] = (uint32_t)(b >> 32);
    w[2] = k->off0;
    w[3] = k->off1;
    philox_scalar(w, k->k0, k->k1);
}

/* Scalar reference on elements [e0, e1). */
#define NK_DROP_SCALAR(T, SUF)                                                        \
    static void drop_scalar_##SUF(const T *x, T *y, int64_t e0, int64_t e1,           \
                                  const nk_drop_key *k, T scale)                      \
    {                                                                                 \
        int64_t e = e0;                                                               \
        while (e < e1) {                                                              \
            uint32_t w[4];                                                            \
            drop_words(k, (uint64_t)e >> 2, w);                                       \
            for (int j = (int)(e & 3); j < 4 && e < e1; j++, e++)                     \
                y[e] = w[j] >= k->thr ? x[e] * scale : (T)0;                          \
        }                                                                             \
    }
NK_DROP_SCALAR(float, s)
NK_DROP_SCALAR(double, d)

/* ReLU bodies (auto-vectorised under each target).  No restrict: in place
 * (x == y) is allowed and reads element i before writing it. */
#define NK_RELU_BODY(T, SUF)                                                          \
    static void relu_##SUF(const T *x, T *y, int64_t e0, int64_t e1)                  \
    {                                                                                 \
        for (int64_t i = e0; i < e1; i++) {                                           \
            const T v = x[i];                                                         \
            y[i] = v <= (T)0 ? (T)0 : v;                                              \
        }                                                                             \
    }                                                                                 \
    static void relu_bwd_##SUF(const T *dy, const T *y, T *dx, int64_t e0, int64_t e1) \
    {                                                                                 \
        for (int64_t i = e0; i < e1; i++) {                                           \
            const T g = dy[i];                                                        \
            dx[i] = y[i] > (T)0 ? g : (T)0;                                           \
        }                                                                             \
    }

/* out = a + b (auto-vectorised under each target).  No restrict: out may be
 * exactly a or exactly b (element i is read before it is written); gcc
 * versions the loop with a runtime overlap check that lets out == a / out == b
 * through to the vector path.  One IEEE add per element: the same bits on
 * every ISA path and for every split. */
#define NK_ADD_BODY(T, SUF)                                                           \
    static void add_##SUF(const T *a, const T *b, T *y, int64_t e0, int64_t e1)       \
    {                                                                                 \
        for (int64_t i = e0; i < e1; i++) y[i] = a[i] + b[i];                         \
    }

#if NK_X86
/* ---------------------------------------------------------------- AVX2 -- */
NK_TARGET_AVX2_BEGIN
#include <immintrin.h>
NK_RELU_BODY(float, s_avx2)
NK_RELU_BODY(double, d_avx2)
NK_ADD_BODY(float, s_avx2)
NK_ADD_BODY(double, d_avx2)

static inline void mulhilo8(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    const __m256i pe = _mm256_mul_epu32(a, m);
    const __m256i po = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(pe, _mm256_slli_epi64(po, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(pe, 32), po, 0xAA);
}

/* Words of NB groups of blocks: group j is blocks b0 + 8j .. b0 + 8j + 7
 * (b0 % 8 == 0), in element order: e[4j + q] holds the uint32 of elements
 * 8q .. 8q+7 of group j (relative to 4 * (b0 + 8j)).  The NB states run side
 * by side so that their multiply latencies overlap (see philox16_keep_n). */
static inline __attribute__((always_inline)) void
philox8_n(const nk_drop_key *k, uint64_t b0, __m256i *e, const int NB)
{
    __m256i c0[4], c1[4], c2[4], c3[4];
    const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for (int j = 0; j < NB; j++) {
        const uint64_t b = b0 + 8 * (uint64_t)j;
        c0[j] = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)b), lane);
        c1[j] = _mm256_set1_epi32((int)(uint32_t)(b >> 32));
        c2[j] = _mm256_set1_epi32((int)k->off0);
        c3[j] = _mm256_set1_epi32((int)k->off1);
    }
    const __m256i m0 = _mm256_set1_epi32((int)PHILOX_M0), m1 = _mm256_set1_epi32((int)PHILOX_M1);
    uint32_t k0 = k->k0, k1 = k->k1;
    for (int r = 0; r < 10; r++) {
        const __m256i kv0 = _mm256_set1_epi32((int)k0), kv1 = _mm256_set1_epi32((int)k1);
        for (int j = 0; j < NB; j++) {
            __m256i hi0, lo0, hi1, lo1;
            mulhilo8(c0[j], m0, &hi0, &lo0);
            mulhilo8(c2[j], m1, &hi1, &lo1);
            c0[j] = _mm256_xor_si256(_mm256_xor_si256(hi1, c1[j]), kv0);
            c1[j] = lo1;
            c2[j] = _mm256_xor_si256(_mm256_xor_si256(hi0, c3[j]), kv1);
            c3[j] = lo0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    for (int j = 0; j < NB; j++) {
        const __m256i t0 = _mm256_unpacklo_epi32(c0[j], c1[j]);
        const __m256i t1 = _mm256_unpackhi_epi32(c0[j], c1[j]);
        const __m256i t2 = _mm256_unpacklo_epi32(c2[j], c3[j]);
        const __m256i t3 = _mm256_unpackhi_epi32(c2[j], c3[j]);
        const __m256i u0 = _mm256_unpacklo_epi64(t0, t2), u1 = _mm256_unpackhi_epi64(t0, t2);
        const __m256i u2 = _mm256_unpacklo_epi64(t1, t3), u3 = _mm256_unpackhi_epi64(t1, t3);
        __m256i *ej = e + 4 * j;
        ej[0] = _mm256_permute2x128_si256(u0, u1, 0x20);
        ej[1] = _mm256_permute2x128_si256(u2, u3, 0x20);
        ej[2] = _mm256_permute2x128_si256(u0, u1, 0x31);
        ej[3] = _mm256_permute2x128_si256(u2, u3, 0x31);
    }
}

static inline __m256i keep8(__m256i u, __m256i thr)
{
    return _mm256_cmpeq_epi32(_mm256_max_epu32(u, thr), u);
}

/* y = x * scale where kept, for the nq 8-element groups of u (words). */
static inline __attribute__((always_inline)) void
drop8_s(const float *x, float *y, const __m256i *u, int nq, __m256i thr, __m256 sc)
{
    for (int q = 0; q < nq; q++) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(x + 8 * q), sc);
        _mm256_storeu_ps(y + 8 * q, _mm256_and_ps(_mm256_castsi256_ps(keep8(u[q], thr)), v));
    }
}

static inline __attribute__((always_inline)) void
drop8_d(const double *x, double *y, const __m256i *u, int nq, __m256i thr, __m256d sc)
{
    for (int q = 0; q < nq; q++) {
        const __m256i kp = keep8(u[q], thr);
        const __m256i klo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(kp));
        const __m256i khi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(kp, 1));
        const __m256d v0 = _mm256_mul_pd(_mm256_loadu_pd(x + 8 * q), sc);
        const __m256d v1 = _mm256_mul_pd(_mm256_loadu_pd(x + 8 * q + 4), sc);
        _mm256_storeu_pd(y + 8 * q, _mm256_and_pd(_mm256_castsi256_pd(klo), v0));
        _mm256_storeu_pd(y + 8 * q + 4, _mm256_and_pd(_mm256_castsi256_pd(khi), v1));
    }
}

/* The Philox rounds of a block fill the out-of-order window: the hardware
 * prefetchers alone leave a cold x read (and a y write) latency-bound
 * (4.7 MB: 0.94 ms cold vs 0.29 ms in cache, one thread).  Ask for the
 * block DROP_PF_AHEAD elements ahead: its source's and its
 * destination's lines. */
#define DROP_PF_AHEAD 1024
static inline __attribute__((always_inline)) void
drop_prefetch(const void *x, void *y, int64_t left, size_t es)
{
    if (left < DROP_PF_AHEAD + 256) return;
    const char *px = (const char *)x + DROP_PF_AHEAD * es;
    char *py = (char *)y + DROP_PF_AHEAD * es;
    for (size_t b = 0; b < 256 * es; b += 64) {
        _mm_prefetch(px + b, _MM_HINT_T0);
        _mm_prefetch(py + b, _MM_HINT_T0);
    }
}

/* [e0, e1): e0 % 64 == 0; 128 elements (four Philox states) at a time, then 32 */
#define DROP_AVX2(T, SUF, VSET)                                                          \
    static void drop_##SUF##_avx2(const T *x, T *y, int64_t e0, int64_t e1,              \
                                  const nk_drop_key *k, T scale)                         \
    {                                                                                    \
        const __m256i thr = _mm256_set1_epi32((int)k->thr);                              \
        const VSET;                                                                      \
        int64_t e = e0;                                                                  \
        for (; e + 128 <= e1; e += 128) {                                                \
            __m256i u[16];                                                               \
            drop_prefetch(x + e, y + e, e1 - e, sizeof(T));                              \
            philox8_n(k, (uint64_t)e >> 2, u, 4);                                        \
            drop8_##SUF(x + e, y + e, u, 16, thr, sc);                                   \
        }                                                                                \
        for (; e + 32 <= e1; e += 32) {                                                  \
            __m256i u[4];                                                                \
            philox8_n(k, (uint64_t)e >> 2, u, 1);                                        \
            drop8_##SUF(x + e, y + e, u, 4, thr, sc);                                    \
        }                                                                                \
        drop_scalar_##SUF(x, y, e, e1, k, scale);                                        \
    }
DROP_AVX2(float, s, __m256 sc = _mm256_set1_ps(scale))
DROP_AVX2(double, d, __m256d sc = _mm256_set1_pd(scale))
#undef DROP_AVX2
NK_TARGET_END

/* ------------------------------------------------------------- AVX-512 -- */
NK_TARGET_AVX512_BEGIN
NK_RELU_BODY(float, s_avx512)
NK_RELU_BODY(double, d_avx512)
NK_ADD_BODY(float, s_avx512)
NK_ADD_BODY(double, d_avx512)

static inline void mulhilo16(__m512i a, __m512i m, __m512i *hi, __m512i *lo)
{
    const __m512i pe = _mm512_mul_epu32(a, m);
    const __m512i po = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);
    *lo = _mm512_mask_blend_epi32((__mmask16)0xAAAA, pe, _mm512_slli_epi64(po, 32));
    *hi = _mm512_mask_blend_epi32((__mmask16)0xAAAA, _mm512_srli_epi64(pe, 32), po);
}

/* Keep-masks of NB groups of 64 elements: group j covers blocks b0 + 16j ..
 * b0 + 16j + 15 (b0 % 16 == 0); m[4j + q] bit i <-> element 16q + i of
 * group j (relative to 4 * (b0 + 16j)).  The NB Philox states run side by
 * side so that their multiply latencies overlap (NB = 2: the rounds are a
 * dependency chain, one group alone leaves the multipliers idle). */
static inline __attribute__((always_inline)) void
philox16_keep_n(const nk_drop_key *k, uint64_t b0, __mmask16 *m, const int NB)
{
    __m512i c0[4], c1[4], c2[4], c3[4];
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int j = 0; j < NB; j++) {
        const uint64_t b = b0 + 16 * (uint64_t)j;
        c0[j] = _mm512_add_epi32(_mm512_set1_epi32((int)(uint32_t)b), lane);
        /* the high counter word of each lane (a group never crosses 2**32: b0 % 16 == 0) */
        c1[j] = _mm512_set1_epi32((int)(uint32_t)(b >> 32));
        c2[j] = _mm512_set1_epi32((int)k->off0);
        c3[j] = _mm512_set1_epi32((int)k->off1);
    }
    const __m512i m0 = _mm512_set1_epi32((int)PHILOX_M0), m1 = _mm512_set1_epi32((int)PHILOX_M1);
    uint32_t k0 = k->k0, k1 = k->k1;
    for (int r = 0; r < 10; r++) {
        const __m512i kv0 = _mm512_set1_epi32((int)k0), kv1 = _mm512_set1_epi32((int)k1);
        for (int j = 0; j < NB; j++) {
            __m512i hi0, lo0, hi1, lo1;
            mulhilo16(c0[j], m0, &hi0, &lo0);
            mulhilo16(c2[j], m1, &hi1, &lo1);
            c0[j] = _mm512_ternarylogic_epi32(hi1, c1[j], kv0, 0x96);
            c1[j] = lo1;
            c2[j] = _mm512_ternarylogic_epi32(hi0, c3[j], kv1, 0x96);
            c3[j] = lo0;
        }
        k0 += PHILOX_W0;
        k1 += PHILOX_W1;
    }
    const __m512i thr = _mm512_set1_epi32((int)k->thr);
    for (int j = 0; j < NB; j++) {
        const __m512i t0 = _mm512_unpacklo_epi32(c0[j], c1[j]);
        const __m512i t1 = _mm512_unpackhi_epi32(c0[j], c1[j]);
        const __m512i t2 = _mm512_unpacklo_epi32(c2[j], c3[j]);
        const __m512i t3 = _mm512_unpackhi_epi32(c2[j], c3[j]);
        /* uk, 128-bit chunk i: the 4 words of block 4i + k */
        const __m512i u0 = _mm512_unpacklo_epi64(t0, t2), u1 = _mm512_unpackhi_epi64(t0, t2);
        const __m512i u2 = _mm512_unpacklo_epi64(t1, t3), u3 = _mm512_unpackhi_epi64(t1, t3);
        const __m512i a = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(2, 0, 2, 0));
        const __m512i b = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(2, 0, 2, 0));
        const __m512i c = _mm512_shuffle_i32x4(u0, u1, _MM_SHUFFLE(3, 1, 3, 1));
        const __m512i d = _mm512_shuffle_i32x4(u2, u3, _MM_SHUFFLE(3, 1, 3, 1));
        __mmask16 *mj = m + 4 * j;
        mj[0] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(2, 0, 2, 0)), thr);
        mj[1] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(2, 0, 2, 0)), thr);
        mj[2] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(a, b, _MM_SHUFFLE(3, 1, 3, 1)), thr);
        mj[3] = _mm512_cmpge_epu32_mask(_mm512_shuffle_i32x4(c, d, _MM_SHUFFLE(3, 1, 3, 1)), thr);
    }
}

/* y = x * scale where kept, for the nq 16-element groups of masks m. */
static inline __attribute__((always_inline)) void
drop16_s(const float *x, float *y, const __mmask16 *m, int nq, __m512 sc)
{
    for (int q = 0; q < nq; q++)
        _mm512_storeu_ps(y + 16 * q, _mm512_maskz_mul_ps(m[q], _mm512_loadu_ps(x + 16 * q), sc));
}

static inline __attribute__((always_inline)) void
drop16_d(const double *x, double *y, const __mmask16 *m, int nq, __m512d sc)
{
    for (int q = 0; q < nq; q++) {
        _mm512_storeu_pd(y + 16 * q,
                         _mm512_maskz_mul_pd((__mmask8)m[q], _mm512_loadu_pd(x + 16 * q), sc));
        _mm512_storeu_pd(y + 16 * q + 8, _mm512_maskz_mul_pd((__mmask8)(m[q] >> 8),
                                                             _mm512_loadu_pd(x + 16 * q + 8), sc));
    }
}

/* [e0, e1): e0 % 64 == 0; 256 elements (four Philox states) at a time, then 64 */
#define DROP_AVX512(T, SUF, VSET)                                                        \
    static void drop_##SUF##_avx512(const T *x, T *y, int64_t e0, int64_t e1,            \
                                    const nk_drop_key *k, T scale)                       \
    {                                                                                    \
        const VSET;                                                                      \
        int64_t e = e0;                                                                  \
        for (; e + 256 <= e1; e += 256) {                                                \
            __mmask16 m[16];                                                             \
            drop_prefetch(x + e, y + e, e1 - e, sizeof(T));                              \
            philox16_keep_n(k, (uint64_t)e >> 2, m, 4);                                  \
            drop16_##SUF(x + e, y + e, m, 16, sc);                                       \
        }                                                                                \
        for (; e + 64 <= e1; e += 64) {                                                  \
            __mmask16 m[4];                                                              \
            philox16_keep_n(k, (uint64_t)e >> 2, m, 1);                                  \
            drop16_##SUF(x + e, y + e, m, 4, sc);                                        \
        }                                                                                \
        drop_scalar_##SUF(x, y, e, e1, k, scale);                                        \
    }
DROP_AVX512(float, s, __m512 sc = _mm512_set1_ps(scale))
DROP_AVX512(double, d, __m512d sc = _mm512_set1_pd(scale))
#undef DROP_AVX512
NK_TARGET_END
#endif /* NK_X86 */

/* ------------------------------------------------------------ portable -- */
NK_RELU_BODY(float, s_generic)
NK_RELU_BODY(double, d_generic)
NK_ADD_BODY(float, s_generic)
NK_ADD_BODY(double, d_generic)

/* Work runs in NK_CHUNKED_PARALLEL's chunks (nk_internal.h); results do
 * not depend on the split (dropout's counter is the element index). */
_Static_assert(NK_PAR_CHUNK % NK_EW_ALIGN == 0, "chunks must keep SIMD blocks whole");

typedef void (*relu_s_fn)(const float *, float *, int64_t, int64_t);
typedef void (*relu_d_fn)(const double *, double *, int64_t, int64_t);
typedef void (*relub_s_fn)(const float *, const float *, float *, int64_t, int64_t);
typedef void (*relub_d_fn)(const double *, const double *, double *, int64_t, int64_t);

void nk_relu(int64_t n, const void *x, void *y, int dbl)
{
    if (n <= 0) return;
    const int isa = nk_get_isa();
    (void)isa;
    if (dbl) {
        relu_d_fn f = relu_d_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = relu_d_avx512;
        else if (isa == NK_ISA_AVX2) f = relu_d_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 16 * n, f((const double *)x, (double *)y, e0, e1));
    } else {
        relu_s_fn f = relu_s_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = relu_s_avx512;
        else if (isa == NK_ISA_AVX2) f = relu_s_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 8 * n, f((const float *)x, (float *)y, e0, e1));
    }
}

void nk_relu_backward(int64_t n, const void *dy, const void *y, void *dx, int dbl)
{
    if (n <= 0) return;
    const int isa = nk_get_isa();
    (void)isa;
    if (dbl) {
        relub_d_fn f = relu_bwd_d_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = relu_bwd_d_avx512;
        else if (isa == NK_ISA_AVX2) f = relu_bwd_d_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 24 * n, f((const double *)dy, (const double *)y, (double *)dx, e0, e1));
    } else {
        relub_s_fn f = relu_bwd_s_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = relu_bwd_s_avx512;
        else if (isa == NK_ISA_AVX2) f = relu_bwd_s_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 12 * n, f((const float *)dy, (const float *)y, (float *)dx, e0, e1));
    }
}

typedef void (*add_s_fn)(const float *, const float *, float *, int64_t, int64_t);
typedef void (*add_d_fn)(const double *, const double *, double *, int64_t, int64_t);

void nk_add(int64_t n, const void *a, const void *b, void *out, int dbl)
{
    if (n <= 0) return;
    const int isa = nk_get_isa();
    (void)isa;
    if (dbl) {
        add_d_fn f = add_d_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = add_d_avx512;
        else if (isa == NK_ISA_AVX2) f = add_d_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 24 * n, f((const double *)a, (const double *)b, (double *)out, e0, e1));
    } else {
        add_s_fn f = add_s_generic;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = add_s_avx512;
        else if (isa == NK_ISA_AVX2) f = add_s_avx2;
#endif
        NK_CHUNKED_PARALLEL(n, 12 * n, f((const float *)a, (const float *)b, (float *)out, e0, e1));
    }
}

typedef void (*drop_s_fn)(const float *, float *, int64_t, int64_t, const nk_drop_key *, float);
typedef void (*drop_d_fn)(const double *, double *, int64_t, int64_t, const nk_drop_key *, double);

void nk_dropout(int64_t n, const void *x, void *y, uint32_t threshold, double scale,
                uint64_t seed, uint64_t offset, int dbl)
{
    if (n <= 0) return;
    const size_t es = dbl ? sizeof(double) : sizeof(float);
    if (threshold == 0 && scale == 1.0) { /* rate 0: a copy */
        if (x != y) memmove(y, x, es * (size_t)n);
        return;
    }
    const nk_drop_key key = {(uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)offset,
                             (uint32_t)(offset >> 32), threshold};
    const nk_drop_key *k = &key;
    const int isa = nk_get_isa();
    (void)isa;
    /* Philox is the larger cost: thread from a smaller size than the plain
     * elementwise kernels. */
    const int64_t bytes = 8 * (int64_t)es * n;
    if (dbl) {
        drop_d_fn f = drop_scalar_d;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = drop_d_avx512;
        else if (isa == NK_ISA_AVX2) f = drop_d_avx2;
#endif
        const double sc = scale;
        NK_CHUNKED_PARALLEL(n, bytes, f((const double *)x, (double *)y, e0, e1, k, sc));
    } else {
        drop_s_fn f = drop_scalar_s;
#if NK_X86
        if (isa == NK_ISA_AVX512) f = drop_s_avx512;
        else if (isa == NK_ISA_AVX2) f = drop_s_avx2;
#endif
        const float sc = (float)scale;
        NK_CHUNKED_PARALLEL(n, bytes, f((const float *)x, (float *)y, e0, e1, k, sc));
    }
}

void nk_dropout_mask(int64_t n, uint8_t *mask, uint32_t threshold, uint64_t seed,
                     uint64_t offset)
{
    const nk_drop_key key = {(uint32_t)seed, (uint32_t)(seed >> 32), (uint32_t)offset,
                             (uint32_t)(offset >> 32), threshold};
    for (int64_t e = 0; e < n;) {
        uint32_t w[4];
        drop_words(&key, (uint64_t)e >> 2, w);
        for (int j = 0; j < 4 && e < n; j++, e++) mask[e] = w[j] >= threshold;
    }
}

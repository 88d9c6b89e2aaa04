/* The float32 AVX-512 instance's parameters (nk_kern_body.h's macros):
 * one definition for the float32 kernels and the bfloat16 ones, whose
 * packing is the float32 kernels' (so MR and NR must be the same).
 * 8 x 32 tile, 16 zmm accumulators.  Reset by nk_kern_undef.h. */
#define T float
#define V __m512
#define VL 16
#define NV 2
#define MR 8
#define MC 192 /* A block 384 KiB: in the 1 MiB L2 of Zen 4 */
#define KC 512 /* measured: +3-4 % over 384 on 1024^3/2048^3 */
#define NC 3072
#define V_ZERO() _mm512_setzero_ps()
#define V_LOAD(p) _mm512_load_ps(p)
#define V_LOADU(p) _mm512_loadu_ps(p)
#define V_STOREU(p, v) _mm512_storeu_ps(p, v)
#define V_BCAST(x) _mm512_set1_ps(x)
#define V_FMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define V_MUL(a, b) _mm512_mul_ps(a, b)
#define V_ADD(a, b) _mm512_add_ps(a, b)
#define V_MAX(a, b) _mm512_max_ps(a, b)
#define V_LOADN(p, n) _mm512_maskz_loadu_ps((__mmask16)((1u << (n)) - 1), p)

/* Batch-normalisation loop bodies (nk_bn_body.h) compiled once per ISA
 * path -- generic (the build's baseline: SSE2 on x86-64), AVX2, AVX-512 --
 * and picked at run time from nk_get_isa() (CPUID, NNKERNELS_ISA, set_isa).
 *
 * Bitwise the same results on every path: floating-point contraction is off
 * for the whole file (GCC: the optimize pragma below, applied to every
 * function defined after it, per-ISA regions included; Clang: STDC
 * FP_CONTRACT), and the target regions leave out "fma" too.  The first
 * matters: AVX-512F has FMA instructions of its own, and GCC contracts
 * a*b + c into them under its default -ffp-contract=fast (the build is
 * -std=gnu11) even without "fma" -- checked with objdump: no vfmadd in
 * this file's object.
 *
 * The AVX-512 region prefers 256-bit vectors (ymm, EVEX encodings and 32
 * registers available): with 512-bit ones GCC 12 turns the ReLU masks
 * (y > 0 ? dy : 0 on a loaded dy) into zero-masking loads, which on AMD
 * Zen 4 made the backward with ReLU twice as slow as the AVX2 code, and the
 * other loops were no faster in zmm (memory bound).  Clang's x86 targets
 * prefer 256 bits by default.
 *
 * The pragma must precede every function definition of the file (GCC does
 * not inline between functions of different optimize settings). */
#if defined(__clang__)
#pragma STDC FP_CONTRACT OFF
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
#include <stdint.h>
#include <string.h>
#include "nk_internal.h"
#include "nk_target.h"
#include "nk_bn_kern.h"

/* The ISAs of nk_target.h less FMA (see above). */
#define NK_BN_FLAGS_AVX2 "avx2"
#if defined(__clang__)
#define NK_BN_FLAGS_AVX512 "avx512f,avx512dq,avx512vl,avx2"
#else
#define NK_BN_FLAGS_AVX512 "avx512f,avx512dq,avx512vl,avx2,prefer-vector-width=256"
#endif

#define ISA generic
#define BN_VEC 0
#include "nk_bn_inst.h"
#undef BN_VEC
#define BN_VEC 1
#define BN_GL 4

#if NK_X86
NK_TARGET_BEGIN_(NK_BN_FLAGS_AVX2)
#define ISA avx2
#include "nk_bn_inst.h"
NK_TARGET_END

NK_TARGET_BEGIN_(NK_BN_FLAGS_AVX512)
#undef BN_GL
#define ISA avx512
#define BN_GL 8
#include "nk_bn_inst.h"
NK_TARGET_END
#endif
#undef BN_VEC
#undef BN_GL

/* nk_bn_kern_S_current: the table of the ISA path in use */
#if NK_X86
#define NK_BN_CURRENT(S)                                                                 \
    const nk_bn_kern_##S *nk_bn_kern_##S##_current(void)                                 \
    {                                                                                    \
        switch (nk_get_isa()) {                                                          \
        case NK_ISA_AVX512: return &nk_bn_kern_##S##_avx512;                             \
        case NK_ISA_AVX2: return &nk_bn_kern_##S##_avx2;                                 \
        }                                                                                \
        return &nk_bn_kern_##S##_generic;                                                \
    }
#else
#define NK_BN_CURRENT(S)                                                                 \
    const nk_bn_kern_##S *nk_bn_kern_##S##_current(void) { return &nk_bn_kern_##S##_generic; }
#endif
NK_BN_CURRENT(s)
NK_BN_CURRENT(d)
NK_BN_CURRENT(h)
#undef NK_BN_CURRENT

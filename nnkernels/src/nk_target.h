/* Compile a region of a source file for one x86 ISA, whatever the build's
 * -march: the kernels of that region are called only after run-time
 * dispatch (nk_cpu.c) has checked CPUID and the OS's XSAVE state.
 *
 *   NK_TARGET_AVX2_BEGIN ... NK_TARGET_END
 *   NK_TARGET_AVX512_BEGIN ... NK_TARGET_END
 *   NK_TARGET_AVX512BF16_BEGIN ... NK_TARGET_END
 */
#ifndef NK_TARGET_H
#define NK_TARGET_H

#define NK_ISA_FLAGS_AVX2 "avx2,fma"
#define NK_ISA_FLAGS_AVX512 "avx512f,avx512dq,avx512vl,avx2,fma,popcnt" /* every AVX-512 CPU has POPCNT */

#define NK_PRAGMA_(x) _Pragma(#x)
#if defined(__clang__)
#define NK_TARGET_BEGIN_(flags)                                                \
    NK_PRAGMA_(clang attribute push(__attribute__((target(flags))), apply_to = function))
#define NK_TARGET_END _Pragma("clang attribute pop")
#elif defined(__GNUC__)
#define NK_TARGET_BEGIN_(flags) _Pragma("GCC push_options") NK_PRAGMA_(GCC target(flags))
#define NK_TARGET_END _Pragma("GCC pop_options")
#else
#error "nnkernels needs GCC or Clang (per-ISA target regions, vector extensions)"
#endif

#define NK_TARGET_AVX2_BEGIN NK_TARGET_BEGIN_(NK_ISA_FLAGS_AVX2)
#define NK_TARGET_AVX512_BEGIN NK_TARGET_BEGIN_(NK_ISA_FLAGS_AVX512)
/* AVX-512 plus the bfloat16 instructions (VDPBF16PS, VCVTNE2PS2BF16) and
 * AVX512BW (word permutes): every AVX512_BF16 CPU has BW */
#define NK_ISA_FLAGS_AVX512BF16 NK_ISA_FLAGS_AVX512 ",avx512bw,avx512bf16"
#define NK_TARGET_AVX512BF16_BEGIN NK_TARGET_BEGIN_(NK_ISA_FLAGS_AVX512BF16)

#endif

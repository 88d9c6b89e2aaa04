/* Helpers shared by the nnkernels CUDA sources.
 *
 * These files are compiled at run time by NVRTC (cupy.RawModule); the
 * loader in __init__.py pastes this header in place of its #include, so no
 * include path and no system header is needed (NVRTC has none).  They also
 * compile with nvcc (check_compile.py) for a compile check without a GPU.
 *
 * Conventions: grid-stride loops over 64-bit element counts; index
 * arithmetic inside a tensor in int (the host checks sizes < 2**31);
 * reductions in double over fixed blocks in a fixed order, so the results
 * are the same bits run after run and do not depend on the grid size.
 */
#ifndef NK_COMMON_CUH
#define NK_COMMON_CUH

typedef long long nk_i64;
typedef unsigned long long nk_u64;
typedef unsigned int nk_u32;

#define NK_LOOP(i, n)                                                                  \
    for (nk_i64 i = (nk_i64)blockIdx.x * blockDim.x + threadIdx.x; i < (nk_i64)(n);   \
         i += (nk_i64)blockDim.x * gridDim.x)

/* Threads per block of the kernels that use nk_block_sum (the host launches
 * them with exactly this many). */
#define NK_RED_THREADS 256

/* Sum of v over the block (NK_RED_THREADS threads), fixed tree order; every
 * thread gets the result.  sh: NK_RED_THREADS doubles of shared memory. */
__device__ __forceinline__ double nk_block_sum(double v, double *sh)
{
    const int t = threadIdx.x;
    sh[t] = v;
    __syncthreads();
    for (int s = NK_RED_THREADS / 2; s > 0; s >>= 1) {
        if (t < s) sh[t] += sh[t + s];
        __syncthreads();
    }
    const double r = sh[0];
    __syncthreads();
    return r;
}

template <typename T> __device__ __forceinline__ T nk_neg_inf();
template <> __device__ __forceinline__ float nk_neg_inf<float>() { return __int_as_float(0xff800000); }
template <> __device__ __forceinline__ double nk_neg_inf<double>()
{
    return __longlong_as_double((long long)0xfff0000000000000ULL);
}

template <typename T> __device__ __forceinline__ T nk_sqrt(T v);
template <> __device__ __forceinline__ float nk_sqrt<float>(float v) { return sqrtf(v); }
template <> __device__ __forceinline__ double nk_sqrt<double>(double v) { return sqrt(v); }

__device__ __forceinline__ double nk_nan()
{
    return __longlong_as_double(0x7ff8000000000000LL);
}

/* The comparison of every max/argmax here (as the CPU kernels and numpy):
 * v > best, or v is NaN and best is not -- the first maximum wins and the
 * first NaN wins over numbers. */
template <typename T> __device__ __forceinline__ bool nk_beats(T v, T best)
{
    return !(v <= best) && best == best;
}

#endif

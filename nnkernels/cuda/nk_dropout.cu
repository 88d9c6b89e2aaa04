/* Inverted dropout from the Philox4x32-10 stream of nnkernels (see
 * nnkernels/src/nk_elementwise.c and pynn.backend.dropout_keep_mask):
 * element e (flat C order) takes word e % 4 of the block with counter
 * (e/4 low, e/4 high, offset low, offset high) and key (seed low, seed
 * high); it is kept iff that word >= thr = floor(rate * 2**32), and then
 * scaled by `scale` (= (T)(1 / (1 - rate))).  Integer arithmetic only: the
 * same masks, bit for bit, as the CPU kernels. */
#include "nk_common.cuh"

#define NK_PHILOX_M0 0xD2511F53u
#define NK_PHILOX_M1 0xCD9E8D57u
#define NK_PHILOX_W0 0x9E3779B9u
#define NK_PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ void nk_philox4x32_10(nk_u32 c[4], nk_u32 k0, nk_u32 k1)
{
#pragma unroll
    for (int r = 0; r < 10; r++) {
        const nk_u32 hi0 = __umulhi(NK_PHILOX_M0, c[0]), lo0 = NK_PHILOX_M0 * c[0];
        const nk_u32 hi1 = __umulhi(NK_PHILOX_M1, c[2]), lo1 = NK_PHILOX_M1 * c[2];
        c[0] = hi1 ^ c[1] ^ k0;
        c[1] = lo1;
        c[2] = hi0 ^ c[3] ^ k1;
        c[3] = lo0;
        k0 += NK_PHILOX_W0;
        k1 += NK_PHILOX_W1;
    }
}

/* One thread per Philox block (4 elements).  y may be x. */
template <typename T>
__global__ void nk_dropout(const T *x, T *y, nk_i64 n, nk_u32 thr, T scale, nk_u32 k0, nk_u32 k1,
                           nk_u32 off0, nk_u32 off1)
{
    const nk_i64 nblk = (n + 3) / 4;
    NK_LOOP(b, nblk) {
        nk_u32 wd[4] = {(nk_u32)(nk_u64)b, (nk_u32)((nk_u64)b >> 32), off0, off1};
        nk_philox4x32_10(wd, k0, k1);
        const nk_i64 e0 = 4 * b;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            const nk_i64 e = e0 + j;
            if (e < n) y[e] = wd[j] >= thr ? x[e] * scale : (T)0;
        }
    }
}

/* The keep mask itself (1 kept, 0 dropped), for tests. */
extern "C" __global__ void nk_dropout_mask(unsigned char *mask, nk_i64 n, nk_u32 thr, nk_u32 k0, nk_u32 k1,
                                nk_u32 off0, nk_u32 off1)
{
    const nk_i64 nblk = (n + 3) / 4;
    NK_LOOP(b, nblk) {
        nk_u32 wd[4] = {(nk_u32)(nk_u64)b, (nk_u32)((nk_u64)b >> 32), off0, off1};
        nk_philox4x32_10(wd, k0, k1);
        for (int j = 0; j < 4; j++) {
            const nk_i64 e = 4 * b + j;
            if (e < n) mask[e] = wd[j] >= thr;
        }
    }
}

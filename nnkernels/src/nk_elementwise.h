/* nnkernels: elementwise kernels (ReLU, add, dropout) and the Philox4x32-10
 * counter-based random number generator.  float32 ("dbl" = 0) / float64.
 *
 * All arrays are contiguous; `n` is the element count.  In-place use is
 * allowed (out == x, out == dy; for add, out == a or out == b).  Results
 * are bitwise identical on every ISA path and for every thread count.
 *
 * Dropout stream (the same on CPU and GPU): for element e (flat C-order
 * index into the tensor), with key = (seed & 0xffffffff, seed >> 32),
 *     words = Philox4x32-10(counter = (b & 0xffffffff, b >> 32,
 *                                      offset & 0xffffffff, offset >> 32), key),
 *     b = e / 4,  u = words[e % 4],
 * the element is kept iff u >= threshold, threshold = floor(rate * 2^32),
 * so P(keep) = 1 - threshold / 2^32 (= 1 - rate up to 2^-32).
 * Kept elements are multiplied by scale (= 1 / (1 - rate)), dropped ones are
 * +0.  Different offsets give non-overlapping streams whatever the tensor
 * size: a training loop passes its step number.
 */
#ifndef NK_ELEMENTWISE_H
#define NK_ELEMENTWISE_H
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* y = x > 0 ? x : 0, NaN kept (y = x <= 0 ? +0 : x). */
void nk_relu(int64_t n, const void *x, void *y, int dbl);
/* dx = y > 0 ? dy : 0. */
void nk_relu_backward(int64_t n, const void *dy, const void *y, void *dx, int dbl);
/* out = a + b (one rounding per element: summing gradients in place,
 * nk_add(n, acc, g, acc, dbl)).  out may be exactly a or exactly b; a and b
 * may be the same buffer. */
void nk_add(int64_t n, const void *a, const void *b, void *out, int dbl);

/* The Philox4x32-10 bijection on `n` 4-word counters (ctr[4*i .. 4*i+3])
 * with one 2-word key; out may equal ctr. */
void nk_philox4x32_10(int64_t n, const uint32_t *ctr, const uint32_t key[2], uint32_t *out);

/* y = keep(e) ? x * scale : 0 with keep() from the stream above.  Dropout's
 * backward is the same call on dy. */
void nk_dropout(int64_t n, const void *x, void *y, uint32_t threshold, double scale,
                uint64_t seed, uint64_t offset, int dbl);

/* keep(e) as 0/1 bytes (tests, the NumPy reference). */
void nk_dropout_mask(int64_t n, uint8_t *mask, uint32_t threshold, uint64_t seed,
                     uint64_t offset);

#ifdef __cplusplus
}
#endif
#endif

/* Workspace arenas shared by every kernel (GEMM packing buffers, convolution
 * scratch): steady-state calls reuse memory that is already touched. */
#include <stdlib.h>
#include "nk_internal.h"
#if defined(__linux__)
#include <sys/mman.h>
#endif

/* Process-wide arenas, each grown when a call needs more and then reused, so
 * steady-state calls touch no fresh pages.  Concurrent calls (one
 * single-threaded GEMM per thread run side by side by the convolution's dX
 * and dW, plus the convolution's own scratch, or calls from several Python
 * threads) take different arenas; an arena costs memory only once used, so
 * there are enough for a many-core node; a call that finds all busy gets a
 * temporary buffer. */
#define NK_ARENAS 64
static void *g_arena[NK_ARENAS];
static size_t g_arena_size[NK_ARENAS];
static int g_arena_busy[NK_ARENAS];

static void *nk_aligned_alloc(size_t bytes)
{
    void *p = NULL;
    const size_t align = bytes >= (4u << 20) ? (2u << 20) : 64;
    if (posix_memalign(&p, align, bytes ? bytes : 64) != 0) return NULL;
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    if (bytes >= (4u << 20)) madvise(p, bytes, MADV_HUGEPAGE);
#endif
    return p;
}

void *nk_ws_acquire(size_t bytes, int *from_arena)
{
    for (int i = 0; i < NK_ARENAS; i++) {
        if (__atomic_test_and_set(&g_arena_busy[i], __ATOMIC_ACQUIRE)) continue;
        if (g_arena_size[i] < bytes) {
            free(g_arena[i]);
            g_arena_size[i] = 0;
            /* grow geometrically (and to whole 2 MiB units) */
            size_t want = bytes + bytes / 4;
            want = (want + (2u << 20) - 1) & ~(size_t)((2u << 20) - 1);
            g_arena[i] = nk_aligned_alloc(want);
            if (!g_arena[i]) {
                __atomic_clear(&g_arena_busy[i], __ATOMIC_RELEASE);
                return NULL;
            }
            g_arena_size[i] = want;
        }
        *from_arena = i + 1;
        return g_arena[i];
    }
    *from_arena = 0;
    return nk_aligned_alloc(bytes);
}

void nk_ws_release(void *p, int from_arena)
{
    if (from_arena)
        __atomic_clear(&g_arena_busy[from_arena - 1], __ATOMIC_RELEASE);
    else
        free(p);
}

void nk_release_workspace(void)
{
    for (int i = 0; i < NK_ARENAS; i++) {
        if (!__atomic_test_and_set(&g_arena_busy[i], __ATOMIC_ACQUIRE)) {
            free(g_arena[i]);
            g_arena[i] = NULL;
            g_arena_size[i] = 0;
            __atomic_clear(&g_arena_busy[i], __ATOMIC_RELEASE);
        }
    }
}

int64_t nk_workspace_bytes(void)
{
    size_t total = 0;
    for (int i = 0; i < NK_ARENAS; i++) total += __atomic_load_n(&g_arena_size[i], __ATOMIC_RELAXED);
    return (int64_t)total;
}

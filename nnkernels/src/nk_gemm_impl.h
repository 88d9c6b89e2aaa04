/* GEMM driver body, included once per dtype by nk_gemm.c with
 * T, S (s|d), ARGS, KERNT, EPT, CURRENT defined.
 *
 * BLIS loop nest: jc (NC columns of B) -> pc (KC of K: pack B panel) ->
 * ic (MC rows: pack A block) -> jr (NR) -> ir (MR) -> micro-kernel.
 *
 * Threads:
 *  - "row split" (the usual case): each thread owns a contiguous, MR-aligned
 *    range of rows of C; the B panel is packed cooperatively (each thread
 *    packs some NR slivers) into one of two shared buffers, so one barrier
 *    per panel suffices (double buffering); each thread packs its own A.
 *  - "column split" (few rows, e.g. m < 2*MR*threads): each thread owns an
 *    NR-aligned column range and runs the serial loop nest on private
 *    buffers (A is small then, so packing it per thread is cheap).
 * Either way each element of C is produced by one thread, k ascending.
 */
#define FN_(name, s) name##_##s
#define FNX(name, s) FN_(name, s)
#define FN(name) FNX(name, S)

/* LOWP (bfloat16 products, float32 arguments): PT is the packed element
 * (uint16_t bf16 pairs), blocks of k are padded to even (KP), the float32
 * kernels pack into a per-thread float32 scratch (PK) and cvt turns each
 * sliver into pairs; B is never read in place.  Otherwise PT = T. */
#if LOWP
#define PT uint16_t
#define KP(k) (((k) + 1) & ~(int64_t)1)
#define PK(kr) ((kr)->f32)
#else
#define PT T
#define KP(k) (k)
#define PK(kr) (kr)
#endif

/* Where the micro-kernels find the current KC x NC block of op(B): packed
 * slivers (ldb = NR), or, when op(B) is row-major with unit column stride and
 * few row slivers reuse it, read in place (ldb = B's row stride) with only
 * the ragged last sliver packed (it could not be read a full vector wide). */
typedef struct {
    const PT *base;    /* sliver s starts at base + s * sl_stride */
    int64_t sl_stride, ldb;
    const PT *edge;    /* packed last sliver (direct mode), else NULL */
    int64_t edge_jr;
} FN(bview);

static void FN(macro)(const ARGS *g, const KERNT *kr, int64_t ic, int64_t jc,
                      int64_t mcur, int64_t ncur, int64_t pc, int64_t kcur,
                      const PT *abuf, const FN(bview) *bv)
{
    const int mr = kr->mr, nr = kr->nr;
    EPT ep;
    ep.alpha = g->alpha;
    ep.beta = g->beta;
    ep.act = g->act;
    ep.accum = pc > 0;
    ep.last = pc + kcur == g->k;
    ep.ldcsrc = g->ldc;
    for (int64_t jr = 0; jr < ncur; jr += nr) {
        const int nn = (int)(ncur - jr < nr ? ncur - jr : nr);
        const PT *bp = bv->base + (jr / nr) * bv->sl_stride;
        int64_t ldb = bv->ldb;
        if (bv->edge && jr == bv->edge_jr) {
            bp = bv->edge;
            ldb = nr;
        }
        ep.bias = g->bias ? g->bias + jc + jr : NULL;
        for (int64_t ir = 0; ir < mcur; ir += mr) {
            const int mm = (int)(mcur - ir < mr ? mcur - ir : mr);
            ep.csrc = (pc == 0 && g->c) ? g->c + (ic + ir) * g->ldc + jc + jr : NULL;
#if LOWP
            (void)ldb;
            (nn <= nr / 2 ? kr->ukr_half : kr->ukr)(
                KP(kcur), abuf + ir * KP(kcur), bp, g->out + (ic + ir) * g->ldo + jc + jr,
                g->ldo, &ep, mm, nn);
#else
            (nn <= nr / 2 ? kr->ukr_half : kr->ukr)(
                kcur, abuf + ir * kcur, bp, ldb, g->out + (ic + ir) * g->ldo + jc + jr,
                g->ldo, &ep, mm, nn);
#endif
        }
    }
}

/* One NR-column sliver of op(B) (columns j.., nn of them) packed into dst:
 * directly, or (LOWP) through the float32 scratch scr and cvt. */
static inline void FN(pack_b_sliver)(const ARGS *g, const KERNT *kr, int64_t j, int64_t nn,
                                     int64_t pc, int64_t kcur, PT *dst, float *scr)
{
#if LOWP
    if (kr->pack_b_rows && nn == kr->nr && g->csb == 1 && (!g->bmask || g->csbm == 1)) {
        kr->pack_b_rows(kcur, g->b + pc * g->rsb + j, g->rsb,
                        g->bmask ? g->bmask + pc * g->rsbm + j : NULL, g->rsbm,
                        g->bcolsum ? g->bcolsum + j : NULL, dst);
        return;
    }
    float *to = scr;
#else
    PT *to = dst;
    (void)scr;
#endif
    PK(kr)->pack_b(kcur, nn, g->b + pc * g->rsb + j * g->csb, g->rsb, g->csb,
                   g->bmask ? g->bmask + pc * g->rsbm + j * g->csbm : NULL,
                   g->rsbm, g->csbm, g->bdact,
                   g->bcolsum ? g->bcolsum + j : NULL, to);
#if LOWP
    kr->cvt(kcur, kr->nr, scr, dst);
#endif
}

static void FN(pack_b_panel)(const ARGS *g, const KERNT *kr, int64_t jc,
                             int64_t ncur, int64_t pc, int64_t kcur, PT *bbuf, float *scr)
{
    const int nr = kr->nr;
    const int64_t nsl = (ncur + nr - 1) / nr;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
    for (int64_t s = 0; s < nsl; s++) {
        const int64_t j = jc + s * nr;
        const int64_t nn = ncur - s * nr < nr ? ncur - s * nr : nr;
        FN(pack_b_sliver)(g, kr, j, nn, pc, kcur, bbuf + s * nr * KP(kcur), scr);
    }
}

/* One thread's share: rows [r0, r1), columns [c0, c1).
 * mode 0: private packed B; 1: shared packed B, packed by the whole team
 * (all threads then have equal column ranges, so equal loop counts and
 * matching barriers); 2: B read in place (bbuf0 holds the edge sliver). */
static void FN(worker)(const ARGS *g, const KERNT *kr, int64_t r0, int64_t r1,
                       int64_t c0, int64_t c1, int64_t mc, int64_t kc,
                       int64_t nc, PT *abuf, PT *bbuf0, PT *bbuf1, int mode, float *scr)
{
    const int nr = kr->nr;
    int64_t it = 0;
    for (int64_t jc = c0; jc < c1; jc += nc) {
        const int64_t ncur = c1 - jc < nc ? c1 - jc : nc;
        for (int64_t pc = 0; pc < g->k; pc += kc) {
            const int64_t kcur = g->k - pc < kc ? g->k - pc : kc;
            FN(bview) bv;
            if (mode == 2) {
#if !LOWP
                if (r0 >= r1) continue;
                bv.base = g->b + pc * g->rsb + jc;
                bv.sl_stride = nr;
                bv.ldb = g->rsb;
                bv.edge = NULL;
                bv.edge_jr = ncur / nr * nr;
                if (ncur % nr) {
                    kr->pack_b(kcur, ncur % nr, bv.base + bv.edge_jr, g->rsb, 1, NULL, 0, 0,
                               0, NULL, bbuf0);
                    bv.edge = bbuf0;
                }
#endif
            } else {
                PT *bbuf = (it++ & 1) ? bbuf1 : bbuf0;
                if (mode == 1) {
                    FN(pack_b_panel)(g, kr, jc, ncur, pc, kcur, bbuf, scr);
                } else {
#if LOWP
                    for (int64_t j = 0; j < ncur; j += nr)
                        FN(pack_b_sliver)(g, kr, jc + j, ncur - j < nr ? ncur - j : nr, pc, kcur,
                                          bbuf + j * KP(kcur), scr);
#else
                    kr->pack_b(kcur, ncur, g->b + pc * g->rsb + jc * g->csb, g->rsb, g->csb,
                               g->bmask ? g->bmask + pc * g->rsbm + jc * g->csbm : NULL,
                               g->rsbm, g->csbm, g->bdact,
                               g->bcolsum ? g->bcolsum + jc : NULL, bbuf);
#endif
                }
                bv.base = bbuf;
                bv.sl_stride = nr * KP(kcur);
                bv.ldb = nr;
                bv.edge = NULL;
                bv.edge_jr = -1;
            }
            for (int64_t ic = r0; ic < r1; ic += mc) {
                const int64_t mcur = r1 - ic < mc ? r1 - ic : mc;
#if LOWP
                float *ato = scr;
                if (g->pack_a_lowp) /* straight into bf16 pairs */
                    g->pack_a_lowp(g->pack_a_ctx, ic, mcur, pc, kcur, kr->mr, abuf);
                else
#else
                PT *ato = abuf;
#endif
                if (g->pack_a)
                    g->pack_a(g->pack_a_ctx, ic, mcur, pc, kcur, kr->mr, ato);
                else
                    PK(kr)->pack_a(mcur, kcur, g->a + ic * g->rsa + pc * g->csa, g->rsa, g->csa,
                                   g->amask ? g->amask + ic * g->rsam + pc * g->csam : NULL,
                                   g->rsam, g->csam, g->adact, ato);
#if LOWP
                if (!g->pack_a_lowp)
                    for (int64_t i = 0; i < mcur; i += kr->mr)
                        kr->cvt(kcur, kr->mr, scr + i * kcur, abuf + i * KP(kcur));
#endif
                FN(macro)(g, kr, ic, jc, mcur, ncur, pc, kcur, abuf, &bv);
            }
        }
    }
}

/* k == 0: out = act(beta*c + bias); the product is empty. */
static void FN(epilogue_only)(const ARGS *g)
{
    for (int64_t i = 0; i < g->m; i++)
        for (int64_t j = 0; j < g->n; j++) {
            T r = g->c ? g->beta * g->c[i * g->ldc + j] : (T)0;
            if (g->bias) r += g->bias[j];
            if (g->act == NK_ACT_RELU) r = r < (T)0 ? (T)0 : r;
            g->out[i * g->ldo + j] = r;
        }
}

int FN(nk_gemm)(const ARGS *g)
{
    const KERNT *kr = CURRENT();
    const int64_t m = g->m, n = g->n, k = g->k;
    const int mr = kr->mr, nr = kr->nr;

    if (g->bcolsum && !g->bcolsum_accumulate)
        for (int64_t j = 0; j < n; j++) g->bcolsum[j] = (T)0;
    if (m == 0 || n == 0 || k == 0) {
        if (k == 0 && m > 0 && n > 0) FN(epilogue_only)(g);
        if (m == 0 && g->bcolsum && k > 0) {
            /* no rows of C: B is never packed, sum it directly */
            for (int64_t p = 0; p < k; p++)
                for (int64_t j = 0; j < n; j++) {
                    T v = g->b[p * g->rsb + j * g->csb];
                    if (g->bmask && !(g->bmask[p * g->rsbm + j * g->csbm] > (T)0)) v = (T)0;
                    g->bcolsum[j] += v;
                }
        }
        return 0;
    }

    /* threads: at least NK_MIN_FLOPS_PER_THREAD each (a fork/join costs
     * about a microsecond), never nested inside another team */
    int nt = g->nthreads > 0 ? g->nthreads : nk_get_num_threads();
    const double flops = 2.0 * (double)m * (double)n * (double)k;
    const double max_by_work = flops / NK_MIN_FLOPS_PER_THREAD;
    if ((double)nt > max_by_work) nt = max_by_work < 1.0 ? 1 : (int)max_by_work;
#ifdef _OPENMP
    if (omp_in_parallel()) nt = 1;
#else
    nt = 1;
#endif
    int coop = 1;
    if (nt > 1 && m < (int64_t)2 * mr * nt) {
        coop = 0; /* column split */
        const int64_t max_nt = (n + nr - 1) / nr;
        if (nt > max_nt) nt = (int)max_nt;
    }
    /* one thread after all (n within one sliver): the serial loop nest, whose
     * workspace layout is the row split's (the column split's is smaller:
     * A would lie past the end of it) */
    if (nt == 1) coop = 1;

    /* B read in place: unit column stride, no prologue, and so few row
     * slivers per thread that packing B would not pay for itself (never
     * for LOWP: B must be converted). */
    int direct = !LOWP && g->csb == 1 && !g->bmask && !g->bcolsum;
    {
        const int64_t rows = coop ? (m + nt - 1) / nt : m;
        direct = direct && rows <= NK_DIRECT_B_MAX_SLIVERS * (int64_t)mr;
    }
    const int64_t kc = k < kr->kc ? k : kr->kc;
    int64_t rows_t, cols_t, nc, mc;
    if (coop) {
        rows_t = ((m + nt - 1) / nt + mr - 1) / mr * mr;
        cols_t = n;
    } else {
        rows_t = m;
        cols_t = ((n + nt - 1) / nt + nr - 1) / nr * nr;
    }
    mc = rows_t < kr->mc ? (rows_t + mr - 1) / mr * mr : kr->mc;
    {
        const int64_t cr = (cols_t + nr - 1) / nr * nr;
        nc = cr < kr->nc ? cr : kr->nc;
    }
    /* workspace (PT elements, each block rounded to 64 bytes), then for
     * LOWP one float32 packing scratch per thread (an A block or a B sliver) */
    const int64_t al = 64 / (int64_t)sizeof(PT);
    const int64_t kcp = KP(kc);
    const int64_t a_sz = (mc * kcp + al - 1) / al * al;
    const int64_t b_sz = (nc * kcp + al - 1) / al * al;
    const int64_t e_sz = (nr * kcp + al - 1) / al * al;
    const int64_t total = direct ? nt * (a_sz + e_sz)
                        : coop   ? 2 * b_sz + nt * a_sz
                                 : nt * (a_sz + b_sz);
    const int64_t scr_sz = LOWP ? ((mc > nr ? mc : nr) * kc + 15) / 16 * 16 : 0;
    int from_arena = 0;
    PT *ws = (PT *)nk_ws_acquire((size_t)total * sizeof(PT) +
                                     (size_t)(nt * scr_sz) * sizeof(float), &from_arena);
    if (!ws) return -1;
    float *scr0 = LOWP ? (float *)(void *)(ws + total) : NULL;
#define SCR(t) (LOWP ? scr0 + (int64_t)(t) * scr_sz : NULL)

    if (direct) {
        /* no shared state: every thread works on its own rows (or columns) */
#ifdef _OPENMP
#pragma omp parallel num_threads(nt) if (nt > 1)
#endif
        {
            int t = 0, nteam = 1;
#ifdef _OPENMP
            t = omp_get_thread_num();
            nteam = omp_get_num_threads();
#endif
            PT *mine = ws + t * (a_sz + e_sz);
            if (coop) {
                const int64_t rt = ((m + nteam - 1) / nteam + mr - 1) / mr * mr;
                int64_t r0 = (int64_t)t * rt, r1 = r0 + rt;
                if (r0 > m) r0 = m;
                if (r1 > m) r1 = m;
                FN(worker)(g, kr, r0, r1, 0, n, mc, kc, nc, mine, mine + a_sz, NULL, 2, SCR(t));
            } else {
                const int64_t ct = ((n + nteam - 1) / nteam + nr - 1) / nr * nr;
                int64_t c0 = (int64_t)t * ct, c1 = c0 + ct;
                if (c0 > n) c0 = n;
                if (c1 > n) c1 = n;
                FN(worker)(g, kr, 0, m, c0, c1, mc, kc, nc, mine, mine + a_sz, NULL, 2, SCR(t));
            }
        }
    } else if (nt == 1) {
        FN(worker)(g, kr, 0, m, 0, n, mc, kc, nc, ws + 2 * b_sz, ws, ws + b_sz, 0, SCR(0));
    } else {
#ifdef _OPENMP
#pragma omp parallel num_threads(nt)
        {
            const int t = omp_get_thread_num();
            const int nteam = omp_get_num_threads(); /* may be < nt */
            if (coop) {
                const int64_t rt = ((m + nteam - 1) / nteam + mr - 1) / mr * mr;
                int64_t r0 = (int64_t)t * rt, r1 = r0 + rt;
                if (r0 > m) r0 = m;
                if (r1 > m) r1 = m;
                FN(worker)(g, kr, r0, r1, 0, n, mc, kc, nc, ws + 2 * b_sz + t * a_sz,
                           ws, ws + b_sz, 1, SCR(t));
            } else {
                const int64_t ct = ((n + nteam - 1) / nteam + nr - 1) / nr * nr;
                int64_t c0 = (int64_t)t * ct, c1 = c0 + ct;
                if (c0 > n) c0 = n;
                if (c1 > n) c1 = n;
                PT *mine = ws + t * (a_sz + b_sz);
                FN(worker)(g, kr, 0, m, c0, c1, mc, kc, nc, mine, mine + a_sz,
                           mine + a_sz, 0, SCR(t));
            }
        }
#endif
    }
#undef SCR
    nk_ws_release(ws, from_arena);
    return 0;
}

#undef FN_
#undef FNX
#undef FN
#undef PT
#undef KP
#undef PK

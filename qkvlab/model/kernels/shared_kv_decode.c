/* Decoding attention over a one-tensor KV cache (k_eq_v, q_eq_k_eq_v and their GQA/MQA forms)
 * that reads each cached S element from memory once per call: a block of S rows is brought into
 * L1, keys RoPE(key_map(S)) are formed there, and the same rows are the values. A work unit is a
 * span of positions of one sequence, all KV heads at once, so each rotary-table row is read once per
 * block and serves every head. Features are in rotate-half layout. Given a separate value tensor it
 * decodes `mha`'s and GQA's K and V the same way (keys as cached), the like-for-like baseline. Written
 * with GCC/Clang vector extensions (vec.h), so it compiles to AVX2, AVX-512 or NEON alike; where the CPU has
 * AVX512-BF16, a bf16 cache with bf16 queries is scored with its dot products (span_dot). Shapes it does not take (head size not a multiple of 16, more than
 * 32 query heads per KV head) return 1 and the caller keeps PyTorch. Built and loaded by
 * cpu_decode.py, which says why this is C. */
#include <math.h>
#include <stdlib.h>

#include "vec.h"

#define BLOCK 64
#define VMAX 32 /* head size up to 256 */
#define GMAX 32

static inline v8 vmax(v8 a, v8 b) {
    const v8i gt = a > b;
    return (v8)((gt & (v8i)a) | (~gt & (v8i)b));
}
typedef struct {
    const void *s, *v;
    int bf16;
    long sb, skv, sl;
    const float *q;
    int H, KV, L, D;
    const void *cos_t, *sin_t;
    int tables_bf16;
    long table_stride;
    const float *gain;
    float norm_eps, scale;
    const void *qpack; /* the bf16 dot-product path's queries, packed once per call (pack_queries) */
} Args;

/* Every head's running max, sum and accumulator, before a span's first block. */
static inline void reset_heads(int H, int D, float *restrict m, float *restrict l, float *restrict acc) {
    for (int h = 0; h < H; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        memset(acc + (long)h * D, 0, sizeof(float) * D);
    }
}

/* Each block row's cos and sin, one vector per eight rotary pairs, read once per block for every head. */
static inline __attribute__((always_inline)) void block_tables(const Args *a, int j0, int n, const int NF, v8 *restrict tc, v8 *restrict ts) {
    for (int r = 0; r < n; r++) {
        const long row = (long)(j0 + r) * a->table_stride;
        for (int i = 0; i < NF; i++) {
            if (a->tables_bf16) {
                tc[r * NF + i] = load_bf16((const uint16_t *)a->cos_t + row + i * W);
                ts[r * NF + i] = load_bf16((const uint16_t *)a->sin_t + row + i * W);
            } else {
                tc[r * NF + i] = load((const float *)a->cos_t + row + i * W);
                ts[r * NF + i] = load((const float *)a->sin_t + row + i * W);
            }
        }
    }
}

/* The online softmax over one block's scores (sc, n of BLOCK valid): the running max m and sum l move on,
 * the head's accumulator av is rescaled, and p gets the block's weights. */
static inline __attribute__((always_inline)) void block_softmax(float *restrict sc, int n, const int NV, float *restrict m,
                                                               float *restrict l, v8 *restrict av, float *restrict p) {
    for (int r = n; r < BLOCK; r++) sc[r] = -INFINITY;
    v8 vm = load(sc);
    for (int r0 = W; r0 < BLOCK; r0 += W) vm = vmax(load(sc + r0), vm);
    float bm = *m;
    for (int i = 0; i < W; i++) bm = vm[i] > bm ? vm[i] : bm;
    if (bm > *m) {
        const float c = *m == -INFINITY ? 0.0f : expf(*m - bm);
        *l *= c;
        for (int i = 0; i < NV; i++) av[i] *= c;
        *m = bm;
    }
    v8 sum = splat(0.0f);
    for (int r0 = 0; r0 < BLOCK; r0 += W) {
        const v8 e = vexp(load(sc + r0) - bm);
        store(p + r0, e);
        sum += e;
    }
    *l += hsum(sum);
}

/* Row j of this head (S, and V when given; elements of esize bytes) into L2, one block ahead of the
 * rows being computed, issued row by row between them: the hardware prefetchers alone left the
 * 8192-row cache at 0.7-0.8x the read bound, and a whole block's prefetches at once (256 lines with V)
 * ran the bf16 kernel over 8192 cached rows at 0.74-0.89x. v: a->v, or NULL where the caller knows there is none
 * (the test per row cost the unrolled score loop 7-10%). */
static inline __attribute__((always_inline)) void prefetch_row(const Args *a, const void *v, long base, int j, const int D, const int esize) {
    const long at = (base + (long)j * a->sl) * esize;
    for (int o = 0; o < D * esize; o += 64) {
        __builtin_prefetch((const char *)a->s + at + o, 0, 2);
        if (v) __builtin_prefetch((const char *)v + at + o, 0, 2);
    }
}

/* Rows [lo, hi) of sequence b, every head: online softmax; partial max, sum and accumulator per
 * query head out. Inlined into one copy per head size so the vector loops unroll. */
static inline __attribute__((always_inline)) void span(const Args *a, int b, int lo, int hi, const int D,
                                                      const int rope, const int keymap, const int bf16,
                                                      float *restrict m, float *restrict l, float *restrict acc) {
    const int H = a->H, KV = a->KV, G = H / KV, NV = D / W, NF = NV / 2;
    const int norm = a->norm_eps >= 0.0f;
    const float scale = a->scale;
    v8 rows[BLOCK * VMAX]; /* packed by the head size: a fixed 256-feature stride put every row on the same few L1 sets */
    v8 tc[BLOCK * VMAX / 2], ts[BLOCK * VMAX / 2]; /* each block row's cos and sin, one per rotary pair */
    v8 gain[VMAX], qk[GMAX][VMAX];
    float sc[GMAX][BLOCK], p[BLOCK];
    for (int i = 0; i < NV; i++) gain[i] = a->gain ? load(a->gain + i * W) : splat(1.0f);
    reset_heads(H, D, m, l, acc);
    for (int j0 = lo; j0 < hi; j0 += BLOCK) {
        const int n = hi - j0 < BLOCK ? hi - j0 : BLOCK;
        if (rope) block_tables(a, j0, n, NF, tc, ts);
        for (int kv = 0; kv < KV; kv++) {
            const long base = b * a->sb + kv * a->skv;
            const float *vrow[BLOCK]; /* each row's values: the cache itself (fp32) or its converted copy (bf16) */
            for (int g = 0; g < G; g++)
                for (int i = 0; i < NV; i++) qk[g][i] = load(a->q + ((long)b * H + kv * G + g) * D + i * W);
            for (int r = 0; r < n; r++) {
                const long off = base + (long)(j0 + r) * a->sl;
                if (j0 + BLOCK + r < hi) prefetch_row(a, a->v, base, j0 + BLOCK + r, D, bf16 ? 2 : 4); /* while the other heads' blocks are computed */
                v8 x[VMAX];
                if (bf16) {
                    for (int i = 0; i < NV; i++) rows[r * NV + i] = x[i] = load_bf16((const uint16_t *)a->s + off + i * W);
                    if (a->v)
                        for (int i = 0; i < NV; i++) rows[r * NV + i] = load_bf16((const uint16_t *)a->v + off + i * W);
                    vrow[r] = (const float *)(rows + r * NV);
                } else {
                    vrow[r] = (const float *)(a->v ? a->v : a->s) + off;
                    for (int i = 0; i < NV; i++) x[i] = load((const float *)a->s + off + i * W);
                }
                v8 k[VMAX];
                float inv = 1.0f;
                if (norm) {
                    v8 ss = splat(0.0f);
                    for (int i = 0; i < NV; i++) ss += x[i] * x[i];
                    inv = 1.0f / sqrtf(hsum(ss) / (float)D + a->norm_eps);
                }
                if (keymap)
                    for (int i = 0; i < NV; i++) k[i] = x[i] * (gain[i] * inv);
                else
                    for (int i = 0; i < NV; i++) k[i] = x[i];
                if (rope) {
                    for (int i = 0; i < NF; i++) {
                        const v8 u = k[i], w = k[i + NF];
                        k[i] = u * tc[r * NF + i] - w * ts[r * NF + i];
                        k[i + NF] = w * tc[r * NF + i] + u * ts[r * NF + i];
                    }
                }
                for (int g = 0; g < G; g++) {
                    v8 d = splat(0.0f);
                    for (int i = 0; i < NV; i++) d += qk[g][i] * k[i];
                    sc[g][r] = hsum(d) * scale;
                }
            }
            for (int g = 0; g < G; g++) {
                const int h = kv * G + g;
                float *ah = acc + (long)h * D;
                v8 av[VMAX];
                for (int i = 0; i < NV; i++) av[i] = load(ah + i * W);
                block_softmax(sc[g], n, NV, m + h, l + h, av, p);
                /* Two accumulators per vector, even and odd rows, so the adds do not wait on each other. */
                v8 bv[VMAX];
                for (int i = 0; i < NV; i++) bv[i] = splat(0.0f);
                int r = 0;
                for (; r + 1 < n; r += 2)
                    for (int i = 0; i < NV; i++) {
                        av[i] += p[r] * load(vrow[r] + i * W);
                        bv[i] += p[r + 1] * load(vrow[r + 1] + i * W);
                    }
                if (r < n)
                    for (int i = 0; i < NV; i++) av[i] += p[r] * load(vrow[r] + i * W);
                for (int i = 0; i < NV; i++) store(ah + i * W, av[i] + bv[i]);
            }
        }
    }
}

#if defined(__AVX512BF16__) && defined(__AVX512VL__) && defined(__AVX512BW__)
#include <immintrin.h>
#define QKVLAB_BF16_DOT 1
/* Lane i: the sum of d[i]'s lanes, for eight rows' scores at once (one sum per row cost a third of a
 * row's instructions). */
static inline v8 sum8(const v8 *d) {
    const __m256 t0 = _mm256_hadd_ps((__m256)d[0], (__m256)d[1]), t1 = _mm256_hadd_ps((__m256)d[2], (__m256)d[3]);
    const __m256 t2 = _mm256_hadd_ps((__m256)d[4], (__m256)d[5]), t3 = _mm256_hadd_ps((__m256)d[6], (__m256)d[7]);
    const __m256 u0 = _mm256_hadd_ps(t0, t1), u1 = _mm256_hadd_ps(t2, t3);
    return (v8)_mm256_permute2f128_ps(u0, u1, 0x20) + (v8)_mm256_permute2f128_ps(u0, u1, 0x31);
}
/* Rotary pairs 8c..8c+7 of a rotate-half row side by side: (s_a, s_b) in each 32-bit lane. */
static inline __m256bh rotary_pairs(const uint16_t *row, int c, int half, __m256i pairs) {
    const __m256i u = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(row + c * 8)));
    const __m256i w = _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)(row + half + c * 8)));
    return (__m256bh)_mm256_permutex2var_epi16(u, pairs, w);
}
/* One row's score lanes, summed by the caller: q·k over the row as cached, or with RoPE Σ cos·A + sin·B over its
 * rotary pairs (span_dot says why). */
static inline __attribute__((always_inline)) v8 row_score(const uint16_t *row, const int NC, const int HALF, const __m256bh *qa,
                                                         const __m256bh *qb, const v8 *tc, const v8 *ts, __m256i pairs, const int rope) {
    v8 e = splat(0.0f);
    if (!rope) {
        for (int c = 0; c < NC; c++) e = (v8)_mm256_dpbf16_ps((__m256)e, qa[c], (__m256bh)_mm256_loadu_si256((const __m256i *)(row + c * 16)));
        return e;
    }
    for (int c = 0; c < NC; c++) {
        const __m256bh x = rotary_pairs(row, c, HALF, pairs);
        const v8 A = (v8)_mm256_dpbf16_ps(_mm256_setzero_ps(), qa[c], x);
        const v8 B = (v8)_mm256_dpbf16_ps(_mm256_setzero_ps(), qb[c], x);
        e += A * tc[c] + B * ts[c];
    }
    return e;
}
/* The scores of a KV head's only query head (no GQA) over a block's n rows, eight at a time, so their
 * lane sums share one reduction (sum8): with RoPE 1.09-1.14x over the per-row sums (ABAB over six
 * model=small layers, Zen 4). Groups of eight rows, with the next block's prefetches decided once per
 * block, unroll without a branch per row: with RoPE 1.10-1.22x over the same loop with per-row bounds
 * checks, and `mha`'s keys (no RoPE), per-row sums before, 1.01-1.16x. */
static inline __attribute__((always_inline)) void block_scores(const Args *a, long base, int j0, int n, int hi, const int D, const int NC,
                                                              const int HALF, const __m256bh *qa, const v8 *tc, const v8 *ts,
                                                              __m256i pairs, float *sc, const int rope) {
    const __m256bh *qb = qa + NC;
    const uint16_t *S = (const uint16_t *)a->s + base;
    const int whole_next = j0 + 2 * BLOCK <= hi; /* then n is BLOCK: every group below is whole */
    for (int r0 = 0; r0 < n; r0 += W) {
        v8 d[W];
#pragma GCC unroll 8
        for (int i = 0; i < W; i++) {
            if (whole_next) prefetch_row(a, rope ? NULL : a->v, base, j0 + BLOCK + r0 + i, D, 2);
            const int r = r0 + i < n ? r0 + i : n - 1; /* past n: any row, block_softmax drops it */
            d[i] = row_score(S + (long)(j0 + r) * a->sl, NC, HALF, qa, qb, tc + r * NC, ts + r * NC, pairs, rope);
        }
        store(sc + r0, sum8(d) * a->scale);
    }
    if (!whole_next)
        for (int r = 0; r < n && j0 + BLOCK + r < hi; r++) prefetch_row(a, rope ? NULL : a->v, base, j0 + BLOCK + r, D, 2);
}
/* A bf16 cache with bf16 queries, on CPUs with AVX512-BF16 (vdpbf16ps: pairs of bf16 products summed
 * into fp32 lanes, each product exact). Without RoPE the score is q·k over the raw row. With RoPE,
 * q·RoPE(s) = Σ cos·(q_a s_a + q_b s_b) + sin·(q_b s_a − q_a s_b) over rotary pairs (a, b): both
 * parentheses are vdpbf16ps lanes over the pair gathered side by side from the row, so keys are never
 * widened or rotated. Values are widened 32 bits at a time (even feature: lane << 16, odd: lane &
 * 0xffff0000), so p stays fp32 and the accumulator runs in even/odd order until the span ends. q is
 * packed to bf16 once per call (pack_queries), exact for the bf16 queries the caller promises (bf16 = 2). No key map. */
static inline __attribute__((always_inline)) void span_dot(const Args *a, int b, int lo, int hi, const int D, const int rope,
                                                          float *restrict m, float *restrict l, float *restrict acc) {
    const int H = a->H, KV = a->KV, G = H / KV, NV = D / W, NC = D / 16, HALF = D / 2;
    const float scale = a->scale;
    const uint16_t *S = (const uint16_t *)a->s, *V = a->v ? (const uint16_t *)a->v : S;
    v8 tc[BLOCK * VMAX / 2], ts[BLOCK * VMAX / 2];
    float sc[GMAX][BLOCK], p[BLOCK];
    const __m256i pairs = _mm256_setr_epi16(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
    const __m256i odd = _mm256_set1_epi32((int)0xffff0000u);
    /* head h's chunk c: qa at [2h NC + c], qb at [(2h + 1) NC + c] (pack_queries) */
    const __m256bh *qp = (const __m256bh *)a->qpack + (long)b * H * 2 * NC;
    reset_heads(H, D, m, l, acc);
    for (int j0 = lo; j0 < hi; j0 += BLOCK) {
        const int n = hi - j0 < BLOCK ? hi - j0 : BLOCK;
        if (rope) block_tables(a, j0, n, NC, tc, ts);
        for (int kv = 0; kv < KV; kv++) {
            const long base = b * a->sb + kv * a->skv;
            if (G == 1) {
                block_scores(a, base, j0, n, hi, D, NC, HALF, qp + (long)kv * 2 * NC, tc, ts, pairs, sc[0], rope);
            } else { /* GQA, per row: keys as cached, or its pairs gathered once for the group's query heads */
                for (int r = 0; r < n; r++) {
                    if (j0 + BLOCK + r < hi) prefetch_row(a, a->v, base, j0 + BLOCK + r, D, 2);
                    const uint16_t *row = S + base + (long)(j0 + r) * a->sl;
                    __m256bh x[VMAX / 2];
                    for (int c = 0; c < NC; c++)
                        x[c] = rope ? rotary_pairs(row, c, HALF, pairs) : (__m256bh)_mm256_loadu_si256((const __m256i *)(row + c * 16));
                    for (int g = 0; g < G; g++) {
                        const __m256bh *qa = qp + (long)(kv * G + g) * 2 * NC, *qb = qa + NC;
                        v8 d = splat(0.0f);
                        for (int c = 0; c < NC; c++) {
                            if (rope) {
                                const v8 A = (v8)_mm256_dpbf16_ps(_mm256_setzero_ps(), qa[c], x[c]);
                                const v8 B = (v8)_mm256_dpbf16_ps(_mm256_setzero_ps(), qb[c], x[c]);
                                d += A * tc[r * NC + c] + B * ts[r * NC + c];
                            } else {
                                d = (v8)_mm256_dpbf16_ps((__m256)d, qa[c], x[c]);
                            }
                        }
                        sc[g][r] = hsum(d) * scale;
                    }
                }
            }
            for (int g = 0; g < G; g++) {
                const int h = kv * G + g;
                float *ah = acc + (long)h * D;
                v8 av[VMAX], bv[VMAX];
                for (int i = 0; i < NV; i++) av[i] = load(ah + i * W), bv[i] = splat(0.0f);
                block_softmax(sc[g], n, NV, m + h, l + h, av, p);
                for (int r = 0; r < n; r += 2) { /* even and odd rows into two accumulators, so the adds do not wait on each other */
                    const uint16_t *x0 = V + base + (long)(j0 + r) * a->sl, *x1 = x0 + a->sl;
                    const float p1 = r + 1 < n ? p[r + 1] : 0.0f;
                    for (int c = 0; c < NC; c++) {
                        const __m256i u = _mm256_loadu_si256((const __m256i *)(x0 + c * 16));
                        av[2 * c] += p[r] * (v8)_mm256_slli_epi32(u, 16);
                        av[2 * c + 1] += p[r] * (v8)_mm256_and_si256(u, odd);
                        if (r + 1 < n) {
                            const __m256i w = _mm256_loadu_si256((const __m256i *)(x1 + c * 16));
                            bv[2 * c] += p1 * (v8)_mm256_slli_epi32(w, 16);
                            bv[2 * c + 1] += p1 * (v8)_mm256_and_si256(w, odd);
                        }
                    }
                }
                for (int i = 0; i < NV; i++) store(ah + i * W, av[i] + bv[i]);
            }
        }
    }
    for (int h = 0; h < H; h++) { /* even/odd order back to feature order */
        float *ah = acc + (long)h * D, t[VMAX * W];
        memcpy(t, ah, sizeof(float) * D);
        for (int c = 0; c < NC; c++)
            for (int j = 0; j < 8; j++) ah[c * 16 + 2 * j] = t[c * 16 + j], ah[c * 16 + 2 * j + 1] = t[c * 16 + 8 + j];
    }
}
/* Every sequence's and head's q as bf16 pairs, once per call for all spans: chunk c holds raw features
 * 16c.. (keys as cached), or with RoPE the pairs (q_a, q_b) of rotary pairs 8c.. and, after the NC
 * chunks, (q_b, -q_a). NULL where memory is short, and the caller keeps the fp32-arithmetic path. */
static __m256bh *pack_queries(const float *q, int B, int H, int D, int rope) {
    const int NC = D / 16, HALF = D / 2;
    __m256bh *out = aligned_alloc(32, (size_t)B * H * 2 * NC * sizeof *out);
    if (!out) return NULL;
    for (long bh = 0; bh < (long)B * H; bh++) {
        const float *qh = q + bh * D;
        for (int c = 0; c < NC; c++) {
            uint16_t ta[16], tb[16];
            for (int j = 0; j < 8; j++) {
                const float x = rope ? qh[c * 8 + j] : qh[c * 16 + 2 * j], y = rope ? qh[HALF + c * 8 + j] : qh[c * 16 + 2 * j + 1];
                ta[2 * j] = float_to_bf16(x), ta[2 * j + 1] = float_to_bf16(y);
                tb[2 * j] = float_to_bf16(y), tb[2 * j + 1] = float_to_bf16(-x);
            }
            memcpy(out + bh * 2 * NC + c, ta, sizeof ta);
            memcpy(out + bh * 2 * NC + NC + c, tb, sizeof tb);
        }
    }
    return out;
}
#define DOT(NAME, DV)                                                                                 \
    static void dot_##NAME##_0(const Args *a, int b, int lo, int hi, float *m, float *l, float *acc) { \
        span_dot(a, b, lo, hi, DV, 0, m, l, acc);                                                     \
    }                                                                                                 \
    static void dot_##NAME##_1(const Args *a, int b, int lo, int hi, float *m, float *l, float *acc) { \
        span_dot(a, b, lo, hi, DV, 1, m, l, acc);                                                     \
    }
DOT(32, 32)
DOT(48, 48)
DOT(64, 64)
DOT(128, 128)
DOT(any, a->D)
#endif

/* One copy per head size (D = 0: any) and per (RoPE, key map, bf16), so no flag is tested per row. */
#define SPAN(NAME, DV, R, K, B)                                                                      \
    static void span_##NAME##_##R##K##B(const Args *a, int b, int lo, int hi, float *m, float *l, float *acc) { \
        span(a, b, lo, hi, DV, R, K, B, m, l, acc);                                                  \
    }
#define SPANS(NAME, DV)                                                                              \
    SPAN(NAME, DV, 0, 0, 0) SPAN(NAME, DV, 0, 0, 1) SPAN(NAME, DV, 0, 1, 0) SPAN(NAME, DV, 0, 1, 1)  \
    SPAN(NAME, DV, 1, 0, 0) SPAN(NAME, DV, 1, 0, 1) SPAN(NAME, DV, 1, 1, 0) SPAN(NAME, DV, 1, 1, 1)
#define TABLE(NAME)                                                                                 \
    {span_##NAME##_000, span_##NAME##_001, span_##NAME##_010, span_##NAME##_011,                      \
     span_##NAME##_100, span_##NAME##_101, span_##NAME##_110, span_##NAME##_111}
typedef void (*span_fn)(const Args *, int, int, int, float *, float *, float *);
SPANS(32, 32)
SPANS(48, 48)
SPANS(64, 64)
SPANS(128, 128)
SPANS(any, a->D)
static const int SIZES[] = {32, 48, 64, 128};
static const span_fn SPAN_TABLE[5][8] = {TABLE(32), TABLE(48), TABLE(64), TABLE(128), TABLE(any)};

/* Work units each sequence's cache is cut into: two per thread across the batch, but none under
 * MIN_SPLIT_ROWS rows, where merging the splits would cost more than it spreads. One definition for the
 * kernel's two callers (cpu_decode.py and decode_step.c), whose splits, and so sums, must agree. */
#define MIN_SPLIT_ROWS 256
int qkvlab_decode_splits(int B, int L, int threads) {
    int splits = (2 * threads + B - 1) / B;
    if (L / MIN_SPLIT_ROWS < splits) splits = L / MIN_SPLIT_ROWS;
    return splits < 1 ? 1 : splits;
}

/* The work buffer's floats: per unit and head a max, a sum and D accumulators, then the widened queries. */
long qkvlab_decode_work_floats(int B, int H, int D, int splits) { return (long)B * splits * H * (D + 2) + (long)B * H * D; }

/* q, out: (B, H, D) contiguous, fp32, or bf16 with q_bf16 (out in q's dtype, rounded once). s: element (b, kv, j, d) at b*sb + kv*skv + j*sl + d, features in
 * rotate-half layout (pair f is features f and f + D/2). Tables: (L, D/2) fp32, or bf16 with tables_bf16 (a
 * model cast to bf16 keeps its tables so), element (j, f) at j*table_stride + f, or NULL for no RoPE. gain: (D,) or NULL; norm_eps < 0: no RMSNorm on keys.
 * v: NULL (values are S) or a separate value cache of s's dtype and strides (mha and GQA: keys are then the cached,
 * already rotated K, with no tables, gain or norm). bf16: 0 fp32 cache, 1 bf16 cache, 2 bf16 cache and bf16-exact q
 * (the bf16 dot-product path where the CPU has one). work: qkvlab_decode_work_floats floats. */
int qkvlab_shared_kv_decode(const void *s, const void *v, int bf16, long sb, long skv, long sl, const void *q_in, int q_bf16,
                            void *out, int B, int H, int KV, int L, int D, const void *cos_t, const void *sin_t,
                            int tables_bf16, long table_stride, const float *gain, float norm_eps, float scale,
                            int splits, int threads, float *work) {
    if (D % (2 * W) || D > VMAX * W || H % KV || H / KV > GMAX) return 1;
    const int units = B * splits;
    const float *q = q_in;
    if (q_bf16) { /* widened here, into the work buffer's last B*H*D floats: no conversion op per layer in the caller */
        float *qf = work + (long)units * H * (D + 2);
        for (long i = 0; i < (long)B * H * D; i++) qf[i] = bf16_to_float(((const uint16_t *)q_in)[i]);
        q = qf;
    }
    Args a = {s, v, bf16, sb, skv, sl, q, H, KV, L, D, cos_t, sin_t, tables_bf16, table_stride, gain, norm_eps, scale, NULL};
    int size = 4;
    for (int i = 0; i < 4; i++)
        if (SIZES[i] == D) size = i;
    span_fn fn = SPAN_TABLE[size][(cos_t != 0) * 4 + (gain != 0 || norm_eps >= 0.0f) * 2 + (bf16 != 0)];
#ifdef QKVLAB_BF16_DOT
    static const span_fn DOT_TABLE[5][2] = {{dot_32_0, dot_32_1}, {dot_48_0, dot_48_1}, {dot_64_0, dot_64_1},
                                            {dot_128_0, dot_128_1}, {dot_any_0, dot_any_1}};
    __m256bh *packed = NULL;
    if (bf16 == 2 && !gain && norm_eps < 0.0f && (packed = pack_queries(q, B, H, D, cos_t != 0))) {
        a.qpack = packed;
        fn = DOT_TABLE[size][cos_t != 0];
    }
#endif
    const int chunk = (L + splits - 1) / splits;
    float *wm = work, *wl = work + (long)units * H, *wacc = work + 2L * units * H;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int u = 0; u < units; u++) {
        const int b = u / splits, sp = u % splits;
        const int lo = sp * chunk, hi = lo + chunk < L ? lo + chunk : L;
        fn(&a, b, lo, hi > lo ? hi : lo, wm + (long)u * H, wl + (long)u * H, wacc + (long)u * H * D);
    }
#ifdef QKVLAB_BF16_DOT
    free(packed);
#endif
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            float mx = -INFINITY;
            for (int sp = 0; sp < splits; sp++) {
                const float v = wm[((long)b * splits + sp) * H + h];
                mx = v > mx ? v : mx;
            }
            float total = 0.0f, o[VMAX * W];
            memset(o, 0, sizeof(float) * D);
            for (int sp = 0; sp < splits; sp++) {
                const long u = (long)b * splits + sp;
                if (wm[u * H + h] == -INFINITY) continue;
                const float c = expf(wm[u * H + h] - mx);
                total += c * wl[u * H + h];
                const float *ah = wacc + (u * H + h) * D;
                for (int d = 0; d < D; d++) o[d] += c * ah[d];
            }
            const long at = ((long)b * H + h) * D;
            for (int d = 0; d < D; d++) {
                if (q_bf16) ((uint16_t *)out)[at + d] = float_to_bf16(o[d] / total);
                else ((float *)out)[at + d] = o[d] / total;
            }
        }
    }
    return 0;
}

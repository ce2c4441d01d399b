/* Decoding attention over a one-tensor KV cache (k_eq_v, q_eq_k_eq_v and their GQA/MQA forms)
 * that reads each cached S element from memory once per call: a block of S rows is brought into
 * L1, keys RoPE(key_map(S)) are formed there, and the same rows are the values. A work unit is a
 * span of positions of one sequence, all KV heads at once, so each rotary-table row is read once per
 * block and serves every head. Features are in rotate-half layout. Given a separate value tensor it
 * decodes `mha`'s and GQA's K and V the same way (keys as cached), the like-for-like baseline. Written
 * with GCC/Clang vector extensions (vec.h), so it compiles to AVX2, AVX-512 or NEON alike. Shapes it does not take (head size not a multiple of 16, more than
 * 32 query heads per KV head) return 1 and the caller keeps PyTorch. Built and loaded by
 * cpu_decode.py, which says why this is C. */
#include <math.h>

#include "vec.h"

#define BLOCK 64
#define VMAX 32 /* head size up to 256 */
#define GMAX 32

static inline v8 vmax(v8 a, v8 b) {
    const v8i gt = a > b;
    return (v8)((gt & (v8i)a) | (~gt & (v8i)b));
}
/* exp on 8 lanes, for x <= 0 (scores minus their running max): x = n ln2 + t with |t| <= ln2 / 2, e^t
 * by its degree-7 Taylor polynomial (relative error about 1e-7, fp32's rounding), 2^n put into the
 * exponent bits. Lanes below -87 (e^x under fp32's smallest normal) give 0. */
static inline v8 vexp(v8 x) {
    const v8i keep = x >= splat(-87.0f);
    v8i xi;
    memcpy(&xi, &x, sizeof xi);
    xi &= keep;
    v8 xc;
    memcpy(&xc, &xi, sizeof xc);
    const v8i n = __builtin_convertvector(xc * 1.44269504088896341f + 126.5f, v8i) - 126;
    const v8 fn = __builtin_convertvector(n, v8);
    const v8 t = (xc - fn * 0.693145751953125f) - fn * 1.428606765330187e-06f;
    v8 y = splat(1.0f / 5040.0f);
    y = y * t + 1.0f / 720.0f;
    y = y * t + 1.0f / 120.0f;
    y = y * t + 1.0f / 24.0f;
    y = y * t + 1.0f / 6.0f;
    y = y * t + 0.5f;
    y = y * t + 1.0f;
    y = y * t + 1.0f;
    v8i bits;
    memcpy(&bits, &y, sizeof bits);
    bits = (bits + (n << 23)) & keep;
    memcpy(&y, &bits, sizeof y);
    return y;
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
} Args;

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
    for (int h = 0; h < H; h++) {
        m[h] = -INFINITY;
        l[h] = 0.0f;
        memset(acc + (long)h * D, 0, sizeof(float) * D);
    }
    for (int j0 = lo; j0 < hi; j0 += BLOCK) {
        const int n = hi - j0 < BLOCK ? hi - j0 : BLOCK;
        if (rope) {
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
        for (int kv = 0; kv < KV; kv++) {
            const long base = b * a->sb + kv * a->skv;
            const float *vrow[BLOCK]; /* each row's values: the cache itself (fp32) or its converted copy (bf16) */
            for (int g = 0; g < G; g++)
                for (int i = 0; i < NV; i++) qk[g][i] = load(a->q + ((long)b * H + kv * G + g) * D + i * W);
            for (int r = 0; r < n; r++) {
                const long off = base + (long)(j0 + r) * a->sl;
                if (j0 + BLOCK + r < hi) {
                    /* This head's next block into L2 while the other heads' blocks are computed: the
                     * hardware prefetchers alone left the 8192-row cache at 0.7-0.8x the read bound. */
                    const long ahead = (off + (long)BLOCK * a->sl) * (bf16 ? 2 : 4);
                    for (int o = 0; o < D * (bf16 ? 2 : 4); o += 64) {
                        __builtin_prefetch((const char *)a->s + ahead + o, 0, 2);
                        if (a->v) __builtin_prefetch((const char *)a->v + ahead + o, 0, 2);
                    }
                }
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
                for (int r = n; r < BLOCK; r++) sc[g][r] = -INFINITY;
                v8 vm = load(sc[g]);
                for (int r0 = W; r0 < BLOCK; r0 += W) {
                    const v8 x = load(sc[g] + r0);
                    vm = vmax(x, vm);
                }
                float bm = m[h];
                for (int i = 0; i < W; i++) bm = vm[i] > bm ? vm[i] : bm;
                float *ah = acc + (long)h * D;
                v8 av[VMAX];
                for (int i = 0; i < NV; i++) av[i] = load(ah + i * W);
                if (bm > m[h]) {
                    const float c = m[h] == -INFINITY ? 0.0f : expf(m[h] - bm);
                    l[h] *= c;
                    for (int i = 0; i < NV; i++) av[i] *= c;
                    m[h] = bm;
                }
                v8 sum = splat(0.0f);
                for (int r0 = 0; r0 < BLOCK; r0 += W) {
                    const v8 e = vexp(load(sc[g] + r0) - bm);
                    store(p + r0, e);
                    sum += e;
                }
                l[h] += hsum(sum);
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

/* q, out: (B, H, D) float32 contiguous. s: element (b, kv, j, d) at b*sb + kv*skv + j*sl + d, features in
 * rotate-half layout (pair f is features f and f + D/2). Tables: (L, D/2) fp32, or bf16 with tables_bf16 (a
 * model cast to bf16 keeps its tables so), element (j, f) at j*table_stride + f, or NULL for no RoPE. gain: (D,) or NULL; norm_eps < 0: no RMSNorm on keys.
 * v: NULL (values are S) or a separate value cache of s's dtype and strides (mha and GQA: keys are then the cached,
 * already rotated K, with no tables, gain or norm). work: B*splits*H*(D+2) floats. */
int qkvlab_shared_kv_decode(const void *s, const void *v, int bf16, long sb, long skv, long sl, const float *q, float *out,
                            int B, int H, int KV, int L, int D, const void *cos_t, const void *sin_t,
                            int tables_bf16, long table_stride, const float *gain, float norm_eps, float scale,
                            int splits, int threads, float *work) {
    if (D % (2 * W) || D > VMAX * W || H % KV || H / KV > GMAX) return 1;
    const Args a = {s, v, bf16, sb, skv, sl, q, H, KV, L, D, cos_t, sin_t, tables_bf16, table_stride, gain, norm_eps, scale};
    int size = 4;
    for (int i = 0; i < 4; i++)
        if (SIZES[i] == D) size = i;
    const span_fn fn = SPAN_TABLE[size][(cos_t != 0) * 4 + (gain != 0 || norm_eps >= 0.0f) * 2 + (bf16 != 0)];
    const int units = B * splits;
    const int chunk = (L + splits - 1) / splits;
    float *wm = work, *wl = work + (long)units * H, *wacc = work + 2L * units * H;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int u = 0; u < units; u++) {
        const int b = u / splits, sp = u % splits;
        const int lo = sp * chunk, hi = lo + chunk < L ? lo + chunk : L;
        fn(&a, b, lo, hi > lo ? hi : lo, wm + (long)u * H, wl + (long)u * H, wacc + (long)u * H * D);
    }
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < H; h++) {
            float mx = -INFINITY;
            for (int sp = 0; sp < splits; sp++) {
                const float v = wm[((long)b * splits + sp) * H + h];
                mx = v > mx ? v : mx;
            }
            float total = 0.0f;
            float *o = out + ((long)b * H + h) * D;
            memset(o, 0, sizeof(float) * D);
            for (int sp = 0; sp < splits; sp++) {
                const long u = (long)b * splits + sp;
                if (wm[u * H + h] == -INFINITY) continue;
                const float c = expf(wm[u * H + h] - mx);
                total += c * wl[u * H + h];
                const float *ah = wacc + (u * H + h) * D;
                for (int d = 0; d < D; d++) o[d] += c * ah[d];
            }
            for (int d = 0; d < D; d++) o[d] /= total;
        }
    }
    return 0;
}

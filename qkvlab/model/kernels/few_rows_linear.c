/* y = x Wᵀ + b for a few rows of x (decoding: one row per sequence), fp32 or bf16 weights, reading
 * every weight once: threads take groups of four output features, the group's four weight rows stay
 * in L1 while each row of x passes over them, and sums are kept in fp32. Built and loaded by
 * cpu_linear.py, which says why this is C.
 *
 * bf16 weights are widened two at a time without shuffles: a 32-bit lane holding the bf16 pair
 * (w[2t], w[2t+1]) gives w[2t] as (lane << 16) and w[2t+1] as (lane & 0xffff0000), so x is split
 * once per call into its even and odd features to match (GCC turns an 8-wide uint16 -> uint32
 * conversion into six instructions on AVX2, this into two). */
#include <stdlib.h>

#include "vec.h"

#define GROUP 4
#define AHEAD 2 /* groups; on a Zen 4, 2 to 8 read alike (32-34 GB/s on two threads), 1 read at 21 */
static inline v8u load_u(const void *p) {
    v8u v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline v8 as_float(v8u u) {
    v8 f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* Dots of R (GROUP, or 1 for the last rows) weight rows starting at o with one prepared x row (fp32
 * weights: x as it is; bf16: per 16 features, the 8 even then the 8 odd ones). `next`, when not NULL,
 * is the group AHEAD groups on: it is brought into L2 at the pace this group is read, since a weight
 * row is too short (768 bytes for K = 384) for the hardware prefetchers to ramp up on, and without it
 * the loop read weights from memory at 6 GB/s a thread where a plain read runs at 20. */
static inline __attribute__((always_inline)) void dots(const void *w, const int bf16, const float *xp, long o,
                                                       const int R, int K, const char *next, float *out) {
    v8 a[GROUP][2];
    const int step = GROUP * 2 * W * (bf16 ? 2 : 4); /* bytes of the group read per iteration */
    for (int g = 0; g < R; g++) a[g][0] = a[g][1] = (v8){0};
    if (bf16) {
        const v8u hi = {0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u,
                        0xffff0000u, 0xffff0000u, 0xffff0000u, 0xffff0000u};
        for (int i = 0; i < K; i += 2 * W) {
            if (next)
                for (int b = 0; b < step; b += 64) __builtin_prefetch(next + (long)i / (2 * W) * step + b, 0, 2);
            const v8 xe = load(xp + i), xo = load(xp + i + W);
            for (int g = 0; g < R; g++) {
                const v8u u = load_u((const uint16_t *)w + (o + g) * K + i);
                a[g][0] += as_float(u << 16) * xe;
                a[g][1] += as_float(u & hi) * xo;
            }
        }
    } else {
        for (int i = 0; i < K; i += 2 * W) {
            if (next)
                for (int b = 0; b < step; b += 64) __builtin_prefetch(next + (long)i / (2 * W) * step + b, 0, 2);
            const v8 x0 = load(xp + i), x1 = load(xp + i + W);
            for (int g = 0; g < R; g++) {
                const float *p = (const float *)w + (o + g) * K + i;
                a[g][0] += load(p) * x0;
                a[g][1] += load(p + W) * x1;
            }
        }
    }
    for (int g = 0; g < R; g++) out[g] = hsum(a[g][0] + a[g][1]);
}

/* x: (M, K), y: (M, N), fp32 or bf16 (x_bf16) and contiguous; w: (N, K) fp32 or bf16 (w_bf16), rows
 * contiguous; bias: (N) in w's dtype, or NULL. Returns 1 where K is not a multiple of 16 (the caller
 * keeps PyTorch), 2 if memory for the prepared x cannot be had. */
int qkvlab_few_rows_linear(const void *x, int x_bf16, const void *w, int w_bf16, const void *bias, void *y,
                           int M, int N, int K, int threads) {
    if (K % (2 * W) || M < 1) return 1;
    float *xp = malloc(sizeof(float) * (size_t)M * K);
    if (!xp) return 2;
    for (int m = 0; m < M; m++)
        for (int i = 0; i < K; i++) {
            const long at = (long)m * K + i;
            const float v = x_bf16 ? bf16_to_float(((const uint16_t *)x)[at]) : ((const float *)x)[at];
            /* bf16 weights: feature 16j + 2t + e goes to slot 16j + 8e + t */
            const long to = w_bf16 ? (long)m * K + (i & ~15) + 8 * (i & 1) + ((i & 15) >> 1) : at;
            xp[to] = v;
        }
    const long groups = (N + GROUP - 1) / GROUP;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long gi = 0; gi < groups; gi++) {
        const long o = gi * GROUP;
        const int rows = N - o < GROUP ? (int)(N - o) : GROUP;
        for (int m = 0; m < M; m++) {
            float r[GROUP];
            const float *xm = xp + (long)m * K;
            const char *next = m == 0 && o + GROUP * (AHEAD + 1) <= N ? (const char *)w + (o + GROUP * AHEAD) * K * (w_bf16 ? 2 : 4) : NULL;
            if (rows == GROUP) {
                if (w_bf16) dots(w, 1, xm, o, GROUP, K, next, r);
                else dots(w, 0, xm, o, GROUP, K, next, r);
            } else {
                for (int g = 0; g < rows; g++)
                    if (w_bf16) dots(w, 1, xm, o + g, 1, K, NULL, r + g);
                    else dots(w, 0, xm, o + g, 1, K, NULL, r + g);
            }
            for (int g = 0; g < rows; g++) {
                float v = r[g];
                if (bias) v += w_bf16 ? bf16_to_float(((const uint16_t *)bias)[o + g]) : ((const float *)bias)[o + g];
                const long at = (long)m * N + o + g;
                if (x_bf16) ((uint16_t *)y)[at] = float_to_bf16(v);
                else ((float *)y)[at] = v;
            }
        }
    }
    free(xp);
    return 0;
}

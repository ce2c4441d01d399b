/* Row-wise ops of CPU fp32 training, each one pass over memory: RMSNorm forward (also bf16, for
 * inference) and backward, and rotate-half RoPE (its backward is the same rotation with the sine negated; also bf16, for inference). PyTorch runs them as
 * chains of elementwise passes (cpu_train.py says how much that cost); loaded by cpu_train.py.
 * Plain loops over contiguous rows: -O3 -march=native vectorises them. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "vec.h"

/* y = x * inv * w, inv = 1 / sqrt(mean(x^2) + eps), per row of D; inv saved for the backward. */
void qkvlab_rms_norm_forward(const float *restrict x, const float *restrict w, float *restrict y,
                             float *restrict inv, long rows, int D, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        float ss = 0.0f;
        for (int d = 0; d < D; d++) ss += xr[d] * xr[d];
        const float v = 1.0f / sqrtf(ss / (float)D + eps);
        if (inv) inv[r] = v; /* NULL for inference: nothing saved for a backward */
        for (int d = 0; d < D; d++) yr[d] = xr[d] * v * w[d];
    }
}

/* The same forward on bf16 rows and gains (a model cast to bf16 for inference), computed in fp32 and
 * rounded once to nearest even, as PyTorch's rms_norm upcasts; no inverse saved. */
void qkvlab_rms_norm_forward_bf16(const uint16_t *restrict x, const uint16_t *restrict w, uint16_t *restrict y,
                                  long rows, int D, float eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        const uint16_t *xr = x + r * D;
        uint16_t *yr = y + r * D;
        float ss = 0.0f;
        for (int d = 0; d < D; d++) {
            const float v = bf16_to_float(xr[d]);
            ss += v * v;
        }
        const float v = 1.0f / sqrtf(ss / (float)D + eps);
        for (int d = 0; d < D; d++) yr[d] = float_to_bf16(bf16_to_float(xr[d]) * v * bf16_to_float(w[d]));
    }
}

/* dx = inv * (g*w - xhat * mean(g*w*xhat)), xhat = x * inv; dw = sum over rows of g*xhat, each
 * thread summing a fixed range of rows into its own row of dw_parts (threads x D), so the result
 * is the same for a given thread count. */
void qkvlab_rms_norm_backward(const float *restrict g, const float *restrict x, const float *restrict w,
                              const float *restrict inv, float *restrict dx, float *restrict dw_parts,
                              long rows, int D, int threads) {
#pragma omp parallel num_threads(threads)
    {
        const int t = omp_get_thread_num(), n = omp_get_num_threads();
        const long lo = rows * t / n, hi = rows * (t + 1) / n;
        float *dw = dw_parts + (long)t * D;
        memset(dw, 0, sizeof(float) * D);
        for (long r = lo; r < hi; r++) {
            const float *gr = g + r * D, *xr = x + r * D;
            float *dxr = dx + r * D;
            const float v = inv[r];
            float dot = 0.0f;
            for (int d = 0; d < D; d++) dot += gr[d] * w[d] * xr[d];
            dot *= v / (float)D;
            for (int d = 0; d < D; d++) {
                const float xh = xr[d] * v;
                dxr[d] = v * (gr[d] * w[d] - xh * dot);
                dw[d] += gr[d] * xh;
            }
        }
    }
}

static inline __attribute__((always_inline)) void rope_row(const float *restrict xr, float *restrict yr, const float *restrict c,
                                                          const float *restrict s, const float sign, const int h2) {
    for (int f = 0; f < h2; f++) {
        const float a = xr[f], z = xr[f + h2];
        yr[f] = a * c[f] - sign * z * s[f];
        yr[f + h2] = z * c[f + h2] + sign * a * s[f + h2];
    }
}

/* bf16 rows and tables (a model cast to bf16 for inference): widened to fp32, rotated, rounded once to
 * nearest even. PyTorch's bf16 form rounds twice (after x·cos, then after the multiply-add). */
static inline __attribute__((always_inline)) void rope_row_bf16(const uint16_t *restrict xr, uint16_t *restrict yr, const uint16_t *restrict c,
                                                               const uint16_t *restrict s, const float sign, const int h2) {
    float x[256], cf[256], sf[256], y[256];
    for (int f = 0; f < 2 * h2; f++) x[f] = bf16_to_float(xr[f]), cf[f] = bf16_to_float(c[f]), sf[f] = bf16_to_float(s[f]);
    rope_row(x, y, cf, sf, sign, h2);
    for (int f = 0; f < 2 * h2; f++) yr[f] = float_to_bf16(y[f]);
}

/* RoPE in rotate-half form on x (B, H, T, D) with any strides but a contiguous last dimension:
 * y[f] = x[f] cos[t][f] - sign x[f+h] sin[t][f], y[f+h] = x[f+h] cos[t][f+h] + sign x[f] sin[t][f+h],
 * h = D/2, tables (T, D) with row stride ts, all fp32 or (bf16) all bf16 with D <= 256. y has its own
 * strides. The usual head sizes get a copy with the row loop's length fixed, so it unrolls into whole vectors. */
static inline __attribute__((always_inline)) void rope_rows(const void *restrict x, long xb, long xh, long xt, void *restrict y, long yb, long yh, long yt,
                                                           const void *restrict cos_t, const void *restrict sin_t, long ts, int B, int H, int T, int D,
                                                           float sign, int threads, const int bf16) {
    const int h2 = D / 2;
    /* Rows in memory order: a view of the fused projection is (B, T, H, D) in memory, and walking it
     * by head then time would touch a new page on every row. */
    const int heads_inner = xh <= xt;
    const int n1 = heads_inner ? T : H, n2 = heads_inner ? H : T;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
    for (int b = 0; b < B; b++)
        for (int i = 0; i < n1; i++)
            for (int j = 0; j < n2; j++) {
                const int t = heads_inner ? i : j, hh = heads_inner ? j : i;
                const long xo = b * xb + hh * xh + t * xt, yo = b * yb + hh * yh + t * yt, to = t * ts;
                if (bf16) {
                    const uint16_t *xr = (const uint16_t *)x + xo, *c = (const uint16_t *)cos_t + to, *s = (const uint16_t *)sin_t + to;
                    uint16_t *yr = (uint16_t *)y + yo;
                    switch (h2) {
                    case 24: rope_row_bf16(xr, yr, c, s, sign, 24); break;
                    case 32: rope_row_bf16(xr, yr, c, s, sign, 32); break;
                    default: rope_row_bf16(xr, yr, c, s, sign, h2);
                    }
                    continue;
                }
                const float *xr = (const float *)x + xo, *c = (const float *)cos_t + to, *s = (const float *)sin_t + to;
                float *yr = (float *)y + yo;
                switch (h2) {
                case 16: rope_row(xr, yr, c, s, sign, 16); break;
                case 24: rope_row(xr, yr, c, s, sign, 24); break;
                case 32: rope_row(xr, yr, c, s, sign, 32); break;
                case 64: rope_row(xr, yr, c, s, sign, 64); break;
                default: rope_row(xr, yr, c, s, sign, h2);
                }
            }
}

void qkvlab_rope(const float *restrict x, long xb, long xh, long xt, float *restrict y, long yb, long yh, long yt,
                 const float *restrict cos_t, const float *restrict sin_t, long ts, int B, int H, int T, int D,
                 float sign, int threads) {
    rope_rows(x, xb, xh, xt, y, yb, yh, yt, cos_t, sin_t, ts, B, H, T, D, sign, threads, 0);
}

void qkvlab_rope_bf16(const uint16_t *restrict x, long xb, long xh, long xt, uint16_t *restrict y, long yb, long yh, long yt,
                      const uint16_t *restrict cos_t, const uint16_t *restrict sin_t, long ts, int B, int H, int T, int D,
                      float sign, int threads) {
    rope_rows(x, xb, xh, xt, y, yb, yh, yt, cos_t, sin_t, ts, B, H, T, D, sign, threads, 1);
}

/* SwiGLU of inference, silu(gate) * up over h = [gate | up] (rows of 2F), into y (rows of F): fp32, or bf16
 * computed in fp32 and rounded once. Decoding's one row was three PyTorch ops (chunk, silu, multiply); the
 * modules and the whole-token step (decode_step.c) both call this, so they agree to the bit. The sigmoid
 * takes vexp of -|g| (it wants arguments <= 0): 1 / (1 + e) for g >= 0, e / (1 + e) below. */
static inline v8 swiglu8(v8 g, v8 u) {
    const v8i neg = g < splat(0.0f);
    const v8i gi = (v8i)g;
    const v8 e = vexp((v8)(gi | (v8i)splat(-0.0f)));
    const v8 one = splat(1.0f);
    const v8 num = (v8)((neg & (v8i)e) | (~neg & (v8i)one));
    return g * (num / (one + e)) * u;
}

void qkvlab_swiglu(const void *restrict h, void *restrict y, long rows, int F, int bf16, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (long r = 0; r < rows; r++) {
        for (int i = 0; i < F; i += W) {
            const int n = F - i < W ? F - i : W;
            float g[W] = {0}, u[W] = {0}, o[W];
            const long at = r * 2 * F + i;
            for (int t = 0; t < n; t++) {
                g[t] = bf16 ? bf16_to_float(((const uint16_t *)h)[at + t]) : ((const float *)h)[at + t];
                u[t] = bf16 ? bf16_to_float(((const uint16_t *)h)[at + F + t]) : ((const float *)h)[at + F + t];
            }
            store(o, swiglu8(load(g), load(u)));
            for (int t = 0; t < n; t++) {
                if (bf16) ((uint16_t *)y)[r * F + i + t] = float_to_bf16(o[t]);
                else ((float *)y)[r * F + i + t] = o[t];
            }
        }
    }
}

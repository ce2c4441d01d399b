/* What qkvlab's C kernels share: 8-float vectors (GCC/Clang vector extensions, so AVX2, AVX-512 or
 * NEON alike), bf16 <-> fp32 conversion with torch's rounding, and exp on a vector. cpu_build.py hashes this file into
 * every kernel's build key, so editing it rebuilds them all. */
#ifndef QKVLAB_VEC_H
#define QKVLAB_VEC_H
#include <stdint.h>
#include <string.h>

#define W 8

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint32_t v8u __attribute__((vector_size(32)));

static inline v8 load(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}
static inline void store(float *p, v8 v) { memcpy(p, &v, sizeof v); }
static inline v8 splat(float x) { return (v8){x, x, x, x, x, x, x, x}; }
static inline float hsum(v8 v) {
    return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}
static inline v8 load_bf16(const uint16_t *p) {
    v8h h;
    memcpy(&h, p, sizeof h);
    v8u u = __builtin_convertvector(h, v8u) << 16;
    v8 f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline float bf16_to_float(uint16_t h) {
    const uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
static inline uint16_t float_to_bf16(float f) { /* round to nearest even, as torch's .to(bfloat16) */
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1)) >> 16);
}
/* exp on 8 lanes, for x <= 0 (scores minus their running max, a sigmoid's -|g|): x = n ln2 + t with |t| <= ln2 / 2, e^t
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
#endif

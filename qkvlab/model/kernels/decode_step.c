/* One decoded token through a default-block model (RMSNorm, SwiGLU, RoPE, no biases), from the
 * embedding to the logits, in one call: the same C functions the model's modules call one by one (the one-row Linears, the
 * norms, RoPE, SwiGLU, the decode kernel), in the same order and with the same roundings, so the logits
 * it returns are bit for bit the modules'. What it removes is the Python between them: about
 * 1.2-1.6 ms of module calls and small ops per model=small token on a Zen 4 EPYC, paid alike by every
 * variant, which diluted what a smaller cache saves. Loaded by cpu_step.py; decode_step.py says which
 * models take it. */
#include "few_rows_linear.c"
#include "shared_kv_decode.c"
#include "train_ops.c"

typedef struct {
    const void *norm1, *qkv, *out, *norm2, *up, *down; /* weights, rows contiguous, in the model's dtype */
    void *k, *v;                                       /* cache buffers: S (v NULL) or rotated K and V */
    long cb, ckv, cl;                                  /* their strides, elements */
    float eps1, eps2;
} StepLayer;

typedef struct {
    int n_layers, bf16, d_model, q_heads, kv_heads, d_head, d_ff, has_q, max_len;
    float scale;
    const void *cos_t, *sin_t; /* (context, d_head) rotate-half tables in the model's dtype */
    const StepLayer *layers;
    const void *embedding, *final_norm, *head; /* (vocab, d_model), (d_model), (vocab, d_model) */
    int vocab;
    float final_eps;
} StepModel;

static void copy_heads(const void *src, void *dst, long db, long dh, int B, int heads, int D, long src_row, int es) {
    for (int b = 0; b < B; b++)
        for (int h = 0; h < heads; h++)
            memcpy((char *)dst + (b * db + h * dh) * es, (const char *)src + (b * src_row + (long)h * D) * es, (size_t)D * es);
}

static void add_into(void *x, const void *y, long n, int bf16) {
    if (bf16) {
        uint16_t *a = x;
        const uint16_t *c = y;
        for (long i = 0; i < n; i++) a[i] = float_to_bf16(bf16_to_float(a[i]) + bf16_to_float(c[i]));
    } else {
        float *a = x;
        const float *c = y;
        for (long i = 0; i < n; i++) a[i] += c[i];
    }
}

static void norm_rows(const void *x, const void *w, void *y, int B, int D, float eps, int bf16) {
    if (bf16) qkvlab_rms_norm_forward_bf16(x, w, y, B, D, eps, 1);
    else qkvlab_rms_norm_forward(x, w, y, NULL, B, D, eps, 1);
}

static void rope_heads(const void *x, long x_row, void *y, long yb, long yh, const void *cos_t, const void *sin_t, int B,
                       int heads, int D, int pos, int bf16) {
    const long at = (long)pos * D;
    if (bf16)
        qkvlab_rope_bf16(x, x_row, D, x_row, y, yb, yh, 0, (const uint16_t *)cos_t + at, (const uint16_t *)sin_t + at, D, B, heads, 1, D, 1.0f, 1);
    else
        qkvlab_rope(x, x_row, D, x_row, y, yb, yh, 0, (const float *)cos_t + at, (const float *)sin_t + at, D, B, heads, 1, D, 1.0f, 1);
}

/* The fused projection's width: Q (when the layer has one), then K and V, or S. */
static long proj_width(const StepModel *m) {
    return (long)(m->has_q ? m->q_heads : 0) * m->d_head + (m->layers[0].v ? 2 : 1) * (long)m->kv_heads * m->d_head;
}

/* Scratch elements (of the model's dtype) and work floats a call needs for B sequences. */
long qkvlab_decode_step_scratch(const StepModel *m, int B) {
    const long D = m->d_head;
    return B * (3L * m->d_model + proj_width(m) + 2L * m->q_heads * D + (long)m->kv_heads * D + 3L * m->d_ff);
}

long qkvlab_decode_step_work(const StepModel *m, int B, int threads) {
    return qkvlab_decode_work_floats(B, m->q_heads, m->d_head, qkvlab_decode_splits(B, m->max_len, threads));
}

/* idx: (B) token ids; logits: (B, vocab) out. Returns 1 where a C function refused a shape, 2 past the
 * cache's end, 3 for a token id outside the vocabulary. */
int qkvlab_decode_step(const StepModel *m, const int64_t *idx, void *logits, int B, int pos, void *scratch, float *work, int threads) {
    if (pos >= m->max_len) return 2;
    for (int b = 0; b < B; b++)
        if (idx[b] < 0 || idx[b] >= m->vocab) return 3;
    const int bf16 = m->bf16, es = bf16 ? 2 : 4, D = m->d_head, Hq = m->q_heads, KV = m->kv_heads, d = m->d_model;
    const int two = m->layers[0].v != NULL;
    const long P = proj_width(m);
    char *x = scratch, *n = x + (long)B * d * es, *qkv = n + (long)B * d * es, *q = qkv + B * P * es, *k = q + (long)B * Hq * D * es;
    char *att = k + (long)B * KV * D * es, *o = att + (long)B * Hq * D * es, *h = o + (long)B * d * es, *a = h + 2L * B * m->d_ff * es;
    for (int b = 0; b < B; b++) memcpy(x + (long)b * d * es, (const char *)m->embedding + idx[b] * d * es, (size_t)d * es);
    const int L = pos + 1, splits = qkvlab_decode_splits(B, L, threads);
    for (int i = 0; i < m->n_layers; i++) {
        const StepLayer *ly = m->layers + i;
        norm_rows(x, ly->norm1, n, B, d, ly->eps1, bf16);
        if (qkvlab_few_rows_linear(n, bf16, ly->qkv, bf16, NULL, qkv, B, (int)P, d, threads)) return 1;
        const char *kp = qkv + (m->has_q ? (long)Hq * D * es : 0);
        const long pos_at = (long)pos * ly->cl * es;
        if (two) { /* rotated K and V into the cache; queries are Q rotated, or (q_eq_k) the rotated keys */
            rope_heads(kp, P, k, (long)KV * D, D, m->cos_t, m->sin_t, B, KV, D, pos, bf16);
            copy_heads(k, (char *)ly->k + pos_at, ly->cb, ly->ckv, B, KV, D, (long)KV * D, es);
            copy_heads(kp + (long)KV * D * es, (char *)ly->v + pos_at, ly->cb, ly->ckv, B, KV, D, P, es);
            if (m->has_q) rope_heads(qkv, P, q, (long)Hq * D, D, m->cos_t, m->sin_t, B, Hq, D, pos, bf16);
            else memcpy(q, k, (size_t)B * KV * D * es);
        } else { /* S as projected into the cache; queries are Q rotated, or (q_eq_k_eq_v) S rotated */
            copy_heads(kp, (char *)ly->k + pos_at, ly->cb, ly->ckv, B, KV, D, P, es);
            rope_heads(m->has_q ? qkv : kp, P, q, (long)Hq * D, D, m->cos_t, m->sin_t, B, Hq, D, pos, bf16);
        }
        if (qkvlab_shared_kv_decode(ly->k, ly->v, bf16 ? 2 : 0, ly->cb, ly->ckv, ly->cl, q, bf16, att, B, Hq, KV, L, D,
                                    two ? NULL : m->cos_t, two ? NULL : m->sin_t, bf16, D, NULL, -1.0f, m->scale, splits,
                                    threads, work))
            return 1;
        if (qkvlab_few_rows_linear(att, bf16, ly->out, bf16, NULL, o, B, d, Hq * D, threads)) return 1;
        add_into(x, o, (long)B * d, bf16);
        norm_rows(x, ly->norm2, n, B, d, ly->eps2, bf16);
        if (qkvlab_few_rows_linear(n, bf16, ly->up, bf16, NULL, h, B, 2 * m->d_ff, d, threads)) return 1;
        qkvlab_swiglu(h, a, B, m->d_ff, bf16, 1);
        if (qkvlab_few_rows_linear(a, bf16, ly->down, bf16, NULL, o, B, d, m->d_ff, threads)) return 1;
        add_into(x, o, (long)B * d, bf16);
    }
    norm_rows(x, m->final_norm, n, B, d, m->final_eps, bf16);
    return qkvlab_few_rows_linear(n, bf16, m->head, bf16, NULL, logits, B, m->vocab, d, threads) ? 1 : 0;
}

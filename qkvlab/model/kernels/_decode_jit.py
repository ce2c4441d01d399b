"""Triton kernels behind triton_decode.py; imported only when Triton is (see that module for the maths).

Split kernel: one program per (batch, KV head, split of the cache length). It loads each cached
row of S once, as the two halves of its rotary pairs, forms the keys in registers (gain or RMSNorm,
then RoPE), scores every query head of the group against them, and accumulates p @ S from the
same registers with an online softmax, one stream per tile row, merged after the loop. Reduce kernel: merges the splits' (max, sum, acc)."""

import triton
import triton.language as tl


@triton.jit
def _dot32(a, b):
    """tl.dot of 16-bit operands as fp32 products, exact as the tensor cores' fp32 accumulation is
    up to summation order: Triton's CPU interpreter mis-multiplies bf16 operands."""
    return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def split_kernel(
    Q, S, COS, SIN, GAIN, PM, PL, PACC,
    L, tiles_per_split, n_splits, qk_scale, eps,
    sqb, sqh, sqd,
    ssb, ssk, ssl, ssd,
    scl, scd, snl, snd, sgd,
    KV, G, GP: tl.constexpr, D: tl.constexpr, D2P: tl.constexpr,
    BLOCK_L: tl.constexpr, PAIRS: tl.constexpr, ROPE: tl.constexpr, KEY_MODE: tl.constexpr, STAGES: tl.constexpr,
    MMA: tl.constexpr, EMULATE: tl.constexpr,
):
    bk = tl.program_id(0).to(tl.int64)
    split = tl.program_id(1)
    b = bk // KV
    kvh = bk % KV
    g = tl.arange(0, GP)
    d = tl.arange(0, D2P)
    gm = g < G
    dm = d < D // 2
    if PAIRS:
        o1 = 2 * d
        o2 = 2 * d + 1
    else:
        o1 = d
        o2 = d + D // 2

    qrow = Q + b * sqb + (kvh * G + g)[:, None] * sqh
    qmask = gm[:, None] & dm[None, :]
    q1 = tl.load(qrow + o1[None, :] * sqd, mask=qmask, other=0.0).to(tl.float32) * qk_scale
    q2 = tl.load(qrow + o2[None, :] * sqd, mask=qmask, other=0.0).to(tl.float32) * qk_scale
    if KEY_MODE != 0:
        g1 = tl.load(GAIN + o1 * sgd, mask=dm, other=0.0).to(tl.float32)
        g2 = tl.load(GAIN + o2 * sgd, mask=dm, other=0.0).to(tl.float32)

    if MMA:
        # Tensor-core form for 16-bit caches: the group's heads padded to 16 rows, scores and p @ S as
        # tl.dot on the cache's dtype, one online-softmax state per head (FlashAttention's).
        m = tl.full([GP], -1e30, tl.float32)
        lsum = tl.zeros([GP], tl.float32)
        a1 = tl.zeros([GP, D2P], tl.float32)
        a2 = tl.zeros([GP, D2P], tl.float32)
        qd1 = q1.to(S.dtype.element_ty)
        qd2 = q2.to(S.dtype.element_ty)
    else:
        # Every (head, tile row) is its own online-softmax stream, merged once after the loop: the loop
        # then has no reduction across rows (no shared-memory round trip per tile), only over features.
        m = tl.full([GP, BLOCK_L], -1e30, tl.float32)
        lsum = tl.zeros([GP, BLOCK_L], tl.float32)
        a1 = tl.zeros([GP, BLOCK_L, D2P], tl.float32)
        a2 = tl.zeros([GP, BLOCK_L, D2P], tl.float32)

    lo = split * tiles_per_split * BLOCK_L
    hi = tl.minimum(lo + tiles_per_split * BLOCK_L, L)
    base = S + b * ssb + kvh * ssk
    for start in tl.range(lo, hi, BLOCK_L, num_stages=STAGES):
        pos = start + tl.arange(0, BLOCK_L)
        pm = pos < hi
        tmask = pm[:, None] & dm[None, :]
        rows = base + pos[:, None] * ssl
        s1 = tl.load(rows + o1[None, :] * ssd, mask=tmask, other=0.0).to(tl.float32)
        s2 = tl.load(rows + o2[None, :] * ssd, mask=tmask, other=0.0).to(tl.float32)
        k1 = s1
        k2 = s2
        if KEY_MODE == 2:
            r = tl.rsqrt((tl.sum(s1 * s1, axis=1) + tl.sum(s2 * s2, axis=1)) / D + eps)
            k1 = s1 * r[:, None] * g1[None, :]
            k2 = s2 * r[:, None] * g2[None, :]
        elif KEY_MODE == 1:
            k1 = s1 * g1[None, :]
            k2 = s2 * g2[None, :]
        if ROPE:
            c = tl.load(COS + pos[:, None] * scl + d[None, :] * scd, mask=tmask, other=0.0).to(tl.float32)
            sn = tl.load(SIN + pos[:, None] * snl + d[None, :] * snd, mask=tmask, other=0.0).to(tl.float32)
            r1 = k1 * c - k2 * sn
            r2 = k2 * c + k1 * sn
            k1 = r1
            k2 = r2
        if MMA:
            kd1 = k1.to(S.dtype.element_ty)
            kd2 = k2.to(S.dtype.element_ty)
            if EMULATE:
                qk = _dot32(qd1, tl.trans(kd1)) + _dot32(qd2, tl.trans(kd2))
            else:
                qk = tl.dot(qd1, tl.trans(kd1)) + tl.dot(qd2, tl.trans(kd2))
            qk = tl.where(pm[None, :], qk, float("-inf"))
            m_new = tl.maximum(m, tl.max(qk, axis=1))
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(qk - m_new[:, None])
            lsum = lsum * alpha + tl.sum(p, axis=1)
            pd = p.to(S.dtype.element_ty)
            if EMULATE:
                a1 = a1 * alpha[:, None] + _dot32(pd, s1)
                a2 = a2 * alpha[:, None] + _dot32(pd, s2)
            else:
                a1 = a1 * alpha[:, None] + tl.dot(pd, s1.to(S.dtype.element_ty))
                a2 = a2 * alpha[:, None] + tl.dot(pd, s2.to(S.dtype.element_ty))
            m = m_new
        else:
            qk = tl.sum(q1[:, None, :] * k1[None, :, :], axis=2) + tl.sum(q2[:, None, :] * k2[None, :, :], axis=2)
            qk = tl.where(pm[None, :], qk, float("-inf"))
            m_new = tl.maximum(m, qk)
            alpha = tl.exp2(m - m_new)
            p = tl.exp2(qk - m_new)
            lsum = lsum * alpha + p
            a1 = a1 * alpha[:, :, None] + p[:, :, None] * s1[None, :, :]
            a2 = a2 * alpha[:, :, None] + p[:, :, None] * s2[None, :, :]
            m = m_new

    if not MMA:
        mx = tl.max(m, axis=1)
        w = tl.exp2(m - mx[:, None])
        lsum = tl.sum(lsum * w, axis=1)
        a1 = tl.sum(a1 * w[:, :, None], axis=1)
        a2 = tl.sum(a2 * w[:, :, None], axis=1)
        m = mx

    part = bk * n_splits + split
    tl.store(PM + part * G + g, m, mask=gm)
    tl.store(PL + part * G + g, lsum, mask=gm)
    acc = PACC + (part * G + g)[:, None] * D
    tl.store(acc + o1[None, :], a1, mask=qmask)
    tl.store(acc + o2[None, :], a2, mask=qmask)


@triton.jit
def reduce_kernel(PM, PL, PACC, Y, n_splits, G, D: tl.constexpr, DP: tl.constexpr, NSP: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    bk = row // G
    g = row % G
    ns = tl.arange(0, NSP)
    nm = ns < n_splits
    idx = (bk * n_splits + ns) * G + g
    ms = tl.load(PM + idx, mask=nm, other=float("-inf"))
    mx = tl.max(ms, axis=0)
    w = tl.where(nm, tl.exp2(ms - mx), 0.0)
    total = tl.sum(w * tl.load(PL + idx, mask=nm, other=0.0), axis=0)
    dd = tl.arange(0, DP)
    dmask = dd < D
    acc = tl.zeros([DP], tl.float32)
    for s in range(0, n_splits):
        ws = tl.exp2(tl.load(PM + (bk * n_splits + s) * G + g) - mx)
        acc += ws * tl.load(PACC + ((bk * n_splits + s) * G + g) * D + dd, mask=dmask, other=0.0)
    tl.store(Y + row * D + dd, (acc / total).to(Y.dtype.element_ty), mask=dmask)

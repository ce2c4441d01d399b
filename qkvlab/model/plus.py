"""The study's asymmetric "+" attention: a learned 2-D positional term on the scores.

With Q=K the content scores S = (q_i·k_j)/sqrt(d_head) are symmetric (RoPE keeps them so), and
only a causal mask breaks the symmetry. The study ("Do Transformers Need Three Projections?",
Kayyam, Madan Gopal and Lewis 2026, variants (Q=K!=V)+ and (Q=K=V)+; its code:
Brainchip-Inc/Do-Transformers-Need-3-Projections, synthetic_tasks.py) broadcasts S over m
channels, adds a fixed positional tensor P and mixes the channels with a 1x1 map (m -> 1):

    S'[i, j] = Σ_c w_c (S[i, j] + P[i, j, c]) + b = S[i, j]·Σ_c w_c + Σ_c w_c P[i, j, c] + b

with m = 10, w ~ N(0, 0.02²), b = 0, one w and b per layer shared by its heads: m + 1 parameters
per layer. P[i, j] concatenates features of the query position i and of the key position j,
P[i, j] = [f_h(i) | f_{m-h}(j)] with h = m/2, where f_n(t) has n columns: column 2c is
sin(t·base^(-2c/n)) and column 2c+1 is cos(t·base^(-2c/n)) (sin and cos interleaved, base 10000),
so for n = 5: sin, cos at frequency 1, sin, cos at 10000^(-2/5), sin at 10000^(-4/5). This is
the study's `build_2d_sincos` exactly. Since P[i, j] != P[j, i], S' is not symmetric.

`variant.plus_content_scale=separate` replaces the factor Σ_c w_c on S by a parameter of its own
initialised to 1 (m + 2 per layer). At initialisation Σ_c w_c is N(0, m·0.02²), about ±0.06: the
study's form shrinks the content scores some 15-fold (1/0.063) and flips their sign in half of the layers,
so a gain of "+" over plain Q=K could come from that rescaling rather than from the asymmetry;
`separate` keeps the content scores as they are and tests the asymmetry alone.

What the softmax sees: it is shift-invariant along each row, so b and the query-position part
f_h(i)·w[:h] do not change the attention (through the bias they get no gradient; w[:h] still acts
through Σw); only the key-position part f_{m-h}(j)·w[h:] (a learned score per key position) and the
content factor do.
The score matrix itself (what a symmetry score measures) includes them all, as in the study.

Efficiently: the additive term is the (T, T) matrix r_i + c_j + b, built per layer from 2·T·m/2
features (no (T, T, m) tensor) and shared by the heads, passed to SDPA as a float attn_mask with
the causal mask folded in as -inf; the content factor multiplies the queries (SDPA's `scale` is a
Python float, which would cut the factor's gradient). A float mask rules out SDPA's flash kernel on a
GPU (SDPA picks one that takes a mask). Decoding takes rows start_pos..start_pos+T
of the same matrix over the cached keys, so it equals recomputation; the cache is untouched.
FLOPs: the bias is one add per score entry per layer (not per head), against 2·d_head multiply-adds
per entry and head for QK^T and AV: `score_flops_per_token` does not count it.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = 10
BASE = 10000.0
CONTENT_SCALES = ("shared", "separate")


def sincos(positions: torch.Tensor, n: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(len(positions), n): column 2c = sin(t·BASE^(-2c/n)), column 2c+1 = cos of the same angle."""
    freqs = BASE ** (-torch.arange(0, n, 2, dtype=dtype, device=positions.device) / n)
    angles = positions.to(dtype)[:, None] * freqs
    out = angles.new_empty(len(positions), n)
    out[:, 0::2] = angles.sin()
    out[:, 1::2] = angles[:, : n // 2].cos()
    return out


def positional_tensor(rows: torch.Tensor, cols: torch.Tensor, m: int = FEATURES) -> torch.Tensor:
    """The study's P: (len(rows), len(cols), m), [f_{m/2}(i) | f_{m-m/2}(j)]; for tests and reading only."""
    h = m // 2
    r, c = sincos(rows, h), sincos(cols, m - h)
    return torch.cat((r[:, None, :].expand(-1, len(cols), -1), c[None, :, :].expand(len(rows), -1, -1)), dim=-1)


class PlusScores(nn.Module):
    """One layer's "+" term: w (m), b (1) and, with content scale `separate`, its own content factor."""

    def __init__(self, content_scale: str = "shared", m: int = FEATURES):
        super().__init__()
        self.m, self.h = m, m // 2
        self.weight = nn.Parameter(torch.empty(m))
        self.bias = nn.Parameter(torch.zeros(1))
        self.content_scale = nn.Parameter(torch.ones(1)) if content_scale == "separate" else None

    def init_weights(self) -> None:
        nn.init.normal_(self.weight, std=0.02)
        nn.init.zeros_(self.bias)
        if self.content_scale is not None:
            nn.init.ones_(self.content_scale)

    def content_factor(self) -> torch.Tensor:
        """What the content scores S are multiplied by: Σ_c w_c, or the separate scale."""
        return self.weight.sum() if self.content_scale is None else self.content_scale[0]

    def additive(self, start: int, T: int, S: int, causal: bool, device) -> torch.Tensor:
        """Σ_c w_c P[i, j, c] + b for query rows start..start+T and key columns 0..S, (T, S) in fp32
        (fp64 for an fp64 model); -inf where a causal mask hides key j > i."""
        dtype = torch.promote_types(self.weight.dtype, torch.float32)
        rows = torch.arange(start, start + T, device=device)
        cols = torch.arange(S, device=device)
        r = sincos(rows, self.h, dtype) @ self.weight[: self.h].to(dtype)
        c = sincos(cols, self.m - self.h, dtype) @ self.weight[self.h :].to(dtype)
        bias = r[:, None] + c[None, :] + self.bias.to(dtype)
        if causal:
            bias = bias.masked_fill(cols[None, :] > rows[:, None], float("-inf"))
        return bias

    def logits(self, q, k, scale: float, start: int = 0, causal: bool = False) -> torch.Tensor:
        """The full score matrix S' (B, H, T, S) the softmax sees; for analyses and tests."""
        if k.shape[1] != q.shape[1]:
            k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        S = (q @ k.transpose(-1, -2)) * scale
        return S * self.content_factor() + self.additive(start, q.shape[2], k.shape[2], causal, q.device)

    def attend(self, q, k, v, start: int, causal: bool, scale: Optional[float], gqa: bool, dropout: float) -> torch.Tensor:
        """SDPA over S' = factor·S + bias: the factor on the queries, the bias (causal mask in it) as attn_mask."""
        bias = self.additive(start, q.shape[2], k.shape[2], causal, q.device).to(q.dtype)
        q = q * self.content_factor().to(q.dtype)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout, enable_gqa=gqa, scale=scale)


def check_plus(cfg) -> Optional[str]:
    """What "+" cannot do, as the one line to print; None when the config is fine."""
    v = cfg.variant
    if v.plus_content_scale not in CONTENT_SCALES:
        return f"variant.plus_content_scale={v.plus_content_scale!r} is not valid; choose one of: {', '.join(CONTENT_SCALES)}"
    if not v.plus:
        if v.plus_content_scale != "shared":
            return (f"variant.plus_content_scale={v.plus_content_scale} is read only with variant.plus=true; "
                    "set variant.plus=true or drop it")
        return None
    if v.family != "shared_qkv":
        return (f"variant.plus=true adds the study's positional term to the shared_qkv family's scores, and "
                f"variant.family={v.family} computes its own; set variant.plus=false or variant.family=shared_qkv")
    return None

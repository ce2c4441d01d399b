"""Differential attention (Ye et al. 2024, *Differential Transformer*).

Each of the H heads splits its query and key (d_head each) into two halves of
d_head/2 and attends twice over the same values (d_head):

    DiffAttn = (softmax(Q1 K1^T / sqrt(d_head/2)) - lambda softmax(Q2 K2^T / sqrt(d_head/2))) V
    lambda   = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init,  lambda_init = 0.8 - 0.6 exp(-0.3 l)

with lq1, lk1, lq2, lk2 learned vectors of d_head/2 per layer (init N(0, 0.1^2)) and l the
layer's index from 0, as in the authors' code. Each head's output is RMS-normalised over
d_head (learned gain) and scaled by 1 - lambda_init. W_Q, W_K, W_V and W_O are mha's, so
the parameter count is mha's plus 4 d_head/2 + d_head per layer. RoPE rotates the d_head/2
halves. Since the map difference is linear in V, each pass is a fused SDPA call over the
same values; the cache holds K (2H halves) and V, as many bytes as mha.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, Rope, _decode_attention, rotate
from qkvlab.model.probe import ScoreProbe, dot_scores, emit, wants_probe


def lambda_init(layer: int) -> float:
    return 0.8 - 0.6 * math.exp(-0.3 * layer)


class DifferentialAttention(nn.Module):
    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__()
        self.spec, self.layer = spec, layer
        self.half = spec.d_head // 2
        d = spec.n_heads * spec.d_head
        self.qkv = nn.Linear(spec.d_model, 3 * d, bias=spec.bias)
        self.out = nn.Linear(d, spec.d_model, bias=spec.bias)
        self.lambda_q = nn.Parameter(torch.empty(2, self.half))
        self.lambda_k = nn.Parameter(torch.empty(2, self.half))
        self.lambda_init = lambda_init(layer.index)
        self.head_norm = nn.RMSNorm(spec.d_head, eps=spec.norm_eps)

    @property
    def rope_dim(self) -> int:
        return self.half

    def init_family(self) -> None:
        nn.init.normal_(self.lambda_q, std=0.1)
        nn.init.normal_(self.lambda_k, std=0.1)

    def lam(self) -> torch.Tensor:
        e = torch.exp((self.lambda_q * self.lambda_k).sum(-1))
        return e[0] - e[1] + self.lambda_init

    def score_flops_per_token(self, seq_len: int) -> int:
        """QK^T over 2H halves costs what mha's does; AV runs twice (one per map)."""
        return 18 * self.spec.n_heads * self.spec.d_head * seq_len

    def cache_shapes(self, batch: int, max_len: int) -> list[tuple[int, ...]]:
        H = self.spec.n_heads
        return [(batch, 2 * H, max_len, self.half), (batch, H, max_len, self.spec.d_head)]

    def cache_values_per_token(self) -> int:
        return 2 * self.spec.n_heads * self.spec.d_head

    def project(self, x: torch.Tensor, rope: Optional[Rope]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Q and K as 2H rotated halves (B, 2H, T, d_head/2), V as H heads (B, H, T, d_head)."""
        B, T, _ = x.shape
        H = self.spec.n_heads
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q = q.view(B, T, 2 * H, self.half).transpose(1, 2)
        k = k.view(B, T, 2 * H, self.half).transpose(1, 2)
        if rope is not None:
            q, k = rotate(q, rope.cos, rope.sin), rotate(k, rope.cos, rope.sin)
        return q, k, v.view(B, T, H, self.spec.d_head).transpose(1, 2)

    def combine(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """(A1 - lambda A2) V from the two passes, normalised per head and scaled by 1 - lambda_init."""
        B, H, T, _ = first.shape
        y = self.head_norm(first - self.lam().to(first.dtype) * second) * (1 - self.lambda_init)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x, rope: Optional[Rope] = None, cache=None, start_pos: int = 0, shared: Optional[dict] = None):
        if cache is not None:
            return self.forward_cached(x, rope, cache, start_pos)
        q, k, v = self.project(x, rope)
        if wants_probe(shared):
            emit(shared, self.layer.index, self.probe(x, q, k, v))
        drop = self.spec.dropout if self.training else 0.0
        a1 = F.scaled_dot_product_attention(q[:, 0::2], k[:, 0::2], v, dropout_p=drop, is_causal=self.spec.causal)
        a2 = F.scaled_dot_product_attention(q[:, 1::2], k[:, 1::2], v, dropout_p=drop, is_causal=self.spec.causal)
        return self.combine(a1, a2)

    def probe(self, x, q, k, v) -> ScoreProbe:
        """Both maps of every head as 2H score matrices (head h's first map at 2h, its second at 2h + 1; each
        Q_i K_iᵀ / sqrt(d_head / 2) after RoPE), and Q and K as H heads of d_head before RoPE."""
        B, T, _ = x.shape
        raw_q, raw_k, _ = self.qkv(x).view(B, T, 3, self.spec.n_heads, self.spec.d_head).transpose(1, 3).unbind(2)
        return ScoreProbe(dot_scores(q, k, None), raw_q, raw_k, v, maps_per_head=2)

    def forward_cached(self, x, rope: Optional[Rope], cache, start_pos: int):
        q, k, v = self.project(x, None if rope is None else rope.at(start_pos))
        k, v = cache.update(start_pos, [k, v])
        a1 = _decode_attention(q[:, 0::2], k[:, 0::2], v, start_pos, False)
        a2 = _decode_attention(q[:, 1::2], k[:, 1::2], v, start_pos, False)
        return self.combine(a1, a2)


def check_differential(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    v, m = cfg.variant, cfg.model
    if v.sharing != "mha" or (v.n_kv_heads or m.n_heads // v.kv_group_size) != m.n_heads:
        return ("variant.family=differential needs sharing mha with a KV head per query head: its two maps split "
                "each head's own query and key; use variant=differential as it is")
    if v.share_every > 1 or v.kv_shared_layers or v.qk_norm:
        return "variant.family=differential does not take share_every, kv_shared_layers or qk_norm"
    if (m.d_model // m.n_heads) % (4 if m.positions == "rope" else 2):
        return f"variant.family=differential halves each head (d_head={m.d_model // m.n_heads}); RoPE then needs d_head divisible by 4"
    return None


FAMILIES["differential"] = DifferentialAttention
FAMILY_CHECKS["differential"] = check_differential

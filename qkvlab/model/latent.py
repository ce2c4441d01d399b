"""Multi-head latent attention (MLA; DeepSeek-AI 2024, *DeepSeek-V2*, arXiv 2405.04434, section 2.1).

Keys and values of all H heads come from one low-rank latent per token, and a
decoupled RoPE key shared by every head carries the position:

    c      = RMSNorm(x W_DKV)                      kv_rank values (learned gain)
    k_R    = RoPE(x W_KR)                          rope_dim values, one head shared by all heads
    K_h    = [c W_UK,h ; k_R]                      d_head + rope_dim
    V_h    = c W_UV,h                              d_head
    Q_h    = [x W_Q,h ; RoPE(x W_QR,h)]            d_head + rope_dim
    score  = Q_h K_h^T / sqrt(d_head + rope_dim)

The cache holds [c ; k_R]: kv_rank + rope_dim values per token per layer, whatever
the head count. Defaults follow the paper's own ratios (d_c = 4 d_h, d_h^R = d_h / 2:
512 and 64 at d_h = 128 in DeepSeek-V2 and V2-Lite), so the cache is 4.5 d_head per
layer against mha's 2 H d_head: the paper's "GQA with 2.25 groups". Queries are not
compressed: DeepSeek-V2 compresses them (q_lora_rank 1536) only to save training
activations, which saves no cache, and V2-Lite (d_model 2048, the nearest to our
widths) has none. W_UK and W_UV carry no bias (none in DeepSeek's code either: a
bias there would add a per-query constant to the scores, which softmax ignores, and
a constant to the outputs, which the output projection's bias already holds).

Training up-projects the latent (cheapest when every position is a query). Decoding
absorbs W_UK into the query and W_UV into the output, as DeepSeek's inference does:
one "head" of kv_rank + rope_dim over the cached [c ; k_R], whose first kv_rank
columns are also the values, then W_UV per head; the cache is never up-projected.
W_DKV and W_KR are one Linear, as in DeepSeek's kv_a_proj_with_mqa, and W_Q, W_QR one.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, Rope, _decode_attention, rotate
from qkvlab.model.probe import ScoreProbe, dot_scores, emit, wants_probe


class LatentAttention(nn.Module):
    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__()
        self.spec, self.layer = spec, layer
        H, d = spec.n_heads, spec.d_head
        self.kv_rank = spec.kv_rank or 4 * d
        self.rope_width = spec.rope_dim or d // 2
        self.q = nn.Linear(spec.d_model, H * (d + self.rope_width), bias=spec.bias)
        self.kv_down = nn.Linear(spec.d_model, self.kv_rank + self.rope_width, bias=spec.bias)
        self.kv_norm = nn.RMSNorm(self.kv_rank, eps=spec.norm_eps)
        self.kv_up = nn.Linear(self.kv_rank, H * 2 * d, bias=False)
        self.out = nn.Linear(H * d, spec.d_model, bias=spec.bias)
        self.score_scale = 1 / math.sqrt(d + self.rope_width)

    @property
    def rope_dim(self) -> int:
        return self.rope_width

    def init_family(self) -> None:
        """Nothing beyond the model's generic init (normal matrices, unit gains)."""

    def score_flops_per_token(self, seq_len: int) -> int:
        """As trained: QK^T over d_head + rope_dim and AV over d_head per head, forward and backward."""
        return 6 * self.spec.n_heads * (2 * self.spec.d_head + self.rope_width) * seq_len

    def cache_shapes(self, batch: int, max_len: int) -> list[tuple[int, ...]]:
        return [(batch, 1, max_len, self.kv_rank + self.rope_width)]

    def cache_values_per_token(self) -> int:
        return self.kv_rank + self.rope_width

    def queries(self, x: torch.Tensor, rope: Optional[Rope]) -> tuple[torch.Tensor, torch.Tensor]:
        """The no-position and the rotated parts of the queries, (B, H, T, d_head) and (B, H, T, rope_dim)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.spec.n_heads, -1).transpose(1, 2)
        q_nope, q_rope = q.split([self.spec.d_head, self.rope_width], dim=-1)
        return q_nope, q_rope if rope is None else rotate(q_rope, rope.cos, rope.sin)

    def latent(self, x: torch.Tensor, rope: Optional[Rope]) -> torch.Tensor:
        """What the cache holds per token: [RMSNorm(c) ; RoPE(k_R)], (B, 1, T, kv_rank + rope_dim)."""
        c, k_rope = self.kv_down(x).unsqueeze(1).split([self.kv_rank, self.rope_width], dim=-1)
        k_rope = k_rope if rope is None else rotate(k_rope, rope.cos, rope.sin)
        return torch.cat((self.kv_norm(c), k_rope), dim=-1)

    def forward(self, x, rope: Optional[Rope] = None, cache=None, start_pos: int = 0, shared: Optional[dict] = None):
        if cache is not None:
            return self.forward_cached(x, rope, cache, start_pos)
        B, T, _ = x.shape
        H, d = self.spec.n_heads, self.spec.d_head
        q_nope, q_rope = self.queries(x, rope)
        c, k_rope = self.latent(x, rope).split([self.kv_rank, self.rope_width], dim=-1)
        k_nope, v = self.kv_up(c.squeeze(1)).view(B, T, H, 2 * d).transpose(1, 2).split([d, d], dim=-1)
        q = torch.cat((q_nope, q_rope), dim=-1)
        k = torch.cat((k_nope, k_rope.expand(B, H, T, self.rope_width)), dim=-1)
        if wants_probe(shared):
            emit(shared, self.layer.index, self.probe(q, k, q_nope, k_nope, v))
        y = F.scaled_dot_product_attention(
            q, k, v, dropout_p=self.spec.dropout if self.training else 0.0, is_causal=self.spec.causal, scale=self.score_scale
        )
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def probe(self, q, k, q_nope, k_nope, v) -> ScoreProbe:
        """The decoupled scores [q; RoPE(q_R)]·[k; RoPE(k_R)] / sqrt(d_head + rope_dim); Q and K are the content
        parts x W_Q and c W_UK (d_head, like V = c W_UV): the RoPE parts carry position, not content."""
        return ScoreProbe(dot_scores(q, k, self.score_scale), q_nope, k_nope, v)

    def forward_cached(self, x, rope: Optional[Rope], cache, start_pos: int):
        """Absorbed decoding: q_nope W_UK,h scores against the cached latent, W_UV,h after the mixing."""
        B, T, _ = x.shape
        new_rope = None if rope is None else rope.at(start_pos)
        q_nope, q_rope = self.queries(x, new_rope)
        (cached,) = cache.update(start_pos, [self.latent(x, new_rope).to(cache.dtype)])
        w_uk, w_uv = self.kv_up.weight.view(self.spec.n_heads, 2, self.spec.d_head, self.kv_rank).to(cached.dtype).unbind(1)
        q = torch.cat((torch.einsum("bhtd,hdr->bhtr", q_nope.to(cached.dtype), w_uk), q_rope.to(cached.dtype)), dim=-1)
        y = _decode_attention(q, cached, cached[..., : self.kv_rank], start_pos, True, self.score_scale)
        y = torch.einsum("bhtr,hdr->bhtd", y, w_uv).to(x.dtype)
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


def check_mla(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    v, m = cfg.variant, cfg.model
    d_head = m.d_model // m.n_heads
    clashes = [
        key
        for key, off in (
            ("sharing", v.sharing == "mha"),
            ("kv_group_size", v.kv_group_size == 1),
            ("n_kv_heads", v.n_kv_heads in (None, m.n_heads)),
            ("share_every", v.share_every == 1),
            ("kv_shared_layers", v.kv_shared_layers == 0),
            ("qk_norm", not v.qk_norm),
            ("v_norm", not v.v_norm),
            ("score_scale", v.score_scale is None),
        )
        if not off
    ]
    if clashes:
        return (
            f"variant.family=mla does not combine with variant.{', variant.'.join(clashes)}: every head reads one "
            "shared latent, which replaces projection and head sharing; use variant=mla as it is"
        )
    if m.positions != "rope":
        return f"variant.family=mla decouples a RoPE key from the latent; it needs model.positions=rope, not {m.positions}"
    if v.kv_rank is not None and v.kv_rank < 1:
        return f"variant.kv_rank={v.kv_rank} is out of range; it must be >= 1, or null for 4 * d_head ({4 * d_head})"
    rope = v.rope_dim if v.rope_dim is not None else d_head // 2
    if rope < 2 or rope % 2:
        return f"variant.rope_dim={rope} (null means d_head / 2) must be an even number >= 2: RoPE rotates pairs; set variant.rope_dim"
    return None


FAMILIES["mla"] = LatentAttention
FAMILY_CHECKS["mla"] = check_mla

"""Routed query heads: per token, a router picks which query heads of each KV group run.

In the spirit of R-GQA (routed grouped-query attention, Snowyiu 2025) and of MoH
(Jin et al. 2024, *MoH: Multi-Head Attention as Mixture-of-Head Attention*). The
n_heads query heads fall into n_kv groups of g = n_heads / n_kv heads that share one
K/V head (GQA). In each group the first `shared_heads` (s) heads always run; a router
(a bias-free Linear d_model -> n_kv·(g - s)) scores the other g - s per token,
softmax within the group, and the `top_k` (k) best run. A routed head's output is
weighted by its score renormalised over the selected ones and multiplied by k (MoH's
reference code does the same), so the weights average 1: with k = g - s and a
uniform router (zero router weights) every weight is exactly 1 and the layer is the
dense GQA/MHA layer with the same weights. Shared heads have weight 1 (MoH's extra
learned shared/routed balance, its α1 and α2, is left out). k >= 2: with one selected
head the renormalised weight is always 1 and the loss could not train the router.

Only the selected queries are computed. K/V are shared within a group, so the m = s + k
queries a token sends to a group can be stacked as m "slots": slot j of group G holds,
at every position t, the query of the head token t chose j-th. That is GQA with m
query heads per KV head instead of g, and it runs through the same fused causal
attention kernel: the score and mixing work is m/g of dense attention, exactly, with
no ragged shapes or masks; the outputs are scattered back to their heads' slots (zeros
elsewhere) before the output projection. The Q projection stays dense (every head's
W_Q row block is used by some token). `score_flops_per_token` counts the m heads,
and `query_heads_computed` (n_kv·m per layer) reaches the run summary as
attention/query_heads_computed, a fraction of n_heads.

Load balance (Switch Transformer's form, Fedus et al. 2021, per group): with f_i the
fraction of the group's k·tokens selections that went to routed head i and P_i the mean
router probability of head i over the batch's tokens, L = (g - s) · Σ_i f_i·P_i, which is 1
when routing is uniform; averaged over groups and layers (MoH's code computes k times
this). It reaches the loss as variant.aux_weight (default 0.01, MoH's β) × L and is logged
as train/aux/load_balance and val/aux/load_balance.

Parameters: the underlying sharing's plus the router, d_model·n_kv·(g - s) per layer. The
cache is the underlying GQA/MHA's: K and V per KV head (or S for k_eq_v), whatever k is.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, SharedQKVAttention, _decode_attention, add_aux
from qkvlab.model.probe import ScoreProbe

DEFAULT_TOP_K = 2


def routing_shape(spec: AttentionSpec) -> tuple[int, int, int]:
    """(query heads per KV group, always-on heads per group, routed heads each token picks per group)."""
    return spec.n_heads // spec.n_kv_heads, spec.shared_heads or 0, spec.top_k or DEFAULT_TOP_K


class RoutedHeadsAttention(SharedQKVAttention):
    aux_losses = ("load_balance",)
    default_aux_weight = 0.01

    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__(spec, layer)
        self.group, self.n_shared, self.top_k = routing_shape(spec)
        self.pool = self.group - self.n_shared
        self.slots = self.n_shared + self.top_k
        self.router = nn.Linear(spec.d_model, spec.n_kv_heads * self.pool, bias=False)

    @property
    def query_heads_computed(self) -> int:
        return self.spec.n_kv_heads * self.slots

    def score_flops_per_token(self, seq_len: int) -> int:
        """Scores and mixing for the computed heads only; the router's matmul is in the Linear count."""
        return 12 * self.query_heads_computed * self.spec.d_head * seq_len

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per group and token: the heads that run (B, kv, m, T), their weights (B, kv, m, T),
        the router's probabilities (B, T, kv, g - s) and its choices (B, T, kv, k)."""
        B, T, _ = x.shape
        G = self.spec.n_kv_heads
        probs = self.router(x).float().view(B, T, G, self.pool).softmax(dim=-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        weights = self.top_k * top_p / top_p.sum(dim=-1, keepdim=True)
        if self.n_shared:
            always = torch.arange(self.n_shared, device=x.device).expand(B, T, G, self.n_shared)
            heads = torch.cat((always, top_i + self.n_shared), dim=-1)
            weights = torch.cat((weights.new_ones(B, T, G, self.n_shared), weights), dim=-1)
        else:
            heads = top_i
        return heads.permute(0, 2, 3, 1), weights.permute(0, 2, 3, 1), probs, top_i

    def load_balance(self, probs: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
        """Switch-style (g - s) Σ f_i P_i per group, averaged over groups; 1 when balanced."""
        f = F.one_hot(chosen, self.pool).sum(dim=-2).float().mean(dim=(0, 1)) / self.top_k
        P = probs.mean(dim=(0, 1))
        return self.pool * (f * P).sum(dim=-1).mean()

    def probe(self, x, p, q, k) -> ScoreProbe:
        """Every head's scores, with `pairs` keeping the (i, j) where tokens i and j both ran the head: only
        those scores are computed, so only those pairs have both S_ij and S_ji."""
        out = super().probe(x, p, q, k)
        heads = self.route(x)[0]
        B, G, _, T = heads.shape
        ran = torch.zeros(B, G, self.group, T, dtype=torch.bool, device=x.device).scatter(2, heads, True)
        ran = ran.view(B, self.spec.n_heads, T)
        out.pairs = ran[..., :, None] & ran[..., None, :]
        return out

    def attend(self, x, q, k, v, start_pos: int, decoding: bool, shared: Optional[dict]) -> torch.Tensor:
        B, H, T, d = q.shape
        G, m = self.spec.n_kv_heads, self.slots
        heads, weights, probs, chosen = self.route(x)
        index = heads.unsqueeze(-1).expand(B, G, m, T, d)
        picked = q.view(B, G, self.group, T, d).gather(2, index).reshape(B, G * m, T, d)
        gqa = G * m != k.shape[1]
        if decoding:
            y = _decode_attention(picked, k, v, start_pos, gqa, self.score_scale)
        else:
            y = F.scaled_dot_product_attention(
                picked,
                k,
                v,
                dropout_p=self.spec.dropout if self.training else 0.0,
                is_causal=self.spec.causal,
                enable_gqa=gqa,
                scale=self.score_scale,
            )
            add_aux(shared, "load_balance", self.load_balance(probs, chosen) / self.layer.n_layers)
        y = y.view(B, G, m, T, d) * weights.unsqueeze(-1).to(y.dtype)
        return y.new_zeros(B, G, self.group, T, d).scatter(2, index, y).view(B, H, T, d)


def check_routed(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    from qkvlab.config import n_kv_heads

    v, m = cfg.variant, cfg.model
    if v.sharing in ("q_eq_k", "q_eq_k_eq_v"):
        return (f"variant.family=routed routes query heads, but variant.sharing={v.sharing} makes Q the K projection "
                "(one query per KV head); use sharing mha or k_eq_v")
    group = m.n_heads // n_kv_heads(cfg)
    s, k = v.shared_heads or 0, v.top_k if v.top_k is not None else DEFAULT_TOP_K
    if group < 2:
        return (f"variant.family=routed picks query heads within each KV group, and model.n_heads={m.n_heads} over "
                f"{n_kv_heads(cfg)} KV heads leaves {group} per group; set variant.kv_group_size (or n_kv_heads) to give each KV head at least 2")
    if not 0 <= s <= group - 2:
        return (f"variant.shared_heads={s} is out of range; it must be in [0, {group - 2}] with {group} query heads "
                "per KV group (at least 2 left for the router)")
    if not 2 <= k <= group - s:
        return (f"variant.top_k={k} is out of range; it must be in [2, {group - s}] (the routed heads of each KV group); "
                "with 1 the renormalised weight is always 1 and the loss could not train the router")
    return None


FAMILIES["routed"] = RoutedHeadsAttention
FAMILY_CHECKS["routed"] = check_routed

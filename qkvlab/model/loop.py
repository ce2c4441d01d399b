"""Loop attention: the stack runs twice with the same weights, and the second pass blends
global attention over the first pass's K/V with sliding-window attention over its own.

Source: the "Loop" models of IQuest-Coder-V1 (IQuest Research, 2025/26), whose released
code (Hugging Face `modeling_iquestloopcoder.py`; ml-explore/mlx-lm
`mlx_lm/models/iquestloopcoder.py`) defines, with loop_num = 2 and loop_window_size = 64:

    pass 1:  the plain decoder stack; layer l keeps its K1, V1.
    pass 2:  the same layers again, fed pass 1's final hidden state (no norm in between).
             Layer l computes Q2, K2, V2 from its input with its own (shared) W_Q, W_K, W_V and
                 y = g * Attn(Q2, K1, V1) + (1 - g) * WindowAttn(Q2, K2, V2),
                 g = sigmoid(w_h . q2 + b_h)   per head h and token (q2 after RoPE),
             then W_O, the residual and the MLP as in pass 1.
    logits:  from pass 2's output, through the final norm and the head.

Global attention is causal over every position of K1/V1; the window holds the last `window`
positions of the second pass, the token itself included (mlx-lm's window mask and its
rotating cache of `window` entries). The only new weights are w (H x d_head) and b (H) per
layer. The released code initialises them to zero (g = 0.5) for loading a checkpoint; issue 12
asks for a gate initialised towards global, so here w = 0 and b = GATE_BIAS_INIT (g = 0.88).
qkvlab's own choices, where the source says nothing: for bidirectional tasks the window is the
band |i - j| < window; GQA/MQA and QK-norm apply to both passes as to one.

Cost: every block runs twice, so the matmul FLOPs of the stack double (the head's do not;
flops.py reads `passes`), and the second pass adds a global and a windowed score term. The
decoding cache holds K1, V1 and K2, V2 for every position, 4 * n_kv_heads * d_head values
per token per layer (twice `mha`'s). Decoding reads only the last `window` entries of K2/V2;
a ring buffer of `window` entries (as the source keeps) would bring the per-token figure down
to `mha`'s plus a constant per sequence, which a per-token closed form cannot state.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, Rope, SharedQKVAttention, _decode_attention
from qkvlab.model.probe import emit, wants_probe

DEFAULT_WINDOW = 64
# sigmoid(2) = 0.88: mostly global at the start, with gradient still reaching the local branch.
GATE_BIAS_INIT = 2.0


def window_mask(rows: int, first_row: int, first_col: int, end: int, window: int, causal: bool, device) -> torch.Tensor:
    """Query positions first_row.. (rows of them) against key positions first_col..end: True where
    the key lies in the query's window (behind it when causal, either side otherwise)."""
    i = torch.arange(first_row, first_row + rows, device=device)[:, None]
    j = torch.arange(first_col, end, device=device)[None, :]
    return ((i - j >= 0) & (i - j < window)) if causal else ((i - j).abs() < window)


class LoopAttention(SharedQKVAttention):
    passes = 2

    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__(spec, layer)
        self.window = spec.window or DEFAULT_WINDOW
        self.gate_weight = nn.Parameter(torch.empty(spec.n_heads, spec.d_head))
        self.gate_bias = nn.Parameter(torch.empty(spec.n_heads))

    def init_family(self) -> None:
        nn.init.zeros_(self.gate_weight)
        nn.init.constant_(self.gate_bias, GATE_BIAS_INIT)

    def local_keys(self, seq_len: int) -> int:
        return min(seq_len, self.window if self.spec.causal else 2 * self.window - 1)

    def score_flops_per_token(self, seq_len: int) -> int:
        """Pass 1's scores, pass 2's global ones over all seq_len keys and its windowed ones over at
        most `window` keys (2 window - 1 both ways), each counted in full as in PaLM; plus the gate's
        dot product. The doubled projections and MLPs are counted by flops.py through `passes`."""
        per_key = 12 * self.spec.n_heads * self.spec.d_head
        return per_key * (2 * seq_len + self.local_keys(seq_len)) + 6 * self.spec.n_heads * self.spec.d_head

    def cache_shapes(self, batch: int, max_len: int) -> list[tuple[int, ...]]:
        """K1, V1 (first pass) and K2, V2 (second pass), every position."""
        return [(batch, self.spec.n_kv_heads, max_len, self.spec.d_head)] * 4

    def cache_values_per_token(self) -> int:
        return 4 * self.spec.n_kv_heads * self.spec.d_head

    def gate(self, q: torch.Tensor) -> torch.Tensor:
        """g = sigmoid(w_h . q + b_h) per head and token, shaped (B, H, T, 1) to weight head outputs."""
        logits = torch.einsum("bhtd,hd->bht", q, self.gate_weight.to(q.dtype)) + self.gate_bias.to(q.dtype)[:, None]
        return torch.sigmoid(logits).unsqueeze(-1)

    def forward(
        self,
        x: torch.Tensor,
        rope: Optional[Rope] = None,
        cache=None,
        start_pos: int = 0,
        shared: Optional[dict] = None,
    ) -> torch.Tensor:
        shared = {} if shared is None else shared
        if cache is not None:
            return self.forward_cached(x, rope, cache, start_pos, shared)
        B, T, _ = x.shape
        p = self.project(x)
        q, k, v = self.qkv_from(p, rope)
        s = self.spec
        opts = dict(dropout_p=s.dropout if self.training else 0.0, enable_gqa=s.n_kv_heads != s.n_heads)
        key = ("loop", self.layer.index)
        if shared.get("pass", 0) == 0:
            if wants_probe(shared):  # the first pass: the layer's plain map, with no other pass's K/V in it
                emit(shared, self.layer.index, self.probe(x, p, q, k))
            shared[key] = (k, v)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=s.causal, **opts)
        else:
            k1, v1 = shared[key]
            glob = F.scaled_dot_product_attention(q, k1, v1, is_causal=s.causal, **opts)
            if self.window >= T:
                local = F.scaled_dot_product_attention(q, k, v, is_causal=s.causal, **opts)
            else:
                mask = window_mask(T, 0, 0, T, self.window, s.causal, x.device)
                local = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **opts)
            g = self.gate(q)
            y = g * glob + (1 - g) * local
        return self.out(y.transpose(1, 2).reshape(B, T, -1))

    def forward_cached(self, x, rope: Optional[Rope], cache, start_pos: int, shared: dict) -> torch.Tensor:
        """Pass 1 writes K1/V1 and attends over them; pass 2 writes K2/V2, attends globally over the
        cached K1/V1 and locally over the K2/V2 of the last `window` positions."""
        B, T, _ = x.shape
        end = start_pos + T
        q, k, v = self.qkv_from(self.project(x), None if rope is None else rope.at(start_pos))
        gqa = self.spec.n_kv_heads != self.spec.n_heads
        if shared.get("pass", 0) == 0:
            k1, v1 = cache.update(start_pos, [k, v])[:2]
            y = _decode_attention(q, k1, v1, start_pos, gqa)
        else:
            k1b, v1b, k2b, v2b = cache.buffers
            k2b[:, :, start_pos:end] = k
            v2b[:, :, start_pos:end] = v
            glob = _decode_attention(q, k1b[:, :, :end], v1b[:, :, :end], start_pos, gqa)
            lo = max(0, start_pos + 1 - self.window)
            mask = window_mask(T, start_pos, lo, end, self.window, True, x.device)
            local = F.scaled_dot_product_attention(q, k2b[:, :, lo:end], v2b[:, :, lo:end], attn_mask=mask, enable_gqa=gqa)
            g = self.gate(q)
            y = g * glob + (1 - g) * local
        return self.out(y.transpose(1, 2).reshape(B, T, -1))


def check_loop(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    v = cfg.variant
    if v.sharing != "mha":
        return (f"variant.family=loop needs sharing mha (GQA/MQA and qk_norm combine with it), not {v.sharing}: "
                "its second pass reads the first pass's K and V as two tensors; use variant=loop")
    if v.share_every > 1 or v.kv_shared_layers:
        return "variant.family=loop does not take share_every or kv_shared_layers: each layer's second pass reads its own first-pass K/V"
    return None


FAMILIES["loop"] = LoopAttention
FAMILY_CHECKS["loop"] = check_loop

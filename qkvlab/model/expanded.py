"""Expanded ("tuneable") attention: scores (q U)(k U)^T / sqrt(d_head) with a learned
d_head x r matrix U per layer; values, projections and the cache are `shared_qkv`'s.

U U^T is a d_head x d_head matrix of rank at most d_head whatever r is, so the scores
q (U U^T) k^T are a bilinear form that W_Q or W_K could absorb: expanding can change how
training proceeds, not what the layer can express. U starts orthogonal (U U^T = I for
r >= d_head), so an expanded model starts as the `mha` model with the same weights.
The cache keeps plain (rotated) K and applies U at score time.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from qkvlab.model.attention import FAMILIES, AttentionSpec, LayerInfo, SharedQKVAttention, to_pairs


class ExpandedAttention(SharedQKVAttention):
    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__(spec, layer)
        self.rank = spec.rank or 3 * spec.d_head
        self.expand = nn.Parameter(torch.empty(spec.d_head, self.rank))
        self.score_scale = 1 / math.sqrt(spec.d_head)

    def init_family(self) -> None:
        nn.init.orthogonal_(self.expand)

    def score_space(self, q: torch.Tensor, k: torch.Tensor, pairs: bool) -> tuple[torch.Tensor, torch.Tensor]:
        u = to_pairs(self.expand.T).T if pairs else self.expand
        u = u.to(q.dtype)
        return q @ u, k @ u


FAMILIES["expanded"] = ExpandedAttention

"""Figures of a layer's `ScoreProbe` (probe.py): score symmetry, Q/K/V cosine similarity, effective rank.

Symmetry of a score matrix S (T x T, pre-softmax and before any mask, so that both S_ij and S_ji
exist even in a causal model): the mean of |S_ij - S_ji| over the pairs i != j whose two scores both
exist (every pair, except in `routed`: see probe.py), and that mean divided by the mean |S_ij| over
the same entries, so that layers and models whose scores differ in scale compare (0: symmetric; at
most 2). With Q = K, RoPE keeps S symmetric, since R_iᵀR_j = R_(j-i) and so
(R_i k_i)·(R_j k_j) = (R_j k_j)·(R_i k_i): Q=K layers score 0 up to rounding. A layer's figure pools
every map of every sequence (sums of |S_ij - S_ji| and of |S_ij|, then the ratio); a map's own figure
pools its pairs only.

Effective rank (Roy & Vetterli 2007, *The effective rank: a measure of effective dimensionality*,
EUSIPCO): exp(H(p)) with p_i = σ_i / Σ_j σ_j the singular values normalised to sum 1 and H the
Shannon entropy (nats); 1 for a rank-1 matrix, n for an n x n identity, 0 here for a zero matrix.
Taken per head over the [tokens x width] matrix of one projection, the tokens being every position of
every sequence of the sample, and averaged over heads.

Cosine similarity: cos(q_t, k_t), cos(k_t, v_t), cos(q_t, v_t) per head and token on the projection
outputs before RoPE and norms (a KV head is compared with each query head of its group), averaged
over heads and tokens. K = V families give cos_kv = 1 by construction.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from qkvlab.model.probe import ScoreProbe, probe_forward


def symmetry_sums(scores: torch.Tensor, pairs: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per map (the leading dimensions): sum of |S_ij - S_ji|, sum of |S_ij| and the count, over the i != j that count."""
    s = scores.double()
    T = s.shape[-1]
    keep = ~torch.eye(T, dtype=torch.bool, device=s.device)
    if pairs is not None:
        keep = keep & pairs & pairs.transpose(-1, -2)
    keep = keep.expand_as(s)
    zero = s.new_zeros(())
    diff = torch.where(keep, (s - s.transpose(-1, -2)).abs(), zero).sum((-1, -2))
    size = torch.where(keep, s.abs(), zero).sum((-1, -2))
    return diff, size, keep.sum((-1, -2)).to(s.dtype)


def symmetry(scores: torch.Tensor, pairs: Optional[torch.Tensor] = None) -> tuple[float, float]:
    """(mean |S_ij - S_ji|, that over mean |S_ij|) pooled over every map and pair; NaN when no pair counts."""
    diff, size, n = (t.sum() for t in symmetry_sums(scores, pairs))
    return _ratio(diff, n), _ratio(diff, size)


def map_symmetry(scores: torch.Tensor, pairs: Optional[torch.Tensor] = None) -> list[float]:
    """Each map's own mean |S_ij - S_ji| (NaN where none of its pairs counts), for the maps of one sequence (maps, T, T)."""
    diff, _, n = symmetry_sums(scores, pairs)
    return [_ratio(d, c) for d, c in zip(diff.tolist(), n.tolist())]


def _ratio(a, b) -> float:
    a, b = float(a), float(b)
    return a / b if b > 0 else math.nan


def effective_rank(m: torch.Tensor) -> torch.Tensor:
    """Roy & Vetterli's effective rank of each matrix in `m` (..., rows, cols)."""
    sigma = torch.linalg.svdvals(m.double())
    total = sigma.sum(-1, keepdim=True)
    p = sigma / total.clamp_min(torch.finfo(sigma.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), torch.zeros_like(entropy))


def head_effective_rank(x: Optional[torch.Tensor]) -> Optional[float]:
    """Mean over heads of the effective rank of (B, heads, T, width) as one [B·T x width] matrix per head."""
    if x is None:
        return None
    B, H, T, d = x.shape
    return float(effective_rank(x.transpose(0, 1).reshape(H, B * T, d)).mean())


def mean_cosine(a: Optional[torch.Tensor], b: Optional[torch.Tensor]) -> Optional[float]:
    """Mean cos(a_t, b_t) over heads and tokens; the tensor with fewer heads (KV heads of GQA) is repeated over its groups."""
    if a is None or b is None or a.shape[-1] != b.shape[-1]:
        return None
    if a.shape[1] < b.shape[1]:
        a, b = b, a
    b = b.repeat_interleave(a.shape[1] // b.shape[1], dim=1)
    return float(F.cosine_similarity(a.double(), b.double(), dim=-1).mean())


def layer_figures(probe: ScoreProbe) -> dict[str, Optional[float]]:
    sym, sym_norm = symmetry(probe.scores, probe.pairs)
    return {
        "symmetry": sym,
        "symmetry_normalised": sym_norm,
        "cos_qk": mean_cosine(probe.q, probe.k),
        "cos_kv": mean_cosine(probe.k, probe.v),
        "cos_qv": mean_cosine(probe.q, probe.v),
        "eff_rank_q": head_effective_rank(probe.q),
        "eff_rank_k": head_effective_rank(probe.k),
        "eff_rank_v": head_effective_rank(probe.v),
    }


def mean_symmetry(model, idx: torch.Tensor) -> Optional[float]:
    """The normalised symmetry of every layer's scores on `idx`, averaged over layers (validation's val/symmetry);
    None for a family whose module records no probe. Each layer is reduced as it comes, so no two layers'
    score matrices are held at once."""
    per_layer: list[float] = []
    probe_forward(model, idx, lambda layer, probe: per_layer.append(symmetry(probe.scores, probe.pairs)[1]))
    return sum(per_layer) / len(per_layer) if per_layer else None

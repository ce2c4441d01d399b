"""What analyses read from inside attention: each layer's score matrix and its Q, K, V projections.

A forward captures them only when its per-forward `shared` dict holds a sink under PROBE (see
`probe_forward`); each family then hands the sink one `ScoreProbe` per layer from its `probe` method.
Normal forwards pay one dict lookup per layer and compute nothing more. The sink receives the records
layer by layer, so a caller that reduces them at once (validation's symmetry) never holds every
layer's T x T matrices together.

What each family records (its module says why):
- scores: the pre-softmax scores (B, maps, T, T) by the family's own formula, before any causal or
  window mask, so that both S_ij and S_ji exist (`shared_qkv`: scale·QKᵀ after RoPE and QK-norm,
  with the "+" positional term; `expanded`: (qU)(kU)ᵀ; `keyless`: RoPE(qR_h)·RoPE(v); `differential`:
  both maps of each head, 2H of them; `mla`: the decoupled [q; q_R]·[k; k_R]; `loop`: the first pass).
- q, k, v: the projection outputs (B, heads, T, width), before RoPE and norms; None where the layer
  has none (`keyless` has no K; a layer that reuses another's K/V projects neither). K=V families
  give the same tensor for both.
- pairs: None when every pair (i, j) of a map is scored; otherwise a bool mask (B, maps, T, T) of the
  pairs whose two scores both exist (`routed`: both tokens picked the head).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch

PROBE = "probe"

Sink = Callable[[int, "ScoreProbe"], None]


@dataclass
class ScoreProbe:
    scores: torch.Tensor
    q: Optional[torch.Tensor]
    k: Optional[torch.Tensor]
    v: Optional[torch.Tensor]
    pairs: Optional[torch.Tensor] = None
    # Score maps per head, in order (differential: 2, map 1 then map 2 of each head).
    maps_per_head: int = 1


def wants_probe(shared: Optional[dict]) -> bool:
    return shared is not None and PROBE in shared


def emit(shared: dict, layer: int, probe: ScoreProbe) -> None:
    shared[PROBE](layer, probe)


def fp32(t: torch.Tensor):
    """A context without autocast, for scores computed in fp32 from (possibly bf16) q and k: a bf16 product
    would make even Q=K scores look asymmetric by its rounding."""
    return torch.autocast(device_type=t.device.type, enabled=False)


def dot_scores(q: torch.Tensor, k: torch.Tensor, scale: Optional[float]) -> torch.Tensor:
    """scale·QKᵀ per query head in fp32 (KV heads repeated over their group, as GQA attends); scale None: 1/sqrt(width)."""
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    with fp32(q):
        return (q.float() @ k.float().transpose(-1, -2)) * scale


def probe_forward(model, idx: torch.Tensor, sink: Sink) -> torch.Tensor:
    """The model's logits for `idx`, with every layer's `ScoreProbe` handed to `sink(layer, probe)`."""
    return model(idx, shared={PROBE: sink})

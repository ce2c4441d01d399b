"""`keyless`: no key projection; scores (q R_h) . v_j / sqrt(d_head) with a learned d_head x d_head
matrix R_h per query head (init N(0, 0.02^2)), values V = x W_V, and only V cached (the study,
"Do Transformers Need Three Projections?").

Since (q R_h) . v_j = q . (R_h v_j), R_h could sit on either side; on the query side it is one
matmul per new token and the keys stay the cached V itself, so the scores are one SDPA call of the
queries q R_h over V, exactly the `k_eq_v` layer with S = V. That is how it is built: `k_eq_v`'s
fused [W_Q; W_V] Linear, and R_h applied to each head's query before anything else touches it.
With RoPE the rotation comes after R_h: q_i' = RoPE_i(q_i R_h), k_j = RoPE_j(v_j), and the cache
holds V unrotated (like `k_eq_v`'s S, rotated at score time). Rotating before R_h would make the
scores depend on absolute positions (R_h does not commute with rotations); without RoPE both orders
are the study's formula. GQA: R_h is per query head, and the heads of a group score against their
one shared V head each through their own R_h.

R_h folds into W_Q (x W_Q^h R_h is another d_model x d_head matrix), so `keyless` can express
exactly what `k_eq_v` can; it differs in parametrisation and in its start: R_h ~ N(0, 0.02^2)
shrinks queries by about 0.02 sqrt(d_head), so scores start near uniform. Parameters: `k_eq_v`'s
plus H d_head^2 per layer; FLOPs add 6 H d_head^2 per token and layer for q R_h.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, SharedQKVAttention
from qkvlab.model.probe import ScoreProbe


class KeylessAttention(SharedQKVAttention):
    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__(spec, layer)
        self.score_map = nn.Parameter(torch.empty(spec.n_heads, spec.d_head, spec.d_head))

    def init_family(self) -> None:
        # The study's init, whatever model.init_std says.
        nn.init.normal_(self.score_map, std=0.02)

    def score_flops_per_token(self, seq_len: int) -> int:
        return super().score_flops_per_token(seq_len) + 6 * self.spec.n_heads * self.spec.d_head**2

    def project(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """`k_eq_v`'s projections ("k" is V), with each query head already mapped by its R_h."""
        p = super().project(x)
        p["q"] = p["q"] @ self.score_map.to(p["q"].dtype)
        return p


    def probe(self, x, p, q, k) -> ScoreProbe:
        """Scores RoPE(q R_h)·RoPE(v): shared_qkv's. Q is q R_h (the query the scores see, before RoPE), V the
        one projection, and there is no K."""
        out = super().probe(x, p, q, k)
        out.k = None
        return out


def check_keyless(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    if cfg.variant.sharing != "k_eq_v":
        return (f"variant.family=keyless has W_Q and W_V only, and V is also what the queries score against "
                f"(the cache holds V alone, as k_eq_v's S); set variant.sharing=k_eq_v (it is {cfg.variant.sharing})")
    return None


FAMILIES["keyless"] = KeylessAttention
FAMILY_CHECKS["keyless"] = check_keyless

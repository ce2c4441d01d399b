"""`qvv3`: K = V with a factored query, q = W_q2 (W_q1 x), k = v = W_v x (the study, "Do Transformers
Need Three Projections?": its parameter-matched K=V control).

Three d_model x d_model matrices, like `mha`'s W_Q W_K W_V, so the comparison with `mha` is at
equal parameters and equal training FLOPs, while the layer can express only what `k_eq_v` can:
W_q2 W_q1 is one d x d matrix. Training keeps the two factors (the study's point is what the extra
matrix does to optimisation); inference multiplies them into W_Q = W_q2 W_q1 (bias W_q2 b_q1 + b_q2),
which makes the layer a plain `k_eq_v` layer with K = V = S = x W_v: same fused Linear, same
RoPE handling, one cached tensor per KV head.

The trigger is eval mode (`model.eval()`), not "decoding with a cache": eval, generate and bench
all put the model in eval mode, and so does validation during training, so every figure qkvlab
reports for inference (val loss, decode speed, cache bytes) is the deployed `k_eq_v` model's, and
an eval-mode forward and a cached decode run the same fused weights, so they agree as closely as
`k_eq_v`'s do (a cached decode in train mode would run the factors). The fused weight is computed once and
reused until a factor changes (an optimiser step, `load_state_dict`, a cast: the parameters'
storage and version counters say so). With gradients enabled in eval mode it is recomputed from
the factors each call, so gradients still reach W_q1 and W_q2.

W_q1 and W_v live in one fused Linear ([W_q1; W_v], what `k_eq_v` calls [W_Q; W_K]); W_q2 is
orthogonal at init, so W_q2 W_q1 is distributed exactly as W_q1 (a Gaussian matrix is invariant
under rotation): at init the query has `mha`'s scale, where a second N(0, 0.02^2) factor would
shrink it by 0.02 sqrt(d_model).
GQA gives W_v fewer heads and leaves the query factors alone (the layer deploys as `k_eq_v_gqa`);
the parameter count then equals `mha`'s only at one KV head per query head. Cross-layer sharing
works as for `k_eq_v`: a reusing layer holds W_q1 and W_q2 and no W_v.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.model.attention import FAMILIES, FAMILY_CHECKS, AttentionSpec, LayerInfo, SharedQKVAttention


def fold(first_w, first_b, q2_w, q2_b, d_q: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """[W_q1; W_v] and W_q2 -> [W_q2 W_q1; W_v], the weight (and bias) of a `k_eq_v` layer's fused Linear."""
    w = torch.cat((q2_w @ first_w[:d_q], first_w[d_q:]))
    if first_b is None:
        return w, None
    return w, torch.cat((q2_w @ first_b[:d_q] + q2_b, first_b[d_q:]))


class FactoredQKV(nn.Module):
    """Stands in for `k_eq_v`'s fused Linear: [W_q2 W_q1 x ; W_v x], factored in training, folded in eval."""

    def __init__(self, d_model: int, d_q: int, d_kv: int, bias: bool):
        super().__init__()
        self.d_q = d_q
        self.first = nn.Linear(d_model, d_q + d_kv, bias=bias)
        self.q2 = nn.Linear(d_q, d_q, bias=bias)
        self._folded: Optional[tuple] = None

    def _factors(self) -> list[torch.Tensor]:
        return [p for p in (self.first.weight, self.first.bias, self.q2.weight, self.q2.bias) if p is not None]

    def folded(self) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        args = (self.first.weight, self.first.bias, self.q2.weight, self.q2.bias, self.d_q)
        if torch.is_grad_enabled():
            return fold(*args)
        # Keep the factors' storage alive with the result: a freed pointer cannot come back to fool the key.
        key = [(p.detach(), p._version) for p in self._factors()]
        if self._folded is None or not all(
            held.data_ptr() == p.data_ptr() and held.dtype == p.dtype and held.device == p.device and version == p._version
            for (held, version), p in zip(self._folded[0], self._factors())
        ):
            self._folded = (key, fold(*args))
        return self._folded[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return F.linear(x, *self.folded())
        h = self.first(x)
        return torch.cat((self.q2(h[..., : self.d_q]), h[..., self.d_q :]), dim=-1)


class Qvv3Attention(SharedQKVAttention):
    def __init__(self, spec: AttentionSpec, layer: LayerInfo):
        super().__init__(spec, layer)
        d_q = spec.n_heads * spec.d_head
        self.qkv = FactoredQKV(spec.d_model, d_q, sum(self.split) - d_q, spec.bias)

    def init_family(self) -> None:
        nn.init.orthogonal_(self.qkv.q2.weight)


def k_eq_v_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A `qvv3` model's state dict as the `k_eq_v` model it is at inference (same shape, same names)."""
    out = {}
    for name, value in state.items():
        if ".qkv.q2." in name:
            continue
        if name.endswith(".qkv.first.weight"):
            prefix = name[: -len("first.weight")]
            bias = state.get(prefix + "first.bias")
            q2_b = state.get(prefix + "q2.bias")
            d_q = state[prefix + "q2.weight"].shape[0]
            w, b = fold(value, bias, state[prefix + "q2.weight"], q2_b, d_q)
            out[prefix + "weight"] = w
            if b is not None:
                out[prefix + "bias"] = b
        elif not name.endswith(".qkv.first.bias"):
            out[name] = value
    return out


def check_qvv3(cfg) -> Optional[str]:
    """What this family cannot do, as the one line to print; None when the config is fine."""
    if cfg.variant.sharing != "k_eq_v":
        return (f"variant.family=qvv3 is K = V = x W_v with a factored query, i.e. sharing k_eq_v; "
                f"set variant.sharing=k_eq_v (it is {cfg.variant.sharing})")
    return None


FAMILIES["qvv3"] = Qvv3Attention
FAMILY_CHECKS["qvv3"] = check_qvv3

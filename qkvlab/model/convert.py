"""Turning a trained model with separate K and V projections into its K=V form.

The study (Kayyam, Madan Gopal, Lewis, *Do Transformers Need Three Projections?*, ICML 2026) converts
a trained `mha` model into `k_eq_v` by mixing the two projections, W_KV = A·W_K + (1 − A)·W_V (biases
alike), copying every other weight, then evaluates it zero-shot or uptrains it; the idea of converting
a checkpoint and uptraining it follows Ainslie et al. 2023 (GQA), who mean-pool KV heads. A = 1 keeps
the keys (scores unchanged, values wrong), A = 0 keeps the values (scores wrong).

`fit` keeps W_K as the shared projection, so scores are unchanged, and replaces the values by a
least-squares map of the keys: per KV head, V ≈ S·M + c with S the unrotated key projection (what the
k_eq_v layer uses as its values) on a sample of activations. The map is folded into the output
projection: a query head h reading KV head g outputs Σ_j P_hj (S_j M_g + c) = (P_h S) M_g + c, because
each attention row sums to one, so out = Σ_h y_h W_O,hᵀ becomes Σ_h (P_h S)(W_O,h M_gᵀ)ᵀ + Σ_h W_O,h c.
Only V ≈ S·M is approximate; the fold is exact. It needs values that are S itself: Gemma 4's value
norm (variant.v_norm) rescales each vector, so a fit is refused there. A layer reusing another
layer's K/V (cross-layer sharing) reads the producer's values, so it folds the producer's map.
The intercept c is fitted only where the output projection has a bias to take it.
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

from qkvlab.errors import ConfigError
from qkvlab.model.attention import SharedQKVAttention
from qkvlab.model.transformer import Transformer

def _rows(attn: SharedQKVAttention) -> dict[str, slice]:
    """Rows of each projection (q, k, v) in the layer's fused qkv Linear."""
    out, start = {}, 0
    for (name, _), size in zip(attn.projections, attn.split):
        out[name] = slice(start, start + size)
        start += size
    return out


def _pairs(source: Transformer, target: Transformer) -> list[tuple[int, SharedQKVAttention, SharedQKVAttention]]:
    pairs = []
    for i, (a, b) in enumerate(zip(source.blocks, target.blocks)):
        if not (isinstance(a.attn, SharedQKVAttention) and isinstance(b.attn, SharedQKVAttention)):
            raise ConfigError("K=V conversion needs variant.family=shared_qkv on both runs")
        pairs.append((i, a.attn, b.attn))
    return pairs


def converted_state(
    source: Transformer,
    target: Transformer,
    alpha: float | str,
    maps: Optional[list[Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]]] = None,
) -> dict[str, torch.Tensor]:
    """A state dict for `target` (k_eq_v) from `source` (mha sharing, same heads and layers).

    alpha: a number A (mix), `random` (keep target's own freshly initialised W_KV rows), or `fit`
    (W_KV = W_K, `maps[layer]` = (M (kv, d, d), c (kv, d) or None) folded into W_O)."""
    state = {k: v.clone() for k, v in source.state_dict().items()}
    own = target.state_dict()
    d = source.spec.d_head
    for i, a, b in _pairs(source, target):
        prefix = f"blocks.{i}.attn."
        src, dst = _rows(a), _rows(b)
        for part in ("weight", "bias"):
            key = prefix + "qkv." + part
            if key not in state:
                continue
            w = state[key]
            if "v" not in src:  # a layer reusing another's K/V: only its query projection
                continue
            k, v = w[src["k"]], w[src["v"]]
            if alpha == "random":
                kv = own[key][dst["k"]].to(w)
            elif alpha == "fit":
                kv = k
            else:
                kv = alpha * k + (1.0 - alpha) * v
            state[key] = torch.cat([w[src["q"]], kv]) if "q" in dst else kv
        if alpha == "fit":
            M, c = maps[a.source]
            group = a.spec.n_heads // a.spec.n_kv_heads
            dtype = state[prefix + "out.weight"].dtype
            W = state[prefix + "out.weight"].double()
            folded = W.clone()
            shift = torch.zeros(W.shape[0], dtype=torch.float64)
            for h in range(a.spec.n_heads):
                cols = slice(h * d, (h + 1) * d)
                folded[:, cols] = W[:, cols] @ M[h // group].T
                if c is not None:
                    shift += W[:, cols] @ c[h // group]
            state[prefix + "out.weight"] = folded.to(dtype)
            if c is not None:
                bias = state[prefix + "out.bias"]
                state[prefix + "out.bias"] = (bias.double() + shift).to(bias.dtype)
    return state


@torch.no_grad()
def fit_value_maps(
    source: Transformer, inputs: Iterable[torch.Tensor], with_intercept: bool
) -> list[Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]]:
    """Per layer that computes K/V: least-squares (M, c) with V ≈ S·M + c per KV head, in float64, over
    the attention inputs the source model sees on `inputs` (token batches); None for reusing layers."""
    attns = [block.attn for block in source.blocks]
    seen: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in attns]

    def hook(index):
        def capture(module, args):
            p = module.project(args[0])
            if "v" in p:
                seen[index].append((p["k"].double(), p["v"].double()))

        return capture

    handles = [a.register_forward_pre_hook(hook(i)) for i, a in enumerate(attns)]
    try:
        was_training = source.training
        source.eval()
        for x in inputs:
            source(x)
        source.train(was_training)
    finally:
        for handle in handles:
            handle.remove()
    maps: list[Optional[tuple[torch.Tensor, Optional[torch.Tensor]]]] = []
    for pairs in seen:
        if not pairs:
            maps.append(None)
            continue
        # (B, kv, T, d) -> (kv, B·T, d)
        S = torch.cat([k.transpose(0, 1).flatten(1, 2) for k, _ in pairs], dim=1)
        V = torch.cat([v.transpose(0, 1).flatten(1, 2) for _, v in pairs], dim=1)
        X = torch.cat([S, torch.ones_like(S[..., :1])], dim=-1) if with_intercept else S
        solution = torch.linalg.lstsq(X, V, driver="gelsd").solution
        d = S.shape[-1]
        maps.append((solution[:, :d], solution[:, d] if with_intercept else None))
    return maps

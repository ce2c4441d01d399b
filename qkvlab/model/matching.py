"""Parameter-matched controls.

A shared-projection variant has fewer parameters than `mha` of the same shape,
so a worse loss could mean "sharing hurts" or just "smaller model". With
`model.match_params=mlp` the variant gets the saved parameters back as a wider
MLP (d_ff), with `layers` as more blocks; either way its total comes as close
as an integer d_ff or layer count allows to `mha` of the configured shape
(three projections, one KV head per query head). `mha` itself is unchanged.

Counts come from building the models on the meta device, so they are exactly
what `build_model` would allocate, biases, norms and tied weights included.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from qkvlab.config import Config, ModelConfig


def _count(cfg: Config, m: ModelConfig, vocab_size: int, mha: bool = False) -> int:
    from qkvlab.model.transformer import Transformer, attention_spec

    spec, family = attention_spec(cfg), cfg.variant.family
    if mha:
        # Plain shared-QKV attention: a family that adds weights (MLA, expanded) is matched to mha, not to itself.
        spec, family = spec.mha_twin(), "shared_qkv"
    with torch.device("meta"):
        model = Transformer(m, spec, family, vocab_size)
    return sum(p.numel() for p in model.parameters())


def _closest(cfg: Config, vocab_size: int, field: str, target: int) -> int:
    """The value of `field` whose parameter count is nearest `target` (counts are linear in it)."""
    m = cfg.model
    base = getattr(m, field)
    at_base = _count(cfg, m, vocab_size)
    slope = _count(cfg, dataclasses.replace(m, **{field: base + 1}), vocab_size) - at_base
    if slope <= 0:
        return base
    guess = base + round((target - at_base) / slope)
    candidates = [v for v in (guess - 1, guess, guess + 1) if v >= 1]
    return min(candidates, key=lambda v: (abs(at_base + (v - base) * slope - target), v))


def matched_model(cfg: Config, vocab_size: int) -> ModelConfig:
    """The model shape to build: the configured one, or its parameter-matched control."""
    mode = cfg.model.match_params
    if mode == "none":
        return cfg.model
    target = _count(cfg, cfg.model, vocab_size, mha=True)
    field = {"mlp": "d_ff", "layers": "n_layers"}[mode]
    return dataclasses.replace(cfg.model, **{field: _closest(cfg, vocab_size, field, target)})


def match_report(cfg: Config, model_cfg: ModelConfig, vocab_size: int) -> dict[str, Any]:
    """What matching did, for summary.json: the target count and the shape that met it."""
    if cfg.model.match_params == "none":
        return {}
    return {
        "match/mode": cfg.model.match_params,
        "match/params_target": _count(cfg, cfg.model, vocab_size, mha=True),
        "match/d_ff": model_cfg.d_ff,
        "match/n_layers": model_cfg.n_layers,
    }

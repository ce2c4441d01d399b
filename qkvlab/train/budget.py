"""The token budget of a run, resolved once, before the first step.

Scaling runs ask for a budget in tokens per parameter (20 is the compute-optimal
rule of thumb), so the step count depends on the model's size and is only known
once the model exists. The parameters counted are the ones that cost compute
(`flops.matmul_params`: every Linear, the output head included, embedding
lookups excluded), so the budget and the FLOPs formula agree: C ~ 6 * N * D.
"""

from __future__ import annotations

import math
from dataclasses import replace

from qkvlab.config import Config


def tokens_per_step(cfg: Config) -> int:
    return cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum


def resolve_steps(cfg: Config, compute_params: int) -> Config:
    """`cfg` with train.steps set from train.tokens_per_param (unchanged when that is null)."""
    tpp = cfg.train.tokens_per_param
    if tpp is None:
        return cfg
    steps = max(1, math.ceil(tpp * compute_params / tokens_per_step(cfg)))
    return replace(cfg, train=replace(cfg.train, steps=steps))

"""AdamW with decay/no-decay groups and the warmup-cosine schedule."""

from __future__ import annotations

import math

import torch
from torch import nn

from qkvlab.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Matrices decay; biases and norm gains do not (decaying them only hurts)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def make_optimizer(model: nn.Module, o: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        param_groups(model, o.weight_decay),
        lr=o.lr,
        betas=(o.beta1, o.beta2),
        eps=o.eps,
        fused=device.type == "cuda",
    )


def lr_at(step: int, total: int, o: OptimConfig) -> float:
    """Linear warmup to o.lr, then cosine decay to o.lr * o.min_lr_ratio at `total`."""
    if step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, total - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    floor = o.lr * o.min_lr_ratio
    return floor + 0.5 * (o.lr - floor) * (1 + math.cos(math.pi * progress))

"""Model FLOPs, one documented formula shared by bench (MFU) and scaling (compute).

Per token, a training step (forward + backward = 3x forward) costs

    6 * N_matmul  +  12 * n_layers * n_heads * d_head * T

N_matmul counts the weights of every Linear, the output head included (a tied
head is still a matmul) and embeddings excluded (a lookup is no FLOP). The
second term is QK^T and AV over a context of T tokens, counted in full as in
PaLM's MFU (causal masking is not discounted), so figures compare across codes.
Projection sharing shrinks N_matmul; the attention term is the same for every
sharing pattern because scores and mixing are still computed for all heads.
"""

from __future__ import annotations

from torch import nn


def matmul_params(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def attention_flops_per_token(n_layers: int, n_heads: int, d_head: int, seq_len: int) -> int:
    return 12 * n_layers * n_heads * d_head * seq_len


def train_flops_per_token(model: nn.Module, seq_len: int) -> int:
    spec = model.spec
    return 6 * matmul_params(model) + attention_flops_per_token(
        len(model.blocks), spec.n_heads, spec.d_head, seq_len
    )


def forward_flops_per_token(model: nn.Module, seq_len: int) -> int:
    return train_flops_per_token(model, seq_len) // 3

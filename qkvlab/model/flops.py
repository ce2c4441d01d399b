"""Model FLOPs, one documented formula shared by bench (MFU) and scaling (compute).

Per token, a training step (forward + backward = 3x forward) costs

    6 * N_matmul  +  sum over layers of the family's score FLOPs (12 * n_heads * d_head * T)

N_matmul counts the weights of every Linear, the output head included (a tied
head is still a matmul) and embeddings excluded (a lookup is no FLOP; so is the one-hot input
Linear of model.embedding=onehot_linear, marked `lookup`). The
second term is QK^T and AV over a context of T tokens, counted in full as in
PaLM's MFU (causal masking is not discounted), so figures compare across codes.
Projection sharing shrinks N_matmul; the attention term is the same for every
sharing pattern because scores and mixing are still computed for all heads; a family
whose scores cost more (differential attention runs AV twice: 18 instead of 12) says so
in its `score_flops_per_token`. A model that runs its stack twice (`passes = 2`, loop
attention) counts every block's matmuls twice: N_matmul becomes N_head + passes * N_blocks.
"""

from __future__ import annotations

from torch import nn


def matmul_params(model: nn.Module) -> int:
    seen: set[int] = set()
    total = 0
    for module in model.modules():
        if isinstance(module, nn.Linear) and not getattr(module, "lookup", False) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
    return total


def train_flops_per_token(model: nn.Module, seq_len: int) -> int:
    """Every layer's attention counts its own score FLOPs (`score_flops_per_token`, all passes): a
    family that computes two maps (differential) or two passes says so there. A model that runs its
    stack `passes` times (loop attention) pays every block's matmuls that many times; the output
    head runs once."""
    extra = (getattr(model, "passes", 1) - 1) * matmul_params(model.blocks)
    return 6 * (matmul_params(model) + extra) + sum(block.attn.score_flops_per_token(seq_len) for block in model.blocks)


def forward_flops_per_token(model: nn.Module, seq_len: int) -> int:
    return train_flops_per_token(model, seq_len) // 3

"""The decoding cache: preallocated per-layer buffers, one per cached tensor.

Each layer's attention says what it holds (`cache_shapes`): for the shared-QKV
family, buffers of shape (B, n_kv_heads, max_len, d_head): rotated K and V for
`mha`/`q_eq_k`, the single unrotated shared projection S for
`k_eq_v`/`q_eq_k_eq_v` (with RoPE in fp32/fp64, its rotary pairs side by side:
see attention.py), and nothing for a layer that reuses an earlier layer's K/V.
GQA/MQA shrink n_kv_heads, so the buffers hold only the KV heads. `nbytes` sums the buffers actually allocated,
which is what bench reports next to the closed-form figure.
"""

from __future__ import annotations

import torch


class LayerKVCache:
    def __init__(self, shapes: list[tuple[int, ...]], max_len: int, device, dtype: torch.dtype):
        self.buffers = [torch.zeros(shape, device=device, dtype=dtype) for shape in shapes]
        self.max_len, self.dtype = max_len, dtype

    def update(self, start: int, new: list[torch.Tensor]) -> list[torch.Tensor]:
        """Write `new` (B, kv, T, d) at positions start..start+T; views of everything cached so far."""
        if not new:
            return []
        end = start + new[0].shape[2]
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; asked to write up to {end}")
        for buf, t in zip(self.buffers, new):
            buf[:, :, start:end] = t
        return [buf[:, :, :end] for buf in self.buffers]

    @property
    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers)


class KVCache:
    """One `LayerKVCache` per block of a model; indexed by layer."""

    def __init__(self, model, batch: int, max_len: int, dtype: torch.dtype | None = None):
        if not model.spec.causal:
            raise ValueError("a KV cache needs a causal model; bidirectional tasks have no decoding")
        if max_len > model.cfg.context:
            raise ValueError(f"KV cache length {max_len} is above the model's context {model.cfg.context}")
        param = next(model.parameters())
        self.batch, self.max_len, self.dtype = batch, max_len, dtype or param.dtype
        self.layers = [
            LayerKVCache(block.attn.cache_shapes(batch, max_len), max_len, param.device, self.dtype)
            for block in model.blocks
        ]

    def __getitem__(self, i: int) -> LayerKVCache:
        return self.layers[i]

    @property
    def nbytes(self) -> int:
        return sum(layer.nbytes for layer in self.layers)

    def bytes_per_token(self) -> float:
        """Allocated bytes per cached position of one sequence, all layers."""
        return self.nbytes / (self.batch * self.max_len)

"""A pre-norm transformer whose attention is picked by the variant config.

The same model runs causal (language modelling, recall) or bidirectional (the
digit tasks); the data config decides through `causal`.

The study's digit model (model=study_digits) differs from the GPT-style default in
its input and its initialisation: tokens enter as one-hot vectors through a Linear
layer (`model.embedding=onehot_linear`) and every module keeps PyTorch's default
init (`model.init=pytorch`).
"""

from __future__ import annotations

import math
from collections.abc import MutableMapping
from typing import TYPE_CHECKING, Optional

import torch
import torch.nn.functional as F
from torch import nn

from qkvlab.config import Config, ModelConfig, n_kv_heads
from qkvlab.model.attention import AUX, FAMILIES, AttentionSpec, LayerInfo, Rope
from qkvlab.model.rms_norm import RMSNorm
from qkvlab.model.swiglu import swiglu

if TYPE_CHECKING:
    from qkvlab.model.kv_cache import KVCache


def make_norm(m: ModelConfig) -> nn.Module:
    if m.norm == "rmsnorm":
        return RMSNorm(m.d_model, eps=m.norm_eps)
    return nn.LayerNorm(m.d_model, eps=m.norm_eps, bias=m.bias)


class OneHotLinear(nn.Linear):
    """one-hot(vocab) @ Wᵀ + b: the study's digit-model input, literally (no embedding table).
    Mathematically a table whose row t is column t of W plus b; kept as the matmul so that it is the
    study's layer, bf16 autocast included. The one-hot costs batch·length·vocab values: meant for
    small vocabularies. FLOP counts treat it as the lookup it amounts to (`lookup`)."""

    lookup = True

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return super().forward(F.one_hot(idx, self.in_features).to(self.weight.dtype))


def make_embedding(m: ModelConfig, vocab_size: int) -> nn.Module:
    if m.embedding == "onehot_linear":
        return OneHotLinear(vocab_size, m.d_model, bias=m.bias)
    return nn.Embedding(vocab_size, m.d_model)


class MLP(nn.Module):
    """swiglu: silu(gate)·up; gelu: the exact (erf) GELU; gelu_tanh: GPT-2's tanh approximation."""

    def __init__(self, m: ModelConfig):
        super().__init__()
        self.swiglu = m.mlp == "swiglu"
        self.approximate = "tanh" if m.mlp == "gelu_tanh" else "none"
        self.up = nn.Linear(m.d_model, (2 if self.swiglu else 1) * m.d_ff, bias=m.bias)
        self.down = nn.Linear(m.d_ff, m.d_model, bias=m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        if self.swiglu:
            h = swiglu(h)
        else:
            h = F.gelu(h, approximate=self.approximate)
        return self.down(h)


class Block(nn.Module):
    def __init__(self, m: ModelConfig, spec: AttentionSpec, family: str, layer: LayerInfo):
        super().__init__()
        self.norm1 = make_norm(m)
        self.attn = FAMILIES[family](spec, layer)
        self.norm2 = make_norm(m)
        self.mlp = MLP(m)
        self.drop = nn.Dropout(m.dropout)
        # Without dropout (the default) the Dropout calls are skipped: two module calls a layer were 3-4%
        # of a batch-1 decoded token's time on a CPU, for an identity.
        self.dropping = m.dropout > 0

    def forward(self, x: torch.Tensor, rope, cache=None, start_pos: int = 0, shared: Optional[dict] = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), rope, cache, start_pos, shared)
        x = x + (self.drop(y) if self.dropping else y)
        y = self.mlp(self.norm2(x))
        return x + (self.drop(y) if self.dropping else y)


class Transformer(nn.Module):
    def __init__(self, m: ModelConfig, spec: AttentionSpec, family: str, vocab_size: int):
        super().__init__()
        self.cfg, self.spec, self.vocab_size = m, spec, vocab_size
        self.tok_emb = make_embedding(m, vocab_size)
        self.pos_emb = nn.Embedding(m.context, m.d_model) if m.positions == "learned" else None
        self.drop = nn.Dropout(m.dropout)
        self.blocks = nn.ModuleList(Block(m, spec, family, LayerInfo(i, m.n_layers)) for i in range(m.n_layers))
        # Passes over the whole stack, same weights each time: a family asks for more with a class
        # attribute (loop attention: 2); each pass takes the previous one's final hidden state.
        self.passes = getattr(self.blocks[0].attn, "passes", 1)
        self.norm = make_norm(m)
        # A tied head is the embedding table read backwards and has no bias; an untied one follows model.bias.
        self.head = nn.Linear(m.d_model, vocab_size, bias=m.bias and not m.tie_embeddings)
        if m.tie_embeddings:
            self.head.weight = self.tok_emb.weight
        if m.positions == "rope":
            d = self.blocks[0].attn.rope_dim
            inv = 1.0 / (m.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
            angles = torch.outer(torch.arange(m.context, dtype=torch.float32), inv)
            angles = torch.cat((angles, angles), dim=-1)
            self.register_buffer("rope_cos", angles.cos(), persistent=False)
            self.register_buffer("rope_sin", angles.sin(), persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """model.init=gpt2: N(0, std), residual projections scaled by 1/sqrt(2·layers), zero biases, unit
        gains. model.init=pytorch: every module's own default (Linear: U(±1/sqrt(fan_in)) for weight and
        bias; Embedding: N(0, 1); norms: ones and zeros; a tied table takes the head's, which comes last), as the
        study's digit model. Either way each
        family's `init_family` runs last: its parameters have no default worth keeping."""
        if self.cfg.init == "pytorch":
            for module in self.modules():
                if module is not self and hasattr(module, "reset_parameters"):
                    module.reset_parameters()
        else:
            self._gpt2_init()
        for block in self.blocks:
            block.attn.init_family()

    def _gpt2_init(self) -> None:
        std = self.cfg.init_std
        for name, p in self.named_parameters():
            if p.dim() < 2:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:
                    nn.init.ones_(p)
                continue
            scale = 1 / math.sqrt(2 * self.cfg.n_layers) if name.endswith(("out.weight", "down.weight")) else 1.0
            nn.init.normal_(p, mean=0.0, std=std * scale)

    def rope(self, start: int, length: int, decoding: bool = False) -> Optional[Rope]:
        """Rotary tables for positions start..start+length; decoding adds the complex form
        (fp32/fp64 tables only: complex bf16 does not exist)."""
        if self.cfg.positions != "rope":
            return None
        end = start + length
        cis = self._rope_cis()[start:end] if decoding and self.rope_cos.dtype in (torch.float32, torch.float64) else None
        return Rope(self.rope_cos[start:end], self.rope_sin[start:end], cis)

    def _rope_cis(self) -> torch.Tensor:
        """cos + i·sin of the first half, built once per device and dtype of the tables. Not a
        buffer: casting a model to bf16 would silently drop a complex buffer's imaginary part."""
        key = (self.rope_cos.device, self.rope_cos.dtype, self.rope_cos.data_ptr())
        if getattr(self, "_cis", (None, None))[0] != key:
            h = self.rope_cos.shape[-1] // 2
            self._cis = (key, torch.complex(self.rope_cos[:, :h], self.rope_sin[:, :h]))
        return self._cis[1]

    def forward(
        self, idx: torch.Tensor, cache: Optional["KVCache"] = None, start_pos: int = 0, shared: Optional[dict] = None
    ) -> torch.Tensor:
        """Logits for `idx`; with a `cache`, `idx` holds the tokens at start_pos.. and the cache the ones before.
        `shared` (default: a fresh dict) is what layers hand each other in this forward."""
        T = idx.shape[1]
        if cache is not None and T == 1 and shared is None and not torch.is_grad_enabled() and idx.shape[0] == cache.batch and idx.device.type == "cpu":
            from qkvlab.model.decode_step import step_for

            step = step_for(self, cache)
            if step is not None:  # the whole token in one C call, bit for bit the modules' (decode_step.py)
                return step(idx, start_pos)
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start_pos, start_pos + T, device=idx.device))
        if self.cfg.dropout > 0:
            x = self.drop(x)
        rope = self.rope(0, start_pos + T, decoding=cache is not None)
        shared = Shared({} if shared is None else shared)  # cross-layer K/V by layer index, auxiliary losses under AUX, "pass"
        for n in range(self.passes):
            shared["pass"] = n
            for i, block in enumerate(self.blocks):
                x = block(x, rope, None if cache is None else cache[i], start_pos, shared)
        return self.head(self.norm(x))

    def forward_with_aux(self, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and the auxiliary losses the layers added (each summed over layers): what training and
        evaluation call, so `forward` stays logits only for decoding, generate and bench."""
        shared: dict = {}
        logits = self(idx, shared=Shared(shared))
        return logits, dict(shared.get(AUX, {}))


class Shared(MutableMapping):
    """What layers hand each other in one forward, as a mapping that is not a dict. Wrappers that run
    a block (FSDP2's hooks, which re-wrap tensors needing gradients; its input casts; DDP's device moves)
    rebuild every dict, list and tuple in the block's arguments, so a layer writing into a dict would
    write into a copy the next layer never sees. A mapping of another kind they pass through untouched;
    it writes through to the dict it wraps, the caller's."""

    def __init__(self, data: dict):
        self.data = data.data if isinstance(data, Shared) else data

    def __getitem__(self, key):
        return self.data[key]

    def __setitem__(self, key, value) -> None:
        self.data[key] = value

    def __delitem__(self, key) -> None:
        del self.data[key]

    def __iter__(self):
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def attention_spec(cfg: Config) -> AttentionSpec:
    m = cfg.model
    return AttentionSpec(
        d_model=m.d_model,
        n_heads=m.n_heads,
        n_kv_heads=n_kv_heads(cfg),
        sharing=cfg.variant.sharing,
        bias=m.bias,
        dropout=m.dropout,
        causal=cfg.data.causal,
        share_every=cfg.variant.share_every,
        kv_shared_layers=cfg.variant.kv_shared_layers,
        rank=cfg.variant.rank,
        window=cfg.variant.window,
        qk_norm=cfg.variant.qk_norm,
        top_k=cfg.variant.top_k,
        shared_heads=cfg.variant.shared_heads,
        v_norm=cfg.variant.v_norm,
        score_scale=cfg.variant.score_scale,
        kv_rank=cfg.variant.kv_rank,
        rope_dim=cfg.variant.rope_dim,
        plus=cfg.variant.plus,
        plus_content_scale=cfg.variant.plus_content_scale,
        norm_eps=m.norm_eps,
    )


def model_vocab(m: ModelConfig, data_vocab: int) -> int:
    """Embedding rows for a tokenizer of `data_vocab` ids: model.vocab_size when set, else the
    tokenizer's padded to model.vocab_multiple (a multiple of 64 keeps GPU matmuls on fast tiles)."""
    if m.vocab_size is None:
        return -(-data_vocab // m.vocab_multiple) * m.vocab_multiple
    if m.vocab_size < data_vocab:
        from qkvlab.errors import ConfigError

        raise ConfigError(
            f"model.vocab_size={m.vocab_size} is below the data's vocabulary ({data_vocab}); "
            "raise model.vocab_size or set it to null to take the data's"
        )
    return m.vocab_size


def build_model(cfg: Config, vocab_size: int) -> Transformer:
    from qkvlab.model.matching import matched_model

    return Transformer(matched_model(cfg, vocab_size), attention_spec(cfg), cfg.variant.family, vocab_size)


def count_params(model: nn.Module) -> dict[str, int]:
    """Distinct parameters (tied weights once), in total and inside attention."""
    total = sum(p.numel() for p in model.parameters())
    attention = sum(
        p.numel() for name, p in model.named_parameters() if ".attn." in f".{name}"
    )
    return {"params/total": total, "params/attention": attention}


def kv_cache_bytes_per_token(model: Transformer, dtype: torch.dtype) -> int:
    """Closed-form KV-cache bytes per token, all layers: what each layer says it caches."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum(block.attn.cache_values_per_token() for block in model.blocks) * itemsize


def mha_kv_bytes_per_token(spec: AttentionSpec, n_layers: int, dtype: torch.dtype) -> int:
    """What `mha` of the same shape caches per token: the reference every saving is quoted against."""
    return 2 * n_layers * spec.n_heads * spec.d_head * torch.empty((), dtype=dtype).element_size()

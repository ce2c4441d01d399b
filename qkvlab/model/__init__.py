from qkvlab.model.attention import FAMILIES, AttentionSpec, SharedQKVAttention, check_model
from qkvlab.model.transformer import (
    Transformer,
    attention_spec,
    build_model,
    count_params,
    kv_cache_bytes_per_token,
    model_vocab,
)

__all__ = [
    "FAMILIES",
    "AttentionSpec",
    "SharedQKVAttention",
    "Transformer",
    "attention_spec",
    "check_model",
    "build_model",
    "count_params",
    "kv_cache_bytes_per_token",
    "model_vocab",
]

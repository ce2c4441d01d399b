from qkvlab.model.attention import FAMILIES, AttentionSpec, SharedQKVAttention
from qkvlab.model.transformer import (
    Transformer,
    attention_spec,
    build_model,
    count_params,
    kv_cache_bytes_per_token,
)

__all__ = [
    "FAMILIES",
    "AttentionSpec",
    "SharedQKVAttention",
    "Transformer",
    "attention_spec",
    "build_model",
    "count_params",
    "kv_cache_bytes_per_token",
]

import qkvlab.model.differential  # noqa: F401 - registers family=differential
import qkvlab.model.expanded  # noqa: F401 - registers family=expanded
import qkvlab.model.keyless  # noqa: F401 - registers family=keyless
import qkvlab.model.latent  # noqa: F401 - registers family=mla
import qkvlab.model.loop  # noqa: F401 - registers family=loop
import qkvlab.model.qvv3  # noqa: F401 - registers family=qvv3
import qkvlab.model.routed  # noqa: F401 - registers family=routed
from qkvlab.model.attention import FAMILIES, AttentionSpec, LayerInfo, SharedQKVAttention, check_model
from qkvlab.model.transformer import (
    Transformer,
    attention_spec,
    build_model,
    count_params,
    kv_cache_bytes_per_token,
    mha_kv_bytes_per_token,
    model_vocab,
)

__all__ = [
    "FAMILIES",
    "AttentionSpec",
    "LayerInfo",
    "SharedQKVAttention",
    "Transformer",
    "attention_spec",
    "check_model",
    "build_model",
    "count_params",
    "kv_cache_bytes_per_token",
    "mha_kv_bytes_per_token",
    "model_vocab",
]

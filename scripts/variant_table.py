"""Print every variant's cost at one model shape, from the code itself: attention parameters,
KV-cache bytes per token (the closed form each layer states, which tests pin to the measured
cache) and the ratio to mha. The README's variant table quotes it:

    python scripts/variant_table.py model=small
"""

from __future__ import annotations

import sys

import torch

from qkvlab.checks import compose_config
from qkvlab.config import CONF_DIR
from qkvlab.model import build_model, count_params, kv_cache_bytes_per_token
from qkvlab.model.transformer import mha_kv_bytes_per_token


def main(overrides: list[str]) -> None:
    names = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))
    print("| variant | attention params | KV B/token fp32 | bf16 | vs mha |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        cfg = compose_config([f"variant={name}", "data=mqar", *overrides])
        model = build_model(cfg, vocab_size=256)
        fp32 = kv_cache_bytes_per_token(model, torch.float32)
        bf16 = kv_cache_bytes_per_token(model, torch.bfloat16)
        ratio = fp32 / mha_kv_bytes_per_token(model.spec, len(model.blocks), torch.float32)
        print(f"| `{name}` | {count_params(model)['params/attention']:,} | {fp32:,} | {bf16:,} | {ratio:.3g} |")


if __name__ == "__main__":
    main(sys.argv[1:])

"""Cross-layer KV sharing (CLA, the Gemma 3n/4 rule): a reusing layer owns no K/V weights, caches
nothing, and attends over the very tensors its producer made."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from qkvlab.errors import ConfigError
from qkvlab.model import build_model
from qkvlab.model.kv_cache import KVCache

from tests.helpers import make_config


def causal(variant: str, *overrides: str):
    return make_config("data=mqar", f"variant={variant}", "model.n_layers=4", *overrides)


@pytest.mark.parametrize("variant, producers", [("cla", [0, 0, 2, 2]), ("k_eq_v_cla", [0, 0, 2, 2]), ("kv_shared", [0, 1, 2, 2])])
def test_reusing_layers_hold_no_kv_weights_and_read_the_producers_tensors(variant, producers, monkeypatch):
    model = build_model(causal(variant), vocab_size=50).eval()
    d, dh, H = model.cfg.d_model, model.spec.d_head, model.spec.n_heads
    for i, block in enumerate(model.blocks):
        rows = block.attn.qkv.weight.shape[0]
        assert rows == (H * dh if producers[i] != i else sum(block.attn.split)) and block.attn.source == producers[i]
        if producers[i] != i:
            assert rows == d  # W_Q only

    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, **kw):
        seen.append((k.untyped_storage().data_ptr(), v.untyped_storage().data_ptr()))
        return real(q, k, v, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with torch.no_grad():
        model(torch.randint(0, 50, (2, 12)))
    assert [seen[p] for p in producers] == seen  # same storage, not a copy

    cache = KVCache(model, batch=1, max_len=8)
    assert [len(cache[i].buffers) > 0 for i in range(4)] == [p == i for i, p in enumerate(producers)]


def test_no_sharing_is_plain_mha():
    torch.manual_seed(0)
    a = build_model(causal("mha"), vocab_size=50).eval()
    torch.manual_seed(0)
    b = build_model(causal("kv_shared", "variant.kv_shared_layers=0"), vocab_size=50).eval()
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    "overrides, needle",
    [
        (["variant=q_eq_k", "variant.share_every=2"], "needs a query projection of its own"),
        (["variant=cla", "variant.kv_shared_layers=1"], "set one of them"),
        (["variant=kv_shared", "variant.kv_shared_layers=4"], "must be in [0, 3]"),
        (["variant=cla", "variant.share_every=0"], "variant.share_every=0 is out of range"),
    ],
)
def test_impossible_sharing_is_one_line(overrides, needle):
    with pytest.raises(ConfigError) as err:
        make_config("data=mqar", "model.n_layers=4", *overrides)
    assert needle in str(err.value) and len(str(err.value).splitlines()) == 1

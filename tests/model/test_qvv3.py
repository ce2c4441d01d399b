"""qvv3 (q = W_q2 W_q1 x, k = v = W_v x): mha's parameter count in training, a plain k_eq_v model in eval."""

from __future__ import annotations

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model, count_params
from qkvlab.model.kv_cache import KVCache
from qkvlab.model.qvv3 import k_eq_v_state

from tests.helpers import make_config

SHAPES = [(), ("model.bias=true",), ("variant.kv_group_size=2",), ("variant.share_every=2",), ("variant.qk_norm=true",)]


def build(variant: str, *overrides: str):
    torch.manual_seed(0)
    return build_model(make_config("data=mqar", f"variant={variant}", "model.context=64", *overrides), vocab_size=50)


@pytest.mark.parametrize("overrides", [("model=tiny",), ("model=small",), ("model=small", "model.bias=true")])
def test_parameter_count_equals_mha(overrides):
    assert count_params(build("qvv3", *overrides)) == count_params(build("mha", *overrides))


@pytest.mark.parametrize("overrides", SHAPES)
def test_folded_inference_equals_the_factored_model(overrides):
    net = build("qvv3", *overrides)
    x = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        factored = net.train()(x)
        folded = net.eval()(x)
    torch.testing.assert_close(folded, factored, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("overrides", SHAPES)
def test_eval_mode_is_exactly_the_k_eq_v_model_and_caches_like_it(overrides):
    net = build("qvv3", *overrides).eval()
    plain = build("k_eq_v", *overrides).eval()
    plain.load_state_dict(k_eq_v_state(net.state_dict()))
    x = torch.randint(0, 50, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(net(x), plain(x), rtol=0, atol=0)
        cache = KVCache(net, batch=2, max_len=24)
        parts = [net(x[:, :10], cache, 0)] + [net(x[:, t : t + 1], cache, t) for t in range(10, 24)]
    torch.testing.assert_close(torch.cat(parts, dim=1), net(x), rtol=1e-4, atol=1e-5)
    plain_cache = KVCache(plain, batch=2, max_len=24)
    assert [[b.shape for b in layer.buffers] for layer in cache.layers] == [
        [b.shape for b in layer.buffers] for layer in plain_cache.layers
    ]
    assert len(cache[0].buffers) == 1 and cache.nbytes == plain_cache.nbytes


def test_the_folded_weight_follows_every_change_of_the_factors():
    """An optimiser step, a load and a cast in eval mode: the eval output stays the factored model's."""
    net = build("qvv3", "model.bias=true")
    other = build("qvv3", "model.bias=true")
    torch.manual_seed(1)
    other.reset_parameters()
    x = torch.randint(0, 50, (2, 16))

    def agree():
        with torch.no_grad():
            folded = net.eval()(x)
            factored = net.train()(x)
        net.eval()
        torch.testing.assert_close(folded, factored, rtol=1e-4, atol=1e-5)

    agree()
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    net.train()(x).square().mean().backward()
    opt.step()
    agree()
    net.load_state_dict(other.state_dict())
    agree()
    net.double()
    agree()
    with torch.no_grad():
        assert net.blocks[0].attn.qkv.folded()[0].dtype == torch.float64


def test_gradients_reach_both_factors_in_eval_mode():
    net = build("qvv3").eval()
    net(torch.randint(0, 50, (2, 16))).square().mean().backward()
    attn = net.blocks[0].attn.qkv
    assert attn.first.weight.grad.abs().sum() > 0 and attn.q2.weight.grad.abs().sum() > 0


def test_second_query_factor_starts_orthogonal():
    q2 = build("qvv3").blocks[0].attn.qkv.q2.weight
    torch.testing.assert_close(q2 @ q2.T, torch.eye(q2.shape[0]), rtol=0, atol=1e-5)


def test_other_sharing_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="variant.family=qvv3 .* set variant.sharing=k_eq_v"):
        make_config("variant=qvv3", "variant.sharing=mha")

import pytest
import torch

from qkvlab.config import n_kv_heads
from qkvlab.model import build_model, count_params, model_vocab

from tests.helpers import make_config
from tests.model.test_attention import SHARINGS, expected_params


@pytest.mark.parametrize("preset,total_mha", [("paper_300m", 305_000_000), ("paper_1b", 1_214_000_000)])
@pytest.mark.parametrize("variant", SHARINGS + ["k_eq_v_gqa", "k_eq_v_mqa"])
def test_paper_presets_build_on_meta_with_closed_form_counts(preset, total_mha, variant):
    if variant.startswith("q_eq_k") and "gqa" in variant:
        pytest.skip("refused by design")
    cfg = make_config(f"model={preset}", f"variant={variant}", "data=mqar", "data.seq_len=2048")
    with torch.device("meta"):
        net = build_model(cfg, vocab_size=model_vocab(cfg.model, 50257))
    assert next(net.parameters()).is_meta
    total, attn = expected_params(cfg.model, cfg.variant.sharing, n_kv_heads(cfg), 50304)
    assert count_params(net) == {"params/total": total, "params/attention": attn}
    if variant == "mha":
        assert total == pytest.approx(total_mha, rel=0.01)


def test_paper_300m_matches_the_study_shape():
    cfg = make_config("model=paper_300m", "data=mqar")
    m = cfg.model
    assert (m.n_layers, m.d_model, m.n_heads, m.d_ff, m.context, model_vocab(m, 50257)) == (20, 1024, 16, 4096, 2048, 50304)
    assert (m.positions, m.norm, m.norm_eps, m.mlp, m.bias, m.tie_embeddings, m.dropout) == (
        "learned", "layernorm", 1e-5, "gelu", True, True, 0.1)
    with torch.device("meta"):
        net = build_model(cfg, 50304)
    assert net.head.weight is net.tok_emb.weight
    assert all(lin.bias is not None for lin in net.modules() if isinstance(lin, torch.nn.Linear) and lin is not net.head)


def test_small_is_about_ten_million_parameters():
    net = build_model(make_config("model=small"), 10)
    assert 8e6 < count_params(net)["params/total"] < 12e6


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_dropout_is_applied_in_training_exactly_when_it_is_set(dropout):
    """model.dropout > 0 drops activations in training (two forwards differ) and not in eval; at 0 (the
    default, whose Dropout calls are skipped) a training forward is the eval forward."""
    cfg = make_config("model=tiny", f"model.dropout={dropout}")
    torch.manual_seed(0)
    net = build_model(cfg, 16)
    idx = torch.randint(0, 16, (2, 12))
    with torch.no_grad():
        net.eval()
        ev = net(idx)
        net.train()
        tr1, tr2 = net(idx), net(idx)
    assert torch.equal(net.eval()(idx), ev)
    if dropout:
        assert not torch.equal(tr1, tr2) and not torch.equal(tr1, ev)
        calls = []
        for block in net.blocks:  # residual dropout: on the attention's and the MLP's output of every block
            block.drop.register_forward_hook(lambda mod, args, out: calls.append(mod))
        net.train()(idx)
        assert len(calls) == 2 * len(net.blocks)
    else:
        assert torch.equal(tr1, ev) and torch.equal(tr2, ev)

"""model=study_digits is the study's digit-task model, and the keys it needs do what they say:
model.embedding=onehot_linear, model.init=pytorch and model.mlp=gelu_tanh."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from qkvlab.cli import main
from qkvlab.model import build_model, count_params
from qkvlab.model.flops import matmul_params
from qkvlab.train.run import run

from tests.helpers import make_config

STUDY = ("model=study_digits", "data=sort")


def study_digits_params(d: int, layers: int, context: int, vocab: int) -> int:
    """The study's digit model counted by hand: every Linear and LayerNorm has a bias."""
    onehot_in = vocab * d + d
    positions = context * d
    layer_norm = 2 * d
    attention = (3 * d * d + 3 * d) + (d * d + d)
    mlp = (d * 4 * d + 4 * d) + (4 * d * d + d)
    head = d * vocab + vocab
    return onehot_in + positions + layers * (2 * layer_norm + attention + mlp) + layer_norm + head


def test_study_digits_is_the_study_shape_with_a_closed_form_count():
    cfg = make_config(*STUDY)
    m = cfg.model
    assert (m.d_model, m.n_layers, m.n_heads, m.d_ff, m.context) == (256, 2, 4, 1024, 128)
    assert (m.positions, m.norm, m.mlp, m.bias, m.tie_embeddings, m.embedding, m.init) == (
        "learned", "layernorm", "gelu", True, False, "onehot_linear", "pytorch")
    assert not cfg.data.causal
    with torch.device("meta"):
        net = build_model(cfg, 10)
    assert not isinstance(net.tok_emb, torch.nn.Embedding) and net.head.bias is not None
    assert count_params(net)["params/total"] == study_digits_params(256, 2, 128, 10)
    # The one-hot input is a lookup, not a matmul, in FLOP counts.
    assert matmul_params(net) == count_params(net)["params/total"] - sum(
        p.numel() for n, p in net.named_parameters() if p.dim() < 2 or n.startswith(("tok_emb.", "pos_emb.")))


def test_onehot_linear_is_a_table_of_the_weight_columns_plus_bias():
    torch.manual_seed(0)
    net = build_model(make_config(*STUDY, "model.init=gpt2"), 10)
    torch.nn.init.normal_(net.tok_emb.bias)
    idx = torch.randint(0, 10, (3, 17))
    table = net.tok_emb.weight.T + net.tok_emb.bias
    assert torch.equal(net.tok_emb(idx), F.embedding(idx, table))


def test_pytorch_init_keeps_each_modules_default():
    torch.manual_seed(0)
    net = build_model(make_config(*STUDY), 10)
    d = net.cfg.d_model
    for lin, fan_in in ((net.tok_emb, 10), (net.blocks[0].mlp.up, d), (net.blocks[1].mlp.down, 4 * d), (net.head, d)):
        bound = 1 / math.sqrt(fan_in)
        assert lin.weight.abs().max() <= bound and lin.bias.abs().max() <= bound
        assert lin.weight.abs().max() > 0.9 * bound
        # U(±b) has std b/sqrt(3); GPT-2's 0.02 (or its residual-scaled 0.01) is far from it at these fan-ins.
        assert lin.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert net.pos_emb.weight.std().item() == pytest.approx(1.0, rel=0.05)  # nn.Embedding's N(0, 1)
    assert torch.equal(net.blocks[0].norm1.weight, torch.ones(d)) and torch.equal(net.blocks[0].norm1.bias, torch.zeros(d))
    gpt2 = build_model(make_config(*STUDY, "model.init=gpt2"), 10)
    assert gpt2.blocks[0].mlp.up.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.equal(gpt2.head.bias, torch.zeros(10))


def test_pytorch_init_still_runs_the_familys_init():
    torch.manual_seed(0)
    net = build_model(make_config(*STUDY, "variant=keyless"), 10)
    r = net.blocks[0].attn.score_map
    assert r.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.parametrize("mlp,approximate", [("gelu_tanh", "tanh"), ("gelu", "none")])
def test_gelu_mlps_are_torchs_gelu(mlp, approximate):
    torch.manual_seed(0)
    net = build_model(make_config("model=tiny", f"model.mlp={mlp}"), 10)
    x = torch.randn(2, 5, net.cfg.d_model) * 3
    up, down = net.blocks[0].mlp.up, net.blocks[0].mlp.down
    assert torch.equal(net.blocks[0].mlp(x), down(F.gelu(up(x), approximate=approximate)))
    other = down(F.gelu(up(x), approximate="none" if approximate == "tanh" else "tanh"))
    assert not torch.equal(net.blocks[0].mlp(x), other)


def test_gpt2_124m_uses_gpt2s_tanh_gelu():
    assert make_config("model=gpt2_124m", "data=mqar").model.mlp == "gelu_tanh"


@pytest.mark.parametrize("overrides,message", [
    (("model.embedding=onehot_linear",),
     "model.embedding=onehot_linear has no embedding table to tie the head to; "
     "set model.tie_embeddings=false or use model.embedding=table"),
    (("model=study_digits", "model.tie_embeddings=true"),
     "model.embedding=onehot_linear has no embedding table to tie the head to; "
     "set model.tie_embeddings=false or use model.embedding=table"),
    (("model.embedding=lookup",), "model.embedding='lookup' is not valid; choose one of: table, onehot_linear"),
    (("model.init=xavier",), "model.init='xavier' is not valid; choose one of: gpt2, pytorch"),
    (("model.mlp=relu",), "model.mlp='relu' is not valid; choose one of: swiglu, gelu, gelu_tanh"),
])
def test_bad_combinations_are_one_line_exit_2(overrides, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "logger=none", *overrides])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2, err
    assert err == f"qkvlab: error: {message}"


def test_study_digits_trains_on_sort(tmp_path):
    s = run(make_config(*STUDY, "logger=none", "train.progress=false", "train.steps=6", "train.eval_every=6",
                        "train.log_every=3", "data.batch_size=16", "data.seq_len=16", "data.val_size=32",
                        "optim.warmup_steps=1"), tmp_path)
    assert s["params/total"] == study_digits_params(256, 2, 128, 10)
    assert math.isfinite(s["val/loss"]) and 0.0 <= s["val/acc"] <= 1.0

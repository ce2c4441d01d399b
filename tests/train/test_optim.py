import pytest

from qkvlab.config import OptimConfig
from qkvlab.model import build_model
from qkvlab.train.optim import lr_at, param_groups

from tests.helpers import make_config


def test_warmup_then_cosine_to_floor():
    o = OptimConfig(lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, 100, o) == pytest.approx(0.1)
    assert lr_at(9, 100, o) == pytest.approx(1.0)
    assert lr_at(10, 100, o) == pytest.approx(1.0)
    assert lr_at(55, 100, o) == pytest.approx(0.55)
    assert lr_at(100, 100, o) == pytest.approx(0.1)
    values = [lr_at(s, 100, o) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_only_matrices_decay():
    net = build_model(make_config("model.bias=true", "model.norm=layernorm"), 10)
    decay, no_decay = param_groups(net, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["params"]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(net.parameters()))

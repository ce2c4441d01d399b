import math

import pytest

from qkvlab.config import Config, ConfigError, DataConfig, LoggerConfig, ModelConfig, TrainConfig, validate
from qkvlab.train.budget import resolve_steps
from qkvlab.train.run import run


def test_steps_follow_tokens_per_param():
    cfg = Config(data=DataConfig(seq_len=32, batch_size=64), train=TrainConfig(steps=300, tokens_per_param=20))
    # 20 tokens x 10,000 parameters over 2,048 tokens per step, rounded up to whole steps.
    assert resolve_steps(cfg, 10_000).train.steps == math.ceil(200_000 / 2048)
    assert resolve_steps(Config(), 10_000).train.steps == 300


@pytest.mark.parametrize("bad", [0, -5.0])
def test_non_positive_tokens_per_param_is_refused(bad):
    with pytest.raises(ConfigError, match=r"train.tokens_per_param=.* must be > 0"):
        validate(Config(train=TrainConfig(tokens_per_param=bad)))


def test_run_records_its_compute_next_to_wall_time(tmp_path):
    cfg = Config(
        model=ModelConfig(name="tiny"),
        data=DataConfig(seq_len=16, batch_size=16, val_size=32),
        train=TrainConfig(steps=999, tokens_per_param=0.02, eval_every=1000, device="cpu", progress=False),
        logger=LoggerConfig(backend="none", mode="disabled"),
    )
    s = run(cfg, tmp_path)
    params = s["params/matmul"]
    assert s["step"] == math.ceil(0.02 * params / 256) and s["tokens"] == s["step"] * 256
    assert s["compute/flops"] == s["compute/flops_per_token"] * s["tokens"]
    assert s["compute/flops_per_token"] > 6 * params  # the attention term is on top of 6N
    assert s["compute/tokens_per_param"] >= 0.02 and s["wall_time_s"] > 0

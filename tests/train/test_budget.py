import json
import math

import pytest

from qkvlab.config import ConfigError
from qkvlab.train.budget import resolve_steps
from qkvlab.train.run import run

from tests.helpers import make_config

TINY = ("logger=none", "model=tiny", "data.seq_len=16", "data.batch_size=16", "data.val_size=32",
        "train.eval_every=1000", "train.device=cpu", "train.progress=false")


def test_steps_follow_tokens_per_param():
    cfg = make_config("data.seq_len=32", "data.batch_size=64", "train.steps=300", "train.tokens_per_param=20")
    # 20 tokens x 10,000 parameters over 2,048 tokens per step, rounded up to whole steps.
    assert resolve_steps(cfg, 10_000).train.steps == math.ceil(200_000 / 2048)
    assert resolve_steps(make_config("train.steps=300"), 10_000).train.steps == 300


@pytest.mark.parametrize("steps, every", [(5, 1), (100, 10), (300, 30), (1000, 100), (19073, 100)])
def test_a_null_eval_every_evaluates_ten_times_and_at_least_every_100_steps(steps, every):
    assert make_config(f"train.steps={steps}").train.eval_every is None  # the hash sees the null
    assert resolve_steps(make_config(f"train.steps={steps}"), 10_000).train.eval_every == every
    assert resolve_steps(make_config(f"train.steps={steps}", "train.eval_every=7"), 10_000).train.eval_every == 7


def test_a_null_eval_every_follows_the_steps_a_token_budget_gives():
    cfg = make_config("data.seq_len=32", "data.batch_size=64", "train.tokens_per_param=20")
    assert resolve_steps(cfg, 10_000).train.eval_every == math.ceil(200_000 / 2048) // 10


@pytest.mark.parametrize("bad", ["0", "-5.0"])
def test_non_positive_tokens_per_param_is_refused(bad):
    with pytest.raises(ConfigError, match=r"train.tokens_per_param=.* is out of range; give a value > 0"):
        make_config(f"train.tokens_per_param={bad}")


def test_run_records_its_compute_next_to_wall_time(tmp_path):
    s = run(make_config(*TINY, "train.tokens_per_param=0.02"), tmp_path)
    params = s["params/matmul"]
    assert s["step"] == math.ceil(0.02 * params / 256) and s["tokens"] == s["step"] * 256
    assert s["compute/flops"] == s["compute/flops_per_token"] * s["tokens"]
    assert s["compute/flops_per_token"] > 6 * params  # the attention term is on top of 6N
    assert s["compute/tokens_per_param"] >= 0.02 and s["wall_time_s"] > 0


def test_a_fixed_training_set_counts_the_short_last_batch_of_each_epoch(tmp_path):
    """10 examples at batch 4: epochs of 4 + 4 + 2 rows, so 4 steps see 14 rows, not 16."""
    cfg = make_config("data=sort", "data.seq_len=8", "data.batch_size=4", "data.train_size=10", "data.val_size=8",
                      "train.steps=4", "train.eval_every=2", "train.log_every=2", "logger=none", "train.progress=false")
    summary = run(cfg, tmp_path)
    assert summary["tokens"] == 14 * 8
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert {r["step"]: r["tokens"] for r in rows} == {2: 8 * 8, 4: 14 * 8}

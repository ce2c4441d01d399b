import numpy as np
import pytest
import torch

from qkvlab.data import IGNORE, build_data
from qkvlab.data.synthetic import DIGIT_TASKS

from tests.helpers import make_config


def test_digit_task_targets():
    x = torch.tensor([[3, 1, 4, 1, 5, 9]])
    expected = {
        "copy": [3, 1, 4, 1, 5, 9],
        "reverse": [9, 5, 1, 4, 1, 3],
        "sort": [1, 1, 3, 4, 5, 9],
        "sub": [6, 8, 5, 8, 4, 0],
        "swap": [1, 5, 9, 3, 1, 4],
    }
    from qkvlab.data.synthetic import digit_targets

    for task, want in expected.items():
        assert digit_targets(task, x.numpy()).tolist() == [want], task


@pytest.mark.parametrize("task", DIGIT_TASKS)
def test_digit_batches_are_consistent_and_bidirectional(task):
    cfg = make_config(f"data={task}")
    data = build_data(cfg)
    assert not data.causal and data.vocab_size == 10
    x, y = data.train_batch(0)
    assert x.shape == y.shape == (cfg.data.batch_size, cfg.data.seq_len)
    from qkvlab.data.synthetic import digit_targets

    assert torch.equal(y, torch.from_numpy(digit_targets(task, x.numpy())))


def test_batches_are_a_function_of_seed_and_step():
    a, b = build_data(make_config("seed=0")), build_data(make_config("seed=0", "variant=k_eq_v"))
    c = build_data(make_config("seed=1"))
    assert torch.equal(a.train_batch(5)[0], b.train_batch(5)[0])
    assert not torch.equal(a.train_batch(5)[0], a.train_batch(6)[0])
    assert not torch.equal(a.train_batch(5)[0], c.train_batch(5)[0])


def test_validation_set_is_the_same_for_every_variant_and_seed():
    sets = [build_data(make_config(f"seed={s}", f"variant={v}")) for s in (0, 3) for v in ("mha", "q_eq_k_eq_v")]
    first = [x for x, _ in sets[0].val_batches()]
    for other in sets[1:]:
        assert all(torch.equal(a, b) for a, b in zip(first, [x for x, _ in other.val_batches()]))


def test_train_never_contains_a_validation_example():
    # 4 digits: 10^4 possible rows, 512 in validation, so collisions would be frequent if not removed.
    data = build_data(make_config("data.seq_len=4", "data.batch_size=256"))
    val = {tuple(r) for r in data.val_x.tolist()}
    drawn = 0
    for step in range(40):
        x, _ = data.train_batch(step)
        drawn += len(x)
        assert not ({tuple(r) for r in x.tolist()} & val)
    assert drawn == 40 * 256


def test_mqar_scores_only_answers():
    cfg = make_config("data=mqar")
    data = build_data(cfg)
    assert data.causal and data.vocab_size == 128
    x, y = data.train_batch(0)
    P = cfg.data.num_pairs
    scored = y != IGNORE
    assert not scored[:, : 2 * P].any()
    assert scored[:, 2 * P :: 2].all() and not scored[:, 2 * P + 1 :: 2].any()
    for row_x, row_y in zip(x.tolist(), y.tolist()):
        pairs = dict(zip(row_x[0 : 2 * P : 2], row_x[1 : 2 * P : 2]))
        assert len(pairs) == P  # distinct keys
        for t in range(2 * P, len(row_x), 2):
            assert row_y[t] == pairs[row_x[t]] == row_x[t + 1]
            assert row_x[t] < cfg.data.num_keys <= row_y[t]


def _rows(x: torch.Tensor) -> list[bytes]:
    return sorted(r.numpy().tobytes() for r in x)


def test_a_fixed_training_set_is_visited_once_per_epoch_in_a_new_order():
    """The study's recipe: N examples, each seen once an epoch; the last batch holds the remainder."""
    cfg = make_config("data=reverse", "data.seq_len=8", "data.batch_size=4", "data.train_size=10", "data.val_size=16")
    data = build_data(cfg)
    assert data.steps_per_epoch == 3
    epochs = [[data.train_batch(s) for s in range(e * 3, e * 3 + 3)] for e in range(2)]
    assert [len(x) for x, _ in epochs[0]] == [4, 4, 2]
    first, second = (torch.cat([x for x, _ in batches]) for batches in epochs)
    assert _rows(first) == _rows(second) == _rows(torch.from_numpy(data.train_x))
    assert not torch.equal(first, second)
    for x, y in epochs[0]:
        assert torch.equal(y, x.flip(1))
    val = {r for x, _ in data.val_batches() for r in _rows(x)}
    assert not val & set(_rows(first))
    again = build_data(cfg)
    assert all(torch.equal(a[0], again.train_batch(s)[0]) for s, a in enumerate(epochs[0]))
    other_seed = build_data(make_config("data=reverse", "data.seq_len=8", "data.batch_size=4", "data.train_size=10",
                                        "data.val_size=16", "seed=1"))
    assert _rows(torch.from_numpy(other_seed.train_x)) != _rows(first)


def test_a_fixed_training_set_under_accumulation_walks_the_micro_batches_in_order():
    plain = build_data(make_config("data=sort", "data.batch_size=4", "data.train_size=20"))
    accum = build_data(make_config("data=sort", "data.batch_size=4", "data.train_size=20", "train.grad_accum=2"))
    assert torch.equal(accum.train_batch(1, 1)[0], plain.train_batch(3)[0])


@pytest.mark.parametrize("override, message", [
    ("data.train_size=0", "data.train_size"),
    ("data=text", "data.train_size is read only by synthetic tasks"),
])
def test_a_bad_train_size_is_one_line(override, message):
    from qkvlab.checks import checked
    from qkvlab.errors import ConfigError
    from omegaconf import OmegaConf

    with pytest.raises(ConfigError, match=message):
        cfg = make_config(override, "data.train_size=0" if override.endswith("=0") else "data.train_size=100")
        checked(OmegaConf.structured(cfg))

"""Uptraining with distillation (qkvlab/train/distill.py): a frozen teacher, Hinton's loss over scored positions."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from omegaconf import OmegaConf

from qkvlab.config import as_dict
from qkvlab.data import IGNORE
from qkvlab.errors import ConfigError
from qkvlab.train.checkpoint import atomic_torch_save, read_checkpoint
from qkvlab.train.distill import distill_kl
from qkvlab.train.loop import Trainer
from qkvlab.train.run import run

from tests.helpers import make_config

SMALL = ("logger=none", "train.progress=false", "train.precision=fp32", "data.batch_size=8", "data.seq_len=16", "data.val_size=64")
STEPS = ("train.steps=10", "train.log_every=5", "train.eval_every=10")


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A finished mha run on sort: the teacher of every test here."""
    path = tmp_path_factory.mktemp("teacher") / "mha-teacher"
    cfg = make_config(*SMALL, *STEPS, "variant=mha")
    run(cfg, path)
    (path / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(as_dict(cfg)), path / ".hydra" / "config.yaml")
    return path


def student(teacher, *extra: str):
    return make_config(*SMALL, *STEPS, "variant=k_eq_v", f"distill.teacher={teacher}", *extra)


def _rows(run_dir):
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("throughput")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_kl_is_the_mean_over_scored_positions_of_the_softened_kl():
    torch.manual_seed(0)
    student_logits, teacher_logits = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    targets = torch.tensor([[1, IGNORE, 2], [IGNORE, 0, 4]])
    T = 2.0
    expected, n = 0.0, 0
    for b in range(2):
        for t in range(3):
            if targets[b, t] == IGNORE:
                continue
            p_t = torch.softmax(teacher_logits[b, t].double() / T, -1)
            p_s = torch.softmax(student_logits[b, t].double() / T, -1)
            expected += float((p_t * (p_t.log() - p_s.log())).sum())
            n += 1
    got = distill_kl(student_logits, teacher_logits, targets, T)
    assert float(got) == pytest.approx(expected / n, rel=1e-6)
    unscored = teacher_logits.clone()
    unscored[0, 1] += 100.0
    unscored[1, 0] -= 100.0
    assert torch.equal(distill_kl(student_logits, unscored, targets, T), got)
    assert float(distill_kl(teacher_logits, teacher_logits, targets, T)) == pytest.approx(0.0, abs=1e-7)


def test_the_step_minimises_alpha_ce_plus_t_squared_kl(teacher, tmp_path):
    """Over accumulated micro-batches, beside a family's auxiliary loss (routed's load balance)."""
    cfg = student(teacher, "variant=routed", "train.grad_accum=2", "distill.alpha=0.3", "distill.temperature=3.0")
    trainer = Trainer(cfg, tmp_path)
    batches = [trainer.data.train_batch(0, micro) for micro in range(2)]
    ces, kls = [], []
    with torch.no_grad():
        for x, y in batches:
            logits = trainer.model(x)
            ces.append(float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE)))
            kls.append(float(distill_kl(logits, trainer.distiller.model(x), y, 3.0)))
    ce, kl = sum(ces) / 2, sum(kls) / 2
    loss, finite = trainer.update(batches)
    assert bool(finite) and kl > 0 and "load_balance" in trainer.last_aux
    assert float(loss) == pytest.approx(0.3 * ce + 0.7 * 9.0 * kl, rel=1e-5)
    assert float(trainer.last_terms["ce"]) == pytest.approx(ce, rel=1e-6)
    assert float(trainer.last_terms["kl"]) == pytest.approx(kl, rel=1e-5)


def test_the_teacher_gets_no_gradient_and_its_weights_stay_bit_identical(teacher, tmp_path):
    before = read_checkpoint(teacher / "checkpoints" / "final.pt")["model"]
    trainer = Trainer(student(teacher, "distill.alpha=0.0"), tmp_path)
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    for step in range(3):
        trainer.train_step(step)
    t = trainer.distiller.model
    assert not t.training
    assert all(not p.requires_grad and p.grad is None for p in t.parameters())
    assert all(torch.equal(v, before[k]) for k, v in t.state_dict().items())
    assert not all(torch.equal(v, start[k]) for k, v in trainer.model.state_dict().items())


def test_with_alpha_one_training_is_plain_training_bit_for_bit(teacher, tmp_path):
    """The teacher is loaded (and checked) but never runs; even with dropout its loading leaves the RNG alone."""
    def train(cfg, where):
        trainer = Trainer(cfg, where)  # seeds the process's RNGs: one trainer at a time
        return [trainer.train_step(step)[0] for step in range(3)], trainer.model.state_dict()

    common = ("model.dropout=0.1",)
    plain_losses, plain = train(make_config(*SMALL, *STEPS, "variant=k_eq_v", *common), tmp_path / "plain")
    losses, distilled = train(student(teacher, "distill.alpha=1.0", *common), tmp_path / "distilled")
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, losses))
    assert all(torch.equal(v, distilled[k]) for k, v in plain.items())


def test_a_teacher_with_another_vocabulary_is_refused_in_one_line(teacher, tmp_path):
    with pytest.raises(ConfigError) as err:
        Trainer(student(teacher, "model.vocab_size=16"), tmp_path)
    assert str(err.value) == (
        f"distill.teacher={teacher} has a vocabulary of 10 rows, this run's model 16; "
        "teacher and student need the same vocabulary: set model.vocab_size=10"
    )


def test_a_teacher_of_another_corpus_is_refused_in_one_line(teacher, tmp_path, shakespeare):
    with pytest.raises(ConfigError, match=r"trained on a synthetic task, but this run trains on token cache .*"
                       r"teacher and student need the same tokenizer and corpus"):
        Trainer(student(teacher, "data=text", f"data.path={shakespeare}", "data.val_tokens=4096", "data.val_size=512",
                        "model.vocab_size=257"), tmp_path)


def test_a_distilled_run_resumed_mid_window_is_bit_identical_and_refuses_a_changed_teacher(teacher, tmp_path):
    own = tmp_path / "teacher" / teacher.name
    shutil.copytree(teacher, own)
    steps = ("train.checkpoint_every=3", "train.keep_checkpoints=5")
    a = run(student(own, *steps), tmp_path / "a")
    resumed = tmp_path / "a" / "checkpoints" / "step_00000003.pt"
    b = run(student(own, *steps, f"train.resume={resumed}"), tmp_path / "b")
    rows = _rows(tmp_path / "a")
    assert _rows(tmp_path / "b") == rows and a["val/loss"] == b["val/loss"]
    train = [r for r in rows if "train/loss" in r]
    assert train and all("train/kl" in r and r["train/ppl"] == pytest.approx(math.exp(r["train/ce"])) for r in train)
    assert a["distill/teacher"] == str(own.resolve())
    assert a["distill/teacher_crc32"] == json.loads((own / "checkpoints" / "final.pt.sum").read_text())["crc32"]
    with pytest.raises(ConfigError, match=r"it was trained with distill.teacher=.*; add that distill.teacher"):
        run(make_config(*SMALL, *STEPS, *steps, "variant=k_eq_v", f"train.resume={resumed}"), tmp_path / "plain")

    final = own / "checkpoints" / "final.pt"
    payload = read_checkpoint(final)
    payload["model"] = {k: v + 1e-3 if v.is_floating_point() else v for k, v in payload["model"].items()}
    final.unlink()
    atomic_torch_save(payload, final)
    with pytest.raises(ConfigError, match=r"cannot resume from .*step_00000003\.pt: the teacher's final checkpoint .*"
                       r"changed since this run started \(CRC32 [0-9a-f]{8} -> [0-9a-f]{8}\); restore that teacher"):
        run(student(own, *steps, f"train.resume={resumed}"), tmp_path / "c")

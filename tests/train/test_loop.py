import json

import pytest
import torch

from qkvlab.config import CONF_DIR
from qkvlab.train.run import run

from tests.helpers import make_config

VARIANTS = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))
# fp32: runs are compared at fp32 tolerances, whatever precision=auto would pick on the machine.
FAST = ("logger=none", "train.precision=fp32", "train.steps=60", "train.eval_every=30", "train.log_every=10", "train.progress=false")


def _losses(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_same_seed_same_losses_and_loss_goes_down(tmp_path):
    a = run(make_config(*FAST), tmp_path / "a")
    b = run(make_config(*FAST), tmp_path / "b")
    la, lb = _losses(tmp_path / "a"), _losses(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("throughput")} for r in rows]
    assert strip(la) == strip(lb)
    assert a["val/loss"] == b["val/loss"]
    train = [r["train/loss"] for r in la if "train/loss" in r]
    assert train[-1] < 0.8 * train[0]


def test_summary_holds_the_contract(tmp_path):
    s = run(make_config(*FAST, "variant=k_eq_v_gqa", "model.n_heads=8", "train.steps=10", "train.eval_every=5"), tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["status"] == "completed"
    for key in ("val/loss", "val/ppl", "val/acc", "val/exact_match", "best/val/loss", "best/val/ppl",
                "params/total", "params/attention", "kv_cache/bytes_per_token", "kv_cache/reduction_vs_mha",
                "throughput/tokens_per_s", "tokens", "wall_time_s", "precision", "device"):
        assert key in on_disk, key
    assert on_disk["kv_cache/reduction_vs_mha"] == 0.875
    assert on_disk["tokens"] == 10 * 64 * 32
    assert (tmp_path / "checkpoints" / "final.pt").exists()
    assert s["val/ppl"] > 1.0


def test_grad_accumulation_matches_the_step_count(tmp_path):
    s = run(make_config(*FAST, "train.grad_accum=2", "train.steps=6", "train.eval_every=3"), tmp_path)
    assert s["tokens"] == 6 * 2 * 64 * 32


def test_fused_optimizer_skips_nonfinite_updates_without_a_per_step_read(tmp_path, monkeypatch):
    """CUDA's path, on the CPU's fused AdamW: the optimizer drops a non-finite update itself
    (found_inf), the loop reads the flags only at the next log point and still names the
    step where the policy gave up."""
    import pytest
    import torch

    from qkvlab.track.metrics import MetricsWriter
    from qkvlab.train import loop

    real = loop.make_optimizer
    monkeypatch.setattr(loop, "make_optimizer", lambda model, o, device: real(model, o, torch.device("cuda")))
    cfg = make_config(*FAST, "optim.lr=1e30", "optim.warmup_steps=0", "train.max_nonfinite=4", "train.checkpoint_every=50")
    trainer = loop.Trainer(cfg, tmp_path)
    assert trainer.skip_on_device
    reads = []
    settle = trainer.settle
    monkeypatch.setattr(trainer, "settle", lambda pending: (reads.append(len(pending)), settle(pending)))
    writer = MetricsWriter(tmp_path)
    with pytest.raises(loop.Diverged, match=r"at step 5 \(4 steps in a row, train.on_nonfinite=skip\)"):
        trainer.fit(writer)
    writer.close()
    assert reads == [10] and trainer.state.step == 10
    assert all(bool(p.isfinite().all()) for p in trainer.model.parameters())


def test_a_run_whose_final_validation_is_not_finite_is_never_completed(tmp_path, monkeypatch):
    """Weights that give a NaN validation must not end in a completed run with a NaN in its table."""
    import math

    import pytest

    from qkvlab.train.loop import Diverged, Trainer

    real = Trainer.validate

    def nan_at_the_end(self, stop=None):
        val = real(self, stop)
        return {**val, "val/loss": math.nan} if self.state.step == self.cfg.train.steps else val

    monkeypatch.setattr(Trainer, "validate", nan_at_the_end)
    with pytest.raises(Diverged, match=r"the final validation gave val/loss=nan at step 60, so the run is not complete; "
                       r"the last good checkpoint is .*step_00000030\.pt"):
        run(make_config(*FAST, "train.checkpoint_every=30"), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    assert not (tmp_path / "checkpoints" / "final.pt").exists()


def test_an_auxiliary_loss_is_logged_under_its_name_in_training_and_validation(tmp_path):
    s = run(make_config(*FAST, "train.steps=20", "train.eval_every=10", "variant=routed"), tmp_path)
    rows = _losses(tmp_path)
    train = [r["train/aux/load_balance"] for r in rows if "train/loss" in r]
    val = [r["val/aux/load_balance"] for r in rows if "val/loss" in r]
    assert len(train) == 2 and len(val) == 2
    assert all(0 < v < 4 for v in train + val)  # (g - s) x sum f_i P_i: 1 balanced, at most g - s = 3
    assert s["train/aux/load_balance"] == train[-1] and s["val/aux/load_balance"] == val[-1]


def test_the_step_minimises_cross_entropy_plus_the_weighted_auxiliary_loss(tmp_path):
    """train/loss is the cross-entropy alone; aux_weight changes the update, not the logged loss."""
    from qkvlab.train.loop import Trainer

    def one_step(weight: str):
        trainer = Trainer(make_config(*FAST, "variant=routed", f"variant.aux_weight={weight}"), tmp_path / weight)
        loss, finite = trainer.update([trainer.data.train_batch(0, 0)])
        return float(loss), bool(finite), float(trainer.last_aux["load_balance"]), trainer.model.blocks[0].attn.router.weight

    plain, weighted = one_step("0"), one_step("1")
    assert plain[:3] == weighted[:3] and plain[1]
    assert not torch.equal(plain[3], weighted[3])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_resumed_mid_window_ends_bit_identical(tmp_path, variant):
    """Every family's state (weights, optimizer, RNG, a window's partial loss and auxiliary sums) travels in
    the checkpoint: resumed at step 3, inside the window logged at step 5, a run logs what the
    uninterrupted one logged, bit for bit."""
    steps = (f"variant={variant}", "train.steps=10", "train.log_every=5", "train.eval_every=10", "train.checkpoint_every=3")
    cfg = make_config(*FAST, *steps, "train.keep_checkpoints=5")
    a = run(cfg, tmp_path / "a")
    resumed = tmp_path / "a" / "checkpoints" / "step_00000003.pt"
    b = run(make_config(*FAST, *steps, "train.keep_checkpoints=5", f"train.resume={resumed}"), tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if not k.startswith("throughput")} for r in rows]
    assert strip(_losses(tmp_path / "b")) == strip(_losses(tmp_path / "a"))
    assert a["val/loss"] == b["val/loss"]
    symmetry = [r["val/symmetry"] for r in _losses(tmp_path / "b") if "val/loss" in r]
    assert symmetry and all(0 <= v <= 2 for v in symmetry) and a["val/symmetry"] == symmetry[-1]
    if variant.startswith("q_eq_k") and not variant.endswith("plus"):
        assert symmetry[-1] < 1e-5  # RoPE keeps Q=K scores symmetric
    if variant == "routed":
        assert any("train/aux/load_balance" in r for r in _losses(tmp_path / "b"))
    # `qkvlab analyze`'s work on the finished run, in process (the config file is Hydra's part of a run directory).
    from omegaconf import OmegaConf

    from qkvlab.analysis.analyze import analyze
    from qkvlab.config import as_dict
    from qkvlab.infer.load import load_trained

    from tests.analysis.analyze_checks import assert_analysis

    (tmp_path / "a" / ".hydra").mkdir()
    OmegaConf.save(OmegaConf.create(as_dict(cfg)), tmp_path / "a" / ".hydra" / "config.yaml")
    analyze(load_trained(tmp_path / "a"), tmp_path / "analysis", rows=2, max_len=12)
    assert_analysis(tmp_path / "analysis", n_layers=2)


SHORT = ("logger=none", "train.steps=20", "train.log_every=5", "data.batch_size=8", "data.seq_len=16", "data.val_size=64")


def test_short_run_evaluates_ten_times_by_default_and_says_its_precision(tmp_path, capsys):
    """train.eval_every left null evaluates every steps/10; the summary says which precision ran and why."""
    import torch

    from qkvlab.train.device import precision_choice

    s = run(make_config(*SHORT, "train.progress=false"), tmp_path)
    assert [r["step"] for r in _losses(tmp_path) if "val/loss" in r] == list(range(2, 21, 2))
    precision, why = precision_choice("auto", torch.device("cpu"), make_config(*SHORT).model.d_model)
    assert s["precision"] == precision and s["precision_reason"] == why
    assert f"\n  {why}\n" in capsys.readouterr().out
    assert why.startswith(f"precision=auto -> {precision} (")  # the machine's reason: tests/train/test_device.py


def test_progress_under_a_non_terminal_prints_plain_lines(tmp_path, capsys):
    """stderr is a pipe or a file (a SLURM log): no carriage-return redraws, a plain line every steps/20."""
    run(make_config(*SHORT, "train.eval_every=10", "train.progress=true", "train.steps=40"), tmp_path)
    err = capsys.readouterr().err
    assert "\r" not in err
    lines = [line for line in err.splitlines() if line.startswith("mha: step ")]
    assert [line.split()[2] for line in lines] == [f"{n}/40" for n in range(2, 41, 2)]
    assert "loss=" in lines[-1] and "val=" in lines[-1] and "100%" in lines[-1]


def test_zero_steps_evaluates_the_starting_weights_and_finishes(tmp_path):
    """train.steps=0 is a zero-shot run (a converted model): it scores the weights it starts with."""
    from qkvlab.data import build_data
    from qkvlab.train.evaluate import evaluate
    from qkvlab.model import build_model
    from qkvlab.train.checkpoint import read_checkpoint

    cfg = make_config("logger=none", "train.progress=false", "train.steps=0", "data.val_size=64", "train.precision=fp32")
    s = run(cfg, tmp_path)
    assert s["status"] == "completed" and s["step"] == 0 and s["tokens"] == 0
    assert [r["step"] for r in _losses(tmp_path)] == [0]
    payload = read_checkpoint(tmp_path / "checkpoints" / "final.pt")
    model = build_model(cfg, payload["vocab_size"])
    model.load_state_dict(payload["model"])
    again = evaluate(model.eval(), build_data(cfg).val_batches(), torch.device("cpu"), torch.autocast("cpu", enabled=False), True)
    assert again["val/loss"] == s["val/loss"]

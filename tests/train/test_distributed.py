"""DDP under torchrun (qkvlab/train/distributed.py): real processes, gloo, the tiny model.

Several processes must train exactly what one process trains with the same global batch, all-reduce
gradients once per optimizer step, leave every file to rank 0, and write checkpoints that resume at
another world size."""

from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import signal
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.tensor import DTensor

from qkvlab.checks import compose_config
from qkvlab.config import CONF_DIR, check_resume
from qkvlab.errors import ConfigError
from qkvlab.runlock import hold
from qkvlab.train.checkpoint import good_checkpoints, read_checkpoint, step_checkpoints
from qkvlab.train.distributed import World, check_parallel, resolve_parallel
from qkvlab.train.loop import Trainer
from qkvlab.train.resume import clear_checkpoints, remove_temporaries
from qkvlab.train.run import run

WORKER = Path(__file__).with_name("ddp_worker.py")
# Metrics that must agree between world sizes; the rest measure the machine.
COMPARED = ("train/loss", "train/ppl", "val/loss", "val/acc", "val/exact_match")


def assert_same_rows(got: list[dict], want: list[dict]) -> None:
    assert [r["step"] for r in got] == [r["step"] for r in want]
    for a, b in zip(got, want):
        keys = [k for k in COMPARED if k in b]
        assert keys and all(k in a for k in keys), (a, b)
        for k in keys:
            assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6), (a["step"], k, a[k], b[k])


def test_batch_size_and_launcher_are_checked_in_one_line():
    cfg = compose_config(["data.batch_size=6"])
    with pytest.raises(ConfigError, match=r"^data.batch_size=6 is the global batch, split over the 4 processes \(WORLD_SIZE=4\)"):
        check_parallel(cfg, {"WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="^train.parallel=none under a launcher with WORLD_SIZE=2"):
        check_parallel(compose_config(["train.parallel=none"]), {"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="leaves a last batch of 3 rows each epoch"):
        check_parallel(compose_config(["data.train_size=35", "data.batch_size=8"]), {"WORLD_SIZE": "2"})
    check_parallel(cfg, {"WORLD_SIZE": "2"})
    assert [resolve_parallel("auto", env) for env in ({}, {"WORLD_SIZE": "1"}, {"WORLD_SIZE": "2"})] == ["none", "none", "ddp"]
    with pytest.raises(ConfigError, match=r"^train.parallel=fsdp needs torchrun, which sets WORLD_SIZE \(it is not set\)"):
        check_parallel(compose_config(["train.parallel=fsdp"]), {})
    with pytest.raises(ConfigError, match=r"^data.batch_size=6 is the global batch, split over the 4 processes"):
        check_parallel(compose_config(["train.parallel=fsdp", "data.batch_size=6"]), {"WORLD_SIZE": "4"})
    assert resolve_parallel("fsdp", {"WORLD_SIZE": "2"}) == "fsdp"


def test_ranks_split_each_global_batch_into_disjoint_slices():
    x, y = torch.arange(24).view(8, 3), -torch.arange(24).view(8, 3)
    parts = [World(rank=r, size=4, parallel="ddp").shard((x, y)) for r in range(4)]
    assert torch.equal(torch.cat([p[0] for p in parts]), x) and torch.equal(torch.cat([p[1] for p in parts]), y)
    assert World().shard((x, y))[0] is x


@pytest.mark.slow
def test_two_processes_train_what_one_does_with_one_all_reduce_per_step_and_rank_0_writing(tmp_path, torchrun, kit):
    """mha and k_eq_v with gradient accumulation: the same losses as one process with the same global
    batch, one gradient all-reduce per optimizer step (no_sync on the first micro-step), and a rank
    given its own run directory writes nothing there."""
    overrides = [*kit.TINY, "train.steps=6", "train.grad_accum=2", "train.log_every=2", "train.eval_every=3", "train.checkpoint_every=3"]
    res = torchrun([str(WORKER), str(tmp_path / "ddp"), "mha,k_eq_v", *overrides])
    assert res.returncode == 0, res.stderr[-3000:]
    for variant in ("mha", "k_eq_v"):
        one = tmp_path / "one" / variant
        run(compose_config([f"variant={variant}", *overrides]), one)
        two = tmp_path / "ddp" / variant / "rank0"
        assert_same_rows(kit.metrics(two), kit.metrics(one))
        assert not (tmp_path / "ddp" / variant / "rank1").exists()
        assert sorted(p.name for p in (two / "checkpoints").iterdir()) == sorted(p.name for p in (one / "checkpoints").iterdir())
        for rank in (0, 1):
            counted = json.loads((tmp_path / "ddp" / f"{variant}-rank{rank}.json").read_text())
            assert counted["collectives"] == counted["steps"] == 6, counted
        s = kit.summary(two)
        assert (s["parallel"], s["world_size"], s["batch_per_device"]) == ("ddp", 2, 4)
        assert kit.summary(one)["world_size"] == 1


@pytest.mark.slow
def test_a_torchrun_run_writes_once_and_resumes_with_one_process(tmp_path, torchrun, run_cli, kit):
    """`torchrun -m qkvlab train`: one summary, one row per step; its step-10 checkpoint resumed by one
    process, and by two under FSDP, ends where the uninterrupted two-process run ended."""
    args = [*kit.TINY, "train.steps=20", "train.checkpoint_every=10"]
    res = torchrun(["-m", "qkvlab", "train", *args, "hydra.run.dir=two"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.count("finished 20 steps") == 1
    assert "parallel=ddp over 2 processes: global batch 8, 4 rows per process" in res.stdout
    two = tmp_path / "two"
    rows = kit.metrics(two)
    assert len(rows) == len({(r["step"], "train/loss" in r) for r in rows})
    assert sorted(p.name for p in two.iterdir()) == [".hydra", ".lock", "checkpoints", "metrics.jsonl", "run.json", "summary.json"]

    checkpoint = two / "checkpoints" / "step_00000010.pt"
    res = run_cli("train", *args, f"train.resume={checkpoint}", "hydra.run.dir=one", env_extra=kit.ENV)
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same_rows(kit.metrics(tmp_path / "one"), rows)
    assert kit.summary(tmp_path / "one")["world_size"] == 1
    assert math.isclose(kit.summary(tmp_path / "one")["val/loss"], kit.summary(two)["val/loss"], rel_tol=1e-4)

    res = torchrun(["-m", "qkvlab", "train", *args, "train.parallel=fsdp", f"train.resume={checkpoint}", "hydra.run.dir=sharded"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert "parallel=fsdp over 2 processes: global batch 8, 4 rows per process" in res.stdout
    assert_same_rows(kit.metrics(tmp_path / "sharded"), rows)
    assert (tmp_path / "sharded" / "checkpoints" / "step_00000020.dcp" / "checksums.json").is_file()


@pytest.mark.slow
def test_the_run_directory_lock_holds_for_every_rank(tmp_path, torchrun, kit):
    """Rank 0 takes the lock; when another process holds it, no rank trains and the job says so once."""
    busy = tmp_path / "busy"
    busy.mkdir()
    with hold(busy):
        res = torchrun(["-m", "qkvlab", "train", *kit.TINY, "train.steps=5", "hydra.run.dir=busy"], timeout=60)
    assert res.returncode != 0
    assert res.stderr.count("qkvlab: error: run directory") == 1 and "is in use by pid" in res.stderr
    assert sorted(p.name for p in busy.iterdir()) == [".lock"]


def interrupted_copy(run_dir: Path, to: Path, after: int) -> Path:
    """`run_dir` as a run killed after its step-`after` checkpoint: later checkpoints and final.pt gone."""
    shutil.copytree(run_dir, to)
    for path in (to / "checkpoints").iterdir():
        if path.name == "final.pt" or (path.name.startswith("step_") and int(path.name[5:13]) > after):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    return to


@pytest.mark.slow
def test_fsdp_trains_what_one_process_does_and_resumes_at_any_world_size(tmp_path, torchrun, kit):
    """FSDP over two processes, mha and k_eq_v with gradient accumulation: the losses of one process with
    the same global batch, one reduce-scatter per group and optimizer step, sharded step checkpoints and
    one consolidated final.pt; killed after its step-6 checkpoint, the run resumes with one process and
    with two and ends where the uninterrupted run ended, optimizer state included."""
    # 9 validation batches: the second rank's share of the last round is empty, and it must still take part.
    overrides = [*kit.TINY, "data.val_size=68", "train.parallel=fsdp", "train.steps=12", "train.grad_accum=2", "train.log_every=2",
                 "train.eval_every=3", "train.checkpoint_every=6", "train.keep_checkpoints=3"]
    res = torchrun([str(WORKER), str(tmp_path / "fsdp"), "mha,k_eq_v", *overrides])
    assert res.returncode == 0, res.stderr[-3000:]
    single = [o for o in overrides if o != "train.parallel=fsdp"]
    for variant in ("mha", "k_eq_v"):
        one = tmp_path / "one" / variant
        run(compose_config([f"variant={variant}", *single]), one)
        two = tmp_path / "fsdp" / variant
        assert_same_rows(kit.metrics(two), kit.metrics(one))
        assert sorted(p.name for p in (two / "checkpoints").iterdir()) == [
            "final.pt", "final.pt.sum", "step_00000006.dcp", "step_00000012.dcp"]
        assert sorted(p.name for p in (two / "checkpoints" / "step_00000006.dcp").iterdir()) == [
            ".metadata", "__0_0.distcp", "__1_0.distcp", "checksums.json", "state.pt"]
        final, reference = read_checkpoint(two / "checkpoints" / "final.pt"), read_checkpoint(one / "checkpoints" / "final.pt")
        for name, tensor in reference["model"].items():
            assert torch.allclose(final["model"][name], tensor, atol=1e-5), name
        for rank in (0, 1):
            counted = json.loads((tmp_path / "fsdp" / f"{variant}-rank{rank}.json").read_text())
            assert counted["collectives"] == counted["steps"] * counted["groups"], counted
        s = kit.summary(two)
        assert (s["parallel"], s["world_size"], s["batch_per_device"], s["params/total"]) == ("fsdp", 2, 4, kit.summary(one)["params/total"])

    two = tmp_path / "fsdp" / "k_eq_v"
    alone = interrupted_copy(two, tmp_path / "alone" / "k_eq_v", after=6)
    run(compose_config(["variant=k_eq_v", *single]), alone)
    again = interrupted_copy(two, tmp_path / "again" / "k_eq_v", after=6)
    res = torchrun([str(WORKER), str(tmp_path / "again"), "k_eq_v", *overrides])
    assert res.returncode == 0, res.stderr[-3000:]
    for resumed in (alone, again):
        assert_same_rows(kit.metrics(resumed), kit.metrics(two))
        assert math.isclose(kit.summary(resumed)["val/loss"], kit.summary(two)["val/loss"], rel_tol=1e-5)
    assert "resuming from" in res.stdout and "step_00000006.dcp (step 6 of 12)" in res.stdout


def test_each_rank_draws_its_own_dropout_masks(tmp_path):
    """With one stream, every rank would drop the same positions of its slice; rank 0 keeps the one-process stream."""
    cfg = compose_config(["model.dropout=0.1", "logger=none"])
    states = []
    for rank in (0, 1, 0):
        Trainer(cfg, tmp_path, World(rank=rank, size=2))
        states.append(torch.get_rng_state())
    assert torch.equal(states[0], states[2]) and not torch.equal(states[0], states[1])
    Trainer(cfg, tmp_path)
    assert torch.equal(torch.get_rng_state(), states[0])


@pytest.fixture(scope="module")
def process_group(tmp_path_factory):
    """A one-process gloo group: DDP's bookkeeping without a second process."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg') / 'store'}", rank=0, world_size=1)
    yield World(parallel="ddp")
    dist.destroy_process_group()


@pytest.mark.parametrize("variant", sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml")))
def test_every_variant_trains_under_ddp_and_fsdp(variant, process_group, tmp_path):
    """DDP (without find_unused_parameters) fails at the second step when a parameter gets no gradient.
    Under FSDP a family computes what it computes under DDP, its auxiliary losses and what its layers
    hand each other (FSDP's hooks rebuild the containers in a block's arguments) included."""
    cfg = compose_config([f"variant={variant}", "logger=none", "data.batch_size=4", "data.seq_len=16", "train.grad_accum=2",
                          "train.precision=fp32"])
    sharded = Trainer(cfg, tmp_path, World(parallel="fsdp"))
    assert all(isinstance(p, DTensor) for p in sharded.model.parameters())
    want_loss, _ = sharded.train_step(0)
    want_aux = dict(sharded.last_aux)
    trainer = Trainer(cfg, tmp_path, process_group)
    assert trainer.ddp is not None
    for step in range(2):
        loss, finite = trainer.train_step(step)
        if step == 0:
            assert torch.allclose(loss, want_loss, atol=1e-6) and trainer.last_aux.keys() == want_aux.keys()
            assert all(torch.allclose(trainer.last_aux[k], want_aux[k], atol=1e-6) for k in want_aux)


def flip_byte(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def test_a_damaged_shard_is_skipped_like_a_damaged_file(process_group, tmp_path):
    """A sharded checkpoint whose shard lost a bit, or that lacks its manifest, is named and passed over."""
    cfg = compose_config(["logger=none", "data.batch_size=4", "data.seq_len=16", "train.parallel=fsdp", "train.keep_checkpoints=3"])
    trainer = Trainer(cfg, tmp_path, World(parallel="fsdp"))
    saved = []
    for step in range(3):
        trainer.train_step(step)
        trainer.state.step = step + 1
        saved.append(trainer.save())
    assert [p.name for p in saved] == ["step_00000001.dcp", "step_00000002.dcp", "step_00000003.dcp"]
    flip_byte(saved[2] / "__0_0.distcp", 100)
    (saved[1] / "checksums.json").unlink()
    said: list[str] = []
    assert [p for p, _ in good_checkpoints(tmp_path, said.append)] == [saved[0]]
    assert said == [
        f"qkvlab: checkpoint {saved[2]} is corrupt: checksum mismatch (shard __0_0.distcp is damaged); falling back to the previous one",
        f"qkvlab: checkpoint {saved[1]} is unverifiable: its checksum file checksums.json is missing; falling back to the previous one",
    ]
    check_resume(str(saved[0]))  # train.resume= takes a sharded checkpoint's directory too
    cut_short = saved[0].parent / "step_00000004.dcp.tmp"  # a write that a crash cut short
    cut_short.mkdir()
    remove_temporaries(tmp_path)
    assert not cut_short.exists()
    assert clear_checkpoints(tmp_path) == 3 and not any((tmp_path / "checkpoints").iterdir())


def test_fsdp_in_bf16_gathers_bf16_parameters_and_reduces_fp32_gradients(process_group, tmp_path):
    cfg = compose_config(["logger=none", "data.batch_size=4", "data.seq_len=16", "train.parallel=fsdp", "train.precision=bf16"])
    trainer = Trainer(cfg, tmp_path, World(parallel="fsdp"))
    policy = trainer.model.blocks[0]._get_fsdp_state()._mp_policy
    assert (policy.param_dtype, policy.reduce_dtype) == (torch.bfloat16, torch.float32)
    assert bool(trainer.train_step(0)[1])
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # the sharded master weights


def rank_pid(launcher_pid: int, rank: int) -> int:
    """The pid of the worker torchrun started as RANK=`rank`."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            env = dict(v.split(b"=", 1) for v in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0") if b"=" in v)
        except (OSError, ValueError, IndexError):
            continue
        if ppid == launcher_pid and env.get(b"RANK") == str(rank).encode():
            return int(pid)
    raise AssertionError(f"no worker with RANK={rank} under pid {launcher_pid}")


@pytest.mark.slow
def test_sigterm_to_one_rank_stops_every_rank_at_one_step_and_the_printed_torchrun_command_resumes(tmp_path, torchrun, run_command, kit):
    """SIGTERM to rank 1 alone: both ranks stop at the same step boundary (or the next all-reduce would
    hang), rank 0 writes one checkpoint, every rank exits 143, and the printed command, a torchrun
    command, resumes and ends with the metrics of an uninterrupted run."""
    args = [*kit.TINY, "train.steps=150", "train.checkpoint_every=1000"]
    # torchrun polls its workers every 0.1 s and SIGTERMs the rest once one has exited, so a rank that
    # exits 50 ms after the other would never show its own code: poll slowly enough to see both.
    proc = torchrun(["--monitor-interval=5", "-m", "qkvlab", "train", *args, "hydra.run.dir=run"], background=True)
    run_dir = tmp_path / "run"
    kit.wait_for_step(proc, run_dir, 5)
    os.kill(rank_pid(proc.pid, 1), signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    assert err.count("exitcode  : 143") == 2, err[-3000:]  # torchrun itself exits 1 when a worker fails
    (step, path), = step_checkpoints(run_dir)
    assert 5 <= step < 150 and read_checkpoint(path)["step"] == step
    assert kit.summary(run_dir)["status"] == "interrupted"
    hint = [line for line in out.splitlines() if "resume with:" in line]
    assert len(hint) == 1 and f"stopped by SIGTERM at step {step}" in hint[0], out[-3000:]
    command = shlex.split(hint[0].split("resume with: ", 1)[1])
    assert command[:3] == ["python", "-m", "torch.distributed.run"] and "--nproc_per_node=2" in command, command
    assert command[-1] == f"hydra.run.dir={run_dir.resolve()}"

    resumed = run_command([sys.executable, *command[1:]], env_extra=kit.ENV)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming from {path}" in resumed.stdout
    run(compose_config(args), tmp_path / "one")
    assert_same_rows(kit.metrics(run_dir), kit.metrics(tmp_path / "one"))
    assert kit.summary(run_dir)["status"] == "completed" and kit.summary(run_dir)["world_size"] == 2

"""One training run from a validated config to a complete run directory.

Whatever happens, the run directory ends with a summary.json whose `status`
says how the run ended (completed, interrupted: resumable, failed: with the
error line), and its W&B run is finished.

In a DDP job (qkvlab/train/distributed.py) every rank trains, and rank 0
alone writes: run.json, summary.json, metrics.jsonl, checkpoints and W&B. It
also picks the checkpoint to resume from (and rewinds the directory to it);
the other ranks load that same file. Under FSDP every rank also writes its
shards of each step checkpoint, and the ranks load the chosen checkpoint's
weights together once rank 0 has chosen it (`Trainer.load_weights`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from qkvlab.errors import error_line
from qkvlab.files import write_json_atomic
from qkvlab.config import Config, as_dict
from qkvlab.track.metrics import MetricsWriter
from qkvlab.track.wandb_sink import WandbSink, resolve_mode
from qkvlab.train.loop import RunInfo, Trainer, base_summary, config_record
from qkvlab.runname import wandb_labels
from qkvlab.train.checkpoint import read_checkpoint
from qkvlab.train.distributed import SINGLE, World
from qkvlab.train.resume import new_run_id, read_run_file, restore, write_run_file
from qkvlab.train.signals import Preempted, StopRequest


def make_sinks(
    cfg: Config, run_dir: Path, info: RunInfo, run_id: str | None = None, overrides: Sequence[str] = (), in_sweep: bool = False
) -> list:
    """`overrides`: the job's command-line and sweep overrides, which name and tag its W&B run; in a sweep
    the upload command is said once at the end (qkvlab/train/sweep_report.py), not by every job."""
    mode = resolve_mode(cfg.logger)
    if mode == "disabled":
        return []
    name, tags = wandb_labels(as_dict(cfg), overrides)
    try:
        return [
            WandbSink(
                cfg.logger,
                run_dir,
                name=name,
                group=cfg.logger.group or cfg.name,
                job_type=cfg.variant.name,
                config=config_record(cfg, info),
                mode=mode,
                run_id=run_id,
                tags=tags,
                announce_offline=not in_sweep,
            )
        ]
    except Exception as exc:  # W&B is a view; metrics.jsonl keeps everything
        print(f"qkvlab: W&B could not start ({error_line(exc)}); continuing with metrics.jsonl only", flush=True)
        return []


def status_of(exc: BaseException) -> str:
    return "interrupted" if isinstance(exc, (KeyboardInterrupt, Preempted)) else "failed"


class NoWriter:
    """What ranks other than 0 log to: nothing."""

    def log(self, step: int, tokens: int, metrics: dict[str, float]) -> None:
        pass

    def summary(self, summary: dict[str, Any]) -> None:
        pass

    def close(self, failed: bool = False) -> None:
        pass


def run(
    cfg: Config, run_dir: Path, identity: dict[str, Any] | None = None, overrides: Sequence[str] = (), in_sweep: bool = False,
    world: World = SINGLE,
) -> dict[str, Any]:
    """Train (or continue training) in `run_dir`; SIGTERM/SIGINT end it at a step boundary with `Preempted`.

    `identity` (the config's hash and values) goes into run.json, and summary.json
    says `running`, before restore() removes or rewinds anything: a run killed
    after that never leaves a directory that claims a result it no longer holds."""
    run_dir = Path(run_dir)
    if not world.is_main:
        return follow(cfg, run_dir, world)
    trainer: Trainer | None = None
    writer: MetricsWriter | None = None
    meta = read_run_file(run_dir)  # before anything is written: a directory from another version stays as it is
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.train.resume == "never" or "wandb_id" not in meta:
        meta = {**meta, "wandb_id": new_run_id()}
    write_run_file(run_dir, {**meta, **(identity or {})})
    write_json_atomic(run_dir / "summary.json", {**base_summary(cfg, None), "status": "running"})
    try:
        with StopRequest(world) as stop:
            trainer = Trainer(cfg, run_dir, world)
            world.from_main(lambda: restore(trainer, run_dir))
            trainer.load_weights()
            writer = MetricsWriter(run_dir, make_sinks(cfg, run_dir, trainer.info, meta["wandb_id"], overrides, in_sweep))
            result = trainer.fit(writer, stop)
        summary = {**base_summary(cfg, trainer.info), **result, "status": "completed"}
        writer.summary(summary)
        writer.close()
        print_summary(summary, run_dir)
        return summary
    except BaseException as exc:
        summary = {**base_summary(cfg, trainer.info if trainer else None), "status": status_of(exc), "error": error_line(exc)}
        if trainer is not None:
            summary["step"] = trainer.state.step
        writer = writer or MetricsWriter(run_dir)
        writer.summary(summary)
        writer.close(failed=True)
        raise


def follow(cfg: Config, run_dir: Path, world: World) -> dict[str, Any]:
    """A rank other than 0: train in step with rank 0, from the checkpoint it chose, writing nothing.
    A signal to this rank stops every rank at the same step boundary (StopRequest's vote)."""
    with StopRequest(world) as stop:
        trainer = Trainer(cfg, run_dir, world)
        chosen = world.from_main(lambda: None)
        if chosen is not None:
            trainer.load_state_dict(read_checkpoint(chosen), chosen)
        trainer.load_weights()
        return trainer.fit(NoWriter(), stop)


def _fmt_int(n: int) -> str:
    return f"{n:,}"


def _vs_mha(reduction: float) -> str:
    """A family can cache more than mha (loop attention caches both passes): say so, not "-100% less"."""
    return f"{100 * reduction:.1f}% less than mha" if reduction >= 0 else f"{-100 * reduction:.1f}% more than mha"


def _distilled(s: dict[str, Any]) -> str:
    """The teacher a distilled run learned from, and its last training window's terms (val loss is plain CE)."""
    crc = s.get("distill/teacher_crc32")
    terms = "   ".join(f"train {k} {s[f'train/{k}']:.4f}" for k in ("ce", "kl") if s.get(f"train/{k}") is not None)
    # With distill.alpha=1 the teacher never runs (no KL is logged): the run is plain training.
    verb = "distilled from" if s.get("train/kl") is not None else "teacher not run (distill.alpha=1: plain training):"
    return (f"  {verb} {s['distill/teacher']} (run id {s.get('distill/teacher_run_id')}, "
            f"final checkpoint CRC32 {crc:08x})" + (f"   {terms}" if terms else ""))


def print_summary(s: dict[str, Any], run_dir: Path) -> None:
    lines = [
        f"qkvlab: {s['variant']} on {s['data']} (model {s['model']}, seed {s['seed']}) finished {s['step']} steps, {_fmt_int(s['tokens'])} tokens in {s['wall_time_s']:.1f}s",
        f"  val loss {s['val/loss']:.4f}   val ppl {s['val/ppl']:.4f}   val acc {100 * s['val/acc']:.2f}%"
        + (f"   exact match {100 * s['val/exact_match']:.2f}%" if "val/exact_match" in s else ""),
        f"  params {_fmt_int(s['params/total'])} (attention {_fmt_int(s['params/attention'])})   "
        f"KV cache {_fmt_int(s['kv_cache/bytes_per_token'])} B/token ({s['precision']}, "
        f"{_vs_mha(s['kv_cache/reduction_vs_mha'])})   {_fmt_int(round(s['throughput/tokens_per_s']))} tokens/s",
        *([f"  {s['precision_reason']}"] if s.get("precision_reason") else []),
        *([f"  parallel={s['parallel']} over {s['world_size']} processes: global batch "
           f"{s['world_size'] * s['batch_per_device']}, {s['batch_per_device']} rows per process"] if s.get("world_size", 1) > 1 else []),
        *([_distilled(s)] if s.get("distill/teacher") else []),
        *([f"  started from {s['init_from/path']} ({s['init_from/variant']}"
           + (f", convert.alpha={s['convert/alpha']})" if "convert/alpha" in s else ")")] if "init_from/path" in s else []),
        f"  run dir {run_dir}",
    ]
    print("\n".join(lines), flush=True)

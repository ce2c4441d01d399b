"""The Hydra job: one composed config in, one run directory out.

Run directories are content-addressed (qkvlab/runname.py), so a job whose
directory already holds a completed summary is skipped, and any other job
resumes there (train.resume=auto): re-running a sweep only does the work that
is missing. A directory named by hand (hydra.run.dir=...) is never skipped:
its name does not say which config completed there.

A job first takes the run directory's lock (qkvlab/runlock.py), then checks
that the directory was trained with the same config (run.json records its
hash), and only then writes anything, .hydra/ included.

Exit codes of `qkvlab train` (a single run):
  0    completed
  1    failed while training (the error line is in summary.json)
  2    bad input: config, paths, a checkpoint that does not fit
  3    diverged: non-finite loss or gradients beyond train.on_nonfinite
  130  stopped by SIGINT, 143 by SIGTERM: a checkpoint was written; the
       printed command resumes the run (under torchrun, a torchrun command)
  140  stopped by submitit's SIGUSR2 where submitit did not requeue the job
       (it says why); where it did, the task exits as submitit makes it
In a sweep (-m) a failing job does not stop the others; the sweep ends with a
table of the jobs that did not complete and exits 1 if there were any.

Under torchrun (train.parallel=auto|ddp|fsdp) every rank runs this job. Rank 0
takes the lock and makes every decision above; the other ranks wait for its
go (qkvlab/train/distributed.py Gate), train in step with it, and stop with
its exit code without repeating its messages. A signal to any rank stops every
rank at the same step (qkvlab/train/signals.py); the others leave only after
rank 0 has checkpointed, printed the resume command and, under submitit,
requeued the job (qkvlab/train/cluster.py).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from qkvlab.runname import config_diff, config_hash, hashed_values, job_config, run_id  # also registers ${qkvlab_run_id:}
from qkvlab.checks import checked
from qkvlab.config import describe_error
from qkvlab.errors import EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_FAILED, ConfigError, error_line, fail, full_errors
from qkvlab.rundir import load_run
from qkvlab.track.metrics import MetricsWriter
from qkvlab.train.signals import Preempted, exit_code
from qkvlab.runlock import RunDirBusy, hold
from qkvlab.train.sweep_report import record_refused, sweep_failed

# Overrides the resume command must not repeat: it names the directory itself and resumes from it.
_DROPPED = ("hydra.run.dir=", "hydra.sweep.dir=", "train.resume=", "+train.resume=", "++train.resume=")


def resume_command(run_dir: Path, multirun: bool) -> str:
    """The command line that continues this run (or this sweep) where it stopped: under torchrun, a
    torchrun command with the options it was started with."""
    from qkvlab.train.cluster import quoted, resume_prefix

    args = [a for a in launched_args() if not a.startswith(_DROPPED)]
    if multirun:
        args.append(f"hydra.sweep.dir={Path(HydraConfig.get().sweep.dir).resolve()}")
    else:
        args.append(f"hydra.run.dir={run_dir.resolve()}")
    return quoted([*resume_prefix(sys.argv[1:]), *args])


def launched_args() -> list[str]:
    """`qkvlab train`'s arguments. A submitit task's own are submitit's: there they are the job's overrides,
    with the launcher's, as a sweep of one job that the launcher sends to the same sweep directory."""
    if os.environ.get("SUBMITIT_EXECUTOR"):
        given = HydraConfig.get().overrides
        return ["-m", *(a for a in given.hydra if not a.startswith("hydra.mode=")), *given.task]
    return sys.argv[1:]


def classify(exc: BaseException, run_dir: Path) -> tuple[int, str]:
    """Exit code and the one line that says what went wrong."""
    from qkvlab.train.checkpoint import CheckpointWriteError
    from qkvlab.train.loop import Diverged

    if isinstance(exc, ConfigError):
        return EXIT_BAD_INPUT, str(exc)
    if isinstance(exc, Diverged):
        return EXIT_DIVERGED, str(exc)
    if isinstance(exc, CheckpointWriteError):
        return EXIT_FAILED, str(exc)
    return EXIT_FAILED, f"{error_line(exc)} (run directory {run_dir}; HYDRA_FULL_ERROR=1 shows the traceback)"


class JobResult(dict):
    """A run's summary. Hydra's Optuna sweeper minimises `float(result)`: the final val loss."""

    def __float__(self) -> float:
        return float(self.get("val/loss", float("nan")))


def train_job(cfg: DictConfig) -> JobResult | None:
    from qkvlab.train.cluster import adopt_submitit_tasks
    from qkvlab.train.distributed import Gate, session  # torch loads here, not for --help/--cfg

    adopt_submitit_tasks()
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    with session(cfg.train.parallel, cfg.train.device) as world:
        if not world.is_main:
            return follow_job(cfg, run_dir, multirun, world)
        with Gate(world) as gate:
            try:
                lock = hold(run_dir)
            except RunDirBusy as exc:
                return job_refused(run_dir, multirun, "busy", str(exc))
            with lock:
                return _train_job(cfg, run_dir, multirun, world, gate)


def follow_job(cfg: DictConfig, run_dir: Path, multirun: bool, world) -> None:
    """A rank other than 0: wait for rank 0's go, train, and leave with the code rank 0 leaves with.
    Rank 0 prints what went wrong; this rank speaks only of a failure of its own."""
    from qkvlab.train.cluster import leave_together
    from qkvlab.train.distributed import GO, PeerFailed
    from qkvlab.train.loop import Diverged
    from qkvlab.train.run import run

    code = world.wait_for_go()
    if code != GO:
        if code and not multirun:
            raise SystemExit(code)
        return None
    try:
        run(checked(cfg), run_dir, world=world)
        return None
    except Preempted as exc:
        code = exit_code(exc.signum)
        leave_together(world)
    except KeyboardInterrupt:
        code = 130
    except PeerFailed:
        code = EXIT_FAILED
    except (ConfigError, Diverged) as exc:  # every rank meets these alike; rank 0 reports them
        code = classify(exc, run_dir)[0]
    except Exception as exc:
        if full_errors():
            raise
        code, line = classify(exc, run_dir)
        print(f"qkvlab: error: rank {world.rank}: {line}", file=sys.stderr, flush=True)
    if multirun:
        return None
    raise SystemExit(code)


def _train_job(cfg: DictConfig, run_dir: Path, multirun: bool, world, gate) -> JobResult | None:
    """The job, once this process holds the run directory."""
    from qkvlab.train.resume import read_run_file
    from qkvlab.train.run import run  # torch loads here, not for --help/--cfg

    config = job_config(cfg)
    try:
        meta = read_run_file(run_dir)
    except ConfigError as exc:
        return job_refused(run_dir, multirun, "refused", str(exc))
    identity = {"config_hash": config_hash(config), "config": hashed_values(config)}
    stored = meta.get("config_hash", identity["config_hash"])
    if stored != identity["config_hash"] and cfg.train.resume != "never" and holds_results(run_dir):
        diffs = config_diff(meta.get("config") or {}, identity["config"]) or [f"config hash {meta['config_hash']} -> {identity['config_hash']}"]
        return job_refused(
            run_dir, multirun, "refused",
            f"{run_dir} was trained with a different config: {', '.join(diffs)}; "
            "use a new directory, or train.resume=never to start it afresh with this config",
        )
    save_hydra_files(run_dir, cfg)
    previous = load_run(run_dir)
    if previous.unreadable:
        print(f"qkvlab: {previous.unreadable.split(';')[0]}; treating the run as unfinished", flush=True)
    if previous.finished and run_dir.name == run_id(config) and cfg.train.resume != "never":
        print(f"skipped, already completed: {run_dir} (to train it again from scratch, add train.resume=never)", flush=True)
        return JobResult(previous.summary)
    try:
        typed = checked(cfg)
    except Exception as exc:
        if full_errors():
            raise
        return job_failed(run_dir, multirun, EXIT_BAD_INPUT, describe_error(exc))
    gate.open()
    try:
        return JobResult(run(typed, run_dir, identity, list(HydraConfig.get().overrides.task), multirun, world))
    except Preempted as exc:
        from qkvlab.train.cluster import leave_together, requeue

        name = signal.Signals(exc.signum).name
        print(
            f"qkvlab: stopped by {name} at step {exc.step}, checkpoint {exc.checkpoint}; "
            f"resume with: {resume_command(run_dir, multirun)}",
            flush=True,
        )
        try:
            refused = requeue(exc.signum)
            if refused:
                print(f"qkvlab: submitit did not requeue the job: {refused}", flush=True)
        finally:
            leave_together(world)
        raise SystemExit(exit_code(exc.signum))
    except KeyboardInterrupt:
        fail(f"interrupted without a checkpoint; the run directory {run_dir} says status: interrupted", code=130)
    except Exception as exc:
        if full_errors():
            raise
        return job_failed(run_dir, multirun, *classify(exc, run_dir))


def holds_results(run_dir: Path) -> bool:
    """Whether a run directory has trained anything (rows or checkpoints) that a new config would relabel."""
    metrics = run_dir / "metrics.jsonl"
    return (metrics.exists() and metrics.stat().st_size > 0) or any((run_dir / "checkpoints").glob("*.pt"))


def save_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """.hydra/{config,hydra,overrides}.yaml, written once the job holds the directory and accepted its config.

    Hydra would write them before the job starts (qkvlab/conf/config.yaml sets
    hydra.output_subdir to null), over the config of a run that another process
    is training, or of a finished run that another config is then refused from."""
    from hydra.core.utils import _save_config

    folder = run_dir / ".hydra"
    _save_config(cfg, "config.yaml", folder)
    _save_config(HydraConfig.instance().cfg, "hydra.yaml", folder)
    _save_config(HydraConfig.get().overrides.task, "overrides.yaml", folder)


def job_failed(run_dir: Path, multirun: bool, code: int, line: str) -> None:
    """A single run exits with `code`; a sweep job records the failure and lets the sweep go on."""
    if not multirun:
        fail(line, code)
    if not (run_dir / "summary.json").exists():
        writer = MetricsWriter(run_dir)
        writer.summary({"status": "failed", "error": line})
        writer.close(failed=True)
    print(f"qkvlab: error: job failed: {line}", file=sys.stderr, flush=True)


def job_refused(run_dir: Path, multirun: bool, status: str, line: str) -> None:
    """A job that must not write its run directory at all: exit 2, or in a sweep a note for the final table."""
    if not multirun:
        fail(line)
    record_refused(Path(HydraConfig.get().sweep.dir), run_dir, status, line)
    print(f"qkvlab: error: job {status}: {line}", file=sys.stderr, flush=True)


def hydra_main(config_path: str) -> None:
    hydra.main(version_base="1.3", config_path=config_path, config_name="config")(train_job)()
    if sweep_failed():
        raise SystemExit(EXIT_FAILED)

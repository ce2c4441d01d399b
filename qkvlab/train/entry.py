"""The Hydra job: one composed config in, one run directory out.

Run directories are content-addressed (qkvlab/runname.py), so a job whose
directory already holds a completed summary is skipped: re-running a sweep
only does the work that is missing.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import qkvlab.runname  # noqa: F401  registers ${qkvlab_run_id:} in every launcher's job process
from qkvlab.cli import describe_error, fail, full_errors
from qkvlab.config import ConfigError, to_typed
from qkvlab.rundir import load_run


class JobResult(dict):
    """A run's summary. Hydra's Optuna sweeper minimises `float(result)`: the final val loss."""

    def __float__(self) -> float:
        return float(self.get("val/loss", float("nan")))


def train_job(cfg: DictConfig) -> JobResult:
    from qkvlab.train.run import error_line, run  # torch loads here, not for --help/--cfg

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    previous = load_run(run_dir)
    if previous.finished:
        print(f"skipped, already completed: {run_dir}", flush=True)
        return JobResult(previous.summary)
    try:
        typed = to_typed(cfg)
    except Exception as exc:
        if full_errors():
            raise
        fail(describe_error(exc))
    try:
        return JobResult(run(typed, run_dir))
    except KeyboardInterrupt:
        fail(f"interrupted; the run directory {run_dir} says status: interrupted", code=130)
    except ConfigError as exc:
        fail(str(exc))
    except Exception as exc:
        if full_errors():
            raise
        fail(f"{error_line(exc)} (run directory {run_dir}; HYDRA_FULL_ERROR=1 shows the traceback)", code=1)


def hydra_main(config_path: str) -> None:
    hydra.main(version_base="1.3", config_path=config_path, config_name="config")(train_job)()

"""The Hydra job: one composed config in, one run directory out."""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from qkvlab.cli import describe_error, fail, full_errors
from qkvlab.config import ConfigError, to_typed


def train_job(cfg: DictConfig) -> dict:
    from qkvlab.train.run import error_line, run  # torch loads here, not for --help/--cfg

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        typed = to_typed(cfg)
    except Exception as exc:
        if full_errors():
            raise
        fail(describe_error(exc))
    try:
        return run(typed, run_dir)
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

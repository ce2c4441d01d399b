"""`hydra/launcher=joblib` with each job in a process of its own.

Joblib's loky pool treats a worker that dies (the out-of-memory killer's
SIGKILL) as a broken pool: it SIGKILLs every other worker, mid-step and
without a checkpoint, and the sweep ends in a traceback. Here a loky worker
only supervises: it starts the job in a fresh process and waits. When that
process is killed, the worker survives, records the job as failed in its run
directory (so the sweep's failure table shows it, and a re-run resumes it),
and the pool, with the jobs beside it, goes on.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

from hydra.core.singleton import Singleton
from hydra.core.utils import JobReturn, JobStatus, configure_log, setup_globals
from omegaconf import OmegaConf, open_dict

from qkvlab.config import register_configs
from qkvlab.errors import ConfigError

try:
    from hydra_plugins.hydra_joblib_launcher import _core
    from joblib import Parallel, delayed
    import cloudpickle
except ImportError as exc:  # the launcher plugin is the optional extra qkvlab[sweep]
    raise ConfigError("hydra/launcher=joblib needs the joblib launcher plugin: pip install 'qkvlab[sweep]'") from exc

register_configs()  # in the pool's workers and the jobs' processes too: the schema, and its warning filter


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
    """As the joblib plugin launches (loky, the same joblib.Parallel keys), each job supervised."""
    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    Path(str(launcher.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
    joblib_cfg = dict(launcher.joblib)
    joblib_cfg["backend"] = "loky"
    _core.process_joblib_cfg(joblib_cfg)
    state = Singleton.get_state()
    return Parallel(**joblib_cfg)(
        delayed(supervise)(initial_job_idx + i, overrides, launcher.hydra_context, launcher.config, launcher.task_function, state)
        for i, overrides in enumerate(job_overrides)
    )


def supervise(idx: int, overrides: Sequence[str], hydra_context, config, task_function, state) -> JobReturn:
    """Run one job in a child process; a job killed by a signal becomes a failed job, not a broken pool."""
    with tempfile.TemporaryDirectory(prefix="qkvlab-job-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(cloudpickle.dumps((idx, overrides, hydra_context, config, task_function, state)))
        code = subprocess.call([sys.executable, "-c", "from qkvlab.train.launcher import run_child; run_child()", str(job), str(result)])
        message = cloudpickle.loads(result.read_bytes()) if result.exists() else None
    if message is None:
        return _killed(idx, overrides, hydra_context, config, state, code)
    kind, value = message
    if kind == "exit":
        raise SystemExit(value)
    if kind == "error":
        raise value
    return value


def run_child() -> None:
    """The job's own process: Hydra's joblib job runner, its outcome pickled for the supervisor."""
    job, result = (Path(p) for p in sys.argv[1:3])
    idx, overrides, hydra_context, config, task_function, state = cloudpickle.loads(job.read_bytes())
    try:
        message: tuple[str, Any] = ("return", _core.execute_job(idx, overrides, hydra_context, config, task_function, state))
    except SystemExit as exc:
        message = ("exit", exc.code)
    except BaseException as exc:  # noqa: BLE001 - re-raised in the supervisor
        message = ("error", exc)
    try:
        payload = cloudpickle.dumps(message)
    except Exception as exc:  # an unpicklable result or error: say what it was
        payload = cloudpickle.dumps(("error", RuntimeError(f"job {idx} ended with a {message[0]} that cannot be sent back: {exc}")))
    result.write_bytes(payload)
    if message[0] == "exit":
        raise SystemExit(message[1])


def _killed(idx: int, overrides: Sequence[str], hydra_context, config, state, exitcode: int) -> JobReturn:
    from hydra.core.hydra_config import HydraConfig

    from qkvlab.files import write_json_atomic
    import qkvlab.runname  # noqa: F401 - resolves ${qkvlab_run_id:} in the job's directory name

    setup_globals()
    Singleton.set_state(state)
    job_cfg = hydra_context.config_loader.load_sweep_config(config, list(overrides))
    with open_dict(job_cfg):
        job_cfg.hydra.job.id, job_cfg.hydra.job.num = f"{job_cfg.hydra.job.name}_{idx}", idx
    HydraConfig.instance().set_config(job_cfg)
    run_dir = Path(str(OmegaConf.select(job_cfg, "hydra.sweep.dir"))) / str(OmegaConf.select(job_cfg, "hydra.sweep.subdir"))
    how = f"was killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exited with code {exitcode} without a result"
    line = (
        f"the job's process {how} (the out-of-memory killer sends SIGKILL); "
        "re-run the sweep to resume it from its last checkpoint"
    )
    if run_dir.is_dir():
        write_json_atomic(run_dir / "summary.json", {"status": "failed", "error": line})
    print(f"qkvlab: error: job failed: {run_dir}: {line}", file=sys.stderr, flush=True)
    ret = JobReturn(overrides=list(overrides), cfg=job_cfg, hydra_cfg=job_cfg, working_dir=str(run_dir))
    ret.status, ret.return_value = JobStatus.COMPLETED, None
    return ret

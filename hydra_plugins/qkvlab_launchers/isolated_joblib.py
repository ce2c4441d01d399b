"""Hydra finds launchers only under `hydra_plugins`; the work is in qkvlab/train/launcher.py.

Hydra imports every module here at start-up, so this one stays cheap and does
not fail when the joblib plugin (the extra qkvlab[sweep]) is absent."""

from __future__ import annotations

from typing import Any, Sequence

from hydra.plugins.launcher import Launcher

try:
    from hydra_plugins.hydra_joblib_launcher.joblib_launcher import JoblibLauncher as _Base
except ImportError:  # launch() says what to install
    _Base = Launcher


class IsolatedJoblibLauncher(_Base):  # type: ignore[misc, valid-type]
    def __init__(self, **kwargs: Any) -> None:
        self.config = self.task_function = self.hydra_context = None
        self.joblib = kwargs

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config, self.task_function, self.hydra_context = config, task_function, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int):
        from qkvlab.train.launcher import launch

        return launch(self, job_overrides, initial_job_idx)

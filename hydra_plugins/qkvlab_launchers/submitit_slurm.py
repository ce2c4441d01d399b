"""`hydra/launcher=submitit_slurm` as qkvlab ships it (qkvlab/conf/hydra/launcher/submitit_slurm.yaml):
the plugin's SLURM launcher, unchanged, which says what to install when the plugin is absent."""

from __future__ import annotations

from typing import Any

from hydra.plugins.launcher import Launcher

try:
    from hydra_plugins.hydra_submitit_launcher.submitit_launcher import SlurmLauncher as _Base
except ImportError:  # __init__ says what to install
    _Base = None


class SlurmLauncher(_Base or Launcher):  # type: ignore[misc]
    def __init__(self, **params: Any) -> None:
        if _Base is None:
            from qkvlab.errors import ConfigError

            raise ConfigError("hydra/launcher=submitit_slurm needs the submitit launcher plugin: pip install 'qkvlab[sweep]'")
        super().__init__(**params)

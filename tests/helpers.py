"""Builders shared by tests: typed configs composed exactly as the CLI composes them."""

from __future__ import annotations

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from qkvlab.cli import CONF_DIR
from qkvlab.config import Config, register_configs, to_typed


def make_config(*overrides: str) -> Config:
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_typed(compose("config", overrides=list(overrides)))

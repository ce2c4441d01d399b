"""A config that every part has checked: the schema and cross-field rules
(config.py), the data source's own settings (data) and the attention family
(model). Each part owns its checks; this module only runs them all, so that
config.py need not import the parts it configures."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig

from qkvlab.config import CONF_DIR, Config, register_configs, to_typed
from qkvlab.data import check_data
from qkvlab.model import check_model
from qkvlab.model.kv_decode import check_policy


def checked(cfg: DictConfig | Config) -> Config:
    """A typed config that has passed every check; a bad one raises ConfigError (one line)."""
    typed = to_typed(cfg)
    check_model(typed)
    check_data(typed)
    check_policy()
    return typed


def compose_config(overrides: Sequence[str]) -> Config:
    """One typed, validated config from conf/ and overrides, as `train` would compose it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="compose"):
            return checked(compose("config", overrides=list(overrides)))
    finally:
        GlobalHydra.instance().clear()

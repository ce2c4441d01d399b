"""Builders shared by tests: typed configs composed exactly as the CLI composes them."""

from __future__ import annotations

from qkvlab.checks import compose_config
from qkvlab.config import Config


def make_config(*overrides: str) -> Config:
    return compose_config(overrides)

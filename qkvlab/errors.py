"""The error vocabulary every layer speaks: a bad input is a `ConfigError` whose
message is one line naming the key, file or value and what to change.

It sits at the bottom of the package and imports nothing from it, so any
layer can raise or print an error without importing the CLI."""

from __future__ import annotations

import os
import sys
from typing import NoReturn

EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED = 1, 2, 3


class ConfigError(ValueError):
    """A bad user input; the message is one line that names the key and the fix."""


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """Under torchrun every rank meets the same bad input: rank 0 says it, once for the job."""
    if os.environ.get("RANK", "0") in ("", "0"):
        print(f"qkvlab: error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code)


def error_line(exc: BaseException, limit: int | None = None) -> str:
    """`Type: first line of the message` (cut at `limit` characters): a failure in one line."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:limit]}" if text else type(exc).__name__


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"

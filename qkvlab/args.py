"""Option parsing for the commands that are not Hydra's: a bad option is one
line and exit 2, like every other bad input, not argparse's usage block."""

from __future__ import annotations

import argparse
from typing import NoReturn

from qkvlab.errors import fail


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: {message} (see {self.prog} --help)")


def context_list(text: str) -> tuple[int, ...]:
    """Context lengths as `512,1024` (or space-separated); each at least 2 tokens."""
    try:
        values = tuple(int(x) for x in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one context length, e.g. 512,1024")
    short = [v for v in values if v < 2]
    if short:
        raise argparse.ArgumentTypeError(f"context length {short[0]} is below 2; give lengths of 2 tokens or more")
    return values

"""Started by tests/train/test_distributed.py under torchrun (not a test itself).

Trains each variant named on the command line with DDP, every rank given a run directory of its
own (so whatever a rank other than 0 writes would show), and counts the gradient all-reduces
with a DDP communication hook wrapped around the default one.

usage: ddp_worker.py OUT VARIANTS OVERRIDE...
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from qkvlab.checks import compose_config
from qkvlab.train.distributed import World, session
from qkvlab.train.run import run

CALLS = [0]


class CountingWorld(World):
    def wrap(self, model, device):
        ddp = super().wrap(model, device)

        def hook(state, bucket):
            CALLS[0] += 1
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp


def main(out: Path, variants: str, overrides: list[str]) -> None:
    with session("ddp", "cpu") as world:
        counting = CountingWorld(**dataclasses.asdict(world))
        for variant in variants.split(","):
            CALLS[0] = 0
            cfg = compose_config([f"variant={variant}", *overrides])
            run(cfg, out / variant / f"rank{world.rank}", world=counting)
            record = {"all_reduces": CALLS[0], "steps": cfg.train.steps}
            (out / f"{variant}-rank{world.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])

"""Started by tests/train/test_distributed.py under torchrun (not a test itself).

Trains each variant named on the command line with DDP, or with FSDP when the overrides say
train.parallel=fsdp, and counts the gradient collectives: DDP's all-reduces with a communication
hook wrapped around the default one, FSDP's reduce-scatters by wrapping the call it makes. Under
DDP every rank gets a run directory of its own (so whatever a rank other than 0 writes would show);
under FSDP the ranks share one, as every rank writes its shards of each checkpoint there.

usage: ddp_worker.py OUT VARIANTS OVERRIDE...
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

from qkvlab.checks import compose_config
from qkvlab.train.distributed import World, session
from qkvlab.train.run import run

CALLS = [0]


class CountingWorld(World):
    def wrap(self, model, device, precision="fp32"):
        ddp = super().wrap(model, device, precision)
        if ddp is None:
            return None

        def hook(state, bucket):
            CALLS[0] += 1
            return allreduce_hook(state, bucket)

        ddp.register_comm_hook(None, hook)
        return ddp


def count_reduce_scatters() -> None:
    reduce_scatter = dist.reduce_scatter_single

    def counted(*args, **kwargs):
        CALLS[0] += 1
        return reduce_scatter(*args, **kwargs)

    dist.reduce_scatter_single = counted


def main(out: Path, variants: str, overrides: list[str]) -> None:
    parallel = "fsdp" if "train.parallel=fsdp" in overrides else "ddp"
    with session(parallel, "cpu") as world:
        counting = CountingWorld(**dataclasses.asdict(world))
        if world.sharded:
            count_reduce_scatters()
        for variant in variants.split(","):
            CALLS[0] = 0
            cfg = compose_config([f"variant={variant}", *overrides])
            run(cfg, out / variant if world.sharded else out / variant / f"rank{world.rank}", world=counting)
            # FSDP reduces once per group: each block, and the root.
            record = {"collectives": CALLS[0], "steps": cfg.train.steps, "groups": cfg.model.n_layers + 1 if world.sharded else 1}
            (out / f"{variant}-rank{world.rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])

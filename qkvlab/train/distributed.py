"""Training in several processes: torch.distributed DDP or FSDP2, launched by torchrun.

torchrun starts one process per device and tells each its RANK, LOCAL_RANK and
WORLD_SIZE in the environment (PyTorch, "torchrun (Elastic Launch)"). `session`
reads them, sets up the process group (gloo on CPU, NCCL on CUDA) and tears it
down, and hands the rest of qkvlab a `World`: which rank this is and the few
collective steps training needs. A single process gets `SINGLE`, whose steps
do nothing, so a one-process run runs the code it ran before.

The global batch means the same at any world size. The data source draws the
batch of (seed, step, micro-step) for the whole job, and rank r trains on rows
[r·b/W, (r+1)·b/W) of it (`World.shard`, the one place that slices). DDP
averages gradients over ranks; every task scores the same number of positions
in each row, so the mean of the ranks' mean losses is the mean over the global
batch, and W processes take the steps one process takes with the same
data.batch_size (up to float rounding). Under gradient accumulation the
gradients are all-reduced once per optimizer step, on the last micro-step
(`DistributedDataParallel.no_sync` on the others), not after every backward.

`train.parallel=fsdp` shards instead of replicating (PyTorch tutorial "Getting Started
with Fully Sharded Data Parallel (FSDP2)", and the MixedPrecisionPolicy docstring;
torchtitan's parallelize step wraps the same way): `fully_shard` on each block, then on
the whole model, so a block's parameters are gathered just before it runs and
freed after, and the root group holds the embedding table, the final norm and
the head (a tied head is the table itself, one parameter, so it stays tied).
Gradients are reduce-scattered and AdamW keeps only this rank's shard of its
moments. Under accumulation `set_requires_gradient_sync(False)` skips the
reduce-scatter on every micro-step but the last, as `no_sync` does for DDP.
Gradients are DTensors: the norm for clipping is reduced over the shards
before any gradient is scaled (`grad_norm_`). With train.precision=bf16 the
policy is `MixedPrecisionPolicy(param_dtype=bfloat16, reduce_dtype=float32)`:
parameters are gathered in bf16 (half the traffic) and gradients reduced in
fp32, while the sharded master weights and the optimizer stay fp32. The loop's
bf16 autocast stays on as under DDP, so the numerically touchy operations it
keeps in fp32 (softmax, norms, the loss) stay in fp32: the policy decides what
travels, autocast what each operation computes in. Evaluation runs the ranks
in lockstep, because each forward gathers parameters from every rank.

Only rank 0 writes the run directory. It takes the run directory's lock and
decides whether the job trains (`Gate`); the other ranks wait for that
decision, so none starts before rank 0 holds the directory and none hangs
when it does not train.
"""

from __future__ import annotations

import contextlib
import inspect
import os
from dataclasses import dataclass
from typing import Callable, Iterator, Mapping, Optional, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from qkvlab.config import Config
from qkvlab.data.source import Batch
from qkvlab.errors import ConfigError
from qkvlab.train.device import pick_device

T = TypeVar("T")
# The parallelisms that run several processes.
SHARING = ("ddp", "fsdp")
# What the gate sends for "train": any other value is the exit code rank 0 stopped with.
GO = -1


class PeerFailed(RuntimeError):
    """Rank 0 failed where every rank waited for it; rank 0 says why, this rank only stops."""


def env_world_size(env: Mapping[str, str] = os.environ) -> Optional[int]:
    """WORLD_SIZE as torchrun sets it, or None outside torchrun."""
    value = env.get("WORLD_SIZE")
    return int(value) if value and value.isdigit() else None


def resolve_parallel(parallel: str, env: Mapping[str, str] = os.environ) -> str:
    """`auto` is ddp under a launcher that started more than one process, none otherwise."""
    if parallel == "auto":
        return "ddp" if (env_world_size(env) or 1) > 1 else "none"
    return parallel


def check_parallel(cfg: Config, env: Mapping[str, str] = os.environ) -> None:
    """The start-up checks that need the launcher's environment; one line each."""
    t, d = cfg.train, cfg.data
    world = env_world_size(env)
    if t.parallel == "ddp" and world is None:
        raise ConfigError(
            "train.parallel=ddp needs torchrun, which sets WORLD_SIZE (it is not set); launch with "
            "torchrun --nproc_per_node=N -m qkvlab train ..., or use train.parallel=auto"
        )
    if t.parallel == "fsdp" and world is None:
        raise ConfigError(
            "train.parallel=fsdp needs torchrun, which sets WORLD_SIZE (it is not set); launch with "
            "torchrun --nproc_per_node=N -m qkvlab train ... train.parallel=fsdp"
        )
    if t.parallel == "none" and (world or 1) > 1:
        raise ConfigError(
            f"train.parallel=none under a launcher with WORLD_SIZE={world} would train {world} copies of one run; "
            "use train.parallel=auto (ddp), or launch a single process"
        )
    parallel = resolve_parallel(t.parallel, env)
    if parallel not in SHARING:
        return
    if d.batch_size % world:
        raise ConfigError(
            f"data.batch_size={d.batch_size} is the global batch, split over the {world} processes (WORLD_SIZE={world}), "
            f"and must divide by {world}; use a multiple of {world} such as {max(world, d.batch_size - d.batch_size % world)}"
        )
    last = d.train_size % d.batch_size if d.train_size else 0
    if last % world:
        raise ConfigError(
            f"data.train_size={d.train_size} leaves a last batch of {last} rows each epoch, which does not divide "
            f"by the {world} processes; make data.train_size a multiple of {world}"
        )
    if t.device == "mps":
        raise ConfigError(f"train.parallel={parallel} trains on cpu or cuda (torch.distributed has no MPS backend); set train.device=cpu")


class AuxForward(nn.Module):
    """DDP runs a module's `forward`; the loop calls `forward_with_aux` (logits and auxiliary losses)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_aux(x)


@dataclass(frozen=True)
class World:
    """This process's place in the job, and the collective steps training needs."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    parallel: str = "none"
    backend: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.parallel in SHARING

    @property
    def sharded(self) -> bool:
        """Parameters and optimizer state live in shards (FSDP): checkpoints are written by every rank."""
        return self.parallel == "fsdp"

    def device(self, device: torch.device) -> torch.device:
        """Each CUDA rank owns the GPU torchrun numbered it (LOCAL_RANK)."""
        return torch.device("cuda", self.local_rank) if self.distributed and device.type == "cuda" else device

    def shard(self, batch: Batch) -> Batch:
        """This rank's rows of a global batch."""
        if self.size == 1:
            return batch
        x, y = batch
        rows, left = divmod(len(x), self.size)
        if left:  # check_parallel refuses batch sizes that would get here
            raise ValueError(f"a batch of {len(x)} rows does not split over {self.size} processes")
        part = slice(self.rank * rows, (self.rank + 1) * rows)
        return x[part], y[part]

    def wrap(self, model: nn.Module, device: torch.device, precision: str = "fp32") -> Optional[nn.Module]:
        """The DDP module training runs the model through; None in a single process and under FSDP,
        which shards `model` in place (build the optimizer after this, on the sharded parameters).

        Buffers (RoPE tables) are the same on every rank and never trained, so they are
        not broadcast before each forward: that would be a second collective per micro-step."""
        if self.sharded:
            shard_model(model, device, self.size, precision)
            return None
        if not self.distributed:
            return None
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        # torch 2.13 renamed the switch (broadcast_buffers is deprecated there); an existing older build keeps the old name.
        quiet = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters else "broadcast_buffers"
        return ddp(AuxForward(model), device_ids=ids, **{quiet: False})

    def no_sync(self, module: nn.Module, last: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on every micro-step but the last."""
        if isinstance(module, nn.parallel.DistributedDataParallel):
            return module.no_sync() if not last else contextlib.nullcontext()
        if self.sharded:
            module.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def mean(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each value averaged over the ranks, in one all-reduce."""
        if not self.distributed or not values:
            return values
        packed = torch.stack([torch.as_tensor(v, dtype=torch.float64, device=values[0].device) for v in values])
        dist.all_reduce(packed)
        packed /= self.size
        return [p.to(v.dtype) for p, v in zip(packed.unbind(), values)]

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """`tensor` summed over the ranks, in place."""
        if self.distributed:
            dist.all_reduce(tensor)
        return tensor

    def from_main(self, compute: Callable[[], T]) -> T:
        """Rank 0 computes, every rank gets the value; where rank 0 fails, the others raise PeerFailed."""
        if not self.distributed:
            return compute()
        box: list = [None]
        if self.is_main:
            try:
                box = [("ok", compute())]
            except BaseException:
                dist.broadcast_object_list([("failed", None)], src=0)
                raise
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if status != "ok":
            raise PeerFailed("rank 0 failed; it reports why")
        return value

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def wait_for_go(self) -> int:
        """On ranks other than 0: GO, or the exit code rank 0 stopped the job with."""
        box = [None]
        dist.broadcast_object_list(box, src=0)
        return box[0]


SINGLE = World()


def shard_model(model: nn.Module, device: torch.device, size: int, precision: str) -> None:
    """FSDP2 in place: each block a group of its own, then the root (embeddings, final norm, head)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (size,))
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if precision == "bf16" else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy)
    fully_shard(model, mesh=mesh, mp_policy=policy)


def grad_norm_(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """The gradients' global L2 norm, and clip them to `max_norm` when it is positive. Sharded (DTensor)
    gradients give a norm that is partial per rank; it is reduced over the ranks before anything is scaled."""
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if isinstance(norm, DTensor):
        norm = norm.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm


class Gate:
    """Rank 0's decision whether the job trains, sent once to the ranks waiting in `wait_for_go`:
    GO from `open()`, or, when the block ends without it, the exit code rank 0 leaves with."""

    def __init__(self, world: World):
        self.world, self.sent = world, not world.distributed

    def open(self) -> None:
        self._send(GO)

    def _send(self, code: int) -> None:
        if not self.sent:
            self.sent = True
            dist.broadcast_object_list([code], src=0)

    def __enter__(self) -> "Gate":
        return self

    def __exit__(self, kind, exc, tb) -> None:
        self._send(exit_status(exc))


def exit_status(exc: Optional[BaseException]) -> int:
    if exc is None:
        return 0
    if isinstance(exc, SystemExit):
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 1


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


@contextlib.contextmanager
def session(parallel: str, device_name: str, env: Mapping[str, str] = os.environ) -> Iterator[World]:
    """The job's World: the process group is set up here and torn down on the way out."""
    parallel = resolve_parallel(parallel, env)
    if parallel not in SHARING:
        yield SINGLE
        return
    device = pick_device(device_name)
    world = World(
        rank=int(env["RANK"]), size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
        parallel=parallel, backend=backend_for(device),
    )
    if dist.is_initialized():  # a caller set it up (a test, an embedding program): theirs to tear down
        yield world
        return
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group(world.backend)
    try:
        yield world
    finally:
        dist.destroy_process_group()

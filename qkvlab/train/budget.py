"""The token budget of a run, and its evaluation cadence, resolved once, before the first step.

Scaling runs ask for a budget in tokens per parameter (20 is the compute-optimal
rule of thumb), so the step count depends on the model's size and is only known
once the model exists. The parameters counted are the ones that cost compute
(`flops.matmul_params`: every Linear, the output head included, embedding
lookups excluded), so the budget and the FLOPs formula agree: C ~ 6 * N * D.
"""

from __future__ import annotations

import math
from dataclasses import replace

from qkvlab.config import Config


def tokens_per_step(cfg: Config) -> int:
    return cfg.data.batch_size * cfg.data.seq_len * cfg.train.grad_accum


def tokens_after(cfg: Config, steps: int) -> int:
    """Training tokens in the first `steps` steps. A fixed synthetic training set (data.train_size) ends
    each epoch with a short batch, so there the count is exact rather than steps x a full step."""
    d = cfg.data
    if not d.train_size:
        return steps * tokens_per_step(cfg)
    batches = steps * cfg.train.grad_accum
    per_epoch = -(-d.train_size // d.batch_size)
    epochs, rest = divmod(batches, per_epoch)
    return (epochs * d.train_size + rest * d.batch_size) * d.seq_len


# A null train.eval_every evaluates about ten times a run, and at least every this many steps.
EVALS_PER_RUN = 10
MAX_EVAL_EVERY = 100


def default_eval_every(steps: int) -> int:
    """Ten evaluations draw a curve however short the run; long runs keep the old cadence of 100 steps."""
    return min(MAX_EVAL_EVERY, max(1, steps // EVALS_PER_RUN))


def resolve_steps(cfg: Config, compute_params: int) -> Config:
    """`cfg` with train.steps set from train.tokens_per_param (unchanged when that is null), then
    train.eval_every from the steps when it is null. Checkpoints record the resolved values; the
    config hash sees the null, so the run directory does not depend on them."""
    t = cfg.train
    steps = t.steps if t.tokens_per_param is None else max(1, math.ceil(t.tokens_per_param * compute_params / tokens_per_step(cfg)))
    eval_every = t.eval_every if t.eval_every is not None else default_eval_every(steps)
    if (steps, eval_every) == (t.steps, t.eval_every):
        return cfg
    return replace(cfg, train=replace(t, steps=steps, eval_every=eval_every))

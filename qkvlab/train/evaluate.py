"""Validation metrics over scored positions only (targets != IGNORE), and the attention's score symmetry.

val/symmetry is the normalised symmetry of the pre-softmax scores (qkvlab/model/score_stats.py), averaged
over layers, on the first SYMMETRY_ROWS sequences of the first validation batch: one extra forward on a
few rows, so evaluation stays as cheap as it was. Normalised (mean |S_ij - S_ji| over mean |S_ij|)
rather than raw, because the raw figure grows with the scores' scale, which changes as a model trains
and differs between families (Gemma 4's K=V does not divide by sqrt(d_head)); the normalised one
compares across steps and variants (0: symmetric, as Q=K with RoPE is; at most 2).

In a DDP job each rank scores every W-th validation batch, and the ranks' sums of losses and counts
are added before any division, so val/loss is the one-process figure on the same tokens (not a mean
of the ranks' means); every rank computes val/symmetry on the first batch's rows, as one process does.
Under FSDP every forward gathers parameters from all ranks, so the ranks run the same number of
forwards: one whose share of the last round is empty runs the round's first batch and discards it.
"""

from __future__ import annotations

import math
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from qkvlab.data.source import IGNORE, Batch
from qkvlab.model.score_stats import mean_symmetry
from qkvlab.train.distributed import SINGLE, World

SYMMETRY_ROWS = 4


@torch.no_grad()
def evaluate(
    model, batches: Iterable[Batch], device: torch.device, amp, exact_match: bool, stop: Optional[Callable[[], bool]] = None,
    world: World = SINGLE,
) -> Optional[dict[str, float]]:
    """Loss is the mean over every scored position of the split; ppl is exp of it. A family's
    auxiliary losses come out as val/aux/<name>, their mean over the batches.

    None when `stop()` turned true between batches: a preempted run must not wait
    for a validation pass that can take minutes."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    exact = torch.zeros((), dtype=torch.int64, device=device)
    aux_sum: dict[str, torch.Tensor] = {}
    if world.distributed:
        aux_sum = {name: torch.zeros((), dtype=torch.float64, device=device) for name in aux_names(model)}
    scored, rows, n_batches = 0, 0, 0
    sample = None
    seen, round_first = 0, None
    for i, (x, y) in enumerate(batches):
        seen = i + 1
        if i % world.size == 0:
            round_first = x
        if stop is not None and stop():
            model.train(was_training)
            return None
        if sample is None:
            sample = x[:SYMMETRY_ROWS].to(device)
        if i % world.size != world.rank:
            continue
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with amp:
            logits, aux = model.forward_with_aux(x)
        logits = logits.float()
        for name, value in aux.items():
            aux_sum[name] = aux_sum.get(name, 0.0) + value.double()
        n_batches += 1
        mask = y != IGNORE
        loss_sum += F.cross_entropy(logits.flatten(0, 1), y.flatten(), ignore_index=IGNORE, reduction="sum")
        hit = (logits.argmax(-1) == y) & mask
        correct += hit.sum()
        scored += int(mask.sum())
        if exact_match:
            row_has_target = mask.any(dim=1)
            exact += ((hit | ~mask).all(dim=1) & row_has_target).sum()
            rows += int(row_has_target.sum())
    if world.sharded and seen % world.size and world.rank >= seen % world.size:
        with amp:
            model.forward_with_aux(round_first.to(device))
    if sample is not None:
        with amp:
            symmetry = mean_symmetry(model, sample)
    model.train(was_training)
    if world.distributed:
        counts = torch.tensor([scored, rows, n_batches], dtype=torch.float64, device=device)
        totals = world.sum_(torch.stack([loss_sum, correct.double(), exact.double(), *aux_sum.values(), *counts]))
        loss_sum, correct, exact = totals[0], int(totals[1]), int(totals[2])
        aux_sum = dict(zip(aux_sum, totals[3 : 3 + len(aux_sum)]))
        scored, rows, n_batches = (int(v) for v in totals[3 + len(aux_sum) :])
    loss = float(loss_sum) / max(1, scored)
    out = {"val/loss": loss, "val/ppl": math.exp(min(loss, 700.0)), "val/acc": int(correct) / max(1, scored)}
    if exact_match:
        out["val/exact_match"] = int(exact) / max(1, rows)
    if sample is not None and symmetry is not None:
        out["val/symmetry"] = symmetry
    out.update({f"val/aux/{name}": float(total) / n_batches for name, total in aux_sum.items()})
    return out


def aux_names(model) -> list[str]:
    """The auxiliary losses the model's families declare: a rank left without a batch still reduces them."""
    return sorted({name for block in getattr(model, "blocks", ()) for name in getattr(block.attn, "aux_losses", ())})

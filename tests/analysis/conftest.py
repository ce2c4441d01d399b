"""Hand-made run directories: what a finished training run leaves, with losses we choose."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from qkvlab.track.metrics import MetricsWriter


def write_run(
    path: Path,
    *,
    variant: str,
    model: str,
    experiment: str = "scaling_ladder",
    seed: int,
    loss: float,
    compute: float,
    params: int = 100_000,
    seq_len: int = 128,
    tokens_per_param: float = 20.0,
    status: str = "completed",
    evals: list[tuple[int, int, float]] | None = None,
) -> Path:
    """A run directory as the trainer writes it: .hydra/config.yaml, metrics.jsonl, summary.json."""
    (path / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(
        {"seed": seed, "name": experiment, "variant": {"name": variant}, "model": {"name": model},
         "data": {"seq_len": seq_len}, "train": {"tokens_per_param": tokens_per_param}},
        path / ".hydra" / "config.yaml",
    )
    writer = MetricsWriter(path)
    tokens = int(tokens_per_param * params)
    for step, tok, value in evals or [(100, tokens, loss)]:
        writer.log(step, tok, {"val/loss": value})
    summary = {"experiment": experiment, "variant": variant, "model": model, "seed": seed, "status": status, "params/matmul": params}
    if status == "completed":
        summary.update({"val/loss": loss, "compute/flops": compute, "tokens": tokens,
                        "compute/tokens_per_param": tokens_per_param})
    writer.summary(summary)
    writer.close()
    return path


# Known laws, L(C) = E + A * C^-alpha: k_eq_v is a little worse and its gap grows with compute.
LAWS = {"mha": (2.00, 55.0, 0.12), "k_eq_v": (2.02, 57.0, 0.12)}
RUNG_COMPUTE = np.logspace(12, 17, 6)
# Sharing a projection saves parameters, so the same rung costs the variant less compute.
COMPUTE_SCALE = {"mha": 1.0, "k_eq_v": 0.9}


def true_loss(variant: str, compute: float) -> float:
    E, A, alpha = LAWS[variant]
    return E + A * compute ** -alpha


def true_multiplier(compute: float) -> float:
    E, A, alpha = LAWS["k_eq_v"]
    target = true_loss("mha", compute)
    return math.exp((math.log(A) - math.log(target - E)) / alpha) / compute


@pytest.fixture
def ladder_dir(tmp_path) -> Path:
    """Six rungs x two variants x three seeds, 0.5% multiplicative noise on the loss."""
    rng = np.random.default_rng(7)
    root = tmp_path / "ladder"
    for variant, scale in COMPUTE_SCALE.items():
        for i, c in enumerate(RUNG_COMPUTE):
            for seed in range(3):
                loss = true_loss(variant, c * scale) * math.exp(rng.normal(0, 0.005))
                write_run(root / f"{variant}_r{i}_s{seed}", variant=variant, model=f"ladder_{i + 1}",
                          seed=seed, loss=loss, compute=c * scale)
    return root

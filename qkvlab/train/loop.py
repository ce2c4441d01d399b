"""The training loop: one run, one run directory.

Losses stay on the device between log points, so logging never forces a
per-step synchronisation on a GPU.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from qkvlab.config import Config, ConfigError, as_dict
from qkvlab.data import IGNORE, build_data
from qkvlab.model import AttentionSpec, attention_spec, build_model, count_params, kv_cache_bytes_per_token
from qkvlab.model.flops import matmul_params, train_flops_per_token
from qkvlab.track.metrics import MetricsWriter
from qkvlab.train.budget import resolve_steps, tokens_per_step
from qkvlab.train.checkpoint import save_checkpoint
from qkvlab.train.device import autocast, compute_dtype, pick_device, resolve_precision
from qkvlab.train.evaluate import evaluate
from qkvlab.train.optim import lr_at, make_optimizer


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class RunInfo:
    """What a run is, known before the first step: goes into summary and W&B config."""

    device: str
    precision: str
    vocab_size: int
    stats: dict[str, Any] = field(default_factory=dict)


def model_stats(cfg: Config, model, spec: AttentionSpec, precision: str) -> dict[str, Any]:
    dtype = compute_dtype(precision)
    kv = kv_cache_bytes_per_token(spec, cfg.model.n_layers, dtype)
    mha = AttentionSpec(**{**spec.__dict__, "sharing": "mha", "n_kv_heads": spec.n_heads})
    kv_mha = kv_cache_bytes_per_token(mha, cfg.model.n_layers, dtype)
    return {
        **count_params(model),
        "kv_cache/bytes_per_token": kv,
        "kv_cache/bytes_per_token_mha": kv_mha,
        "kv_cache/reduction_vs_mha": 1 - kv / kv_mha,
        "n_kv_heads": spec.n_kv_heads,
        "params/matmul": matmul_params(model),
        "compute/flops_per_token": train_flops_per_token(model, cfg.data.seq_len),
    }


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        seed_everything(cfg.seed)
        self.device = pick_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.amp = autocast(self.device, self.precision)
        self.data = build_data(cfg)
        vocab = cfg.model.vocab_size or self.data.vocab_size
        if vocab < self.data.vocab_size:
            raise ConfigError(
                f"model.vocab_size={vocab} is below the data's vocabulary ({self.data.vocab_size}); "
                "raise model.vocab_size or set it to null to take the data's"
            )
        self.spec = attention_spec(cfg)
        self.model = build_model(cfg, vocab).to(self.device)
        self.cfg = cfg = resolve_steps(cfg, matmul_params(self.model))
        self.optimizer = make_optimizer(self.model, cfg.optim, self.device)
        self.step_fn = torch.compile(self.model) if cfg.train.compile else self.model
        self.info = RunInfo(
            device=str(self.device),
            precision=self.precision,
            vocab_size=vocab,
            stats=model_stats(cfg, self.model, self.spec, self.precision),
        )
        self.tokens_per_step = tokens_per_step(cfg)

    def train_step(self, step: int) -> torch.Tensor:
        cfg = self.cfg
        lr = lr_at(step, cfg.train.steps, cfg.optim)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        total = torch.zeros((), device=self.device)
        for micro in range(cfg.train.grad_accum):
            x, y = self.data.train_batch(step, micro)
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with self.amp:
                logits = self.step_fn(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE)
            (loss / cfg.train.grad_accum).backward()
            total += loss.detach()
        if cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.optim.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total / cfg.train.grad_accum

    def validate(self) -> dict[str, float]:
        return evaluate(self.model, self.data.val_batches(), self.device, self.amp, self.data.exact_match)

    def fit(self, writer: MetricsWriter) -> dict[str, Any]:
        cfg, t = self.cfg, self.cfg.train
        start_wall = time.perf_counter()
        train_time, window_time = 0.0, 0.0
        window_loss, window_steps = torch.zeros((), device=self.device), 0
        best: dict[str, float] = {}
        val: dict[str, float] = {}
        last_train: dict[str, float] = {}
        bar = tqdm(total=t.steps, desc=f"{cfg.variant.name}", unit="step", disable=not t.progress, dynamic_ncols=True)
        tick = time.perf_counter()
        self.model.train()
        for step in range(t.steps):
            window_loss += self.train_step(step)
            window_steps += 1
            done = step + 1
            if done % t.log_every == 0 or done == t.steps:
                mean_loss = float(window_loss) / window_steps
                window_time += time.perf_counter() - tick
                train_time += window_time
                last_train = {
                    "train/loss": mean_loss,
                    "train/ppl": math.exp(min(mean_loss, 700.0)),
                    "lr": lr_at(step, t.steps, cfg.optim),
                    "throughput/tokens_per_s": window_steps * self.tokens_per_step / max(window_time, 1e-9),
                }
                writer.log(done, done * self.tokens_per_step, last_train)
                bar.set_postfix(
                    loss=f"{mean_loss:.4f}",
                    lr=f"{last_train['lr']:.2e}",
                    tok_s=f"{last_train['throughput/tokens_per_s']:,.0f}",
                    refresh=False,
                )
                window_loss, window_steps, window_time = torch.zeros((), device=self.device), 0, 0.0
                tick = time.perf_counter()
            if done % t.eval_every == 0 or done == t.steps:
                window_time += time.perf_counter() - tick
                val = self.validate()
                writer.log(done, done * self.tokens_per_step, val)
                if not best or val["val/loss"] < best["best/val/loss"]:
                    best = {"best/val/loss": val["val/loss"], "best/val/ppl": val["val/ppl"], "best/step": done}
                bar.set_postfix(loss=f"{last_train.get('train/loss', float('nan')):.4f}", val=f"{val['val/loss']:.4f}", refresh=False)
                tick = time.perf_counter()
            bar.update(1)
        bar.close()
        save_checkpoint(self.run_dir / "checkpoints" / "final.pt", self, t.steps)
        return {
            **val,
            **best,
            "train/loss": last_train.get("train/loss"),
            "step": t.steps,
            "tokens": t.steps * self.tokens_per_step,
            "compute/flops": self.info.stats["compute/flops_per_token"] * t.steps * self.tokens_per_step,
            "compute/tokens_per_param": t.steps * self.tokens_per_step / self.info.stats["params/matmul"],
            "throughput/tokens_per_s": t.steps * self.tokens_per_step / max(train_time, 1e-9),
            "wall_time_s": time.perf_counter() - start_wall,
        }


def base_summary(cfg: Config, info: RunInfo | None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "variant": cfg.variant.name,
        "sharing": cfg.variant.sharing,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "seed": cfg.seed,
        "experiment": cfg.experiment,
    }
    if info is not None:
        out.update(device=info.device, precision=info.precision, vocab_size=info.vocab_size, **info.stats)
    return out


def config_record(cfg: Config, info: RunInfo) -> dict[str, Any]:
    return {**as_dict(cfg), **info.stats, "precision": info.precision, "device": info.device}

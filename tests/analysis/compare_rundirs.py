"""Hand-made run directories with known numbers, laid out as `qkvlab train` writes them."""

from __future__ import annotations

import json
import math
import secrets
from pathlib import Path

import yaml


def make_run(
    root: Path,
    name: str,
    *,
    variant: str = "mha",
    seed: int = 0,
    loss: float = 2.0,
    status: str = "completed",
    lr: float = 3e-3,
    task: str = "sort",
    params: int = 1000,
    kv: int = 1024,
    acc: float = 0.5,
    extra: dict | None = None,
) -> Path:
    run = root / name
    (run / ".hydra").mkdir(parents=True)
    config = {
        "seed": seed,
        "name": "hand",
        "variant": {"name": variant, "sharing": variant if variant != "gqa" else "mha"},
        "model": {"name": "tiny", "d_model": 64},
        "data": {"name": task, "task": task, "seq_len": 32},
        "optim": {"name": "adamw", "lr": lr},
        "train": {"steps": 20, "progress": False},
        "logger": {"backend": "none", "project": f"p{seed}"},
    }
    config.update(extra or {})
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    # As train logs them: training loss every 5 steps, validation at 10 and 20.
    rows = [{"step": s, "tokens": 100 * s, "train/loss": loss + 1.5 - 0.05 * s} for s in range(5, 25, 5)]
    rows += [{"step": s, "tokens": 100 * s, "val/loss": v} for s, v in ((10, loss + 1.0), (20, loss))]
    rows.sort(key=lambda r: r["step"])
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = {"status": status, "variant": variant, "seed": seed, "experiment": "hand"}
    if status == "completed":
        summary.update({
            "val/loss": loss, "val/ppl": math.exp(loss), "best/val/loss": loss, "best/val/ppl": math.exp(loss),
            "val/acc": acc, "params/total": params, "params/attention": params // 4,
            "kv_cache/bytes_per_token": kv, "kv_cache/reduction_vs_mha": 1 - kv / 1024,
            "throughput/tokens_per_s": 5000.0,
        })
    else:
        summary["error"] = "RuntimeError: boom"
    (run / "summary.json").write_text(json.dumps(summary))
    # As train writes it: an id chosen once per run directory.
    (run / "run.json").write_text(json.dumps({"format_version": 1, "wandb_id": secrets.token_hex(4)}))
    return run

"""`qkvlab eval`: a trained run's validation metrics at several context lengths.

The study tracked how the gap between variants moves with context, so a text
run is scored on its validation tokens cut into windows of each length. A
synthetic task defines its own sequence length, so it is scored once, at it.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Sequence

import torch

from qkvlab.checks import checked
from qkvlab.config import Config
from qkvlab.errors import ConfigError
from qkvlab.data.source import IGNORE
from qkvlab.data.synthetic import SYNTHETIC_TASKS
from qkvlab.infer.load import TrainedRun, load_trained
from qkvlab.files import write_json_atomic
from qkvlab.rundir import EVAL_FILE, Run
from qkvlab.train.evaluate import evaluate

DEFAULT_CONTEXTS = (512, 1024, 2048)


def eval_contexts(cfg: Config, requested: Sequence[int] | None) -> list[int]:
    """Requested lengths, or the run's seq_len plus the defaults that fit the model's context."""
    if cfg.data.task in SYNTHETIC_TASKS:
        if requested and list(requested) != [cfg.data.seq_len]:
            raise ConfigError(
                f"--contexts: data.task={cfg.data.task} is defined at data.seq_len={cfg.data.seq_len} only; drop --contexts"
            )
        return [cfg.data.seq_len]
    if requested:
        too_long = [c for c in requested if c > cfg.model.context or c < 2]
        if too_long:
            raise ConfigError(
                f"--contexts: {too_long[0]} is outside 2..model.context={cfg.model.context}; pick lengths up to the model's context"
            )
        return sorted(set(requested))
    return sorted({cfg.data.seq_len, *(c for c in DEFAULT_CONTEXTS if c <= cfg.model.context)})


def at_context(cfg: Config, seq_len: int) -> Config:
    out = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, seq_len=seq_len))
    return checked(out)


def val_bytes(data) -> tuple[int, int] | None:
    """(scored tokens, UTF-8 bytes of their text) of a text run's validation targets; None for synthetic data.
    End-of-text targets count as tokens and add no bytes. The text is the targets decoded in one piece, so at
    most a character cut at either end of the split is counted as a replacement character."""
    tokens = getattr(data, "tokens", None)
    if tokens is None:
        return None
    targets = torch.cat([y.flatten() for _, y in data.val_batches()])
    scored = targets[targets != IGNORE]
    text = scored[scored != data.eot].tolist()
    return len(scored), len(tokens.tokenizer().decode(text).encode("utf-8"))


def evaluate_trained(trained: TrainedRun, contexts: Sequence[int]) -> list[dict[str, Any]]:
    rows = []
    counts = None
    for context in contexts:
        data = trained.data(at_context(trained.cfg, context))
        metrics = evaluate(trained.model, data.val_batches(), trained.device, trained.amp(), data.exact_match)
        counts = counts or val_bytes(data)  # the same targets at every context
        if counts and counts[1]:
            metrics["val/bpb"] = metrics["val/loss"] * counts[0] / (math.log(2) * counts[1])
        rows.append({"context": context, **metrics})
    return rows


def evaluate_run(run_dir: Path | str, overrides: Sequence[str] = (), contexts: Sequence[int] | None = None) -> dict[str, Any]:
    trained = load_trained(run_dir, overrides)
    cfg = trained.cfg
    rows = evaluate_trained(trained, eval_contexts(cfg, contexts))
    report = {
        "run": str(trained.run.path),
        "variant": cfg.variant.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "train_seq_len": cfg.data.seq_len,
        "checkpoint_step": trained.step,
        "device": str(trained.device),
        "precision": trained.precision,
        "overrides": list(overrides),
        "results": rows,
    }
    return update_eval_file(trained.run, report)


# Sections that collect entries (a benchmark, a held-out file) from separate `qkvlab eval` calls.
COLLECTED = ("tasks", "heldout")


def update_eval_file(run: Run, sections: dict[str, Any]) -> dict[str, Any]:
    """eval.json with `sections` written and the rest kept (the entries of a COLLECTED section merged):
    perplexity, benchmarks and held-out files are written by separate `qkvlab eval` calls, perhaps at
    once, and none may erase another's. The file is re-read under a lock, then replaced atomically."""
    from filelock import FileLock

    path = run.path / EVAL_FILE
    with FileLock(str(path) + ".lock"):
        run.__dict__.pop("evaluation", None)
        report = dict(run.evaluation)
        for key, value in sections.items():
            old = report.get(key)
            report[key] = {**old, **value} if key in COLLECTED and isinstance(old, dict) else value
        write_json_atomic(path, report)
        run.__dict__.pop("evaluation", None)
    return report


def format_report(report: dict[str, Any]) -> str:
    keys = [k for k in ("val/loss", "val/ppl", "val/bpb", "val/acc", "val/exact_match") if k in report["results"][0]]
    header = f"{'context':>8}" + "".join(f"{k:>17}" for k in keys)
    lines = [
        f"qkvlab eval: {report['variant']} on {report['data']} (model {report['model']}, step {report['checkpoint_step']}, "
        f"{report['precision']} on {report['device']})",
        header,
    ]
    for row in report["results"]:
        lines.append(f"{row['context']:>8}" + "".join(f"{row[k]:>17.4f}" for k in keys))
    lines.append(f"  wrote {Path(report['run']) / EVAL_FILE}")
    return "\n".join(lines)

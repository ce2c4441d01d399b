"""`qkvlab eval RUN_DIR --data.path FILE`: a held-out corpus (WikiText's test file, a domain corpus)
scored like the run's validation split, with the run's own tokenizer, at each context length.

The file is read and packed by qkvlab/data/heldout.py (as data.val_path is: the corpus readers training
uses, the run's tokenizer, in memory, targets exactly the documents' tokens), so the training token
cache and its validation split are never written; the stream is cut into windows of each context.

Perplexity is per token of the run's tokenizer, so it does not compare across tokenizers (a byte model
predicts four or so tokens where a BPE model predicts one). Bits per byte do: the same total negative
log-likelihood divided by ln 2 and by the UTF-8 bytes of the text, which no tokenizer changes.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from qkvlab.data.heldout import batches, encode_documents, packed_stream, read_documents, window_rows
from qkvlab.data.source import IGNORE
from qkvlab.errors import ConfigError
from qkvlab.rundir import EVAL_FILE
from qkvlab.infer.load import TrainedRun
from qkvlab.train.evaluate import evaluate


def score_heldout(trained: TrainedRun, path: str, contexts: Sequence[int], tokenizer) -> dict[str, Any]:
    docs = read_documents(trained.cfg.data, path, "data.path")
    x, y = packed_stream(encode_documents(tokenizer, docs), tokenizer.eot)
    n_tokens = int((y != IGNORE).sum())
    n_bytes = sum(len(doc.encode("utf-8", errors="replace")) for doc in docs)
    rows = []
    for context in contexts:
        windows = batches(window_rows(x, y, context, tokenizer.eot), trained.cfg.data.batch_size)
        metrics = evaluate(trained.model, windows, trained.device, trained.amp(), False)
        loss = metrics["val/loss"]
        rows.append({"context": context, "loss": loss, "ppl": math.exp(min(loss, 700.0)),
                     "bpb": loss * n_tokens / (math.log(2) * n_bytes), "acc": metrics["val/acc"]})
    return {"documents": len(docs), "tokens": n_tokens, "bytes": n_bytes, "results": rows}


def format_heldout(trained: TrainedRun, path: str, report: dict[str, Any]) -> str:
    cfg = trained.cfg
    lines = [
        f"qkvlab eval: {cfg.variant.name} on {path} ({report['documents']:,} documents, {report['tokens']:,} tokens, "
        f"{report['bytes']:,} bytes; model {cfg.model.name}, step {trained.step}, {trained.precision} on {trained.device})",
        f"{'context':>8}{'loss':>12}{'ppl':>12}{'bits/byte':>12}{'acc':>10}",
    ]
    for row in report["results"]:
        lines.append(f"{row['context']:>8}{row['loss']:>12.4f}{row['ppl']:>12.4f}{row['bpb']:>12.4f}{row['acc']:>10.4f}")
    lines.append(f"  wrote {trained.run.path / EVAL_FILE} (heldout)")
    return "\n".join(lines)


def evaluate_heldout(run_dir: str, overrides: Sequence[str], contexts: Sequence[int] | None, path: str) -> str:
    """Score `path` with the run at each context, record it under eval.json's `heldout`, return the table."""
    from pathlib import Path

    from qkvlab.infer.commands import run_tokenizer
    from qkvlab.infer.evaluate_run import eval_contexts, update_eval_file
    from qkvlab.infer.load import load_trained

    trained = load_trained(run_dir, overrides)
    tokenizer = run_tokenizer(trained.data()) if trained.cfg.data.causal else None
    if tokenizer is None:
        raise ConfigError(f"--data.path: data.task={trained.cfg.data.task} has no tokenizer; held-out text needs a run trained on text")
    report = score_heldout(trained, path, eval_contexts(trained.cfg, contexts), tokenizer)
    key = str(Path(path).expanduser().resolve())
    update_eval_file(trained.run, {"heldout": {key: {**report, "checkpoint_step": trained.step}}})
    return format_heldout(trained, path, report)

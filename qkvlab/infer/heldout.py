"""`qkvlab eval RUN_DIR --data.path FILE`: a held-out corpus (WikiText's test file, a domain corpus)
scored like the run's validation split, with the run's own tokenizer, at each context length.

The file is read by the corpus readers training uses (.txt, .jsonl/.json with the run's
`data.text_field`, .parquet; a directory of one type) and tokenized in memory: the training token cache
and its validation split are never opened for writing. Documents are packed as training packs them,
each after an end-of-text token, and the stream is cut into windows of the context length; the targets
are exactly the documents' tokens (the end-of-text between documents is context, never a target), so
the row says how well the model predicts that text and nothing else.

Perplexity is per token of the run's tokenizer, so it does not compare across tokenizers (a byte model
predicts four or so tokens where a BPE model predicts one). Bits per byte do: the same total negative
log-likelihood divided by ln 2 and by the UTF-8 bytes of the text, which no tokenizer changes.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import torch

from qkvlab.data import corpus
from qkvlab.data.corpus import split_document
from qkvlab.data.source import IGNORE
from qkvlab.errors import ConfigError
from qkvlab.infer.load import TrainedRun
from qkvlab.train.evaluate import evaluate


def heldout_documents(trained: TrainedRun, path: str) -> list[str]:
    d = dataclasses.replace(trained.cfg.data, path=path, hub=None, hub_config=None, split="train", streaming=False)
    corpus.check_corpus(d)
    docs = [t for t in corpus.documents(d) if t]
    if not docs:
        raise ConfigError(f"data.path={path} holds no text; point --data.path at a file with text in it")
    return docs


def encode_documents(tokenizer, docs: Sequence[str]) -> list[np.ndarray]:
    """Each document's tokens, encoded in the token cache's pieces (cut where byte-level BPE cuts anyway)."""
    return [np.concatenate([np.asarray(p, dtype=np.int64) for p in tokenizer.encode_batch(split_document(doc))]) for doc in docs]


def heldout_stream(encoded: Sequence[np.ndarray], eot: int) -> tuple[np.ndarray, np.ndarray]:
    """(inputs, targets) over the packed documents: each document after an end-of-text, which is never a target."""
    pieces, scored = [], []
    for tokens in encoded:
        pieces += [np.array([eot]), tokens]
        scored += [np.array([False]), np.ones(len(tokens), dtype=bool)]
    stream, keep = np.concatenate(pieces), np.concatenate(scored)
    targets = np.where(keep[1:], stream[1:], IGNORE)
    return stream[:-1], targets


def windows(x: np.ndarray, y: np.ndarray, length: int, eot: int, batch_size: int):
    """The stream cut into rows of `length`; the last is padded with end-of-text inputs and IGNORE targets."""
    rows = -(-len(x) // length)
    px = np.full(rows * length, eot, dtype=np.int64)
    py = np.full(rows * length, IGNORE, dtype=np.int64)
    px[: len(x)], py[: len(y)] = x, y
    px, py = torch.from_numpy(px.reshape(rows, length)), torch.from_numpy(py.reshape(rows, length))
    for i in range(0, rows, batch_size):
        yield px[i : i + batch_size], py[i : i + batch_size]


def score_heldout(trained: TrainedRun, path: str, contexts: Sequence[int], tokenizer) -> dict[str, Any]:
    docs = heldout_documents(trained, path)
    encoded = encode_documents(tokenizer, docs)
    x, y = heldout_stream(encoded, tokenizer.eot)
    n_tokens = int((y != IGNORE).sum())
    n_bytes = sum(len(doc.encode("utf-8", errors="replace")) for doc in docs)
    rows = []
    for context in contexts:
        batches = windows(x, y, context, tokenizer.eot, trained.cfg.data.batch_size)
        metrics = evaluate(trained.model, batches, trained.device, trained.amp(), False)
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
    heldout = trained.run.evaluation.get("heldout")
    update_eval_file(trained.run, {"heldout": {**(heldout if isinstance(heldout, dict) else {}),
                                               key: {**report, "checkpoint_step": trained.step}}})
    return format_heldout(trained, path, report)

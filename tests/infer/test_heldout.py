"""`qkvlab eval RUN_DIR --data.path FILE`: a held-out file scored with the run's tokenizer, nothing else touched."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from qkvlab.data.source import IGNORE
from qkvlab.infer.commands import eval_main, run_tokenizer
from qkvlab.data.heldout import encode_documents, packed_stream, read_documents
from qkvlab.infer.load import load_trained

HELDOUT = "the owl sat on the mat. an owl saw 7 birds.\n" * 8


def tree(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_scored_tokens_are_exactly_the_files(text_run, tmp_path):
    trained = load_trained(text_run("data.tokenizer=bpe", "data.bpe_vocab_size=300"))
    tokenizer = run_tokenizer(trained.data())
    docs = tmp_path / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": t}) + "\n" for t in ("first doc here.", "and a second one")))
    for path, texts in ((tmp_path / "one.txt", [HELDOUT]), (docs, ["first doc here.", "and a second one"])):
        if path.suffix == ".txt":
            path.write_text(HELDOUT)
        assert read_documents(trained.cfg.data, str(path), "data.path") == texts
        x, y = packed_stream(encode_documents(tokenizer, texts), tokenizer.eot)
        expected = np.concatenate([tokenizer.encode_batch([t])[0] for t in texts]).astype(np.int64)
        assert np.array_equal(y[y != IGNORE], expected)
        n0 = len(tokenizer.encode_batch([texts[0]])[0])  # inputs: end-of-text, then the document shifted by one
        assert x[0] == tokenizer.eot and np.array_equal(x[1:n0], expected[: n0 - 1])


def test_eval_on_a_heldout_file_reports_bits_per_byte_and_leaves_the_split_alone(text_run, tmp_path, capsys):
    run_dir = text_run("variant=k_eq_v")  # byte tokenizer: one token per byte of ASCII text
    eval_main([str(run_dir), "--contexts", "16,32"])
    before = json.loads((run_dir / "eval.json").read_text())["results"]
    cache = tree(tmp_path / "cache")
    heldout = tmp_path / "valid.txt"
    heldout.write_text(HELDOUT)
    eval_main([str(run_dir), "--data.path", str(heldout), "--contexts", "16,32"])
    printed = capsys.readouterr().out
    report = json.loads((run_dir / "eval.json").read_text())
    rows = report["heldout"][str(heldout.resolve())]
    assert rows["tokens"] == rows["bytes"] == len(HELDOUT)
    for row in rows["results"]:
        assert row["bpb"] == pytest.approx(row["loss"] / math.log(2))
        assert row["ppl"] == pytest.approx(math.exp(row["loss"]))
    assert f"qkvlab eval: k_eq_v on {heldout} (1 documents, {len(HELDOUT):,} tokens" in printed
    assert report["results"] == before, "the run's own validation rows changed"
    assert tree(tmp_path / "cache") == cache, "the token cache was written to"
    eval_main([str(run_dir), "--contexts", "16,32"])
    assert json.loads((run_dir / "eval.json").read_text())["results"] == before
    assert "val/bpb" in before[0] and before[0]["val/bpb"] > 0


def test_heldout_rolling_loglikelihood_agrees_with_lm_eval_windows(text_run, tmp_path):
    pytest.importorskip("lm_eval")
    from lm_eval.api.instance import Instance

    from qkvlab.infer.harness import QkvlabLM

    run_dir = text_run("variant=q_eq_k")
    heldout = tmp_path / "valid.txt"
    heldout.write_text(HELDOUT[: 32 * 11])
    eval_main([str(run_dir), "--data.path", str(heldout), "--contexts", "32"])
    row = json.loads((run_dir / "eval.json").read_text())["heldout"][str(heldout.resolve())]
    lm = QkvlabLM(trained=load_trained(run_dir), max_length=32)
    (total,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, (heldout.read_text(),), 0)])
    assert -total / row["tokens"] == pytest.approx(row["results"][0]["loss"], rel=1e-5)

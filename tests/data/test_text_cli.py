from __future__ import annotations

import json

import pytest

from qkvlab.rundir import find_runs

TINY = ["model=tiny", "logger=none", "train.steps=4", "train.eval_every=4", "train.log_every=2", "train.progress=false",
        "data.seq_len=32", "data.batch_size=4", "data.val_tokens=512"]


@pytest.fixture
def corpus_file(tmp_path, make_docs, write_jsonl):
    return write_jsonl(tmp_path / "corpus.jsonl", make_docs(120))


@pytest.mark.slow
def test_train_on_a_local_file_writes_val_ppl(run_cli, tmp_path, corpus_file):
    out = run_cli("train", "data=text", f"data.path={corpus_file}", *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    (run,) = find_runs([tmp_path / "outputs"])
    assert run.finished and run.summary["val/ppl"] > 1 and run.summary["vocab_size"] == 257
    assert [v for _, _, v in run.series("val/ppl")] == [run.summary["val/ppl"]]
    assert "tokenized corpus.jsonl-byte" in out.stderr


@pytest.mark.slow
def test_multirun_over_variants_shares_one_cache(run_cli, tmp_path, corpus_file):
    out = run_cli("train", "-m", "variant=mha,k_eq_v", "data=text", f"data.path={corpus_file}", "data.tokenizer=bpe",
                  "data.bpe_vocab_size=300", *TINY)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = find_runs([tmp_path / "outputs"])
    assert sorted(r.summary["variant"] for r in runs) == ["k_eq_v", "mha"] and all(r.finished for r in runs)
    assert out.stderr.count("qkvlab: tokenized") == 1
    entries = [p for p in (tmp_path / "cache" / "tokens").iterdir() if p.is_dir()]
    assert len(entries) == 1 and json.loads((entries[0] / "meta.json").read_text())["vocab_size"] == 300
    # Same seed, same validation tokens: identical data, different models.
    assert runs[0].summary["val/loss"] != runs[1].summary["val/loss"]


@pytest.mark.slow
def test_uncached_hub_corpus_offline_fails_in_one_line(run_cli):
    out = run_cli("train", "data=tinystories", *TINY, timeout=120)
    assert out.returncode != 0
    lines = [l for l in out.stderr.strip().splitlines() if l.startswith("qkvlab: error")]
    assert len(lines) == 1 and "unreachable" in lines[0] and "data.path" in lines[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_missing_path_fails_at_start_up_in_one_line(run_cli):
    out = run_cli("train", "data=text", "data.path=/nonexistent/corpus.txt", *TINY, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "qkvlab: error: data.path=/nonexistent/corpus.txt does not exist; "
        "point data.path at a .txt, .jsonl or .parquet file or a directory of them"
    ]


@pytest.mark.slow
def test_an_edited_corpus_is_refused_by_resume_and_eval(run_cli, tmp_path, corpus_file, make_docs, write_jsonl):
    args = ("data=text", f"data.path={corpus_file}", *TINY, "train.checkpoint_every=2", "hydra.run.dir=run")
    assert run_cli("train", *args).returncode == 0
    report = '{"an earlier": "eval"}'
    (tmp_path / "run" / "eval.json").write_text(report)
    write_jsonl(corpus_file, make_docs(121))

    resumed = run_cli("train", *args)  # a hand-named directory is resumed, never skipped
    assert resumed.returncode == 2, resumed.stderr[-2000:]
    (line,) = [l for l in resumed.stderr.splitlines() if l.startswith("qkvlab: error")]
    assert line.startswith("qkvlab: error: the corpus changed since this run trained: token cache corpus.jsonl-byte-")
    assert line.endswith("; restore the corpus, or start fresh with train.resume=never")

    evaluated = run_cli("eval", "run", "--contexts", "32")
    assert evaluated.returncode == 2, evaluated.stderr[-2000:]
    (line,) = [l for l in evaluated.stderr.splitlines() if l.startswith("qkvlab: error")]
    assert "the corpus changed since this run trained" in line and line.endswith("restore the corpus, or train the run again")
    assert (tmp_path / "run" / "eval.json").read_text() == report, "eval.json was overwritten"


@pytest.mark.slow
def test_a_cached_corpus_evaluates_without_its_source_file(run_cli, tmp_path, corpus_file):
    assert run_cli("train", "data=text", f"data.path={corpus_file}", *TINY, "hydra.run.dir=run").returncode == 0
    corpus_file.unlink()
    out = run_cli("eval", "run", "--contexts", "32")
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"qkvlab: data.path={corpus_file} does not exist; using its token cache" in out.stderr

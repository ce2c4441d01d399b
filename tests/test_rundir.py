"""The one run-directory reader never lets a damaged file stop the tools that read it."""

import json

import pytest

from qkvlab.rundir import find_runs, load_run


@pytest.mark.parametrize("text, reason", [("", "empty"), ('{"status": "comp', "not valid JSON at line 1"), ("[1, 2]", "not a JSON object")])
def test_a_corrupt_summary_is_reported_with_its_path_not_raised(tmp_path, text, reason):
    run_dir = tmp_path / "run"
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text("seed: 0\n")
    (run_dir / "summary.json").write_text(text)
    run = load_run(run_dir)
    assert run.status == "unreadable" and not run.finished
    assert str(run_dir / "summary.json") in run.error and reason in run.error
    assert [r.path for r in find_runs([tmp_path])] == [run_dir.resolve()]


def test_a_readable_summary_is_read(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed", "val/loss": 1.5}))
    run = load_run(tmp_path)
    assert run.finished and run.unreadable is None and run.summary["val/loss"] == 1.5


def test_a_malformed_metrics_line_is_skipped_and_named_not_the_end_of_the_file(tmp_path, capsys):
    rows = [json.dumps({"step": s, "tokens": s}) for s in range(1, 8)]
    rows[2] = "{not json"
    (tmp_path / "metrics.jsonl").write_text("\n".join(rows) + '\n{"step": 8, "tok')
    run = load_run(tmp_path)
    assert [r["step"] for r in run.metrics] == [1, 2, 4, 5, 6, 7]
    assert run.metrics_problems == [f"{tmp_path / 'metrics.jsonl'} line 3 is not a metrics row ({{not json); skipped"]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qkvlab: warning: {run.metrics_problems[0]}"]


def test_a_run_killed_while_running_reads_as_unfinished_and_a_held_one_as_running(tmp_path):
    from qkvlab.runlock import hold

    (tmp_path / "summary.json").write_text(json.dumps({"status": "running"}))
    assert load_run(tmp_path).status == "unfinished"
    with hold(tmp_path):
        assert load_run(tmp_path).status == "running"
    assert load_run(tmp_path).status == "unfinished"


def test_a_config_saved_before_name_took_the_key_reads_with_its_name(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "config.yaml").write_text("seed: 0\nexperiment: ci_smoke\n")
    assert load_run(tmp_path).config == {"seed": 0, "name": "ci_smoke"}

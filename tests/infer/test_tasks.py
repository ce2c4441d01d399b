"""`qkvlab eval --tasks`: lm-eval's own task code on a trained run, results in eval.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lm_eval")

from qkvlab.analysis.command import compare_command  # noqa: E402
from qkvlab.errors import ConfigError  # noqa: E402
from qkvlab.infer.commands import eval_main  # noqa: E402
from qkvlab.infer.harness import QkvlabLM  # noqa: E402
from qkvlab.infer.load import load_trained  # noqa: E402
from qkvlab.infer.tasks import SUITES, check_tasks, metrics_of, task_names  # noqa: E402
from tests.conftest import REPO, qkvlab_env  # noqa: E402

TASKS = "tests/infer/lm_tasks"


def eval_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


def test_local_tasks_of_every_kind_land_in_eval_json_and_rerun_skips_them(text_run, monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the task YAMLs name their data files relative to the repository
    run_dir = text_run("variant=k_eq_v", "data.tokenizer=bpe", "data.bpe_vocab_size=300")
    eval_main([str(run_dir), "--contexts", "32"])
    eval_main([str(run_dir), "--tasks", "qkvlab_local_mc,qkvlab_local_ppl,qkvlab_local_gen", "--include-path", TASKS,
               "--batch-size", "4"])
    out = capsys.readouterr().out
    report = eval_json(run_dir)
    assert [r["context"] for r in report["results"]] == [32]  # the perplexity table is kept
    tasks = report["tasks"]
    assert set(tasks) == {"qkvlab_local_mc", "qkvlab_local_ppl", "qkvlab_local_gen"}
    mc = tasks["qkvlab_local_mc"]
    assert 0 <= mc["acc"] <= 1 and mc["acc_stderr"] > 0 and mc["checkpoint_step"] == 3
    assert tasks["qkvlab_local_ppl"]["bits_per_byte"] > 0 and 0 <= tasks["qkvlab_local_gen"]["exact_match"] <= 1
    assert f"  qkvlab_local_mc         acc                         {mc['acc']:.4f}    {mc['acc_stderr']:.4f}" in out

    lm = QkvlabLM(trained=load_trained(run_dir))  # the accuracy is the share of rows whose answer scores highest
    rows = [json.loads(line) for line in (REPO / TASKS / "mc.jsonl").read_text().splitlines()]
    from lm_eval.api.instance import Instance

    right = 0
    for row in rows:
        scores = lm.loglikelihood([Instance("loglikelihood", {}, (row["question"], c), 0) for c in row["choices"]])
        right += max(range(len(scores)), key=lambda i: scores[i][0]) == row["answer"]
    assert mc["acc"] == pytest.approx(right / len(rows))

    # Over a sweep (a shell glob's expansion): done tasks are skipped, unfinished runs said and passed over.
    other = text_run("variant=mha", "data.tokenizer=bpe", "data.bpe_vocab_size=300")
    unfinished = run_dir.parent / "unfinished"
    (unfinished / ".hydra").mkdir(parents=True)
    (unfinished / ".hydra" / "config.yaml").write_text((run_dir / ".hydra" / "config.yaml").read_text())
    eval_main([str(run_dir), str(other), str(unfinished), str(run_dir.parent / "corpus.txt"), "--tasks", "qkvlab_local_mc",
               "--include-path", TASKS])
    out, err = capsys.readouterr()
    assert "already in eval.json (same step, few-shot and limit): qkvlab_local_mc" in out
    assert set(eval_json(other)["tasks"]) == {"qkvlab_local_mc"}
    assert eval_json(run_dir)["tasks"] == tasks
    assert err.strip().splitlines()[-1] == (f"qkvlab: warning: skipping {unfinished}: {unfinished / 'checkpoints' / 'final.pt'} "
                                            "is missing; the run has not finished (status: unfinished)")

    compare_command([str(run_dir), str(other), "--no-plots", "--out", str(run_dir.parent / "compare")])  # and compare shows the task as a column
    table = capsys.readouterr().out.split("Downstream tasks (lm-eval, eval.json)")[1].strip().splitlines()
    assert "qkvlab_local_mc/acc_norm" in table[0] and table[2].startswith("mha") and table[3].startswith("k_eq_v")
    delta = mc["acc_norm"] - eval_json(other)["tasks"]["qkvlab_local_mc"]["acc_norm"]
    assert re.search(rf"{mc['acc_norm']:.4f} +{re.escape(f'{delta:+.4f}')} ", table[3])


def test_without_lm_eval_tasks_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets where it is not installed
    with pytest.raises(ConfigError) as err:
        eval_main(["some/run", "--tasks", "piqa"])
    assert str(err.value) == "--tasks needs lm-evaluation-harness, which is not installed: pip install 'qkvlab[eval]'"


@pytest.mark.parametrize("args,message", [
    (["--limit", "5"], "--limit applies to lm-eval benchmarks only; add --tasks (e.g. --tasks hellaswag)"),
    (["--tasks", "suite:nope"], "--tasks suite:nope: unknown suite; choose one of: suite:zero_shot"),
    (["--tasks", "piqa", "--contexts", "32"], "--contexts and --tasks are separate evaluations; run qkvlab eval once for each"),
])
def test_bad_task_options_are_one_line(args, message):
    with pytest.raises(ConfigError) as err:
        eval_main(["some/run", *args])
    assert str(err.value) == message


def test_an_unknown_task_is_named():
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(REPO / TASKS), include_defaults=False)
    with pytest.raises(ConfigError) as err:
        check_tasks(manager, ["qkvlab_local_mc", "no_such_task"], TASKS)
    assert str(err.value) == (f"--tasks: 'no_such_task' is not an lm-eval task or in --include-path {TASKS} "
                              "(`lm_eval ls tasks` lists them)")


def test_task_names_expand_suites_and_metrics_drop_the_filter():
    import lm_eval

    shipped = {line.split(":", 1)[1].strip() for path in (Path(lm_eval.__file__).parent / "tasks").rglob("*.yaml")
               for line in path.read_text(errors="replace").splitlines() if line.startswith("task:")}
    assert set(SUITES["zero_shot"]) <= shipped, "a suite names a task lm-eval does not ship"
    assert task_names("suite:zero_shot,piqa,extra")[-1] == "extra"
    assert task_names("piqa,piqa") == ["piqa"]
    assert metrics_of({"alias": "x", "acc,none": 0.5, "acc_stderr,none": "N/A", "exact_match,strict-match": 1.0}) == {
        "acc": 0.5, "acc_stderr": None, "exact_match/strict-match": 1.0}


@pytest.mark.slow
def test_qkvlab_eval_and_lm_evals_own_cli_give_the_same_accuracy(text_run, tmp_path, monkeypatch):
    """lm-eval's CLI indexes its few thousand task YAMLs at start (tens of seconds): the one test that pays it."""
    monkeypatch.chdir(REPO)
    run_dir = text_run("variant=mha")
    eval_main([str(run_dir), "--tasks", "qkvlab_local_mc", "--include-path", TASKS])
    env = {**qkvlab_env(tmp_path), "OMP_NUM_THREADS": "1"}
    theirs = subprocess.run([sys.executable, "-m", "qkvlab.infer.lm_eval_cli", "run", "--model", "qkvlab", "--model_args",
                             f"run_dir={run_dir}", "--tasks", "qkvlab_local_mc", "--include_path", TASKS,
                             "--output_path", str(tmp_path / "lm_eval_out")], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert theirs.returncode == 0, theirs.stderr
    result = json.loads(next((tmp_path / "lm_eval_out").rglob("results_*.json")).read_text())
    assert result["results"]["qkvlab_local_mc"]["acc,none"] == eval_json(run_dir)["tasks"]["qkvlab_local_mc"]["acc"]

"""`qkvlab eval RUN_DIR --tasks ...`: lm-evaluation-harness benchmarks on trained runs.

The benchmarks are lm-eval's own task definitions, run through `simple_evaluate` on the run's model
(qkvlab/infer/harness.py), so a number here is the number lm-eval's CLI gives for the same run. Each
task's metrics and their standard errors go into the run's eval.json under `tasks`, with the
checkpoint step, few-shot count and limit they were measured at: a later call with the same settings
skips the task, so a suite over a whole sweep can be restarted.

`suite:zero_shot` is the zero-shot set the papers at this scale report (e.g. Pythia, OLMo, the Q=K
study's reviewers): LAMBADA, HellaSwag, PIQA, ARC-e/ARC-c, WinoGrande, BoolQ, SciQ, OpenBookQA and
WikiText perplexity.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from qkvlab.errors import ConfigError
from qkvlab.infer.evaluate_run import update_eval_file
from qkvlab.infer.load import TrainedRun
from qkvlab.rundir import EVAL_FILE

INSTALL = "pip install 'qkvlab[eval]'"
SUITES = {
    "zero_shot": ["lambada_openai", "hellaswag", "piqa", "arc_easy", "arc_challenge", "winogrande", "boolq", "sciq",
                  "openbookqa", "wikitext"],
}


def require_lm_eval() -> None:
    try:
        import lm_eval  # noqa: F401
    except ImportError:
        raise ConfigError(f"--tasks needs lm-evaluation-harness, which is not installed: {INSTALL}") from None


def task_names(text: str) -> list[str]:
    """`hellaswag,piqa` or `suite:zero_shot` (suites and tasks may be mixed), in order, without repeats."""
    names: list[str] = []
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if item.startswith("suite:"):
            suite = item.removeprefix("suite:")
            if suite not in SUITES:
                raise ConfigError(f"--tasks {item}: unknown suite; choose one of: {', '.join('suite:' + s for s in SUITES)}")
            names += SUITES[suite]
        else:
            names.append(item)
    if not names:
        raise ConfigError("--tasks is empty; give lm-eval task names, e.g. --tasks hellaswag,piqa or --tasks suite:zero_shot")
    return list(dict.fromkeys(names))


def task_manager(include_path: str | None, names: Sequence[str] = ()):
    """lm-eval's task index; only the user's folder when it holds every task asked for (indexing lm-eval's
    own few thousand YAMLs takes tens of seconds)."""
    from lm_eval.tasks import TaskManager

    if include_path and names:
        own = TaskManager(include_path=include_path, include_defaults=False)
        if set(names) <= set(own.all_tasks):
            return own
    return TaskManager(include_path=include_path)


def check_tasks(manager, names: Sequence[str], include_path: str | None) -> None:
    known = set(manager.all_tasks)
    unknown = [n for n in names if n not in known]
    if unknown:
        where = f" or in --include-path {include_path}" if include_path else "; add your own with --include-path DIR"
        raise ConfigError(f"--tasks: '{unknown[0]}' is not an lm-eval task{where} (`lm_eval ls tasks` lists them)")


def settings(trained: TrainedRun, num_fewshot: int | None, limit: float | None) -> dict[str, Any]:
    return {"checkpoint_step": trained.step, "num_fewshot": num_fewshot, "limit": limit}


def done_tasks(trained: TrainedRun, names: Sequence[str], num_fewshot: int | None, limit: float | None) -> list[str]:
    """The tasks eval.json already holds for this checkpoint with these settings."""
    have = trained.run.evaluation.get("tasks", {})
    want = settings(trained, num_fewshot, limit)
    return [n for n in names if isinstance(have.get(n), dict) and all(have[n].get(k) == v for k, v in want.items())]


def metrics_of(result: dict[str, Any]) -> dict[str, float | None]:
    """lm-eval's `acc,none` / `acc_stderr,none` as `acc` / `acc_stderr` (a filter other than none is kept:
    `exact_match/strict-match`); 'N/A' stderrs become null."""
    out: dict[str, float | None] = {}
    for key, value in result.items():
        if "," not in key:
            continue
        metric, filt = key.split(",", 1)
        name = metric if filt == "none" else f"{metric}/{filt}"
        out[name] = float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
    return out


def run_tasks(
    trained: TrainedRun,
    names: Sequence[str],
    num_fewshot: int | None = None,
    limit: float | None = None,
    batch_size: int | None = None,
    include_path: str | None = None,
    manager=None,
) -> dict[str, dict[str, Any]]:
    """Evaluate `names` on the run; returns and records {task: {metric: value, ...}}."""
    from lm_eval import simple_evaluate

    from qkvlab.infer.harness import QkvlabLM

    manager = manager or task_manager(include_path, names)
    check_tasks(manager, names, include_path)
    out = simple_evaluate(
        model=QkvlabLM(trained=trained, batch_size=batch_size),
        tasks=list(names),
        num_fewshot=num_fewshot,
        limit=limit,
        task_manager=manager,
        log_samples=False,
        verbosity="ERROR",
    )
    results = {name: {**metrics_of(out["results"].get(name, {})), **settings(trained, num_fewshot, limit)} for name in names}
    update_eval_file(trained.run, {"tasks": results})
    return results


def format_tasks(trained: TrainedRun, results: dict[str, dict[str, Any]], skipped: Sequence[str]) -> str:
    cfg = trained.cfg
    lines = [f"qkvlab eval: {cfg.variant.name} on {cfg.data.name} (model {cfg.model.name}, step {trained.step}, "
             f"{trained.precision} on {trained.device}), lm-eval tasks",
             f"  {'task':<24}{'metric':<20}{'value':>14}{'stderr':>10}"]
    for task, metrics in results.items():
        for name, value in metrics.items():
            if "_stderr" in name or name in ("checkpoint_step", "num_fewshot", "limit"):
                continue
            stderr = metrics.get(name.replace("/", "_stderr/", 1) if "/" in name else f"{name}_stderr")
            lines.append(f"  {task:<24}{name:<20}{fmt(value):>14}{fmt(stderr):>10}")
    if skipped:
        lines.append(f"  already in eval.json (same step, few-shot and limit): {', '.join(skipped)}")
    if results:
        lines.append(f"  wrote {trained.run.path / EVAL_FILE}")
    return "\n".join(lines)


def fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.4f}"

"""Argument parsing for `qkvlab eval` and `qkvlab generate`; the work is in
evaluate_run.py and generate.py. Trailing key=value arguments override the
run's config (e.g. train.device=cpu data.batch_size=16)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable

import torch

from qkvlab.args import ArgumentParser, context_list
from qkvlab.errors import ConfigError


def readable_run(run_dir: str) -> None:
    """A run whose summary.json is torn is refused in one line naming the file, before any work."""
    from qkvlab.rundir import load_run

    run = load_run(run_dir)
    if run.unreadable:
        raise ConfigError(run.unreadable)


def eval_main(args: list[str]) -> None:
    parser = ArgumentParser(
        prog="qkvlab eval",
        description="Validation loss/ppl (and accuracy on synthetic tasks) of trained runs at several context "
        "lengths, or lm-evaluation-harness benchmarks with --tasks; writes RUN_DIR/eval.json.",
    )
    parser.add_argument("targets", nargs="+", metavar="RUN_DIR [key=value ...]",
                        help="run directories (or sweep directories, globs), then config overrides, e.g. train.device=cpu")
    parser.add_argument("--contexts", type=context_list, default=None,
                        help="context lengths, e.g. 512,1024,2048 (default: the run's seq_len and those of "
                        "512,1024,2048 that fit model.context; synthetic tasks: their seq_len)")
    parser.add_argument("--tasks", default=None,
                        help="lm-eval tasks, e.g. hellaswag,piqa,arc_easy, or suite:zero_shot (needs qkvlab[eval])")
    parser.add_argument("--num-fewshot", type=int, default=None, help="few-shot examples per task (default: the task's)")
    parser.add_argument("--limit", type=limit_value, default=None, help="examples per task: a count, or a fraction below 1")
    parser.add_argument("--batch-size", type=int, default=None, help="sequences per forward pass for --tasks (default 16)")
    parser.add_argument("--include-path", default=None, help="a folder of your own lm-eval task YAMLs")
    parser.add_argument("--data.path", dest="heldout", default=None, metavar="FILE",
                        help="score this held-out text (a file or folder, as data.path) with the run's tokenizer "
                        "at each context, instead of the run's validation split; reports bits per byte too")
    ns = parser.parse_intermixed_args(args)
    overrides = [t for t in ns.targets if "=" in t]
    run_dirs = [t for t in ns.targets if "=" not in t]
    if not run_dirs:
        raise ConfigError("give a run directory: qkvlab eval RUN_DIR [key=value ...]")
    if ns.heldout is not None:
        if ns.tasks is not None:
            raise ConfigError("--data.path and --tasks are separate evaluations; run qkvlab eval once for each")
        from qkvlab.infer.heldout import evaluate_heldout

        each_run(eval_targets(run_dirs), lambda run_dir: evaluate_heldout(run_dir, overrides, ns.contexts, ns.heldout))
        return
    if ns.tasks is None:
        extra = next((f"--{k.replace('_', '-')}" for k in ("num_fewshot", "limit", "batch_size", "include_path")
                      if getattr(ns, k) is not None), None)
        if extra:
            raise ConfigError(f"{extra} applies to lm-eval benchmarks only; add --tasks (e.g. --tasks hellaswag)")
        from qkvlab.infer.evaluate_run import evaluate_run, format_report

        each_run(eval_targets(run_dirs), lambda run_dir: format_report(evaluate_run(run_dir, overrides, ns.contexts)))
        return
    if ns.contexts is not None:
        raise ConfigError("--contexts and --tasks are separate evaluations; run qkvlab eval once for each")
    eval_tasks(ns, run_dirs, overrides)


def limit_value(text: str) -> float | int:
    """lm-eval's --limit: a count of examples, or a fraction of each task below 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got '{text}'") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} must be above 0")
    return int(value) if value >= 1 else value


def eval_targets(paths: list[str]) -> list[str]:
    """One run directory as given (so a missing one is said as such); several, or a sweep directory, are
    searched for run directories."""
    from qkvlab.rundir import find_runs, is_run_dir

    if len(paths) == 1 and (is_run_dir(Path(paths[0])) or not Path(paths[0]).exists()):
        return paths
    runs = [str(run.path) for run in find_runs(paths)]
    if not runs:
        raise ConfigError(f"no run directories in {' '.join(paths)}; pass run directories written by qkvlab train")
    return runs


def each_run(targets: list[str], job: Callable[[str], str]) -> None:
    """Print job(run_dir) for each run. With several (a sweep), a run that cannot be evaluated (unfinished,
    torn, its corpus changed) is said in one warning line and passed over, so one bad run does not stop a suite."""
    for run_dir in targets:
        try:
            readable_run(run_dir)
            text = job(run_dir)
        except ConfigError as exc:
            if len(targets) == 1:
                raise
            print(f"qkvlab: warning: skipping {run_dir}: {exc}", file=sys.stderr, flush=True)
            continue
        print(text, flush=True)


def eval_tasks(ns, run_dirs: list[str], overrides: list[str]) -> None:
    from qkvlab.infer.load import load_trained
    from qkvlab.infer.tasks import check_tasks, done_tasks, format_tasks, require_lm_eval, run_tasks, task_manager, task_names

    require_lm_eval()
    names = task_names(ns.tasks)
    if ns.batch_size is not None and ns.batch_size < 1:
        raise ConfigError(f"--batch-size={ns.batch_size} must be at least 1")
    if ns.include_path is not None and not Path(ns.include_path).is_dir():
        raise ConfigError(f"--include-path {ns.include_path} is not a directory; give the folder that holds your task YAMLs")
    targets = eval_targets(run_dirs)
    manager = task_manager(ns.include_path, names)
    check_tasks(manager, names, ns.include_path)

    def job(run_dir: str) -> str:
        trained = load_trained(run_dir, overrides)
        skipped = done_tasks(trained, names, ns.num_fewshot, ns.limit)
        todo = [n for n in names if n not in skipped]
        results = run_tasks(trained, todo, ns.num_fewshot, ns.limit, ns.batch_size, ns.include_path, manager) if todo else {}
        return format_tasks(trained, results, skipped)

    each_run(targets, job)


def run_tokenizer(data):
    """The tokenizer a text run trained with (its token cache keeps it); None for synthetic data."""
    tokens = getattr(data, "tokens", None)
    return tokens.tokenizer() if tokens is not None else None


def parse_prompt(text: str, vocab_size: int, tokenizer) -> list[int]:
    if tokenizer is not None:
        ids = [int(i) for i in tokenizer.encode_batch([text])[0]]
    else:
        try:
            ids = [int(t) for t in text.replace(",", " ").split()]
        except ValueError:
            raise ConfigError(
                f"--prompt '{text}': this run has no tokenizer (synthetic data); give token ids, e.g. --prompt '3 17 5'"
            ) from None
    if not ids:
        raise ConfigError("--prompt is empty; give at least one token")
    bad = [i for i in ids if not 0 <= i < vocab_size]
    if bad:
        raise ConfigError(f"--prompt: token id {bad[0]} is outside the vocabulary 0..{vocab_size - 1}")
    return ids


def generate_main(args: list[str]) -> None:
    from qkvlab.infer.generate import Sampling, check_sampling, generate
    from qkvlab.infer.load import load_trained

    parser = ArgumentParser(prog="qkvlab generate", description="Sample from a trained causal run with a KV cache.")
    parser.add_argument("run_dir")
    parser.add_argument("--prompt", required=True, help="text (text runs) or token ids (synthetic runs)")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--temperature", type=float, default=1.0, help="0 is greedy")
    parser.add_argument("--top-k", type=int, default=0, help="0 keeps every token")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--num-samples", type=int, default=1)
    parser.add_argument("--no-cache", action="store_true", help="recompute the full sequence each step (reference)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.device=cpu")
    ns = parser.parse_intermixed_args(args)
    s = Sampling(ns.max_new_tokens, ns.temperature, ns.top_k, ns.top_p)
    check_sampling(s)
    if ns.num_samples < 1:
        raise ConfigError(f"--num-samples={ns.num_samples} must be at least 1")
    readable_run(ns.run_dir)
    trained = load_trained(ns.run_dir, ns.overrides)
    if not trained.cfg.data.causal:
        raise ConfigError(f"data.task={trained.cfg.data.task} is bidirectional: it has no decoding; generate needs a causal run")
    tokenizer = run_tokenizer(trained.data())
    ids = parse_prompt(ns.prompt, trained.model.vocab_size, tokenizer)
    prompt = torch.tensor([ids] * ns.num_samples, device=trained.device)
    gen = torch.Generator(device=trained.device).manual_seed(ns.seed)
    out = generate(trained.model, prompt, s, gen, use_cache=not ns.no_cache, amp=trained.amp(), cache_dtype=trained.dtype)
    texts = [tokenizer.decode(ids + row) if tokenizer is not None else " ".join(map(str, ids + row)) for row in out.tolist()]
    print(samples_text(texts), flush=True)


def samples_text(texts: list[str]) -> str:
    """One sample as it is; several each under a header line, since a text sample holds newlines of its own."""
    if len(texts) == 1:
        return texts[0]
    return "\n".join(f"--- sample {i} of {len(texts)} ---\n{text}" for i, text in enumerate(texts, 1))

"""Argument parsing for `qkvlab eval` and `qkvlab generate`; the work is in
evaluate_run.py and generate.py. Trailing key=value arguments override the
run's config (e.g. train.device=cpu data.batch_size=16)."""

from __future__ import annotations

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
    from qkvlab.infer.evaluate_run import evaluate_run, format_report

    parser = ArgumentParser(
        prog="qkvlab eval",
        description="Validation loss/ppl (and accuracy on synthetic tasks) of a trained run at several context "
        "lengths; writes RUN_DIR/eval.json.",
    )
    parser.add_argument("run_dir")
    parser.add_argument("--contexts", type=context_list, default=None,
                        help="context lengths, e.g. 512,1024,2048 (default: the run's seq_len and those of "
                        "512,1024,2048 that fit model.context; synthetic tasks: their seq_len)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.device=cpu")
    ns = parser.parse_intermixed_args(args)
    readable_run(ns.run_dir)
    print(format_report(evaluate_run(ns.run_dir, ns.overrides, ns.contexts)), flush=True)


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

"""A trained run as an lm-evaluation-harness model (`lm_eval --model qkvlab --model_args run_dir=RUN_DIR`).

lm-eval (EleutherAI, `lm_eval.api.model.LM`, v0.4.13) asks three things of a model: the log-probability
of a continuation after a context and whether greedy decoding would produce it (multiple-choice tasks),
the log-probability of a whole document (perplexity tasks), and text decoded until a stop string
(generation tasks). Benchmarks are lm-eval's; only these three calls are qkvlab's, so every variant is
scored by the same task code as any published model.

What follows lm-eval's reference models (`TemplateLM`, `HFLM`) so scores compare with theirs: a context
and its continuation are encoded together and split where the context's own tokens end, the context's
trailing spaces moving to the continuation (BPE merges a space with the word after it); an empty
context is conditioned on end-of-text; input longer than the model is cut from the left; documents are
scored in lm-eval's own rolling windows (`get_rolling_token_windows`, one token of context: disjoint
windows of `max_length`, the first conditioned on end-of-text), which are the windows `qkvlab eval`
cuts its validation stream into. Generation decodes with the run's real KV cache and stops at the
first `until` string or end-of-text. The tokenizer is always the run's own (the one in its token cache).
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from qkvlab.errors import ConfigError
from qkvlab.infer.commands import run_tokenizer
from qkvlab.infer.generate import Sampling, stream
from qkvlab.infer.load import TrainedRun, load_trained

DEFAULT_BATCH = 16
DEFAULT_MAX_GEN_TOKS = 256


def batch_size_of(value: Any) -> int:
    """lm-eval passes `--batch_size` as text; 'auto' (its default choice for HF models) is ours."""
    if value is None or str(value).startswith("auto"):
        return DEFAULT_BATCH
    try:
        size = int(value)
    except ValueError:
        raise ConfigError(f"batch_size={value} is not a whole number; give e.g. --batch-size 16") from None
    if size < 1:
        raise ConfigError(f"batch_size={size} must be at least 1")
    return size


def device_override(device: str | None) -> list[str]:
    """lm-eval's `--device cuda:0` as qkvlab's `train.device` (auto|cpu|cuda|mps). lm-eval's CLI asks for
    cuda by default; like its HF model, a machine without CUDA then runs where it can (train.device=auto)."""
    if not device:
        return []
    name = device.split(":")[0]
    if name == "cuda" and not torch.cuda.is_available():
        name = "auto"
    return [f"train.device={name}"]


@register_model("qkvlab")
class QkvlabLM(LM):
    def __init__(
        self,
        run_dir: str | None = None,
        batch_size: Any = None,
        max_batch_size: Any = None,
        device: str | None = None,
        max_length: Any = None,
        max_gen_toks: Any = DEFAULT_MAX_GEN_TOKS,
        trained: TrainedRun | None = None,
        **unused: Any,
    ):
        super().__init__()
        if unused:
            raise ConfigError(f"model_args: the qkvlab model has no argument '{next(iter(unused))}'; it takes run_dir, "
                              "max_length, max_gen_toks (and lm-eval's batch_size, device)")
        if trained is None:
            if not run_dir:
                raise ConfigError("the qkvlab model needs run_dir: --model_args run_dir=RUN_DIR")
            trained = load_trained(run_dir, device_override(device))
        if not trained.cfg.data.causal:
            raise ConfigError(
                f"data.task={trained.cfg.data.task} is bidirectional; lm-eval tasks score a causal language model (a text run)"
            )
        tokenizer = run_tokenizer(trained.data())
        if tokenizer is None:
            raise ConfigError(
                f"data.task={trained.cfg.data.task} has no tokenizer; lm-eval tasks need a run trained on text (data=text, ...)"
            )
        self.trained = trained
        self.model = trained.model
        self.tokenizer = tokenizer
        self.eot = self.tokenizer.eot
        self._device = trained.device
        self.batch = batch_size_of(batch_size)
        self.max_length = int(max_length) if max_length else self.model.cfg.context
        if not 2 <= self.max_length <= self.model.cfg.context:
            raise ConfigError(f"max_length={self.max_length} is outside 2..model.context={self.model.cfg.context}")
        self.max_gen_toks = int(max_gen_toks)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def tokenizer_name(self) -> str:
        return str(self.trained.cfg.data.tokenizer)

    def tok_encode(self, text: str) -> list[int]:
        return [int(i) for i in self.tokenizer.encode_batch([text])[0]] if text else []

    def tok_decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(ids)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip())
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tok_encode(context + continuation)
        ctx = self.tok_encode(context)
        return (ctx, whole[len(ctx):]) if ctx else ([self.eot], whole)

    # -- log-likelihoods -------------------------------------------------------------------------

    @torch.no_grad()
    def score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        """(context, continuation) token lists to (sum of the continuation's log-probs, is it the argmax at
        every position), in batches of similar length, right-padded (a causal model never looks right)."""
        rows = []
        for ctx, cont in pairs:
            if not cont:
                rows.append(([], 0))
                continue
            if len(cont) > self.max_length:
                raise ValueError(f"a continuation of {len(cont)} tokens is longer than max_length={self.max_length}")
            tokens = (ctx + cont)[-(self.max_length + 1):]
            rows.append((tokens[:-1], len(cont)))
        out: list[tuple[float, bool]] = [(0.0, True)] * len(rows)
        order = sorted((i for i, (inp, _) in enumerate(rows) if inp), key=lambda i: -len(rows[i][0]))
        for start in range(0, len(order), self.batch):
            chunk = order[start : start + self.batch]
            width = len(rows[chunk[0]][0])
            x = torch.full((len(chunk), width), self.eot, dtype=torch.long)
            for r, i in enumerate(chunk):
                x[r, : len(rows[i][0])] = torch.tensor(rows[i][0])
            with self.trained.amp():
                logits = self.model(x.to(self.device))
            for r, i in enumerate(chunk):
                inp, n_cont = rows[i]
                n = len(inp)
                target = torch.tensor(pairs[i][1], device=self.device)
                lp = F.log_softmax(logits[r, n - n_cont : n].float(), dim=-1)  # only the scored positions: vocab × T is large
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = [self.encode_pair(*req.args) for req in requests]
        results = self.score(pairs)
        for req, result in zip(requests, results):
            self.cache_hook.add_partial("loglikelihood", req.args, result)
        return results

    def rolling_windows(self, text: str) -> list[tuple[list[int], list[int]]]:
        tokens = self.tok_encode(text)
        windows = get_rolling_token_windows(tokens, prefix_token=self.eot, max_seq_len=self.max_length, context_len=1)
        return [make_disjoint_window(w) for w in windows]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        per_doc = [self.rolling_windows(req.args[0]) for req in requests]
        flat = self.score([w for windows in per_doc for w in windows])
        results, at = [], 0
        for req, windows in zip(requests, per_doc):
            total = sum(lp for lp, _ in flat[at : at + len(windows)])
            at += len(windows)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return results

    # -- generation ------------------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Batched where prompts (after truncation) have the same length and the same settings: the model
        has no padding mask, so prompts of different lengths cannot share a batch without changing scores."""
        jobs = [self.generation_job(*req.args) for req in requests]
        out: list[str] = [""] * len(jobs)
        groups: dict[tuple, list[int]] = {}
        for i, (prompt, until, s) in enumerate(jobs):
            groups.setdefault((len(prompt), tuple(until), s), []).append(i)
        for (_, until, s), members in groups.items():
            for start in range(0, len(members), self.batch):
                chunk = members[start : start + self.batch]
                texts = self.decode_until(torch.tensor([jobs[i][0] for i in chunk]), list(until), s)
                for i, text in zip(chunk, texts):
                    out[i] = text
        for req, text in zip(requests, out):
            self.cache_hook.add_partial("generate_until", req.args, text)
        return out

    def generation_job(self, context: str, gen_kwargs: dict | None) -> tuple[list[int], list[str], Sampling]:
        kwargs = dict(gen_kwargs or {})
        until = kwargs.pop("until", None) or []
        until = [until] if isinstance(until, str) else list(until)
        max_new = int(kwargs.pop("max_gen_toks", self.max_gen_toks))
        max_new = max(1, min(max_new, self.max_length - 1))
        temperature = float(kwargs.pop("temperature", 0.0) or 0.0)
        if not kwargs.pop("do_sample", temperature > 0):
            temperature = 0.0
        prompt = (self.tok_encode(context) or [self.eot])[-(self.max_length - max_new):]
        return prompt, until, Sampling(max_new, temperature, int(kwargs.pop("top_k", 0) or 0), float(kwargs.pop("top_p", 1.0) or 1.0))

    def decode_until(self, prompt: torch.Tensor, until: list[str], s: Sampling) -> list[str]:
        """Decode with the KV cache; each row's text ends before its first stop string or end-of-text, and
        decoding ends once every row has stopped."""
        B = prompt.shape[0]
        new: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        gen = torch.Generator(device=self.device).manual_seed(0)
        for tok in stream(self.model, prompt.to(self.device), s, gen, amp=self.trained.amp(), cache_dtype=self.trained.dtype):
            for r, t in enumerate(tok.tolist()):
                if done[r]:
                    continue
                if t == self.eot:
                    done[r] = True
                    continue
                new[r].append(t)
                if until and any(u in self.tok_decode(new[r]) for u in until):
                    done[r] = True
            if all(done):
                break
        return [cut_at(self.tok_decode(ids), until) for ids in new]


def cut_at(text: str, until: Sequence[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    for u in until:
        if u:
            text = text.split(u, 1)[0]
    return text

"""Sampling with the KV cache, and the full-recomputation reference it must match.

The prompt is prefilled in one pass; every new token is then one position of
decoding against the cache. `use_cache=False` recomputes the whole sequence
each step instead: slower, and the yardstick the tests hold the cache to.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Iterator, Optional

import torch

from qkvlab.model.kv_cache import KVCache


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int = 64
    # 0: greedy (argmax).
    temperature: float = 1.0
    # 0: no top-k cut.
    top_k: int = 0
    # 1.0: no nucleus cut.
    top_p: float = 1.0


def check_sampling(s: Sampling) -> None:
    from qkvlab.errors import ConfigError

    if s.max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens={s.max_new_tokens} must be at least 1")
    if not (math.isfinite(s.temperature) and s.temperature >= 0):
        raise ConfigError(f"--temperature={s.temperature} must be a finite number >= 0 (0 is greedy)")
    if s.top_k < 0:
        raise ConfigError(f"--top-k={s.top_k} must be >= 0 (0 keeps every token)")
    if not 0 < s.top_p <= 1:
        raise ConfigError(f"--top-p={s.top_p} must be in (0, 1]")


def next_token(logits: torch.Tensor, s: Sampling, generator: Optional[torch.Generator]) -> torch.Tensor:
    """(B, vocab) logits to (B,) token ids."""
    logits = logits.float()
    if s.temperature == 0:
        return logits.argmax(-1)
    logits = logits / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass before it already reaches top_p; the first always stays.
        drop = probs.cumsum(-1) - probs >= s.top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_length(model, prompt_len: int, max_new_tokens: int) -> None:
    if prompt_len + max_new_tokens > model.cfg.context:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max new tokens ({max_new_tokens}) is above the model's context "
            f"({model.cfg.context}); shorten the prompt or lower --max-new-tokens"
        )


@torch.no_grad()
def stream(
    model,
    prompt: torch.Tensor,
    s: Sampling,
    generator: Optional[torch.Generator] = None,
    use_cache: bool = True,
    amp=None,
    cache_dtype: Optional[torch.dtype] = None,
) -> Iterator[torch.Tensor]:
    """The new tokens of a (B, T) prompt one step at a time, each (B,): a caller may stop early
    (lm-eval's stop strings) without paying for the steps it does not take."""
    amp = amp or contextlib.nullcontext()
    B, T = prompt.shape
    check_length(model, T, s.max_new_tokens)
    seq = prompt
    cache = KVCache(model, B, T + s.max_new_tokens, cache_dtype) if use_cache else None
    with amp:
        logits = model(prompt, cache, 0)[:, -1] if use_cache else model(prompt)[:, -1]
    for i in range(s.max_new_tokens):
        tok = next_token(logits, s, generator)
        yield tok
        if i == s.max_new_tokens - 1:
            return
        with amp:
            if use_cache:
                logits = model(tok[:, None], cache, T + i)[:, -1]
            else:
                seq = torch.cat([seq, tok[:, None]], dim=1)
                logits = model(seq)[:, -1]


def generate(
    model,
    prompt: torch.Tensor,
    s: Sampling,
    generator: Optional[torch.Generator] = None,
    use_cache: bool = True,
    amp=None,
    cache_dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    """(B, T) prompt to (B, max_new_tokens) new tokens."""
    return torch.stack(list(stream(model, prompt, s, generator, use_cache, amp, cache_dtype)), dim=1)

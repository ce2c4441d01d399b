"""Text to token ids: bytes, a BPE trained on the corpus, or a pretrained hub tokenizer.

Every tokenizer has an end-of-text id (`eot`) that packing puts between
documents. BPE is byte-level (GPT-2 style), so any text round-trips exactly and
no id is ever unknown.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

import numpy as np

from qkvlab.config import DataConfig
from qkvlab.errors import ConfigError

EOT_TEXT = "<|endoftext|>"
_EOT_CANDIDATES = (EOT_TEXT, "</s>", "<eos>", "<|end_of_text|>", "[SEP]")
# 2: the BPE cache records a checksum of tokenizer.json.
TOKENIZER_FORMAT = 2


class TextTokenizer(Protocol):
    vocab_size: int
    eot: int

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]: ...

    def decode(self, ids: Iterable[int]) -> str: ...

    def spec(self) -> tuple[str, str]:
        """Enough to rebuild this tokenizer in a worker process."""
        ...


class ByteTokenizer:
    """UTF-8 bytes 0-255 plus end-of-text 256: no training, no download."""

    vocab_size = 257
    eot = 256

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(int(i) for i in ids if int(i) < 256).decode("utf-8", errors="replace")

    def spec(self) -> tuple[str, str]:
        return ("byte", "")


class HFTokenizer:
    """A Hugging Face `tokenizers.Tokenizer` (trained BPE or pretrained)."""

    def __init__(self, tok):
        self.tok = tok
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        eot = next((tok.token_to_id(t) for t in _EOT_CANDIDATES if tok.token_to_id(t) is not None), None)
        if eot is None:
            raise ConfigError(f"the tokenizer has no end-of-text token (looked for {', '.join(_EOT_CANDIDATES)}); pick another data.tokenizer")
        self.eot = eot

    @classmethod
    def from_str(cls, text: str) -> "HFTokenizer":
        from tokenizers import Tokenizer

        return cls(Tokenizer.from_str(text))

    def encode_batch(self, texts: list[str]) -> list[np.ndarray]:
        encode = getattr(self.tok, "encode_batch_fast", self.tok.encode_batch)  # fast: no character offsets
        return [np.asarray(e.ids, dtype=np.uint32) for e in encode(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def spec(self) -> tuple[str, str]:
        return ("hf", self.tok.to_str())


def from_spec(spec: tuple[str, str]) -> TextTokenizer:
    kind, payload = spec
    return ByteTokenizer() if kind == "byte" else HFTokenizer.from_str(payload)


def check_tokenizer(d: DataConfig) -> None:
    if not d.tokenizer:
        raise ConfigError("data.tokenizer is empty; use byte, bpe, or a hub tokenizer name such as gpt2")
    if d.tokenizer == "bpe" and not 258 <= d.bpe_vocab_size <= 1 << 20:
        raise ConfigError(f"data.bpe_vocab_size={d.bpe_vocab_size} is out of range; it must be in [258, {1 << 20}] (256 bytes, end-of-text, merges)")


def identity(d: DataConfig, corpus_identity: dict[str, Any]) -> dict[str, Any]:
    """What makes two tokenizers the same (a BPE is also its training corpus)."""
    if d.tokenizer == "byte":
        return {"kind": "byte"}
    if d.tokenizer == "bpe":
        return {"kind": "bpe", "vocab": d.bpe_vocab_size, "corpus": corpus_identity, "max_tokens": d.max_tokens, "format": TOKENIZER_FORMAT}
    return {"kind": "hub", "name": d.tokenizer}


def train_bpe(texts: Iterator[str], vocab_size: int, show_progress: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOT_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def bpe_training_texts(docs: Iterator[str], max_tokens: int | None) -> Iterator[str]:
    """The training documents, or for a capped corpus about as much text as the cap covers (4 bytes a token)."""
    budget = None if max_tokens is None else 4 * max_tokens
    seen = 0
    for text in docs:
        yield text
        seen += len(text)
        if budget is not None and seen >= budget:
            return


def load_tokenizer(
    d: DataConfig,
    corpus_identity: dict[str, Any],
    documents: Callable[[], Iterator[str]],
    progress: bool = True,
) -> TextTokenizer:
    """The tokenizer data.tokenizer names; a BPE is trained once per corpus and cached."""
    if d.tokenizer == "byte":
        return ByteTokenizer()
    if d.tokenizer == "bpe":
        from qkvlab.data.cache import build_once, cache_root, entry_name, write_meta
        from qkvlab.data.integrity import check_file, file_crc, read_meta

        ident = identity(d, corpus_identity)
        path = cache_root() / "tokenizers" / entry_name(f"bpe{d.bpe_vocab_size}", ident)

        def build(tmp: Path) -> None:
            import time

            start = time.perf_counter()
            tok = train_bpe(bpe_training_texts(documents(), d.max_tokens), d.bpe_vocab_size, show_progress=progress)
            tok.save(str(tmp / "tokenizer.json"))
            write_meta(tmp, {"identity": ident, "vocab_size": tok.get_vocab_size(), "seconds": time.perf_counter() - start,
                             "crc32": file_crc(tmp / "tokenizer.json")})

        what = "BPE tokenizer cache"
        build_once(path, build, what)
        check_file(path, "tokenizer.json", read_meta(path, what, ("crc32",))["crc32"], what)
        return HFTokenizer.from_str((path / "tokenizer.json").read_text())
    return _pretrained(d.tokenizer)


def _pretrained(name: str) -> TextTokenizer:
    from huggingface_hub import constants
    from tokenizers import Tokenizer

    from qkvlab.data.corpus import go_offline, hub_reachable

    if not constants.HF_HUB_OFFLINE and not hub_reachable():
        go_offline()
    try:
        return HFTokenizer(Tokenizer.from_pretrained(name))
    except Exception as exc:  # the hub client raises many types for "not found" and "offline"
        reason = (
            "the network (huggingface.co) is unreachable and it is not cached"
            if constants.HF_HUB_OFFLINE
            else f"it could not be loaded ({type(exc).__name__})"
        )
        raise ConfigError(f"data.tokenizer={name} is not usable: {reason}; use data.tokenizer=bpe (trained locally) or byte") from exc

"""`init_from=RUN_DIR`: a run that starts from another run's final weights, copied or converted to K=V.

One path serves `qkvlab train init_from=...` (fine-tuning, uptraining), `qkvlab convert` and
`experiment=kv_conversion`: the weights are set once, right after the model is built and before a
checkpoint of the run's own is looked for, so an interrupted run resumes from its own checkpoints and
never re-initialises. The source is read through `from_run.read_finished_run`; it must have trained
on the same data with the same tokenizer and vocabulary, and its model must be the same (its name
and dropout aside). Then either the variant is the same (weights copied) or the source shares like
`mha` and the target is its `k_eq_v` form with the same heads (converted, qkvlab/model/convert.py).
Anything else is one line naming what differs.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import torch

from qkvlab.config import Config, convert_alpha
from qkvlab.data import MISSING, check_same_data
from qkvlab.errors import ConfigError
from qkvlab.model import Transformer, build_model
from qkvlab.model.convert import converted_state, fit_value_maps
from qkvlab.runname import source_identity
from qkvlab.train.checkpoint import shape_diffs
from qkvlab.train.from_run import FINAL_CHECKPOINT, FinishedRun, read_finished_run

# Model keys that may differ between a source run and a run started from it.
FREE_MODEL_KEYS = ("name", "dropout")
# Data keys that decide what a token means (the corpus itself is checked by its checksum).
SAME_DATA_KEYS = ("task", "causal", "tokenizer", "bpe_vocab_size", "num_keys", "num_values")
# Tokens of training data the `fit` map is estimated on.
FIT_TOKENS = 16384


@functools.lru_cache(maxsize=4)
def _source(path: str, stamp: tuple[int, int] | None) -> FinishedRun:
    return read_finished_run(path, "init_from")


def source_run(cfg: Config) -> FinishedRun:
    """The source run, read once per process while its final checkpoint stays the same file (a sweep's jobs share it)."""
    path = Path(cfg.init_from).expanduser().resolve()
    try:
        st = (path / FINAL_CHECKPOINT).stat()
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:
        stamp = None
    return _source(str(path), stamp)


def _differs(a: Any, b: Any, group: str, skip: tuple[str, ...]) -> list[str]:
    x, y = dataclasses.asdict(a), dataclasses.asdict(b)
    return [f"{group}.{k} ({x[k]!r} -> {y[k]!r})" for k in x if k not in skip and x[k] != y[k]]


def conversion(cfg: Config, src: Config) -> bool:
    """Whether the weights are converted (mha sharing -> k_eq_v) rather than copied; ConfigError when neither fits."""
    where = f"init_from={cfg.init_from}"
    model = _differs(src.model, cfg.model, "model", FREE_MODEL_KEYS)
    if model:
        raise ConfigError(f"{where} trained another model: {', '.join(model)}; give the source's values")
    data = [f"data.{k} ({getattr(src.data, k)!r} -> {getattr(cfg.data, k)!r})" for k in SAME_DATA_KEYS
            if getattr(src.data, k) != getattr(cfg.data, k)]
    if data:
        raise ConfigError(f"{where} trained on other data: {', '.join(data)}; give the source's values")
    variant = _differs(src.variant, cfg.variant, "variant", ("name",))
    if not variant:
        if cfg.convert.alpha is not None:
            raise ConfigError(
                f"convert.alpha={cfg.convert.alpha} converts an mha-sharing run to its k_eq_v form, but {where} is "
                f"already variant {src.variant.name} like this run; drop convert.alpha to copy its weights"
            )
        return False
    converts = (
        src.variant.family == cfg.variant.family == "shared_qkv"
        and (src.variant.sharing, cfg.variant.sharing) == ("mha", "k_eq_v")
        and variant == [f"variant.sharing ('mha' -> 'k_eq_v')"]
    )
    if not converts:
        raise ConfigError(
            f"{where} is variant {src.variant.name}, and this run differs in {', '.join(variant)}; init_from copies "
            "the same variant, or converts an mha-sharing run (mha, gqa, mqa, cla, ...) to the same variant with "
            "variant.sharing=k_eq_v"
        )
    if cfg.convert.alpha is None:
        raise ConfigError(
            f"{where} has separate W_K and W_V and this run shares them (variant.sharing=k_eq_v); say how to merge "
            "them: add convert.alpha=A (A in [0, 1]: W_KV = A·W_K + (1 − A)·W_V), convert.alpha=fit or convert.alpha=random"
        )
    if cfg.convert.alpha == "fit" and cfg.variant.v_norm:
        raise ConfigError(
            "convert.alpha=fit folds a linear map of the values into W_O, which variant.v_norm=true (a norm on the "
            "values) breaks; use a number or random"
        )
    return True


def check_init_from(cfg: Config) -> None:
    """At start-up, for every job of a sweep: the source is finished and fits this run (shapes included)."""
    if cfg.init_from is None:
        return
    src = source_run(cfg)
    converts = conversion(cfg, src.cfg)
    with torch.device("meta"):
        target = build_model(cfg, src.vocab_size)
        source = build_model(src.cfg, src.vocab_size) if converts else None
    if converts:
        with torch.device("meta"):
            state = converted_state(source, target, 0.5)
    else:
        state = src.state
    check_fits(state, target, cfg.init_from)


def check_fits(state: dict[str, torch.Tensor], model: torch.nn.Module, where: str) -> None:
    shown = shape_diffs(state, model)
    if shown:
        raise ConfigError(f"init_from={where}: parameters differ in shape: {shown}; give the source's model and variant shape")


def start_weights(cfg: Config, model: Transformer, data, vocab: int) -> dict[str, Any]:
    """Load init_from's weights (copied or converted) into `model`; what summary.json records of the source.
    Nothing when init_from is null."""
    if cfg.init_from is None:
        return {}
    src = source_run(cfg)
    where = f"init_from={cfg.init_from}"
    check_same_data(src.payload.get("data", MISSING), data, where, "point init_from at a run trained on this data")
    if src.vocab_size != vocab:
        raise ConfigError(
            f"{where} has a vocabulary of {src.vocab_size:,} rows and this run {vocab:,}; give the source's "
            "data.tokenizer and model.vocab_size"
        )
    alpha = convert_alpha(cfg.convert.alpha)
    if conversion(cfg, src.cfg):
        source = src.model("cpu")
        maps = None
        if alpha == "fit":
            maps = fit_value_maps(source, _fit_inputs(data), with_intercept=cfg.model.bias)
        state = converted_state(source, model, alpha, maps)
    else:
        state = src.state
    check_fits(state, model, cfg.init_from)
    model.load_state_dict(state)
    return {
        "init_from/path": str(src.run.path.resolve()),
        "init_from/run": src.run.path.resolve().name,
        "init_from/run_id": src.run.run_id,
        # What the run directory's hash holds for init_from: the source's name and final checkpoint's CRC32.
        "init_from/identity": source_identity(str(src.run.path)),
        "init_from/variant": src.cfg.variant.name,
        **({"convert/alpha": cfg.convert.alpha} if cfg.convert.alpha is not None else {}),
    }


def _fit_inputs(data):
    """Training batches in step order until FIT_TOKENS tokens: a sample of the run's own data."""
    seen, step = 0, 0
    while seen < FIT_TOKENS:
        x, _ = data.train_batch(step, 0)
        seen += x.numel()
        step += 1
        yield x.cpu()

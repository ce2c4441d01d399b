"""Typed, strict configuration.

Hydra composes `qkvlab/conf/`; these dataclasses are the schema it merges into, so an
unknown key fails at composition with its full name. `validate` then checks the
values that a schema cannot (ranges, choices, cross-field rules) and raises a
`ConfigError` whose message is one line that says what to change.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from qkvlab.errors import ConfigError

# The Hydra configs ship inside the package (package data), so an installed wheel finds them too.
CONF_DIR = Path(__file__).resolve().parent / "conf"
SHARINGS = ("mha", "q_eq_k", "k_eq_v", "q_eq_k_eq_v")
POSITIONS = ("rope", "learned", "none")
NORMS = ("rmsnorm", "layernorm")
MLPS = ("swiglu", "gelu", "gelu_tanh")
EMBEDDINGS = ("table", "onehot_linear")
INITS = ("gpt2", "pytorch")
MATCH_MODES = ("none", "mlp", "layers")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
# auto: DDP when a launcher (torchrun) started more than one process, one process otherwise;
# fsdp: FSDP2, parameters, gradients and optimizer state sharded over the processes.
PARALLELS = ("auto", "none", "ddp", "fsdp")
WANDB_MODES = ("auto", "online", "offline", "disabled")
NONFINITE_POLICIES = ("skip", "stop")
RESUME_MODES = ("auto", "never")
# Bumped when checkpoints or run directories change in a way older code cannot read.
FORMAT_VERSION = 1
LOGGER_BACKENDS = ("wandb", "none")


@dataclass
class VariantConfig:
    name: str = "mha"
    family: str = "shared_qkv"
    sharing: str = "mha"
    # Query heads per KV head (4 = GQA-4); ignored when n_kv_heads is set.
    kv_group_size: int = 1
    n_kv_heads: Optional[int] = None
    # Cross-layer KV sharing. share_every=s (CLA): in each block of s layers the first computes
    # K/V and the others reuse them. kv_shared_layers=N (Gemma 3n/4): the last N layers reuse the
    # K/V of the last layer before them. A reusing layer owns no K/V weights and caches nothing.
    share_every: int = 1
    kv_shared_layers: int = 0
    # family=expanded: columns of the learned d_head x rank matrix U (null: 3 * d_head).
    rank: Optional[int] = None
    # family=loop: keys (the token itself included) the second pass's local attention sees (null: 64).
    window: Optional[int] = None
    # RMSNorm over d_head on queries and keys before RoPE; with k_eq_v only the key path (values stay S).
    qk_norm: bool = False
    # family=routed: query heads each token picks per KV group (null: 2), and heads per group always on (null: 0).
    top_k: Optional[int] = None
    shared_heads: Optional[int] = None
    # Weight of the family's auxiliary losses in the training loss (null: the family's default; only
    # families that add one, e.g. routed's load balance, take it).
    aux_weight: Optional[float] = None
    # Gemma 4's value norm: V = RMSNorm(V) without a gain (needs qk_norm; with k_eq_v, V = norm(S) and
    # K = RoPE(k_norm(S)), and the cache holds norm(S) alone).
    v_norm: bool = False
    # Scores are multiplied by this instead of 1/sqrt(d_head) (null); Gemma 4 uses 1.0 with QK-norm.
    score_scale: Optional[float] = None
    # family=mla (DeepSeek-V2): width of the shared K/V latent (null: 4 * d_head) and of the decoupled
    # RoPE query/key part (null: d_head / 2).
    kv_rank: Optional[int] = None
    rope_dim: Optional[int] = None
    # The study's asymmetric "+" (qkvlab/model/plus.py): scores S' = S·c + Σ w·P + b with a learned 2-D
    # positional term, on any sharing of family=shared_qkv. plus_content_scale: c = Σ w (shared, the
    # study's) or a parameter of its own initialised to 1 (separate).
    plus: bool = False
    plus_content_scale: str = "shared"


@dataclass
class ModelConfig:
    name: str = "tiny"
    n_layers: int = 2
    d_model: int = 64
    n_heads: int = 4
    d_ff: int = 256
    context: int = 128
    # None: the data's vocabulary rounded up to a multiple of vocab_multiple (64 for the GPT-style
    # presets: 50304 rows for GPT-2's 50257); a number: exactly that many rows, at least the data's.
    vocab_size: Optional[int] = None
    vocab_multiple: int = 1
    positions: str = "rope"
    rope_theta: float = 10000.0
    norm: str = "rmsnorm"
    norm_eps: float = 1e-5
    # gelu: the exact (erf) GELU; gelu_tanh: GPT-2's tanh approximation; swiglu: a gated SiLU MLP.
    mlp: str = "swiglu"
    # Linear layers, LayerNorm and the input Linear carry biases; so does an untied head.
    bias: bool = False
    dropout: float = 0.0
    tie_embeddings: bool = True
    init_std: float = 0.02
    # table: a token-embedding table; onehot_linear: one-hot(vocab) through a Linear (the study's
    # digit model; bias per model.bias; needs tie_embeddings=false).
    embedding: str = "table"
    # gpt2: N(0, init_std) matrices (residual outputs scaled by 1/sqrt(2·layers)), zero biases, unit
    # gains; pytorch: each module's own default init (init_std unused). Families' own init runs either way.
    init: str = "gpt2"
    # Parameter-matched control (qkvlab/model/matching.py): give a variant the parameters its
    # sharing saved, as a wider MLP (mlp) or more layers (layers), to match mha of this shape.
    match_params: str = "none"


@dataclass
class DataConfig:
    name: str = "sort"
    task: str = "sort"
    causal: bool = False
    seq_len: int = 32
    batch_size: int = 64
    # Number of validation sequences (synthetic tasks).
    val_size: int = 512
    # The validation set is drawn from this seed, never from the run's seed,
    # so every variant and every seed is scored on the same examples.
    val_seed: int = 1234
    # Synthetic tasks: null draws fresh training examples at every step; N fixes a training set of
    # N examples, drawn once from the seed and reshuffled every epoch (the study: 10,000 examples).
    train_size: Optional[int] = None
    # mqar: key-value pairs per sequence; the rest of the sequence is queries.
    num_pairs: int = 8
    num_keys: int = 64
    num_values: int = 64
    # Text corpora (task: text). Exactly one of `path` (local .txt/.jsonl/.parquet
    # files or a directory of them) and `hub` (a Hugging Face dataset name).
    path: Optional[str] = None
    hub: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "train"
    # The column that holds each document's text (.jsonl, .parquet and hub corpora).
    text_field: str = "text"
    streaming: bool = False
    # "byte" (257 ids, no download), "bpe" (trained on the corpus, cached) or a hub tokenizer name (gpt2).
    tokenizer: str = "byte"
    bpe_vocab_size: int = 4096
    # Validation tokens, held out from the end of the token stream; the same for every variant and seed.
    val_tokens: int = 65536
    # A separate validation file (or folder, as `path`): validation scores its first `val_tokens` tokens and
    # training uses the whole of the training stream; null holds out the tail of the training text.
    val_path: Optional[str] = None
    # Stop reading the corpus after this many tokens (for streamed corpora); null reads it all.
    max_tokens: Optional[int] = None
    # Tokenizer processes; null picks one per core for large corpora.
    num_proc: Optional[int] = None


@dataclass
class OptimConfig:
    name: str = "adamw"
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 20
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0


@dataclass
class TrainConfig:
    steps: int = 300
    # Token budget as a multiple of the model's compute parameters (scaling runs);
    # when set it replaces `steps`, resolved once the model exists (train/budget.py).
    tokens_per_param: Optional[float] = None
    grad_accum: int = 1
    # None: every steps/10, at most every 100 steps (train/budget.py), so a short run still draws a curve.
    eval_every: Optional[int] = None
    log_every: int = 10
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    # auto: ddp under torchrun with more than one process, none otherwise; fsdp: FSDP2 (qkvlab/train/distributed.py).
    parallel: str = "auto"
    progress: bool = True
    # auto: continue from the run directory's latest good checkpoint; never: start
    # fresh (old checkpoints removed); any other value: a checkpoint file to start from.
    resume: str = "auto"
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    # Non-finite loss or gradients: skip the update (stop after max_nonfinite in a row) or stop at once.
    on_nonfinite: str = "skip"
    max_nonfinite: int = 10


@dataclass
class DistillConfig:
    # A finished run directory whose final model teaches this one (null: no distillation).
    teacher: Optional[str] = None
    # loss = alpha·CE + (1 − alpha)·T²·KL(teacher ‖ student) at temperature T (Hinton et al. 2015).
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass
class LoggerConfig:
    backend: str = "wandb"
    mode: str = "auto"
    project: str = "qkvlab"
    entity: Optional[str] = None
    # None: the study's `name`, so the jobs of one study group together.
    group: Optional[str] = None
    tags: list[str] = field(default_factory=list)


# convert.alpha's words: `fit` maps K to V by least squares, `random` draws W_KV afresh (the baseline).
CONVERT_WORDS = ("fit", "random")


@dataclass
class ConvertConfig:
    # How init_from's separate W_K and W_V become one W_KV (mha-sharing run -> its k_eq_v form):
    # a number A in [0, 1] (W_KV = A·W_K + (1 − A)·W_V), fit, or random. A string, so one sweep axis
    # holds numbers and words (convert.alpha=0,0.5,1,random).
    alpha: Optional[str] = None


@dataclass
class Config:
    seed: int = 0
    # The study: its runs go to outputs/<name>/ and share a W&B group. Presets (experiment=PRESET) set it.
    name: str = "default"
    variant: VariantConfig = field(default_factory=VariantConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    # A finished run directory whose final weights this run starts from (qkvlab/train/init_from.py).
    init_from: Optional[str] = None
    convert: ConvertConfig = field(default_factory=ConvertConfig)


def register_configs() -> None:
    """Put the schema in Hydra's ConfigStore; `qkvlab/conf/config.yaml` lists it first in its defaults."""
    # qkvlab/conf/hydra/launcher/joblib.yaml takes the joblib plugin's name on purpose (qkvlab/train/launcher.py).
    warnings.filterwarnings("ignore", message=r"\s*'hydra/launcher/joblib' is validated against ConfigStore schema")
    ConfigStore.instance().store(name="qkvlab_schema", node=Config)


def to_typed(cfg: DictConfig | Config) -> Config:
    """A validated `Config` object from a composed DictConfig (Hydra keys dropped)."""
    if isinstance(cfg, Config):
        typed = cfg
    else:
        plain = OmegaConf.to_container(cfg, resolve=True)
        plain.pop("hydra", None)
        merged = OmegaConf.merge(OmegaConf.structured(Config), plain)
        typed = OmegaConf.to_object(merged)
    validate(typed)
    return typed


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"{key}={value!r} is not valid; choose one of: {', '.join(choices)}")


def _positive(value: float, key: str, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{key}={value} is out of range; it must be {bound}")


def n_kv_heads(cfg: Config) -> int:
    """KV heads after applying the variant's head sharing to the model's query heads."""
    v, m = cfg.variant, cfg.model
    if v.n_kv_heads is not None:
        return v.n_kv_heads
    if v.kv_group_size < 1 or m.n_heads % v.kv_group_size:
        raise ConfigError(
            f"variant.kv_group_size={v.kv_group_size} must divide model.n_heads={m.n_heads}; "
            f"pick a model whose head count is a multiple of {v.kv_group_size}"
        )
    return m.n_heads // v.kv_group_size


def check_resume(resume: str) -> None:
    if resume in RESUME_MODES:
        return
    path = Path(resume)
    # An FSDP run's step checkpoints are directories (qkvlab/train/checkpoint.py).
    if not (path.is_file() or (path.is_dir() and path.suffix == ".dcp")):
        raise ConfigError(
            f"train.resume={resume!r} is not a checkpoint file; give an existing .pt file or .dcp directory, or auto / never"
        )
    if not os.access(path, os.R_OK):
        raise ConfigError(f"train.resume={resume!r} is not readable; fix its permissions or pick another checkpoint")


@dataclass(frozen=True)
class Range:
    """The values a float key accepts: low < x (or <=), x < high (or <=)."""

    low: float = 0.0
    low_closed: bool = False
    high: float = math.inf
    high_closed: bool = False

    def __contains__(self, x: float) -> bool:
        above = x >= self.low if self.low_closed else x > self.low
        below = x <= self.high if self.high_closed else x < self.high
        return above and below

    @property
    def text(self) -> str:
        if math.isinf(self.high):
            return f"{'>=' if self.low_closed else '>'} {self.low:g}"
        return f"in {'[' if self.low_closed else '('}{self.low:g}, {self.high:g}{']' if self.high_closed else ')'}"


POSITIVE, NON_NEGATIVE = Range(), Range(low_closed=True)
UNIT = Range(low_closed=True, high=1.0)
# Every float key of the schema; tests/test_config.py fails when a new float key is missing here.
FLOAT_RANGES: dict[str, Range] = {
    "model.rope_theta": POSITIVE,
    "model.norm_eps": POSITIVE,
    "model.dropout": UNIT,
    "model.init_std": POSITIVE,
    # AdamW divides lr by 1 - beta1^t; far above 1e30 that step size overflows fp32 inside the optimizer.
    "optim.lr": Range(high=1e30, high_closed=True),
    "optim.min_lr_ratio": Range(low_closed=True, high=1.0, high_closed=True),
    "optim.beta1": UNIT,
    "optim.beta2": UNIT,
    "optim.eps": POSITIVE,
    "optim.weight_decay": NON_NEGATIVE,
    # 0 turns clipping off.
    "optim.grad_clip": NON_NEGATIVE,
    "train.tokens_per_param": POSITIVE,
    "variant.score_scale": POSITIVE,
    # 0 logs a family's auxiliary losses without training on them.
    "variant.aux_weight": Range(low_closed=True, high=1e3, high_closed=True),
    "distill.alpha": Range(low_closed=True, high=1.0, high_closed=True),
    # Far above 1e3 the softened distributions are uniform to fp32 precision and T² overflows the loss's scale.
    "distill.temperature": Range(high=1e3, high_closed=True),
}


def float_keys(schema: type = Config, prefix: str = "") -> list[str]:
    """Dotted names of every float (or optional float) field of the schema, found by walking it."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            keys += float_keys(kind, f"{prefix}{f.name}.")
        elif kind in (float, Optional[float]):
            keys.append(f"{prefix}{f.name}")
    return keys


def _get(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def check_floats(cfg: Config) -> None:
    """NaN, inf and out-of-range values pass a float schema; refuse them with the key's name."""
    for key in float_keys():
        value = _get(cfg, key)
        if value is None:
            continue
        allowed = FLOAT_RANGES.get(key)
        give = f"; give a value {allowed.text}" if allowed else "; give a finite number"
        if not math.isfinite(value):
            raise ConfigError(f"{key}={value} is not a finite number{give}")
        if allowed is not None and value not in allowed:
            raise ConfigError(f"{key}={value} is out of range{give}")


def check_name(name: str) -> None:
    """`name` is one folder under outputs/ and a W&B group: one plain path component."""
    if name in ("", ".", "..") or any(sep in name for sep in ("/", "\\")):
        raise ConfigError(
            f"name={name!r} cannot name a folder under outputs/; give one word without slashes, e.g. name=my_study"
        )


def validate(cfg: Config) -> None:
    check_floats(cfg)
    check_name(cfg.name)
    m, v, d, o, t, lg = cfg.model, cfg.variant, cfg.data, cfg.optim, cfg.train, cfg.logger
    _choice(v.sharing, SHARINGS, "variant.sharing")
    _choice(m.positions, POSITIONS, "model.positions")
    _choice(m.norm, NORMS, "model.norm")
    _choice(m.mlp, MLPS, "model.mlp")
    _choice(m.embedding, EMBEDDINGS, "model.embedding")
    _choice(m.init, INITS, "model.init")
    _choice(m.match_params, MATCH_MODES, "model.match_params")
    if m.embedding == "onehot_linear" and m.tie_embeddings:
        raise ConfigError(
            "model.embedding=onehot_linear has no embedding table to tie the head to; "
            "set model.tie_embeddings=false or use model.embedding=table"
        )
    _choice(t.device, DEVICES, "train.device")
    _choice(t.precision, PRECISIONS, "train.precision")
    _choice(t.parallel, PARALLELS, "train.parallel")
    _choice(lg.backend, LOGGER_BACKENDS, "logger.backend")
    _choice(lg.mode, WANDB_MODES, "logger.mode")
    for key in ("n_layers", "d_model", "n_heads", "d_ff", "context"):
        _positive(getattr(m, key), f"model.{key}")
    if m.d_model % m.n_heads:
        raise ConfigError(
            f"model.n_heads={m.n_heads} does not divide model.d_model={m.d_model}; "
            f"choose n_heads among the divisors of {m.d_model}"
        )
    if m.positions == "rope" and (m.d_model // m.n_heads) % 2:
        raise ConfigError(f"model.positions=rope needs an even head size, got d_model/n_heads={m.d_model // m.n_heads}")
    kv = n_kv_heads(cfg)
    if kv < 1 or m.n_heads % kv:
        raise ConfigError(
            f"variant.n_kv_heads={kv} must divide model.n_heads={m.n_heads} and be at least 1"
        )
    if v.sharing in ("q_eq_k", "q_eq_k_eq_v") and kv != m.n_heads:
        raise ConfigError(
            f"variant.sharing={v.sharing} needs n_kv_heads == n_heads ({m.n_heads}), got {kv}: "
            "Q is the K projection, so every query head needs its own key head; use kv_group_size=1"
        )
    if d.seq_len > m.context:
        raise ConfigError(
            f"data.seq_len={d.seq_len} is above model.context={m.context}; "
            "lower data.seq_len or raise model.context"
        )
    for key in ("seq_len", "batch_size", "val_size", "train_size"):
        if getattr(d, key) is not None:
            _positive(getattr(d, key), f"data.{key}")
    _positive(o.warmup_steps, "optim.warmup_steps", allow_zero=True)
    # train.steps=0 evaluates the starting weights (a zero-shot run, e.g. of a converted model).
    _positive(t.steps, "train.steps", allow_zero=True)
    for key in ("grad_accum", "eval_every", "log_every", "checkpoint_every", "keep_checkpoints", "max_nonfinite"):
        if getattr(t, key) is not None:
            _positive(getattr(t, key), f"train.{key}")
    _choice(t.on_nonfinite, NONFINITE_POLICIES, "train.on_nonfinite")
    check_resume(t.resume)
    check_distill(cfg.distill)
    check_convert(cfg)


def convert_alpha(alpha: Optional[str]) -> float | str | None:
    """convert.alpha as a number in [0, 1], one of CONVERT_WORDS, or None; ConfigError otherwise."""
    if alpha is None or alpha in CONVERT_WORDS:
        return alpha
    try:
        value = float(alpha)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ConfigError(
            f"convert.alpha={alpha!r} is not valid; give a number in [0, 1] (W_KV = alpha·W_K + (1 − alpha)·W_V), "
            f"or one of: {', '.join(CONVERT_WORDS)}"
        )
    return value


def check_convert(cfg: Config) -> None:
    convert_alpha(cfg.convert.alpha)
    if cfg.convert.alpha is not None and cfg.init_from is None:
        raise ConfigError(
            f"convert.alpha={cfg.convert.alpha} converts the weights of init_from, which is not set; "
            "add init_from=RUN_DIR (a finished mha, gqa or mqa run) or drop convert.alpha"
        )
    if cfg.init_from is not None and not cfg.init_from.strip():
        raise ConfigError("init_from is empty; give a finished run directory, or null")


def check_distill(d: DistillConfig) -> None:
    """Alpha and temperature without a teacher would do nothing. The teacher run itself is checked where it is
    read (qkvlab/train/distill.py; the CLI's start-up check): a trained student's config stays valid after its
    teacher has moved, so eval and generate can still read it."""
    if d.teacher is None:
        default = DistillConfig()
        for key in ("alpha", "temperature"):
            if getattr(d, key) != getattr(default, key):
                raise ConfigError(
                    f"distill.{key}={getattr(d, key)} is read only with a teacher; add distill.teacher=RUN_DIR "
                    f"(a finished run directory) or drop distill.{key}"
                )
        return
    if not d.teacher:
        raise ConfigError("distill.teacher is empty; give a finished run directory, or null to train without a teacher")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A config tree as dotted keys (`optim.lr`); lists become tuples so values hash."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def as_dict(cfg: Config) -> dict[str, Any]:
    return OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)


def describe_error(exc: BaseException) -> str:
    """One line from a Hydra/OmegaConf/qkvlab error: the key, the problem, the choices."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

    if isinstance(exc, ConfigError):
        return str(exc)
    chain = [exc]
    while chain[-1].__cause__ is not None or chain[-1].__context__ is not None:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for err in chain:
        if isinstance(err, OverrideParseException):
            return _unquoted_non_ascii(err.override) or (
                f"cannot parse an override ({str(err).splitlines()[0]}); write overrides as key=value or group=option"
            )
        if isinstance(err, ConfigError):
            return str(err)
        if isinstance(err, MissingConfigException):
            missing = (err.missing_cfg_file or "").strip("/")
            group, _, option = missing.rpartition("/")
            if group and err.options is not None:
                adhoc = f"; to name a study of your own, use name={option}" if group == "experiment" else ""
                return f"{group}={option} is not a known option; choose one of: {', '.join(sorted(err.options))}{adhoc}"
            return str(err).splitlines()[0]
        if isinstance(err, (ConfigKeyError, ConfigAttributeError)) and getattr(err, "full_key", None):
            parent = err.full_key.rpartition(".")[0]
            known = _known_keys(parent)
            hint = f"; known keys{' in ' + parent if parent else ''}: {', '.join(known)}" if known else ""
            if err.full_key == "experiment":  # a preset written for qkvlab before `name` took over the key
                hint = "; a preset names its study with the key name (name: my_study)"
            return f"unknown config key '{err.full_key}'{hint}"
        if isinstance(err, OmegaConfBaseException) and getattr(err, "full_key", None):
            return f"{err.full_key}: {str(err.msg).splitlines()[0]}"
    first = str(exc).strip().splitlines()
    return first[0] if first else type(exc).__name__


def is_bad_input(exc: BaseException) -> bool:
    """A ConfigError, or a Hydra/OmegaConf error about an override or key (exit 2, not 1)."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import OmegaConfBaseException

    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, (ConfigError, OverrideParseException, MissingConfigException, OmegaConfBaseException)):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _unquoted_non_ascii(override: str) -> str | None:
    """Hydra's grammar takes unquoted values in ASCII only; say how to quote the value."""
    odd = next((ch for ch in override if not ch.isascii()), None)
    key, eq, value = override.partition("=")
    if odd is None or not eq:
        return None
    if value.startswith("[") and value.endswith("]"):
        quoted = "[" + ",".join(f"'{x.strip()}'" for x in value[1:-1].split(",")) + "]"
    else:
        quoted = f"'{value}'"
    return (
        f"{override}: the unquoted value holds the non-ASCII character {odd!r}; quote it: {key}={quoted} "
        f"(in a shell: \"{key}={quoted}\")"
    )


def _known_keys(parent: str) -> list[str]:
    from omegaconf import OmegaConf

    node = OmegaConf.structured(Config)
    for part in [p for p in parent.split(".") if p]:
        node = node.get(part) if hasattr(node, "get") else None
        if node is None or not hasattr(node, "keys"):
            return []
    return sorted(node.keys())

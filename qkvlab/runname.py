"""Content-addressed run directories.

A job's directory is `outputs/<name>/<variant>-<data>-s<seed>-<hash>`,
where the hash covers every value of the job's resolved config that differs
from the schema's default (qkvlab/config.py), except keys that cannot change
the result (logging, progress bars, resume policy, the study's name). So the same config always
lands in the same directory, whether it came from a single run or from a
sweep, and however it was spelled on the command line; re-running a sweep
then finds each job's earlier directory, skips the completed ones and resumes
the rest. Leaving defaults out keeps directories stable when a new qkvlab
version adds a config key: a key left at its default changes no hash.

A distillation teacher (`distill.teacher`) is hashed as the run it names, its
directory's name and its final checkpoint's CRC32, not as the path string: a
retrained teacher at the same path is another computation, a moved one is not.

Hydra resolves `${qkvlab_run_id:}` in `hydra.run.dir` and `hydra.sweep.subdir`
(qkvlab/conf/config.yaml) inside each job's own process, so this module registers the
resolver on import; `qkvlab.train.entry` imports it for every launcher.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, OmegaConf

# Dotted keys (or their prefixes) left out of the hash: they change how a run
# is watched, checkpointed or restarted, never what it computes.
# The study's `name` only says where a run is filed: one config trained for two studies is one computation.
# train.parallel: one process and DDP over several compute the same steps, and a run resumes at another world size.
NOT_HASHED = (
    "hydra", "logger", "name", "train.progress", "train.resume", "train.checkpoint_every", "train.keep_checkpoints",
    "train.parallel",
)
# Keys that name another run whose weights this run starts from. They are hashed as that run's identity
# (its directory name and its final checkpoint's CRC32), not as a path: a copy of the source is the same
# computation, and a path that later holds other weights is another one (a resumed run is then refused).
# Keys naming another run whose weights this run reads: hashed as that run's identity, not its path.
SOURCE_KEYS = ("init_from", "distill.teacher")
HASH_LEN = 8
# The longest file or directory name most file systems allow, in bytes.
NAME_MAX = 255


def under(key: str, prefixes: tuple[str, ...]) -> bool:
    """`key` is one of the dotted `prefixes` or lies under one of them."""
    return any(key == k or key.startswith(k + ".") for k in prefixes)


def _hashed(key: str) -> bool:
    return not under(key, NOT_HASHED)


@functools.cache
def _schema_defaults() -> dict[str, Any]:
    from qkvlab.config import Config, flatten

    return flatten(OmegaConf.to_container(OmegaConf.structured(Config), resolve=True))


def source_identity(path: str) -> str:
    """`<run directory name>@<crc32 of checkpoints/final.pt>` (`@unfinished` without one)."""
    where = Path(path).expanduser().resolve()
    try:
        crc = json.loads((where / "checkpoints" / "final.pt.sum").read_text()).get("crc32")
    except (OSError, ValueError, AttributeError):
        crc = None
    return f"{where.name}@{crc:08x}" if isinstance(crc, int) else f"{where.name}@unfinished"


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    from qkvlab.config import flatten

    flat = flatten(config)
    for key in SOURCE_KEYS:
        if flat.get(key) is not None:
            flat[key] = source_identity(str(flat[key]))
    return flat


def hashed_values(config: dict[str, Any]) -> dict[str, Any]:
    """The dotted keys and values of a plain config that can change a result (defaults included), JSON-ready."""
    return json.loads(json.dumps({k: v for k, v in _flat(config).items() if _hashed(k)}, default=str))


def config_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """`key (old -> new)` for each key whose value differs between two `hashed_values`."""
    return [f"{k} ({old.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a plain (resolved) config: its non-default, result-changing values."""
    defaults = _schema_defaults()
    values = {k: v for k, v in _flat(config).items() if _hashed(k) and (k not in defaults or defaults[k] != v)}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_LEN]


def readable_name(config: dict[str, Any]) -> str:
    variant = config.get("variant", {}).get("name", "run")
    data = config.get("data", {}).get("name", "data")
    return f"{variant}-{data}-s{config.get('seed', 0)}"


def run_id(config: dict[str, Any]) -> str:
    return f"{readable_name(config)}-{config_hash(config)}"


# W&B caps a tag at 64 characters; a run name this long is still readable in its tables.
TAG_MAX = 64
WANDB_NAME_MAX = 128
# Overrides that say which study a run is filed under, not what it is: its W&B group says that.
NOT_LABELS = ("experiment",)
# Choices already in the readable part of a run's name (their sub-keys, like variant.kv_group_size, are not).
IN_NAME = ("variant", "data", "seed")


def varying(overrides: Sequence[str], config: dict[str, Any]) -> list[str]:
    """`key=value` for each override of this job that can change its result, as the resolved config spells it.

    A job's overrides are what sets it apart from its group's base config (the
    defaults, or the preset that names the group): a sweep's axes and any other
    key given on the command line. `optim.lr=1e-3` and `optim.lr=0.001` read
    the same; a group option (`model=small`) reads as given."""
    from qkvlab.config import flatten

    flat = flatten(config)
    out: dict[str, str] = {}
    for override in overrides:
        raw, eq, value = override.partition("=")
        key = raw.lstrip("+~").replace("/", ".")
        if not eq or under(key, NOT_HASHED + NOT_LABELS):
            continue
        out[key] = f"{key}={_spelled(flat[key])}" if key in flat else f"{key}={value}"
    return list(out.values())


def _spelled(value: Any) -> str:
    """A config value as an override writes it (`true`, `null`, `0.001`)."""
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def wandb_labels(config: dict[str, Any], overrides: Sequence[str]) -> tuple[str, list[str]]:
    """A W&B run's name and tags: the run directory's name (its hash tells any two configs apart)
    followed by what the job sets beyond its group's base; each of those is also a tag, to filter by."""
    keys = varying(overrides, config)
    extra = [k for k in keys if k.partition("=")[0] not in IN_NAME]
    name = " ".join([run_id(config), *extra])
    if len(name) > WANDB_NAME_MAX:
        name = name[: WANDB_NAME_MAX - 3] + "..."
    return name, [k if len(k) <= TAG_MAX else k[: TAG_MAX - 3] + "..." for k in keys]


def job_config(root: DictConfig) -> dict[str, Any]:
    """The job's resolved config without the hydra node (resolving which would recurse into the run dir)."""
    return {
        key: OmegaConf.to_container(root[key], resolve=True) if OmegaConf.is_config(root[key]) else root[key]
        for key in root
        if key != "hydra"
    }


def check_name_lengths(names: Iterable[str], overrides: Sequence[str], what: str, fix: str) -> None:
    """Refuse, before anything is written, a file or directory name no file system allows.

    Hydra would otherwise fail on mkdir with a 5,000-character "File name too long" line."""
    from qkvlab.errors import ConfigError

    for name in names:
        size = len(name.encode())
        if size <= NAME_MAX:
            continue
        values = [(o, o.partition("=")[2]) for o in overrides if o.partition("=")[2]]
        culprits = [o for o, value in values if value in name or name in value]
        cause = f"{shorten(culprits[0])} makes" if culprits else "the config makes"
        raise ConfigError(f"{cause} the {what} name {size:,} bytes long, over the {NAME_MAX} a file system allows; {fix}")


def shorten(override: str, keep: int = 40) -> str:
    """An override as a message can quote it: a long value cut to its start and its length."""
    key, _, value = override.partition("=")
    return f"{key}={value[:keep]}... ({len(value):,} characters)" if len(value) > keep else override


def _resolve_run_id(*, _root_: DictConfig) -> str:
    return run_id(job_config(_root_))


if not OmegaConf.has_resolver("qkvlab_run_id"):
    OmegaConf.register_new_resolver("qkvlab_run_id", _resolve_run_id)

"""Group finished runs by variant and by whatever else differs, aggregate seeds,
and set each group against the baseline variant of the same setting.

Only completed runs are averaged; failed and unfinished ones are carried along
so that every report can list them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from qkvlab.analysis.duplicates import Duplicate, distinct
from qkvlab.analysis.stats import Agg, delta_pct, welch_p
from qkvlab.rundir import Run
from qkvlab.runname import under

# Config keys that never define a group: seeds are what we aggregate over, the
# rest only change how a run was watched or restarted.
NOT_GROUPING = ("seed", "logger", "train.progress", "train.resume", "name")
METRICS = (
    "val/loss",
    "best/val/loss",
    "val/ppl",
    "best/val/ppl",
    "val/acc",
    "val/exact_match",
    "params/total",
    "params/attention",
    "kv_cache/bytes_per_token",
    "kv_cache/reduction_vs_mha",
    "throughput/tokens_per_s",
)
# The Welch test compares per-seed final validation losses (log-perplexities).
TEST_METRIC = "val/loss"
# What `qkvlab eval --tasks` records beside each task's metrics (not metrics themselves).
TASK_SETTINGS = ("checkpoint_step", "num_fewshot", "limit")
# A task's headline column, the first it has: length-normalised accuracy where lm-eval reports it
# (HellaSwag, PIQA, ARC, OpenBookQA, SciQ), else accuracy, exact match, or perplexity (WikiText).
HEADLINE = ("acc_norm", "acc", "exact_match", "word_perplexity", "perplexity", "bits_per_byte")


def task_values(run: Run) -> dict[str, float]:
    """A run's lm-eval results from eval.json as `task/metric` -> value (stderrs and settings left out)."""
    tasks = run.evaluation.get("tasks")
    out: dict[str, float] = {}
    for task, metrics in (tasks if isinstance(tasks, dict) else {}).items():
        for name, value in (metrics if isinstance(metrics, dict) else {}).items():
            if name in TASK_SETTINGS or "_stderr" in name or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            out[f"{task}/{name}"] = float(value)
    return out


def headline_keys(keys: Sequence[str]) -> list[str]:
    """One `task/metric` per task, in task order."""
    by_task: dict[str, list[str]] = defaultdict(list)
    for key in keys:
        task, _, metric = key.partition("/")
        by_task[task].append(metric)
    rank = lambda m: HEADLINE.index(m) if m in HEADLINE else len(HEADLINE)  # noqa: E731
    return [f"{task}/{min(metrics, key=rank)}" for task, metrics in sorted(by_task.items())]


# How a run started or was taught: another run's weights (init_from, convert.alpha) or a teacher. A row
# is labelled with them, but compared with the baseline of the same remaining setting, so a converted
# or distilled k_eq_v gets its Δ against the mha it is meant to replace.
METHOD_KEYS = ("init_from", "convert", "distill")
# Keys naming another run directory: shown by the directory's name (the hash already holds its identity).
RUN_PATH_KEYS = ("init_from", "distill.teacher")


def setting_text(setting: Sequence[tuple[str, Any]]) -> list[str]:
    """`data.name=copy` reads as the override that chose it: `data=copy`; an unset method key says nothing."""
    return [f"{k.removesuffix('.name')}={v}" for k, v in setting if not (v is None and under(k, METHOD_KEYS))]


def grouping_config(r: Run) -> dict[str, Any]:
    """The run's flat config as compare groups it: a teacher's knobs only where there is a teacher."""
    flat = {k: v for k, v in r.flat_config.items() if _grouping(k)}
    if not flat.get("distill.teacher"):
        flat = {k: v for k, v in flat.items() if not under(k, ("distill",))}
    for key in RUN_PATH_KEYS:
        if flat.get(key):
            flat[key] = Path(str(flat[key])).name
    return flat


def _sortable(value: Any) -> tuple:
    return (0, value, "") if isinstance(value, (int, float)) and not isinstance(value, bool) else (1, 0, repr(value))


@dataclass
class Group:
    variant: str
    setting: tuple[tuple[str, Any], ...]  # the other differing config keys, sorted
    runs: list[Run] = field(default_factory=list)
    stats: dict[str, Agg] = field(default_factory=dict)
    baseline: "Group | None" = None
    delta_ppl_pct: float = math.nan
    delta_loss_pct: float = math.nan
    p_value: float = math.nan
    # lm-eval task metrics (`task/metric`): seeds aggregated, difference from the baseline's mean, Welch p.
    task_stats: dict[str, Agg] = field(default_factory=dict)
    task_delta: dict[str, float] = field(default_factory=dict)
    task_p: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return " ".join([self.variant, *setting_text(self.setting)])

    @property
    def n(self) -> int:
        return len(self.runs)

    def values(self, key: str) -> list[float]:
        return [r.summary[key] for r in self.runs if isinstance(r.summary.get(key), (int, float))]

    def task_values(self, key: str) -> list[float]:
        return [v for v in (task_values(r).get(key) for r in self.runs) if v is not None]


@dataclass
class Comparison:
    groups: list[Group]
    excluded: list[Run]
    baseline: str
    alpha: float
    varying: list[str]
    best_of: list[str]
    notes: list[str] = field(default_factory=list)
    duplicates: list[Duplicate] = field(default_factory=list)
    # Every lm-eval `task/metric` some group has, sorted.
    task_keys: list[str] = field(default_factory=list)

    def significant(self, g: Group) -> bool:
        return math.isfinite(g.p_value) and g.p_value < self.alpha


def _grouping(key: str) -> bool:
    return not under(key, NOT_GROUPING)


def varying_keys(runs: Sequence[Run]) -> list[str]:
    """Config keys whose value differs between runs, minus those a preset name already implies.

    `data.seq_len` stays when two runs of data=sort differ in it, but goes when
    it only differs because `data.name` does (copy vs mqar), which the label shows.
    """
    configs = [grouping_config(r) for r in runs]
    keys = sorted({k for c in configs for k in c})
    # A teacher's knobs vary only between runs that have a teacher; whether there is one is distill.teacher.
    knob = lambda k: under(k, ("distill",)) and k != "distill.teacher"  # noqa: E731
    differ = [k for k in keys if len({repr(c.get(k)) for c in configs if not (knob(k) and k not in c)}) > 1]
    kept = []
    for key in differ:
        if key.startswith("variant."):
            continue  # the variant's name is every row's first column
        section = key.rpartition(".")[0]
        name_key = f"{section}.name"
        if key != name_key and name_key in differ:
            by_name: dict[str, set[str]] = defaultdict(set)
            for c in configs:
                by_name[repr(c.get(name_key))].add(repr(c.get(key)))
            if all(len(v) == 1 for v in by_name.values()):
                continue
        kept.append(key)
    return kept


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    groups: dict[tuple, Group] = {}
    for r in runs:
        variant = str(r.flat_config.get("variant.name", r.summary.get("variant", "?")))
        config = grouping_config(r)
        setting = tuple((k, config.get(k)) for k in keys)
        groups.setdefault((variant, setting), Group(variant, setting)).runs.append(r)
    for g in groups.values():
        g.runs.sort(key=lambda r: (r.flat_config.get("seed", 0), str(r.path)))
        g.stats = {m: Agg.of(g.values(m)) for m in METRICS}
        keys = sorted({k for r in g.runs for k in task_values(r)})
        g.task_stats = {k: Agg.of(g.task_values(k)) for k in keys}
    return list(groups.values())


def _without(setting: tuple[tuple[str, Any], ...], drop: Sequence[str]) -> tuple:
    return tuple((k, v) for k, v in setting if k not in drop)


def pick_best(groups: list[Group], best_of: Sequence[str]) -> list[Group]:
    """Per variant and setting, the value of `best_of` keys with the lowest mean final val loss."""
    if not best_of:
        return groups
    best: dict[tuple, Group] = {}
    for g in groups:
        slot = (g.variant, _without(g.setting, best_of))
        score = g.stats[TEST_METRIC].mean
        held = best[slot].stats[TEST_METRIC].mean if slot in best else math.nan
        if slot not in best or score < held or (math.isnan(held) and math.isfinite(score)):
            best[slot] = g
    return list(best.values())


def _without_method(setting: tuple[tuple[str, Any], ...]) -> tuple:
    return tuple((k, v) for k, v in setting if not under(k, METHOD_KEYS))


def attach_baselines(groups: list[Group], baseline: str, best_of: Sequence[str]) -> None:
    """The baseline of the same setting; failing that, the only one that differs from it in METHOD_KEYS alone."""
    bases = [g for g in groups if g.variant == baseline]
    by_setting = {_without(g.setting, best_of): g for g in bases}
    loose: dict[tuple, list[Group]] = defaultdict(list)
    for b in bases:
        loose[_without_method(_without(b.setting, best_of))].append(b)
    for g in groups:
        b = by_setting.get(_without(g.setting, best_of))
        if b is None:
            near = loose.get(_without_method(_without(g.setting, best_of)), [])
            b = near[0] if len(near) == 1 else None
        if b is None:
            continue
        g.baseline = b
        g.delta_ppl_pct = delta_pct(g.stats["val/ppl"].mean, b.stats["val/ppl"].mean)
        g.delta_loss_pct = delta_pct(g.stats["val/loss"].mean, b.stats["val/loss"].mean)
        if g is not b:
            g.p_value = welch_p(g.values(TEST_METRIC), b.values(TEST_METRIC))
        for key, agg in g.task_stats.items():
            if key in b.task_stats:
                g.task_delta[key] = agg.mean - b.task_stats[key].mean
                if g is not b:
                    g.task_p[key] = welch_p(g.task_values(key), b.task_values(key))


def compare(runs: Sequence[Run], baseline: str = "mha", alpha: float = 0.05, best_of: Sequence[str] = ()) -> Comparison:
    runs, duplicates = distinct(runs)
    finished = [r for r in runs if r.finished]
    excluded = sorted((r for r in runs if not r.finished), key=lambda r: str(r.path))
    keys = varying_keys(finished)
    unknown = [k for k in best_of if k not in keys]
    notes = [f"--best-of {k}: the finished runs do not differ in it; ignored" for k in unknown]
    best_of = [k for k in best_of if k in keys]
    groups = pick_best(group_runs(finished, keys), best_of)
    attach_baselines(groups, baseline, best_of)
    if groups and not any(g.variant == baseline for g in groups):
        names = sorted({g.variant for g in groups})
        notes.append(f"no completed runs of the baseline variant '{baseline}'; Δ% and p left blank (choose --baseline among: {', '.join(names)})")
    variant_order = {baseline: 0}
    groups.sort(key=lambda g: (
        tuple(_sortable(v) for _, v in _without(g.setting, best_of)),
        variant_order.get(g.variant, 1),
        g.variant,
        tuple(_sortable(v) for _, v in g.setting),
    ))
    task_keys = sorted({k for g in groups for k in g.task_stats})
    return Comparison(groups, excluded, baseline, alpha, keys, list(best_of), notes, duplicates, task_keys)

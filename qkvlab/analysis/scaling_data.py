"""Scaling points from run directories, and the three slices the analysis reads.

A run directory (read only through `qkvlab.rundir`) becomes one `Point`. Runs of
several experiments may sit under the paths given, so each analysis picks its
own slice: the ladder (model sizes at one context and token budget), the
over-training set (token budgets at one size and context) and the context set
(contexts at one size and budget).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Hashable, Iterable

from qkvlab.rundir import Run


@dataclass(frozen=True)
class Point:
    run: Run
    experiment: str
    variant: str
    model: str
    seed: int
    seq_len: int
    tokens_per_param: float
    compute: float | None
    loss: float | None
    params: int | None

    @property
    def status(self) -> str:
        return self.run.status

    @property
    def finished(self) -> bool:
        return self.status == "completed" and self.loss is not None and self.compute is not None


def _requested_tpp(run: Run) -> float | None:
    """The budget asked for (exact, 20) rather than reached (20.04 after rounding up to whole steps)."""
    value = (run.config.get("train") or {}).get("tokens_per_param")
    return float(value) if isinstance(value, (int, float)) else None


def to_point(run: Run, metric: str) -> Point:
    s, cfg = run.summary, run.config
    data, model, variant = cfg.get("data") or {}, cfg.get("model") or {}, cfg.get("variant") or {}
    tpp = _requested_tpp(run) or s.get("compute/tokens_per_param") or 0.0
    loss = s.get(metric)
    return Point(
        run=run,
        experiment=str(s.get("experiment") or cfg.get("name") or ""),
        variant=str(s.get("variant") or variant.get("name") or "?"),
        model=str(s.get("model") or model.get("name") or "?"),
        seed=int(s.get("seed", cfg.get("seed", 0))),
        seq_len=int(data.get("seq_len") or 0),
        tokens_per_param=float(tpp),
        compute=s.get("compute/flops"),
        loss=float(loss) if isinstance(loss, (int, float)) else None,
        params=s.get("params/matmul"),
    )


def tpp_key(tpp: float) -> str:
    return f"{tpp:.3g}"


@dataclass(frozen=True)
class Slice:
    """Points that differ along one axis (model, tokens per parameter or context)."""

    axis: str
    fixed: dict
    points: tuple[Point, ...]

    @property
    def fixed_text(self) -> str:
        """What stays fixed along the slice, for titles and tables."""
        return ", ".join(f"{k} {v}" for k, v in self.fixed.items())

    def values(self) -> list:
        return sorted({self.axis_value(p) for p in self.points}, key=_sort_key(self))

    def axis_value(self, p: Point):
        return AXES[self.axis][1](p)

    def variants(self) -> list[str]:
        return sorted({p.variant for p in self.points})


def _sort_key(sl: Slice) -> Callable:
    if sl.axis != "model":
        return lambda v: v
    # Rungs sort by size: the median compute of the rung's finished runs (names sort badly: ladder_10).
    size: dict[str, float] = defaultdict(float)
    for p in sl.points:
        if p.finished:
            size[p.model] = max(size[p.model], p.compute or 0.0)
    return lambda v: (size.get(v, float("inf")), v)


# axis name -> (what stays fixed, the value along the axis). Runs of different experiments
# never share a slice: an over-training run at 20 tokens/param is not a ladder rung.
AXES: dict[str, tuple[Callable[[Point], Hashable], Callable[[Point], Hashable]]] = {
    "model": (
        lambda p: (("experiment", p.experiment), ("seq_len", p.seq_len), ("tokens_per_param", tpp_key(p.tokens_per_param))),
        lambda p: p.model,
    ),
    "tokens_per_param": (
        lambda p: (("experiment", p.experiment), ("model", p.model), ("seq_len", p.seq_len)),
        lambda p: p.tokens_per_param,
    ),
    "seq_len": (
        lambda p: (("experiment", p.experiment), ("model", p.model), ("tokens_per_param", tpp_key(p.tokens_per_param))),
        lambda p: p.seq_len,
    ),
}


def widest_slice(points: Iterable[Point], axis: str, paired: bool = False) -> Slice | None:
    """The group of points, all else fixed, with the most distinct values along `axis` (two or more).

    `paired`: count only the values that two or more variants share, since a gap along the
    axis needs both at each value (variants of one size each reach their own tokens per parameter)."""
    fixed_of, value_of = AXES[axis]
    groups: dict[Hashable, list[Point]] = defaultdict(list)
    for p in points:
        groups[fixed_of(p)].append(p)

    def width(group: list[Point]) -> int:
        variants: dict[Hashable, set[str]] = defaultdict(set)
        for p in group:
            variants[value_of(p)].add(p.variant)
        return sum(1 for vs in variants.values() if len(vs) >= 2 or not paired)

    best = max(groups.items(), key=lambda kv: (width(kv[1]), len(kv[1])), default=None)
    if best is None or width(best[1]) < 2:
        return None
    return Slice(axis=axis, fixed=dict(best[0]), points=tuple(best[1]))

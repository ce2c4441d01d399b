"""PNG plots for `qkvlab scaling`, and the loss gaps along tokens-per-parameter and context.

Gaps are delta % loss against the baseline: 100 * (L_variant / L_baseline - 1),
so +3 means 3% worse. Along compute the gap is taken at equal compute: the fits'
ratio as a line, and each run against the baseline's runs interpolated (log-log)
to its compute as a dot, so a poor fit cannot hide in the dots. Along tokens per
parameter and context it is taken at equal setting, means over seeds.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from qkvlab.analysis.report import markdown_table  # noqa: E402
from qkvlab.analysis.scaling_data import Slice  # noqa: E402

DPI = 110
SIZE = (6.4, 4.2)
AXIS_LABEL = {"tokens_per_param": "tokens per parameter", "seq_len": "context length (tokens)"}


def _colors(variants, baseline: str) -> dict[str, tuple]:
    """The baseline in black, the others in tab10 order."""
    cmap = plt.get_cmap("tab10")
    others = [v for v in sorted(variants) if v != baseline]
    return {baseline: (0.0, 0.0, 0.0, 1.0), **{v: cmap(i % 10) for i, v in enumerate(others)}}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _curve_span(rep) -> tuple[np.ndarray, float]:
    lo = min(r.compute for f in rep.fits.values() for r in f.rungs)
    hi = max(r.compute for f in rep.fits.values() for r in f.rungs)
    return np.logspace(np.log10(lo / 1.5), np.log10(hi * 100), 200), hi


def loss_vs_compute(rep, path: Path) -> Path:
    grid, hi = _curve_span(rep)
    colors = _colors(rep.fits, rep.baseline)
    fig, ax = plt.subplots(figsize=SIZE)
    for v, f in rep.fits.items():
        c = np.array([r.compute for r in f.rungs])
        mean = np.array([r.loss for r in f.rungs])
        err = np.array([[r.loss - min(r.losses), max(r.losses) - r.loss] for r in f.rungs]).T
        ax.errorbar(c, mean, yerr=err, fmt="o", color=colors[v], capsize=2, ms=4)
        inside = grid <= hi
        label = f"{v}: {f.law.E:.3f} + {f.law.A:.3g}·C^-{f.law.alpha:.3f}"
        ax.plot(grid[inside], f.law.loss(grid[inside]), "-", color=colors[v], lw=1.2, label=label)
        ax.plot(grid[~inside], f.law.loss(grid[~inside]), "--", color=colors[v], lw=1.0)
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel("validation loss")
    ax.set_title("Loss against compute (dashed: extrapolation to 100x)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def loglog_interp(x: np.ndarray, xs: list[float], ys: list[float]) -> np.ndarray:
    """Piecewise power law through the points, the end segments extended: the baseline's runs
    at a compute between (or just beyond) its rungs, without trusting its fit."""
    lx, ly = np.log(np.asarray(xs)), np.log(np.asarray(ys))
    seg = np.clip(np.searchsorted(lx, np.log(x)) - 1, 0, len(lx) - 2)
    slope = (ly[seg + 1] - ly[seg]) / (lx[seg + 1] - lx[seg])
    return np.exp(ly[seg] + slope * (np.log(x) - lx[seg]))


def gap_vs_compute(rep, path: Path) -> Path:
    grid, hi = _curve_span(rep)
    base = rep.fits[rep.baseline].law
    rungs = rep.fits[rep.baseline].rungs
    base_runs = lambda c: loglog_interp(c, [r.compute for r in rungs], [r.loss for r in rungs])  # noqa: E731
    colors = _colors(rep.fits, rep.baseline)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.axhline(0, color="black", lw=0.8)
    for v, f in rep.fits.items():
        if v == rep.baseline:
            continue
        fitted = 100 * (f.law.loss(grid) / base.loss(grid) - 1)
        inside = grid <= hi
        ax.plot(grid[inside], fitted[inside], "-", color=colors[v], label=f"{v} (fits)")
        ax.plot(grid[~inside], fitted[~inside], "--", color=colors[v])
        c = np.array([r.compute for r in f.rungs])
        observed = 100 * (np.array([r.loss for r in f.rungs]) / base_runs(c) - 1)
        ax.plot(c, observed, "o", color=colors[v], ms=4, label=f"{v} (runs vs {rep.baseline}'s runs)")
    ax.set_xscale("log")
    ax.set_xlabel("training compute C (FLOPs)")
    ax.set_ylabel(f"Δ% loss vs {rep.baseline} at equal compute")
    ax.set_title("Does the gap grow or shrink with compute?")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)


def slice_gaps(sl: Slice, baseline: str) -> dict[str, dict]:
    """variant -> {axis value: delta % loss vs baseline at that value}, means over seeds."""
    losses: dict[tuple[str, object], list[float]] = defaultdict(list)
    for p in sl.points:
        if p.finished:
            losses[(p.variant, sl.axis_value(p))].append(p.loss)
    mean = {k: float(np.mean(v)) for k, v in losses.items()}
    gaps: dict[str, dict] = defaultdict(dict)
    for (v, x), loss in mean.items():
        if v != baseline and (baseline, x) in mean:
            gaps[v][x] = 100 * (loss / mean[(baseline, x)] - 1)
    return {v: dict(sorted(g.items())) for v, g in sorted(gaps.items())}


def slice_text(sl: Slice, gaps: dict[str, dict], baseline: str) -> str:
    fixed = sl.fixed_text
    xs = sl.values()
    header = ["variant"] + [f"{x:g}" if isinstance(x, float) else str(x) for x in xs]
    rows = [[v] + [f"{g[x]:+.2f}%" if x in g else "-" for x in xs] for v, g in gaps.items() if v != baseline]
    return f"Loss gap vs {baseline} along {AXIS_LABEL[sl.axis]} ({fixed}), delta % loss:\n\n" + markdown_table(header, rows)


def eval_gap_curve(sl: Slice, variant: str, baseline: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Every intermediate evaluation of the longest budget: the gap at equal step (equal tokens),
    against the baseline run's tokens per parameter; mean over the seeds both have."""
    top = max(sl.values())
    runs = {(p.variant, p.seed): p for p in sl.points if p.finished and sl.axis_value(p) == top}
    per_step: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for (v, seed), p in runs.items():
        b = runs.get((baseline, seed))
        if v != variant or b is None or not b.params:
            continue
        base = {s: (t, x) for s, t, x in b.run.series(metric)}
        for step, _, x in p.run.series(metric):
            if step in base:
                tokens, xb = base[step]
                per_step[step].append((tokens / b.params, 100 * (x / xb - 1)))
    steps = sorted(per_step)
    return (np.array([np.mean([t for t, _ in per_step[s]]) for s in steps]),
            np.array([np.mean([g for _, g in per_step[s]]) for s in steps]))


def gap_along(sl: Slice, gaps: dict[str, dict], baseline: str, metric: str, path: Path) -> Path:
    colors = _colors(sl.variants(), baseline)
    fig, ax = plt.subplots(figsize=SIZE)
    ax.axhline(0, color="black", lw=0.8)
    for v, g in gaps.items():
        if v == baseline or not g:
            continue
        xs = sorted(g)
        ax.plot(xs, [g[x] for x in xs], "o-", color=colors[v], label=f"{v} (end of each run)")
        if sl.axis == "tokens_per_param":
            tx, gy = eval_gap_curve(sl, v, baseline, metric)
            if len(tx):
                ax.plot(tx, gy, "-", color=colors[v], alpha=0.35, lw=1, label=f"{v} (every eval, longest run)")
    ax.set_xscale("log", base=2 if sl.axis == "seq_len" else 10)
    ax.set_xticks(sl.values(), [f"{x:g}" for x in sl.values()])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(AXIS_LABEL[sl.axis])
    ax.set_ylabel(f"Δ% loss vs {baseline}")
    fixed = sl.fixed_text
    ax.set_title(f"Gap along {AXIS_LABEL[sl.axis]} ({fixed})", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    return _save(fig, path)

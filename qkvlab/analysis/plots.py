"""The comparison's pictures: learning curves with a seed band, and the
trade-offs the study is about (perplexity against KV-cache size and parameters)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from qkvlab.analysis.compare import Comparison, Group

PLOTS = ("loss_vs_tokens.png", "ppl_vs_kv_cache.png", "ppl_vs_params.png")
# The learning curves: training loss is logged every train.log_every steps, so every run has a
# curve; validation gets a panel only where some group was evaluated more than once.
CURVES = (("train/loss", "training loss"), ("val/loss", "validation loss"))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def seed_curve(g: Group, key: str = "val/loss") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, mean, std) over the seeds, at the token counts every seed logged."""
    series = [{tokens: value for _, tokens, value in r.series(key) if isinstance(value, (int, float))} for r in g.runs]
    series = [s for s in series if s]
    if not series:
        return np.array([]), np.array([]), np.array([])
    common = sorted(set.intersection(*(set(s) for s in series)))
    values = np.array([[s[t] for t in common] for s in series], dtype=float)
    std = values.std(axis=0, ddof=1) if len(series) > 1 else np.zeros(len(common))
    return np.array(common, dtype=float), values.mean(axis=0), std


def curves_figure(c: Comparison):
    """One panel per loss that has a curve (more than one point in some group): seed mean ± std per group."""
    plt = _pyplot()
    curves = {key: {g.label: seed_curve(g, key) for g in c.groups} for key, _ in CURVES}
    panels = [(key, title) for key, title in CURVES if any(len(t) > 1 for t, _, _ in curves[key].values())]
    panels = panels or [CURVES[0]]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes[0], panels):
        for i, g in enumerate(c.groups):
            tokens, mean, std = curves[key][g.label]
            if len(tokens) < 2 and key != "train/loss":
                continue
            color = colors[i % len(colors)]
            ax.plot(tokens, mean, marker="o", markersize=2, color=color, label=f"{g.label} (n={g.n})")
            ax.fill_between(tokens, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
        ax.set_xlabel("training tokens")
        ax.set_ylabel(title)
        ax.set_title(f"{title[0].upper()}{title[1:]} (seed mean ± std)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return fig


def plot_curves(c: Comparison, path: Path) -> None:
    fig = curves_figure(c)
    fig.savefig(path)
    _pyplot().close(fig)


def plot_tradeoff(c: Comparison, x_key: str, x_label: str, path: Path, log_x: bool = False) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    labels: dict[tuple[float, float], list[str]] = {}
    for g in c.groups:
        x, y = g.stats[x_key], g.stats["val/ppl"]
        if x.n == 0 or y.n == 0:
            continue
        err = y.std if math.isfinite(y.std) else 0.0
        ax.errorbar(x.mean, y.mean, yerr=err, fmt="o", capsize=3, label=f"{g.label} (n={g.n})")
        labels.setdefault((round(x.mean, 6), round(y.mean, 6)), []).append(g.label)
    for (x, y), names in labels.items():  # variants that coincide (gqa = mqa on 4 heads) share one label
        ax.annotate(", ".join(names), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.margins(x=0.12, y=0.08)  # room for the labels
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(x_label)
    ax.set_ylabel("final validation perplexity")
    ax.set_title(f"Perplexity against {x_label.split(' (')[0]} (mean ± std over seeds)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_plots(c: Comparison, out: Path) -> list[Path]:
    curves, kv, params = (out / name for name in PLOTS)
    plot_curves(c, curves)
    plot_tradeoff(c, "kv_cache/bytes_per_token", "KV-cache bytes per token (all layers)", kv)
    plot_tradeoff(c, "params/total", "parameters", params)
    from qkvlab.analysis.alpha_plot import PLOT, plot_quality_vs_alpha

    alpha = plot_quality_vs_alpha(c, out / PLOT)
    return [curves, kv, params, *([alpha] if alpha else [])]

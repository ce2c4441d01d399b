"""`qkvlab analyze`'s pictures: one grid of score maps per layer, and the per-layer figures."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from qkvlab.analysis.plots import _pyplot

DPI = 80
# Panels of layers.png: (title, figures in it).
PANELS = (
    ("score symmetry (mean |S_ij - S_ji| / mean |S_ij|)", ("symmetry_normalised",)),
    ("cosine similarity of projections", ("cos_qk", "cos_kv", "cos_qv")),
    ("effective rank (Roy & Vetterli), mean over heads", ("eff_rank_q", "eff_rank_k", "eff_rank_v")),
)


def _label(value: Optional[float]) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.3g}"


def map_name(i: int, maps_per_head: int) -> str:
    return f"head {i}" if maps_per_head == 1 else f"head {i // maps_per_head} map {i % maps_per_head + 1}"


def plot_score_maps(scores: np.ndarray, symmetry: Sequence[Optional[float]], maps_per_head: int, title: str, path: Path) -> None:
    """One panel per map (maps, T, T): the scores, query position down, key position across, each on its own
    colour scale (its range in the title, with its symmetry). No ticks or colour bars: they would triple
    the drawing time for every layer."""
    plt = _pyplot()
    n = scores.shape[0]
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.6 * cols, 2.8 * rows + 0.5), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if i >= n:
            ax.axis("off")
            continue
        ax.imshow(scores[i], cmap="viridis", interpolation="nearest")
        ax.set_title(f"{map_name(i, maps_per_head)}: sym {_label(symmetry[i])}\n"
                     f"S in [{scores[i].min():.3g}, {scores[i].max():.3g}]", fontsize=8)
    axes[-1, 0].set_xlabel("key position", fontsize=7)
    axes[-1, 0].set_ylabel("query position", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.subplots_adjust(left=0.04, right=0.98, bottom=0.06, top=0.8, wspace=0.1, hspace=0.35)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)


def plot_layer_figures(layers: list[dict[str, Any]], title: str, path: Path) -> None:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.6 * len(PANELS), 3.6))
    x = [row["layer"] for row in layers]
    for ax, (panel, keys) in zip(axes, PANELS):
        for key in keys:
            y = [np.nan if row[key] is None else row[key] for row in layers]
            if not all(np.isnan(y)):
                ax.plot(x, y, marker="o", label=key)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("layer")
        ax.set_xticks(x)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=0.05, right=0.98, bottom=0.14, top=0.82, wspace=0.25)
    fig.savefig(path, dpi=DPI)
    plt.close(fig)

"""Quality against the K=V conversion's mixing weight A (experiment=kv_conversion): how much of a trained
model survives W_KV = A·W_K + (1 − A)·W_V without training, next to the references that have no A,
drawn as horizontal lines: the least-squares fit (`fit`), a freshly drawn W_KV (`random`), and the
trained source itself when its run directory is compared too."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

from qkvlab.analysis.compare import Comparison, Group, setting_text

ALPHA_KEY = "convert.alpha"
PLOT = "quality_vs_alpha.png"
PANELS = (("val/ppl", "validation perplexity"), ("val/acc", "validation accuracy"))


def _alpha(g: Group) -> str | None:
    return dict(g.setting).get(ALPHA_KEY)


def plot_quality_vs_alpha(c: Comparison, path: Path) -> Path | None:
    """The plot, when the runs differ in convert.alpha; one line per variant and other setting."""
    if ALPHA_KEY not in c.varying:
        return None
    from qkvlab.analysis.plots import _pyplot

    plt = _pyplot()
    series: dict[str, list[Group]] = defaultdict(list)
    for g in c.groups:
        rest = tuple((k, v) for k, v in g.setting if k != ALPHA_KEY)
        series[" ".join([g.variant, *setting_text(rest)])].append(g)
    panels = [(k, t) for k, t in PANELS if any(g.stats[k].n for g in c.groups)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.5), dpi=100, squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, (key, title) in zip(axes[0], panels):
        for i, (label, groups) in enumerate(series.items()):
            color = colors[i % len(colors)]
            points = sorted((float(_alpha(g)), g.stats[key]) for g in groups if _number(_alpha(g)) and g.stats[key].n)
            if points:
                ax.errorbar([a for a, _ in points], [s.mean for _, s in points],
                            yerr=[s.std if math.isfinite(s.std) else 0.0 for _, s in points],
                            marker="o", capsize=3, color=color, label=f"{label}: W_KV = A·W_K + (1 − A)·W_V")
            for g in groups:
                word, agg = _alpha(g), g.stats[key]
                if not _number(word) and agg.n:
                    # A run without convert.alpha is the trained source itself, when it was passed too.
                    style = {"random": "--", "fit": ":", None: "-"}.get(word, "-.")
                    ax.axhline(agg.mean, color="black" if word is None else color, linestyle=style,
                               label=f"{label}: {word if word is not None else 'no conversion (the source)'}")
        ax.set_xlabel("A (convert.alpha)")
        ax.set_ylabel(title)
        ax.set_title(f"Zero-shot {title} against A (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _number(value: str | None) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True

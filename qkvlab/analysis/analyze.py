"""`qkvlab analyze RUN_DIR`: what a trained run's attention does on a sample of its validation data.

For each layer: the pre-softmax score maps of the first sequence (one PNG per layer, a panel per head
titled with its symmetry), and over the whole sample the score symmetry (raw and normalised), the
cosine similarity of the Q, K and V projections and their effective ranks, written to analysis.json
and plotted in layers.png. The definitions are in qkvlab/model/score_stats.py, and what each family
records in qkvlab/model/probe.py; this module only samples, drives the probe and writes files.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from qkvlab.analysis.analyze_plots import plot_layer_figures, plot_score_maps
from qkvlab.args import ArgumentParser
from qkvlab.errors import ConfigError
from qkvlab.files import unwritable_dir, write_json_atomic
from qkvlab.infer.load import TrainedRun, load_trained
from qkvlab.model.probe import probe_forward
from qkvlab.model.score_stats import layer_figures, map_symmetry

DEFAULT_BATCH = 4
DEFAULT_MAX_LEN = 64
FIGURES = ("symmetry", "symmetry_normalised", "cos_qk", "cos_kv", "cos_qv", "eff_rank_q", "eff_rank_k", "eff_rank_v")
COLUMNS = (("symmetry", "symmetry"), ("sym/|S|", "symmetry_normalised"), ("cos_qk", "cos_qk"), ("cos_kv", "cos_kv"),
           ("cos_qv", "cos_qv"), ("erank_q", "eff_rank_q"), ("erank_k", "eff_rank_k"), ("erank_v", "eff_rank_v"))
DEFINITIONS = {
    "scores": "pre-softmax scores S (the family's own formula), before the causal or window mask",
    "symmetry": "mean |S_ij - S_ji| over pairs i != j (routed: pairs where both tokens ran the head), all maps and sequences",
    "symmetry_normalised": "symmetry / mean |S_ij| over the same entries (0 symmetric, at most 2)",
    "cos": "mean over heads and tokens of cos(a_t, b_t) on the projection outputs before RoPE and norms",
    "eff_rank": "Roy & Vetterli (2007) exp(entropy of normalised singular values) of each head's [tokens x width] "
    "matrix over the whole sample, mean over heads",
    "null": "the layer has no such projection (keyless: K; a layer reusing another's K/V: K and V)",
}


def sample_tokens(trained: TrainedRun, rows: int, max_len: Optional[int]) -> torch.Tensor:
    """The first `rows` sequences of the first validation batch, cut to `max_len` tokens (default: up to 64)."""
    data = trained.data()
    x, _ = next(iter(data.val_batches()))
    if rows > x.shape[0]:
        raise ConfigError(
            f"--batch={rows} is more than the {x.shape[0]} sequences of a validation batch; lower --batch "
            f"or raise data.batch_size (it is {trained.cfg.data.batch_size})"
        )
    T = x.shape[1]
    if max_len is not None and max_len > T:
        raise ConfigError(f"--max-len={max_len} is longer than the run's validation sequences ({T} tokens); give at most {T}")
    return x[:rows, : max_len or min(T, DEFAULT_MAX_LEN)]


def _finite(value: Optional[float]) -> Optional[float]:
    return None if value is None or math.isnan(value) else value


def analyze(trained: TrainedRun, out: Path, rows: int = DEFAULT_BATCH, max_len: Optional[int] = None) -> dict[str, Any]:
    """Write the maps, analysis.json and layers.png under `out`; return the report."""
    cfg = trained.cfg
    idx = sample_tokens(trained, rows, max_len).to(trained.device)
    maps = out / "maps"
    maps.mkdir(parents=True, exist_ok=True)
    layers: list[dict[str, Any]] = []

    def record(layer: int, probe) -> None:
        first = probe.scores[0]
        per_map = map_symmetry(first, None if probe.pairs is None else probe.pairs[0])
        path = maps / f"layer_{layer:02d}.png"
        title = (f"{cfg.variant.name}, layer {layer}: pre-softmax scores of validation sequence 0 "
                 f"(before the mask); sym = mean |S_ij - S_ji|")
        plot_score_maps(first.float().cpu().numpy(), per_map, probe.maps_per_head, title, path)
        figures = {k: _finite(v) for k, v in layer_figures(probe).items()}
        layers.append({"layer": layer, **figures, "map_symmetry": [_finite(v) for v in per_map],
                       "maps": str(path.relative_to(out))})

    model = trained.model.eval()
    with torch.no_grad(), trained.amp():
        probe_forward(model, idx, record)
    if not layers:
        raise ConfigError(f"variant.family={cfg.variant.family} records no score probe (qkvlab/model/probe.py); "
                          "give its module a `probe` as README's \"Add your own family\" says")
    title = f"{cfg.variant.name} on {cfg.data.name} (model {cfg.model.name}, step {trained.step})"
    plot_layer_figures(layers, title, out / "layers.png")
    report = {
        "run": str(trained.run.path),
        "variant": cfg.variant.name,
        "family": cfg.variant.family,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "checkpoint_step": trained.step,
        "device": str(trained.device),
        "precision": trained.precision,
        "sample": {"split": "validation", "batch": 0, "rows": list(range(idx.shape[0])), "tokens": idx.shape[1],
                   "maps_of_row": 0},
        "definitions": DEFINITIONS,
        "layers": layers,
        "plot": "layers.png",
    }
    write_json_atomic(out / "analysis.json", report)
    return report


def format_table(report: dict[str, Any], out: Path) -> str:
    s = report["sample"]
    lines = [
        f"qkvlab analyze: {report['variant']} on {report['data']} (model {report['model']}, step "
        f"{report['checkpoint_step']}, {report['precision']} on {report['device']}), {len(s['rows'])} validation "
        f"sequences of {s['tokens']} tokens",
        f"{'layer':>5}" + "".join(f"{name:>10}" for name, _ in COLUMNS),
    ]
    for row in report["layers"]:
        cells = ("-" if row[key] is None else f"{row[key]:.4f}" for _, key in COLUMNS)
        lines.append(f"{row['layer']:>5}" + "".join(f"{c:>10}" for c in cells))
    lines.append(f"  wrote {out / 'analysis.json'}, {out / report['plot']} and {len(report['layers'])} maps in {out / 'maps'}")
    return "\n".join(lines)


def analyze_command(args: Sequence[str]) -> None:
    from qkvlab.infer.commands import readable_run

    parser = ArgumentParser(
        prog="qkvlab analyze",
        description="Attention maps (PNG per layer, each head titled with its score symmetry) and per-layer score "
        "symmetry, Q/K/V cosine similarity and effective rank on a sample of a trained run's validation data; "
        "writes analysis.json, layers.png and maps/ (default: RUN_DIR/analysis).",
    )
    parser.add_argument("run_dir")
    parser.add_argument("--out", default=None, help="folder to write in (default: RUN_DIR/analysis)")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"validation sequences in the sample (default {DEFAULT_BATCH}); the maps show the first")
    parser.add_argument("--max-len", type=int, default=None,
                        help=f"tokens per sequence (default: the run's sequence length, at most {DEFAULT_MAX_LEN})")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. train.device=cpu")
    ns = parser.parse_intermixed_args(list(args))
    if ns.batch < 1:
        raise ConfigError(f"--batch={ns.batch} must be at least 1")
    if ns.max_len is not None and ns.max_len < 2:
        raise ConfigError(f"--max-len={ns.max_len} must be at least 2 (a symmetry needs a pair of positions)")
    readable_run(ns.run_dir)
    trained = load_trained(ns.run_dir, ns.overrides)
    out = Path(ns.out) if ns.out else trained.run.path / "analysis"
    problem = unwritable_dir(out)
    if problem:
        raise ConfigError(f"--out {out}: {problem}; choose another folder")
    print(format_table(analyze(trained, out, ns.batch, ns.max_len), out), flush=True)

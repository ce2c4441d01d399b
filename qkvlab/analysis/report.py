"""A comparison as rows: a terminal table, Markdown, and CSV (full precision).

The printed tables round for reading; the CSV keeps every number so a paper's
table can be rebuilt from it.
"""

from __future__ import annotations

import csv
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

from qkvlab.analysis.compare import METRICS, Comparison, Group, headline_keys, setting_text
from qkvlab.analysis.stats import Agg


def _num(x: float, digits: int = 4) -> str:
    return "—" if not math.isfinite(x) else f"{x:.{digits}f}"


def _pm(a: Agg, digits: int = 4, scale: float = 1.0) -> str:
    if a.n == 0:
        return "—"
    text = f"{a.mean * scale:.{digits}f}"
    return text if a.n < 2 else f"{text} ± {a.std * scale:.{digits}f}"


def _int(a: Agg) -> str:
    return "—" if a.n == 0 else f"{round(a.mean):,}"


def has_metric(c: Comparison, key: str) -> bool:
    return any(g.stats[key].n for g in c.groups)


def summary_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    """The headline table: one row per group, seeds aggregated."""
    acc, exact = has_metric(c, "val/acc"), has_metric(c, "val/exact_match")
    header = ["variant", "n", "val loss", "best val loss", "val ppl", "best val ppl", f"Δ% ppl vs {c.baseline}", "p (Welch)",
              "params", "KV B/token", "KV saved", "tokens/s"]
    header += ["val acc %"] * acc + ["exact match %"] * exact
    rows = []
    for g in c.groups:
        s = g.stats
        if g is g.baseline:
            delta = "baseline"
        elif math.isfinite(g.delta_ppl_pct):
            delta = f"{g.delta_ppl_pct:+.2f}%" + ("*" if c.significant(g) else "")
        else:
            delta = "—"
        row = [
            g.label, str(g.n), _pm(s["val/loss"]), _pm(s["best/val/loss"]), _pm(s["val/ppl"], 3), _pm(s["best/val/ppl"], 3),
            delta, "—" if g is g.baseline else _num(g.p_value, 3),
            _int(s["params/total"]), _int(s["kv_cache/bytes_per_token"]), _num(100 * s["kv_cache/reduction_vs_mha"].mean, 1) + "%",
            _int(s["throughput/tokens_per_s"]),
        ]
        row += [_pm(s["val/acc"], 2, 100)] * acc + [_pm(s["val/exact_match"], 2, 100)] * exact
        rows.append(row)
    return header, rows


def task_key(setting: tuple[tuple[str, Any], ...]) -> tuple[tuple, tuple]:
    """Split a group's setting into (data keys, the rest)."""
    data = tuple((k, v) for k, v in setting if k.startswith("data."))
    rest = tuple((k, v) for k, v in setting if not k.startswith("data."))
    return data, rest


def accuracy_rows(c: Comparison) -> tuple[list[str], list[list[str]]] | None:
    """Accuracy per task: variants down, tasks (and their lengths) across. None unless data varies."""
    if not has_metric(c, "val/acc") or not any(k.startswith("data.") for k in c.varying):
        return None
    cells: dict[tuple, dict[tuple, Group]] = defaultdict(dict)
    columns: list[tuple] = []
    for g in c.groups:
        data, rest = task_key(g.setting)
        cells[(g.variant, rest)][data] = g
        if data not in columns:
            columns.append(data)
    header = ["variant"] + [" ".join(setting_text(col)) for col in columns]
    rows = []
    for (variant, rest), by_task in cells.items():
        label = " ".join([variant, *setting_text(rest)])
        rows.append([label] + [_pm(by_task[col].stats["val/acc"], 1, 100) if col in by_task else "—" for col in columns])
    return header, rows


def task_rows(c: Comparison) -> tuple[list[str], list[list[str]]] | None:
    """lm-eval benchmarks (eval.json's `tasks`): per task its headline metric, the difference from the
    baseline's mean (in the metric's own units) and the Welch p over seeds. None when no run has any."""
    keys = headline_keys(c.task_keys)
    if not keys:
        return None
    header = ["variant", "n"]
    for key in keys:
        header += [key, f"Δ vs {c.baseline}", "p"]
    rows = []
    for g in c.groups:
        row = [g.label, str(max((a.n for a in g.task_stats.values()), default=0))]
        for key in keys:
            agg = g.task_stats.get(key)
            delta = g.task_delta.get(key, math.nan)
            if g is g.baseline:
                shown_delta, p = "baseline", "—"
            else:
                p_value = g.task_p.get(key, math.nan)
                shown_delta = "—" if not math.isfinite(delta) else f"{delta:+.4f}" + ("*" if math.isfinite(p_value) and p_value < c.alpha else "")
                p = _num(p_value, 3)
            row += [_pm(agg) if agg else "—", shown_delta, p]
        rows.append(row)
    return header, rows


def excluded_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    return ["run directory", "status", "error"], [[str(r.path), r.status, r.error or "—"] for r in c.excluded]


def duplicate_rows(c: Comparison) -> tuple[list[str], list[list[str]]]:
    return ["run directory", "duplicate of", "why"], [[str(d.run.path), str(d.of.path), d.why] for d in c.duplicates]


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: s.replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(map(esc, header)) + " |", "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"]
    out += ["| " + " | ".join(map(esc, r)) + " |" for r in rows]
    return "\n".join(out)


def legend(c: Comparison) -> str:
    return (
        f"mean ± std over seeds (n = seeds); Δ% = mean final val ppl against {c.baseline} of the same setting; "
        f"p = Welch t-test of per-seed final val loss against {c.baseline}; * = significant at alpha {c.alpha}"
    )


def render(c: Comparison, fmt: str) -> str:
    """The whole report as `text` (terminal) or `markdown`."""
    table = text_table if fmt == "text" else markdown_table
    title = (lambda s: s) if fmt == "text" else (lambda s: f"## {s}")
    parts = [title("Comparison"), table(*summary_rows(c)), legend(c)]
    if c.best_of:
        parts.append(f"each variant at its best {', '.join(c.best_of)} (lowest mean final val loss)")
    acc = accuracy_rows(c)
    if acc:
        parts += [title("Validation accuracy % per task"), table(*acc)]
    tasks = task_rows(c)
    if tasks:
        parts += [title("Downstream tasks (lm-eval, eval.json)"), table(*tasks),
                  f"mean ± std over seeds; Δ = difference of means from {c.baseline} of the same setting; "
                  f"p = Welch t-test over seeds; * = significant at alpha {c.alpha}"]
    if c.excluded:
        parts += [title(f"Not included: {len(c.excluded)} failed, unfinished or unreadable run(s)"), table(*excluded_rows(c))]
    if c.duplicates:
        parts += [title(f"Counted once: {len(c.duplicates)} duplicate run director{'y' if len(c.duplicates) == 1 else 'ies'}"),
                  table(*duplicate_rows(c))]
    parts += [f"note: {n}" for n in c.notes]
    return "\n\n".join(parts) + "\n"


def _csv_value(x: Any) -> Any:
    return "" if isinstance(x, float) and not math.isfinite(x) else x


def write_csv(c: Comparison, path: Path) -> None:
    """One row per group with mean/std/n of every metric, Δ% and p."""
    header = ["variant", *c.varying, "n"]
    for m in METRICS:
        header += [f"{m}/mean", f"{m}/std"]
    header += ["delta_ppl_pct", "delta_loss_pct", "p_value", "significant"]
    for key in c.task_keys:
        header += [f"{key}/mean", f"{key}/std", f"{key}/delta", f"{key}/p_value"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for g in c.groups:
            setting = dict(g.setting)
            row = [g.variant, *(setting.get(k, "") for k in c.varying), g.n]
            for m in METRICS:
                row += [_csv_value(g.stats[m].mean), _csv_value(g.stats[m].std)]
            row += [_csv_value(g.delta_ppl_pct), _csv_value(g.delta_loss_pct), _csv_value(g.p_value), c.significant(g)]
            for key in c.task_keys:
                agg = g.task_stats.get(key)
                row += [_csv_value(agg.mean) if agg else "", _csv_value(agg.std) if agg else "",
                        _csv_value(g.task_delta.get(key, math.nan)), _csv_value(g.task_p.get(key, math.nan))]
            w.writerow(row)


def write_runs_csv(c: Comparison, path: Path) -> None:
    """Every run, included or not, with its status: the raw numbers behind the table."""
    runs = [(g.label, r, "") for g in c.groups for r in g.runs] + [("(excluded)", r, "") for r in c.excluded]
    runs += [("(duplicate)", d.run, f"{d.of.path} ({d.why})") for d in c.duplicates]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["group", "run_dir", "status", "seed", *METRICS, "error", "duplicate_of"])
        for label, r, of in runs:
            w.writerow([label, str(r.path), r.status, r.flat_config.get("seed", r.summary.get("seed", "")),
                        *(_csv_value(r.summary.get(m, "")) for m in METRICS), r.error, of])

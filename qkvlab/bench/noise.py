"""Whether a figure bench reports can be told from the machine's noise.

Each timing is a median of `--repeats` blocks; how far the blocks spread,
(max - min) / median, is the noise of that figure. A difference no larger than
the noise of the figures it compares (a `loop +%` from 3-step blocks, one
variant's step time against the first's) is reported with a warning, and so
is a single repeat, which gives no estimate at all.
"""

from __future__ import annotations

from typing import Any, Sequence


def spread(times: Sequence[float]) -> float | None:
    """(max - min) / median of the repeats; None for fewer than two."""
    if len(times) < 2:
        return None
    ordered = sorted(times)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return (ordered[-1] - ordered[0]) / median if median > 0 else None


def _figures(row: dict[str, Any]) -> dict[str, float]:
    """The timed figures of a row, as the table shows them, whose differences between variants it invites."""
    out = {"step ms": 1e3 * row["train/step_s"]}
    for context, speeds in row["inference"].items():
        out[f"prefill@{context}"] = speeds["prefill_tokens_per_s"]
        out[f"decode@{context}"] = speeds["decode_tokens_per_s"]
    return out


def noise_warnings(report: dict[str, Any]) -> list[str]:
    """One line per kind of figure that sits within its own noise."""
    rows = report["variants"]
    repeats = report["timing"]["repeats"]
    if repeats < 2:
        return [f"--repeats {repeats} gives no noise estimate, so no timing here can be told from noise; use --repeats 3 or more"]
    fix = "raise --steps or --repeats"
    lines = []
    loops = []
    for row in rows:
        overhead, noise = row.get("loop/overhead"), row["noise"].get("loop/overhead")
        if overhead is not None and noise is not None and abs(overhead) <= noise:
            loops.append(f"{row['variant']} ({100 * overhead:+.1f}%, the blocks vary by {100 * noise:.1f}%)")
    if loops:
        lines.append(f"loop +% is within its own noise for {', '.join(loops)}; {fix}")
    first = rows[0]
    base = _figures(first)
    close = []
    for row in rows[1:]:
        for name, value in _figures(row).items():
            a, b = row["noise"].get(name), first["noise"].get(name)
            if a is None or b is None:
                continue
            diff = value / base[name] - 1
            noise = max(a, b)
            if abs(diff) <= noise:
                close.append(f"{row['variant']} {name} {100 * diff:+.1f}% (blocks vary by {100 * noise:.1f}%)")
    if close:
        lines.append(f"these differences from {first['variant']} are within their own noise: {', '.join(close)}; {fix}")
    return lines

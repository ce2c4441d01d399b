"""Seed statistics: is a variant's difference from the baseline bigger than seed noise?"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class Agg:
    """Mean and sample standard deviation over seeds; std is nan for a single seed."""

    mean: float
    std: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Agg":
        xs = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        n = len(xs)
        if n == 0:
            return cls(math.nan, math.nan, 0)
        mean = sum(xs) / n
        std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else math.nan
        return cls(mean, std, n)


def delta_pct(value: float, baseline: float) -> float:
    """Relative change against the baseline, in percent (+3.0 = 3% higher)."""
    if not (math.isfinite(value) and math.isfinite(baseline)) or baseline == 0:
        return math.nan
    return 100.0 * (value / baseline - 1.0)


def welch_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Welch t-test p-value; nan when either side has fewer than two seeds.

    Identical samples with zero spread on both sides give p = 1 (no evidence of
    a difference) rather than scipy's nan.
    """
    from scipy import stats

    a, b = [float(x) for x in a], [float(x) for x in b]
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if max(a) == min(a) and max(b) == min(b):
        return 1.0 if a[0] == b[0] else 0.0
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)

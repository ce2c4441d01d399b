"""Saturating power laws L(C) = E + A * C**(-alpha), fitted and bootstrapped.

The fit minimises squared error in log loss, not loss: rungs span orders of
magnitude of compute, and a relative error treats a small and a large model's
loss alike. Compute is centred on its geometric mean inside the fit, so the
optimiser works with numbers near one whatever the FLOP scale; A is reported
for C in FLOPs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import OptimizeWarning, curve_fit

MIN_POINTS = 3
# Bounds on alpha: a positive exponent (more compute never hurts), and one well above
# anything seen in language-model scaling (0.05 to 0.5) so the bound never decides a fit.
ALPHA_BOUNDS = (1e-4, 5.0)


class FitError(RuntimeError):
    """No power law could be fitted to these points."""


@dataclass(frozen=True)
class PowerLaw:
    E: float
    log_A: float
    alpha: float

    @property
    def A(self) -> float:
        return math.exp(self.log_A) if self.log_A < 700 else math.inf

    def loss(self, compute: float | np.ndarray) -> float | np.ndarray:
        return self.E + np.exp(self.log_A - self.alpha * np.log(compute))

    def compute_for(self, loss: float) -> float:
        """The compute at which this law reaches `loss`; inf when loss is at or below E."""
        if loss <= self.E:
            return math.inf
        return math.exp((self.log_A - math.log(loss - self.E)) / self.alpha)


def _log_model(x: np.ndarray, E: float, a: float, alpha: float) -> np.ndarray:
    return np.log(E + np.exp(a - alpha * x))


def _log_model_jac(x: np.ndarray, E: float, a: float, alpha: float) -> np.ndarray:
    u = np.exp(a - alpha * x)
    return np.stack([1 / (E + u), u / (E + u), -x * u / (E + u)], axis=1)


def _starts(x: np.ndarray, loss: np.ndarray) -> list[tuple[float, float, float]]:
    """Initial guesses: for a few floors E, a straight-line fit of log(L - E) against log C."""
    starts = []
    for frac in (0.0, 0.5, 0.8, 0.95):
        E = frac * loss.min()
        slope, intercept = np.polyfit(x, np.log(loss - E), 1)
        alpha = float(np.clip(-slope, 1e-3, ALPHA_BOUNDS[1] * 0.9))
        starts.append((E, float(intercept), alpha))
    return starts


def fit_power_law(compute: Sequence[float], loss: Sequence[float], start: PowerLaw | None = None) -> PowerLaw:
    """Least squares in log loss over E in [0, min L), alpha in ALPHA_BOUNDS; best of several
    starts, or of `start` alone (a bootstrap draw starts from the full fit)."""
    c, y = np.asarray(compute, float), np.asarray(loss, float)
    if len(np.unique(c)) < MIN_POINTS:
        raise FitError(f"need at least {MIN_POINTS} distinct compute values, got {len(np.unique(c))}")
    if np.any(c <= 0) or np.any(y <= 0) or not np.all(np.isfinite(y)):
        raise FitError("compute and loss must be positive and finite")
    ref = float(np.log(c).mean())
    x = np.log(c) - ref
    span = float(np.log(y.max())) + 10.0
    lower, upper = (0.0, -span - 50.0, ALPHA_BOUNDS[0]), (float(y.min()) * (1 - 1e-9), span, ALPHA_BOUNDS[1])
    best, best_sse = None, math.inf
    starts = [(start.E, start.log_A - start.alpha * ref, start.alpha)] if start else _starts(x, y)
    for p0 in starts:
        p0 = tuple(min(max(v, lo + 1e-12), hi - 1e-12) for v, lo, hi in zip(p0, lower, upper))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", OptimizeWarning)
                params, _ = curve_fit(
                    _log_model, x, np.log(y), p0=p0, bounds=(lower, upper), jac=_log_model_jac, max_nfev=2000
                )
        except (RuntimeError, ValueError):
            continue
        sse = float(np.sum((_log_model(x, *params) - np.log(y)) ** 2))
        if sse < best_sse:
            best, best_sse = params, sse
    if best is None:
        raise FitError("the optimiser did not converge from any starting point")
    E, a, alpha = (float(v) for v in best)
    return PowerLaw(E=E, log_A=a + alpha * ref, alpha=alpha)


@dataclass(frozen=True)
class Rung:
    """One model size of one variant: its compute and the loss of each seed."""

    name: str
    compute: float
    losses: tuple[float, ...]

    @property
    def loss(self) -> float:
        return float(np.mean(self.losses))


def fit_rungs(rungs: Sequence[Rung], start: PowerLaw | None = None) -> PowerLaw:
    return fit_power_law([r.compute for r in rungs], [r.loss for r in rungs], start)


def bootstrap_method(rungs: Sequence[Rung]) -> str | None:
    """'seeds' when every rung has two or more seeds, 'rungs' when there are more rungs than
    parameters; None when neither can vary the fit (three rungs of one seed each)."""
    if all(len(r.losses) >= 2 for r in rungs):
        return "seeds"
    if len(rungs) > MIN_POINTS:
        return "rungs"
    return None


def bootstrap(rungs: Sequence[Rung], draws: int, rng: np.random.Generator) -> tuple[str | None, list[PowerLaw]]:
    """Refitted laws on resampled data: seeds within each rung, or whole rungs with replacement
    (a draw with fewer than three distinct rungs is drawn again)."""
    method = bootstrap_method(rungs)
    laws: list[PowerLaw] = []
    if method is None:
        return None, laws
    full = fit_rungs(rungs)
    for _ in range(draws):
        if method == "seeds":
            sample = [Rung(r.name, r.compute, tuple(rng.choice(r.losses, size=len(r.losses)))) for r in rungs]
        else:
            while True:
                idx = rng.integers(0, len(rungs), size=len(rungs))
                if len(set(idx.tolist())) >= MIN_POINTS:
                    break
            sample = [rungs[i] for i in idx]
        try:
            laws.append(fit_rungs(sample, start=full))
        except FitError:
            continue
    return method, laws


def multiplier(variant: PowerLaw, baseline: PowerLaw, compute: float) -> float:
    """Compute the variant needs to reach the baseline's loss at `compute`, over `compute`."""
    return variant.compute_for(float(baseline.loss(compute))) / compute


def interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval; 'nearest' so infinite draws (never reaches the loss) stay infinite."""
    v = np.asarray([x for x in values if not math.isnan(x)], float)
    if len(v) == 0:
        return None
    lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2], method="nearest")
    return float(lo), float(hi)

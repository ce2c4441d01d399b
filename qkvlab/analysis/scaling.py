"""`qkvlab scaling PATH...`: what a variant costs in compute, and whether its gap grows.

Per variant it fits L(C) = E + A * C**(-alpha) over the ladder's rungs and turns
two fits into the one number that prices a variant: the compute multiplier,
the compute the variant needs to reach the baseline's loss over the baseline's
compute (1.3 = needs 30% more compute; inf = never gets there by this law).
Multipliers come from both fitted laws, at every rung's compute and
extrapolated to 10x and 100x the largest; the interval is a bootstrap over
seeds (two or more per rung) or over rungs (four or more).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from qkvlab.analysis.duplicates import distinct
from qkvlab.analysis.powerlaw import MIN_POINTS, FitError, PowerLaw, Rung, bootstrap, fit_rungs, interval, multiplier
from qkvlab.analysis.report import markdown_table
from qkvlab.analysis.scaling_data import Point, Slice, to_point, widest_slice
from qkvlab.args import ArgumentParser
from qkvlab.rundir import find_runs

EXTRAPOLATE = (10, 100)
# E below this fraction of the lowest loss counts as pinned to its lower bound (0).
FLOOR_AT_BOUND = 1e-6


class ScalingError(ValueError):
    """Input the analysis cannot use; the message is one line."""


@dataclass
class VariantFit:
    variant: str
    rungs: list[Rung]
    law: PowerLaw
    method: str | None = None
    draws: list[PowerLaw] = field(default_factory=list)

    def constant_interval(self, name: str) -> tuple[float, float] | None:
        return interval([getattr(d, name) for d in self.draws]) if self.draws else None


@dataclass
class Multiplier:
    label: str
    compute: float
    value: float
    ci: tuple[float, float] | None


@dataclass
class LadderReport:
    baseline: str
    fits: dict[str, VariantFit]
    multipliers: dict[str, list[Multiplier]]
    gaps: dict[str, dict[str, float]]  # variant -> rung -> observed delta % loss


def rungs_of(points: Sequence[Point], variant: str, order: list[str]) -> list[Rung]:
    by_model: dict[str, list[Point]] = defaultdict(list)
    for p in points:
        if p.variant == variant and p.finished:
            by_model[p.model].append(p)
    return [
        Rung(m, float(np.mean([p.compute for p in by_model[m]])), tuple(p.loss for p in by_model[m]))
        for m in order
        if by_model.get(m)
    ]


def check_rungs(ladder: Slice, variants: Sequence[str]) -> None:
    """Refuse, in one line, when a variant has fewer than three finished rungs; name what is missing."""
    expected = ladder.values()
    short = []
    for v in variants:
        mine = [p for p in ladder.points if p.variant == v]
        done = {p.model for p in mine if p.finished}
        if len(done) >= MIN_POINTS:
            continue
        statuses = {p.model: p.status if p.status != "completed" else "no loss or compute/flops in summary.json"
                    for p in mine if not p.finished}
        missing = [f"{m} ({statuses.get(m, 'no run')})" for m in expected if m not in done]
        short.append(f"{v} has {len(done)}" + (f", missing {', '.join(missing)}" if missing else ", and no other rung was run"))
    if short:
        raise ScalingError(
            f"refusing to fit: a power law needs {MIN_POINTS} finished rungs per variant; " + "; ".join(short)
        )


def analyse_ladder(ladder: Slice, baseline: str, draws: int, seed: int) -> LadderReport:
    variants = ladder.variants()
    if baseline not in variants:
        raise ScalingError(f"baseline '{baseline}' has no runs in the ladder; choose --baseline among: {', '.join(variants)}")
    check_rungs(ladder, variants)
    order = ladder.values()
    rng = np.random.default_rng(seed)
    fits = {}
    for v in variants:
        rungs = rungs_of(ladder.points, v, order)
        try:
            law = fit_rungs(rungs)
        except FitError as exc:
            raise ScalingError(f"the power-law fit failed for {v}: {exc}") from exc
        method, laws = bootstrap(rungs, draws, rng)
        fits[v] = VariantFit(v, rungs, law, method, laws)
    base = fits[baseline]
    top = max(r.compute for r in base.rungs)
    targets = [(r.name, r.compute) for r in base.rungs] + [(f"{k}x", k * top) for k in EXTRAPOLATE]
    mults: dict[str, list[Multiplier]] = {}
    for v, f in fits.items():
        if v == baseline:
            continue
        pairs = list(zip(f.draws, base.draws)) if f.draws and base.draws else []
        mults[v] = [
            Multiplier(label, c, multiplier(f.law, base.law, c),
                       interval([multiplier(a, b, c) for a, b in pairs]) if pairs else None)
            for label, c in targets
        ]
    base_loss = {r.name: r.loss for r in base.rungs}
    gaps = {
        v: {r.name: 100 * (r.loss / base_loss[r.name] - 1) for r in f.rungs if r.name in base_loss}
        for v, f in fits.items()
        if v != baseline
    }
    return LadderReport(baseline, fits, mults, gaps)


# ---- text ----


def _num(x: float) -> str:
    if math.isinf(x):
        return "inf"
    return f"{x:.4g}" if 1e-3 <= abs(x) < 1e5 or x == 0 else f"{x:.3e}"


def _with_ci(x: float, ci: tuple[float, float] | None) -> str:
    return _num(x) + (f" [{_num(ci[0])}, {_num(ci[1])}]" if ci else "")


def ladder_text(rep: LadderReport, ladder: Slice) -> str:
    fixed = ladder.fixed_text
    methods = {f.method for f in rep.fits.values()}
    ci_note = (
        "95% bootstrap intervals over " + "/".join(sorted(m for m in methods if m))
        if any(methods)
        else "no intervals: with one seed per rung they need two or more seeds per rung, or four or more rungs"
    )
    out = [f"Ladder ({fixed}): L(C) = E + A * C^-alpha, C = training FLOPs; {ci_note}.", ""]
    if min(len(f.rungs) for f in rep.fits.values()) == MIN_POINTS:
        out[-1:] = ["Three rungs for three constants leave no rung to check the law against: treat the 10x/100x "
                    "columns as a guess until more rungs are run.", ""]
    floored = [v for v, f in rep.fits.items() if f.law.E <= FLOOR_AT_BOUND * min(r.loss for r in f.rungs)]
    if floored:
        out[-1:] = [f"E sits at its bound 0 for {', '.join(floored)}: loss falls faster with compute at the larger "
                    "rungs than a saturating law allows (typical of under-trained runs), so the law fits poorly.", ""]
    out.append(markdown_table(
        ["variant", "rungs", "E", "A", "alpha"],
        [[v, str(len(f.rungs)), _with_ci(f.law.E, f.constant_interval("E")), _with_ci(f.law.A, f.constant_interval("A")),
          _with_ci(f.law.alpha, f.constant_interval("alpha"))] for v, f in rep.fits.items()],
    ))
    base = rep.fits[rep.baseline]
    labels = [m.label for m in next(iter(rep.multipliers.values()), [])]
    if labels:
        computes = [m.compute for m in next(iter(rep.multipliers.values()))]
        out += ["", f"Compute multiplier vs {rep.baseline}: compute a variant needs to reach {rep.baseline}'s loss, "
                "over {0}'s compute (>1 costs more; 10x/100x extrapolate the largest rung).".format(rep.baseline), ""]
        out.append(markdown_table(
            ["variant"] + [f"{lab} ({_num(c)} FLOPs)" for lab, c in zip(labels, computes)],
            [[v] + [_with_ci(m.value, m.ci) for m in ms] for v, ms in rep.multipliers.items()],
        ))
        out += ["", f"Loss gap vs {rep.baseline} at each rung (observed, mean over seeds), delta % loss:", ""]
        names = [r.name for r in base.rungs]
        out.append(markdown_table(["variant"] + names, [[v] + [f"{g[n]:+.2f}%" if n in g else "-" for n in names] for v, g in rep.gaps.items()]))
    return "\n".join(out)


def ladder_json(rep: LadderReport) -> dict[str, Any]:
    def law(f: VariantFit) -> dict[str, Any]:
        return {
            "E": f.law.E, "A": f.law.A, "alpha": f.law.alpha, "bootstrap": f.method, "draws": len(f.draws),
            "ci": {k: f.constant_interval(k) for k in ("E", "A", "alpha")},
            "rungs": [{"model": r.name, "compute": r.compute, "loss": r.loss, "seeds": len(r.losses)} for r in f.rungs],
        }

    return {
        "baseline": rep.baseline,
        "fits": {v: law(f) for v, f in rep.fits.items()},
        "compute_multiplier": {
            v: [{"at": m.label, "compute": m.compute, "value": m.value, "ci": m.ci} for m in ms]
            for v, ms in rep.multipliers.items()
        },
        "delta_pct_loss": rep.gaps,
    }


# ---- command ----


def parse_args(args: list[str]) -> argparse.Namespace:
    p = ArgumentParser(
        prog="qkvlab scaling",
        description="Fit loss against compute per variant, price each variant in compute against a baseline, "
        "and plot the gap against compute, tokens per parameter and context.",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run or sweep directories (globs allowed)")
    p.add_argument("--baseline", default="mha", help="variant the others are compared with (default: mha)")
    p.add_argument("--metric", default="val/loss", help="summary metric to fit (default: val/loss)")
    p.add_argument("--out", type=Path, default=None, help="where the table and plots go (default: PATH/scaling)")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap draws (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed")
    return p.parse_intermixed_args(args)


def run_scaling(ns: argparse.Namespace) -> str:
    from qkvlab.analysis import scaling_plots as plots

    runs = find_runs(ns.paths)
    if not runs:
        raise ScalingError(f"no run directories under {' '.join(map(str, ns.paths))}")
    runs, duplicates = distinct(runs)
    points = [to_point(r, ns.metric) for r in runs]
    if not any(p.finished for p in points):
        raise ScalingError(f"no finished run with '{ns.metric}' and compute/flops in its summary.json under {' '.join(map(str, ns.paths))}")
    out = ns.out or (Path(ns.paths[0]) / "scaling" if Path(ns.paths[0]).is_dir() else Path("scaling"))
    out.mkdir(parents=True, exist_ok=True)
    ladder = widest_slice(points, "model")
    tpp = widest_slice([p for p in points if p.finished], "tokens_per_param", paired=True)
    ctx = widest_slice([p for p in points if p.finished], "seq_len", paired=True)
    if ladder is None and tpp is None and ctx is None:
        raise ScalingError(
            "nothing to scale: scaling needs runs at several model sizes per variant (e.g. qkvlab train -m "
            "experiment=scaling_ladder), or variants run at the same several tokens per parameter "
            "(experiment=overtraining) or contexts (experiment=context_sweep); for seeds of one size use qkvlab compare"
        )
    text, record, written = [], {"metric": ns.metric}, []
    if ladder is not None:
        rep = analyse_ladder(ladder, ns.baseline, ns.bootstrap, ns.seed)
        text.append(ladder_text(rep, ladder))
        record["ladder"] = {"fixed": ladder.fixed, **ladder_json(rep)}
        written += [plots.loss_vs_compute(rep, out / "loss_vs_compute.png"), plots.gap_vs_compute(rep, out / "gap_vs_compute.png")]
    for sl, name in ((tpp, "gap_vs_tokens_per_param"), (ctx, "gap_vs_context")):
        if sl is None:
            continue
        if ns.baseline not in sl.variants():
            raise ScalingError(f"baseline '{ns.baseline}' has no runs along {sl.axis}; choose --baseline among: {', '.join(sl.variants())}")
        gaps = plots.slice_gaps(sl, ns.baseline)
        text.append(plots.slice_text(sl, gaps, ns.baseline))
        record[sl.axis] = {"fixed": sl.fixed, "delta_pct_loss": {v: {str(k): g for k, g in d.items()} for v, d in gaps.items()}}
        written.append(plots.gap_along(sl, gaps, ns.baseline, ns.metric, out / f"{name}.png"))
    left_out = [p for p in points if not p.finished]
    if left_out:
        text.append(f"Not included: {len(left_out)} failed, unfinished or unreadable run(s):\n"
                    + "\n".join(f"  {_left_out_line(p)}" for p in left_out))
        record["not_included"] = [_left_out_line(p) for p in left_out]
    if duplicates:
        text.append(f"Counted once: {len(duplicates)} duplicate run director{'y' if len(duplicates) == 1 else 'ies'}:\n"
                    + "\n".join(f"  {d.line}" for d in duplicates))
        record["duplicates"] = [d.line for d in duplicates]
    body = "\n\n".join(text)
    (out / "scaling.md").write_text(body + "\n")
    (out / "scaling.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
    return body + "\n\nwrote " + ", ".join(str(p) for p in [out / "scaling.md", out / "scaling.json", *written])


def _left_out_line(p: Point) -> str:
    if p.run.unreadable:
        return p.run.unreadable
    why = p.run.error or ("no loss or compute/flops in summary.json" if p.status == "completed" else "")
    return f"{p.run.path}: {p.status}" + (f" ({why})" if why else "")


def scaling_command(args: list[str]) -> None:
    from qkvlab.errors import fail

    ns = parse_args(args)
    if ns.bootstrap < 0:
        fail(f"--bootstrap={ns.bootstrap} must be >= 0")
    try:
        print(run_scaling(ns), flush=True)
    except ScalingError as exc:
        fail(str(exc))

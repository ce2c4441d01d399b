"""`qkvlab compare PATH...`: run directories in, a table and plots out.

Reads run directories only (through qkvlab.rundir), so it works offline, on
a cluster's shared disk, or on runs that never saw W&B.
"""

from __future__ import annotations

import argparse
import glob
from pathlib import Path
from typing import Sequence

from qkvlab.analysis.compare import Comparison, compare
from qkvlab.args import ArgumentParser
from qkvlab.errors import error_line, fail


def parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        prog="qkvlab compare",
        description="Compare runs: group by variant and any other differing config key, aggregate seeds, "
        "test each variant against the baseline, write a table (terminal, Markdown, CSV) and plots (PNG).",
        epilog="example: qkvlab compare outputs/ci_smoke   |   qkvlab compare 'outputs/lr_sweep/*' --best-of optim.lr",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="run directories, sweep directories or globs")
    p.add_argument("--baseline", default="mha", help="variant to compare against (default: mha)")
    p.add_argument("--alpha", type=float, default=0.05, help="significance level of the Welch t-test (default: 0.05)")
    p.add_argument("--best-of", action="append", default=[], metavar="KEY",
                   help="config key (e.g. optim.lr) to pick per variant by lowest mean final val loss; repeatable")
    p.add_argument("--out", type=Path, default=None,
                   help="folder for compare.md, compare.csv, runs.csv and the PNGs (default: PATH/compare for one folder, else ./compare)")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument("--wandb", action="store_true", help="also log the table and plots to W&B (online with credentials, else offline)")
    p.add_argument("--wandb-project", default="qkvlab", help="W&B project for --wandb (default: qkvlab)")
    return p


def default_out(paths: Sequence[str]) -> Path:
    if len(paths) == 1 and Path(paths[0]).is_dir():
        return Path(paths[0]) / "compare"
    return Path("compare")


def log_to_wandb(c: Comparison, table_csv: Path, plots: list[Path], project: str) -> str:
    import csv

    import wandb

    from qkvlab.track.wandb_sink import has_credentials

    experiments = sorted({str(r.summary.get("experiment", "")) for g in c.groups for r in g.runs} - {""})
    run = wandb.init(
        project=project,
        group=experiments[0] if len(experiments) == 1 else None,
        job_type="compare",
        name=f"compare-{'+'.join(experiments) or 'runs'}",
        mode="online" if has_credentials() else "offline",
        config={"baseline": c.baseline, "alpha": c.alpha, "best_of": c.best_of, "varying": c.varying},
        reinit="finish_previous",
    )
    with open(table_csv) as f:
        rows = list(csv.reader(f))
    payload = {"compare/table": wandb.Table(columns=rows[0], data=rows[1:])}
    payload.update({f"compare/{p.stem}": wandb.Image(str(p)) for p in plots})
    run.log(payload)
    where = run.url or run.dir
    run.finish()
    return str(where)


def compare_command(args: list[str]) -> None:
    from qkvlab.analysis.report import render, write_csv, write_runs_csv
    from qkvlab.rundir import find_runs

    opts = parser().parse_intermixed_args(args)
    missing = [p for p in opts.paths if not glob.glob(p)]
    if missing:
        fail(f"no such path: {missing[0]}; pass run directories, sweep directories or globs (e.g. outputs/ci_smoke)")
    if not 0 < opts.alpha < 1:
        fail(f"--alpha={opts.alpha} is out of range; it must be in (0, 1)")
    runs = find_runs(opts.paths)
    if not runs:
        fail(f"no run directories under {' '.join(opts.paths)}; a run directory holds .hydra/config.yaml, metrics.jsonl or summary.json")
    c = compare(runs, baseline=opts.baseline, alpha=opts.alpha, best_of=opts.best_of)
    print(render(c, "text"), end="")
    if not c.groups:
        fail(f"none of the {len(runs)} run(s) completed; nothing to compare", code=1)
    out = opts.out or default_out(opts.paths)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(render(c, "markdown"))
    write_csv(c, out / "compare.csv")
    write_runs_csv(c, out / "runs.csv")
    plots: list[Path] = []
    if not opts.no_plots:
        from qkvlab.analysis.plots import write_plots

        plots = write_plots(c, out)
    print(f"\nwrote {out / 'compare.md'}, {out / 'compare.csv'}, {out / 'runs.csv'}" + "".join(f", {p}" for p in plots))
    if opts.wandb:
        try:
            print(f"logged to W&B: {log_to_wandb(c, out / 'compare.csv', plots, opts.wandb_project)}")
        except Exception as exc:  # W&B is a view; the files above are the result
            print(f"qkvlab: W&B logging failed ({error_line(exc)}); the files above are complete")

"""Which run directories are the same run: a copy (`cp -r`, a backup folder)
keeps the run's id, and a second training of one config and seed repeats a
deterministic computation. Either way it is one sample, not another seed, so
the analyses count it once and list the rest as duplicates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from qkvlab.rundir import Run, read_run_meta
from qkvlab.runname import config_hash


@dataclass(frozen=True)
class Duplicate:
    run: Run
    of: Run
    why: str

    @property
    def line(self) -> str:
        return f"{self.run.path} duplicates {self.of.path} ({self.why}); counted once"


def distinct(runs: Sequence[Run]) -> tuple[list[Run], list[Duplicate]]:
    """The runs with each duplicate left out, and the duplicates (unreadable runs are kept, to be reported). A finished run is kept over
    an unfinished copy of it, then the shallowest (a backup folder usually sits inside or
    beside the sweep), then the first by path."""
    kept: list[Run] = []
    dups: list[Duplicate] = []
    by_id: dict[str, Run] = {}
    by_config: dict[str, Run] = {}
    for run in sorted(runs, key=lambda r: (not r.finished, len(r.path.parts), str(r.path))):
        if run.unreadable:  # not a sample either way; kept so that it is reported with its line
            kept.append(run)
            continue
        config = trained_hash(run)
        if run.run_id and run.run_id in by_id:
            dups.append(Duplicate(run, by_id[run.run_id], f"a copy: the same run id {run.run_id}"))
        elif config and config in by_config:
            dups.append(Duplicate(run, by_config[config], f"the same config and seed {run.config.get('seed', 0)}: "
                                                          "a deterministic re-run, not another seed"))
        else:
            kept.append(run)
            if run.run_id:
                by_id[run.run_id] = run
            if config:
                by_config[config] = run
    return kept, dups


def trained_hash(run: Run) -> str | None:
    """The config hash the run trained under (run.json): a distilled run's hash holds its teacher's final
    checkpoint as it was then, which recomputing now (the teacher retrained, moved, or the path relative to
    another directory) would not give. Recomputed from the saved config where run.json has none."""
    meta, _ = read_run_meta(run.path)
    recorded = meta.get("config_hash")
    if isinstance(recorded, str) and recorded:
        return recorded
    return config_hash(run.config) if run.config else None

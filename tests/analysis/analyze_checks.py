"""What every `qkvlab analyze` output must hold, shared by the per-variant and the CLI tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

from qkvlab.analysis.analyze import FIGURES


def assert_analysis(out: Path, n_layers: int) -> dict:
    report = json.loads((out / "analysis.json").read_text())
    assert [row["layer"] for row in report["layers"]] == list(range(n_layers))
    assert (out / "layers.png").stat().st_size > 0
    for row in report["layers"]:
        assert (out / row["maps"]).stat().st_size > 0
        assert all(row[k] is None or math.isfinite(row[k]) for k in FIGURES), row
        assert all(row[k] is not None for k in ("symmetry", "symmetry_normalised", "eff_rank_q")), row
        assert row["map_symmetry"] and all(v is None or v >= 0 for v in row["map_symmetry"])
    return report

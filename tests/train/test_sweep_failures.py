"""A sweep with one broken job: the others complete, the broken one is marked
failed with its error line, and the sweep ends with a table and exit 1."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


def test_one_broken_job_does_not_stop_the_sweep(tmp_path, run_cli, kit):
    res = run_cli(
        "train", "-m", *kit.TINY, "optim.lr=1e30,3e-3", "optim.warmup_steps=0", "train.on_nonfinite=stop", "train.steps=10",
        "hydra.sweep.dir=sweep", env_extra=kit.ENV,
    )
    assert res.returncode == 1, res.stderr
    by_lr = {(d / ".hydra" / "config.yaml").read_text().count("lr: 1.0e+30"): d for d in (tmp_path / "sweep").iterdir() if d.is_dir()}
    broken, good = by_lr[1], by_lr[0]
    assert kit.summary(good)["status"] == "completed" and kit.summary(good)["step"] == 10
    failed = kit.summary(broken)
    assert failed["status"] == "failed" and failed["error"].startswith("Diverged: non-finite loss or gradients")
    table = res.stdout[res.stdout.index("1 of 2 jobs did not complete"):].splitlines()
    assert table[1].split() == ["job", "status", "error"]
    assert table[2].split()[:3] == [broken.name, "failed", "Diverged:"] and len(table) == 3
    assert "Traceback" not in res.stderr

"""W&B trouble never kills training: online mode with no reachable server falls
back to offline, says so once, and metrics.jsonl keeps everything."""

from __future__ import annotations

import json

import pytest
from trainrun import ENV, TINY, summary  # tests/train/trainrun.py

pytestmark = pytest.mark.slow


def test_online_without_network_falls_back_to_offline(tmp_path, run_cli):
    args = [a for a in TINY if not a.startswith("logger=")]
    res = run_cli(
        "train", *args, "logger=wandb", "logger.mode=online", "train.steps=10", "hydra.run.dir=run",
        timeout=300,
        env_extra={
            **ENV,
            "WANDB_MODE": "online",
            "WANDB_API_KEY": "x" * 40,
            # Port 9 (discard) on loopback: refused at once, like a machine with no route out.
            "WANDB_BASE_URL": "http://127.0.0.1:9",
            "WANDB_INIT_TIMEOUT": "20",
        },
    )
    assert res.returncode == 0, res.stderr
    said = [line for line in res.stdout.splitlines() if "W&B" in line]
    assert len(said) == 1 and "fell back to offline" in said[0] and "wandb sync" in said[0]
    run_dir = tmp_path / "run"
    assert summary(run_dir)["status"] == "completed"
    assert [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()][-1] == 10
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))

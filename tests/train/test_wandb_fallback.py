"""W&B trouble never kills training: online mode with no reachable server falls
back to offline, says so once, and kit.metrics.jsonl keeps everything."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_online_without_network_falls_back_to_offline(tmp_path, run_cli, kit):
    args = [a for a in kit.TINY if not a.startswith("logger=")]
    res = run_cli(
        "train", *args, "logger=wandb", "logger.mode=online", "train.steps=10", "hydra.run.dir=run",
        timeout=300,
        env_extra={
            **kit.ENV,
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
    assert kit.summary(run_dir)["status"] == "completed"
    assert [json.loads(l)["step"] for l in (run_dir / "metrics.jsonl").read_text().splitlines()][-1] == 10
    wandb_id = json.loads((run_dir / "run.json").read_text())["wandb_id"]
    assert list((run_dir / "wandb").glob(f"offline-run-*-{wandb_id}"))


def test_an_error_while_logging_turns_wandb_off_once(tmp_path, monkeypatch, capsys):
    from qkvlab.config import LoggerConfig
    from qkvlab.track.wandb_sink import WandbSink

    for key, value in {"WANDB_DIR": tmp_path, "WANDB_CONFIG_DIR": tmp_path / "cfg", "WANDB_CACHE_DIR": tmp_path / "cache"}.items():
        monkeypatch.setenv(key, str(value))
    sink = WandbSink(LoggerConfig(), tmp_path, name="n", group="g", job_type="j", config={}, mode="offline", run_id="abcd1234")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sink.run, "log", disk_full)
    sink.log(1, {"train/loss": 1.0})
    sink.log(2, {"train/loss": 0.5})
    sink.summary({"status": "completed"})
    sink.close(failed=False)
    said = [line for line in capsys.readouterr().out.splitlines() if "W&B failed" in line]
    assert said == [
        "qkvlab: W&B failed while logging (OSError: [Errno 28] No space left on device); "
        "W&B is off for this run, metrics.jsonl keeps everything"
    ]

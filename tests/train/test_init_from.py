"""init_from, `qkvlab convert` and experiment=kv_conversion end to end on a tiny trained run."""

from __future__ import annotations

import json

import pytest
import torch

from qkvlab.errors import ConfigError
from qkvlab.model import build_model
from qkvlab.train.from_run import read_finished_run
from qkvlab.train.init_from import check_init_from, start_weights
from tests.helpers import make_config


@pytest.mark.slow
def test_conversion_sweep_convert_command_and_copy_end_to_end(run_cli, tmp_path, kit):
    src_run = run_cli("train", *kit.TINY, "variant=mha", "train.steps=10", "train.device=cpu", env_extra=kit.ENV)
    assert src_run.returncode == 0, src_run.stderr
    (src,) = (tmp_path / "outputs" / "default").glob("mha-*")

    sweep = run_cli("train", "-m", "experiment=kv_conversion", *kit.TINY, f"init_from={src}", "convert.alpha=0,random",
                    "train.device=cpu", env_extra=kit.ENV)
    assert sweep.returncode == 0, sweep.stderr
    from qkvlab.analysis.command import compare_command

    compare_command([str(tmp_path / "outputs" / "kv_conversion")])
    assert (tmp_path / "outputs" / "kv_conversion" / "compare" / "quality_vs_alpha.png").stat().st_size > 0

    converted = run_cli("convert", str(src), "--to", "k_eq_v", "--alpha", "0", env_extra=kit.ENV)
    assert converted.returncode == 0, converted.stderr
    (out,) = (tmp_path / "outputs" / "default").glob("k_eq_v-*")
    assert str(out) in converted.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["variant"] == "k_eq_v" and report["checkpoint_step"] == 0
    # The command and the sweep's job with the same alpha are one computation: the same run id.
    assert out.name in [p.name for p in (tmp_path / "outputs" / "kv_conversion").glob("k_eq_v-*")]

    # The same variant: the weights are copied bit for bit.
    tiny = [o for o in kit.TINY if o.startswith(("model=", "data."))]
    cfg = make_config(*tiny, "variant=mha", f"init_from={src}", "train.steps=0")
    model = build_model(cfg, 10)
    from qkvlab.data import build_data

    record = start_weights(cfg, model, build_data(cfg), 10)
    source = read_finished_run(src).state
    assert all(torch.equal(v, source[k]) for k, v in model.state_dict().items())
    assert record["init_from/run"] == src.name
    with pytest.raises(ConfigError, match="add convert.alpha=A"):
        check_init_from(make_config(*tiny, "variant=k_eq_v", f"init_from={src}"))


def test_a_run_from_init_from_resumes_from_its_own_checkpoints(tmp_path):
    """Restarting rebuilds the model from the source and then loads the run's own checkpoint over it."""
    from omegaconf import OmegaConf

    from qkvlab.config import as_dict
    from qkvlab.train.checkpoint import read_checkpoint
    from qkvlab.train.loop import Trainer
    from qkvlab.train.resume import restore
    from qkvlab.train.run import run

    fast = ("logger=none", "train.progress=false", "data.val_size=64", "data.batch_size=8", "train.eval_every=2")
    src_cfg = make_config(*fast, "variant=mha", "train.steps=2")
    run(src_cfg, tmp_path / "src")
    (tmp_path / "src" / ".hydra").mkdir()
    OmegaConf.save(as_dict(src_cfg), tmp_path / "src" / ".hydra" / "config.yaml")
    cfg = make_config(*fast, "variant=k_eq_v", f"init_from={tmp_path / 'src'}", "convert.alpha=0.5", "train.steps=2")
    run(cfg, tmp_path / "dst")
    trainer = Trainer(cfg, tmp_path / "dst")
    converted = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    assert restore(trainer, tmp_path / "dst", say=lambda _: None) is not None
    own = read_checkpoint(tmp_path / "dst" / "checkpoints" / "final.pt")["model"]
    assert all(torch.equal(v, own[k]) for k, v in trainer.model.state_dict().items())
    assert not all(torch.equal(v, converted[k]) for k, v in own.items())

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

"""Parameter-matched controls give a sharing variant mha's parameter count back."""

from __future__ import annotations

import pytest
import torch
from hydra import compose, initialize_config_dir

from qkvlab.cli import CONF_DIR
from qkvlab.checks import checked
from qkvlab.config import ConfigError, register_configs
from qkvlab.model import build_model, count_params
from qkvlab.model.matching import match_report


def config(*overrides: str):
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return checked(compose("config", overrides=["logger=none", *overrides]))


def total(cfg, vocab: int = 50304) -> tuple[int, object]:
    with torch.device("meta"):
        model = build_model(cfg, vocab)
    return count_params(model)["params/total"], model


@pytest.mark.parametrize("variant", ["k_eq_v", "q_eq_k_eq_v", "k_eq_v_mqa"])
@pytest.mark.parametrize("mode", ["mlp", "layers"])
def test_matched_variant_is_as_close_to_mha_as_its_shape_allows(variant, mode):
    # model=small: 6 layers, d_model 384, SwiGLU, no biases.
    target, _ = total(config("model=small", "variant=mha"))
    plain, _ = total(config("model=small", f"variant={variant}"))
    matched, model = total(config("model=small", f"variant={variant}", f"model.match_params={mode}"))
    assert plain < target
    # Parameters added by one more unit of d_ff (in every layer), or by one more layer.
    step = 6 * 3 * 384 if mode == "mlp" else (target - 50304 * 384) / 6
    assert abs(matched - target) <= step / 2
    assert abs(matched - target) <= target - plain


def test_mha_is_unchanged_and_report_says_what_was_done():
    cfg = config("model=tiny", "variant=mha", "model.match_params=mlp")
    assert total(cfg, 10)[1].cfg.d_ff == cfg.model.d_ff
    cfg = config("model=tiny", "variant=q_eq_k_eq_v", "model.match_params=mlp")
    _, model = total(cfg, 10)
    report = match_report(cfg, model.cfg, 10)
    assert report["match/mode"] == "mlp" and report["match/d_ff"] == model.cfg.d_ff > cfg.model.d_ff
    assert report["match/params_target"] == total(config("model=tiny", "variant=mha"), 10)[0]


def test_bad_mode_is_one_clear_line():
    with pytest.raises(Exception) as err:
        config("model.match_params=wider")
    msg = str(err.value) if isinstance(err.value, ConfigError) else str(err.value.__cause__ or err.value)
    assert "model.match_params" in msg and "none, mlp, layers" in msg

"""The scaling ladder's model presets follow their one documented rule and span 0.03M-100M."""

import math

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qkvlab.config import Config, DataConfig, ModelConfig, register_configs
from qkvlab.model import build_model
from qkvlab.model.flops import matmul_params

from qkvlab.cli import CONF_DIR as CONF

RUNGS = sorted(CONF.glob("model/ladder_*.yaml"), key=lambda p: int(p.stem.split("_")[1]))


def test_every_rung_follows_the_rule_and_sizes_grow_from_0_1m_to_100m():
    assert len(RUNGS) >= 5
    sizes = []
    for path in RUNGS:
        m = OmegaConf.load(path)
        L = m.n_layers
        assert (m.n_heads, m.d_model) == (L, 16 * L), path.name
        assert m.d_ff == math.ceil(8 * m.d_model / 3 / 16) * 16, path.name
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), m))
        with torch.device("meta"):
            model = build_model(Config(model=model_cfg, data=DataConfig(seq_len=128, causal=True)), 256)
        sizes.append(matmul_params(model))
    assert sizes == sorted(sizes)
    assert 2e4 < sizes[0] < 1.5e5 and 5e7 < sizes[-1] < 2e8


@pytest.mark.parametrize(
    "preset, swept, tpp",
    [("scaling_ladder", "model", 20), ("overtraining", "train.tokens_per_param", 20), ("context_sweep", "data.seq_len", 20)],
)
def test_experiment_presets_compose_and_sweep(preset, swept, tpp):
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=[f"experiment={preset}"], return_hydra_config=True)
    assert cfg.name == preset and cfg.train.tokens_per_param == tpp
    params = cfg.hydra.sweeper.params
    assert len(str(params[swept]).split(",")) >= 3 and "k_eq_v" in params.variant

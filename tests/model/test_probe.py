"""Score probes (what analyses read from attention) and the figures made of them."""

from __future__ import annotations

import math

import pytest
import torch

from qkvlab.cli import CONF_DIR
from qkvlab.model import build_model
from qkvlab.model.attention import rotate
from qkvlab.model.probe import probe_forward
from qkvlab.model.score_stats import effective_rank, layer_figures, map_symmetry, mean_symmetry, symmetry

from tests.helpers import make_config

VARIANTS = sorted(p.stem for p in (CONF_DIR / "variant").glob("*.yaml"))
# One variant per probe code path (each family, GQA, both cross-layer rules, "+"); every variant file's
# analysis runs in tests/train/test_loop.py::test_every_variant_resumed_mid_window_ends_bit_identical.
PATHS = ["mha", "gqa", "cla", "kv_shared", "k_eq_v_qk_norm", "q_eq_k_plus", "expanded", "keyless", "qvv3", "routed",
         "loop", "differential", "mla"]


def model_for(variant: str, *overrides: str):
    torch.manual_seed(0)
    cfg = make_config("data=mqar", f"variant={variant}", "model.d_ff=64", "model.context=64", *overrides)
    return build_model(cfg, vocab_size=50).eval()


def probes(model, idx):
    seen = {}
    with torch.no_grad():
        logits = probe_forward(model, idx, lambda layer, p: seen.setdefault(layer, p))
    return logits, seen


def test_the_probed_paths_are_variant_files():
    assert set(PATHS) <= set(VARIANTS)


@pytest.mark.parametrize("variant", PATHS)
def test_every_family_gives_each_layer_a_probe_and_the_same_logits(variant):
    model = model_for(variant)
    idx = torch.randint(0, 50, (2, 12))
    logits, seen = probes(model, idx)
    with torch.no_grad():
        torch.testing.assert_close(logits, model(idx), rtol=0, atol=0)
    assert sorted(seen) == list(range(len(model.blocks)))
    for layer, probe in seen.items():
        assert probe.scores.shape == (2, model.spec.n_heads * probe.maps_per_head, 12, 12)
        figures = layer_figures(probe)
        # Only a layer that reuses another's K/V (cross-layer sharing) and keyless's K have no projection.
        required = ["symmetry", "symmetry_normalised", "eff_rank_q"] + ["eff_rank_v"] * (probe.v is not None)
        assert all(math.isfinite(figures[key]) for key in required), (layer, figures)
        assert all(value is None or math.isfinite(value) for value in figures.values()), (layer, figures)
    reusing = [i for i, block in enumerate(model.blocks) if getattr(block.attn, "reuses", False)]
    assert [i for i, p in seen.items() if p.v is None] == reusing


def test_rope_keeps_q_eq_k_scores_symmetric_and_mha_is_not():
    idx = torch.randint(0, 50, (2, 12))
    for variant, symmetric in (("q_eq_k", True), ("q_eq_k_eq_v", True), ("mha", False), ("q_eq_k_plus", False)):
        for probe in probes(model_for(variant), idx)[1].values():
            raw, normalised = symmetry(probe.scores)
            if symmetric:
                assert normalised < 1e-5, (variant, normalised)
            else:
                assert normalised > 0.1, (variant, normalised)


def test_mha_scores_are_the_rotated_projections_dot_product():
    model = model_for("mha")
    _, seen = probes(model, torch.randint(0, 50, (2, 12)))
    cos, sin = model.rope_cos[:12], model.rope_sin[:12]
    for probe in seen.values():
        q, k = rotate(probe.q, cos, sin), rotate(probe.k, cos, sin)
        torch.testing.assert_close(probe.scores, q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5)


def test_k_eq_v_projections_are_one_tensor_and_keyless_has_no_key():
    (probe, *_) = probes(model_for("k_eq_v"), torch.randint(0, 50, (1, 8)))[1].values()
    assert layer_figures(probe)["cos_kv"] == pytest.approx(1.0)
    (probe, *_) = probes(model_for("keyless"), torch.randint(0, 50, (1, 8)))[1].values()
    figures = layer_figures(probe)
    assert probe.k is None and figures["cos_qk"] is None and figures["eff_rank_k"] is None


def test_routed_pairs_are_those_both_tokens_computed():
    model = model_for("routed", "model.n_heads=8", "model.d_model=64", "variant.shared_heads=0")
    _, seen = probes(model, torch.randint(0, 50, (2, 10)))
    pairs = seen[0].pairs
    ran = pairs.diagonal(dim1=-2, dim2=-1)
    # Each token runs top_k (2) of the 4 heads of each of the 2 KV groups.
    assert ran.sum(1).eq(4).all()
    assert torch.equal(pairs, ran[..., :, None] & ran[..., None, :])


def test_symmetry_counts_off_diagonal_pairs():
    s = torch.tensor([[5.0, 1.0], [3.0, -7.0]])
    assert symmetry(s) == pytest.approx((2.0, 2.0 / 2.0))
    assert map_symmetry(torch.stack([s, s.T + s])) == pytest.approx([2.0, 0.0])


def test_effective_rank_of_known_matrices():
    u, v = torch.randn(7, 1), torch.randn(1, 5)
    assert float(effective_rank(u @ v)) == pytest.approx(1.0, abs=1e-6)
    assert float(effective_rank(torch.eye(6))) == pytest.approx(6.0)
    assert float(effective_rank(torch.diag(torch.tensor([1.0, 1.0, 0.0])))) == pytest.approx(2.0)
    assert float(effective_rank(torch.zeros(3, 3))) == 0.0


def test_mean_symmetry_is_the_layers_mean():
    model = model_for("mha")
    idx = torch.randint(0, 50, (2, 12))
    _, seen = probes(model, idx)
    expected = sum(symmetry(p.scores)[1] for p in seen.values()) / len(seen)
    with torch.no_grad():
        assert mean_symmetry(model, idx) == pytest.approx(expected)

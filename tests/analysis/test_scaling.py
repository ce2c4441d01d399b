import json
import math

import pytest

from qkvlab.cli import main
from tests.analysis.conftest import LAWS, RUNG_COMPUTE, true_multiplier, write_run


def scaling(capsys, *args):
    main(["scaling", *map(str, args)])
    return capsys.readouterr().out


def test_fit_recovers_laws_and_compute_multiplier(ladder_dir, capsys):
    out = scaling(capsys, ladder_dir, "--bootstrap", "200")
    record = json.loads((ladder_dir / "scaling" / "scaling.json").read_text())["ladder"]
    for variant, (E, A, alpha) in LAWS.items():
        fit = record["fits"][variant]
        assert fit["E"] == pytest.approx(E, abs=0.1)
        assert fit["alpha"] == pytest.approx(alpha, rel=0.3)
        assert fit["bootstrap"] == "seeds"
        assert fit["ci"]["alpha"][0] <= fit["alpha"] <= fit["ci"]["alpha"][1]
    mults = {m["at"]: m for m in record["compute_multiplier"]["k_eq_v"]}
    assert set(mults) == {f"ladder_{i + 1}" for i in range(len(RUNG_COMPUTE))} | {"10x", "100x"}
    for m in mults.values():
        truth = true_multiplier(m["compute"])
        assert m["value"] == pytest.approx(truth, rel=0.25), m["at"]
    # The known gap grows with compute, so the multiplier must too.
    assert mults["100x"]["value"] > mults["ladder_1"]["value"] > 1
    assert "Compute multiplier vs mha" in out and "k_eq_v" in out
    for png in ("loss_vs_compute.png", "gap_vs_compute.png"):
        assert (ladder_dir / "scaling" / png).stat().st_size > 10_000


def test_refuses_a_fit_with_fewer_than_three_finished_rungs_and_names_them(tmp_path, capsys):
    for i, c in enumerate(RUNG_COMPUTE[:3]):
        write_run(tmp_path / f"mha{i}", variant="mha", model=f"ladder_{i + 1}", seed=0, loss=3 - i * 0.2, compute=c)
    write_run(tmp_path / "kv0", variant="k_eq_v", model="ladder_1", seed=0, loss=3.1, compute=RUNG_COMPUTE[0])
    write_run(tmp_path / "kv1", variant="k_eq_v", model="ladder_2", seed=0, loss=0, compute=0, status="failed")
    with pytest.raises(SystemExit) as exc:
        main(["scaling", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "refusing to fit" in err and "k_eq_v has 1" in err
    assert "missing ladder_2 (failed)" in err and "ladder_3 (no run)" in err


def test_unknown_baseline_is_one_line(ladder_dir, capsys):
    with pytest.raises(SystemExit):
        main(["scaling", str(ladder_dir), "--baseline", "gqa"])
    assert "choose --baseline among: k_eq_v, mha" in capsys.readouterr().err


def test_three_single_seed_rungs_fit_without_pretending_to_an_interval(tmp_path, capsys):
    for v, worse in (("mha", 1.0), ("k_eq_v", 1.02)):
        for i, c in enumerate(RUNG_COMPUTE[:3]):
            loss = worse * (LAWS["mha"][0] + LAWS["mha"][1] * c ** -LAWS["mha"][2])
            write_run(tmp_path / f"{v}{i}", variant=v, model=f"ladder_{i + 1}", seed=0, loss=loss, compute=c)
    out = scaling(capsys, tmp_path)
    assert "no intervals" in out
    record = json.loads((tmp_path / "scaling" / "scaling.json").read_text())["ladder"]
    assert all(m["ci"] is None and m["value"] > 1 for m in record["compute_multiplier"]["k_eq_v"])


def test_gap_along_tokens_per_param_and_context(tmp_path, capsys):
    """Over-training and context runs of one size: gaps per setting, every intermediate eval plotted."""
    gap = {"mha": 0.0, "k_eq_v": 0.03}
    for v, g in gap.items():
        for tpp in (20, 80, 320):
            evals = [(s, s * 1000, (2.0 + 100 / s) * (1 + g * s / 3200)) for s in range(100, 100 * tpp // 20 + 1, 100)]
            write_run(tmp_path / "ot" / f"{v}_{tpp}", variant=v, model="ladder_2", seed=0, loss=evals[-1][2], experiment="overtraining",
                      compute=1e12 * tpp, tokens_per_param=tpp, params=5000, evals=evals)
        for ctx in (128, 256, 512):
            write_run(tmp_path / "ctx" / f"{v}_{ctx}", variant=v, model="ladder_3", seed=0, experiment="context_sweep",
                      loss=2.0 * (1 + g * math.log2(ctx / 64)), compute=1e13, seq_len=ctx)
    out = scaling(capsys, tmp_path, "--out", tmp_path / "report")
    assert "along tokens per parameter" in out and "along context length" in out
    record = json.loads((tmp_path / "report" / "scaling.json").read_text())
    assert "ladder" not in record
    by_tpp = record["tokens_per_param"]["delta_pct_loss"]["k_eq_v"]
    assert by_tpp["20.0"] < by_tpp["80.0"] < by_tpp["320.0"]
    by_ctx = record["seq_len"]["delta_pct_loss"]["k_eq_v"]
    assert by_ctx["128"] == pytest.approx(3.0) and by_ctx["512"] == pytest.approx(9.0)
    for png in ("gap_vs_tokens_per_param.png", "gap_vs_context.png"):
        assert (tmp_path / "report" / png).exists()


def test_nothing_to_scale_is_one_line(tmp_path, capsys):
    write_run(tmp_path / "a", variant="mha", model="tiny", seed=0, loss=2.0, compute=1e12)
    with pytest.raises(SystemExit):
        main(["scaling", str(tmp_path)])
    assert "nothing to scale" in capsys.readouterr().err


def error_line(capsys, *args) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(["scaling", *map(str, args)])
    err = capsys.readouterr().err.strip()
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1, err
    return err


def test_a_variant_comparison_without_a_ladder_says_what_scaling_needs(tmp_path, capsys):
    """Seeds of two variants at one size (a compare sweep): each variant reaches its own tokens
    per parameter, so no setting is shared and every table would be empty."""
    for v, tpp in (("mha", 20.0), ("k_eq_v", 22.3)):
        for seed in (0, 1):
            write_run(tmp_path / f"{v}_s{seed}", variant=v, model="tiny", experiment="default", seed=seed,
                      loss=2.0 + seed / 100, compute=1e12, tokens_per_param=tpp)
    err = error_line(capsys, tmp_path)
    assert "nothing to scale" in err and "several model sizes per variant" in err and "experiment=scaling_ladder" in err


def test_copies_are_counted_once_and_unreadable_runs_listed(ladder_dir, tmp_path, capsys):
    import shutil

    for run in sorted(ladder_dir.iterdir()):
        (run / "run.json").write_text(json.dumps({"wandb_id": run.name}))
    shutil.copytree(ladder_dir, ladder_dir / "backup")
    (ladder_dir / "mha_r0_s2" / "summary.json").write_text("")
    out = scaling(capsys, ladder_dir, "--bootstrap", "20", "--out", tmp_path / "report")
    record = json.loads((tmp_path / "report" / "scaling.json").read_text())
    seeds = {r["model"]: r["seeds"] for r in record["ladder"]["fits"]["k_eq_v"]["rungs"]}
    assert set(seeds.values()) == {3}, seeds
    assert {r["model"]: r["seeds"] for r in record["ladder"]["fits"]["mha"]["rungs"]}["ladder_1"] == 3  # the copy stands in
    assert f"{ladder_dir / 'mha_r0_s2' / 'summary.json'} is unreadable (empty)" in out
    assert "Counted once: 35 duplicate run directories" in out
    assert f"{ladder_dir / 'backup' / 'k_eq_v_r0_s0'} duplicates {ladder_dir / 'k_eq_v_r0_s0'}" in out
    assert len(record["duplicates"]) == 35 and len(record["not_included"]) == 1

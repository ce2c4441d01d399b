"""qkvlab compare on hand-made run directories whose answers are known."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import pytest
from scipy import stats

from tests.analysis.compare_rundirs import make_run
from qkvlab.analysis.compare import compare
from qkvlab.analysis.command import compare_command
from qkvlab.analysis.plots import PLOTS
from qkvlab.rundir import find_runs

MHA = [2.00, 2.02, 1.98]
KEQV = [2.10, 2.12, 2.08]


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for seed, loss in enumerate(MHA):
        make_run(root, f"mha-s{seed}", variant="mha", seed=seed, loss=loss, params=1000, kv=1024)
    for seed, loss in enumerate(KEQV):
        make_run(root, f"k_eq_v-s{seed}", variant="k_eq_v", seed=seed, loss=loss, params=900, kv=512)
    make_run(root, "k_eq_v-s3", variant="k_eq_v", seed=3, status="failed")
    make_run(root, "mha-s9", variant="mha", seed=9, status="unfinished")
    return root


def by_variant(c):
    return {g.label: g for g in c.groups}


def test_delta_and_welch_against_baseline(sweep):
    c = compare(find_runs([sweep]))
    g = by_variant(c)
    assert set(g) == {"mha", "k_eq_v"}
    assert g["mha"].n == 3 and g["k_eq_v"].n == 3  # the failed and the unfinished run are not averaged
    ppl_mha = sum(math.exp(x) for x in MHA) / 3
    ppl_keqv = sum(math.exp(x) for x in KEQV) / 3
    assert g["k_eq_v"].delta_ppl_pct == pytest.approx(100 * (ppl_keqv / ppl_mha - 1))
    assert g["k_eq_v"].stats["val/loss"].mean == pytest.approx(2.10)
    assert g["k_eq_v"].stats["val/loss"].std == pytest.approx(0.02)
    assert g["k_eq_v"].p_value == pytest.approx(stats.ttest_ind(KEQV, MHA, equal_var=False).pvalue)
    assert c.significant(g["k_eq_v"])
    assert g["mha"].delta_ppl_pct == 0.0 and math.isnan(g["mha"].p_value)
    assert sorted(r.status for r in c.excluded) == ["failed", "unfinished"]


def test_noise_sized_difference_is_not_significant(tmp_path):
    for seed, (a, b) in enumerate([(2.0, 2.05), (2.1, 2.0), (1.9, 2.01)]):
        make_run(tmp_path, f"mha-{seed}", variant="mha", seed=seed, loss=a)
        make_run(tmp_path, f"kv-{seed}", variant="k_eq_v", seed=seed, loss=b)
    c = compare(find_runs([tmp_path]))
    assert not c.significant(by_variant(c)["k_eq_v"])


def test_other_differing_keys_make_groups_and_best_of_picks_each_variants_lr(tmp_path):
    # mha is best at lr 1e-3, k_eq_v at 3e-3: each is compared at its own best.
    for seed in (0, 1):
        for lr, loss in ((1e-3, 2.0), (3e-3, 2.2)):
            make_run(tmp_path, f"mha-{lr}-{seed}", variant="mha", seed=seed, lr=lr, loss=loss + 0.01 * seed)
        for lr, loss in ((1e-3, 2.3), (3e-3, 2.1)):
            make_run(tmp_path, f"kv-{lr}-{seed}", variant="k_eq_v", seed=seed, lr=lr, loss=loss + 0.01 * seed)
    runs = find_runs([tmp_path])
    plain = compare(runs)
    assert plain.varying == ["optim.lr"]  # seed, logger.* and the study's name never split groups
    assert set(by_variant(plain)) == {"mha optim.lr=0.001", "mha optim.lr=0.003", "k_eq_v optim.lr=0.001", "k_eq_v optim.lr=0.003"}
    assert by_variant(plain)["k_eq_v optim.lr=0.003"].baseline.label == "mha optim.lr=0.003"
    best = compare(runs, best_of=["optim.lr"])
    assert set(by_variant(best)) == {"mha optim.lr=0.001", "k_eq_v optim.lr=0.003"}
    g = by_variant(best)["k_eq_v optim.lr=0.003"]
    assert g.delta_ppl_pct == pytest.approx(100 * (math.exp(0.1) - 1), rel=1e-3)


def test_command_writes_table_csv_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    compare_command([str(sweep), "--out", str(out)])
    printed = capsys.readouterr().out
    assert "k_eq_v" in printed and "baseline" in printed
    assert "Not included: 2 failed, unfinished or unreadable run(s)" in printed and "RuntimeError: boom" in printed
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "compare.csv"))}
    assert rows["k_eq_v"]["n"] == "3" and rows["k_eq_v"]["significant"] == "True"
    assert float(rows["k_eq_v"]["kv_cache/bytes_per_token/mean"]) == 512
    assert "| k_eq_v |" in (out / "compare.md").read_text()
    runs = list(csv.DictReader(open(out / "runs.csv")))
    assert len(runs) == 8 and sum(r["group"] == "(excluded)" for r in runs) == 2
    for name in PLOTS:
        png = (out / name).read_bytes()
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name


def test_accuracy_per_task_table(tmp_path, capsys):
    for task, (a, b) in {"sort": (0.9, 0.6), "copy": (1.0, 0.95)}.items():
        for seed in (0, 1):
            make_run(tmp_path / "runs", f"mha-{task}-{seed}", variant="mha", seed=seed, task=task, acc=a)
            make_run(tmp_path / "runs", f"kv-{task}-{seed}", variant="q_eq_k_eq_v", seed=seed, task=task, acc=b)
    compare_command([str(tmp_path / "runs"), "--no-plots"])
    text = capsys.readouterr().out
    table = text.split("Validation accuracy % per task")[1]
    assert "data=copy" in table and "data=sort" in table and "data.seq_len" not in table
    q_row = next(line for line in table.splitlines() if line.startswith("q_eq_k_eq_v"))
    assert "60.0" in q_row and "95.0" in q_row


def test_lm_eval_task_metrics_are_columns_with_delta_and_welch(sweep, tmp_path, capsys):
    """eval.json's `tasks` (what qkvlab eval --tasks writes) as compare columns: headline metric per task."""
    acc = {"mha": [0.50, 0.52, 0.48], "k_eq_v": [0.40, 0.41, 0.39]}
    for variant, values in acc.items():
        for seed, value in enumerate(values):
            tasks = {"piqa": {"acc": value, "acc_norm": value + 0.1, "acc_stderr": 0.01, "checkpoint_step": 20,
                              "num_fewshot": None, "limit": None}}
            (sweep / f"{variant}-s{seed}" / "eval.json").write_text(json.dumps({"tasks": tasks}))
    out = tmp_path / "report"
    compare_command([str(sweep), "--out", str(out), "--no-plots"])
    table = capsys.readouterr().out.split("Downstream tasks (lm-eval, eval.json)")[1]
    header, rule, mha_row, keqv_row = table.strip().splitlines()[:4]
    assert header.split() == ["variant", "n", "piqa/acc_norm", "Δ", "vs", "mha", "p"]
    p = stats.ttest_ind([v + 0.1 for v in acc["k_eq_v"]], [v + 0.1 for v in acc["mha"]], equal_var=False).pvalue
    assert mha_row.split() == ["mha", "3", "0.6000", "±", "0.0200", "baseline", "—"]
    assert keqv_row.split() == ["k_eq_v", "3", "0.5000", "±", "0.0100", "-0.1000*", f"{p:.3f}"]
    rows = {r["variant"]: r for r in csv.DictReader(open(out / "compare.csv"))}
    assert float(rows["k_eq_v"]["piqa/acc/mean"]) == pytest.approx(0.40)
    assert float(rows["k_eq_v"]["piqa/acc/delta"]) == pytest.approx(-0.10)
    assert float(rows["k_eq_v"]["piqa/acc_norm/p_value"]) == pytest.approx(p)
    assert "piqa/acc_stderr/mean" not in rows["k_eq_v"] and "piqa/checkpoint_step/mean" not in rows["k_eq_v"]


def test_clear_errors(tmp_path, capsys):
    with pytest.raises(SystemExit):
        compare_command([str(tmp_path / "nope")])
    assert "no such path" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit):
        compare_command([str(tmp_path / "empty")])
    assert "no run directories" in capsys.readouterr().err


@pytest.mark.slow
def test_wandb_gets_table_and_plots(sweep, tmp_path, run_cli):
    # A subprocess, as a user runs it: W&B's service has flushed the offline run when it exits.
    out = run_cli("compare", str(sweep), "--out", str(tmp_path / "report"), "--wandb")
    assert out.returncode == 0 and "logged to W&B" in out.stdout, out.stderr[-2000:]
    (blob,) = [p.read_bytes() for p in tmp_path.rglob("offline-run-*/run-*.wandb")]
    assert b"compare/table" in blob and b"compare/ppl_vs_kv_cache" in blob


def test_copies_of_run_directories_are_counted_once_and_listed(tmp_path, capsys):
    """`cp -r` of a sweep (a backup folder) must not turn two seeds into six."""
    root = tmp_path / "sweep"
    for seed, (a, b) in enumerate([(2.00, 2.05), (2.10, 2.08)]):
        make_run(root, f"mha-s{seed}", variant="mha", seed=seed, loss=a)
        make_run(root, f"k_eq_v-s{seed}", variant="k_eq_v", seed=seed, loss=b)
    alone = by_variant(compare(find_runs([root])))["k_eq_v"]
    for backup in ("backup", "backup2"):
        for run in ("mha-s0", "mha-s1", "k_eq_v-s0", "k_eq_v-s1"):
            shutil.copytree(root / run, root / backup / run)
    c = compare(find_runs([root]))
    g = by_variant(c)["k_eq_v"]
    assert g.n == 2 and g.p_value == pytest.approx(alone.p_value)
    assert len(c.duplicates) == 8 and all(d.of.path.parent == root for d in c.duplicates)
    assert all(d.why.startswith("a copy: the same run id ") for d in c.duplicates)

    out = tmp_path / "report"
    compare_command([str(root), "--out", str(out), "--no-plots"])
    printed = capsys.readouterr().out
    assert "Counted once: 8 duplicate run directories" in printed
    assert re.search(rf"{root / 'backup' / 'mha-s0'} +{root / 'mha-s0'} +a copy: the same run id", printed)
    assert "Counted once: 8 duplicate run directories" in (out / "compare.md").read_text()
    dups = [r for r in csv.DictReader(open(out / "runs.csv")) if r["group"] == "(duplicate)"]
    assert len(dups) == 8
    assert next(r for r in dups if r["run_dir"] == str(root / "backup2" / "k_eq_v-s1"))["duplicate_of"].startswith(
        str(root / "k_eq_v-s1") + " (a copy")


def test_a_rerun_of_the_same_config_and_seed_is_one_sample(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "mha-s0", variant="mha", seed=0, loss=2.0)
    make_run(root, "mha-s0-again", variant="mha", seed=0, loss=2.0)  # its own run id, as a second training
    make_run(root, "mha-s1", variant="mha", seed=1, loss=2.1)
    c = compare(find_runs([root]))
    assert by_variant(c)["mha"].n == 2
    (dup,) = c.duplicates
    assert dup.run.path.name == "mha-s0-again" and dup.of.path.name == "mha-s0"
    assert dup.why.startswith("the same config and seed 0")


def test_an_unreadable_summary_is_listed_and_the_rest_compared(sweep, tmp_path, capsys):
    (sweep / "mha-s1" / "summary.json").write_text('{"status": "compl')
    compare_command([str(sweep), "--out", str(tmp_path / "report"), "--no-plots"])
    printed = capsys.readouterr().out
    assert by_variant(compare(find_runs([sweep])))["mha"].n == 2
    line = f"{sweep / 'mha-s1' / 'summary.json'} is unreadable (not valid JSON at line 1)"
    assert "Not included: 3 failed, unfinished or unreadable run(s)" in printed and line in printed


def _curves(fig) -> dict[str, dict[str, int]]:
    """Points per plotted line, by panel title and line label."""
    return {ax.get_title(): {line.get_label(): len(line.get_xdata()) for line in ax.get_lines()} for ax in fig.axes}


def test_curves_show_training_loss_always_and_validation_where_evaluated_more_than_once(sweep, tmp_path):
    from qkvlab.analysis.plots import curves_figure

    fig = curves_figure(compare(find_runs([sweep])))
    curves = _curves(fig)
    assert curves["Training loss (seed mean ± std)"] == {"mha (n=3)": 4, "k_eq_v (n=3)": 4}
    assert curves["Validation loss (seed mean ± std)"] == {"mha (n=3)": 2, "k_eq_v (n=3)": 2}
    once = tmp_path / "once"
    for seed in (0, 1):
        run = make_run(once, f"mha-s{seed}", seed=seed)
        rows = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if r["step"] != 10 or "val/loss" not in r]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert _curves(curves_figure(compare(find_runs([once])))) == {"Training loss (seed mean ± std)": {"mha (n=2)": 4}}


@pytest.mark.slow
def test_compare_plot_of_a_100_step_sweep_has_curves(run_cli, tmp_path):
    """The README's sweep at train.steps=100 and the default train.eval_every: curves, not one dot per group."""
    from qkvlab.analysis.plots import curves_figure

    sweep = run_cli(
        "train", "-m", "variant=k_eq_v", "seed=0,1", "train.steps=100", "model=tiny", "logger=none",
        "train.progress=false", "data.batch_size=8", "data.seq_len=16", "data.val_size=64", "train.checkpoint_every=100",
        env_extra={"OMP_NUM_THREADS": "1"},
    )
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    curves = _curves(curves_figure(compare(find_runs([tmp_path / "outputs" / "default"]))))
    assert set(curves) == {"Training loss (seed mean ± std)", "Validation loss (seed mean ± std)"}
    for panel in curves.values():
        assert list(panel) == ["k_eq_v (n=2)"] and min(panel.values()) > 1, panel


def test_converted_and_distilled_runs_are_compared_with_mha_of_the_same_setting(tmp_path):
    """Uptraining from a source run: the k_eq_v students get their Δ against the mha trained from the same
    source, a teacher's default knobs do not label the rows that have no teacher, and paths read as names."""
    from qkvlab.rundir import find_runs

    src = "/elsewhere/outputs/kv_source/mha-text-s0-68c68c72"
    plain = {"init_from": src, "convert": {"alpha": None}, "distill": {"teacher": None, "alpha": 0.5, "temperature": 2.0}}
    make_run(tmp_path, "mha", variant="mha", loss=1.8, extra=plain)
    for name, alpha, loss in (("kd", 0.5, 1.95), ("ce", 1.0, 2.01)):
        make_run(tmp_path, name, variant="k_eq_v", loss=loss, extra={
            "init_from": src, "convert": {"alpha": "fit"}, "distill": {"teacher": src, "alpha": alpha, "temperature": 2.0}})
    c = compare(find_runs([tmp_path]))
    labels = {g.label: g for g in c.groups}
    assert sorted(labels) == [
        "k_eq_v convert.alpha=fit distill.alpha=0.5 distill.teacher=mha-text-s0-68c68c72",
        "k_eq_v convert.alpha=fit distill.alpha=1.0 distill.teacher=mha-text-s0-68c68c72",
        "mha",
    ]
    kd = labels["k_eq_v convert.alpha=fit distill.alpha=0.5 distill.teacher=mha-text-s0-68c68c72"]
    assert kd.baseline is labels["mha"]
    assert kd.delta_ppl_pct == pytest.approx(100 * (math.exp(1.95) / math.exp(1.8) - 1))

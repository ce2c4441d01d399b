"""`qkvlab convert RUN_DIR --to k_eq_v --alpha A|fit|random [--out DIR]`: a trained mha-sharing run as
its K=V form, evaluated zero-shot.

A thin command over training's one path: it replays the source run's own overrides with the variant's
sharing set to k_eq_v (the K=V form of its head layout: mha -> k_eq_v, gqa -> k_eq_v_gqa, ...),
init_from=RUN_DIR, convert.alpha=A and train.steps=0, so the result is an ordinary run directory that
eval, generate, compare and init_from accept, then writes its eval.json as `qkvlab eval` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qkvlab.args import ArgumentParser
from qkvlab.config import CONF_DIR, convert_alpha, register_configs
from qkvlab.errors import ConfigError
from qkvlab.rundir import load_run

# The K=V form of the shipped mha-sharing presets; any other variant gets `<name>_k_eq_v`.
K_EQ_V_NAMES = {"mha": "k_eq_v", "gqa": "k_eq_v_gqa", "mqa": "k_eq_v_mqa", "cla": "k_eq_v_cla"}
# Overrides of the source run that the conversion sets itself.
REPLACED = ("variant.sharing", "variant.name", "init_from", "convert.alpha", "train.steps", "train.tokens_per_param",
            "train.resume", "hydra.run.dir", "hydra.sweep.dir", "name")


@dataclass
class Plan:
    source: Path
    target_variant: str
    alpha: str
    train_args: list[str]
    run_dir: Path


def parse(args: list[str]) -> Plan:
    parser = ArgumentParser(
        prog="qkvlab convert",
        description="Convert a trained mha/gqa/mqa run to its K=V form (W_KV = A·W_K + (1 − A)·W_V, a least-squares "
        "fit, or a random W_KV), write it as a run directory and evaluate it zero-shot (eval.json).",
    )
    parser.add_argument("run_dir")
    parser.add_argument("--to", required=True, choices=["k_eq_v"], help="the sharing to convert to")
    parser.add_argument("--alpha", required=True, help="A in [0, 1], fit, or random")
    parser.add_argument("--out", default=None, help="the new run directory (default: outputs/<name>/<run id>)")
    ns = parser.parse_args(args)
    try:
        convert_alpha(ns.alpha)
    except ConfigError as exc:
        raise ConfigError(str(exc).replace("convert.alpha=", "--alpha ", 1)) from None
    run = load_run(ns.run_dir)
    if not run.config:
        raise ConfigError(f"{ns.run_dir} has no .hydra/config.yaml; pass a run directory written by qkvlab train")
    variant = run.config.get("variant", {})
    if variant.get("sharing") != "mha":
        raise ConfigError(
            f"--to k_eq_v converts a run with separate W_K and W_V (variant.sharing=mha: mha, gqa, mqa, cla, ...), "
            f"but {ns.run_dir} is variant {variant.get('name')} with sharing {variant.get('sharing')}"
        )
    target = K_EQ_V_NAMES.get(variant["name"], f"{variant['name']}_k_eq_v")
    source = run.path.resolve()
    args_out = [*source_overrides(run.path), "variant.sharing=k_eq_v", f"variant.name={target}",
                f"init_from={source}", f"convert.alpha={ns.alpha}", "train.steps=0", f"name={run.config.get('name', 'default')}"]
    if ns.out:
        args_out.append(f"hydra.run.dir={Path(ns.out).resolve()}")
    return Plan(source, target, ns.alpha, args_out, Path(ns.out).resolve() if ns.out else run_dir_of(args_out))


def source_overrides(run_dir: Path) -> list[str]:
    from omegaconf import OmegaConf

    path = run_dir / ".hydra" / "overrides.yaml"
    saved = [str(o) for o in OmegaConf.to_container(OmegaConf.load(path))] if path.exists() else []
    return [o for o in saved if o.partition("=")[0].lstrip("+~") not in REPLACED]


def run_dir_of(overrides: list[str]) -> Path:
    """Where `qkvlab train` will put this run: hydra.run.dir resolved as Hydra resolves it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import qkvlab.runname  # noqa: F401 - registers ${qkvlab_run_id:}

    register_configs()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="convert"):
            root = compose("config", overrides=overrides, return_hydra_config=True)
            return Path(str(root.hydra.run.dir)).resolve()
    finally:
        GlobalHydra.instance().clear()


def finish(plan: Plan) -> None:
    """eval.json in the converted run, and one line saying where it went."""
    from qkvlab.infer.evaluate_run import evaluate_run, format_report

    print(format_report(evaluate_run(plan.run_dir)), flush=True)
    print(f"qkvlab: converted {plan.source} to {plan.target_variant} (convert.alpha={plan.alpha}): {plan.run_dir} "
          f"(eval.json written; qkvlab train init_from={plan.run_dir} ... uptrains it)", flush=True)

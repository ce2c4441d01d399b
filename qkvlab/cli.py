"""`qkvlab <command>`: the one entry point.

`train` hands its arguments to Hydra (so -m, --cfg, --help and launchers all
work), but first composes and validates every job of the sweep, so a bad key
or value fails at start-up in one line instead of in job 37.
"""

from __future__ import annotations

import importlib
import itertools
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from omegaconf import DictConfig, OmegaConf, open_dict

from qkvlab.config import CONF_DIR, describe_error, is_bad_input
from qkvlab.errors import EXIT_BAD_INPUT, EXIT_FAILED, fail, full_errors

MAX_PRECHECK_JOBS = 512

USAGE = """usage: qkvlab <command> [args]

commands:
  train     train a model (Hydra: qkvlab train --help lists the config groups)
  compare   compare run directories: table, significance, plots (qkvlab compare --help)
  scaling   fit loss against compute per variant; compute multipliers and gap plots
  convert   turn a trained mha/gqa/mqa run into its K=V form (W_KV = A·W_K + (1 − A)·W_V) and evaluate it
  eval      score trained runs at several context lengths, on held-out text (--data.path) or on
            lm-eval benchmarks (--tasks); writes RUN_DIR/eval.json
  generate  sample from a trained causal run with a KV cache
  analyze   attention maps, score symmetry, Q/K/V similarity and effective rank of a trained run
  bench     step time, tokens/s, MFU, memory, prefill/decode speed and KV bytes per variant

Run `qkvlab <command> --help` for a command's options."""


def expand_sweep(overrides: Sequence[str], preset_params: Sequence[str] = ()) -> list[list[str]]:
    """Every job's override list in a `-m` sweep (choice and range sweeps).

    `preset_params` are a preset's `hydra.sweeper.params`; as in Hydra's basic
    sweeper, a command-line override of the same key replaces the preset's axis.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    parsed = OverridesParser.create().parse_overrides([*preset_params, *overrides])
    prefix = {OverrideType.ADD: "+", OverrideType.FORCE_ADD: "++", OverrideType.DEL: "~"}
    axes: dict[str, list[str]] = {}
    for o in parsed:
        key = prefix.get(o.type, "") + o.get_key_element()
        if o.type == OverrideType.DEL and o.value() is None:
            axes[key] = [key]
        elif o.is_sweep_override():
            axes[key] = [f"{key}={v}" for v in o.sweep_string_iterator()]
        else:
            axes[key] = [f"{key}={o.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*axes.values())]


def preset_sweep_params(config_name: str, overrides: Sequence[str], extra: Sequence[str]) -> list[str]:
    """The `hydra.sweeper.params` a preset declares, as overrides; none for non-grid sweepers (Optuna)."""
    from hydra import compose

    job_args = [o for o in overrides if not _is_sweep_value(o)]
    hydra_cfg = compose(config_name, overrides=[*job_args, *extra], return_hydra_config=True).hydra
    if not str(hydra_cfg.sweeper.get("_target_", "")).endswith("BasicSweeper"):
        return []
    return [f"{k}={v}" for k, v in (hydra_cfg.sweeper.get("params") or {}).items()]


def _is_sweep_value(override: str) -> bool:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    return OverridesParser.create().parse_override(override).is_sweep_override()


def precheck(overrides: Sequence[str], multirun: bool, config_name: str, config_dir: str | None, writes: bool = True) -> None:
    """Compose and validate each job as Hydra will; exit with one line on the first bad one.

    `writes`: the command will create run directories (not --cfg or --info), so their names are checked too."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from qkvlab.checks import checked
    from qkvlab.runname import shorten

    extra = [f"hydra.searchpath=[file://{Path(config_dir).resolve()}]"] if config_dir else []
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="precheck"):
        jobs = [list(overrides)]
        if multirun:
            try:
                params = preset_sweep_params(config_name, overrides, extra)
            except Exception as exc:
                if full_errors():
                    raise
                fail(_with_plugin_hint(describe_error(exc)))
            jobs = expand_sweep(overrides, params)
        targets: list[tuple[str, Path, bool]] = []
        for i, job in enumerate(jobs[:MAX_PRECHECK_JOBS]):
            where = f" (sweep job {i}: {' '.join(map(shorten, job))})" if multirun and len(jobs) > 1 else ""
            try:
                root = compose(config_name, overrides=[*job, *extra], return_hydra_config=writes)
                tasks = {}
                if writes:
                    tasks = launcher_tasks(root)
                    check_run_dir_names(root, job, multirun)
                    targets += output_dirs(root, multirun)
                    with open_dict(root):
                        del root["hydra"]
                typed = checked(root)
                if typed.init_from is not None:  # reads the source run: torch is imported only for this
                    from qkvlab.train.init_from import check_init_from

                    check_init_from(typed)
                if typed.train.parallel != "auto" or "WORLD_SIZE" in os.environ or tasks:  # under torchrun or submitit, or asked for
                    from qkvlab.train.distributed import check_parallel

                    check_parallel(typed, tasks or os.environ)
                if typed.train.device in ("cuda", "mps"):  # torch is imported only for these
                    from qkvlab.train.device import check_device

                    check_device(typed.train.device)
                if typed.distill.teacher is not None:
                    from qkvlab.train.from_run import finished_run

                    finished_run(typed.distill.teacher, "distill.teacher")
            except Exception as exc:  # every kind of bad input gets the same one-line treatment
                if full_errors():
                    raise
                fail(_with_plugin_hint(describe_error(exc)) + where)
        check_output_dirs(targets)
    GlobalHydra.instance().clear()


def output_dirs(root: DictConfig, multirun: bool) -> list[tuple[str, Path, bool]]:
    """(key, directory, may create) that Hydra will make for this job: the run directory, or the sweep
    directory and the job's subdirectory in it."""
    importlib.import_module("qkvlab.runname")  # registers ${qkvlab_run_id:}, which names the run directory
    if not multirun:
        return [("hydra.run.dir", Path(str(root.hydra.run.dir)), True)]
    top = Path(str(root.hydra.sweep.dir))
    try:
        sub = top / str(OmegaConf.select(root, "hydra.sweep.subdir"))
    except Exception:  # an interpolation only Hydra's launcher can resolve (hydra.job.num)
        return [("hydra.sweep.dir", top, True)]
    return [("hydra.sweep.dir", top, True), ("hydra.sweep.dir", sub, False)]


def launcher_tasks(root: DictConfig) -> dict[str, str]:
    """The WORLD_SIZE each job of a submitit launcher with several tasks (nodes x tasks_per_node) will run with."""
    launcher = root.hydra.get("launcher") or {}
    if "submitit" not in str(launcher.get("_target_", "")):
        return {}
    tasks = int(launcher.get("nodes", 1) or 1) * int(launcher.get("tasks_per_node", 1) or 1)
    return {"WORLD_SIZE": str(tasks)} if tasks > 1 else {}


def check_output_dirs(targets: list[tuple[str, Path, bool]]) -> None:
    """A run (or sweep) directory that cannot be made is one line before any job starts, not Hydra's traceback.

    A sweep is refused as a whole: its jobs share hydra.sweep.dir, and Hydra
    makes a job's directory outside the job, where one failure ends the sweep."""
    from qkvlab.files import unwritable_dir

    for key, path, create in dict.fromkeys(targets):
        problem = unwritable_dir(path, create=create)
        if problem:
            fail(f"cannot create the run directory {path}: {problem}; choose another {key} or fix the path")


def check_run_dir_names(root: DictConfig, job: Sequence[str], multirun: bool) -> None:
    """The run directory and log file names Hydra will create, resolved as it will resolve them."""
    from qkvlab.runname import check_name_lengths

    h = root.hydra
    dirs = [h.sweep.dir, h.sweep.subdir] if multirun else [h.run.dir]
    names = [part for d in dirs for part in Path(str(d)).parts]
    check_name_lengths(names, job, "run directory", "give a shorter value, or name the directory with "
                       + ("hydra.sweep.subdir=NAME" if multirun else "hydra.run.dir=PATH"))
    check_name_lengths([f"{h.job.name}.log"], job, "log file", "give hydra.job.name a shorter value")


def _with_plugin_hint(message: str) -> str:
    """Launchers and sweepers are optional extras; say which one to install."""
    if message.startswith("hydra/launcher="):
        return message + " (launcher plugins are an extra: pip install 'qkvlab[sweep]')"
    if message.startswith("hydra/sweeper="):
        return message + " (the Optuna sweeper is an extra: pip install 'qkvlab[optuna]')"
    return message


def train_command(args: list[str]) -> None:
    from hydra._internal.utils import get_args_parser

    from qkvlab.config import register_configs

    register_configs()
    parsed, _ = get_args_parser().parse_known_args(args)
    if parsed.config_dir and not Path(parsed.config_dir).is_dir():
        fail(f"--config-dir {parsed.config_dir} is not a directory; give the folder that holds your own "
             "config groups (e.g. DIR/experiment/my_study.yaml)")
    if not (parsed.help or parsed.hydra_help or parsed.shell_completion):
        try:
            writes = not (parsed.cfg or parsed.info)
            precheck(parsed.overrides, parsed.multirun, parsed.config_name or "config", parsed.config_dir, writes)
        except SystemExit:
            raise
        except Exception as exc:  # a malformed override string
            if full_errors():
                raise
            fail(describe_error(exc))
    from qkvlab.train.entry import hydra_main

    sys.argv = ["qkvlab train", *args]
    hydra_main(config_path=str(CONF_DIR))


def convert_command(args: list[str]) -> None:
    """`qkvlab convert`: the source's overrides, K=V sharing, init_from and train.steps=0 as one training job."""
    from qkvlab.infer.convert import finish, parse

    plan = parse(args)
    train_command(plan.train_args)
    finish(plan)


def guarded(main: Callable[[list[str]], None], args: list[str]) -> None:
    """Run a non-Hydra command; any error becomes one line (HYDRA_FULL_ERROR=1 keeps the traceback),
    with exit code 2 for bad input and 1 for anything else."""
    try:
        main(args)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        fail("interrupted", code=130)
    except Exception as exc:
        if full_errors():
            raise
        fail(describe_error(exc), code=EXIT_BAD_INPUT if is_bad_input(exc) else EXIT_FAILED)


def lazy_command(module: str, name: str) -> Callable[[list[str]], None]:
    """A guarded command whose module is imported only when it runs: `qkvlab --help` stays fast."""

    def command(args: list[str]) -> None:
        guarded(getattr(importlib.import_module(module), name), args)

    return command


COMMANDS: dict[str, Callable[[list[str]], None]] = {
    "train": train_command,
    "compare": lazy_command("qkvlab.analysis.command", "compare_command"),
    "scaling": lazy_command("qkvlab.analysis.scaling", "scaling_command"),
    "convert": lambda args: guarded(convert_command, args),
    "eval": lazy_command("qkvlab.infer.commands", "eval_main"),
    "generate": lazy_command("qkvlab.infer.commands", "generate_main"),
    "analyze": lazy_command("qkvlab.analysis.analyze", "analyze_command"),
    "bench": lazy_command("qkvlab.bench.command", "bench_main"),
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; choose one of: {', '.join(COMMANDS)}")
    COMMANDS[command](rest)


if __name__ == "__main__":
    main()

"""`qkvlab-lm-eval ...` (or `python -m qkvlab.infer.lm_eval_cli ...`): lm-eval's own CLI, with the qkvlab
model registered, so `--model qkvlab --model_args run_dir=RUN_DIR` works beside every lm-eval option.

lm-eval 0.4.13 looks a `--model` name up only in its own table (`lm_eval/models/__init__.py`,
MODEL_MAPPING) and reads no entry points (its registry's plugin loop is commented out), so the plain
`lm_eval` script cannot see a model another package ships. This runs the very same CLI
(`lm_eval.__main__.cli_evaluate`) after registering the models installed packages declare under the
`lm_eval.models` entry-point group, qkvlab's among them (pyproject.toml), and qkvlab's directly when
running from a checkout whose metadata is older.
"""

from __future__ import annotations

import importlib.metadata as md


def register_models() -> None:
    from lm_eval.api.registry import model_registry

    import lm_eval.models  # noqa: F401  lm-eval's own table first: our names must not shadow or empty it
    import qkvlab.infer.harness  # noqa: F401  registers "qkvlab"

    for ep in md.entry_points(group="lm_eval.models"):
        if ep.name not in model_registry:
            model_registry.register(ep.name, target=ep)


def main() -> None:
    from lm_eval.__main__ import cli_evaluate

    register_models()
    cli_evaluate()


if __name__ == "__main__":
    main()

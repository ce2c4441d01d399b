"""Imports run only downward: config -> data/model -> train -> run directory
-> analysis -> cli. A lower layer that imports a higher one (the CLI above
all) makes a circle that breaks as soon as someone reorders an import."""

import ast
from pathlib import Path

import qkvlab

PACKAGE = Path(qkvlab.__file__).parent

# Lower rank = lower layer. A module may import its own rank or below.
RANKS = {
    "qkvlab": 0,
    "qkvlab.errors": 0,
    "qkvlab.files": 0,
    "qkvlab.args": 0,
    "qkvlab.config": 1,
    "qkvlab.runname": 2,
    "qkvlab.data": 3,
    "qkvlab.model": 4,
    "qkvlab.checks": 5,
    "qkvlab.track": 6,
    "qkvlab.rundir": 6,
    "qkvlab.runlock": 6,
    "qkvlab.train": 7,
    "qkvlab.infer": 8,
    "qkvlab.bench": 8,
    "qkvlab.analysis": 9,
    "qkvlab.cli": 10,
    "qkvlab.__main__": 11,
}


def rank(module: str) -> int:
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in RANKS:
            return RANKS[".".join(parts[:n])]
    raise AssertionError(f"{module} has no layer in tests/test_layers.py; add it to RANKS")


def imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qkvlab"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("qkvlab")]
    return found


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_every_import_points_down_the_layers():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = module_name(path)
        for target in imports(path):
            if rank(target) > rank(source):
                upward.append(f"{source} imports {target}")
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_the_rule_catches_an_upward_import(tmp_path):
    assert rank("qkvlab.cli") > rank("qkvlab.train.entry") > rank("qkvlab.config")
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qkvlab.cli import main\n")
    assert imports(bad) == ["qkvlab.cli"]

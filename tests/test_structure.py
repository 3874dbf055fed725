"""The package layout the README promises: imports flow tokenizer <- rewards <- envs <- rl, no module imports one
that imports it back, ``rl/`` is made of wings (subpackages) only, command lines are parsed only in the ``rl/cli``
wing, and no module grows past about 400 lines."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("tokenizer", "rewards", "envs", "rl")  # each may import only those before it
MAX_LINES = 450


def _modules() -> dict[str, Path]:
    out = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere (function bodies and ``__main__`` blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from rl.grpo import train` imports the module rl.grpo.train; `from envs import get_env` the package's __init__
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def test_imports_follow_the_layers_and_never_come_back():
    modules = _modules()
    graph = {name: _imports(path, modules) - {name} for name, path in modules.items()}
    wrong = [f"{a} imports {b}" for a, deps in graph.items() for b in deps
             if LAYERS.index(b.split(".")[0]) > LAYERS.index(a.split(".")[0])]
    assert not wrong, wrong

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            node = todo.pop()
            if node == goal:
                return True
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a, deps in graph.items() for b in deps if reaches(b, a))
    assert not cycles, cycles


WINGS = ("recipe", "policy", "grpo", "eval", "experiments", "cli")


def test_rl_is_made_of_wings_each_saying_what_it_is_for():
    loose = [p.name for p in (ROOT / "rl").glob("*.py") if p.name != "__init__.py"]
    assert loose == [], f"put these in a wing of rl/: {loose}"
    wings = sorted(p.name for p in (ROOT / "rl").iterdir() if (p / "__init__.py").is_file())
    assert wings == sorted(WINGS)
    for wing in WINGS:
        doc = ast.get_docstring(ast.parse((ROOT / "rl" / wing / "__init__.py").read_text())) or ""
        assert doc and len(doc.splitlines()) == 1, f"rl/{wing}/__init__.py: a one-line docstring saying what it is for"


def test_only_the_cli_parses_command_lines():
    parsing = [str(p.relative_to(ROOT)) for p in _modules().values()
               if "argparse" in _imports_any(p) and p.parent != ROOT / "rl" / "cli"]
    assert not parsing, parsing


def _imports_any(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_no_module_grows_past_about_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long

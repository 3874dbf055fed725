"""What ``pip install samtok-rl`` brings: the wheel declares every package the code imports (sam2 included: without it
the mask tokenizer, mask_iou, prepare and eval fail to import), the GPU extra in TRL's vLLM window, the console
script and the committed tiny tokenizer weights."""

import ast
import importlib.metadata as md
import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("tokenizer", "rewards", "envs", "rl")
# Imported only where the feature is used, and declared by an extra (or reported missing by `samtok-rl env`).
OPTIONAL = {"vllm": "vllm", "wandb": "wandb", "flash_attn": None}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    # Built from a copy of what the wheel is made of: pip builds in the source tree, and a build/ left there
    # would keep shipping a module after it was deleted from the checkout.
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    (path,) = out.glob("samtok_rl-*.whl")
    return path


def _metadata(wheel: Path):
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return Parser().parsestr(z.read(name).decode())


def _third_party_imports() -> set[str]:
    stdlib = set(sys.stdlib_module_names)
    found = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                found |= {n.split(".")[0] for n in names}
    return {n for n in found if n not in stdlib and n not in PACKAGES and n != "__future__"}


def test_the_wheel_declares_sam2_trl_and_the_vllm_window(wheel):
    meta = _metadata(wheel)
    reqs = [Requirement(r) for r in meta.get_all("Requires-Dist")]
    base = {r.name.lower(): r for r in reqs if r.marker is None}
    assert str(base["sam2"].specifier) == "==1.1.0"
    assert base["trl"].specifier.contains("1.16.0") and not base["trl"].specifier.contains("1.17.0")
    assert {"torch", "transformers", "peft", "accelerate", "deepspeed", "datasets", "pycocotools"} <= base.keys()
    assert {"vllm", "dev", "wandb"} <= set(meta.get_all("Provides-Extra"))
    vllm = next(r for r in reqs if r.name == "vllm")
    assert vllm.marker.evaluate({"extra": "vllm"}) and not vllm.marker.evaluate({"extra": ""})
    assert vllm.specifier.contains("0.22.0") and vllm.specifier.contains("0.31.0") and not vllm.specifier.contains("0.32.0")


def test_every_imported_package_is_declared(wheel):
    """A module the code imports and no declared distribution provides is the bug sam2 was: it works in the dev
    venv (the Makefile installed it) and fails after ``pip install samtok-rl``."""
    reqs = [Requirement(r) for r in _metadata(wheel).get_all("Requires-Dist")]
    declared = {r.name.lower().replace("_", "-") for r in reqs}
    providers = md.packages_distributions()
    undeclared = {}
    for module in sorted(_third_party_imports()):
        if module in OPTIONAL:
            extra = OPTIONAL[module]
            assert extra is None or extra in declared, f"{module}: its extra {extra!r} is not declared"
            continue
        dists = {d.lower().replace("_", "-") for d in providers.get(module, [])}
        if not dists & declared:
            undeclared[module] = sorted(dists) or "not installed"
    assert not undeclared, undeclared


def test_the_wheel_ships_the_console_script_and_the_tiny_tokenizer(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        entry = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert "samtok-rl = rl.cli:console" in entry
    from tokenizer.load import PRETRAINED

    for name in PRETRAINED:  # every committed tokenizer a recipe can name
        weights = {n for n in names if n.startswith(f"tokenizer/weights/{name}/")}
        assert any(n.endswith(".safetensors") for n in weights) and any(n.endswith("config.json") for n in weights), name
    assert {f"{p}/__init__.py" for p in PACKAGES} <= names
    assert not any(n.startswith(("tests/", "bench/")) for n in names)
    assert wheel.name.endswith("-py3-none-any.whl")  # pure Python: one wheel for every platform


def test_the_wheel_ships_every_module_of_every_wing(wheel):
    with zipfile.ZipFile(wheel) as z:
        shipped = set(z.namelist())
    modules = {str(p.relative_to(ROOT)) for package in PACKAGES for p in (ROOT / package).rglob("*.py")
               if "__pycache__" not in p.parts}
    assert any(m.startswith("rl/grpo/") for m in modules)
    assert modules - shipped == set()
